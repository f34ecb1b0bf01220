/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared includes and small helpers for baton's TC programs. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define __always __attribute__((always_inline)) static inline

/* IPv4 flag/offset bits that mark a fragment: baton leaves fragments alone. */
#define IP_MF 0x2000
#define IP_OFFMASK 0x1fff

/* TCP flag bits in the 13th/14th header bytes (network order as a u16 "flags word"). */
#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_PSH 0x08
#define TCPF_ACK 0x10
#define TCPF_ECE 0x40
#define TCPF_CWR 0x80

/* skb->mark of a packet the programs send back in through ingress for our own TCP (fe.h's
 * fe_reset_local): ingress passes it at once. No other packet carries it. */
#define LOCAL_DELIVERY_MARK 0xba70de11

#define SOCK_STREAM_TYPE 1 /* struct bpf_sock.type of a TCP connection's socket */

/* Longest TCP options area. */
#define TCP_OPTS_MAX 40

/* barrier_var() (bpf_helpers.h) hides a value from the optimizer so that a following mask or bound
 * check is kept for the verifier. */

/* bpf_skb_load_bytes() with a run-time length in [1, max]. The length is checked as len-1 behind a
 * compiler barrier: otherwise clang folds "len == 0 || len > max" into one compare on a copy of the
 * register and the verifier never learns that len itself is non-zero. Returns 0 or negative. */
#define load_bytes_var(skb, off, dst, len, max)                                  \
	({                                                                        \
		__u64 __n = (__u64)(len) - 1;                                     \
		barrier_var(__n);                                                 \
		__n < (max) ? bpf_skb_load_bytes((skb), (off), (dst), __n + 1) : -1; \
	})
