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
#define CONN_DP_OFFER 0x80     /* FE and BE: handed off by the datapaths alone (offer.h), no agent asked */
#define CONN_DP_TAKEN 0x100    /* BE: EV_DP_TAKEN sent */
#define CONN_DP_LIVE 0x200     /* FE (datapath offer): the client acknowledged data of the BE */
#define CONN_TCP_CLOSED 0x400  /* BE: the server's socket closed (sock_state.h); what our TCP sends
				* now comes from the tuple's timewait socket, or from no socket */
#define CONN_FOLLOWED 0x800    /* placed by the datapath and followed: a followed datapath offer
				* (FE: its watch entry; BE: its responses counted from the server's
				* SYN-ACK on), or one it serves here (fe_follow_here) */

/* What a SYN-ACK negotiated, as far as a handoff needs it identical at both ends (the agent's
 * `SynOptions::negotiated_mismatch`): MSS, window scale, SACK and timestamps. */
struct syn_digest {
	__u16 mss;    /* 0: none */
	__u8 wscale;  /* SYN_NO_WSCALE: none */
	__u8 bits;    /* SYN_SACK_OK | SYN_TS_OK */
};
#define SYN_NO_WSCALE 0xff
#define SYN_SACK_OK 0x01
#define SYN_TS_OK 0x02

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
	struct syn_digest synack_digest; /* FE: our SYN-ACK's negotiated options; BE (datapath offer):
					  * the FE's, which the server's SYN-ACK must match */
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
	__u32 fe_isn;         /* BE (datapath offer): ISN of the FE's SYN-ACK, the client's view of the
			       * server's sequence space, until the server's SYN-ACK gives the offsets */
	__u8 refuse_reason;   /* BE (datapath offer): why the server's TCP did not take the replayed
			       * SYN (REFUSE_*), 0 while it may */
	__u8 pad[3];
	__u64 offered_ns;     /* FE (datapath offer): when it was first offered (offer_clock_ns()) */
	__u32 client_fin_end; /* BE: the client's seq after its FIN, once CONN_CLIENT_FIN: the ack that
			       * says our TCP took that FIN */
	__u32 pad2;
	__u64 sock_cookie;    /* BE: the server socket's cookie, from its first packet live; its
			       * timewait socket inherits it, and the agent ends that by it */
};

/* A datapath offer (offer.h): the header that follows the IPv4 header of the client's first data
 * segment on its way from the FE to the BE (IP protocol OFFER_IPPROTO), and of the same segment
 * sent back when the BE refuses. Everything in network byte order but `mac`: SipHash-2-4 (key:
 * node_config.offer_key) of the OFFER_MAC_WORDS 8-byte words before it, read little-endian, and
 * stored in host order (baton's eBPF targets are little-endian).
 * Mirrored by `baton_wire::offer`. */
struct offer {
	__u8 version;          /* OFFER_VERSION */
	__u8 kind;             /* OFFER_KIND_* */
	__u8 reason;           /* OFFER_KIND_REFUSED: REFUSE_* (reasons.h); else 0 */
	__u8 syn_opts_len;     /* the client's SYN options, replayed at the BE */
	__u8 syn_tcp_flags;    /* the client's SYN flag byte (ECE|CWR: it asks for ECN) */
	__u8 synack_tcp_flags; /* the FE's SYN-ACK flag byte (ECE: it agreed to ECN) */
	__be16 syn_window;     /* the client's SYN window */
	__be32 client_addr;
	__be32 fe_addr;        /* the FE's service address: the client's peer */
	__be32 be_addr;        /* the BE's service address */
	__be16 client_port;
	__be16 service_port;
	__be32 client_isn;
	__be32 fe_isn;         /* ISN of the FE's SYN-ACK */
	__be32 fe_tsval;       /* TSval of the FE's SYN-ACK (the client echoes it) */
	__be16 synack_mss;     /* what the FE's SYN-ACK negotiated (struct syn_digest) */
	__u8 synack_wscale;
	__u8 synack_bits;
	__be64 handoff_id;     /* the FE's id for it, high bit set (agents' ids have it clear) */
	__be64 offered_ns;     /* when the FE first offered it, in UTC ns (offer.h, offer_clock_ns()) */
	__u8 syn_opts[TCP_OPTS_MAX];
	__u64 mac;
};
#define OFFER_IPPROTO 253 /* RFC 3692: for experimentation; never leaves the cluster's network */
#define OFFER_VERSION 1
#define OFFER_KIND_OFFER 1   /* FE -> BE */
#define OFFER_KIND_REFUSED 2 /* BE -> FE: the segment comes back; the FE serves it or asks its agent */
#define OFFER_KIND_REPLAY 3  /* BE -> its own ingress: the segment again, after its SYN (never sent) */
#define OFFER_KIND_FOLLOWED 4 /* FE -> BE: an offer whose requests the FE follows: the BE counts
			       * its responses (only to a node whose agent said it takes these) */
