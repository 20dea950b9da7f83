// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* upstreamtop: read plain-HTTP exchanges between this host and its backends
 * off the wire. Two tcx programs, egress (requests) and ingress (status
 * lines). They never drop or modify traffic: every path returns TCX_NEXT.
 *
 * Orientation: a connection is keyed local -> peer. Egress packets are keyed
 * (saddr,sport -> daddr,dport), ingress packets flipped. On loopback each
 * packet passes lo's egress and then lo's ingress; the flipped lookup of a
 * backend's own traffic never matches the client's entry.
 *
 * Exactness: each direction of a tracked connection keeps the highest
 * sequence number seen, so a retransmitted, duplicated or overlapping
 * segment is neither counted nor parsed again. A request can start only at
 * a message boundary on egress (the connection's first bytes, or the first
 * new bytes after the final status line); the status line must start where
 * we acknowledged the peer's bytes when the request went out, and is put
 * together from whatever segments hold it. Bodies are never parsed.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "upstreamtop.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define EEXIST 17

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10

/* Bytes peeked to recognise a request line: longest method token we accept
 * (18) + SP + first byte of the target. */
#define PEEK 20
/* Request bytes read first: the method and target of most routes fit, so
 * the rest of the 128 are read (and written into the entry) only when the
 * target goes on past them. */
#define REQ_FIRST 32
/* Bytes of an interim response's headers scanned per chunk for their end. */
#define SCAN 256
/* Status lines looked at in one segment: e.g. several 100s, a 103, then
 * the final. */
#define MAX_STATUS_LINES 8

/* Filters, set by the daemon before load. */
const volatile __u16 ignore_ports[MAX_IGNORE_PORTS] = {};
const volatile __u32 n_ignore_ports = 0;
/* The --ignore-port values hashed into 512 bits (port_bit): most ports
 * miss, and then wanted() need not run. */
const volatile __u64 ignore_port_bits[8] = {};
const volatile struct cidr only_cidrs[MAX_ONLY_CIDRS] = {};
const volatile __u32 n_only_cidrs = 0;
const volatile __u32 max_peers = 1024;
/* Next free index of `peers`. */
__u32 next_peer_idx = 0;
/* Set at runtime by the daemon when a vlan device is attached: tagged frames
 * seen on the parent are then skipped, because the vlan device counts them
 * untagged (otherwise each exchange would count twice). */
volatile __u32 skip_tagged = 0;
/* The kernel's ephemeral port range (net.ipv4.ip_local_port_range), kept
 * current by the daemon. A connection this host opened uses a local port in
 * it, so segments from other local ports (a server's replies: nginx's to
 * its clients, a local backend's) are never peeked at for a request line
 * unless their connection is tracked already. Until the daemon sets it,
 * every port qualifies. */
volatile __u32 eph_lo = 0;
volatile __u32 eph_hi = 0; /* 0: not set yet */
/* Which 1024-port blocks the local port of any tracked connection ever fell
 * in (bit = local_port >> 10; set before each insert, never cleared). A
 * segment whose local port is in no such block cannot belong to a tracked
 * connection: server-side traffic (a backend's replies, nginx's own client
 * side) leaves on this one word, sitting in the cache line of the globals
 * above, without touching the filter below (a likely cache miss). */
__u64 local_port_blocks = 0;
/* Which peer (backend) ports any tracked connection ever had, hashed to one
 * bit of 512 (set before each insert, never cleared). Backends listen on a
 * handful of ports, while the other side of a segment that belongs to no
 * tracked connection is usually an ephemeral port (a client's, or nginx's
 * own seen from its backend's side): most of them leave on this one
 * read-mostly cache line, before the counting filter and before the
 * --ignore-port/--only checks. */
__u64 peer_ports[8] __attribute__((aligned(64))) = {};

/* Counting filter in front of the `conns` hash: tracked[slot] counts the
 * tracked connections whose key hashes to slot. Most segments (nginx's
 * client side, the backends' own) belong to untracked connections; a zero
 * here lets them leave without a hash-map lookup. Raised before an insert,
 * lowered after a delete, so it never undercounts. The daemon lowers it
 * atomically (mmap'd .bss) when its sweeper deletes. Aligned so that its
 * updates never share a cache line with the globals above. */
__u32 tracked[FILTER_SLOTS] __attribute__((aligned(64))) = {};

/* Keep the ring-buffer record in the object's BTF so the skeleton's
 * `types` module has it (nothing reads these variables). */
struct exchange_event _event_type = {};
/* Likewise for the enums the daemon reads connection phases, stats and
 * peer indexes by. */
enum conn_phase _phase_type = 0;
enum stat_index _stat_type = 0;
enum no_peer _no_peer_type = 0;

/* Tracked connections. LRU: when full, the least recently active
 * connection (an idle keepalive one, as a rule) makes room; its next request
 * is picked up again from its segments (see on_untracked_payload). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* --max-conns */
	__type(key, struct conn_key);
	__type(value, struct conn_state);
} conns SEC(".maps");

/* Connection counts of peers whose connections carried no HTTP: bounded
 * apart from `peers`, the least recently active forgotten first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 4096); /* --max-tcp-peers */
	__type(key, struct peer_key);
	__type(value, struct tcp_counters);
} tcp_peers SEC(".maps");

/* Backend -> index into `peers`, assigned once when a connection to it is
 * first tracked: after that, counting is an array access, not a hash. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024); /* --max-peers */
	__type(key, struct peer_key);
	__type(value, __u32);
} peer_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1024); /* --max-peers */
	__type(key, __u32);
	__type(value, struct peer_counters);
} peers SEC(".maps");

/* Indexes of `peers` the daemon took back from peers idle for long (their
 * totals moved to `banked`), handed out again once next_peer_idx has
 * reached max_peers. */
struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 1024); /* --max-peers */
	__type(value, __u32);
} free_peer_ids SEC(".maps");

/* Totals of peers whose slot was taken back, and their exact codes: written
 * and read by the daemon only, pinned with the counters so that a restart
 * on the same maps continues them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* --max-peers x 4 */
	__type(key, struct peer_key);
	__type(value, struct peer_counters);
} banked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* --max-peers x 64 */
	__type(key, struct banked_code_key);
	__type(value, __u64);
} banked_codes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1024); /* --max-peers */
	__type(key, __u32);
	__type(value, struct code_slots);
} common_codes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* --max-peers x 16 */
	__type(key, struct code_key);
	__type(value, __u64);
} codes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* Per-CPU scratch space: keeps big records off the 512-byte stack. */
struct scratch {
	struct conn_state conn;
	struct exchange_event ev;
	__u8 buf[SCAN + 16];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_space SEC(".maps");

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

struct seg {
	__u32 payload_off;
	__u32 payload_len;
	__u32 seq; /* host order */
	__u32 ack;
	__u8 flags;
};

/* min(len, max) in [1, max], in a form the verifier keeps bounds for
 * (clang otherwise reuses a register whose bounds were lost). */
static __always_inline __u32 clamp_len(__u32 len, __u32 max)
{
	__u32 n = len < max ? len : max;
	asm volatile("" : "+r"(n));
	if (n > max)
		n = max;
	if (n < 1)
		n = 1;
	return n;
}

static __always_inline __u32 filter_slot(const struct conn_key *k)
{
	__u32 a, h;

	__builtin_memcpy(&a, k->peer_addr + 12, 4);
	h = a ^ ((__u32)k->local_port << 16 | k->peer_port);
	return (h * 0x9E3779B1u) >> (32 - 14); /* log2(FILTER_SLOTS) */
}

/* A port's bit in the 512-bit port sets (peer_ports, ignore_port_bits;
 * bpf.rs computes the same for the latter). */
static __always_inline __u32 port_bit(__u16 port)
{
	return ((__u32)port * 0x9E3779B1u) >> (32 - 9);
}

static __always_inline bool peer_port_seen(__u16 port)
{
	__u32 bit = port_bit(port);
	return peer_ports[(bit >> 6) & 7] & (1ull << (bit & 63));
}

static __always_inline bool maybe_ignored_port(__u16 port)
{
	__u32 bit = port_bit(port);
	return ignore_port_bits[(bit >> 6) & 7] & (1ull << (bit & 63));
}

static __always_inline bool maybe_tracked(__u32 slot)
{
	return tracked[slot & (FILTER_SLOTS - 1)] != 0;
}

/* Insert a fresh entry for `k`, counting it in the filter first. Returns 0,
 * or -EEXIST when the connection is tracked already. */
static __always_inline long conn_insert(const struct conn_key *k, struct conn_state *v)
{
	__u32 slot = filter_slot(k) & (FILTER_SLOTS - 1);
	long err;

	v->slot = slot;
	__u64 block = 1ull << (k->local_port >> 10);
	/* Written once per block: every segment reads this line. */
	if (!(local_port_blocks & block))
		__sync_fetch_and_or(&local_port_blocks, block);
	if (!peer_port_seen(k->peer_port)) {
		__u32 bit = port_bit(k->peer_port);
		__sync_fetch_and_or(&peer_ports[(bit >> 6) & 7], 1ull << (bit & 63));
	}
	__sync_fetch_and_add(&tracked[slot], 1);
	err = bpf_map_update_elem(&conns, k, v, BPF_NOEXIST);
	if (err)
		__sync_fetch_and_sub(&tracked[slot], 1);
	return err;
}

static __always_inline void conn_delete(const struct conn_key *k, __u16 slot)
{
	if (bpf_map_delete_elem(&conns, k) == 0)
		__sync_fetch_and_sub(&tracked[slot & (FILTER_SLOTS - 1)], 1);
}

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline void copy_v4_mapped(__u8 *dst, const __u8 *src4)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, src4, 4);
}

