/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* baton's programs: TC ingress and egress of a node's cluster interface, and a TCP state-change
 * tracepoint that counts the node's load and hears its TCP close handed-in connections. Dispatch
 * only: the logic lives in lib/fe.h (the accepting node), lib/be.h (the serving node),
 * lib/follow.h and lib/response.h (a placed connection followed request by request) and
 * lib/load.h.
 * A datapath offer (lib/offer.h) is the one non-TCP packet read on ingress. A packet that is not
 * IPv4/TCP for this node's service address and ports passes untouched; a
 * connection served locally has no conn entry and passes after one lookup.
 */
#include "lib/common.h"
#include "lib/be.h"
#include "lib/conn.h"
#include "lib/fe.h"
#include "lib/load.h"
#include "lib/maps.h"
#include "lib/parse.h"

SEC("classifier")
int baton_ingress(struct __sk_buff *skb)
{
	struct node_config *cfg = node_config();
	struct pkt p;

	if (!cfg)
		return TC_ACT_OK;
	if (skb->mark == LOCAL_DELIVERY_MARK) {
		skb->mark = 0;
		return TC_ACT_OK;
	}
	if (parse_tcp4(skb, &p))
		return offer_ingress(skb, cfg);
	if (p.daddr != cfg->service_addr || !is_service_port(cfg, p.dport))
		return TC_ACT_OK;

	struct conn_key key = {
		.client_addr = p.saddr,
		.local_addr = p.daddr,
		.client_port = p.sport,
		.local_port = p.dport,
	};
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (!c) {
		if ((p.flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
			return fe_new_syn(skb, cfg, &p, &key);
		return TC_ACT_OK;
	}
	__u64 now = bpf_ktime_get_ns();
	c->last_seen_ns = now;
	c->client_seen_ns = now;
	if (c->role == ROLE_FE)
		return fe_ingress(skb, cfg, &p, &key, c);
	return be_ingress(skb, cfg, &p, &key, c);
}

SEC("classifier")
int baton_egress(struct __sk_buff *skb)
{
	struct node_config *cfg = node_config();
	struct pkt p;

	if (!cfg || parse_tcp4(skb, &p))
		return TC_ACT_OK;
	if (p.saddr != cfg->service_addr || !is_service_port(cfg, p.sport))
		return TC_ACT_OK;
	stat_add(STAT_CLIENT_BYTES_SENT, skb->len - ETH_HLEN);

	struct conn_key key = {
		.client_addr = p.daddr,
		.local_addr = p.saddr,
		.client_port = p.dport,
		.local_port = p.sport,
	};
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (!c)
		return TC_ACT_OK;
	c->last_seen_ns = bpf_ktime_get_ns();
	if (c->role == ROLE_FE)
		return fe_egress(skb, &p, c);
	return be_egress(skb, &p, &key, c);
}

SEC("tracepoint/sock/inet_sock_set_state")
int baton_tcp_state(struct inet_sock_set_state_args *args)
{
	count_state_change(args);
	return be_socket_closed(args);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
