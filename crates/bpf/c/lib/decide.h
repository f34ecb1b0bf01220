/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Deciding in the datapath: a first data segment whose request line names a target that the hash
 * policy gives to this node is released to the local server at once, with no agent round trip;
 * one it gives to another node may be offered to it by the datapath alone (offer.h). Round-robin
 * needs no request at all: the next eligible node in turn (decide_round_robin()).
 *
 * The agent's `Hash` policy (`baton_policy::Hash`) is computed here bit for bit: rendezvous over
 * the eligible nodes, score = splitmix64(FNV-1a 64 over name, 0xff, target), the highest score
 * wins, ties to the greatest name. The agent writes each node's FNV state after "name 0xff"
 * (hash_seed), its eligibility and its name's rank into node_config.nodes.
 *
 * With hash_kind HASH_BOUNDED the hash modes run the agent's `BoundedHash` instead (consistent
 * hashing with bounded loads): the agent writes the ring (each point with the order in which a
 * walk from it meets the members) and each member's load at its heartbeat (the `bounded` map);
 * the datapath counts what it decides for each member since (`bounded_counts`), so that the cap
 * holds between two heartbeats as the agent's own counting would hold it. A target no member
 * below the cap takes is the agent's.
 *
 * Followed requests (DECIDE_HASH_STAYS): a first request decided here must be a whole plain head
 * (its end is where the next one starts); a later request head wholly in one segment that the
 * hash policy gives to the node its connection is on goes on there (decide_stays(), follow.h);
 * any other the agent decides.
 *
 * Contract: decide_hash() returns the index (in node_config.nodes) of the node the agent, with the
 * same view of the cluster, would choose for the request, or -1. The target is the bytes between the request line's first and second
 * space, as the agent's parser reads it; a request line it cannot find in the segment's first
 * HEAD_SCAN_MAX bytes returns -1, and so does anything not decided here: the agent decides.
 */
#pragma once
#include "common.h"
#include "maps.h"
#include "parse.h"

#define FNV_PRIME 0x00000100000001b3ULL
#define FNV_OFFSET_BASIS 0xcbf29ce484222325ULL

struct head_walk {
	struct head_scan *s;
	__u32 len;          /* bytes in s->buf */
	__u32 target_start; /* offset of the target's first byte; 0 until the method's end is found */
	__u32 target_end;   /* offset just past the target; 0 until found */
	__u32 nnodes;
};

/* One byte of the request line: finds the method's end, then the target's. */
static long find_target_step(__u64 i, void *ctx)
{
	struct head_walk *w = ctx;

	if (i >= w->len)
		return 1;
	__u8 b = w->s->buf[i & (HEAD_SCAN_MAX - 1)];
	if (b == '\r' || b == '\n')
		return 1;
	if (b != ' ')
		return 0;
	if (!w->target_start) {
		if (i == 0 || i > METHOD_MAX)
			return 1;
		w->target_start = i + 1;
		return 0;
	}
	w->target_end = i;
	return 1;
}

/* One target byte into the FNV-1a states s->hash[0..nnodes) (every node's, or a ring point's). */
static long hash_step(__u64 i, void *ctx)
{
	struct head_walk *w = ctx;
	__u32 at = w->target_start + i;

	if (at >= w->target_end)
		return 1;
	__u64 b = w->s->buf[at & (HEAD_SCAN_MAX - 1)];
	for (int n = 0; n < DP_NODES_MAX; n++) {
		if (n >= w->nnodes)
			break;
		w->s->hash[n] = (w->s->hash[n] ^ b) * FNV_PRIME;
	}
	return 0;
}

