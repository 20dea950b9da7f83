// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* upstreamtop: read plain-HTTP exchanges between this host and its backends
 * off the wire. Two tcx programs, egress (requests) and ingress (status
 * lines). They never drop or modify traffic: every path returns TCX_NEXT.
 *
 * Orientation: a connection is keyed local -> peer. Egress packets are keyed
 * (saddr,sport -> daddr,dport), ingress packets flipped. On loopback each
 * packet passes lo's egress and then lo's ingress; the flipped lookup of a
 * backend's own traffic never matches the client's entry.
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
/* Response bytes read first: a whole status line ("HTTP/1.1 200"); the
 * rest of the segment is scanned only after an interim 1xx. */
#define STATUS_FIRST 16
/* Bytes of a response segment scanned for status lines (a 1xx interim
 * response may be followed by the final one in the same segment). */
#define SCAN 256
/* Status lines looked at in one segment: e.g. 100, 103, then the final. */
#define MAX_STATUS_LINES 3

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

/* Keeps the ring-buffer record in the object's BTF so the skeleton's
 * `types` module has it (nothing reads this variable). */
struct exchange_event _event_type = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* --max-conns */
	__type(key, struct conn_key);
	__type(value, struct conn_state);
} conns SEC(".maps");

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

/* The peer's index, assigned on first use; NO_PEER when `peers` is full. */
static __always_inline __u32 peer_idx_get(const struct conn_key *k)
{
	struct peer_key pk;
	__u32 *idx, n;

	peer_of(k, &pk);
	idx = bpf_map_lookup_elem(&peer_ids, &pk);
	if (idx)
		return *idx;
	if (next_peer_idx >= max_peers)
		return NO_PEER;
	n = __sync_fetch_and_add(&next_peer_idx, 1);
	if (n >= max_peers)
		return NO_PEER;
	if (bpf_map_update_elem(&peer_ids, &pk, &n, BPF_NOEXIST)) {
		/* Another CPU assigned one first (index n stays unused), or
		 * the map is full. */
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
 * REQ_FIRST (see route_len). The daemon zero-fills the rest. */
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

/* FIN or RST on a tracked connection. */
static __always_inline void conn_end(const struct conn_key *k, struct conn_state *cs, __u8 flags)
{
	struct peer_counters *pc = peer_at(cs->peer_idx);

	if (pc) {
		if (cs->phase == PHASE_SYN_SENT) {
			if (flags & TH_RST)
				pc->conn_failed += 1;
		} else {
			pc->conn_closed += 1;
			if (flags & TH_RST)
				pc->conn_reset += 1;
			if (cs->phase == PHASE_AWAIT_RESPONSE)
				pc->no_response += 1;
		}
	}
	if (cs->phase == PHASE_AWAIT_RESPONSE)
		emit(k, cs, 0, 0);
	conn_delete(k, cs->slot);
}

/* Does `b` (n bytes) start like a request line: an uppercase method token,
 * one space, and the first byte of a target? Returns the target's index
 * (> 1), or 0 when not. */
static __always_inline __u32 request_target(const __u8 *b, __u32 n)
{
	__u32 i;

	for (i = 0; i < PEEK - 1; i++) {
		if (i >= n)
			return 0;
		__u8 c = b[i];
		if (c == ' ')
			break;
		if (!((c >= 'A' && c <= 'Z') || c == '-' || c == '_'))
			return 0;
	}
	if (i == 0 || i >= PEEK - 1 || i + 1 >= n)
		return 0;
	__u8 t = b[i + 1];
	if (t == '/' || t == '*' || t == '[' || (t >= 'a' && t <= 'z') || (t >= 'A' && t <= 'Z') ||
	    (t >= '0' && t <= '9'))
		return i + 1;
	return 0;
}

/* How many of the n request bytes in b the daemon needs: up to and
 * including the first byte after the target's start `from` that ends the
 * route part of it (space, '?', '#', CR, LF), else all n. The route drops
 * the query anyway (it never leaves the kernel), and the event and the
 * entry then carry a few dozen bytes instead of 128. */
#define ROUTE_END (1ull << ' ' | 1ull << '?' | 1ull << '#' | 1ull << '\r' | 1ull << '\n')

static __always_inline __u32 route_len(const __u8 *b, __u32 from, __u32 n)
{
	__u32 i;

	/* from < PEEK (request_target): a known start keeps the loop's
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
	return n;
}

static __always_inline bool is_digit(__u8 c)
{
	return c >= '0' && c <= '9';
}

/* Status code of the status line at b ("HTTP/1.1 200" or "HTTP/2 200"), or
 * 0. Reads b[0..11], which the caller guarantees. */
static __always_inline __u16 status_code(const __u8 *b)
{
	if (b[0] != 'H' || b[1] != 'T' || b[2] != 'T' || b[3] != 'P' || b[4] != '/' ||
	    !is_digit(b[5]))
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

/* Status code of a status line starting at b[i] of the scratch buffer (n
 * bytes valid), or 0. */
static __always_inline __u16 status_at(const __u8 *b, __u32 i, __u32 n)
{
	i &= SCAN - 1;
	if (i + 12 > n)
		return 0;
	/* i <= SCAN-1, reads up to i + 11: inside buf (SCAN + 16). */
	return status_code(b + i);
}

struct scan_ctx {
	__u32 from;
	__u32 n;
	__u32 found;
};

static long scan_step(__u32 j, struct scan_ctx *c)
{
	struct scratch *sc;
	__u32 zero = 0;

	if (j < c->from)
		return 0;
	if (j + 4 > c->n)
		return 1;
	sc = bpf_map_lookup_elem(&scratch_space, &zero);
	if (!sc)
		return 1;
	j &= SCAN - 1;
	if (sc->buf[j] == '\r' && sc->buf[j + 1] == '\n' && sc->buf[j + 2] == '\r' &&
	    sc->buf[j + 3] == '\n') {
		c->found = j + 4;
		return 1;
	}
	return 0;
}

/* Index just past the "\r\n\r\n" that ends the headers starting at `from`
 * in the scratch buffer, or 0 when not in the scanned bytes. bpf_loop keeps
 * the verifier from walking every iteration. */
static __always_inline __u32 headers_end(__u32 from, __u32 n)
{
	struct scan_ctx c = { .from = from, .n = n, .found = 0 };

	bpf_loop(SCAN, scan_step, &c, 0);
	return c.found;
}

/* A request starts on a tracked connection: the bytes the daemon needs
 * are in cs->req already (req_len = m). */
static __always_inline void request_starts(struct conn_state *cs, __u32 m, __u32 payload_len)
{
	__u64 now = bpf_ktime_get_ns();
	struct peer_counters *pc = peer_at(cs->peer_idx);

	cs->req_len = m;
	cs->req_ts = now;
	cs->last_ts = now;
	cs->phase = PHASE_AWAIT_RESPONSE;
	if (pc) {
		pc->requests += 1;
		pc->sent_bytes += payload_len;
	} else {
		stat_inc(STAT_PEER_TABLE_FULL);
	}
}

/* Payload on a tracked connection between exchanges (the common request
 * path of a keepalive connection). The first bytes go straight into the
 * entry's request buffer, which holds nothing of value outside
 * AWAIT_RESPONSE: one copy, no scratch space. */
static __always_inline void on_tracked_payload(struct __sk_buff *skb, struct conn_state *cs,
					       const struct seg *s)
{
	__u32 m = clamp_len(s->payload_len, REQ_FIRST);

	if (bpf_skb_load_bytes(skb, s->payload_off, cs->req, m))
		return;
	__u32 t = request_target(cs->req, m);
	if (t) {
		__u32 len = route_len(cs->req, t, m);
		if (len == m && s->payload_len > REQ_FIRST) {
			/* The target goes on: read up to all 128. */
			m = clamp_len(s->payload_len, REQ_BYTES);
			if (bpf_skb_load_bytes(skb, s->payload_off, cs->req, m))
				return;
			len = route_len(cs->req, t, m);
		}
		request_starts(cs, len, s->payload_len);
		return;
	}
	struct peer_counters *pc = peer_at(cs->peer_idx);
	if (pc)
		pc->sent_bytes += s->payload_len;
}

/* Payload on a connection not tracked yet, from an ephemeral port and
 * wanted by the filters: a request on a connection opened before the probe
 * started? A short peek on the stack decides; most such segments (TLS,
 * other protocols) leave after it. A subprogram: rare, kept out of the hot
 * path's code. Returns the connection's entry when
 * another CPU created it meanwhile, else NULL. */
static __noinline struct conn_state *on_untracked_payload(struct __sk_buff *skb,
							      const struct conn_key *k,
							      const struct seg *s)
{
	__u8 peek[PEEK] = {};
	__u32 m = clamp_len(s->payload_len, PEEK);

	if (bpf_skb_load_bytes(skb, s->payload_off, peek, m))
		return NULL;
	__u32 t = request_target(peek, m);
	if (!t)
		return NULL;
	struct scratch *sc = scratch_get();
	if (!sc)
		return NULL;
	m = clamp_len(s->payload_len, REQ_BYTES);
	if (bpf_skb_load_bytes(skb, s->payload_off, sc->conn.req, m))
		return NULL;
	m = route_len(sc->conn.req, t, m);
	__u64 now = bpf_ktime_get_ns();
	__u32 peer_idx = peer_idx_get(k);
	sc->conn.phase = PHASE_AWAIT_RESPONSE;
	sc->conn.peer_idx = peer_idx;
	sc->conn.req_len = m;
	sc->conn.req_ts = now;
	sc->conn.last_ts = now;
	long err = conn_insert(k, &sc->conn);
	if (err == -EEXIST) {
		struct conn_state *cs = bpf_map_lookup_elem(&conns, k);
		if (cs) {
			__builtin_memcpy(cs->req, sc->conn.req, REQ_BYTES);
			request_starts(cs, m, s->payload_len);
		}
		return cs;
	}
	if (err) {
		stat_inc(STAT_CONN_TABLE_FULL);
		return NULL;
	}
	struct peer_counters *pc = peer_at(peer_idx);
	if (pc) {
		pc->requests += 1;
		pc->sent_bytes += s->payload_len;
	} else {
		stat_inc(STAT_PEER_TABLE_FULL);
	}
	return NULL;
}

/* Connection attempt from this host: track it from the handshake (a
 * subprogram, out of the hot path's code). */
static __noinline void on_syn(const struct conn_key *k)
{
	if (!wanted_quick(k))
		return;
	struct scratch *sc = scratch_get();
	if (!sc)
		return;
	__u64 now = bpf_ktime_get_ns();
	__builtin_memset(&sc->conn, 0, sizeof(sc->conn));
	sc->conn.phase = PHASE_SYN_SENT;
	sc->conn.last_ts = now;
	sc->conn.peer_idx = peer_idx_get(k);
	long err = conn_insert(k, &sc->conn);
	if (err == -EEXIST) {
		/* Port reused for a new connection: start over. */
		struct conn_state *old = bpf_map_lookup_elem(&conns, k);
		if (old) {
			old->phase = PHASE_SYN_SENT;
			old->last_ts = now;
		}
	} else if (err) {
		stat_inc(STAT_CONN_TABLE_FULL);
	}
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
		on_syn(&k);
		return TCX_NEXT;
	}

	struct conn_state *cs = NULL;
	if (maybe_tracked_key(&k))
		cs = bpf_map_lookup_elem(&conns, &k);
	if (s.payload_len) {
		if (cs) {
			if (cs->phase == PHASE_AWAIT_RESPONSE) {
				/* Rest of the request: headers or body. Never
				 * a new message (nginx does not pipeline
				 * upstream). */
				struct peer_counters *pc = peer_at(cs->peer_idx);
				if (pc)
					pc->sent_bytes += s.payload_len;
			} else {
				on_tracked_payload(skb, cs, &s);
			}
		} else if (ephemeral(k.local_port) && wanted_quick(&k) && !far_side_of_tracked(&k)) {
			cs = on_untracked_payload(skb, &k, &s);
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
	struct scratch *sc = scratch_get();
	if (!sc)
		return TCX_NEXT;
	struct peer_counters *pc = peer_at(cs->peer_idx);

	if (cs->phase == PHASE_SYN_SENT) {
		if ((s.flags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK)) {
			cs->phase = PHASE_IDLE;
			if (pc)
				pc->conn_opened += 1;
			return TCX_NEXT;
		}
		if (s.flags & TH_RST)
			conn_end(&k, cs, s.flags);
		return TCX_NEXT;
	}

	if (s.payload_len) {
		if (pc)
			pc->received_bytes += s.payload_len;
		if (cs->phase == PHASE_AWAIT_RESPONSE) {
			__u32 n = clamp_len(s.payload_len, STATUS_FIRST);
			if (n < 12 || bpf_skb_load_bytes(skb, s.payload_off, sc->buf, n)) {
				stat_inc(STAT_PARSE_ERRORS);
				goto end;
			}
			__u16 code = status_at(sc->buf, 0, n);
			if (code && code < 200 && s.payload_len > n) {
				/* Interim: the final status line may follow
				 * in this segment. */
				n = clamp_len(s.payload_len, SCAN);
				if (bpf_skb_load_bytes(skb, s.payload_off, sc->buf, n)) {
					stat_inc(STAT_PARSE_ERRORS);
					goto end;
				}
			}
			__u64 now = bpf_ktime_get_ns();
			__u32 at = 0, i;
			for (i = 0; i < MAX_STATUS_LINES; i++) {
				if (!code) {
					/* Headers of a 1xx spilling over, or
					 * not HTTP at all. */
					if (i == 0)
						stat_inc(STAT_PARSE_ERRORS);
					break;
				}
				__u32 cls = (__u32)code / 100u - 1u;
				if (pc && cls < 5)
					pc->responses[cls] += 1;
				count_code(cs->peer_idx, code, pc);
				cs->last_ts = now;
				if (code >= 200) {
					cs->phase = PHASE_IN_RESPONSE;
					emit(&k, cs, code, now - cs->req_ts);
					break;
				}
				/* Interim: the exchange goes on. */
				at = headers_end(at, n);
				if (!at)
					break;
				code = status_at(sc->buf, at, n);
			}
		}
	}
end:
	if (s.flags & (TH_FIN | TH_RST))
		conn_end(&k, cs, s.flags);
	return TCX_NEXT;
}