/* Parse IP + TCP headers into the connection key (oriented by `egress`).
 * Returns 0 for a TCP segment worth looking at, -1 otherwise. */
static __always_inline int parse(struct __sk_buff *skb, bool egress, struct conn_key *k,
				 struct seg *s)
{
	__u16 proto = skb->protocol;

	if (proto == bpf_htons(ETH_P_IP) || proto == bpf_htons(ETH_P_IPV6)) {
		/* The skb field first: the global is only read for tagged
		 * frames. */
		if (skb->vlan_present && skip_tagged)
			return -1;
	} else if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		/* In-band tag (egress on the parent without offload): the
		 * network header still points at IP, the version nibble
		 * below tells which. */
		if (skip_tagged)
			return -1;
	} else {
		return -1;
	}

	/* L3 offset from the kernel's own network header: the same code
	 * serves Ethernet, loopback (zero Ethernet header), L2-less tun/wg
	 * devices and VLAN, without a helper call. */
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	long l3 = (long)kskb->network_header + (long)kskb->head - (long)kskb->data;
	if (l3 < 0 || l3 > 64)
		return -1;

	/* IP and TCP headers without options are all we read (TCP options
	 * are skipped by doff). On egress the payload usually sits in page
	 * fragments, so only ask for the headers to be linear. */
	__u32 need = l3 + (proto == bpf_htons(ETH_P_IP) ? 40 : 60);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + need > end && skb->len > (__u32)(end - data)) {
		/* Headers not in the linear part (rare: some NIC drivers on
		 * ingress). Pulling changes layout, never bytes. */
		if (need > skb->len)
			need = skb->len;
		if (bpf_skb_pull_data(skb, need))
			return -1;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}

	__u8 *ip = data + l3;
	__u8 *tcp;
	__u32 ip_len, hl;
	if ((void *)(ip + 1) > end)
		return -1;
	__u8 version = ip[0] >> 4;
	if (version == 4) {
		if ((void *)(ip + 20) > end)
			return -1;
		if (ip[9] != IPPROTO_TCP)
			return -1;
		if ((ip[6] & 0x1f) || ip[7]) /* not the first fragment */
			return -1;
		hl = (ip[0] & 0xf) * 4;
		if (hl < 20)
			return -1;
		ip_len = ((__u32)ip[2] << 8) | ip[3];
		if (egress) {
			copy_v4_mapped(k->local_addr, ip + 12);
			copy_v4_mapped(k->peer_addr, ip + 16);
		} else {
			copy_v4_mapped(k->local_addr, ip + 16);
			copy_v4_mapped(k->peer_addr, ip + 12);
		}
	} else if (version == 6) {
		if ((void *)(ip + 40) > end)
			return -1;
		/* Extension headers are not followed: nginx's upstream
		 * traffic does not carry them. */
		if (ip[6] != IPPROTO_TCP)
			return -1;
		hl = 40;
		ip_len = ((__u32)ip[4] << 8) | ip[5];
		if (ip_len)
			ip_len += 40;
		if (egress) {
			__builtin_memcpy(k->local_addr, ip + 8, 16);
			__builtin_memcpy(k->peer_addr, ip + 24, 16);
		} else {
			__builtin_memcpy(k->local_addr, ip + 24, 16);
			__builtin_memcpy(k->peer_addr, ip + 8, 16);
		}
	} else {
		return -1;
	}
	/* A GSO/BIG TCP super-packet may carry 0 as its length: fall back
	 * to the skb's. (The IP length is preferred otherwise: on ingress the
	 * skb still includes Ethernet padding.) */
	if (!ip_len)
		ip_len = skb->len - l3;

	tcp = ip + hl;
	if ((void *)(tcp + 20) > end)
		return -1;
	__u32 doff = (tcp[12] >> 4) * 4;
	if (doff < 20 || ip_len < hl + doff)
		return -1;
	__u16 sport = ((__u16)tcp[0] << 8) | tcp[1];
	__u16 dport = ((__u16)tcp[2] << 8) | tcp[3];
	k->local_port = egress ? sport : dport;
	k->peer_port = egress ? dport : sport;
	s->flags = tcp[13];
	s->seq = ((__u32)tcp[4] << 24) | ((__u32)tcp[5] << 16) | ((__u32)tcp[6] << 8) | tcp[7];
	s->ack = ((__u32)tcp[8] << 24) | ((__u32)tcp[9] << 16) | ((__u32)tcp[10] << 8) | tcp[11];
	s->payload_len = ip_len - hl - doff;
	s->payload_off = l3 + hl + doff;
	return 0;
}

/* --ignore-port and --only, applied when a connection starts being
 * tracked (tracked connections passed them already). A subprogram, not
 * inlined: it is called from several places and its unrolled loops would
 * otherwise be copied into each, growing the code every packet runs
 * through. */
static __noinline bool wanted(const struct conn_key *k)
{
	__u32 i, j;

	for (i = 0; i < MAX_IGNORE_PORTS; i++) {
		if (i >= n_ignore_ports)
			break;
		if (ignore_ports[i] == k->peer_port || ignore_ports[i] == k->local_port)
			return false;
	}
	if (!n_only_cidrs)
		return true;
	for (i = 0; i < MAX_ONLY_CIDRS; i++) {
		if (i >= n_only_cidrs)
			break;
		__u32 bits = only_cidrs[i].prefix_len;
		bool match = true;
		for (j = 0; j < 16; j++) {
			if (bits == 0)
				break;
			__u8 mask = bits >= 8 ? 0xff : (__u8)(0xff << (8 - bits));
			if ((k->peer_addr[j] ^ only_cidrs[i].addr[j]) & mask) {
				match = false;
				break;
			}
			bits = bits >= 8 ? bits - 8 : 0;
		}
		if (match)
			return true;
	}
	return false;
}

/* wanted(), without its call when neither port can be ignored and there
 * is no --only. */
static __always_inline bool wanted_quick(const struct conn_key *k)
{
	if (!n_only_cidrs && !maybe_ignored_port(k->local_port) && !maybe_ignored_port(k->peer_port))
		return true;
	return wanted(k);
}

/* Was any connection with this local port's block ever tracked? */
static __always_inline bool port_block_seen(__u16 local_port)
{
	return local_port_blocks & (1ull << (local_port >> 10));
}

