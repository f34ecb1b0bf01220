/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The FE side: the node that accepted the client's connection.
 *
 *   ingress SYN             -> entry FE_SYN (client ISN, SYN flags and options kept for a replay), pass
 *   egress  SYN-ACK         -> record our ISN, TSval, flags and options, pass
 *   ingress handshake ACK   -> FE_HOLD. A bare ACK is absorbed: our TCP stays in SYN-RECV, so the
 *                              server never sees the connection; the client's first data segment
 *                              carries the same ACK and completes the handshake wherever it goes
 *   ingress first data      -> decided here when the policy allows it (decide.h): entry deleted and
 *                              the segment passed to our TCP, which completes the handshake with it
 *                              (requests followed: the entry translates at offset zero instead,
 *                              fe_follow_here);
 *                              for another node, offered to it by the datapath (offer.h): FE_FORWARD
 *                              (requests followed: with a watch entry, fe_offer_follow).
 *                              Otherwise held
 *   ingress held            -> copied to the agent and dropped (RST: forget and pass, it ends SYN-RECV)
 *   no agent alive          -> fail open: nothing new is tracked, a held connection is forgotten and
 *                              its packet passed up (the client retransmits what the agent had)
 *   ingress in FE_FORWARD   -> daddr := BE, redirect out toward the BE (the first data segment of a
 *                              datapath offer with its offer header again); but with a watch entry
 *                              (WATCH_HEADS) data at or past the next request head is held for
 *                              the agent (EV_NEXT_HEAD, follow.h)
 *   egress  in HOLD/FORWARD -> our TCP has no say: dropped, but for SYN-ACK retransmissions (a failed
 *                              one would make our TCP drop the half-open connection that a refused
 *                              offer falls back to; once the BE has it, the agent resets that side)
 *
 *   ingress offer REFUSED   -> the segment of a datapath offer, back: restored and served here, or,
 *                              for a tuple in use at the BE, held for the agent (offer.h)
 *
 * The agent moves FE_HOLD -> FE_FORWARD when it offers the connection to a peer (the client's
 * packets follow the offer), or deletes the entry when the connection is served here.
 */
#pragma once
#include "conn.h"
#include "decide.h"
#include "follow.h"
#include "maps.h"
#include "offer.h"
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

/* The datapath offer of a connection in FE_FORWARD (its first data segment, or a retransmission
 * of it): daddr := BE, the offer header in, out toward the BE. */
__always int fe_send_offer(struct __sk_buff *skb, const struct node_config *cfg, const struct pkt *p,
			   const struct conn_key *key, struct conn *c)
{
	struct offer_scratch *s = offer_scratch_get();
	if (!s)
		return drop(DROP_REDIRECT_FAILED);
	struct offer *o = &s->o;
	__builtin_memset(o, 0, sizeof(*o));
	o->version = OFFER_VERSION;
	o->kind = (c->flags & CONN_FOLLOWED) ? OFFER_KIND_FOLLOWED : OFFER_KIND_OFFER;
	o->syn_opts_len = c->syn_opts_len;
	o->syn_tcp_flags = c->syn_tcp_flags;
	o->synack_tcp_flags = c->synack_tcp_flags;
	o->syn_window = bpf_htons(c->syn_window);
	o->client_addr = key->client_addr;
	o->fe_addr = cfg->service_addr;
	o->be_addr = c->peer_addr;
	o->client_port = key->client_port;
	o->service_port = key->local_port;
	o->client_isn = bpf_htonl(c->client_isn);
	o->fe_isn = bpf_htonl(c->local_isn);
	o->fe_tsval = bpf_htonl(c->synack_tsval);
	o->synack_mss = bpf_htons(c->synack_digest.mss);
	o->synack_wscale = c->synack_digest.wscale;
	o->synack_bits = c->synack_digest.bits;
	o->handoff_id = bpf_cpu_to_be64(c->handoff_id);
	o->offered_ns = bpf_cpu_to_be64(c->offered_ns);
	__builtin_memcpy(o->syn_opts, c->syn_opts, TCP_OPTS_MAX);
	offer_seal(cfg, o);
	if (p->flags & TCPF_FIN)
		conn_set_flags(c, CONN_CLIENT_FIN);
	c->packets++;
	c->bytes += skb->len;
	stat_add(STAT_FORWARD_PACKETS, 1);
	stat_add(STAT_FORWARD_BYTES, skb->len);
	if (rewrite_daddr(skb, p, c->peer_addr) || offer_push(skb, o))
		return drop(DROP_REDIRECT_FAILED);
	return bpf_redirect_neigh(skb->ifindex, NULL, 0, 0);
}

/* A followed offer's first segment again only up to the next head: one that runs past it (a
 * pipelining client's retransmission joined to its next request) is the watch's (follow.h).
 * Without a watch nothing holds it: offered again, or it would reach no one. */
