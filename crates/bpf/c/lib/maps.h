/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every map of the datapath, each with why it exists, and the small accessors around them.
 * Names are ABI with the agent (`baton_bpf::*_MAP`); sizes are in sizes.h. */
#pragma once
#include "common.h"
#include "conn.h"
#include "events.h"
#include "reasons.h"
#include "sizes.h"

/* Why: the per-connection state of every held, forwarded or translated connection. Bounded so a
 * SYN flood cannot grow it; when full, new connections pass untracked and are served locally. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CONNS_MAX);
	__type(key, struct conn_key);
	__type(value, struct conn);
} conns SEC(".maps");

/* Why: what the agent tells the programs (service address, ports, distribution, hash table). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
} config SEC(".maps");

/* Why: the ring and the loads bounded-load hashing decides by in the datapath (agent-written). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bounded_view);
} bounded SEC(".maps");

/* Why: the agent adds what the datapath decided by bounded loads to the loads it writes back. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bounded_counts);
} bounded_counts SEC(".maps");

/* Why: packet copies and notices for the agent, in order across CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_BYTES);
} events SEC(".maps");

/* Why: notices the agent needs but need not be woken for (quiet: a datapath offer's bookkeeping,
 * read before the input that follows it). Apart from `events`, whose adaptive wakeup a pending
 * quiet record would otherwise hold back: the kernel wakes a reader only when the ring was empty. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, QUIET_RING_BYTES);
} quiet_events SEC(".maps");
/* Why: an event is too big for the BPF stack; each CPU builds its event here first. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} event_scratch SEC(".maps");

/* Why: the request line the datapath reads to decide alone does not fit the BPF stack either. */
struct head_scan {
	__u8 buf[HEAD_SCAN_MAX];
	__u64 hash[DP_NODES_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct head_scan);
} head_scratch SEC(".maps");

/* Why: a datapath offer refused here is never taken later (a duplicate or a replayed copy of it
 * would be served twice: the FE served it), until it is too old to be taken anyway (offer.h). */
struct refused_offer_key {
	__u64 handoff_id;
	__be32 fe_addr;
	__u32 pad;
};
struct refused_offer {
	__u64 until_ns; /* CLOCK_MONOTONIC */
	__u32 reason;   /* REFUSE_* */
	__u32 pad;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, REFUSED_OFFERS_MAX);
	__type(key, struct refused_offer_key);
	__type(value, struct refused_offer);
} refused_offers SEC(".maps");
/* Why: where the datapath's round-robin is (decide.h): one position, shared by all CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} round_robin SEC(".maps");
/* Why: the agent follows a placed keep-alive connection request by request; here it tells the
 * programs what to hold of the client's next request and when the local TCP must keep quiet
 * (follow.h). The agent writes, the programs read; pinned: a freeze must outlive its agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CONNS_MAX);
	__type(key, struct conn_key);
	__type(value, struct watch);
} watch SEC(".maps");

/* Why: the agent may move a connection only when its server has answered everything; only the
 * egress program sees where each response ends (response.h). Created by the agent, then written
 * by the programs alone; pinned with the connections it describes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CONNS_MAX);
	__type(key, struct conn_key);
	__type(value, struct responses);
} responses SEC(".maps");

/* Why: a response head is read from a copy of the packet's first bytes, too big for the stack. */
struct response_scan {
	__u8 buf[RESPONSE_SCAN_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct response_scan);
} response_scratch SEC(".maps");

/* Why: a datapath offer's header, the BE entry it creates and a rebuilt TCP header together do
 * not fit the BPF stack beside the rest (offer.h). */
struct offer_scratch {
	struct offer o;
	struct conn c;
	__u8 tcp[60];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct offer_scratch);
} offer_scratch SEC(".maps");
/* What the agent says about itself, in memory it writes without a syscall (mmap):
 * - whether it is alive (alive_until_ns, refreshed every housekeeping round): while it is not, the
 *   datapath fails open: it holds nothing new and passes up what it held, so a node without a
 *   running agent serves every new connection itself;
 * - its process id, so a new agent can tell it to hand over;
 * - while it is injecting packets (its process id, else 0): events its own injections cause need
 *   not wake it, since it reads the ring as soon as the injection returns. A wakeup is an IPI, a VM
 *   exit on a virtual machine. */
struct agent_state {
	__u32 injecting_pid;
	__u32 pid;
	__u64 alive_until_ns;
};

/* Why: the agent's word to the programs, above; pinned, it outlives the agent that wrote it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct agent_state);
} agent SEC(".maps");

/* Why: cheap per-CPU counters the agent sums for its metrics (index: enum stat). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Why: every drop is counted by reason (index: enum drop_reason). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

__always struct node_config *node_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

__always void stat_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += n;
}

/* Drops a packet. On egress under TCX the sender sees the drop (TCX has no "stolen" verdict), so
 * egress drops are kept to packets whose failed send TCP shrugs off. */