/* Could `k` be a tracked connection? Cheapest tests first: the peer ports
 * and the local port blocks (read-mostly lines), then the counting filter
 * (a random cache line). --ignore-port and --only need no test here: a
 * connection is only ever tracked when wanted. */
static __always_inline bool maybe_tracked_key(const struct conn_key *k)
{
	return peer_port_seen(k->peer_port) && port_block_seen(k->local_port) &&
	       maybe_tracked(filter_slot(k));
}

/* Is `k` the far side of a tracked connection whose both ends are on this
 * host (a local backend's reply to nginx on loopback)? Such a segment can
 * belong to no connection of its own (same four-tuple), so it needs no
 * peek for a request line. Only looked up when the local port is a known
 * backend port: elsewhere one bit test. The lookup also brings the entry
 * into this CPU's cache for the ingress program that sees the segment
 * next. */
static __always_inline bool far_side_of_tracked(const struct conn_key *k)
{
	struct conn_key f;

	if (!peer_port_seen(k->local_port))
		return false;
	__builtin_memcpy(f.local_addr, k->peer_addr, 16);
	__builtin_memcpy(f.peer_addr, k->local_addr, 16);
	f.local_port = k->peer_port;
	f.peer_port = k->local_port;
	return maybe_tracked_key(&f) && bpf_map_lookup_elem(&conns, &f);
}

/* Is this a local port the kernel hands out for connections this host
 * opens? (Every port until the daemon has said.) */
static __always_inline bool ephemeral(__u16 local_port)
{
	return !eph_hi || (local_port >= eph_lo && local_port <= eph_hi);
}

static __always_inline void peer_of(const struct conn_key *k, struct peer_key *pk)
{
	__builtin_memcpy(pk->addr, k->peer_addr, 16);
	pk->port = k->peer_port;
	pk->_pad = 0;
}

/* The index of a peer that carried HTTP already, else NO_PEER. */
static __always_inline __u32 peer_idx_find(const struct conn_key *k)
{
	struct peer_key pk;
	__u32 *idx;

	peer_of(k, &pk);
	idx = bpf_map_lookup_elem(&peer_ids, &pk);
	return idx ? *idx : NO_PEER;
}

/* The peer's index, assigned with its first request; NO_PEER when every
 * slot of `peers` is taken. A subprogram: once per new connection at most. */
static __noinline __u32 peer_idx_claim(const struct conn_key *k)
{
	struct peer_key pk;
	__u32 *idx, n;

	peer_of(k, &pk);
	idx = bpf_map_lookup_elem(&peer_ids, &pk);
	if (idx)
		return *idx;
	n = max_peers;
	if (next_peer_idx < max_peers)
		n = __sync_fetch_and_add(&next_peer_idx, 1);
	/* Never handed out yet, else one the daemon took back. */
	if (n >= max_peers && bpf_map_pop_elem(&free_peer_ids, &n))
		return NO_PEER;
	if (n >= max_peers)
		return NO_PEER;
	if (bpf_map_update_elem(&peer_ids, &pk, &n, BPF_NOEXIST)) {
		/* Another CPU assigned one first, or the map is full: n goes
		 * back for the next peer. */
		bpf_map_push_elem(&free_peer_ids, &n, 0);
		idx = bpf_map_lookup_elem(&peer_ids, &pk);
		return idx ? *idx : NO_PEER;
	}
	return n;
}

static __always_inline struct peer_counters *peer_at(__u32 idx)
{
	if (idx >= max_peers)
		return NULL;
	return bpf_map_lookup_elem(&peers, &idx);
}

static __always_inline struct scratch *scratch_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&scratch_space, &zero);
}

/* Connection counts of a connection that never carried HTTP. */
static __noinline void count_tcp(const struct conn_key *k, __u32 opened, __u32 closed, __u32 failed,
				 __u32 reset)
{
	struct tcp_counters zero = {}, *c;
	struct peer_key pk;

	peer_of(k, &pk);
	c = bpf_map_lookup_elem(&tcp_peers, &pk);
	if (!c) {
		bpf_map_update_elem(&tcp_peers, &pk, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&tcp_peers, &pk);
		if (!c)
			return;
	}
	c->opened += opened;
	c->closed += closed;
	c->failed += failed;
	c->reset += reset;
}

static __always_inline void count_code(__u32 peer_idx, __u16 code, struct peer_counters *pc)
{
	struct code_key ck = {};
	__u64 one = 1, *n;

	if (!pc)
		return;
	__u32 cls = (__u32)code / 100u, r = (__u32)code % 100u;
	if (cls >= 2 && cls <= 5 && r < 10) {
		/* peer_idx < max_peers: pc exists. */
		struct code_slots *cc = bpf_map_lookup_elem(&common_codes, &peer_idx);
		__u32 slot = (cls - 2) * 10 + r;
		/* clang knows slot < CODE_SLOTS and drops the test the
		 * verifier needs to see. */
		asm volatile("" : "+r"(slot));
		if (cc && slot < CODE_SLOTS) {
			cc->n[slot] += 1;
			return;
		}
	}
	ck.peer_idx = peer_idx;
	ck.code = code;
	n = bpf_map_lookup_elem(&codes, &ck);
	if (n) {
		*n += 1;
		return;
	}
	if (bpf_map_update_elem(&codes, &ck, &one, BPF_NOEXIST) == 0)
		return;
	/* Lost a race with another CPU creating it, or the map is full. */
	n = bpf_map_lookup_elem(&codes, &ck);
	if (n) {
		*n += 1;
		return;
	}
	pc->codes_other += 1;
	stat_inc(STAT_CODES_FULL);
}

/* Send one finished exchange to the daemon. The record is built in the
 * per-CPU scratch space and only its used part is copied into the ring:
 * the ring's memory was last touched a whole drain ago (cold), so every
 * cache line a record spans costs a miss, and req_len is most often under
 * REQ_FIRST (see route_end). The daemon zero-fills the rest. */
static __always_inline void emit(const struct conn_key *k, struct conn_state *cs, __u16 status,
				 __u64 latency)
{
	struct scratch *sc = scratch_get();
	if (!sc)
		return;
	struct exchange_event *ev = &sc->ev;
	__u32 len = cs->req_len;

	ev->req_ts = cs->req_ts;
	ev->latency_ns = latency;
	peer_of(k, &ev->peer);
	ev->status = status;
	ev->req_len = len;
	ev->_pad = 0;
	/* Only the entry's lines that hold request bytes are read. */
	__builtin_memcpy(ev->req, cs->req, REQ_FIRST);
	if (len > REQ_FIRST)
		__builtin_memcpy(ev->req + REQ_FIRST, cs->req + REQ_FIRST, REQ_BYTES - REQ_FIRST);
	if (len > REQ_BYTES)
		len = REQ_BYTES;
	if (bpf_ringbuf_output(&events, ev, offsetof(struct exchange_event, req) + len,
			       BPF_RB_NO_WAKEUP))
		stat_inc(STAT_EVENTS_DROPPED);
}

static __always_inline bool awaiting(const struct conn_state *cs)
{
	return cs->phase == PHASE_AWAIT_RESPONSE || cs->phase == PHASE_INTERIM;
}

/* The connection ends: our FIN or RST, the peer's RST. (The peer's FIN
 * only marks it: segments reordered behind that FIN may still hold the
 * response, and nginx closes its side once it has read everything.) */
static __noinline void conn_end(const struct conn_key *k, struct conn_state *cs, __u8 flags)
{
	struct peer_counters *pc = peer_at(cs->peer_idx);
	__u32 reset = (flags & TH_RST) ? 1 : 0;

	if (cs->phase == PHASE_SYN_SENT) {
		/* Refused: one failure for the attempt, however many SYNs it
		 * took. */
		if (reset) {
			if (pc)
				pc->conn_failed += 1;
			else
				count_tcp(k, 0, 0, 1, 0);
		}
	} else if (pc) {
		pc->conn_closed += 1;
		pc->conn_reset += reset;
		if (awaiting(cs))
			pc->no_response += 1;
	} else {
		count_tcp(k, (cs->flags & CF_OPEN_PENDING) ? 1 : 0, 1, 0, reset);
	}
	if (awaiting(cs))
		emit(k, cs, 0, 0);
	conn_delete(k, cs->slot);
}