#define OFFER_MAC_WORDS 12
#define OFFER_LEN 104

/* What the agent asks of the datapath about a placed connection (the watch map). The agent
 * writes the whole value; the datapath writes in place only what follow.h says (WATCH_AGENT_HEAD,
 * and next_head_seq past a request it let stay), never while the agent holds a head of it. */
struct watch {
	__u32 flags;         /* WATCH_* */
	__u32 next_head_seq; /* client seq where the next request head starts */
	__u8 node;           /* the node the connection is on (node_config.nodes), or WATCH_NO_NODE */
	__u8 pad[3];
};
#define WATCH_HEADS 0x01  /* hold client data at or after next_head_seq (FE) */
#define WATCH_FROZEN 0x02 /* the connection is moving away: nothing the local TCP sends leaves (serving node) */
#define WATCH_AGENT_HEAD 0x04 /* set by the datapath as it holds a head: the agent has it, the datapath decides none */
#define WATCH_NO_NODE 0xff    /* the datapath lets no request stay by itself: the agent decides each */

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
	DECIDE_ROUND_ROBIN = 2, /* round-robin over the eligible nodes, this one included */
	DECIDE_HASH_STAYS = 3, /* hash, requests followed: a whole plain first request that hashes
				* here is served and followed here (fe.h), any other goes to the agent;
				* a followed request that hashes to the node its connection is on goes
				* on (follow.h) */
};

/* Which hash the datapath's hash modes run (node_config.hash_kind). */
enum hash_kind {
	HASH_RENDEZVOUS = 0, /* the agent's `Hash`: rendezvous over the eligible nodes */
	HASH_BOUNDED = 1,    /* its `BoundedHash`: a ring, and a cap on each node's load (bounded_view) */
};

/* One member as the datapath's hash policy sees it (the agent's `Hash` policy, mirrored). */
struct dp_node {
	__u64 hash_seed; /* FNV-1a 64 state after the node's name and the 0xff separator */
	__u8 eligible;   /* up, or this node: the policy may choose it */
	__u8 rank;       /* the name's place among the members' names sorted: ties go to the greatest */
	__u8 follows;    /* its agent takes followed offers (OFFER_KIND_FOLLOWED) */
	__u8 pad;
	__be32 addr;     /* its service address, where a datapath offer goes (0: offers to it go by the agent) */
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
	__u8 hash_kind;       /* enum hash_kind */
	__u8 pad[2];
	__u32 netns_inum;     /* the agent's network namespace: only its sockets count as load */
	struct dp_node nodes[DP_NODES_MAX];
	/* Handoffs by the datapaths alone (offer.h): */
	__u64 live_window_ns; /* how long after an offer the server's TCP may still go live */
	__u8 offer_key[OFFER_KEY_LEN]; /* SipHash-2-4 key that authenticates offers between nodes */
	__u16 mtu;            /* the interface's MTU: an offer that would not fit goes by the agent */
	__u8 offers;          /* 1: this node makes offers and takes them (else both go by the agents) */
	__u8 pad2[5];
	__s64 tai_offset_ns;  /* CLOCK_TAI - UTC on this node (adjtimex): offers are stamped in UTC */
};

/* One member's load as bounded-load hashing counts it: the agent's `Peer::effective_load` with
 * `assigned` grown by what this datapath decided for it since the agent wrote the view. */
struct bounded_node {
	__u32 load;         /* active connections, as it last reported them */
	__u32 assigned;     /* connections the agent counted assigned to it since that report */
	__u64 counted_from; /* bounded_counts.decided[] for it when the agent wrote this */
};

/* A point of the bounded-load ring and the members in the order a walk from it meets them. */
struct ring_point {
	__u64 point;
	__u64 order; /* member indices, 4 bits each, the first met in the low bits */
};

/* What the agent tells the programs for bounded-load hashing (the `bounded` map): its ring, the
 * members' loads and the balance factor. The ring changes with the members only; the loads at
 * each heartbeat. A torn read sees an older or newer load: the cap is approximate either way. */
struct bounded_view {
	__u32 ring_len; /* points in ring[], sorted by point; 0: nothing is decided here */
	__u32 factor;   /* percent of the mean load a member may carry (>= 100) */
	struct bounded_node nodes[DP_NODES_MAX];
	struct ring_point ring[BOUNDED_RING_MAX];
};

/* The connections this datapath gave each member by bounded-load hashing (only growing). */
struct bounded_counts {
	__u64 decided[DP_NODES_MAX];
};

/* Sets `bits` in c->flags atomically; returns the flags from before. */
__always __u32 conn_set_flags(struct conn *c, __u32 bits)
{
	return __sync_fetch_and_or(&c->flags, bits);
}

/* Clears `bits` in c->flags atomically. */
__always void conn_clear_flags(struct conn *c, __u32 bits)
{
	__sync_fetch_and_and(&c->flags, ~bits);
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
