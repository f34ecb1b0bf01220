/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Following a placed keep-alive connection: the node that accepted it keeps deciding each later
 * request, and may move the connection between requests. The agent says what it needs in the
 * watch map (conn.h: struct watch), which the programs only read:
 *
 *   WATCH_HEADS  ingress, FE_FORWARD (FE), or BE_ESTABLISHED at the FE (a connection moved back
 *                to the node that accepted it: its client's packets arrive directly): a data
 *                segment with any byte at or after next_head_seq (one straddling it included) is
 *                held: copied to the agent as EV_NEXT_HEAD and dropped, as held packets are
 *                (DROP_HELD, and STAT_NEXT_HEADS_HELD): from then on only the agent has those
 *                bytes, until it moves next_head_seq on or clears the flag (the hold sets
 *                WATCH_AGENT_HEAD; the agent's next write of the watch clears it). Pure ACKs,
 *                window updates, FIN-only and RST segments and data wholly before next_head_seq
 *                (retransmissions) go on as if unwatched: the current server must keep hearing
 *                the client while the decision is out.
 *                Unless the datapath decides (DECIDE_HASH_STAYS, decide.h): a segment that
 *                starts at next_head_seq and holds a whole plain head that the hash policy gives
 *                to watch.node (the connection's node), while the agent holds no head of it,
 *                goes on, next_head_seq moves past it in place, and a quiet EV_NEXT_HEAD_STAYED
 *                tells the agent (STAT_NEXT_HEADS_STAYED).
 *   WATCH_FROZEN egress, BE_ESTABLISHED: the connection is moving to another node, whose TCP
 *                takes the client from here: whatever the local TCP sends is dropped (DROP_MOVING).
 *
 * Contract: follow_*() return 0 when the packet goes on, else its verdict. Without a watch entry
 * a packet costs one failed lookup (ingress: data segments only) and goes on exactly as before.
 * While no agent runs nothing is held: a hold would reach no one, and the client's request goes
 * to the server the connection is on (the datapath fails open, as everywhere). A frozen
 * connection stays frozen: its client may already be another node's; the next agent adopts it.
 */
#pragma once
#include "conn.h"
#include "decide.h"
#include "maps.h"
#include "parse.h"

/* A tuple's connection is over and a new one takes it (the client reused its port): what the
 * follow maps kept about the old one by tuple goes. A watch that froze it for a move away would
 * silence the new one, one that followed it would hold the new one's data as a next request, and
 * its count of responses is not the new one's. The agent, which forgets the old connection later,
 * leaves the tuple's maps alone once the table has another handed-in connection on it. */
__always void follow_forget_tuple(const struct conn_key *key)
{
	bpf_map_delete_elem(&watch, key);
	bpf_map_delete_elem(&responses, key);
}

/* Whether a client packet carries the next request head: 0, or the verdict of holding it. */
__always int follow_hold_head(struct __sk_buff *skb, const struct node_config *cfg,
			      const struct pkt *p, const struct conn_key *key)
{
	__u32 len = pkt_data_len(p);
	if (!len || (p->flags & (TCPF_RST | TCPF_SYN)))
		return 0;
	struct watch *w = bpf_map_lookup_elem(&watch, key);
	if (!w)
		return 0;
	struct watch wv = *w; /* one read of what the agent may be rewriting */
	if (!(wv.flags & WATCH_HEADS))
		return 0;
	/* Its end is at or before the next head: a retransmission of what went on already. */
	if ((__s32)(p->seq + len - wv.next_head_seq) <= 0)
		return 0;
	if (!agent_alive())
		return 0;
	/* A whole head that stays where the connection is goes on, told quietly: the agent counts it
	 * (a move later asks the serving node for every response it owes) before its next input. */
	if (!(wv.flags & WATCH_AGENT_HEAD) && p->seq == wv.next_head_seq &&
	    decide_stays(skb, cfg, p, wv.node)) {
		struct event_hdr h = {
			.kind = EV_NEXT_HEAD_STAYED,
			.detail = wv.next_head_seq + len,
			.key = *key,
		};
		if (!emit_notice_hdr(&h, 1)) {
			w->next_head_seq = wv.next_head_seq + len;
			stat_add(STAT_NEXT_HEADS_STAYED, 1);
			return 0;
		}
	}
	__sync_fetch_and_or(&w->flags, WATCH_AGENT_HEAD);
	if (emit_packet(skb, EV_NEXT_HEAD, key))
		return drop(DROP_EVENT_LOST);
	stat_add(STAT_NEXT_HEADS_HELD, 1);
	return drop(DROP_HELD);
}

/* A server packet of a connection moving away: 0, or the verdict that keeps it here. The local TCP
 * sees the send fail (TCX has no "stolen" verdict) and retries on its timers, into the same drop,
 * until the agent ends the local side or clears the flag. */
__always int follow_frozen(const struct conn_key *key)
{
	struct watch *w = bpf_map_lookup_elem(&watch, key);
	if (w && (w->flags & WATCH_FROZEN))
		return drop(DROP_MOVING);
	return 0;
}
