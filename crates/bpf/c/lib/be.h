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
 *   the close              -> EV_CLOSED once, when our TCP lets go (be_socket_closed: a FIN or a RST
 *                             the datapath saw may have been refused by TCP), saying whether a
 *                             timewait socket holds the tuple; the agent tells the FE, ends the
 *                             TIME_WAIT and removes the entry
 *
 * A datapath offer (offer.h) makes its BE_SYN_SENT entry itself (CONN_DP_OFFER), and the
 * server's answer to its SYN is read here instead of by the agent; a followed one
 * (CONN_FOLLOWED) starts the responses entry with it.
 */
#pragma once
#include "conn.h"
#include "fe.h"
#include "follow.h"
#include "maps.h"
#include "offer.h"
#include "parse.h"
#include "response.h"
#include "sock_state.h"
#include "translate.h"

/* A notice about a handed-in connection. Those of a connection the datapath placed (a datapath
 * offer, or one it serves here and follows: fe_follow_here) are quiet: nothing waits for them
 * (the FE forwards and the server answers the client meanwhile), and a wakeup is an IPI in the
 * middle of the server's packet (tens of µs on a virtual machine); the agent reads them before
 * its next input or round. The agent's own replays' notices wake it: a followed connection's
 * next request waits for them. */
__always int be_notice(const struct conn *c, __u32 kind, const struct conn_key *key, __u32 detail)
{
	/* Named by its handoff: read late, the tuple may be the client's next connection's. */
	struct event_hdr h = {
		.kind = kind,
		.detail = detail,
		.key = *key,
		.peer = c->peer_addr,
		.sock_cookie = c->sock_cookie,
		.handoff_id = c->handoff_id,
	};
	return emit_notice_hdr(&h, c->flags & (CONN_DP_OFFER | CONN_FOLLOWED));
}

/* Notes the FINs and RSTs that pass (the client's FIN with where it ends). They report nothing:
 * our TCP has the last word on a close (be_socket_closed). */
__always void be_note_close(struct conn *c, const struct pkt *p, __u32 fin_flag)
{
	__u32 bits = 0;
	if (p->flags & TCPF_FIN) {
		bits |= fin_flag;
		/* Written before the flag that makes it valid (the atomic OR orders it). */
		if (fin_flag == CONN_CLIENT_FIN)
			c->client_fin_end = p->seq + p->payload_len + 1;
	}
	if (p->flags & TCPF_RST)
		bits |= CONN_RST;
	if (bits)
		conn_set_flags(c, bits);
}

/* EV_CLOSED, once: exactly one CPU wins the CLOSE_REPORTED bit. */
__always void be_report_close(struct conn *c, const struct conn_key *key, __u32 code)
{
	if (!(conn_set_flags(c, CONN_CLOSE_REPORTED) & CONN_CLOSE_REPORTED))
		be_notice(c, EV_CLOSED, key, code);
}

/* The server's TCP closed a handed-in connection's socket (tracepoint, new state CLOSE). A socket
 * that leaves FIN_WAIT2 or CLOSING leaves a timewait socket on the tuple: in TIME_WAIT if the
 * client's FIN went through the socket (its rcv_nxt is past it), else in FIN_WAIT2 until that FIN
 * comes, whose ACK reports the close (be_after_socket). That is how a socket its server closed
 * ends: once its own FIN is acknowledged. A RST seen on the way makes either unsure (TCP ignores
 * one outside its window). Any other way out (LAST_ACK acknowledged, a RST, an abort) leaves
 * nothing. */
