/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* TCP option lookup: where the timestamps and SACK blocks of a packet are, and what a SYN or
 * SYN-ACK negotiates.
 *
 * Contract: find_opts() copies the options area to the stack and walks it; it reports the offset
 * (from the start of the options) of TSval and of the first SACK edge, or -1, and the MSS, window
 * scale and SACK-permitted options it met (a SYN's). A malformed option list stops the walk: what
 * was found before it still counts, nothing after it is touched.
 */
#pragma once
#include "common.h"
#include "conn.h"
#include "parse.h"

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MSS 2
#define TCPOPT_WINDOW 3
#define TCPOPT_SACK_PERM 4
#define TCPOPT_SACK 5
#define TCPOPT_TIMESTAMP 8
#define TCPOLEN_TIMESTAMP 10

struct tcp_opts {
	int ts_off;        /* offset of TSval (TSecr follows 4 bytes later), -1 if absent */
	int sack_off;      /* offset of the first SACK block's left edge, -1 if absent */
	int sack_blocks;   /* 1..4 */
	struct syn_digest syn; /* MSS, window scale, SACK-permitted and timestamps seen */
};

/* The option walk runs under bpf_loop(): the verifier checks one step once, instead of every
 * unrolled or iterated path, which would multiply its states by the number of option layouts. */
struct opt_walk {
	/* 64 bytes so that an index masked with 63 is provably inside it. */
	__u8 buf[64];
	__u32 len;
	__u32 i;
	int ts_off;
	int sack_off;
	int sack_blocks;
	struct syn_digest syn;
};

static long opt_step(__u64 index, void *ctx)
{
	struct opt_walk *w = ctx;
	__u32 i = w->i;

	if (i >= w->len || i >= TCP_OPTS_MAX - 1)
		return 1;
	__u8 kind = w->buf[i & 63];
	if (kind == TCPOPT_EOL)
		return 1;
	if (kind == TCPOPT_NOP) {
		w->i = i + 1;
		return 0;
	}
	__u8 olen = w->buf[(i + 1) & 63];
	if (olen < 2 || i + olen > w->len)
		return 1;
	if (kind == TCPOPT_TIMESTAMP && olen == TCPOLEN_TIMESTAMP)
		w->ts_off = i + 2;
	else if (kind == TCPOPT_SACK && olen >= 10 && (olen - 2) % 8 == 0) {
		w->sack_off = i + 2;
		w->sack_blocks = (olen - 2) / 8;
	} else if (kind == TCPOPT_MSS && olen == 4)
		w->syn.mss = ((__u16)w->buf[(i + 2) & 63] << 8) | w->buf[(i + 3) & 63];
	else if (kind == TCPOPT_WINDOW && olen == 3)
		w->syn.wscale = w->buf[(i + 2) & 63];
	else if (kind == TCPOPT_SACK_PERM && olen == 2)
		w->syn.bits |= SYN_SACK_OK;
	w->i = i + olen;
	return 0;
}

__always void find_opts(struct __sk_buff *skb, const struct pkt *p, struct tcp_opts *o)
{
	struct opt_walk w = {.ts_off = -1, .sack_off = -1, .syn = {.wscale = SYN_NO_WSCALE}};

	o->ts_off = -1;
	o->sack_off = -1;
	o->sack_blocks = 0;
	o->syn = w.syn;
	if (load_bytes_var(skb, p->opts_off, w.buf, p->opts_len, TCP_OPTS_MAX))
		return;
	w.len = p->opts_len;
	bpf_loop(TCP_OPTS_MAX, opt_step, &w, 0);
	o->syn = w.syn;
	if (w.ts_off >= 0)
		o->syn.bits |= SYN_TS_OK;
	/* Re-bound what the walk found: the verifier does not carry its ranges out of the loop. */
	if (w.ts_off >= 0 && w.ts_off <= TCP_OPTS_MAX - 8)
		o->ts_off = w.ts_off;
	if (w.sack_off >= 0 && w.sack_off <= TCP_OPTS_MAX - 8 && w.sack_blocks >= 1 && w.sack_blocks <= 4) {
		o->sack_off = w.sack_off;
		o->sack_blocks = w.sack_blocks;
	}
}