__always int fe_resend_within_head(const struct pkt *p, const struct conn_key *key,
				   const struct conn *c)
{
	if (!(c->flags & CONN_FOLLOWED))
		return 1;
	struct watch *w = bpf_map_lookup_elem(&watch, key);
	return !w || (__s32)(w->next_head_seq - (p->seq + p->payload_len)) >= 0;
}

/* Whether this segment can carry a datapath offer: not a GSO packet, no IP options, and it fits
 * the interface with the offer header. */
__always int fe_offer_fits(struct __sk_buff *skb, const struct node_config *cfg, const struct pkt *p)
{
	return !skb->gso_size && p->l4_off == OFFER_OFF && skb->len + OFFER_LEN <= ETH_HLEN + cfg->mtu;
}

/* Hash with requests followed (DECIDE_HASH_STAYS): the offer of a whole plain first request to
 * node `winner` is followed, as the agent's would be: the watch holds the client's data from the
 * next head on (or lets it stay on `winner`, follow.h), and the BE counts the responses
 * (OFFER_KIND_FOLLOWED). Only to a node whose agent takes such offers, and not with a FIN (the
 * connection ends with this request). 0 if followed, -1: the agent decides. */
__always int fe_offer_follow(const struct node_config *cfg, const struct pkt *p,
			     const struct conn_key *key, struct conn *c, int winner)
{
	if (!cfg->nodes[winner & (DP_NODES_MAX - 1)].follows || (p->flags & TCPF_FIN))
		return -1;
	struct watch w = {
		.flags = WATCH_HEADS,
		.next_head_seq = c->client_isn + 1 + p->payload_len,
		.node = winner,
	};
	if (bpf_map_update_elem(&watch, key, &w, BPF_ANY))
		return -1;
	conn_set_flags(c, CONN_FOLLOWED);
	return 0;
}

/* Offers the connection to node `winner` from the datapath (offer.h). Returns a verdict, or -1
 * when the agent must decide it (offers off, or no address for the node, or a segment that cannot
 * carry the offer, or one that must be followed and cannot be). */
