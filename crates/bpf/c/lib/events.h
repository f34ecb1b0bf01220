/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Events to the agent (a ring buffer of packet copies and notices) and per-CPU counters.
 *
 * Contract: emit_packet() copies the packet from its IPv4 header on, up to EVENT_CAPTURE_MAX
 * bytes, with its true length; the agent gets every event in order or, when the ring is full, the
 * caller learns it (negative return) and counts DROP_EVENT_LOST.
 */
#pragma once
#include "common.h"
#include "conn.h"
#include "reasons.h"

/* Event kinds: ABI, mirrored by `baton_bpf::EventKind`. Never renumber. */
enum event_kind {
	EV_HELD_PACKET = 1, /* FE: a held client packet (handshake ACK, data, FIN, RST) */
	EV_BE_SYNACK = 2,   /* BE: the server's answer to a replayed SYN (SYN-ACK, or anything else = collision) */
	EV_CLOSED = 3,      /* BE: the handed-in connection closed (both FINs, or a RST) */
};

/* Head and body prefix the agent may need from one packet: the request head limit plus headers. */
#define EVENT_CAPTURE_MAX 10240

struct event_hdr {
	__u32 kind;
	__u32 pkt_len; /* length of the packet from its IPv4 header */
	__u32 cap_len; /* bytes of it that follow this header */
	__u32 pad;
	__u64 ts_ns;
	struct conn_key key;
	__u32 pad2;
};

struct event {
	struct event_hdr hdr;
	__u8 data[EVENT_CAPTURE_MAX];
};

/* Why: packet copies and notices for the agent, in order across CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* Why: an event is too big for the BPF stack; each CPU builds its event here first. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} event_scratch SEC(".maps");

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
	ev->hdr.pad = 0;
	ev->hdr.pad2 = 0;
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->hdr.key = *key;
	if (load_bytes_var(skb, ETH_HLEN, ev->data, cap, EVENT_CAPTURE_MAX))
		return -1;
	__u64 n = (__u64)cap - 1;
	barrier_var(n);
	if (n >= EVENT_CAPTURE_MAX)
		return -1;
	if (bpf_ringbuf_output(&events, ev, sizeof(ev->hdr) + n + 1, 0))
		return -1;
	stat_add(STAT_EVENTS, 1);
	return 0;
}

/* A notice without packet bytes. */
__always int emit_notice(__u32 kind, const struct conn_key *key)
{
	struct event_hdr h = {
		.kind = kind,
		.ts_ns = bpf_ktime_get_ns(),
		.key = *key,
	};
	if (bpf_ringbuf_output(&events, &h, sizeof(h), 0))
		return -1;
	stat_add(STAT_EVENTS, 1);
	return 0;
}