__always __u64 splitmix64_finalize(__u64 z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Finds the request line's target in s->buf: 1 with w's target_start and target_end set, or 0. */
__always int find_target(struct head_walk *w)
{
	bpf_loop(HEAD_SCAN_MAX, find_target_step, w, 0);
	return w->target_end && w->target_end > w->target_start;
}

/* Whether member `n` may be chosen: up, or this node, which the agent always marks eligible.
 * (Comparing n with self_index here let the verifier learn self_index's value on one branch: a
 * state for each value, and the rendezvous loop no longer fitted its instruction limit.) */
__always int dp_eligible(const struct node_config *cfg, __u32 n)
{
	return cfg->nodes[n & (DP_NODES_MAX - 1)].eligible;
}

/* Rendezvous: the node the hash policy gives the request whose first `len` bytes are in s->buf
 * (its index), or -1. */
__always int hash_choice(struct head_scan *s, const struct node_config *cfg, __u32 len)
{
	struct head_walk w = {.s = s, .len = len, .nnodes = cfg->nnodes};
	if (!find_target(&w))
		return -1;
	for (int n = 0; n < DP_NODES_MAX; n++) {
		if (n >= w.nnodes)
			break;
		s->hash[n] = cfg->nodes[n].hash_seed;
	}
	bpf_loop(HEAD_SCAN_MAX, hash_step, &w, 0);

	int best = -1;
	__u64 best_score = 0;
	__u8 best_rank = 0;
	for (int n = 0; n < DP_NODES_MAX; n++) {
		if (n >= w.nnodes)
			break;
		if (!dp_eligible(cfg, n))
			continue;
		__u64 score = splitmix64_finalize(s->hash[n]);
		__u8 rank = cfg->nodes[n].rank;
		if (best < 0 || score > best_score || (score == best_score && rank > best_rank)) {
			best = n;
			best_score = score;
			best_rank = rank;
		}
	}
	return best;
}

/* A member's load as the agent's `Peer::effective_load` counts it, with `assigned` connections
 * since its report: in full up to as many as it reported (at least 8), then one in 16. */
__always __u64 effective_load(__u64 load, __u64 assigned)
{
	__u64 in_full = load > 8 ? load : 8;
	if (assigned <= in_full)
		return load + assigned;
	return load + in_full + (assigned - in_full) / 16;
}

/* A walk of bounded_choice(). Its loops run under bpf_loop: unrolled, each member's branches
 * (eligible or not, over the cap or not) multiplied the paths the verifier follows. Small: it is
 * on decide_hash()'s stack, which with the ingress program's must fit 512 bytes (the callbacks
 * look the maps up themselves rather than carry pointers here). */
struct bounded_walk {
	const struct node_config *cfg;
	struct head_scan *s; /* s->hash[n]: member n's load */
	__u64 key;           /* the target's point while searching; then the members from there */
	__u64 sum;           /* the eligible members' loads; then the cap */
	__u32 lo, hi;        /* the search's range of ring positions */
	__u32 eligible;      /* how many members may be chosen */
	int found;           /* the member chosen, or -1 */
};

__always const struct bounded_view *bounded_view(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&bounded, &zero);
}

/* One halving of the search for the first ring point at or past the target's. */
static long bounded_search_step(__u64 i, void *ctx)
{
	struct bounded_walk *b = ctx;
	const struct bounded_view *v = bounded_view();
	if (!v || b->lo >= b->hi)
		return 1;
	__u32 mid = (b->lo + b->hi) / 2;
	if (mid >= BOUNDED_RING_MAX)
		return 1;
	if (v->ring[mid].point < b->key)
		b->lo = mid + 1;
	else
		b->hi = mid;
	return 0;
}

/* Member i's load, if it may be chosen, into s->hash[i] and the sum. */
static long bounded_load_step(__u64 i, void *ctx)
{
	struct bounded_walk *b = ctx;
	__u32 zero = 0;
	const struct bounded_view *v = bounded_view();
	const struct bounded_counts *k = bpf_map_lookup_elem(&bounded_counts, &zero);
	if (!v || !k || i >= b->cfg->nnodes || i >= DP_NODES_MAX)
		return 1;
	__u32 n = i & (DP_NODES_MAX - 1);
	if (!dp_eligible(b->cfg, n))
		return 0;
	__u64 from = v->nodes[n].counted_from, now = k->decided[n];
	__u64 since = now > from ? now - from : 0;
	__u64 load = effective_load(v->nodes[n].load, v->nodes[n].assigned + since);
	b->s->hash[n] = load;
	b->sum += load;
	b->eligible++;
	return 0;
}

