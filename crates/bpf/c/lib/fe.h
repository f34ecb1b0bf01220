/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The FE side: the node that accepted the client's connection.
 *
 *   ingress SYN             -> entry FE_SYN (client ISN, SYN flags and options kept for a replay), pass
 *   egress  SYN-ACK         -> record our ISN, TSval, flags and options, pass
 *   ingress handshake ACK   -> FE_HOLD. A bare ACK is absorbed: our TCP stays in SYN-RECV, so the
 *                              server never sees the connection; the client's first data segment
 *                              carries the same ACK and completes the handshake wherever it goes
 *   ingress first data      -> decided here when the policy allows it (decide.h): entry deleted and
 *                              the segment passed to our TCP, which completes the handshake with it.
 *                              Otherwise held
 *   ingress held            -> copied to the agent and dropped (RST: forget and pass, it ends SYN-RECV)
 *   no agent alive          -> fail open: nothing new is tracked, a held connection is forgotten and
 *                              its packet passed up (the client retransmits what the agent had)
 *   ingress in FE_FORWARD   -> daddr := BE, redirect out toward the BE; but with a watch entry
 *                              (WATCH_HEADS) data at or past the next request head is held for
 *                              the agent (EV_NEXT_HEAD, follow.h)
 *   egress  in HOLD/FORWARD -> our TCP has no say: dropped, but for SYN-ACK retransmissions (a failed
 *                              one would make our TCP drop the half-open connection that a refused
 *                              offer falls back to; once the BE has it, the agent resets that side)
 *
 * The agent moves FE_HOLD -> FE_FORWARD when it offers the connection to a peer (the client's
 * packets follow the offer), or deletes the entry when the connection is served here.
 */
#pragma once
#include "conn.h"
#include "decide.h"
#include "follow.h"
#include "maps.h"
#include "options.h"
#include "parse.h"
#include "translate.h"

__always void fe_init(struct __sk_buff *skb, const struct pkt *p, struct conn *c, __u64 now)
{
	__builtin_memset(c, 0, sizeof(*c));
	c->role = ROLE_FE;
	c->state = FE_SYN;
	c->client_isn = p->seq;
	c->syn_tcp_flags = p->flags;
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

/* No agent runs: a connection that was held is passed up and forgotten. The client's next packet
 * (its data segment, retransmitted if the agent had taken it) completes the handshake with our TCP,
 * which still has the half-open connection. */
__always int fe_fail_open(const struct conn_key *key)
{
	bpf_map_delete_elem(&conns, key);
	stat_add(STAT_FAIL_OPEN, 1);
	return TC_ACT_OK;
}

/* A SYN for a tuple without an entry: start tracking it if we distribute and an agent runs. */
__always int fe_new_syn(struct __sk_buff *skb, const struct node_config *cfg, const struct pkt *p,
			const struct conn_key *key)
{
	stat_add(STAT_SYN, 1);
	if (!cfg->distribute) {
		stat_add(STAT_SYN_UNTRACKED, 1);
		return TC_ACT_OK;
	}
	if (!agent_alive()) {
		stat_add(STAT_SYN_UNTRACKED, 1);
		stat_add(STAT_FAIL_OPEN, 1);
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

/* A held connection's packet before the agent has seen any: the bare handshake ACK (and its
 * duplicates) is absorbed, the first data segment may be decided here, anything else goes to the
 * agent, which decides from then on. */
__always int fe_first_content(struct __sk_buff *skb, const struct node_config *cfg,
			      const struct pkt *p, const struct conn_key *key, struct conn *c)
{
	if (!p->payload_len && !(p->flags & (TCPF_FIN | TCPF_SYN))) {
		stat_add(STAT_HANDSHAKE_ABSORBED, 1);
		return TC_ACT_SHOT;
	}
	if (p->payload_len && p->seq == c->client_isn + 1 && decide_local(skb, cfg, p)) {
		bpf_map_delete_elem(&conns, key);
		stat_add(STAT_DECIDED_LOCAL, 1);
		return TC_ACT_OK;
	}
	conn_set_flags(c, CONN_AGENT_HOLDS);
	return fe_hold(skb, key);
}

__always int fe_ingress(struct __sk_buff *skb, const struct node_config *cfg, const struct pkt *p,
			const struct conn_key *key, struct conn *c)
{
	__u8 syn_only = (p->flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
	int verdict;

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
		if (!agent_alive())
			return fe_fail_open(key);
		c->state = FE_HOLD;
		return fe_first_content(skb, cfg, p, key, c);
	case FE_HOLD:
		if (!agent_alive())
			return fe_fail_open(key);
		if (p->flags & TCPF_RST) {
			/* The client gave up: the RST also ends our SYN-RECV; tell the agent, forget. */
			if (c->flags & CONN_AGENT_HOLDS)
				emit_packet(skb, EV_HELD_PACKET, key);
			bpf_map_delete_elem(&conns, key);
			return TC_ACT_OK;
		}
		if (!(c->flags & CONN_AGENT_HOLDS))
			return fe_first_content(skb, cfg, p, key, c);
		return fe_hold(skb, key);
	case FE_FORWARD:
		if (syn_only && (c->flags & (CONN_CLIENT_FIN | CONN_RST))) {
			/* The old connection is over and the client reuses the tuple: start afresh. */
			stat_add(STAT_SYN, 1);
			fe_init(skb, p, c, bpf_ktime_get_ns());
			return TC_ACT_OK;
		}
		verdict = follow_hold_head(skb, p, key);
		if (verdict)
			return verdict;
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
			c->synack_tcp_flags = p->flags;
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
	/* Held or offered: our TCP may retransmit its SYN-ACK. It must go out: a failed retransmission
	 * makes TCP drop the half-open connection that a local release needs. The client answers it
	 * with a duplicate ACK, which is held or forwarded like the rest. */
	if (synack)
		return TC_ACT_OK;
	/* Otherwise our TCP has no say: the client's connection is held or lives at another node. */
	return drop(DROP_FE_SILENCED);
}
