/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The kernel's word on its TCP sockets: the sock/inet_sock_set_state tracepoint, which fires as a
 * socket changes state, for every socket of every network namespace. Read by load.h (the node's
 * load) and be.h (a handed-in connection's close, as its server's TCP lets go of it).
 *
 * Contract: is_service_socket() is true only for sockets of the agent's namespace
 * (node_config.netns_inum, read through the socket with CO-RE) on its service address and ports,
 * so nodes that share a kernel and an address (labs side by side) stay apart.
 */
#pragma once
#include <bpf/bpf_core_read.h>
#include "common.h"
#include "conn.h"
#include "maps.h"

#define TCP_STATE_ESTABLISHED 1
#define TCP_STATE_FIN_WAIT2 5
#define TCP_STATE_CLOSE 7
#define TCP_STATE_LISTEN 10
#define TCP_STATE_CLOSING 11
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

struct tcp_sock {
	__u32 rcv_nxt; /* what the socket took of the peer's stream, a FIN included */
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

/* Whether the socket is this node's on a service port: on the service address, or (`listener`:
 * a listening socket) on every address. */
__always int is_service_socket(const struct inet_sock_set_state_args *args, int listener)
{
	if (args->family != AF_INET_FAMILY || args->protocol != IPPROTO_TCP)
		return 0;
	struct node_config *cfg = node_config();
	if (!cfg)
		return 0;
	__be32 saddr;
	__builtin_memcpy(&saddr, args->saddr, 4);
	if (saddr != cfg->service_addr && !(listener && saddr == 0))
		return 0;
	if (!is_service_port(cfg, bpf_htons(args->sport)))
		return 0;
	const struct sock *sk = args->skaddr;
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) == cfg->netns_inum;
}
