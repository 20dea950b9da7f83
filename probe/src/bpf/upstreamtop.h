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

/* Connection states (conn_state.phase). */
enum conn_phase {
	PHASE_SYN_SENT = 1,	  /* our SYN seen, handshake not completed */
	PHASE_IDLE = 2,		  /* established, no message sent yet */
	PHASE_AWAIT_RESPONSE = 3, /* request sent, no final status yet */
	PHASE_IN_RESPONSE = 4,	  /* final status seen, body may follow */
	PHASE_REQ_PARTIAL = 5,	  /* a message started, too short to tell */
	PHASE_INTERIM = 6,	  /* a 1xx seen: looking for the end of its headers */
	PHASE_OPAQUE = 7,	  /* the first message was not HTTP */
};

/* conn_state.flags */
enum conn_flag {
	/* The handshake was seen but no peer slot counted the open yet: it
	 * is counted where the connection ends up (first request, or
	 * tcp_peers when it never carries HTTP). */
	CF_OPEN_PENDING = 1,
	/* The request's route bytes go on past the segments seen so far. */
	CF_ROUTE_OPEN = 2,
	/* The peer sent its FIN: the connection ends with our FIN or RST
	 * (so that response bytes reordered behind that FIN still count). */
	CF_PEER_FIN = 4,
	/* The status line at resp_seq is not HTTP: stop looking. */
	CF_GARBLED = 8,
	/* next_seq / next_code hold a status line seen out of order. */
	CF_NEXT_KNOWN = 16,
};

/* Global per-CPU counters (index into the `stats` array). */
enum stat_index {
	STAT_EVENTS_DROPPED = 0,
	STAT_CONN_TABLE_FULL = 1,
	STAT_PEER_TABLE_FULL = 2,
	STAT_PARSE_ERRORS = 3,
	STAT_CODES_FULL = 4,
	/* Egress segments (or parts) sent before: retransmissions. */
	STAT_RETRANSMITS = 5,
	/* Connections that carried no HTTP (counted in tcp_peers). */
	STAT_OPAQUE_CONNS = 6,
	STAT_MAX = 7,
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

/* Bytes of the status-line window: "HTTP/1.1 200" is 12. */
#define WIN_BYTES 16

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
	/* Index of the backend's counters (`peers`): NO_PEER until the
	 * connection carries its first request (or when the table is full). */
	__u32 peer_idx;
	/* Sequence numbers (host order). Each payload byte is counted and
	 * parsed once: what lies before snd_nxt / rcv_nxt was seen. */
	__u32 snd_nxt; /* egress: one past the highest byte sent */
	__u32 rcv_nxt; /* ingress: one past the highest byte received */
	/* Where the next status line starts (AWAIT_RESPONSE), or how far the
	 * 1xx headers were scanned (INTERIM). */
	__u32 resp_seq;
	/* Initial sequence number of our SYN: its retransmissions are the
	 * same attempt. */
	__u32 syn_isn;
	/* SYNs seen of this attempt (the kernel backs off 1 s, 2 s, ...). */
	__u16 syns;
	/* Which bytes of win are filled (bit i: byte resp_seq + i). */
	__u16 win_mask;
	__u8 flags; /* enum conn_flag */
	/* "\r\n\r\n" bytes matched so far while scanning 1xx headers. */
	__u8 crlf;
	/* Which bytes of next_win (the status line at next_seq) that
	 * segment held. */
	__u16 next_mask;
	/* Bytes of the message so far while PHASE_REQ_PARTIAL, counted into
	 * the peer's `sent` once it is known to be a request. */
	__u32 held;
	/* Where a later status line starts, found in a segment that came out
	 * of order (CF_NEXT_KNOWN): after an interim response whose end lies
	 * in a hole, the exchange goes on there. */
	__u32 next_seq;
	/* The first bytes of the earliest segment that came ahead of the
	 * bytes the exchange waits for (ahead_mask: which are held): a status
	 * line that begins in the hole before it ends in them. */
	__u32 ahead_seq;
	__u16 ahead_mask;
	__u16 _pad16;
	/* Ingress bytes seen without a gap up to here (rcv_cont), and the
	 * nearest run seen beyond a gap ([ooo_lo, ooo_hi), empty when
	 * equal): the in-order scan knows whether the bytes it needs next
	 * came already (out of order) or are still to come. */
	__u32 rcv_cont;
	__u32 ooo_lo;
	__u32 ooo_hi;
	/* Where the last segment scanned ahead ended, and the "\r\n\r\nHTTP/"
	 * bytes matched at its end: a pattern split between two segments
	 * that come one after the other is still found. */
	__u32 la_end;
	__u32 la_crlf;
	__u8 next_win[WIN_BYTES];
	__u8 win[WIN_BYTES];
	__u8 ahead[WIN_BYTES];
	__u8 req[REQ_BYTES];
};

/* conn_state.peer_idx of a connection that has not carried HTTP. An enum
 * rather than a #define so that it lands in BTF and the daemon takes it
 * from the skeleton's types instead of a copy. */
enum no_peer {
	NO_PEER = 0xffffffffu,
};

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

/* Connection counters of a peer whose connections carried no HTTP (TLS,
 * databases, ...), kept apart from the HTTP peers in an LRU map so that
 * they never take an HTTP backend's place. */
struct tcp_counters {
	__u64 opened;
	__u64 closed;
	__u64 failed;
	__u64 reset;
};

/* Exact counters of the common status codes, one slot per code that is
 * the first ten of its class (200-209, 300-309, 400-409, 500-509: slot
 * (class - 2) * 10 + code % 100), per peer index and CPU: counted with an
 * array access, not a hash lookup. Every other code goes to `codes`. */
#define CODE_SLOTS 40
struct code_slots {
	__u64 n[CODE_SLOTS];
};

/* Key of a banked peer's exact status-code counts. */
struct banked_code_key {
	struct peer_key peer;
	__u16 code;
	__u16 _pad;
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
