/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Incremental checksum bookkeeping (RFC 1624) for in-place field rewrites.
 *
 * Fields that are not part of the pseudo-header (seq, ack, option words) are collected as one
 * ones'-complement difference and applied with a single bpf_l4_csum_replace() in "diff" mode,
 * which does the right thing for every skb->ip_summed: for CHECKSUM_PARTIAL (veth, GSO) it leaves
 * the field alone because the device sums the rewritten bytes itself. Address changes go through
 * BPF_F_PSEUDO_HDR, which updates the pseudo-header seed of a partial checksum.
 */
#pragma once
#include "common.h"

struct csum_diff {
	__u64 even; /* words at even offsets from the TCP header */
	__u64 odd;  /* words at odd offsets: summed separately, byte-swapped at the end */
};

__always void csum_diff_add(struct csum_diff *d, __u32 off_from_l4, __u32 old_raw, __u32 new_raw)
{
	__u64 *acc = (off_from_l4 & 1) ? &d->odd : &d->even;
	*acc += (__u32)~old_raw;
	*acc += new_raw;
}

__always __u32 fold64_to32(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	return (__u32)s;
}

__always __u16 fold32_to16(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* The whole difference as a 32-bit partial sum for bpf_l4_csum_replace(.., 0, diff, 0). A byte
 * string summed at an odd offset contributes the byte-swap of its even-offset sum. */
__always __u32 csum_diff_value(const struct csum_diff *d)
{
	__u16 odd = fold32_to16(fold64_to32(d->odd));
	__u16 odd_swapped = (__u16)((odd >> 8) | (odd << 8));
	return fold64_to32(d->even + odd_swapped);
}
