/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The connection table: one entry per client connection that baton is holding, forwarding (as FE)
 * or translating (as BE). Connections served locally have no entry: they cost one failed lookup.
 *
 * Layouts are ABI with the agent (`baton_bpf::ConnKey`, `baton_bpf::Conn`): append only.
 */
#pragma once
#include "common.h"

/* The connection as this node's TCP sees it: the client's address and port, and this node's
 * service address and port. The same key is used at the FE and at the BE (where local = BE). */
struct conn_key {
	__be32 client_addr;
	__be32 local_addr;
	__be16 client_port;
	__be16 local_port;
};

enum conn_role {
	ROLE_FE = 1, /* this node accepted the connection from the client */
	ROLE_BE = 2, /* this node serves a connection another node accepted */
};

enum conn_state {
	/* FE */
	FE_SYN = 1,     /* SYN seen and passed; waiting for the client's handshake ACK */
	FE_HOLD = 2,    /* handshake done at the client; its packets are held for the agent */
	FE_FORWARD = 3, /* handed off: client packets are rewritten to peer_addr and redirected */
	/* BE */
	BE_SYN_SENT = 10,    /* agent replayed the SYN; the server's SYN-ACK goes to the agent */
	BE_REPLAYED = 11,    /* agent replayed the ACK; waiting for the first forwarded packet */
	BE_ESTABLISHED = 12, /* translating both ways */
};

/* conn.flags. Set with conn_set_flags(): both directions of a connection can be in flight at
 * once on different CPUs, and a lost bit would lose a close. */
#define CONN_CLIENT_FIN 0x01
#define CONN_SERVER_FIN 0x02
#define CONN_RST 0x04
#define CONN_CLOSE_REPORTED 0x08

struct conn {
	__u8 role;
	__u8 state;
	__u8 syn_opts_len;
	__u8 synack_opts_len;
	__u32 flags;         /* CONN_*; ingress and egress run on different CPUs: set atomically */
	__u32 client_isn;    /* the client's initial sequence number */
	__u32 local_isn;     /* FE: ISN of this node's SYN-ACK; BE: ISN of the server's SYN-ACK */
	__u32 synack_tsval;  /* FE: TSval of the last SYN-ACK passed to the client */
	__u16 syn_window;    /* window field of the client's SYN */
	__u16 pad1;
	__be32 peer_addr;    /* FE: the BE that serves it; BE: the FE's service address */
	__u32 seq_delta;     /* BE: server seq = client-visible seq + seq_delta */
	__u32 ts_delta;      /* BE: server TS clock = client-visible TS clock + ts_delta */
	__u32 pad2;
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 packets;
	__u64 bytes;
	__u8 syn_opts[TCP_OPTS_MAX];    /* FE: the client's SYN options, for replay at the BE */
	__u8 synack_opts[TCP_OPTS_MAX]; /* FE: this node's SYN-ACK options, for the BE's option check */
};

/* Why: the per-connection state of every held, forwarded or translated connection. Bounded so a
 * SYN flood cannot grow it; when full, new connections pass untracked and are served locally. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn);
} conns SEC(".maps");

/* Why: what the agent tells the programs: this node's service address and ports, whether to
 * distribute at all. One element, written by the agent at start. */
#define SERVICE_PORTS_MAX 8
struct node_config {
	__be32 service_addr;
	__u8 distribute;      /* 0: never hold (policy local, or a single node) */
	__u8 nports;
	__u16 pad;
	__be16 ports[SERVICE_PORTS_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
} config SEC(".maps");

/* Sets `bits` in c->flags atomically; returns the flags from before. */
__always __u32 conn_set_flags(struct conn *c, __u32 bits)
{
	return __sync_fetch_and_or(&c->flags, bits);
}

__always int is_service_port(const struct node_config *cfg, __be16 port)
{
#pragma unroll
	for (int i = 0; i < SERVICE_PORTS_MAX; i++) {
		if (i >= cfg->nports)
			break;
		if (cfg->ports[i] == port)
			return 1;
	}
	return 0;
}

__always struct node_config *node_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}