/* The j-th member from the target's point: chosen if it may be and is below the cap. */
static long bounded_pick_step(__u64 j, void *ctx)
{
	struct bounded_walk *b = ctx;
	if (j >= b->cfg->nnodes || j >= DP_NODES_MAX)
		return 1;
	__u32 n = (b->key >> (4 * j)) & (DP_NODES_MAX - 1);
	if (n < b->cfg->nnodes && dp_eligible(b->cfg, n) && b->s->hash[n] < b->sum) {
		b->found = n;
		return 1;
	}
	return 0;
}

/* Bounded loads, as the agent's `BoundedHash` with the loads of the agent's last view plus what
 * this datapath decided since: the first member clockwise from the target's point on the ring
 * that may be chosen and carries less than the cap, or -1 (none does: the agent picks the least
 * loaded; or no view). s->hash[] holds the members' loads meanwhile. */
__always int bounded_choice(struct head_scan *s, const struct node_config *cfg, __u32 len)
{
	const struct bounded_view *v = bounded_view();
	if (!v || !v->ring_len || v->ring_len > BOUNDED_RING_MAX)
		return -1;
	struct head_walk w = {.s = s, .len = len, .nnodes = cfg->nnodes};
	if (!find_target(&w))
		return -1;
	/* The target's point: FNV-1a 64 over it (one state: hash_step over one "node"), then the
	 * salt u32::MAX, big-endian. */
	s->hash[0] = FNV_OFFSET_BASIS;
	w.nnodes = 1;
	bpf_loop(HEAD_SCAN_MAX, hash_step, &w, 0);
	__u64 h = s->hash[0];
#pragma unroll
	for (int i = 0; i < 4; i++)
		h = (h ^ 0xff) * FNV_PRIME;

	struct bounded_walk b = {
		.cfg = cfg, .s = s, .key = splitmix64_finalize(h), .hi = v->ring_len, .found = -1,
	};
	/* The first point at or past the target's; past the last, the ring's first. */
	bpf_loop(BOUNDED_SEARCH_STEPS, bounded_search_step, &b, 0);
	__u32 at = b.lo < v->ring_len ? b.lo : 0;
	if (at >= BOUNDED_RING_MAX)
		return -1;
	b.key = v->ring[at].order;
	bpf_loop(DP_NODES_MAX, bounded_load_step, &b, 0);
	if (!b.eligible)
		return -1;
	/* BoundedHash::cap: ceil(factor * (sum + 1) / (100 * n)). */
	__u64 n = b.eligible;
	b.sum = ((__u64)v->factor * (b.sum + 1) + 100 * n - 1) / (100 * n);
	bpf_loop(DP_NODES_MAX, bounded_pick_step, &b, 0);
	return b.found;
}

/* Counts a connection the datapath gave member `n` by bounded loads, for the caps that follow
 * (and for the agent, which folds the count into the loads it writes). */
__always void bounded_count(const struct node_config *cfg, int n)
{
	__u32 zero = 0;
	if (cfg->hash_kind != HASH_BOUNDED || n < 0 || n >= DP_NODES_MAX)
		return;
	struct bounded_counts *k = bpf_map_lookup_elem(&bounded_counts, &zero);
	if (k)
		__sync_fetch_and_add(&k->decided[n & (DP_NODES_MAX - 1)], 1);
}

/* The segment's first bytes (up to HEAD_SCAN_MAX) in the per-CPU scratch buffer, or NULL. */
__always struct head_scan *load_head(struct __sk_buff *skb, const struct pkt *p, __u32 *len)
{
	__u32 zero = 0;
	struct head_scan *s = bpf_map_lookup_elem(&head_scratch, &zero);
	if (!s)
		return NULL;
	*len = p->payload_len < HEAD_SCAN_MAX ? p->payload_len : HEAD_SCAN_MAX;
	if (load_bytes_var(skb, p->opts_off + p->opts_len, s->buf, *len, HEAD_SCAN_MAX))
		return NULL;
	return s;
}