__always int fe_offer(struct __sk_buff *skb, const struct node_config *cfg, const struct pkt *p,
		      const struct conn_key *key, struct conn *c, int winner)
{
	if (!cfg->offers || winner < 0 || winner >= DP_NODES_MAX || !(c->flags & CONN_SYNACK_SEEN))
		return -1;
	__be32 be = cfg->nodes[winner & (DP_NODES_MAX - 1)].addr;
	if (!be || be == cfg->service_addr || !fe_offer_fits(skb, cfg, p))
		return -1;
	if (cfg->decide == DECIDE_HASH_STAYS && fe_offer_follow(cfg, p, key, c, winner))
		return -1;
	c->peer_addr = be;
	c->handoff_id = (1ULL << 63) | ((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32();
	c->offered_ns = offer_clock_ns(cfg);
	conn_set_flags(c, CONN_DP_OFFER);
	c->state = FE_FORWARD;
	/* With its id: should the agent read it only after the client's next connection on the
	 * tuple took the entry, it still knows the offer it will never see answered. A followed
	 * one carries where the next request head starts. */
	struct event_hdr h = {
		.kind = EV_DP_OFFERED,
		.detail = (c->flags & CONN_FOLLOWED) ? c->client_isn + 1 + p->payload_len : 0,
		.key = *key,
		.handoff_id = c->handoff_id,
	};
	/* Unheard, a followed offer could not be followed right (the agent would not know how
	 * many requests the BE had): it goes unfollowed. */
	if (emit_notice_hdr(&h, 1) && (c->flags & CONN_FOLLOWED)) {
		bpf_map_delete_elem(&watch, key);
		conn_clear_flags(c, CONN_FOLLOWED);
	}
	stat_add(STAT_DP_OFFERS, 1);
	return fe_send_offer(skb, cfg, p, key, c);
}

/* A datapath offer of ours came back refused (offer.h): the segment is the client's again. It is
 * served here (our TCP completes its half-open handshake with it), unless the tuple was in use at
 * the BE: then it is held for the agent, whose offer may end what holds the tuple there. */
__always int fe_offer_returned(struct __sk_buff *skb, const struct node_config *cfg,
			       const struct offer *o)
{
	struct conn_key key = offer_conn_key(cfg, o);
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (!c || c->role != ROLE_FE || c->state != FE_FORWARD || !(c->flags & CONN_DP_OFFER) ||
	    c->handoff_id != bpf_be64_to_cpu(o->handoff_id) || o->fe_addr != cfg->service_addr)
		return drop(DROP_OFFER_REJECTED);
	__be32 be = c->peer_addr;
	/* The TCP checksum still sums client -> BE: the source goes back without touching it, the
	 * destination with it. */
	if (offer_pop(skb) || ip_addr_set(skb, IP_SADDR_OFF, o->client_addr) ||
	    bpf_l4_csum_replace(skb, OFFER_OFF + TCP_CSUM_OFF, be, cfg->service_addr,
				BPF_F_PSEUDO_HDR | 4))
		return drop(DROP_REDIRECT_FAILED);
	stat_add(STAT_DP_RETURNED, 1);
	/* Followed nowhere now: what the agent decides next is its own. */
	if (c->flags & CONN_FOLLOWED)
		bpf_map_delete_elem(&watch, &key);
	emit_notice_detail(EV_DP_RETURNED, &key, o->reason, be);
	if (o->reason == REFUSE_COLLISION && agent_alive()) {
		conn_clear_flags(c, CONN_DP_OFFER | CONN_FOLLOWED);
		c->state = FE_HOLD;
		conn_set_flags(c, CONN_AGENT_HOLDS);
		return fe_hold(skb, &key);
	}
	bpf_map_delete_elem(&conns, &key);
	return TC_ACT_OK;
}

/* Hash with requests followed (DECIDE_HASH_STAYS): a first request whose whole plain head hashes
 * to this node is served here and followed, as the agent would (`serve_here_followed`): the
 * responses and the watch begin, a quiet EV_DP_FOLLOWED_HERE carries the FE entry to the agent,
 * and the entry becomes a translating one at offset zero (what our TCP sends goes through the
 * response count). The segment goes on into our TCP and completes its handshake. 1 if done, 0:
 * nothing changed. */
__always int fe_follow_here(struct __sk_buff *skb, const struct node_config *cfg,
			    const struct pkt *p, const struct conn_key *key, struct conn *c)
{
	if (!(c->flags & CONN_SYNACK_SEEN) || (p->flags & TCPF_FIN))
		return 0;
	struct responses r = {.next_head = c->local_isn + 1};
	struct watch w = {
		.flags = WATCH_HEADS,
		.next_head_seq = c->client_isn + 1 + p->payload_len,
		.node = cfg->self_index,
	};
	__u64 id = (1ULL << 63) | ((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32();
	struct event_hdr h = {
		.kind = EV_DP_FOLLOWED_HERE,
		.detail = w.next_head_seq,
		.key = *key,
		.handoff_id = id,
	};
	if (bpf_map_update_elem(&responses, key, &r, BPF_ANY))
		return 0;
	if (bpf_map_update_elem(&watch, key, &w, BPF_ANY) || emit_quiet_conn(&h, c)) {
		bpf_map_delete_elem(&watch, key);
		bpf_map_delete_elem(&responses, key);
		return 0;
	}
	/* The role and state last: a packet of the connection on another CPU sees the FE entry or
	 * the whole translating one. */
	__u64 now = bpf_ktime_get_ns();
	/* Placed by the datapath and followed: its notices are quiet, as a followed offer's. */
	__sync_fetch_and_and(&c->flags, CONN_FOLLOWED);
	conn_set_flags(c, CONN_FOLLOWED);
	c->syn_opts_len = 0;
	c->synack_opts_len = 0;
	c->synack_tsval = 0;
	c->syn_window = 0;
	c->syn_tcp_flags = 0;
	c->synack_tcp_flags = 0;
	c->peer_addr = cfg->service_addr;
	c->seq_delta = 0;
	c->ts_delta = 0;
	c->synack_digest = (struct syn_digest){};
	c->created_ns = now;
	c->last_seen_ns = now;
	c->client_seen_ns = now;
	c->live_deadline_ns = 0;
	c->packets = 0;
	c->bytes = 0;
	c->handoff_id = id;
	c->offered_ns = 0;
	barrier(); /* stores in this order (x86 keeps them so for other CPUs too) */
	c->state = BE_ESTABLISHED;
	c->role = ROLE_BE;
	stat_add(STAT_DECIDED_LOCAL, 1);
	return 1;
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
	if (p->payload_len && p->seq == c->client_isn + 1) {
		int winner = decide_first(skb, cfg, p);
		if (winner >= 0 && winner == cfg->self_index && cfg->decide == DECIDE_HASH_STAYS) {
			if (fe_follow_here(skb, cfg, p, key, c)) {
				bounded_count(cfg, winner);
				return TC_ACT_OK;
			}
		} else if (winner >= 0 && winner == cfg->self_index) {
			bpf_map_delete_elem(&conns, key);
			stat_add(STAT_DECIDED_LOCAL, 1);
			bounded_count(cfg, winner);
			return TC_ACT_OK;
		}
		int verdict = fe_offer(skb, cfg, p, key, c, winner);
		if (verdict >= 0) {
			bounded_count(cfg, winner);
			return verdict;
		}
	}
	conn_set_flags(c, CONN_AGENT_HOLDS);
	return fe_hold(skb, key);
}

/* Ends our TCP's half-open side of a connection the BE has (a request socket in SYN-RECV, which
 * would otherwise answer nothing, hold a place in the listener's SYN queue and retransmit its
 * SYN-ACK for a minute): this client segment goes back in through ingress as the RST the agent
 * would send, marked for our TCP, which drops the request socket as for the client's own RST.
 * What the request socket checks first must pass: no ACK (it leaves an ACK of anything but its
 * SYN-ACK to the listener), the seq it expects (another gets a challenge ACK), a TSecr among its
 * SYN-ACKs' TSvals (the client's echoes the BE's clock: our SYN-ACK's instead). The segment
 * itself goes on unchanged. */
__always void fe_reset_local(struct __sk_buff *skb, const struct pkt *p, const struct conn *c)
{
	/* The word of the data offset and the flags (its low byte), and seq: the first has no
	 * 4-byte alignment of its own, so it travels with the window that follows. */
	__u32 flags_off = p->l4_off + 12, seq_off = p->l4_off + TCP_SEQ_OFF;
	__be32 flags, seq, tsecr = 0;
	__be32 rst_seq = bpf_htonl(c->client_isn + 1), our_tsval = bpf_htonl(c->synack_tsval);
	struct tcp_opts o;
	find_opts(skb, p, &o);
	__u32 tsecr_off = p->opts_off + o.ts_off + 4;
	if (bpf_skb_load_bytes(skb, flags_off, &flags, 4) || bpf_skb_load_bytes(skb, seq_off, &seq, 4) ||
	    (o.ts_off >= 0 && bpf_skb_load_bytes(skb, tsecr_off, &tsecr, 4)))
		return;
	__be32 rst_flags = (flags & bpf_htonl(0xff00ffff)) | bpf_htonl(TCPF_RST << 16);
	int written = 0; /* fields rewritten so far, in this order: flags, seq, TSecr */
	if (!tcp_word_write(skb, p, flags_off, flags, rst_flags)) {
		written = 1;
		if (!tcp_word_write(skb, p, seq_off, seq, rst_seq)) {
			written = 2;
			if (o.ts_off < 0 || !tcp_word_write(skb, p, tsecr_off, tsecr, our_tsval))
				written = 3;
		}
	}
	if (written == 3) {
		__u32 mark = skb->mark;
		skb->mark = LOCAL_DELIVERY_MARK;
		bpf_clone_redirect(skb, skb->ifindex, BPF_F_INGRESS);
		skb->mark = mark;
		if (o.ts_off >= 0)
			tcp_word_write(skb, p, tsecr_off, our_tsval, tsecr);
	}
	/* Back as it was. */
	if (written >= 2)
		tcp_word_write(skb, p, seq_off, rst_seq, seq);
	if (written >= 1)
		tcp_word_write(skb, p, flags_off, rst_flags, flags);
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
			follow_forget_tuple(key);
			return TC_ACT_OK;
		}
		/* Offered again with the client's retransmissions, for as long as the BE may take it
		 * (its deadline counts from the first offer) and the client has not acknowledged its
		 * bytes (then it has the connection, which may have moved on since): after that, only
		 * our agent decides. */
		if ((c->flags & (CONN_DP_OFFER | CONN_DP_LIVE)) == CONN_DP_OFFER &&
		    p->seq == c->client_isn + 1 && pkt_data_len(p) && fe_offer_fits(skb, cfg, p) &&
		    offer_clock_ns(cfg) - c->offered_ns < cfg->live_window_ns &&
		    fe_resend_within_head(p, key, c))
			return fe_send_offer(skb, cfg, p, key, c);
		/* Only the BE's bytes can move the client's ACK past our SYN-ACK: it has the connection,
		 * which the agent must know even if the BE's agent never says so, and our TCP's
		 * half-open side of it is no fallback any more. */
		if ((c->flags & (CONN_DP_OFFER | CONN_DP_LIVE)) == CONN_DP_OFFER && (p->flags & TCPF_ACK) &&
		    (__s32)(p->ack_seq - (c->local_isn + 1)) > 0 &&
		    !(conn_set_flags(c, CONN_DP_LIVE) & CONN_DP_LIVE))
			fe_reset_local(skb, p, c);
		verdict = follow_hold_head(skb, cfg, p, key);
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
			c->synack_digest = o.syn;
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
	 * with a duplicate ACK, which is held or forwarded like the rest. Once the BE has the
	 * connection that is what we want: should our reset (fe_reset_local) have been lost, the
	 * first retransmission fails and ends the half-open side. */
	if (synack && (c->flags & CONN_DP_LIVE))
		return drop(DROP_SYNACK_HIDDEN);
	if (synack)
		return TC_ACT_OK;
	/* Otherwise our TCP has no say: the client's connection is held or lives at another node. */
	return drop(DROP_FE_SILENCED);
}