/* Where b (n bytes) stands as the start of a message: a request line's
 * target index (> 1) when it starts with an uppercase method token, one
 * space and the first byte of a target; 0 when it cannot be a request;
 * REQ_MORE when every byte so far fits but there are too few to tell. */
#define REQ_MORE 0xffff

static __always_inline __u32 request_start(const __u8 *b, __u32 n)
{
	__u32 i;

	for (i = 0; i < PEEK - 1; i++) {
		if (i >= n)
			return REQ_MORE;
		__u8 c = b[i];
		if (c == ' ')
			break;
		if (!((c >= 'A' && c <= 'Z') || c == '-' || c == '_'))
			return 0;
	}
	if (i == 0 || i >= PEEK - 1)
		return 0;
	if (i + 1 >= n)
		return REQ_MORE;
	__u8 t = b[i + 1];
	if (t == '/' || t == '*' || t == '[' || (t >= 'a' && t <= 'z') || (t >= 'A' && t <= 'Z') ||
	    (t >= '0' && t <= '9'))
		return i + 1;
	return 0;
}

/* One past the first byte after the target's start `from` that ends the
 * route part of it (space, '?', '#', CR, LF) among the n bytes of b, or 0
 * when the n bytes hold no such byte. The route drops the query anyway
 * (it never leaves the kernel), and the event and the entry then carry a
 * few dozen bytes instead of 128. */
#define ROUTE_END (1ull << ' ' | 1ull << '?' | 1ull << '#' | 1ull << '\r' | 1ull << '\n')

static __always_inline __u32 route_end(const __u8 *b, __u32 from, __u32 n)
{
	__u32 i;

	/* from < PEEK (request_start): a known start keeps the loop's
	 * bounds plain for the verifier. */
	for (i = (from & 31) + 1; i < REQ_BYTES; i++) {
		if (i >= n)
			break;
		__u64 c = b[i];
		/* The bit test written out: clang's own version of it (from
		 * the five compares) read a register the verifier saw unset. */
		asm volatile("" : "+r"(c));
		if (c < 64 && ((1ull << c) & ROUTE_END))
			return i + 1;
	}
	return 0;
}

static __always_inline bool is_digit(__u8 c)
{
	return c >= '0' && c <= '9';
}

/* Does h start with "HTTP/" (5 bytes readable)? */
static __always_inline bool http_at(const __u8 *h)
{
	return h[0] == 'H' && h[1] == 'T' && h[2] == 'T' && h[3] == 'P' && h[4] == '/';
}

/* Status code of the status line at b ("HTTP/1.1 200" or "HTTP/2 200"), or
 * 0. Reads b[0..11], which the caller guarantees. */
static __always_inline __u16 status_code(const __u8 *b)
{
	if (!http_at(b) || !is_digit(b[5]))
		return 0;
	__u32 c = 6;
	if (b[c] == '.') {
		if (!is_digit(b[c + 1]))
			return 0;
		c += 2;
	}
	if (b[c] != ' ')
		return 0;
	c += 1;
	__u8 d0 = b[c], d1 = b[c + 1], d2 = b[c + 2];
	if (!is_digit(d0) || !is_digit(d1) || !is_digit(d2))
		return 0;
	__u16 code = (d0 - '0') * 100 + (d1 - '0') * 10 + (d2 - '0');
	if (code < 100 || code > 599)
		return 0;
	return code;
}

/* Copy bytes [from, from + n) of the segment (skb offsets) to the end of
 * cs->req, as many as fit. Off the usual path: only a message whose first
 * bytes or route came in several segments needs it. */
static __noinline void req_append(struct __sk_buff *skb, struct conn_state *cs, __u32 from, __u32 n)
{
	struct scratch *sc = scratch_get();
	__u32 have = cs->req_len, i;

	if (!sc || have >= REQ_BYTES || !n)
		return;
	__u32 take = REQ_BYTES - have;
	if (take > n)
		take = n;
	take = clamp_len(take, REQ_BYTES);
	if (bpf_skb_load_bytes(skb, from, sc->buf, take))
		return;
	for (i = 0; i < REQ_BYTES; i++) {
		if (i >= take)
			break;
		cs->req[(have + i) & (REQ_BYTES - 1)] = sc->buf[i];
	}
	cs->req_len = have + take;
}

/* The route of the request in flight went on past the segments seen:
 * take what this one adds. */
static __noinline void route_more(struct __sk_buff *skb, struct conn_state *cs, __u32 from, __u32 n)
{
	req_append(skb, cs, from, n);
	__u32 t = request_start(cs->req, cs->req_len);
	__u32 len = t && t != REQ_MORE ? route_end(cs->req, t, cs->req_len) : 0;
	if (len)
		cs->req_len = len;
	if (len || cs->req_len >= REQ_BYTES)
		cs->flags &= ~CF_ROUTE_OPEN;
}

/* A request starts on a tracked connection: its first req_len bytes are
 * in cs->req, the route part ends at `len` (route_end; 0: not in them). Claims
 * the peer's slot with the connection's first request. Returns the
 * peer's counters. */
static __always_inline struct peer_counters *request_starts(const struct conn_key *k,
							     struct conn_state *cs, __u32 len)
{
	if (len) {
		cs->req_len = len;
		cs->flags &= ~CF_ROUTE_OPEN;
	} else if (cs->req_len < REQ_BYTES) {
		cs->flags |= CF_ROUTE_OPEN;
	} else {
		cs->flags &= ~CF_ROUTE_OPEN;
	}
	if (cs->peer_idx == NO_PEER)
		cs->peer_idx = peer_idx_claim(k);
	struct peer_counters *pc = peer_at(cs->peer_idx);
	cs->phase = PHASE_AWAIT_RESPONSE;
	cs->win_mask = 0;
	cs->ahead_mask = 0;
	cs->flags &= ~(CF_GARBLED | CF_NEXT_KNOWN);
	if (pc) {
		pc->requests += 1;
		if (cs->flags & CF_OPEN_PENDING) {
			pc->conn_opened += 1;
			cs->flags &= ~CF_OPEN_PENDING;
		}
	} else {
		stat_inc(STAT_PEER_TABLE_FULL);
	}
	return pc;
}

/* New egress bytes [off, off + n) of the payload where a message may
 * start (or goes on while too short to tell). Returns the bytes the peer's
 * `sent` gains now. */
static __always_inline __u32 message_bytes(struct __sk_buff *skb, const struct conn_key *k,
					   struct conn_state *cs, const struct seg *s, __u32 off,
					   __u32 n)
{
	bool had_peer = cs->peer_idx != NO_PEER, first = cs->phase != PHASE_REQ_PARTIAL;
	__u32 from = s->payload_off + off;

	if (first) {
		/* Nothing of the message yet: straight into the entry (the
		 * usual path, one copy). The peer sends nothing before our
		 * request, so what we acknowledge is where its response will
		 * start. */
		__u32 m = clamp_len(n, REQ_FIRST);
		if (bpf_skb_load_bytes(skb, from, cs->req, m))
			return had_peer ? n : 0;
		cs->req_len = m;
		cs->held = 0;
		cs->resp_seq = s->ack;
		cs->req_ts = bpf_ktime_get_ns();
	} else {
		req_append(skb, cs, from, n);
	}
	cs->held += n;

	__u32 t = request_start(cs->req, cs->req_len);
	if (t == REQ_MORE) {
		cs->phase = PHASE_REQ_PARTIAL;
		return had_peer ? n : 0;
	}
	if (!t) {
		/* A connection's first message decides whether it is HTTP;
		 * later, bytes that are no request are the rest of one (a
		 * body still going out after an early response). */
		if (!had_peer) {
			cs->phase = PHASE_OPAQUE;
			stat_inc(STAT_OPAQUE_CONNS);
		} else {
			cs->phase = PHASE_IN_RESPONSE;
		}
		return had_peer ? n : 0;
	}
	__u32 len = route_end(cs->req, t, cs->req_len);
	if (!len && first && n > REQ_FIRST) {
		/* The target goes on past the first bytes: read up to all 128. */
		__u32 m = clamp_len(n, REQ_BYTES);
		if (!bpf_skb_load_bytes(skb, from, cs->req, m)) {
			cs->req_len = m;
			len = route_end(cs->req, t, m);
		}
	}
	cs->last_ts = cs->req_ts;
	request_starts(k, cs, len);
	/* Bytes held while undecided count once the peer is known. */
	return had_peer ? n : cs->held;
}