/* A followed request's head that the datapath may place itself (follow.h): "GET <target>
 * HTTP/1.1" (exactly: no other space in the request line), CRLF line ends and no other CR, no
 * folded header line, no header that changes what follows it (Content-Length,
 * Transfer-Encoding, Upgrade; Connection other than "keep-alive"), and the segment holds the
 * head and nothing more (no body, no pipelined request). Anything else is the agent's. */
struct head_check {
	struct head_scan *s;
	__u32 len;
	__u32 line_start; /* offset of the current line's first byte */
	__u32 lines;      /* lines ended so far */
	__u32 head_end;   /* offset just past the empty line; 0 until found */
	__u32 bad;
};

/* Whether the bytes at `at` (before `end`) are `lit` (lowercase), ASCII case aside (a header
 * name); HEAD_MATCH_EXACT: byte for byte (the method and version are case-sensitive). */
#define HEAD_MATCH(c, at, end, lit) head_match((c), (at), (end), lit, sizeof(lit) - 1, 1)
#define HEAD_MATCH_EXACT(c, at, end, lit) head_match((c), (at), (end), lit, sizeof(lit) - 1, 0)
static __always_inline int head_match(const struct head_check *c, __u32 at, __u32 end,
				      const char *lit, __u32 n, int fold)
{
	if (at + n > end)
		return 0;
#pragma unroll
	for (__u32 k = 0; k < 20; k++) {
		if (k >= n)
			break;
		__u8 b = c->s->buf[(at + k) & (HEAD_SCAN_MAX - 1)];
		if (fold && b >= 'A' && b <= 'Z')
			b += 'a' - 'A';
		if (b != (__u8)lit[k])
			return 0;
	}
	return 1;
}

/* Whether the header line [at, end) leaves the request plain (see struct head_check). */
static __always_inline int header_is_plain(const struct head_check *c, __u32 at, __u32 end)
{
	if (HEAD_MATCH(c, at, end, "content-length:") ||
	    HEAD_MATCH(c, at, end, "transfer-encoding:") || HEAD_MATCH(c, at, end, "upgrade:"))
		return 0;
	if (!HEAD_MATCH(c, at, end, "connection:"))
		return 1;
	__u32 v = at + sizeof("connection:") - 1;
#pragma unroll
	for (int k = 0; k < 4; k++) {
		__u8 b = c->s->buf[v & (HEAD_SCAN_MAX - 1)];
		if (v < end && (b == ' ' || b == '\t'))
			v++;
	}
	return HEAD_MATCH(c, v, end, "keep-alive") && v + sizeof("keep-alive") - 1 == end;
}

/* One byte of the head: at each line's end, the line is checked. */
static long head_check_step(__u64 i, void *ctx)
{
	struct head_check *c = ctx;

	if (i >= c->len)
		return 1;
	__u8 b = c->s->buf[i & (HEAD_SCAN_MAX - 1)];
	/* The request line's spaces: the method's, and the one before the version. */
	if (b == ' ' && c->lines == 0 && i > 3 && !HEAD_MATCH_EXACT(c, i, c->len, " HTTP/1.1\r")) {
		c->bad = 1;
		return 1;
	}
	/* A header line that starts with a space or tab folds onto the one before it. */
	if ((b == ' ' || b == '\t') && c->lines > 0 && i == c->line_start) {
		c->bad = 1;
		return 1;
	}
	/* A CR ends a line only with the LF after it (the agent's parser rejects a lone one). */
	if (b == '\r' && (i + 1 >= c->len || c->s->buf[(i + 1) & (HEAD_SCAN_MAX - 1)] != '\n')) {
		c->bad = 1;
		return 1;
	}
	if (b != '\n')
		return 0;
	if (i == 0 || c->s->buf[(i - 1) & (HEAD_SCAN_MAX - 1)] != '\r') {
		c->bad = 1;
		return 1;
	}
	__u32 end = i - 1; /* the line is [line_start, end) */
	if (end == c->line_start) {
		c->head_end = i + 1;
		return 1;
	}
	if (c->lines == 0) {
		if (end < 14 || !HEAD_MATCH_EXACT(c, 0, end, "GET ") ||
		    !HEAD_MATCH_EXACT(c, end - 9, end, " HTTP/1.1")) {
			c->bad = 1;
			return 1;
		}
	} else if (!header_is_plain(c, c->line_start, end)) {
		c->bad = 1;
		return 1;
	}
	c->lines++;
	c->line_start = i + 1;
	return 0;
}

