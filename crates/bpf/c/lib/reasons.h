/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Why a packet was dropped or taken, and what the programs count.
 *
 * These numbers are ABI: they are mirrored by `baton_bpf::DropReason` and `baton_bpf::Stat` in Rust and
 * exported as metric labels. Never renumber; only append.
 */
#pragma once

enum drop_reason {
	DROP_HELD = 1,            /* client packet held (FE, or BE before the replay) and copied to the agent */
	DROP_SYNACK_HIDDEN = 2,   /* FE's own SYN-ACK for a connection forwarded to another node */
	DROP_FE_SILENCED = 3,     /* FE's TCP spoke on a connection that now belongs to another node */
	DROP_BE_SYNACK = 4,       /* BE's SYN-ACK to a replayed SYN: absorbed, the client already has one */
	DROP_BE_NOT_READY = 5,    /* packet for a handed-in connection before it is ready */
	DROP_TUPLE_COLLISION = 6, /* a new SYN for a tuple that a handed-in connection uses */
	DROP_EVENT_LOST = 7,      /* held packet could not be copied to the agent (ring full): client retransmits */
	DROP_REDIRECT_FAILED = 8, /* forwarding redirect was refused */
	DROP_BE_LATE = 9,         /* server packet of a replayed connection after its deadline to go live */
	DROP_MOVING = 10,         /* server packet of a connection moving to another node */
	DROP_OFFER_REJECTED = 11, /* a datapath offer or refusal that does not authenticate, is stale, or fits no entry */
	DROP_REASON_MAX = 12,
};

enum stat {
	STAT_SYN = 0,              /* new client connections seen (SYNs to a service) */
	STAT_SYN_UNTRACKED = 1,    /* ... of which passed untracked (distribution off or table full) */
	STAT_TABLE_FULL = 2,       /* conn table insertion failed */
	STAT_FORWARD_PACKETS = 3,  /* FE: client packets forwarded to a BE */
	STAT_FORWARD_BYTES = 4,
	STAT_TO_SERVER_PACKETS = 5, /* BE: client packets translated toward the local server */
	STAT_TO_CLIENT_PACKETS = 6, /* BE: server packets translated toward the client (another node accepted it) */
	STAT_TO_CLIENT_BYTES = 7,
	STAT_CLIENT_BYTES_SENT = 8, /* every byte this node sent to clients from a service port */
	STAT_EVENTS = 9,            /* events written to the ring */
	STAT_MALFORMED = 10,        /* unparseable TCP/IP headers on a service port (passed untouched) */
	STAT_HANDSHAKE_ABSORBED = 11, /* FE: bare handshake ACKs kept from our TCP (the data completes it) */
	STAT_DECIDED_LOCAL = 12,    /* FE: connections the datapath itself released to the local server */
	STAT_BE_LIVE = 13,          /* BE: replayed connections that went live */
	STAT_SERVING_OPENED = 14,   /* service connections that entered ESTABLISHED (load.h) */
	STAT_SERVING_CLOSED = 15,   /* ... and that left it */
	STAT_LISTEN_OPENED = 16,    /* listeners on a service port that opened (load.h) */
	STAT_LISTEN_CLOSED = 17,    /* ... and that closed */
	STAT_FAIL_OPEN = 18,        /* FE: connections passed to the local server because no agent ran */
	STAT_NEXT_HEADS_HELD = 19,  /* client packets of a placed connection's next request head, held (watch) */
	STAT_RESPONSE_HEADS = 20,   /* server response heads read (interim ones included) */
	STAT_RESPONSES_OPAQUE = 21, /* connections whose responses could no longer be followed */
	STAT_DP_OFFERS = 22,        /* FE: connections the datapath offered to another node itself */
	STAT_DP_TAKEN = 23,         /* BE: datapath offers whose replay our TCP took */
	STAT_DP_REFUSED = 24,       /* BE: datapath offers sent back to their FE (offer.h: REFUSE_*) */
	STAT_DP_RETURNED = 25,      /* FE: ... received back: served here, or asked of the agent */
	STAT_NEXT_HEADS_STAYED = 26, /* FE: followed requests the datapath let go on to their connection's node itself */
	STAT_MAX = 27,
};

/* Why an offer was refused: the mesh's `RefuseReason` codes (baton_proto), so that the agent
 * reports a datapath refusal as it reports its own. Never renumber. */
enum refuse_reason {
	REFUSE_COLLISION = 1,       /* the tuple is in use at the BE (a socket, or another entry) */
	REFUSE_OPTION_MISMATCH = 2, /* the BE's SYN-ACK negotiated other options or ECN than the FE's */
	REFUSE_OVERLOADED = 3,      /* the BE takes no offers now (no agent, draining) */
	REFUSE_INTERNAL = 5,        /* the BE could not replay it (a helper failed, no answer to the SYN) */
	REFUSE_NO_LISTENER = 7,     /* nothing listens on the service port at the BE */
};