/* New bytes [from, from + n) (skb offsets) go out while the exchange
 * awaits its final status line. When that line can no longer be read (it
 * is not HTTP, or the bytes where it must be came already and neither the
 * window nor the held bytes could put it together: several segments out
 * of order) and these bytes start a request, nginx had the whole response:
 * that exchange's status is lost (a parse error), and the connection is
 * ready for this next request. Returns 1 then. A global function: verified
 * once, off the usual path. */
__noinline int status_lost_resync(struct __sk_buff *skb, struct conn_state *cs, __u32 from, __u32 n)
{
	__u8 peek[PEEK] = {};
	__u32 m, t;

	if (!cs)
		return 0;
	if (!(cs->flags & CF_GARBLED) &&
	    (__s32)(cs->rcv_cont - cs->resp_seq) < (cs->phase == PHASE_INTERIM ? 1 : WIN_BYTES))
		return 0;
	m = clamp_len(n, PEEK);
	if (bpf_skb_load_bytes(skb, from, peek, m))
		return 0;
	t = request_start(peek, m);
	if (!t || t == REQ_MORE)
		return 0;
	/* (A garbled one was counted when found.) */
	if (!(cs->flags & CF_GARBLED))
		stat_inc(STAT_PARSE_ERRORS);
	cs->phase = PHASE_IN_RESPONSE;
	return 1;
}

/* New payload of a tracked connection, sent by this host. */
static __always_inline void egress_payload(struct __sk_buff *skb, const struct conn_key *k,
					   struct conn_state *cs, const struct seg *s)
{
	__s32 d = (__s32)(s->seq - cs->snd_nxt);
	__u32 off = 0, n = s->payload_len, phase = cs->phase, sent = 0;

	if (d < 0) {
		/* Sent before: a retransmission, maybe with new bytes after
		 * what was sent. */
		stat_inc(STAT_RETRANSMITS);
		if ((__u32)-d >= n)
			return;
		off = -d;
		n -= off;
	}
	cs->snd_nxt = s->seq + s->payload_len;
	/* What this host acknowledges, its kernel received, and so this
	 * program saw: the gapless run reaches at least there. */
	if ((__s32)(s->ack - cs->rcv_cont) > 0) {
		cs->rcv_cont = s->ack;
		if ((__s32)(cs->ooo_hi - cs->rcv_cont) <= 0)
			cs->ooo_hi = cs->ooo_lo;
	}
	if ((phase == PHASE_AWAIT_RESPONSE || phase == PHASE_INTERIM) &&
	    status_lost_resync(skb, cs, s->payload_off + off, n))
		phase = PHASE_IN_RESPONSE;
	if (phase == PHASE_AWAIT_RESPONSE || phase == PHASE_INTERIM) {
		/* The rest of the request: headers or body, never a new
		 * message (nginx does not pipeline upstream). */
		if (cs->flags & CF_ROUTE_OPEN)
			route_more(skb, cs, s->payload_off + off, n);
		sent = n;
	} else if (phase == PHASE_IDLE || phase == PHASE_IN_RESPONSE || phase == PHASE_REQ_PARTIAL) {
		sent = message_bytes(skb, k, cs, s, off, n);
	}
	struct peer_counters *pc = peer_at(cs->peer_idx);
	if (pc)
		pc->sent_bytes += sent;
}

/* Fill the status-line window (WIN_BYTES from resp_seq) with what this
 * segment holds of it, whatever its order or overlap. */
static __noinline void window_fill(struct __sk_buff *skb, struct conn_state *cs, const struct seg *s)
{
	struct scratch *sc = scratch_get();
	__s32 rel = (__s32)(s->seq - cs->resp_seq);
	__s32 lo = rel > 0 ? rel : 0, hi = rel + (__s32)s->payload_len;
	__u32 i;

	if (!sc || lo >= WIN_BYTES || hi <= 0)
		return;
	if (hi > WIN_BYTES)
		hi = WIN_BYTES;
	__u32 n = clamp_len(hi - lo, WIN_BYTES), at = lo & (WIN_BYTES - 1);
	if (bpf_skb_load_bytes(skb, s->payload_off + (lo - rel), sc->buf, n))
		return;
	for (i = 0; i < WIN_BYTES; i++) {
		if (i >= n)
			break;
		cs->win[(at + i) & (WIN_BYTES - 1)] = sc->buf[i];
		cs->win_mask |= 1 << ((at + i) & (WIN_BYTES - 1));
	}
}

struct ahead_ctx {
	struct conn_state *cs;
	__s32 rel; /* ahead_seq - resp_seq */
};

/* Byte i of cs->ahead into the window, where it falls in it: a bpf_loop
 * callback (a plain loop's branches multiply the verifier's states). */
static long ahead_byte(__u32 i, struct ahead_ctx *c)
{
	struct conn_state *cs = c->cs;
	__s32 at = c->rel + (__s32)i;

	if (i >= WIN_BYTES || at < 0 || at >= WIN_BYTES || !(cs->ahead_mask & (1u << i)))
		return 0;
	cs->win[at & (WIN_BYTES - 1)] = cs->ahead[i & (WIN_BYTES - 1)];
	cs->win_mask |= 1 << (at & (WIN_BYTES - 1));
	return 0;
}

/* Fill the window with what the segment that came ahead held of it. */
static __always_inline void ahead_fill(struct conn_state *cs)
{
	struct ahead_ctx c = { .cs = cs, .rel = (__s32)(cs->ahead_seq - cs->resp_seq) };

	if (!cs->ahead_mask || c.rel >= WIN_BYTES || c.rel <= -WIN_BYTES)
		return;
	bpf_loop(WIN_BYTES, ahead_byte, &c, 0);
}

/* The window becomes the status line known from a segment that came
 * ahead (next_seq, which is resp_seq now): what that segment held of it. */
static __always_inline void take_next(struct conn_state *cs)
{
	cs->flags &= ~CF_NEXT_KNOWN;
	__builtin_memcpy(cs->win, cs->next_win, WIN_BYTES);
	cs->win_mask = cs->next_mask;
}

struct held_ctx {
	const __u8 *buf; /* cs->win or cs->ahead */
	__u32 mask;	 /* which of its bytes are held */
	__u32 from;	 /* index of the scan point in it */
	__u32 crlf;
	__u32 stop; /* index scanned up to, or past the headers' end */
	bool end;
};

static long held_byte(__u32 i, struct held_ctx *c)
{
	__u32 at = c->from + i, m = c->crlf;

	if (at >= WIN_BYTES || !(c->mask & (1u << at)))
		return 1;
	__u8 b = c->buf[at & (WIN_BYTES - 1)];
	c->crlf = b == ((m & 1) ? '\n' : '\r') ? m + 1 : (b == '\r' ? 1 : 0);
	c->stop = at + 1;
	if (c->crlf == 4) {
		c->end = true;
		return 1;
	}
	return 0;
}

/* The in-order scan for the end of interim headers goes on through bytes
 * held from segments it will not see again: the window's bytes after an
 * interim status line put together in it (`ahead` false), or the first
 * bytes of the segment that came ahead (`ahead` true). Returns true when
 * the headers end there: resp_seq is then the next status line's. */
