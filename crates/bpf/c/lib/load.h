/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This node's load, counted as its TCP changes state: every connection on the service address and
 * ports entering and leaving ESTABLISHED (local and handed in alike), so the agent reads a counter
 * instead of dumping every socket (a sock_diag dump walks the whole established hash table); and
 * listeners on them opening and closing, so the agent looks at its listeners only when they move.
 *
 * Only the agent's own sockets count (sock_state.h), so nodes that share a kernel and an address
 * (labs side by side) count apart.
 *
 * Contract: the STAT_SERVING_* and STAT_LISTEN_* counters only grow; SERVING_OPENED - CLOSED
 * moves with the established connections on the service ports (the agent anchors it on a dump),
 * and a listener on a service port (on the service address or every address) moves a LISTEN one.
 */
#pragma once
#include "common.h"
#include "conn.h"
#include "maps.h"
#include "sock_state.h"

__always int count_state_change(const struct inet_sock_set_state_args *args)
{
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
	int listener = stat == STAT_LISTEN_OPENED || stat == STAT_LISTEN_CLOSED;
	if (is_service_socket(args, listener))
		stat_add(stat, 1);
	return 0;
}
