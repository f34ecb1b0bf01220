/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Events to the agent: packet copies and notices on a ring buffer, and how they are written.
 *
 * Contract: emit_packet() copies the packet from its IPv4 header on, up to EVENT_CAPTURE_MAX
 * bytes, with its true length; the agent gets every event in order or, when the ring is full, the
 * caller learns it (negative return) and counts DROP_EVENT_LOST. The ring wakes the agent when it
 * has caught up (the kernel's adaptive notification), so no event waits for a timer. Quiet notices
 * (emit_notice_hdr(h, 1)) go to a ring of their own that wakes no one: the agent reads it before
 * every input.
 */
#pragma once
#include "common.h"
#include "conn.h"
#include "sizes.h"

/* Event kinds: ABI, mirrored by `baton_bpf::EventKind`. Never renumber. */
enum event_kind {
	EV_HELD_PACKET = 1, /* a held client packet: FE (data, FIN, RST), BE before the replay (data, FIN) */
	EV_BE_SYNACK = 2,   /* BE: the server's answer to a replayed SYN or request (SYN-ACK, RST, ...) */
	EV_CLOSED = 3,      /* BE: our TCP is done with the handed-in connection (detail: CLOSE_*) */
	EV_BE_LIVE = 4,     /* BE: the server's TCP took the replayed connection and spoke: it is live */
	EV_NEXT_HEAD = 5,   /* a held client packet of a placed connection: at or past its next request head (watch) */
	EV_DP_OFFERED = 6,  /* FE: the datapath offered the connection to peer_addr itself (offer.h) */
	EV_DP_TAKEN = 7,    /* BE, quiet: our TCP took a datapath offer's replay (peer, handoff_id: whose) */
	EV_DP_RETURNED = 8, /* FE: a datapath offer came back refused (detail: REFUSE_*, peer: the BE); served here or held */
	EV_NEXT_HEAD_STAYED = 9, /* FE, quiet: a followed request went on to where its connection is, decided here (detail: the next head's seq) */
	EV_DP_FOLLOWED_HERE = 10, /* FE, quiet: a first request served here and followed, decided here (detail: the next head's seq; the FE entry as it was follows) */
};

/* EV_CLOSED's detail: what holds the tuple in our TCP now. ABI, mirrored by `baton_bpf::CloseCode`.
 * Never renumber. */
enum close_code {
	CLOSE_GONE = 1,      /* nothing: the connection is over */
	CLOSE_TIME_WAIT = 2, /* a timewait socket in TIME_WAIT: both FINs went through our TCP */
	CLOSE_UNSURE = 3,    /* the server's socket closed as the client's FIN came in: the timewait
			      * socket left may not have taken it yet (the agent asks our TCP) */
};

struct event_hdr {
	__u32 kind;
	__u32 pkt_len; /* length of the packet from its IPv4 header */
	__u32 cap_len; /* bytes of it that follow this header */
	__u32 detail;  /* EV_DP_RETURNED: the refusal reason; EV_CLOSED: CLOSE_*; EV_NEXT_HEAD_STAYED: seq; else 0 */
	__u64 ts_ns;
	struct conn_key key;
	__be32 peer;   /* EV_DP_RETURNED: the BE that refused; BE notices: the FE (conn.peer_addr); else 0 */
	__u64 sock_cookie; /* BE notices: the server socket's cookie (conn.sock_cookie); else 0 */
	__u64 handoff_id;  /* EV_DP_OFFERED, BE notices: the handoff's id (conn.handoff_id); else 0 */
};

struct event {
	struct event_hdr hdr;
	__u8 data[EVENT_CAPTURE_MAX];
};