__noinline int scan_held(struct conn_state *cs, int ahead)
{
	/* A global function: verified once, not at each call site. */
	if (!cs)
		return 0;
	struct held_ctx c = {
		.buf = ahead ? cs->ahead : cs->win,
		.mask = ahead ? cs->ahead_mask : cs->win_mask,
		.crlf = cs->crlf,
	};
	/* The window starts 12 bytes before the scan point. */
	__u32 base = ahead ? cs->ahead_seq : cs->resp_seq - 12;

	c.from = cs->resp_seq - base;
	if (c.from >= WIN_BYTES || !(c.mask & (1u << c.from)))
		return 0;
	c.stop = c.from;
	bpf_loop(WIN_BYTES, held_byte, &c, 0);
	cs->resp_seq = base + c.stop;
	cs->crlf = c.crlf;
	if (!c.end)
		return 0;
	cs->phase = PHASE_AWAIT_RESPONSE;
	cs->win_mask = 0;
	cs->crlf = 0;
	if ((cs->flags & CF_NEXT_KNOWN) && cs->next_seq == cs->resp_seq)
		take_next(cs);
	return 1;
}

/* The status line in cs->win (its first 12 bytes in): count it. Returns
 * true when it was an interim 1xx (its headers' end is looked for next). */
static __always_inline bool status_parsed(const struct conn_key *k, struct conn_state *cs,
					  struct peer_counters *pc)
{
	__u16 code = status_code(cs->win);
	if (!code) {
		cs->flags |= CF_GARBLED;
		stat_inc(STAT_PARSE_ERRORS);
		return false;
	}
	__u64 now = bpf_ktime_get_ns();
	__u32 cls = (__u32)code / 100u - 1u;
	if (pc && cls < 5)
		pc->responses[cls] += 1;
	count_code(cs->peer_idx, code, pc);
	cs->last_ts = now;
	if (code >= 200) {
		cs->phase = PHASE_IN_RESPONSE;
		cs->flags &= ~CF_NEXT_KNOWN;
		emit(k, cs, code, now - cs->req_ts);
		return false;
	}
	/* Interim: the exchange goes on after this response's headers,
	 * looked for from the window's end (its 12 bytes hold no "\r\n\r\n";
	 * a short "HTTP/2 103\r\n" ends in half of one). */
	cs->phase = PHASE_INTERIM;
	cs->resp_seq += 12;
	cs->crlf = cs->win[10] == '\r' && cs->win[11] == '\n' ? 2 : 0;
	scan_held(cs, 0);
	return true;
}

static __noinline void look_ahead(struct __sk_buff *skb, struct conn_state *cs, const struct seg *s);

/* The status line at resp_seq from whatever part of it this segment
 * holds. Returns true when an interim 1xx was counted. */
static __always_inline bool status_window(struct __sk_buff *skb, const struct conn_key *k,
					  struct conn_state *cs, const struct seg *s,
					  struct peer_counters *pc)
{
	if (cs->flags & CF_GARBLED)
		return false;
	__s32 rel = (__s32)(s->seq - cs->resp_seq);
	if (rel >= WIN_BYTES) {
		look_ahead(skb, cs, s);
		return false;
	}
	/* Past the window's start and beyond it: maybe ahead of a hole
	 * that ends an interim response. */
	if (rel > 0 && rel + (__s32)s->payload_len > WIN_BYTES)
		look_ahead(skb, cs, s);
	window_fill(skb, cs, s);
	ahead_fill(cs);
	/* "HTTP/" is all there and wrong: not HTTP, stop looking. */
	if ((cs->win_mask & 0x1f) == 0x1f && !http_at(cs->win)) {
		cs->flags |= CF_GARBLED;
		stat_inc(STAT_PARSE_ERRORS);
		return false;
	}
	if ((cs->win_mask & 0xfff) != 0xfff)
		return false;
	return status_parsed(k, cs, pc);
}

struct scan_ctx {
	struct __sk_buff *skb;
	__u32 off;   /* skb offset of the chunk being scanned */
	__u32 n;     /* its bytes in sc->buf */
	__u32 end;   /* skb offset past the payload */
	__u32 crlf;  /* "\r\n\r\n" bytes matched (then "HTTP/" when status) */
	__u32 found; /* skb offset just past the match, or 0 */
	__u32 status; /* look for "\r\n\r\nHTTP/": found is at its "H" */
};

/* One byte of the chunk in sc->buf (c->n bytes): a bpf_loop callback, so
 * the verifier walks it once rather than once per byte and match state. */
static long scan_byte(__u32 j, struct scan_ctx *c)
{
	struct scratch *sc = scratch_get();

	if (!sc || j >= c->n)
		return 1;
	__u8 b = sc->buf[j & (SCAN - 1)];
	__u32 m = c->crlf;
	__u8 want = m < 4 ? ((m & 1) ? '\n' : '\r') : m == 4 ? 'H' : m < 7 ? 'T' : m == 7 ? 'P' : '/';
	if (b == want) {
		c->crlf = m + 1;
		if (c->crlf == (c->status ? 9 : 4)) {
			c->found = c->off + j + 1 - (c->status ? 5 : 0);
			return 1;
		}
	} else {
		c->crlf = b == '\r' ? 1 : 0;
	}
	return 0;
}

/* One chunk of up to SCAN bytes into the scratch buffer, then its bytes. */
static long scan_chunk(__u32 i, struct scan_ctx *c)
{
	struct scratch *sc = scratch_get();

	if (!sc || c->off >= c->end)
		return 1;
	c->n = clamp_len(c->end - c->off, SCAN);
	if (bpf_skb_load_bytes(c->skb, c->off, sc->buf, c->n))
		return 1;
	bpf_loop(SCAN, scan_byte, c, 0);
	if (c->found)
		return 1;
	c->off += c->n;
	return 0;
}

/* An interim response's headers go on: scan this segment from resp_seq,
 * in order, for the "\r\n\r\n" that ends them (carried across segments in
 * cs->crlf). Returns true when found: resp_seq is then the next status
 * line's. */
#define SCAN_CHUNKS 256

/* A segment past the bytes the exchange waits for (a hole before it):
 * remember the earliest status line it shows that follows the end of an
 * interim response's headers ("\r\n\r\nHTTP/", or "HTTP/" at its start), with
 * its code, for when the hole turns out to hold that end. */
