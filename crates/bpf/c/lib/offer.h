/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Datapath offers: a handoff made by the two nodes' programs alone, with no agent on its path.
 *
 * Where the FE's datapath decides the request itself (decide.h) for another node, it sends the
 * client's first data segment there with an offer header (struct offer, conn.h) between its IPv4
 * and TCP headers: what the BE needs to replay the handshake, sealed with the cluster's key.
 *
 *   FE ingress, first data    -> FE_FORWARD + CONN_DP_OFFER, EV_DP_OFFERED; the segment with the
 *                                header goes to the BE (so does a retransmission of it)
 *   BE ingress, OFFER         -> checked (MAC, clock; the tuple free, or its handed-in connection
 *                                over; a listener, or a TIME_WAIT that may take the SYN); a BE_SYN_SENT entry;
 *                                a copy of the segment (kind REPLAY) queued to our own ingress; the
 *                                segment itself rebuilt into the client's SYN and passed to our TCP
 *   BE egress, its answer     -> a SYN-ACK that matches the FE's (options, ECN) gives the offsets:
 *                                BE_REPLAYED; anything else names the refusal; dropped either way
 *   BE ingress, REPLAY        -> BE_REPLAYED: header off, translated, passed: the data segment
 *                                completes the handshake (servers that defer accept take it too);
 *                                EV_DP_TAKEN. Else refused (also when the TIME_WAIT that was to
 *                                take the SYN is still there: it stayed silent, its ACK
 *                                rate-limited): the segment goes back to the FE
 *   FE ingress, REFUSED       -> header off, restored: served here by our TCP (its half-open side
 *                                waits for exactly this segment), EV_DP_RETURNED; a tuple in use at
 *                                the BE is asked of the agent instead, whose offer may end what
 *                                holds it there
 *
 * From then on it is an ordinary handoff: the BE goes live on its TCP's first packet (be.h), its
 * agent learns of the connection from EV_DP_TAKEN and says Accepted to the FE's, which learnt of
 * it from EV_DP_OFFERED, as for an offer of its own.
 *
 * Contract: an offer is taken only when it authenticates, was first offered at most the live
 * window ago (node_config.live_window_ns, half of handoff_timeout_ms; clocks within a quarter of
 * it), names this node, was not refused here before (refused_offers), and our agent runs; a
 * refusal only when it authenticates and matches an offer of ours. Anything else is dropped and counted (DROP_OFFER_REJECTED): the client
 * retransmits, and the retransmission is offered again. The copy is marked REPLAY, which is never
 * taken as a new offer, so it cannot loop, and sealed as a REPLAY: it never leaves the node, so a
 * host that captured the offer cannot make one.
 */
#pragma once
#include "common.h"
#include "conn.h"
#include "csum.h"
#include "maps.h"
#include "parse.h"
#include "siphash.h"

#define IP_TOT_LEN_OFF 2
#define IP_TTL_OFF 8
/* The offer header sits right after an option-less IPv4 header. */
#define OFFER_OFF (ETH_HLEN + 20)

__always __u64 offer_mac(const struct node_config *cfg, const struct offer *o)
{
	return siphash24(cfg->offer_key, (const __u64 *)o);
}

__always void offer_seal(const struct node_config *cfg, struct offer *o)
{
	o->mac = offer_mac(cfg, o);
}

/* The clock offers are stamped with: UTC in ns (CLOCK_TAI less this node's TAI offset, which the
 * agent reads from adjtimex), which NTP keeps alike across nodes. */
__always __u64 offer_clock_ns(const struct node_config *cfg)
{
	return bpf_ktime_get_tai_ns() - (__u64)cfg->tai_offset_ns;
}

/* How far two nodes' clocks may be apart for their offers: a quarter of the live window. */
__always __s64 offer_skew_ns(const struct node_config *cfg)
{
	return (__s64)(cfg->live_window_ns / 4);
}

/* How long ago `o` was first offered, by this node's clock (negative: ahead of it). */
__always __s64 offer_age_ns(const struct node_config *cfg, const struct offer *o)
{
	return (__s64)(offer_clock_ns(cfg) - bpf_be64_to_cpu(o->offered_ns));
}

/* 0 if `o` is authentic (sealed as the kind it says), of this version, and young enough that its
 * connection may still go live: the BE's deadline counts from the FE's first offer, so that it
 * passes before the FE may give up on the offer (the FE stops offering again as late). */
__always int offer_open(const struct node_config *cfg, const struct offer *o)
{
	if (o->version != OFFER_VERSION || offer_mac(cfg, o) != o->mac)
		return -1;
	__s64 age = offer_age_ns(cfg, o);
	if (age < -offer_skew_ns(cfg) || age > (__s64)cfg->live_window_ns)
		return -1;
	return 0;
}