__always int be_socket_closed(const struct inet_sock_set_state_args *args)
{
	if (args->newstate != TCP_STATE_CLOSE || !is_service_socket(args, 0))
		return 0;
	struct conn_key key = {
		.client_port = bpf_htons(args->dport),
		.local_port = bpf_htons(args->sport),
	};
	__builtin_memcpy(&key.client_addr, args->daddr, 4);
	__builtin_memcpy(&key.local_addr, args->saddr, 4);
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (!c || c->role != ROLE_BE || c->state != BE_ESTABLISHED)
		return 0;
	__u32 flags = conn_set_flags(c, CONN_TCP_CLOSED);
	__u32 code = CLOSE_GONE;
	if (args->oldstate == TCP_STATE_CLOSING || args->oldstate == TCP_STATE_FIN_WAIT2) {
		const struct tcp_sock *tp = args->skaddr;
		if (flags & CONN_RST)
			code = CLOSE_UNSURE; /* a RST ended it, or our TCP ignored that RST */
		else if (args->oldstate == TCP_STATE_CLOSING)
			code = CLOSE_TIME_WAIT;
		else if (!(flags & CONN_CLIENT_FIN))
			return 0;
		else if (BPF_CORE_READ(tp, rcv_nxt) == c->client_fin_end)
			code = CLOSE_TIME_WAIT;
		else
			code = CLOSE_UNSURE; /* on its way to the timewait socket, or through it already */
	}
	be_report_close(c, &key, code);
	return 0;
}

/* Something our TCP sent after the server's socket closed: the timewait socket's ACK of the
 * client's FIN (it is in TIME_WAIT now), or a RST (no socket had the packet it answers, or the
 * timewait socket ended itself). */
__always void be_after_socket(struct conn *c, const struct pkt *p, const struct conn_key *key)
{
	if (p->flags & TCPF_RST)
		be_report_close(c, key, CLOSE_GONE);
	else if ((c->flags & CONN_CLIENT_FIN) && (p->flags & TCPF_ACK) &&
		 p->ack_seq == c->client_fin_end)
		be_report_close(c, key, CLOSE_TIME_WAIT);
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
		follow_forget_tuple(key);
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
		int verdict = follow_hold_head(skb, cfg, p, key);
		if (verdict)
			return verdict;
	}
	be_note_close(c, p, CONN_CLIENT_FIN);
	c->packets++;
	stat_add(STAT_TO_SERVER_PACKETS, 1);
	if (translate_to_server(skb, p, c->seq_delta, c->ts_delta))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* Our TCP's answer to a datapath offer's SYN (offer.h), within the SYN's own processing: a SYN-ACK
 * that negotiated what the FE's did gives the offsets (BE_REPLAYED); anything else names why the
 * offer is refused, which its REPLAY copy, right behind, carries back. Dropped either way: the
 * client has its SYN-ACK. */
__always int be_offer_answer(struct __sk_buff *skb, const struct pkt *p, const struct conn_key *key,
			     struct conn *c)
{
	__u8 reason = REFUSE_COLLISION;

	if ((p->flags & TCPF_ACK) && p->ack_seq == c->client_isn + 1) {
		if (p->flags & TCPF_RST) {
			reason = REFUSE_NO_LISTENER;
		} else if (p->flags & TCPF_SYN) {
			struct tcp_opts o;
			find_opts(skb, p, &o);
			if (o.syn.mss != c->synack_digest.mss || o.syn.wscale != c->synack_digest.wscale ||
			    o.syn.bits != c->synack_digest.bits ||
			    (p->flags & TCPF_ECE) != (c->synack_tcp_flags & TCPF_ECE)) {
				reason = REFUSE_OPTION_MISMATCH;
			} else {
				__be32 tsval = 0;
				c->ts_delta = 0;
				if (o.ts_off >= 0 &&
				    !bpf_skb_load_bytes(skb, p->opts_off + o.ts_off, &tsval, 4))
					c->ts_delta = bpf_ntohl(tsval) - c->synack_tsval;
				c->local_isn = p->seq;
				c->seq_delta = p->seq - c->fe_isn;
				/* Followed: the server's responses are counted from its first byte on,
				 * as the agent's replay starts them. Without the entry a move finds the
				 * connection untracked, and its request stays here. */
				if (c->flags & CONN_FOLLOWED) {
					struct responses r = {.next_head = p->seq + 1};
					bpf_map_update_elem(&responses, key, &r, BPF_ANY);
				}
				c->state = BE_REPLAYED;
				return drop(DROP_BE_SYNACK);
			}
		}
	}
	if (!c->refuse_reason)
		c->refuse_reason = reason;
	return drop(DROP_BE_SYNACK);
}

/* The server's TCP spoke on a replayed connection: it has it. Returns 0 if it may go on to the
 * client, or a verdict. */