static __noinline void look_ahead(struct __sk_buff *skb, struct conn_state *cs, const struct seg *s)
{
	struct scratch *sc;
	__u32 at;

	/* Keep the first bytes of the earliest segment wholly ahead (a stale
	 * one, wholly before the window, gives way). */
	__s32 rel = (__s32)(s->seq - cs->resp_seq);
	if (rel >= (cs->phase == PHASE_INTERIM ? 1 : WIN_BYTES) &&
	    (!cs->ahead_mask || (__s32)(s->seq - cs->ahead_seq) < 0 ||
	     (__s32)(cs->ahead_seq + WIN_BYTES - cs->resp_seq) <= 0)) {
		__u32 m = clamp_len(s->payload_len, WIN_BYTES);
		cs->ahead_mask = 0;
		if (!bpf_skb_load_bytes(skb, s->payload_off, cs->ahead, m)) {
			cs->ahead_seq = s->seq;
			cs->ahead_mask = (1u << m) - 1;
		}
	}
	if ((cs->flags & CF_NEXT_KNOWN) && (__s32)(cs->next_seq - s->seq) <= 0)
		return; /* an earlier one is known */
	/* The "\r\n\r\n" may have begun in the segment before: "HTTP/",
	 * "\nHTTP/" or "\r\nHTTP/" at the start count, and the scan starts
	 * as if a "\r" came before. */
	__u8 h[8] = {};
	bool chained = s->seq == cs->la_end;
	bool got = !chained && s->payload_len >= 7 && !bpf_skb_load_bytes(skb, s->payload_off, h, 7);
	if (got && http_at(h)) {
		at = s->payload_off;
	} else if (got && h[0] == '\n' && http_at(h + 1)) {
		at = s->payload_off + 1;
	} else if (got && h[0] == '\r' && h[1] == '\n' && http_at(h + 2)) {
		at = s->payload_off + 2;
	} else {
		struct scan_ctx c = {
			.skb = skb,
			.off = s->payload_off,
			.end = s->payload_off + s->payload_len,
			/* Carried from the segment before when it was scanned
			 * here too. */
			.crlf = chained ? cs->la_crlf : 1,
			.status = 1,
		};
		bpf_loop(SCAN_CHUNKS, scan_chunk, &c, 0);
		/* (A repeat of an older segment does not break the chain.) */
		if (chained || (__s32)(s->seq + s->payload_len - cs->la_end) > 0) {
			cs->la_end = s->seq + s->payload_len;
			cs->la_crlf = c.found ? 0 : c.crlf;
		}
		/* Headers followed by the start of "HTTP/" only: the next
		 * status line starts right after the "\r\n\r\n". (Not when
		 * they end with the segment: that may be the final response's
		 * own end, and nothing would come there.) */
		if (!c.found && c.crlf < 5)
			return;
		at = c.found ? c.found : c.end - (c.crlf - 4);
	}
	__u32 next = s->seq + (at - s->payload_off);
	/* Past the status line awaited (or the interim being scanned). */
	if ((__s32)(next - cs->resp_seq) < (cs->phase == PHASE_INTERIM ? 1 : 12))
		return;
	if (!(cs->flags & CF_NEXT_KNOWN) || next != cs->next_seq) {
		/* (The same one again: add what this segment holds of it.) */
		if ((cs->flags & CF_NEXT_KNOWN) && (__s32)(next - cs->next_seq) > 0)
			return;
		cs->next_seq = next;
		cs->next_mask = 0;
		cs->flags |= CF_NEXT_KNOWN;
	}
	/* Keep what this segment holds of that status line; its first bytes
	 * may be in the segment before: "HTTP" matched there. */
	__u32 pre = at < s->payload_off ? s->payload_off - at : 0, i;
	if (pre > 0)
		cs->next_win[0] = 'H';
	if (pre > 1)
		cs->next_win[1] = 'T';
	if (pre > 2)
		cs->next_win[2] = 'T';
	if (pre > 3)
		cs->next_win[3] = 'P';
	pre &= 7;
	cs->next_mask |= (1u << pre) - 1;
	__u32 from = at + pre, n = s->payload_off + s->payload_len - from;
	sc = scratch_get();
	if (!sc || !n || pre > 4)
		return;
	n = clamp_len(n, WIN_BYTES - pre);
	if (bpf_skb_load_bytes(skb, from, sc->buf, n))
		return;
	for (i = 0; i < WIN_BYTES; i++) {
		if (i >= n)
			break;
		cs->next_win[(pre + i) & (WIN_BYTES - 1)] = sc->buf[i];
		cs->next_mask |= 1 << ((pre + i) & (WIN_BYTES - 1));
	}
}

/* An interim response's headers go on: scan this segment from resp_seq,
 * in order, for the "\r\n\r\n" that ends them (carried across segments in
 * cs->crlf). Returns true when found: resp_seq is then the next status
 * line's. */
static __noinline bool interim_scan(struct __sk_buff *skb, struct conn_state *cs, const struct seg *s)
{
	__s32 rel = (__s32)(cs->resp_seq - s->seq);

	if (rel < 0) {
		look_ahead(skb, cs, s);
		return false;
	}
	if ((__u32)rel >= s->payload_len)
		return false; /* seen already */
	struct scan_ctx c = {
		.skb = skb,
		.off = s->payload_off + rel,
		.end = s->payload_off + s->payload_len,
		.crlf = cs->crlf,
	};
	bpf_loop(SCAN_CHUNKS, scan_chunk, &c, 0);
	if (c.found) {
		cs->resp_seq = s->seq + (c.found - s->payload_off);
		cs->phase = PHASE_AWAIT_RESPONSE;
		cs->win_mask = 0;
		cs->crlf = 0;
		/* The next status line came ahead of this segment: it will
		 * not come again, take what that segment held of it. */
		if ((cs->flags & CF_NEXT_KNOWN) && cs->next_seq == cs->resp_seq)
			take_next(cs);
		return true;
	}
	cs->resp_seq = s->seq + (c.off - s->payload_off);
	cs->crlf = c.crlf;
	return false;
}

/* The in-order scan stopped where a segment came ahead of it, and a later
 * status line is known from the segments that came ahead: the end of the
 * interim headers was in them (their bytes will not come again in order),
 * so the exchange goes on there. Interim responses inside the hole go uncounted;
 * the final status counts. Returns true when a 1xx was counted. */
static __always_inline bool next_known(const struct conn_key *k, struct conn_state *cs,
				       struct peer_counters *pc)
{
	if (!(cs->flags & CF_NEXT_KNOWN) || (__s32)(cs->next_seq - cs->resp_seq) < 0)
		return false;
	/* Only when the bytes at the scan point came already (and so will
	 * not come in order): before a gap not yet filled, wait for it. */
	if ((__s32)(cs->rcv_cont - cs->resp_seq) <= 0)
		return false;
	cs->resp_seq = cs->next_seq;
	take_next(cs);
	cs->phase = PHASE_AWAIT_RESPONSE;
	ahead_fill(cs);
	if ((cs->win_mask & 0xfff) != 0xfff)
		return false; /* the rest comes with later segments */
	return status_parsed(k, cs, pc);
}

/* Status lines after the first look: split, reordered, or after a 1xx
 * (several may share a segment: 100, 103, then the final). */
static __noinline void responses(struct __sk_buff *skb, const struct conn_key *k,
				 struct conn_state *cs, const struct seg *s, struct peer_counters *pc)
{
	__u32 i;

	for (i = 0; i < MAX_STATUS_LINES; i++) {
		if (cs->phase == PHASE_AWAIT_RESPONSE && !status_window(skb, k, cs, s, pc))
			break;
		/* A 1xx whose headers ended in its window: the next one. */
		if (cs->phase == PHASE_AWAIT_RESPONSE)
			continue;
		if (cs->phase != PHASE_INTERIM)
			break;
		if (!interim_scan(skb, cs, s) && !scan_held(cs, 1) && !next_known(k, cs, pc))
			break;
	}
}

/* Ingress bytes [a, b) were seen: extend the gapless run, or keep them as
 * the nearest run beyond a gap (one run: a farther disjoint one is not
 * kept). */
static __always_inline void seen_range(struct conn_state *cs, __u32 a, __u32 b)
{
	if ((__s32)(a - cs->rcv_cont) <= 0) {
		if ((__s32)(b - cs->rcv_cont) > 0)
			cs->rcv_cont = b;
		if (cs->ooo_hi != cs->ooo_lo && (__s32)(cs->ooo_lo - cs->rcv_cont) <= 0) {
			if ((__s32)(cs->ooo_hi - cs->rcv_cont) > 0)
				cs->rcv_cont = cs->ooo_hi;
			cs->ooo_hi = cs->ooo_lo;
		}
		return;
	}
	if (cs->ooo_hi == cs->ooo_lo || (__s32)(b - cs->ooo_lo) < 0) {
		cs->ooo_lo = a; /* the first, or a nearer one */
		cs->ooo_hi = b;
	} else if ((__s32)(a - cs->ooo_hi) <= 0) {
		if ((__s32)(a - cs->ooo_lo) < 0)
			cs->ooo_lo = a;
		if ((__s32)(b - cs->ooo_hi) > 0)
			cs->ooo_hi = b;
	}
}

/* New or old payload of a tracked connection, sent by the peer. Bytes
 * count once (beyond rcv_nxt, the highest seen; a hole counts with the
 * segment after it, as its retransmission will not count again); status
 * lines are read where they must start, from whatever segments hold them. */
static __always_inline void ingress_payload(struct __sk_buff *skb, const struct conn_key *k,
					    struct conn_state *cs, const struct seg *s,
					    struct peer_counters *pc)
{
	__u32 end = s->seq + s->payload_len;
	__s32 d = (__s32)(end - cs->rcv_nxt);

