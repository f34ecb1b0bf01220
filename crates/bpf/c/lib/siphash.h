/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* SipHash-2-4 (Aumasson and Bernstein), the keyed MAC of datapath offers (offer.h): cheap enough to
 * run per packet, strong enough that a host on the cluster's network cannot forge an offer
 * without the cluster's key. The agent's twin is the `siphasher` crate; the packet tables check
 * that both agree.
 *
 * Contract: siphash24() hashes `OFFER_MAC_WORDS` 8-byte words read little-endian (the message is
 * their bytes), with the 16-byte key read as two little-endian words, as the reference does.
 */
#pragma once
#include "common.h"
#include "conn.h"

__always __u64 rotl64(__u64 x, int b)
{
	return (x << b) | (x >> (64 - b));
}

#define SIPROUND(v0, v1, v2, v3)                                                           \
	do {                                                                               \
		v0 += v1; v1 = rotl64(v1, 13); v1 ^= v0; v0 = rotl64(v0, 32);              \
		v2 += v3; v3 = rotl64(v3, 16); v3 ^= v2;                                   \
		v0 += v3; v3 = rotl64(v3, 21); v3 ^= v0;                                   \
		v2 += v1; v1 = rotl64(v1, 17); v1 ^= v2; v2 = rotl64(v2, 32);              \
	} while (0)

/* A subprogram, not inlined: offers are sealed and opened on several paths. */
static __attribute__((noinline)) __u64 siphash24(const __u8 *key, const __u64 *m)
{
	__u64 k0, k1;
	__builtin_memcpy(&k0, key, 8);
	__builtin_memcpy(&k1, key + 8, 8);
	__u64 v0 = k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = k1 ^ 0x7465646279746573ULL;
#pragma unroll
	for (int i = 0; i < OFFER_MAC_WORDS; i++) {
		v3 ^= m[i];
		SIPROUND(v0, v1, v2, v3);
		SIPROUND(v0, v1, v2, v3);
		v0 ^= m[i];
	}
	__u64 b = (__u64)(OFFER_MAC_WORDS * 8) << 56;
	v3 ^= b;
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}
