/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This node's load, counted as its TCP changes state: every connection on the service address and
 * ports entering and leaving ESTABLISHED (local and handed in alike), so the agent reads a counter
 * instead of dumping every socket (a sock_diag dump walks the whole established hash table); and
 * listeners on them opening and closing, so the agent looks at its listeners only when they move.
 *
 * The tracepoint fires for every socket of every network namespace: only those of the agent's
 * namespace (node_config.netns_inum, read through the socket with CO-RE) and its service address
 * count, so nodes that share a kernel and an address (labs side by side) count apart.
 *
 * Contract: the STAT_SERVING_* and STAT_LISTEN_* counters only grow; SERVING_OPENED - CLOSED
 * moves with the established connections on the service ports (the agent anchors it on a dump),
 * and a listener on a service port (on the service address or every address) moves a LISTEN one.
 */
#pragma once
#include <bpf/bpf_core_read.h>
#include "common.h"
#include "conn.h"
#include "maps.h"

#define TCP_STATE_ESTABLISHED 1
#define TCP_STATE_CLOSE 7
#define TCP_STATE_LISTEN 10
#define AF_INET_FAMILY 2

/* The kernel's types, as far as they are read here; CO-RE finds the fields in the running kernel. */
struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} __attribute__((preserve_access_index)) possible_net_t;

struct sock_common {
	possible_net_t skc_net;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

/* The tracepoint's record (/sys/kernel/tracing/events/sock/inet_sock_set_state/format). */
struct inet_sock_set_state_args {
	__u64 common;
	const void *skaddr;
	int oldstate;
	int newstate;
	__u16 sport; /* host order */
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

__always int count_state_change(const struct inet_sock_set_state_args *args)
{
	if (args->family != AF_INET_FAMILY || args->protocol != IPPROTO_TCP)
		return 0;
	__u32 stat;
	if (args->newstate == TCP_STATE_ESTABLISHED)
		stat = STAT_SERVING_OPENED;
	else if (args->oldstate == TCP_STATE_ESTABLISHED)
		stat = STAT_SERVING_CLOSED;
	else if (args->newstate == TCP_STATE_LISTEN)
		stat = STAT_LISTEN_OPENED;
	/* A child socket is a clone of its listener: it "leaves" LISTEN for SYN_RECV. */
	else if (args->oldstate == TCP_STATE_LISTEN && args->newstate == TCP_STATE_CLOSE)
		stat = STAT_LISTEN_CLOSED;
	else
		return 0;
	struct node_config *cfg = node_config();
	if (!cfg)
		return 0;
	__be32 saddr;
	__builtin_memcpy(&saddr, args->saddr, 4);
	int listener = stat == STAT_LISTEN_OPENED || stat == STAT_LISTEN_CLOSED;
	if (saddr != cfg->service_addr && !(listener && saddr == 0))
		return 0;
	if (!is_service_port(cfg, bpf_htons(args->sport)))
		return 0;
	const struct sock *sk = args->skaddr;
	if (BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) != cfg->netns_inum)
		return 0;
	stat_add(stat, 1);
	return 0;
}
