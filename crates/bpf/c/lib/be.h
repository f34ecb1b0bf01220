/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The BE side: the node serving a connection that another node accepted.
 *
 *   egress  BE_SYN_SENT    -> the server's answer to the replayed SYN goes to the agent, dropped:
 *                             a SYN-ACK gives the agent ISN and TSval; a RST means no listener;
 *                             anything else means the tuple is in use here
 *   ingress BE_SYN_SENT    -> the server's TCP cannot read the client's numbers yet: data and FINs
 *                             go to the agent, which adds them to the request it replays; dropped
 *   agent                  -> BE_REPLAYED with the offsets; it replays the request (the data segment
 *                             carries the handshake ACK, so servers that defer accept take it too)
 *   egress  BE_REPLAYED    -> a SYN-ACK retransmission or a RST goes to the agent, dropped. Anything
 *                             else proves the server's TCP has the connection: BE_ESTABLISHED,
 *                             EV_BE_LIVE once, and the packet goes to the client. Only before
 *                             live_deadline_ns: after it the agent has given up (and tells the FE),
 *                             so the connection must never reach the client
 *   ingress BE_REPLAYED    -> translated (the FE forwards from the moment it offers)
 *   ingress BE_ESTABLISHED -> ack, SACK edges, TSecr into the server's spaces; with a watch entry
 *                             (WATCH_HEADS: the FE serving a connection moved back to it) data at
 *                             or past the next request head is held for the agent (follow.h)
 *   egress  BE_ESTABLISHED -> saddr := FE, seq and TSval into the client's view; sent directly.
 *                             Before that, a watch entry with WATCH_FROZEN drops it (the
 *                             connection is moving away), and a responses entry follows where the
 *                             server's responses end (response.h)
 *   a client SYN for a handed-in tuple is a tuple collision: dropped, never merged; once that
 *   connection closed, it is the client's new connection to this node: the entry starts afresh
 *   both FINs or a RST     -> EV_CLOSED once; the agent tells the FE and removes the entry later
 */
#pragma once
#include "conn.h"
#include "fe.h"
#include "follow.h"
#include "maps.h"
#include "parse.h"
#include "response.h"
#include "translate.h"

__always void be_note_close(struct conn *c, const struct conn_key *key, __u32 fin_flag, __u8 tcp_flags)
{
	__u32 bits = 0;
	if (tcp_flags & TCPF_FIN)
		bits |= fin_flag;
	if (tcp_flags & TCPF_RST)
		bits |= CONN_RST;
	if (!bits)
		return;
	__u32 flags = conn_set_flags(c, bits) | bits;
	__u8 closed = (flags & CONN_RST) ||
		      (flags & (CONN_CLIENT_FIN | CONN_SERVER_FIN)) == (CONN_CLIENT_FIN | CONN_SERVER_FIN);
	/* Exactly one CPU wins the CLOSE_REPORTED bit, and that one reports. */
	if (closed && !(conn_set_flags(c, CONN_CLOSE_REPORTED) & CONN_CLOSE_REPORTED))
		emit_notice(EV_CLOSED, key);
}

__always int be_ingress(struct __sk_buff *skb, const struct node_config *cfg, const struct pkt *p,
			const struct conn_key *key, struct conn *c)
{
	if ((p->flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN) {
		if (!(c->flags & CONN_CLOSE_REPORTED))
			return drop(DROP_TUPLE_COLLISION);
		/* Over: the client's ports toward the FE and toward us are independent, and this is
		 * its own connection to this node. The agent forgets the old one by its ISN. */
		bpf_map_delete_elem(&conns, key);
		return fe_new_syn(skb, cfg, p, key);
	}
	if (c->state == BE_SYN_SENT && (p->payload_len || (p->flags & TCPF_FIN))) {
		if (emit_packet(skb, EV_HELD_PACKET, key))
			return drop(DROP_EVENT_LOST);
		return drop(DROP_HELD);
	}
	if (c->state != BE_ESTABLISHED && c->state != BE_REPLAYED)
		return drop(DROP_BE_NOT_READY);
	if (c->state == BE_ESTABLISHED) {
		int verdict = follow_hold_head(skb, p, key);
		if (verdict)
			return verdict;
	}
	be_note_close(c, key, CONN_CLIENT_FIN, p->flags);
	c->packets++;
	stat_add(STAT_TO_SERVER_PACKETS, 1);
	if (translate_to_server(skb, p, c->seq_delta, c->ts_delta))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* The server's TCP spoke on a replayed connection: it has it. Returns 0 if it may go on to the
 * client, or a verdict. */
__always int be_go_live(struct __sk_buff *skb, const struct pkt *p, const struct conn_key *key,
			struct conn *c)
{
	if (p->flags & (TCPF_SYN | TCPF_RST)) {
		emit_packet(skb, EV_BE_SYNACK, key);
		return drop(DROP_BE_SYNACK);
	}
	if (bpf_ktime_get_ns() >= c->live_deadline_ns)
		return drop(DROP_BE_LATE);
	c->state = BE_ESTABLISHED;
	if (!(conn_set_flags(c, CONN_LIVE_REPORTED) & CONN_LIVE_REPORTED)) {
		emit_notice(EV_BE_LIVE, key);
		stat_add(STAT_BE_LIVE, 1);
	}
	return 0;
}

__always int be_egress(struct __sk_buff *skb, const struct pkt *p, const struct conn_key *key,
		       struct conn *c)
{
	if (c->state == BE_SYN_SENT) {
		emit_packet(skb, EV_BE_SYNACK, key);
		return drop(DROP_BE_SYNACK);
	}
	if (c->state == BE_REPLAYED) {
		int verdict = be_go_live(skb, p, key, c);
		if (verdict)
			return verdict;
	}
	if (c->state != BE_ESTABLISHED)
		return drop(DROP_BE_NOT_READY);
	int frozen = follow_frozen(key);
	if (frozen)
		return frozen;
	follow_responses(skb, p, key);
	be_note_close(c, key, CONN_SERVER_FIN, p->flags);
	c->bytes += skb->len;
	/* Counted as handed in only if another node accepted it: a connection this node accepted
	 * and serves itself, followed, is translated too (at offset zero, or moved back here). */
	if (c->peer_addr != p->saddr) {
		stat_add(STAT_TO_CLIENT_PACKETS, 1);
		stat_add(STAT_TO_CLIENT_BYTES, skb->len - ETH_HLEN);
	}
	if (translate_to_client(skb, p, c->seq_delta, c->ts_delta, c->peer_addr))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
