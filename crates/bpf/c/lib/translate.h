/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet rewrites of a handed-off connection, with their checksum updates.
 *
 *   FE ingress:  daddr F -> B                                  (rewrite_daddr)
 *   BE ingress:  ack += seq_delta, SACK edges += seq_delta,
 *                TSecr += ts_delta                             (translate_to_server)
 *   BE egress:   saddr B -> F, seq -= seq_delta, TSval -= ts_delta (translate_to_client)
 *
 * The user-space twin of these is `baton_wire::translate`; the BPF_PROG_TEST_RUN tables check
 * that both produce the same bytes.
 */
#pragma once
#include "common.h"
#include "csum.h"
#include "options.h"
#include "parse.h"

/* Headers live within the first HDRS_MAX bytes; masking keeps offsets provably small. */
#define OFF_MASK 0xff

/* Adds `delta` to the big-endian u32 at `off` (from skb->data) and records the checksum change. */
__always int word_add(struct __sk_buff *skb, const struct pkt *p, __u32 off, __u32 delta,
		      struct csum_diff *d)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	off &= OFF_MASK;
	__u8 *ptr = data + off;
	if ((void *)(ptr + 4) > data_end)
		return -1;
	__u32 old_raw, new_raw;
	__builtin_memcpy(&old_raw, ptr, 4);
	new_raw = bpf_htonl(bpf_ntohl(old_raw) + delta);
	__builtin_memcpy(ptr, &new_raw, 4);
	csum_diff_add(d, off - p->l4_off, old_raw, new_raw);
	return 0;
}

__always int apply_csum_diff(struct __sk_buff *skb, const struct pkt *p, const struct csum_diff *d)
{
	return bpf_l4_csum_replace(skb, p->l4_off + TCP_CSUM_OFF, 0, csum_diff_value(d), 0);
}

/* Writes the 4 bytes at `off` (from skb->data, inside the TCP header, at any offset: an option
 * word may be odd) with `to`, the checksum kept; `from` is what was there. Returns 0 or negative. */
__always int tcp_word_write(struct __sk_buff *skb, const struct pkt *p, __u32 off, __be32 from,
			    __be32 to)
{
	struct csum_diff d = {};
	if (bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0))
		return -1;
	csum_diff_add(&d, off - p->l4_off, from, to);
	return apply_csum_diff(skb, p, &d);
}

/* Replaces an IPv4 address field (saddr or daddr) and fixes the IP and TCP (pseudo-header) sums. */
__always int rewrite_addr(struct __sk_buff *skb, const struct pkt *p, __u32 field_off, __be32 old,
			  __be32 new)
{
	if (bpf_skb_store_bytes(skb, p->l3_off + field_off, &new, 4, 0))
		return -1;
	if (bpf_l3_csum_replace(skb, p->l3_off + IP_CSUM_OFF, old, new, 4))
		return -1;
	if (bpf_l4_csum_replace(skb, p->l4_off + TCP_CSUM_OFF, old, new, BPF_F_PSEUDO_HDR | 4))
		return -1;
	return 0;
}

__always int rewrite_daddr(struct __sk_buff *skb, const struct pkt *p, __be32 new)
{
	return rewrite_addr(skb, p, IP_DADDR_OFF, p->daddr, new);
}

__always int translate_to_server(struct __sk_buff *skb, const struct pkt *p, __u32 seq_delta,
				 __u32 ts_delta)
{
	struct tcp_opts o;
	struct csum_diff d = {};

	find_opts(skb, p, &o);
	if (p->flags & TCPF_ACK) {
		if (word_add(skb, p, p->l4_off + TCP_ACK_OFF, seq_delta, &d))
			return -1;
	}
	if (o.ts_off >= 0) {
		if (word_add(skb, p, p->opts_off + o.ts_off + 4, ts_delta, &d))
			return -1;
	}
	if (o.sack_off >= 0) {
#pragma unroll
		for (int b = 0; b < 4; b++) {
			__u32 edge = p->opts_off + o.sack_off + b * 8;
			if (b < o.sack_blocks && (word_add(skb, p, edge, seq_delta, &d) ||
						  word_add(skb, p, edge + 4, seq_delta, &d)))
				return -1;
		}
	}
	return apply_csum_diff(skb, p, &d);
}

__always int translate_to_client(struct __sk_buff *skb, const struct pkt *p, __u32 seq_delta,
				 __u32 ts_delta, __be32 new_saddr)
{
	struct tcp_opts o;
	struct csum_diff d = {};

	find_opts(skb, p, &o);
	if (word_add(skb, p, p->l4_off + TCP_SEQ_OFF, -seq_delta, &d))
		return -1;
	if (o.ts_off >= 0) {
		if (word_add(skb, p, p->opts_off + o.ts_off, -ts_delta, &d))
			return -1;
	}
	if (apply_csum_diff(skb, p, &d))
		return -1;
	return rewrite_addr(skb, p, IP_SADDR_OFF, p->saddr, new_saddr);
}
