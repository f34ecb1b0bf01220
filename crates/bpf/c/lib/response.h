/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Following the local server's responses on a connection the agent may move: where the next
 * response head starts and how many final responses began (the responses map, conn.h: struct
 * responses). Egress, BE_ESTABLISHED, before translation: sequence numbers are the local TCP's.
 *
 *   a data segment at next_head        -> it starts a response head: read it (below)
 *   wholly before next_head            -> body bytes, or a retransmission: nothing
 *   anything else                      -> a head was skipped or starts mid-packet: RESP_OPAQUE
 *
 * A head is read from the segment's first RESPONSE_SCAN_MAX bytes (a GSO super-packet's first
 * segment's): `HTTP/1.<digit> <3 digits>`, then CRLF-terminated header lines up to the first empty
 * one. Header names match in any case: Content-Length (digits up to 2^31, optional whitespace
 * around them) and Transfer-Encoding (any value). Then:
 *
 *   1xx but 101        -> next_head := the head's end; count unchanged (an interim response)
 *   204, 304           -> next_head := the head's end; count + 1
 *   Content-Length n   -> next_head := the head's end + n; count + 1
 *   anything else      -> RESP_OPAQUE: Transfer-Encoding, neither length (close-delimited), two
 *                         Content-Lengths, 101 (what follows is no longer HTTP), a malformed head,
 *                         a head not complete in the scan or the segment, or a next head inside
 *                         this same segment (pipelined responses: not followed yet)
 *
 * Contract: next_head and count only ever describe responses read from their heads; once
 * RESP_OPAQUE is set the entry no longer changes. A response to HEAD (a Content-Length, no body)
 * looks like any other: the agent knows the request, the datapath does not.
 */
#pragma once
#include "common.h"
#include "conn.h"
#include "maps.h"
#include "parse.h"

#define SCAN_MASK (RESPONSE_SCAN_MAX - 1)
#define CONTENT_LENGTH_MAX (1ULL << 31)
/* "HTTP/1.1 200" and the byte after it. */
#define STATUS_LINE_MIN 13

struct response_walk {
	struct response_scan *s;
	__u32 len;        /* bytes in s->buf */
	__u32 line_start; /* offset of the current line */
	__u32 end;        /* the head's length (through its empty line) once found, else 0 */
	__u64 content_length;
	__u8 in_name;   /* in the current header line's name */
	__u8 in_length; /* in a Content-Length value */
	__u8 digits;    /* of that value: 0 before them, 1 in them, 2 after them */
	__u8 cr;        /* the previous byte was CR */
	__u8 lengths;   /* Content-Length headers seen (2 is enough to refuse) */
	__u8 transfer_encoding;
	__u8 bad;
};

__always int is_digit(__u8 b)
{
	return b >= '0' && b <= '9';
}

/* Whether the `len` bytes at `at` are `name` (lower case) in any case. */
__always int name_is(const __u8 *buf, __u32 at, const char *name, __u32 len)
{
#pragma unroll
	for (__u32 k = 0; k < len; k++) {
		__u8 b = buf[(at + k) & SCAN_MASK];
		if (b >= 'A' && b <= 'Z')
			b |= 0x20;
		if (b != (__u8)name[k])
			return 0;
	}
	return 1;
}

/* One byte of the head after the status code: line ends, header names, Content-Length digits. */
static long response_step(__u64 i, void *ctx)
{
	struct response_walk *w = ctx;
	__u32 at = STATUS_LINE_MIN - 1 + i;

	if (at >= w->len)
		return 1;
	__u8 b = w->s->buf[at & SCAN_MASK];
	if (w->cr) {
		if (b != '\n')
			goto bad;
		w->cr = 0;
		if (at - 1 == w->line_start) {
			w->end = at + 1;
			return 1;
		}
		if (w->in_name || (w->in_length && !w->digits))
			goto bad;
		w->line_start = at + 1;
		w->in_name = 1;
		w->in_length = 0;
		w->digits = 0;
		return 0;
	}
	if (b == '\r') {
		w->cr = 1;
		return 0;
	}
	if (b == '\n')
		goto bad; /* a bare LF */
	if (w->in_name) {
		__u32 n = at - w->line_start;
		if (b == ':') {
			w->in_name = 0;
			if (n == 14 && name_is(w->s->buf, w->line_start, "content-length", 14)) {
				w->in_length = 1;
				if (w->lengths < 2)
					w->lengths++;
			} else if (n == 17 && name_is(w->s->buf, w->line_start, "transfer-encoding", 17)) {
				w->transfer_encoding = 1;
			}
		} else if (n == 0 && (b == ' ' || b == '\t')) {
			goto bad; /* a folded line: it might continue a Content-Length */
		}
		return 0;
	}
	if (!w->in_length)
		return 0;
	if (b == ' ' || b == '\t') {
		if (w->digits == 1)
			w->digits = 2;
		return 0;
	}
	if (!is_digit(b) || w->digits == 2)
		goto bad;
	w->digits = 1;
	w->content_length = w->content_length * 10 + (b - '0');
	if (w->content_length > CONTENT_LENGTH_MAX)
		goto bad;
	return 0;
bad:
	w->bad = 1;
	return 1;
}

