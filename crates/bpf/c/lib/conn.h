/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The connection table's types: one entry per client connection that baton is holding, forwarding
 * (as FE) or translating (as BE). Connections served locally have no entry: they cost one failed
 * lookup. The two tables that follow a placed connection request by request (watch, responses;
 * see follow.h and response.h). And the node's configuration, as the agent writes it.
 *
 * Layouts are ABI with the agent (`baton_bpf::ConnKey`, `Conn`, `Watch`, `Responses`,
 * `NodeConfig`): a change of layout changes `baton_bpf::LAYOUT_VERSION`.
 */
#pragma once
#include "common.h"
#include "sizes.h"

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
	FE_HOLD = 2,    /* handshake done at the client; its packets are held (our TCP stays in SYN-RECV) */
	FE_FORWARD = 3, /* offered or handed off: client packets are rewritten to peer_addr and redirected */
	/* BE */
	BE_SYN_SENT = 10,    /* agent replayed the SYN; the server's answer goes to the agent */
	BE_REPLAYED = 11,    /* agent replayed the request; the server's TCP has not spoken yet */
	BE_ESTABLISHED = 12, /* the server's TCP took the connection: translating both ways */
};

/* conn.flags. Set with conn_set_flags(): both directions of a connection can be in flight at
 * once on different CPUs, and a lost bit would lose a close. The agent never writes flags. */
#define CONN_CLIENT_FIN 0x01
#define CONN_SERVER_FIN 0x02
#define CONN_RST 0x04
#define CONN_CLOSE_REPORTED 0x08
#define CONN_SYNACK_SEEN 0x10  /* FE: our SYN-ACK has gone out, local_isn is valid */
#define CONN_AGENT_HOLDS 0x20  /* FE: a held packet went to the agent, which now decides */
#define CONN_LIVE_REPORTED 0x40 /* BE: EV_BE_LIVE sent */

struct conn {
	__u8 role;
	__u8 state;
	__u8 syn_opts_len;
	__u8 synack_opts_len;
	__u32 flags;         /* CONN_*; written by the datapath only, atomically */
	__u32 client_isn;    /* the client's initial sequence number */
	__u32 local_isn;     /* FE: ISN of this node's SYN-ACK; BE: ISN of the server's SYN-ACK */
	__u32 synack_tsval;  /* FE: TSval of the last SYN-ACK passed to the client */
	__u16 syn_window;    /* window field of the client's SYN */
	__u8 syn_tcp_flags;    /* FE: the client SYN's flag byte (ECE|CWR: it asks for ECN) */
	__u8 synack_tcp_flags; /* FE: our SYN-ACK's flag byte (ECE: we agreed to ECN) */
	__be32 peer_addr;    /* FE: the BE that serves it; BE: the FE's service address */
	__u32 seq_delta;     /* BE: server seq = client-visible seq + seq_delta */
	__u32 ts_delta;      /* BE: server TS clock = client-visible TS clock + ts_delta */
	__u32 pad;
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 live_deadline_ns; /* BE: the server's TCP may go live (reach the client) only before this */
	__u64 packets;
	__u64 bytes;
	__u8 syn_opts[TCP_OPTS_MAX];    /* FE: the client's SYN options, for replay at the BE */
	__u8 synack_opts[TCP_OPTS_MAX]; /* FE: this node's SYN-ACK options, for the BE's option check */
	__u64 handoff_id;     /* FE and BE: the handoff's id (set by the agent when it offers or takes
			       * it), so an agent that adopts the table can speak of it to the peer */
	__u64 client_seen_ns; /* the last packet from the client (last_seen_ns counts both ways) */
};

/* What the agent asks of the datapath about a placed connection (the watch map). The agent alone
 * writes it, always the whole value; the datapath only reads it. */
struct watch {
	__u32 flags;         /* WATCH_* */
	__u32 next_head_seq; /* client seq where the next request head starts */
};
#define WATCH_HEADS 0x01  /* hold client data at or after next_head_seq (FE) */
#define WATCH_FROZEN 0x02 /* the connection is moving away: nothing the local TCP sends leaves (serving node) */

/* Where the local server's responses stand (the responses map). The agent creates it with the
 * first next_head; from then on the datapath alone writes it (in place: a server's packets leave
 * one at a time, under its socket's lock) and the agent only reads and deletes it. */
struct responses {
	__u32 next_head; /* server seq (the local TCP's own space, before translation) where the next response head starts */
	__u32 count;     /* final (non-1xx) responses whose head was seen */
	__u32 flags;     /* RESP_* */
	__u32 pad;
};
#define RESP_OPAQUE 0x01 /* tracking stopped: a head the datapath could not read where one had to be */

/* How the datapath may decide a connection itself (node_config.decide). */
enum decide_mode {
	DECIDE_AGENT = 0, /* every held connection goes to the agent */
	DECIDE_HASH = 1,  /* the hash policy: a target that hashes to this node is released at once */
};

/* One member as the datapath's hash policy sees it (the agent's `Hash` policy, mirrored). */
struct dp_node {
	__u64 hash_seed; /* FNV-1a 64 state after the node's name and the 0xff separator */
	__u8 eligible;   /* up, or this node: the policy may choose it */
	__u8 rank;       /* the name's place among the members' names sorted: ties go to the greatest */
	__u8 pad[6];
};

/* What the agent tells the programs: this node's service address and ports, whether to distribute
 * at all, and what the datapath may decide alone. Written by the agent at start and when the
 * cluster changes; a torn read sees old or new eligibility, both safe, since the datapath only ever
 * decides "local". */
struct node_config {
	__be32 service_addr;
	__u8 distribute;      /* 0: never hold (policy local, a single node, or draining) */
	__u8 nports;
	__u8 decide;          /* enum decide_mode */
	__u8 self_index;      /* this node's index in nodes[] */
	__be16 ports[SERVICE_PORTS_MAX];
	__u8 nnodes;
	__u8 pad[3];
	__u32 netns_inum;     /* the agent's network namespace: only its sockets count as load */
	struct dp_node nodes[DP_NODES_MAX];
};

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
