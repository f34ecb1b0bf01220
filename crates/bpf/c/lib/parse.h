/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Header parsing: Ethernet -> IPv4 -> TCP, into a `struct pkt` of offsets and fields.
 *
 * Contract: parse_tcp4() returns 0 and fills `p` only for an unfragmented IPv4 TCP packet whose
 * IP and TCP headers (with options) are in the linear area; the offsets are from skb->data.
 * Anything else returns a negative value and the caller passes the packet untouched.
 */
#pragma once
#include "common.h"

struct pkt {
	__u32 l3_off;      /* offset of the IPv4 header */
	__u32 l4_off;      /* offset of the TCP header */
	__u32 opts_off;    /* offset of the TCP options */
	__u32 opts_len;    /* bytes of TCP options (0..40) */
	__u32 payload_len; /* TCP payload bytes (of the whole skb, GSO included) */
	__u32 ip_len;      /* IPv4 total length as sent (0 for GSO super-packets on some paths) */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 seq;         /* host order */
	__u32 ack_seq;     /* host order */
	__u8 flags;        /* TCPF_* */
};

/* Offsets inside the TCP header (RFC 9293). */
#define TCP_SEQ_OFF 4
#define TCP_ACK_OFF 8
#define TCP_CSUM_OFF 16
#define IP_CSUM_OFF 10
#define IP_SADDR_OFF 12
#define IP_DADDR_OFF 16

/* Longest header chain we need linear: Ethernet + IPv4 with options + TCP with options. */
#define HDRS_MAX (ETH_HLEN + 60 + 60)

/* Headers not in the linear area: parse_linear() asks for a pull and another try. */
#define PARSE_NEED_PULL -2

__always int parse_linear(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	struct iphdr *ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end)
		return PARSE_NEED_PULL;
	if (ip->version != 4 || ip->ihl < 5 || ip->protocol != IPPROTO_TCP)
		return -1;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFMASK))
		return -1;
	__u32 ihl = ip->ihl * 4;
	struct tcphdr *tcp = (void *)ip + ihl;
	if ((void *)(tcp + 1) > data_end)
		return PARSE_NEED_PULL;
	__u32 doff = tcp->doff * 4;
	if (doff < sizeof(struct tcphdr))
		return -1;
	if ((void *)tcp + doff > data_end)
		return PARSE_NEED_PULL;

	p->l3_off = ETH_HLEN;
	p->l4_off = ETH_HLEN + ihl;
	p->opts_off = p->l4_off + sizeof(struct tcphdr);
	p->opts_len = doff - sizeof(struct tcphdr);
	__u32 l4_total = skb->len - p->l4_off;
	p->payload_len = l4_total > doff ? l4_total - doff : 0;
	p->ip_len = bpf_ntohs(ip->tot_len);
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->sport = tcp->source;
	p->dport = tcp->dest;
	p->seq = bpf_ntohl(tcp->seq);
	p->ack_seq = bpf_ntohl(tcp->ack_seq);
	p->flags = ((__u8 *)tcp)[13];
	return 0;
}

__always int parse_tcp4(struct __sk_buff *skb, struct pkt *p)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	int r = parse_linear(skb, p);
	if (r != PARSE_NEED_PULL)
		return r;
	/* Rare: pull only then, since a pull also un-clones (copies) a cloned egress skb. */
	__u32 want = skb->len < HDRS_MAX ? skb->len : HDRS_MAX;
	if (bpf_skb_pull_data(skb, want))
		return -1;
	r = parse_linear(skb, p);
	return r == PARSE_NEED_PULL ? -1 : r;
}

/* TCP payload bytes as the IPv4 total length counts them. payload_len counts the skb, which on
 * ingress includes the link layer's padding of short frames (a 54-byte pure ACK arrives padded to
 * 60, "carrying" 6 bytes); GSO super-packets carry their whole length in both. A total length of 0
 * (BIG TCP) or one beyond the skb falls back to payload_len. */
__always __u32 pkt_data_len(const struct pkt *p)
{
	__u32 hdrs = p->opts_off + p->opts_len - p->l3_off;
	if (!p->ip_len)
		return p->payload_len;
	if (p->ip_len < hdrs)
		return 0;
	__u32 n = p->ip_len - hdrs;
	return n < p->payload_len ? n : p->payload_len;
}