/* The status code of a status line at buf, or -1. */
__always int status_code(const __u8 *buf, __u32 len)
{
	if (len < STATUS_LINE_MIN)
		return -1;
	if (buf[0] != 'H' || buf[1] != 'T' || buf[2] != 'T' || buf[3] != 'P' || buf[4] != '/' ||
	    buf[5] != '1' || buf[6] != '.' || !is_digit(buf[7]) || buf[8] != ' ')
		return -1;
	if (buf[9] < '1' || buf[9] > '5' || !is_digit(buf[10]) || !is_digit(buf[11]))
		return -1;
	if (buf[12] != ' ' && buf[12] != '\r')
		return -1;
	return (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
}

/* Reads the response head at the start of a segment of `len` data bytes. Returns 0 with the bytes
 * from its start to the next head (*advance) and whether it is a final response (*final), or -1. */
__always int read_response_head(struct __sk_buff *skb, const struct pkt *p, __u32 len,
				__u32 *advance, __u32 *final)
{
	__u32 zero = 0;
	struct response_scan *s = bpf_map_lookup_elem(&response_scratch, &zero);
	if (!s)
		return -1;
	__u32 n = len < RESPONSE_SCAN_MAX ? len : RESPONSE_SCAN_MAX;
	if (load_bytes_var(skb, p->opts_off + p->opts_len, s->buf, n, RESPONSE_SCAN_MAX))
		return -1;
	int status = status_code(s->buf, n);
	if (status < 0)
		return -1;
	struct response_walk w = {.s = s, .len = n};
	bpf_loop(RESPONSE_SCAN_MAX, response_step, &w, 0);
	if (w.bad || !w.end)
		return -1;
	if (status < 200) {
		if (status == 101)
			return -1;
		*advance = w.end;
		*final = 0;
		return 0;
	}
	*final = 1;
	if (status == 204 || status == 304) {
		*advance = w.end;
		return 0;
	}
	if (w.transfer_encoding || w.lengths != 1)
		return -1;
	*advance = w.end + (__u32)w.content_length; /* at most 2^31 + RESPONSE_SCAN_MAX: no wrap */
	return 0;
}

__always void responses_opaque(struct responses *r)
{
	if (!(__sync_fetch_and_or(&r->flags, RESP_OPAQUE) & RESP_OPAQUE))
		stat_add(STAT_RESPONSES_OPAQUE, 1);
}

/* Follows one server packet of a BE_ESTABLISHED connection, untranslated. */
__always void follow_responses(struct __sk_buff *skb, const struct pkt *p, const struct conn_key *key)
{
	__u32 len = pkt_data_len(p);
	if (!len || (p->flags & (TCPF_SYN | TCPF_RST)))
		return;
	struct responses *r = bpf_map_lookup_elem(&responses, key);
	if (!r || (r->flags & RESP_OPAQUE))
		return;
	__u32 next = r->next_head;
	if (p->seq != next) {
		if ((__s32)(p->seq - next) < 0 && (__s32)(p->seq + len - next) <= 0)
			return;
		responses_opaque(r);
		return;
	}
	__u32 advance, final;
	if (read_response_head(skb, p, len, &advance, &final) || advance < len) {
		responses_opaque(r);
		return;
	}
	/* One 8-byte store: a reader never sees the new count with the old next_head. */
	union {
		struct {
			__u32 next_head;
			__u32 count;
		} f;
		__u64 word;
	} u = {.f = {.next_head = next + advance, .count = r->count + final}};
	*(volatile __u64 *)r = u.word;
	stat_add(STAT_RESPONSE_HEADS, 1);
}
