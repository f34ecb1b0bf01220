/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The BE side: the node serving a connection that another node accepted (DESIGN §3 steps 6, 8, 9).
 *
 *   egress  BE_SYN_SENT    -> the server's answer to the replayed SYN goes to the agent, dropped
 *                             (TCP ignores a failed first SYN-ACK; the agent answers long before a
 *                             retransmission, whose failure would end the half-open connection)
 *                             (a SYN-ACK: learn ISN/TSval; anything else: the tuple is in use)
 *   egress  BE_REPLAYED    -> dropped: nothing may reach the client before the FE forwards
 *   ingress BE_REPLAYED    -> the first forwarded packet proves the FE committed: BE_ESTABLISHED
 *   ingress BE_ESTABLISHED -> ack, SACK edges, TSecr into the server's spaces
 *   egress  BE_ESTABLISHED -> saddr := FE, seq and TSval into the client's view; sent directly
 *   a client SYN for a handed-in tuple is a tuple collision: dropped, never merged
 *   both FINs or a RST     -> EV_CLOSED once; the agent tells the FE and removes the entry later
 */
#pragma once
#include "conn.h"
#include "events.h"
#include "parse.h"
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

__always int be_ingress(struct __sk_buff *skb, const struct pkt *p, const struct conn_key *key,
			struct conn *c)
{
	if ((p->flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
		return drop(DROP_TUPLE_COLLISION);
	if (c->state == BE_REPLAYED)
		c->state = BE_ESTABLISHED;
	if (c->state != BE_ESTABLISHED)
		return drop(DROP_BE_NOT_READY);
	be_note_close(c, key, CONN_CLIENT_FIN, p->flags);
	c->packets++;
	stat_add(STAT_TO_SERVER_PACKETS, 1);
	if (translate_to_server(skb, p, c->seq_delta, c->ts_delta))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

__always int be_egress(struct __sk_buff *skb, const struct pkt *p, const struct conn_key *key,
		       struct conn *c)
{
	if (c->state == BE_SYN_SENT) {
		emit_packet(skb, EV_BE_SYNACK, key);
		return drop(DROP_BE_SYNACK);
	}
	if (c->state != BE_ESTABLISHED)
		return drop(DROP_BE_NOT_READY);
	be_note_close(c, key, CONN_SERVER_FIN, p->flags);
	c->bytes += skb->len;
	stat_add(STAT_TO_CLIENT_PACKETS, 1);
	stat_add(STAT_TO_CLIENT_BYTES, skb->len - ETH_HLEN);
	if (translate_to_client(skb, p, c->seq_delta, c->ts_delta, c->peer_addr))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