__always int drop(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&drops, &reason);
	if (v)
		*v += 1;
	return TC_ACT_SHOT;
}

/* How to notify the ring's reader of an event: not at all when the event comes from the agent's
 * own injection (it runs in the agent's process, which marked itself injecting), else as usual
 * (the kernel wakes the reader if it has caught up). */
__always __u64 ring_wakeup(void)
{
	__u32 zero = 0;
	struct agent_state *a = bpf_map_lookup_elem(&agent, &zero);
	if (a && a->injecting_pid && a->injecting_pid == (__u32)(bpf_get_current_pid_tgid() >> 32))
		return BPF_RB_NO_WAKEUP;
	return 0;
}

/* Whether an agent runs: it refreshed its heartbeat recently. */
__always int agent_alive(void)
{
	__u32 zero = 0;
	struct agent_state *a = bpf_map_lookup_elem(&agent, &zero);
	return a && a->alive_until_ns > bpf_ktime_get_ns();
}

/* Copies the packet (from its IPv4 header) into an event. Returns 0 or a negative error. */
__always int emit_packet(struct __sk_buff *skb, __u32 kind, const struct conn_key *key)
{
	__u32 zero = 0;
	struct event *ev = bpf_map_lookup_elem(&event_scratch, &zero);
	if (!ev)
		return -1;
	__u32 pkt_len = skb->len - ETH_HLEN;
	__u32 cap = pkt_len;
	if (cap > EVENT_CAPTURE_MAX)
		cap = EVENT_CAPTURE_MAX;
	ev->hdr.kind = kind;
	ev->hdr.pkt_len = pkt_len;
	ev->hdr.cap_len = cap;
	ev->hdr.detail = 0;
	ev->hdr.peer = 0;
	ev->hdr.sock_cookie = 0;
	ev->hdr.handoff_id = 0;
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->hdr.key = *key;
	if (load_bytes_var(skb, ETH_HLEN, ev->data, cap, EVENT_CAPTURE_MAX))
		return -1;
	__u64 n = (__u64)cap - 1;
	barrier_var(n);
	if (n >= EVENT_CAPTURE_MAX)
		return -1;
	if (bpf_ringbuf_output(&events, ev, sizeof(ev->hdr) + n + 1, ring_wakeup()))
		return -1;
	stat_add(STAT_EVENTS, 1);
	return 0;
}

/* A notice without packet bytes, as `h` has it (kind, key, details), stamped now: on the events
 * ring, or (`quiet`) on the quiet ring, which wakes no one: the agent reads it before any input
 * (a datapath offer's notice before the peer's answer, or the BE's going live), or at its next
 * round. A wakeup is an IPI on the packet's path. */
__always int emit_notice_hdr(struct event_hdr *h, int quiet)
{
	h->ts_ns = bpf_ktime_get_ns();
	long err = quiet ? bpf_ringbuf_output(&quiet_events, h, sizeof(*h), BPF_RB_NO_WAKEUP)
			 : bpf_ringbuf_output(&events, h, sizeof(*h), ring_wakeup());
	if (err)
		return -1;
	stat_add(STAT_EVENTS, 1);
	return 0;
}

/* A quiet notice that carries a copy of a conn entry (as the packet bytes of an event: cap_len
 * bytes of struct conn), stamped now. Returns 0 or a negative error. */
__always int emit_quiet_conn(struct event_hdr *h, const struct conn *c)
{
	__u32 zero = 0;
	struct event *ev = bpf_map_lookup_elem(&event_scratch, &zero);
	if (!ev)
		return -1;
	ev->hdr = *h;
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->hdr.pkt_len = sizeof(*c);
	ev->hdr.cap_len = sizeof(*c);
	__builtin_memcpy(ev->data, c, sizeof(*c));
	if (bpf_ringbuf_output(&quiet_events, ev, sizeof(ev->hdr) + sizeof(*c), BPF_RB_NO_WAKEUP))
		return -1;
	stat_add(STAT_EVENTS, 1);
	return 0;
}

__always int emit_notice_detail(__u32 kind, const struct conn_key *key, __u32 detail, __be32 peer)
{
	struct event_hdr h = {
		.kind = kind,
		.detail = detail,
		.peer = peer,
		.key = *key,
	};
	return emit_notice_hdr(&h, 0);
}

__always int emit_notice(__u32 kind, const struct conn_key *key)
{
	return emit_notice_detail(kind, key, 0, 0);
}

__always struct offer_scratch *offer_scratch_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&offer_scratch, &zero);
}