/* Whether the segment's first `len` bytes, in s->buf, are a whole plain head and nothing more
 * (see struct head_check). */
__always int head_is_plain(struct head_scan *s, __u32 len)
{
	struct head_check c = {.s = s, .len = len};
	bpf_loop(HEAD_SCAN_MAX, head_check_step, &c, 0);
	return !c.bad && c.head_end == len;
}

/* The node the hash policy gives this request to (its index), or -1; with `plain`, only a
 * request the segment holds whole and plain is decided.
 * A global function: the verifier checks it once, on its own, instead of in every state of each
 * caller (its loops over the head made the ingress program nearly too complex to load). */
__attribute__((noinline)) int decide_hash(struct __sk_buff *skb, const struct node_config *cfg,
					  const struct pkt *p, int plain)
{
	if (!cfg || !p)
		return -1;
	if (plain && p->payload_len > HEAD_SCAN_MAX)
		return -1;
	if (cfg->nnodes > DP_NODES_MAX || cfg->self_index >= cfg->nnodes)
		return -1;
	__u32 len;
	struct head_scan *s = load_head(skb, p, &len);
	if (!s || (plain && !head_is_plain(s, len)))
		return -1;
	if (cfg->hash_kind == HASH_BOUNDED)
		return bounded_choice(s, cfg, len);
	return hash_choice(s, cfg, len);
}

/* For a followed connection on node `node`: 1 if the request that this segment holds whole goes
 * there by the hash policy (the datapath lets it go on), else 0 (the agent decides). */
__always int decide_stays(struct __sk_buff *skb, const struct node_config *cfg,
			  const struct pkt *p, __u8 node)
{
	if (cfg->decide != DECIDE_HASH_STAYS || node >= cfg->nnodes)
		return 0;
	return decide_hash(skb, cfg, p, 1) == node;
}

/* Round-robin: the next node in turn that is eligible (this node always is), as the agent's
 * `RoundRobin` cycles; one position shared by all CPUs. Returns its index, or -1. */
__always int decide_round_robin(const struct node_config *cfg)
{
	__u32 zero = 0;
	__u64 *next = bpf_map_lookup_elem(&round_robin, &zero);
	__u32 n = cfg->nnodes;
	if (!next || cfg->decide != DECIDE_ROUND_ROBIN || n == 0 || n > DP_NODES_MAX ||
	    cfg->self_index >= n)
		return -1;
	__u32 start = (__u32)(__sync_fetch_and_add(next, 1) % n);
	for (int i = 0; i < DP_NODES_MAX; i++) {
		if (i >= n)
			break;
		__u32 at = (start + i) % n;
		barrier_var(at); /* the mask below must stay for the verifier */
		at &= DP_NODES_MAX - 1;
		if (cfg->nodes[at].eligible || at == cfg->self_index)
			return at;
	}
	return cfg->self_index;
}

/* The node the datapath's policy gives this first data segment to, or -1: the agent decides.
 * With requests followed (DECIDE_HASH_STAYS) only a whole plain head is decided here: the next
 * one starts right after it (fe_follow_here for this node, a followed offer for a peer). */
__always int decide_first(struct __sk_buff *skb, const struct node_config *cfg, const struct pkt *p)
{
	if (cfg->decide == DECIDE_ROUND_ROBIN)
		return decide_round_robin(cfg);
	if (cfg->decide != DECIDE_HASH && cfg->decide != DECIDE_HASH_STAYS)
		return -1;
	return decide_hash(skb, cfg, p, cfg->decide == DECIDE_HASH_STAYS);
}