__always int be_go_live(struct __sk_buff *skb, const struct pkt *p, const struct conn_key *key,
			struct conn *c)
{
	if (p->flags & (TCPF_SYN | TCPF_RST)) {
		/* A datapath offer's request did not take yet: the client's retransmission of it
		 * comes through the FE again; a RST is the agent's to find, by the deadline. */
		if (!(c->flags & CONN_DP_OFFER))
			emit_packet(skb, EV_BE_SYNACK, key);
		return drop(DROP_BE_SYNACK);
	}
	if (bpf_ktime_get_ns() >= c->live_deadline_ns)
		return drop(DROP_BE_LATE);
	c->state = BE_ESTABLISHED;
	/* Named by the first packet of its own: not a request socket's answer, which the kernel's
	 * per-CPU control socket sends. */
	struct bpf_sock *sk = skb->sk;
	if (sk)
		sk = bpf_sk_fullsock(sk);
	if (sk && sk->type == SOCK_STREAM_TYPE)
		c->sock_cookie = bpf_get_socket_cookie(skb);
	if (!(conn_set_flags(c, CONN_LIVE_REPORTED) & CONN_LIVE_REPORTED)) {
		be_notice(c, EV_BE_LIVE, key, 0);
		stat_add(STAT_BE_LIVE, 1);
	}
	return 0;
}

