/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The FE side: the node that accepted the client's connection (DESIGN §3 steps 1, 2, 5, 7).
 *
 *   ingress SYN            -> entry FE_SYN (client ISN, SYN options kept for a replay), pass
 *   egress  SYN-ACK        -> record our ISN, TSval and options, pass
 *   ingress handshake ACK  -> FE_HOLD: copy to the agent and drop, so our TCP stays in SYN-RECV
 *                             and the server never sees the connection until the agent decides
 *   ingress in FE_HOLD     -> copy to the agent and drop (RST: forget and pass, it kills SYN-RECV)
 *   ingress in FE_FORWARD  -> daddr := BE, redirect out toward the BE
 *   egress  in HOLD/FORWARD-> our TCP has no say: dropped, except SYN-ACK retransmissions while
 *                             held (a failed one would make our TCP drop the half-open connection)
 *
 * The agent moves FE_HOLD -> FE_FORWARD (handoff accepted) or deletes the entry (served locally).
 */
#pragma once
#include "conn.h"
#include "events.h"
#include "options.h"
#include "parse.h"
#include "translate.h"

/* conn.flags bit private to the FE: our SYN-ACK has gone out, local_isn is valid. */
#define CONN_SYNACK_SEEN 0x10

__always void fe_init(struct __sk_buff *skb, const struct pkt *p, struct conn *c, __u64 now)
{
	__builtin_memset(c, 0, sizeof(*c));
	c->role = ROLE_FE;
	c->state = FE_SYN;
	c->client_isn = p->seq;
	c->created_ns = now;
	c->last_seen_ns = now;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct tcphdr *tcp = data + (p->l4_off & OFF_MASK);
	if ((void *)(tcp + 1) <= data_end)
		c->syn_window = bpf_ntohs(tcp->window);
	if (!load_bytes_var(skb, p->opts_off, c->syn_opts, p->opts_len, TCP_OPTS_MAX))
		c->syn_opts_len = p->opts_len;
}

/* A SYN for a tuple without an entry: start tracking it if we distribute. */
__always int fe_new_syn(struct __sk_buff *skb, const struct node_config *cfg, const struct pkt *p,
			const struct conn_key *key)
{
	stat_add(STAT_SYN, 1);
	if (!cfg->distribute) {
		stat_add(STAT_SYN_UNTRACKED, 1);
		return TC_ACT_OK;
	}
	struct conn c;
	fe_init(skb, p, &c, bpf_ktime_get_ns());
	if (bpf_map_update_elem(&conns, key, &c, BPF_NOEXIST)) {
		stat_add(STAT_TABLE_FULL, 1);
		stat_add(STAT_SYN_UNTRACKED, 1);
	}
	return TC_ACT_OK;
}

__always int fe_hold(struct __sk_buff *skb, const struct conn_key *key)
{
	if (emit_packet(skb, EV_HELD_PACKET, key))
		return drop(DROP_EVENT_LOST);
	return drop(DROP_HELD);
}

__always int fe_ingress(struct __sk_buff *skb, const struct pkt *p, const struct conn_key *key,
			struct conn *c)
{
	__u8 syn_only = (p->flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;

	switch (c->state) {
	case FE_SYN:
		if (syn_only) {
			if (p->seq != c->client_isn)
				fe_init(skb, p, c, bpf_ktime_get_ns()); /* a new connection on the tuple */
			return TC_ACT_OK;
		}
		if (p->flags & TCPF_RST) {
			bpf_map_delete_elem(&conns, key);
			return TC_ACT_OK;
		}
		/* Only the ACK of our SYN-ACK starts holding; anything else is our TCP's business. */
		if (!(p->flags & TCPF_ACK) || !(c->flags & CONN_SYNACK_SEEN) ||
		    p->ack_seq != c->local_isn + 1)
			return TC_ACT_OK;
		c->state = FE_HOLD;
		return fe_hold(skb, key);
	case FE_HOLD:
		if (p->flags & TCPF_RST) {
			/* The client gave up: the RST also ends our SYN-RECV; tell the agent, forget. */
			emit_packet(skb, EV_HELD_PACKET, key);
			bpf_map_delete_elem(&conns, key);
			return TC_ACT_OK;
		}
		return fe_hold(skb, key);
	case FE_FORWARD:
		if (syn_only && (c->flags & (CONN_CLIENT_FIN | CONN_RST))) {
			/* The old connection is over and the client reuses the tuple: start afresh. */
			stat_add(STAT_SYN, 1);
			fe_init(skb, p, c, bpf_ktime_get_ns());
			return TC_ACT_OK;
		}
		if (p->flags & TCPF_FIN)
			conn_set_flags(c, CONN_CLIENT_FIN);
		if (p->flags & TCPF_RST)
			conn_set_flags(c, CONN_RST);
		c->packets++;
		c->bytes += skb->len;
		stat_add(STAT_FORWARD_PACKETS, 1);
		stat_add(STAT_FORWARD_BYTES, skb->len);
		if (rewrite_daddr(skb, p, c->peer_addr))
			return drop(DROP_REDIRECT_FAILED);
		return bpf_redirect_neigh(skb->ifindex, NULL, 0, 0);
	}
	return TC_ACT_OK;
}

__always int fe_egress(struct __sk_buff *skb, const struct pkt *p, struct conn *c)
{
	__u8 synack = (p->flags & (TCPF_SYN | TCPF_ACK)) == (TCPF_SYN | TCPF_ACK);

	if (c->state == FE_SYN) {
		if (synack) {
			struct tcp_opts o;
			find_opts(skb, p, &o);
			c->local_isn = p->seq;
			if (o.ts_off >= 0) {
				__be32 tsval;
				if (!bpf_skb_load_bytes(skb, p->opts_off + o.ts_off, &tsval, 4))
					c->synack_tsval = bpf_ntohl(tsval);
			}
			if (!load_bytes_var(skb, p->opts_off, c->synack_opts, p->opts_len, TCP_OPTS_MAX))
				c->synack_opts_len = p->opts_len;
			conn_set_flags(c, CONN_SYNACK_SEEN);
		}
		return TC_ACT_OK;
	}
	/* Held: our TCP may retransmit its SYN-ACK. It must go out: a failed retransmission makes TCP
	 * drop the half-open connection we are holding. The client answers it with a duplicate ACK,
	 * which is held like the rest. */
	if (c->state == FE_HOLD && synack)
		return TC_ACT_OK;
	/* Otherwise our TCP has no say: the client's connection is held or lives at another node. */
	return drop(synack ? DROP_SYNACK_HIDDEN : DROP_FE_SILENCED);
}