	seen_range(cs, s->seq, end);

	if (d > 0) {
		if (pc)
			pc->received_bytes += d;
		cs->rcv_nxt = end;
	}
	if (cs->phase != PHASE_AWAIT_RESPONSE && cs->phase != PHASE_INTERIM)
		return;
	if (cs->phase == PHASE_AWAIT_RESPONSE && s->seq == cs->resp_seq && !cs->win_mask &&
	    s->payload_len >= WIN_BYTES && !(cs->flags & CF_GARBLED)) {
		/* The usual case: the whole status line at the segment's
		 * start, read straight into the entry. */
		if (bpf_skb_load_bytes(skb, s->payload_off, cs->win, WIN_BYTES))
			return;
		cs->win_mask = 0xffff;
		if (!status_parsed(k, cs, pc))
			return;
	}
	responses(skb, k, cs, s, pc);
}

/* Payload on a connection not tracked yet, from an ephemeral port and
 * wanted by the filters: a request on a connection opened before the probe
 * started, or one the full table let go? A short peek on the stack decides;
 * most such segments (TLS, other protocols) leave after it. A subprogram:
 * rare, kept out of the hot path's code. Returns the connection's entry
 * when another CPU created it meanwhile, else NULL. */
static __noinline struct conn_state *on_untracked_payload(struct __sk_buff *skb,
							      const struct conn_key *k,
							      const struct seg *s)
{
	__u8 peek[PEEK] = {};
	__u32 m = clamp_len(s->payload_len, PEEK);

	if (bpf_skb_load_bytes(skb, s->payload_off, peek, m))
		return NULL;
	__u32 t = request_start(peek, m);
	if (!t || t == REQ_MORE)
		return NULL;
	struct scratch *sc = scratch_get();
	if (!sc)
		return NULL;
	struct conn_state *c = &sc->conn;
	__builtin_memset(c, 0, sizeof(*c));
	m = clamp_len(s->payload_len, REQ_BYTES);
	if (bpf_skb_load_bytes(skb, s->payload_off, c->req, m))
		return NULL;
	c->req_len = m;
	c->peer_idx = NO_PEER;
	c->snd_nxt = s->seq + s->payload_len;
	/* What we acknowledge is where the response starts. */
	c->rcv_nxt = s->ack;
	c->rcv_cont = s->ack;
	c->resp_seq = s->ack;
	c->req_ts = bpf_ktime_get_ns();
	c->last_ts = c->req_ts;
	struct peer_counters *pc = request_starts(k, c, route_end(c->req, t, m));
	long err = conn_insert(k, c);
	if (err == -EEXIST)
		return bpf_map_lookup_elem(&conns, k);
	if (err)
		stat_inc(STAT_CONN_TABLE_FULL);
	else
		/* Marks the entry used: the LRU then evicts idle connections
		 * before this one, whose response is still to come. */
		bpf_map_lookup_elem(&conns, k);
	if (pc)
		pc->sent_bytes += s->payload_len;
	return NULL;
}

/* The attempt in `cs` ended without a handshake (its port is reused by a
 * new one): one failure. */
static __always_inline void attempt_failed(const struct conn_key *k, struct conn_state *cs)
{
	struct peer_counters *pc = peer_at(cs->peer_idx);

	if (pc)
		pc->conn_failed += 1;
	else
		count_tcp(k, 0, 0, 1, 0);
}

/* Connection attempt from this host: track it from the handshake (a
 * subprogram, out of the hot path's code). The peer's slot is known here
 * only if it carried HTTP before; otherwise the first request claims one. */
static __noinline void on_syn(const struct conn_key *k, const struct seg *s)
{
	if (!wanted_quick(k))
		return;
	__u64 now = bpf_ktime_get_ns();
	struct conn_state *old = NULL;
	if (maybe_tracked_key(k))
		old = bpf_map_lookup_elem(&conns, k);
	if (old) {
		if (old->phase == PHASE_SYN_SENT && old->syn_isn == s->seq) {
			/* The kernel retransmits the SYN: the same attempt.
			 * req_ts keeps the SYN before (the sweeper's
			 * deadline follows the kernel's backoff). */
			old->syns += 1;
			old->req_ts = old->last_ts;
			old->last_ts = now;
			return;
		}
		/* The port goes to a new connection: the old one ended
		 * unseen. */
		if (old->phase == PHASE_SYN_SENT)
			attempt_failed(k, old);
		else
			conn_end(k, old, TH_FIN);
	}
	struct scratch *sc = scratch_get();
	if (!sc)
		return;
	struct conn_state *c = &sc->conn;
	__builtin_memset(c, 0, sizeof(*c));
	c->phase = PHASE_SYN_SENT;
	c->last_ts = now;
	c->syn_isn = s->seq;
	c->syns = 1;
	c->snd_nxt = s->seq + 1;
	c->peer_idx = peer_idx_find(k);
	long err = conn_insert(k, c);
	if (err && err != -EEXIST)
		stat_inc(STAT_CONN_TABLE_FULL);
}

SEC("tcx/egress")
int upstreamtop_egress(struct __sk_buff *skb)
{
	struct conn_key k;
	struct seg s;

	if (parse(skb, true, &k, &s))
		return TCX_NEXT;
	/* Pure ACKs leave here, without a map lookup. */
	if (!s.payload_len && !(s.flags & (TH_SYN | TH_FIN | TH_RST)))
		return TCX_NEXT;
	if ((s.flags & (TH_SYN | TH_ACK)) == TH_SYN) {
		on_syn(&k, &s);
		return TCX_NEXT;
	}

	struct conn_state *cs = NULL;
	if (maybe_tracked_key(&k))
		cs = bpf_map_lookup_elem(&conns, &k);
	if (s.payload_len) {
		if (cs) {
			if (cs->phase != PHASE_OPAQUE && cs->phase != PHASE_SYN_SENT)
				egress_payload(skb, &k, cs, &s);
		} else if (ephemeral(k.local_port) && wanted_quick(&k) && !far_side_of_tracked(&k)) {
			cs = on_untracked_payload(skb, &k, &s);
			if (cs)
				egress_payload(skb, &k, cs, &s);
		}
		/* Otherwise untracked, and not a connection this host opened
		 * (or filtered out): no need to look at the bytes. */
	}
	if (cs && (s.flags & (TH_FIN | TH_RST)))
		conn_end(&k, cs, s.flags);
	return TCX_NEXT;
}

SEC("tcx/ingress")
int upstreamtop_ingress(struct __sk_buff *skb)
{
	struct conn_key k;
	struct seg s;

	if (parse(skb, false, &k, &s))
		return TCX_NEXT;
	if (!s.payload_len && !(s.flags & (TH_SYN | TH_FIN | TH_RST)))
		return TCX_NEXT;

	if (!maybe_tracked_key(&k))
		return TCX_NEXT;
	struct conn_state *cs = bpf_map_lookup_elem(&conns, &k);
	if (!cs)
		return TCX_NEXT;
	struct peer_counters *pc = peer_at(cs->peer_idx);

	if (cs->phase == PHASE_SYN_SENT) {
		if ((s.flags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK) && s.ack == cs->syn_isn + 1) {
			cs->phase = PHASE_IDLE;
			cs->rcv_nxt = s.seq + 1;
			cs->rcv_cont = s.seq + 1;
			cs->snd_nxt = cs->syn_isn + 1;
			cs->last_ts = bpf_ktime_get_ns();
			if (pc)
				pc->conn_opened += 1;
			else
				cs->flags |= CF_OPEN_PENDING;
		} else if (s.flags & TH_RST) {
			conn_end(&k, cs, s.flags);
		}
		return TCX_NEXT;
	}
	if (s.payload_len && cs->phase != PHASE_OPAQUE)
		ingress_payload(skb, &k, cs, &s, pc);
	if (s.flags & TH_RST)
		conn_end(&k, cs, s.flags);
	else if (s.flags & TH_FIN)
		cs->flags |= CF_PEER_FIN;
	return TCX_NEXT;
}