__always int be_egress(struct __sk_buff *skb, const struct pkt *p, const struct conn_key *key,
		       struct conn *c)
{
	if (c->state == BE_SYN_SENT) {
		if (c->flags & CONN_DP_OFFER)
			return be_offer_answer(skb, p, key, c);
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
	if (c->flags & CONN_TCP_CLOSED)
		be_after_socket(c, p, key);
	int frozen = follow_frozen(key);
	if (frozen)
		return frozen;
	follow_responses(skb, p, key);
	be_note_close(c, p, CONN_SERVER_FIN);
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

/* An offer refused: back to its FE, out of the interface it came in on. */
__always int be_refuse_offer(struct __sk_buff *skb, const struct node_config *cfg, struct offer *o,
			     __u8 reason)
{
	if (offer_turn_back(skb, cfg, o, reason))
		return drop(DROP_REDIRECT_FAILED);
	return bpf_redirect(skb->ifindex, 0);
}

/* The offer's segment once its connection is ours: a retransmission from the FE, or the REPLAY
 * copy behind the SYN. Without its header it is a client data segment like any other. */
__always int be_offer_segment(struct __sk_buff *skb, const struct node_config *cfg,
			      const struct conn_key *key, struct conn *c)
{
	struct pkt p;
	if (offer_pop(skb) || parse_tcp4(skb, &p))
		return drop(DROP_REDIRECT_FAILED);
	/* Whichever copy completes the handshake tells the agent, once the notice is on the ring
	 * (a lost notice is tried again with the next copy). */
	if (!(c->flags & CONN_DP_TAKEN) && !be_notice(c, EV_DP_TAKEN, key, 0) &&
	    !(conn_set_flags(c, CONN_DP_TAKEN) & CONN_DP_TAKEN))
		stat_add(STAT_DP_TAKEN, 1);
	return be_ingress(skb, cfg, &p, key, c);
}

/* An offer whose SYN our TCP did not take as it must: refused, the entry gone, remembered.
 * A SYN-ACK that negotiated other options left a half-open connection in our TCP: the copy goes
 * back to the FE as a clone and the packet itself becomes the RST that ends that side. */
__always int be_offer_refused(struct __sk_buff *skb, const struct node_config *cfg,
			      struct offer_scratch *s, const struct conn_key *key, struct conn *c)
{
	__u8 reason = c->refuse_reason ? c->refuse_reason : REFUSE_INTERNAL;
	__u32 client_isn = c->client_isn;
	bpf_map_delete_elem(&conns, key);
	if (reason != REFUSE_OPTION_MISMATCH)
		return be_refuse_offer(skb, cfg, &s->o, reason);
	if (offer_turn_back(skb, cfg, &s->o, reason) || bpf_clone_redirect(skb, skb->ifindex, 0))
		return drop(DROP_REDIRECT_FAILED);
	/* The turn-back swapped addresses: the RST is the client's again. */
	if (ip_addr_set(skb, IP_SADDR_OFF, s->o.client_addr) ||
	    ip_addr_set(skb, IP_DADDR_OFF, cfg->service_addr))
		return drop(DROP_REDIRECT_FAILED);
	__u32 len = bare_header(s, &s->o, client_isn + 1, TCPF_RST, 0, s->o.syn_opts, 0);
	if (rebuild_bare_segment(skb, s, len))
		return drop(DROP_REDIRECT_FAILED);
	return TC_ACT_OK;
}

/* The state of our TCP's socket for an offer's tuple: the tuple's own (established, TIME_WAIT,
 * a request socket), else the listener's; -1 if there is neither. */
__always int offer_tuple_state(struct __sk_buff *skb, const struct node_config *cfg,
			       const struct offer *o)
{
	struct bpf_sock_tuple t = {
		.ipv4 = {
			.saddr = o->client_addr,
			.daddr = cfg->service_addr,
			.sport = o->client_port,
			.dport = o->service_port,
		},
	};
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return -1;
	int state = sk->state;
	bpf_sk_release(sk);
	return state;
}

/* A new datapath offer for this node (offer.h): taken if our agent runs, the tuple is free here
 * and something listens; then our TCP gets the client's SYN now and the segment right after. */
__always int be_take_offer(struct __sk_buff *skb, const struct node_config *cfg,
			   struct offer_scratch *s, const struct conn_key *key)
{
	struct offer *o = &s->o;

	if (!cfg->offers || !agent_alive())
		return be_refuse_offer(skb, cfg, o, REFUSE_OVERLOADED);
	int sk_state = offer_tuple_state(skb, cfg, o);
	if (sk_state < 0)
		return be_refuse_offer(skb, cfg, o, REFUSE_NO_LISTENER);
	/* A TIME_WAIT takes a SYN that is newer than what it saw, as for any client; one that is
	 * not is answered with an ACK, which be_offer_answer() reads as a collision (then the FE's
	 * agent offers it, and the agent here ends the TIME_WAIT). */
	if (sk_state != BPF_TCP_LISTEN && sk_state != BPF_TCP_TIME_WAIT)
		return be_refuse_offer(skb, cfg, o, REFUSE_COLLISION);

	struct conn *n = &s->c;
	__u64 now = bpf_ktime_get_ns();
	__builtin_memset(n, 0, sizeof(*n));
	n->role = ROLE_BE;
	n->state = BE_SYN_SENT;
	n->flags = CONN_DP_OFFER | (o->kind == OFFER_KIND_FOLLOWED ? CONN_FOLLOWED : 0);
	n->client_isn = bpf_ntohl(o->client_isn);
	n->fe_isn = bpf_ntohl(o->fe_isn);
	n->synack_tsval = bpf_ntohl(o->fe_tsval);
	n->synack_digest.mss = bpf_ntohs(o->synack_mss);
	n->synack_digest.wscale = o->synack_wscale;
	n->synack_digest.bits = o->synack_bits;
	n->synack_tcp_flags = o->synack_tcp_flags;
	n->syn_tcp_flags = o->syn_tcp_flags;
	n->syn_window = bpf_ntohs(o->syn_window);
	n->peer_addr = o->fe_addr;
	n->handoff_id = bpf_be64_to_cpu(o->handoff_id);
	n->created_ns = now;
	n->last_seen_ns = now;
	n->client_seen_ns = now;
	/* Live only within the window from the FE's first offer: the FE gives up later than that. */
	__s64 age = offer_age_ns(cfg, o);
	n->live_deadline_ns = now + cfg->live_window_ns - (age > 0 ? (__u64)age : 0);
	if (bpf_map_update_elem(&conns, key, n, BPF_NOEXIST))
		return be_refuse_offer(skb, cfg, o, REFUSE_INTERNAL);
	follow_forget_tuple(key);

	/* The copy first: it is queued behind this packet, which our TCP handles to the end (and
	 * answers) before the copy comes in. */
	o->kind = OFFER_KIND_REPLAY;
	offer_seal(cfg, o);
	if (bpf_skb_store_bytes(skb, OFFER_OFF, o, OFFER_LEN, BPF_F_RECOMPUTE_CSUM) ||
	    bpf_clone_redirect(skb, skb->ifindex, BPF_F_INGRESS)) {
		bpf_map_delete_elem(&conns, key);
		return be_refuse_offer(skb, cfg, o, REFUSE_INTERNAL);
	}
	__u32 len = bare_header(s, o, n->client_isn, TCPF_SYN | (o->syn_tcp_flags & (TCPF_ECE | TCPF_CWR)),
				n->syn_window, o->syn_opts, o->syn_opts_len);
	if (rebuild_bare_segment(skb, s, len)) {
		/* The copy finds no answer and goes back refused. */
		struct conn *e = bpf_map_lookup_elem(&conns, key);
		if (e)
			e->refuse_reason = REFUSE_INTERNAL;
		return drop(DROP_REDIRECT_FAILED);
	}
	return TC_ACT_OK;
}

/* A packet with an offer header for this node: an offer, its REPLAY copy, or a refusal of ours. */
__always int offer_ingress(struct __sk_buff *skb, const struct node_config *cfg)
{
	struct offer_scratch *s = offer_scratch_get();
	if (!s || offer_parse(skb, cfg, &s->o))
		return TC_ACT_OK;
	struct offer *o = &s->o;
	__u8 kind = o->kind;
	if (kind == OFFER_KIND_REFUSED) {
		if (offer_open(cfg, o))
			return drop(DROP_OFFER_REJECTED);
		return fe_offer_returned(skb, cfg, o);
	}
	if ((kind != OFFER_KIND_OFFER && kind != OFFER_KIND_FOLLOWED && kind != OFFER_KIND_REPLAY) ||
	    offer_open(cfg, o) || o->be_addr != cfg->service_addr ||
	    !is_service_port(cfg, o->service_port))
		return drop(DROP_OFFER_REJECTED);
	struct conn_key key = offer_conn_key(cfg, o);
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (c && c->role == ROLE_BE && (c->flags & CONN_DP_OFFER) &&
	    c->handoff_id == bpf_be64_to_cpu(o->handoff_id) && c->peer_addr == o->fe_addr) {
		c->last_seen_ns = bpf_ktime_get_ns();
		c->client_seen_ns = c->last_seen_ns;
		if (c->state != BE_SYN_SENT)
			return be_offer_segment(skb, cfg, &key, c);
		/* Refused by our TCP's answer; or no answer in the window (the SYN was dropped). */
		if (c->refuse_reason ||
		    c->last_seen_ns - c->created_ns > cfg->live_window_ns)
			return be_offer_refused(skb, cfg, s, &key, c);
		/* A TIME_WAIT still on the tuple did not take the replayed SYN, and no answer is
		 * coming: its ACK of an old SYN is rate-limited (net.ipv4.tcp_invalid_ratelimit, once
		 * in 500 ms per socket), so a second offer within that time gets silence. Refused as
		 * the ACK would have been: the FE's agent offers it, and the agent here ends it. */
		if (offer_tuple_state(skb, cfg, o) == BPF_TCP_TIME_WAIT) {
			c->refuse_reason = REFUSE_COLLISION;
			return be_offer_refused(skb, cfg, s, &key, c);
		}
		/* Our TCP's answer is not out yet (it may wait for the client's neighbour entry): the
		 * client's retransmission completes the handshake once it is. */
		return drop(DROP_BE_NOT_READY);
	}
	if (kind == OFFER_KIND_REPLAY)
		return drop(DROP_OFFER_REJECTED);
	__u32 refused = offer_refused_before(o);
	if (refused)
		return be_refuse_offer(skb, cfg, o, refused);
	if (c) {
		/* The client reused its port: a handed-in connection our TCP is done with only lingers
		 * (its agent forgets it when this one is taken); anything else holds the tuple. */
		if (c->role != ROLE_BE || !(c->flags & CONN_CLOSE_REPORTED))
			return be_refuse_offer(skb, cfg, o, REFUSE_COLLISION);
		bpf_map_delete_elem(&conns, &key);
		follow_forget_tuple(&key);
	}
	return be_take_offer(skb, cfg, s, &key);
}