/* A refused offer's tombstone: 0 if none (or expired), else its refusal's reason. */
__always __u32 offer_refused_before(const struct offer *o)
{
	struct refused_offer_key k = {
		.handoff_id = o->handoff_id,
		.fe_addr = o->fe_addr,
	};
	struct refused_offer *r = bpf_map_lookup_elem(&refused_offers, &k);
	if (!r || r->until_ns <= bpf_ktime_get_ns())
		return 0;
	return r->reason;
}

__always void offer_remember_refusal(const struct node_config *cfg, const struct offer *o,
				     __u8 reason)
{
	struct refused_offer_key k = {
		.handoff_id = o->handoff_id,
		.fe_addr = o->fe_addr,
	};
	struct refused_offer r = {
		.until_ns = bpf_ktime_get_ns() + cfg->live_window_ns + (__u64)offer_skew_ns(cfg),
		.reason = reason,
	};
	bpf_map_update_elem(&refused_offers, &k, &r, BPF_ANY);
}

/* The connection an offer is about, as this node's table keys it (it is the FE or the BE). */
__always struct conn_key offer_conn_key(const struct node_config *cfg, const struct offer *o)
{
	struct conn_key key = {
		.client_addr = o->client_addr,
		.local_addr = cfg->service_addr,
		.client_port = o->client_port,
		.local_port = o->service_port,
	};
	return key;
}

/* An offer packet for this node: its header, copied into `o`. Returns 0, or -1 for anything else. */
__always int offer_parse(struct __sk_buff *skb, const struct node_config *cfg, struct offer *o)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if (skb->protocol != bpf_htons(ETH_P_IP) || (void *)(ip + 1) > data_end)
		return -1;
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != OFFER_IPPROTO ||
	    ip->daddr != cfg->service_addr || (ip->frag_off & bpf_htons(IP_MF | IP_OFFMASK)))
		return -1;
	if (bpf_skb_load_bytes(skb, OFFER_OFF, o, sizeof(*o)))
		return -1;
	return 0;
}

/* Rewrites the 16-bit IPv4 header word at `off` (from skb->data) and fixes the header checksum. */
__always int ip_word_set(struct __sk_buff *skb, __u32 off, __be16 new)
{
	__be16 old;
	if (bpf_skb_load_bytes(skb, off, &old, 2))
		return -1;
	/* No BPF_F_RECOMPUTE_CSUM: with the header checksum fixed, the header's sum is unchanged,
	 * and so is a CHECKSUM_COMPLETE skb->csum. */
	if (bpf_skb_store_bytes(skb, off, &new, 2, 0))
		return -1;
	return bpf_l3_csum_replace(skb, ETH_HLEN + IP_CSUM_OFF, old, new, 2);
}

/* Rewrites an IPv4 address with the header checksum only: the TCP checksum keeps the addresses
 * it was computed with, which the other end puts back. */
__always int ip_addr_set(struct __sk_buff *skb, __u32 field_off, __be32 new)
{
	__be32 old;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + field_off, &old, 4))
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN + field_off, &new, 4, 0))
		return -1;
	return bpf_l3_csum_replace(skb, ETH_HLEN + IP_CSUM_OFF, old, new, 4);
}

/* The IPv4 total length and protocol of a packet whose length changes by `delta` bytes. */
__always int ip_len_proto_set(struct __sk_buff *skb, int delta, __u8 proto)
{
	__u8 w[2];
	__be16 tot;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + IP_TOT_LEN_OFF, &tot, 2) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + IP_TTL_OFF, w, 2))
		return -1;
	if (ip_word_set(skb, ETH_HLEN + IP_TOT_LEN_OFF, bpf_htons(bpf_ntohs(tot) + delta)))
		return -1;
	w[1] = proto;
	__be16 ttl_proto;
	__builtin_memcpy(&ttl_proto, w, 2);
	return ip_word_set(skb, ETH_HLEN + IP_TTL_OFF, ttl_proto);
}

/* Inserts `o` between the IPv4 and TCP headers (the packet becomes OFFER_IPPROTO). */
__always int offer_push(struct __sk_buff *skb, const struct offer *o)
{
	if (bpf_skb_adjust_room(skb, OFFER_LEN, BPF_ADJ_ROOM_NET, 0))
		return -1;
	if (bpf_skb_store_bytes(skb, OFFER_OFF, o, OFFER_LEN, BPF_F_RECOMPUTE_CSUM))
		return -1;
	return ip_len_proto_set(skb, OFFER_LEN, OFFER_IPPROTO);
}

/* Takes the offer header out again: the packet is the client's TCP segment. */
__always int offer_pop(struct __sk_buff *skb)
{
	if (bpf_skb_adjust_room(skb, -OFFER_LEN, BPF_ADJ_ROOM_NET, 0))
		return -1;
	return ip_len_proto_set(skb, -OFFER_LEN, IPPROTO_TCP);
}

