/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every size and limit of the datapath, in one place. Mirrored in Rust (`baton_bpf`), where a test
 * checks them against this file. */
#pragma once

/* Connections held, forwarded or translated at once (the conn table). */
#define CONNS_MAX 65536
/* Service ports a node may distribute. */
#define SERVICE_PORTS_MAX 8
/* Cluster members the datapath's hash decision knows; larger clusters decide in the agent. */
#define DP_NODES_MAX 16
/* Points of each member on the bounded-load hash ring (`baton_policy::BoundedHash`'s). */
#define BOUNDED_VNODES 160
/* Points on the bounded-load ring at most. */
#define BOUNDED_RING_MAX (DP_NODES_MAX * BOUNDED_VNODES)
/* Halvings that find a point on a ring of BOUNDED_RING_MAX: ceil(log2(2560)) + 1. */
#define BOUNDED_SEARCH_STEPS 13
/* Head and body prefix the agent may need from one packet: the request head limit plus headers. */
#define EVENT_CAPTURE_MAX 10240
/* The event ring, in bytes. */
#define EVENTS_RING_BYTES (4 << 20)
/* The ring of quiet notices (datapath offers' bookkeeping), in bytes. */
#define QUIET_RING_BYTES (1 << 20)
/* Bytes of a first data segment the datapath reads for the request line (method and target). */
#define HEAD_SCAN_MAX 512
/* Longest method the datapath recognises in a request line. */
#define METHOD_MAX 16
/* Bytes of a server packet the datapath reads for a response head (status line to empty line). */
#define RESPONSE_SCAN_MAX 1024
/* The key that authenticates datapath offers (SipHash-2-4). */
#define OFFER_KEY_LEN 16
/* Refused datapath offers remembered at once (offer.h: a copy of one is never taken later). */
#define REFUSED_OFFERS_MAX 8192
