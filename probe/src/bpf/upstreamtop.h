/* Records shared between the BPF programs and the Rust daemon.
 *
 * This header is the single definition: the Rust side uses the types that
 * libbpf-cargo generates from the object's BTF (the skeleton's `types`
 * module), never a hand-kept copy. Only fixed-width types, explicit padding.
 */
#ifndef UPSTREAMTOP_H
#define UPSTREAMTOP_H

/* Raw first bytes of a request (method + target) kept per exchange; the
 * daemon parses and folds them. 128 covers nearly every route prefix. */
#define REQ_BYTES 128
/* Bounds of the BPF-side filters (--ignore-port, --only). */
#define MAX_IGNORE_PORTS 8
#define MAX_ONLY_CIDRS 8

/* Slots of the tracked-connection filter (a power of two). */
#define FILTER_SLOTS 16384

/* Connection states (conn_state.state). */
enum conn_phase {
	PHASE_SYN_SENT = 1,	  /* our SYN seen, handshake not completed */
	PHASE_IDLE = 2,		  /* established, between exchanges */
	PHASE_AWAIT_RESPONSE = 3, /* request sent, no final status yet */
	PHASE_IN_RESPONSE = 4,	  /* final status seen, body may follow */
};

/* Global per-CPU counters (index into the `stats` array). */
enum stat_index {
	STAT_EVENTS_DROPPED = 0,
	STAT_CONN_TABLE_FULL = 1,
	STAT_PEER_TABLE_FULL = 2,
	STAT_PARSE_ERRORS = 3,
	STAT_CODES_FULL = 4,
	STAT_MAX = 5,
};

/* A TCP endpoint: IPv6 address (IPv4 as ::ffff:a.b.c.d), port host order. */
struct peer_key {
	__u8 addr[16];
	__u16 port;
	__u16 _pad;
};

/* A connection, oriented from this host (local) to the backend (peer). */
struct conn_key {
	__u8 local_addr[16];
	__u8 peer_addr[16];
	__u16 local_port;
	__u16 peer_port;
};

struct conn_state {
	/* bpf_ktime_get_ns() of the request in flight (AWAIT_RESPONSE). */
	__u64 req_ts;
	/* bpf_ktime_get_ns() of the last SYN, request or response: the
	 * sweeper evicts on it. */
	__u64 last_ts;
	__u32 phase;
	__u16 req_len;
	/* This connection's slot in the `tracked` filter: whoever deletes
	 * the entry (programs or sweeper) decrements that slot. */
	__u16 slot;
	/* Index of the backend's counters (`peers`), NO_PEER when the table
	 * was full. */
	__u32 peer_idx;
	__u32 _pad;
	__u8 req[REQ_BYTES];
};

#define NO_PEER 0xffffffffu

/* Per-peer counters, one copy per CPU (summed by the daemon), in an array
 * indexed by the peer's slot (see `peer_ids`). */
struct peer_counters {
	__u64 requests;
	__u64 responses[5]; /* 1xx..5xx, interim 1xx included */
	__u64 no_response;
	__u64 sent_bytes;
	__u64 received_bytes;
	__u64 conn_opened;
	__u64 conn_closed;
	__u64 conn_failed;
	__u64 conn_reset;
	__u64 codes_other; /* exact code did not fit the `codes` map */
};

/* Exact counters of the common status codes, one slot per code that is
 * the first ten of its class (200-209, 300-309, 400-409, 500-509: slot
 * (class - 2) * 10 + code % 100), per peer index and CPU: counted with an
 * array access, not a hash lookup. Every other code goes to `codes`. */
#define CODE_SLOTS 40
struct code_slots {
	__u64 n[CODE_SLOTS];
};

/* Key of the exact status-code counters. */
struct code_key {
	__u32 peer_idx;
	__u16 code;
	__u16 _pad;
};

/* One finished exchange (final response, or ended without one), sent to
 * the daemon through the ring buffer for routes, latency and the feed. */
struct exchange_event {
	__u64 req_ts;	  /* bpf_ktime_get_ns() when the request was sent */
	__u64 latency_ns; /* to the final status line; 0 when none */
	struct peer_key peer;
	__u16 status;	  /* 0 = ended without a final response */
	__u16 req_len;
	__u32 _pad;
	__u8 req[REQ_BYTES];
};

/* One --only network. */
struct cidr {
	__u8 addr[16];
	__u32 prefix_len; /* over the 128-bit (v4-mapped) address */
};

#endif