/* Turns an offer packet around: kind REFUSED with `reason`, sealed, from this node (saddr, source
 * MAC) to the FE that sent it. The caller redirects it out of the interface it came in on. */
__always int offer_turn_back(struct __sk_buff *skb, const struct node_config *cfg, struct offer *o,
			     __u8 reason)
{
	__u8 macs[12], swapped[12];
	offer_remember_refusal(cfg, o, reason);
	o->kind = OFFER_KIND_REFUSED;
	o->reason = reason;
	offer_seal(cfg, o);
	if (bpf_skb_store_bytes(skb, OFFER_OFF, o, OFFER_LEN, BPF_F_RECOMPUTE_CSUM))
		return -1;
	if (bpf_skb_load_bytes(skb, 0, macs, 12))
		return -1;
	__builtin_memcpy(swapped, macs + 6, 6);
	__builtin_memcpy(swapped + 6, macs, 6);
	if (bpf_skb_store_bytes(skb, 0, swapped, 12, 0))
		return -1;
	stat_add(STAT_DP_REFUSED, 1);
	if (ip_addr_set(skb, IP_SADDR_OFF, cfg->service_addr))
		return -1;
	return ip_addr_set(skb, IP_DADDR_OFF, o->fe_addr);
}

/* Replaces everything after the IPv4 header with the TCP header in s->tcp (`len` bytes, no
 * payload), with correct IPv4 and TCP checksums and no ECN codepoint: the client's SYN (or a RST)
 * as the client would have sent it to this node. */
__always int rebuild_bare_segment(struct __sk_buff *skb, struct offer_scratch *s, __u32 len)
{
	void *data, *data_end;
	struct iphdr *ip;

	if (len < 20 || len > 60 || (len & 3))
		return -1;
	/* Trim to the headers first, then fit the room after the IPv4 header to the new TCP header. */
	__u32 keep = OFFER_OFF + OFFER_LEN + 20;
	if (skb->len < keep || bpf_skb_change_tail(skb, keep, 0))
		return -1;
	int room = (int)len - (int)(OFFER_LEN + 20);
	if (bpf_skb_adjust_room(skb, room, BPF_ADJ_ROOM_NET, 0))
		return -1;
	__u32 n = len;
	barrier_var(n);
	if (n < 20 || n > 60)
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN + 20, s->tcp, n, BPF_F_RECOMPUTE_CSUM))
		return -1;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end)
		return -1;
	ip->tot_len = bpf_htons(20 + len);
	ip->protocol = IPPROTO_TCP;
	ip->tos &= ~0x03;
	ip->check = 0;
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)ip, 20, 0);
	if (sum < 0)
		return -1;
	ip->check = ~fold32_to16((__u32)sum);

	/* TCP: pseudo-header, then the header itself (checksum field zero in s->tcp). */
	__be32 pseudo[3] = {ip->saddr, ip->daddr, bpf_htonl((IPPROTO_TCP << 16) | len)};
	sum = bpf_csum_diff(NULL, 0, pseudo, sizeof(pseudo), 0);
	if (sum < 0)
		return -1;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)s->tcp, n, (__u32)sum);
	if (sum < 0)
		return -1;
	__u16 csum = ~fold32_to16((__u32)sum);
	return bpf_skb_store_bytes(skb, ETH_HLEN + 20 + TCP_CSUM_OFF, &csum, 2, BPF_F_RECOMPUTE_CSUM);
}

/* A bare TCP header into s->tcp: the offer's client port and service port, `seq`, `flags`
 * (no ACK: ack 0), `window`, and `opts_len` option bytes from `opts`. Returns its length. */
__always __u32 bare_header(struct offer_scratch *s, const struct offer *o, __u32 seq, __u8 flags,
			   __u16 window, const __u8 *opts, __u32 opts_len)
{
	struct tcphdr *t = (struct tcphdr *)s->tcp;
	__builtin_memset(s->tcp, 0, sizeof(s->tcp));
	if (opts_len > TCP_OPTS_MAX || (opts_len & 3))
		opts_len = 0;
	t->source = o->client_port;
	t->dest = o->service_port;
	t->seq = bpf_htonl(seq);
	t->doff = (20 + opts_len) / 4;
	s->tcp[13] = flags;
	t->window = bpf_htons(window);
	if (opts_len)
		__builtin_memcpy(s->tcp + 20, opts, TCP_OPTS_MAX);
	/* Bytes past the options are zero again (the copy above is of the whole area). */
#pragma unroll
	for (int i = 0; i < TCP_OPTS_MAX; i++)
		if (i >= opts_len)
			s->tcp[20 + i] = 0;
	return 20 + opts_len;
}
