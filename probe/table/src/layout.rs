//! The byte layout of the table file: the one definition both the writer and
//! the reader use. Every offset of the format is named here once; the
//! encoder (`records.rs`, `writer.rs`) writes each field at its name and the
//! readers (`view.rs`, `slot.rs`, `reader.rs`) read it at the same name, so
//! the two sides cannot drift apart. To change a record, edit its offsets
//! here, its encoding in `records.rs` and its accessor in `view.rs`; any
//! change to the bytes is a new [`ABI_VERSION`] (a reader refuses a file of
//! another version rather than misread it).
//!
//! Everything is little-endian and encoded by hand (no `transmute`, no
//! `unsafe`): the reader decodes from a private copy of the bytes, so a
//! hostile or half-written file can at worst produce an error.
//!
//! ```text
//! offset 0            file header (HEADER_SIZE bytes, one page)
//!                       magic, ABI version, sizes, generation, capacities,
//!                       record sizes, slot offsets, `active`, `seq[0]`, `seq[1]`
//! slot_off[0]         slot 0: slot header (SLOT_HEADER_SIZE) + body
//! slot_off[1]         slot 1: same size
//! ```
//!
//! A slot body is packed: `n_peers` peer records, then `n_peers ×
//! history_len` history samples (each peer's samples at a fixed stride), then
//! `n_routes` route records, then `n_recent` recent records, then the pool:
//! the variable-length parts records point into by offset (each route's
//! method and path, each peer's non-zero latency buckets). The slot header
//! records the counts, the pool length, the body length and a checksum over
//! them.
//!
//! Why a pool: every reader copies and checksums the whole slot on each
//! publish, so the slot should hold what was seen, not room for it. Fixed
//! fields sized for the longest path and the full histogram were mostly
//! zeros; ABI 2 (this one) moved route strings and peer histograms into the
//! pool, and added each peer's whole-life latency percentiles so readers
//! that only print them skip the histogram.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::histogram::BUCKETS;

pub const MAGIC: [u8; 8] = *b"UPTOPTBL";
pub const ABI_VERSION: u32 = 2;

/// The file header occupies the first page.
pub const HEADER_SIZE: u64 = 4096;
/// Bytes of the header a reader needs (everything up to and including `seq[1]`).
pub const HEADER_READ: usize = 272;

// File header field offsets.
pub const H_MAGIC: usize = 0;
pub const H_VERSION: usize = 8; // u32
pub const H_HEADER_SIZE: usize = 12; // u32
pub const H_FILE_SIZE: usize = 16; // u64
pub const H_GENERATION: usize = 24; // u64
pub const H_MAX_PEERS: usize = 32; // u32
pub const H_MAX_ROUTES: usize = 36; // u32
pub const H_MAX_RECENT: usize = 40; // u32
pub const H_HISTORY_LEN: usize = 44; // u32
pub const H_PEER_REC: usize = 48; // u32
pub const H_ROUTE_REC: usize = 52; // u32
pub const H_RECENT_REC: usize = 56; // u32
pub const H_HISTORY_REC: usize = 60; // u32
pub const H_BUCKETS: usize = 64; // u32
pub const H_PEER_CODES: usize = 68; // u32
pub const H_ROUTE_CODES: usize = 72; // u32
pub const H_MAX_IFACES: usize = 76; // u32
pub const H_SLOT0: usize = 80; // u64
pub const H_SLOT1: usize = 88; // u64
pub const H_SLOT_SIZE: usize = 96; // u64
/// Index (0/1) of the slot holding the latest complete publish. Own cache line.
pub const H_ACTIVE: usize = 128; // u64
/// Per-slot sequence numbers: odd while the writer is filling the slot, 0
/// before its first publish. Each on its own cache line.
pub const H_SEQ: [usize; 2] = [192, 256]; // u64

// Slot header field offsets (relative to the slot start).
pub const SLOT_HEADER_SIZE: u64 = 1024;
pub const S_USED: usize = 0; // u64: body bytes
pub const S_CHECKSUM: usize = 8; // u64: over [S_CHECKSUMMED_FROM, header end) + body
/// The checksum covers the slot header from here on, then the body.
pub const S_CHECKSUMMED_FROM: usize = 16;
pub const S_PID: usize = 16; // u32
pub const S_HISTORY_LEN: usize = 20; // u32: meta.history_len as published
pub const S_STARTED: usize = 24;
pub const S_PUBLISHED: usize = 32;
pub const S_INTERVAL: usize = 40;
pub const S_PUBLISH_SEQ: usize = 48;
pub const S_COUNTERS: usize = 56; // 7 × u64
pub const S_N_IFACES: usize = 112; // u32
pub const S_N_PEERS: usize = 116; // u32
pub const S_N_ROUTES: usize = 120; // u32
pub const S_N_RECENT: usize = 124; // u32
pub const S_IFACES: usize = 128; // MAX_IFACES × IFACE_LEN
/// Bytes of the pool (the end of the body).
pub const S_POOL_LEN: usize = S_IFACES + MAX_IFACES * IFACE_LEN; // u64

/// Interface names kept per publish (more are dropped).
pub const MAX_IFACES: usize = 16;
/// One interface name slot: a length byte then up to 31 bytes (IFNAMSIZ is 16).
pub const IFACE_LEN: usize = 32;

/// Exact status codes kept per peer; the rest go to `codes_other`.
pub const PEER_CODES: usize = 32;
/// Exact status codes kept per route.
pub const ROUTE_CODES: usize = 8;
/// Longest method stored, bytes.
pub const METHOD_LEN: usize = 16;
/// Longest path stored, bytes.
pub const PATH_LEN: usize = 128;

// Record sizes are ABI: the file header carries them and a reader refuses a
// file whose sizes differ from its own. They are stated as numbers so that
// a field change which moves them fails the asserts in the record modules
// below, and comes with an `ABI_VERSION` bump.

/// A socket address; fields in [`addr`].
pub const ADDR_SIZE: usize = 32;
/// A peer record; fields in [`peer`].
pub const PEER_REC_SIZE: usize = 608;
/// A route record; fields in [`route`].
pub const ROUTE_REC_SIZE: usize = 224;
/// A sampled request; fields in [`recent`].
pub const RECENT_REC_SIZE: usize = 200;
/// One history sample; fields in [`history`].
pub const HISTORY_REC_SIZE: usize = 16;
/// One non-zero latency bucket in the pool; fields in [`bucket_entry`].
pub const BUCKET_ENTRY_SIZE: usize = 9;
const _: () = assert!(BUCKETS <= 256, "bucket index is a byte");

// Field offsets, relative to the start of their record. Each field starts
// where the one before it ends (a comment names its type and any padding
// before it), so a record is read back exactly as `records.rs` wrote it:
// both go through these names, never through counted bytes.

/// A socket address (inside peer and recent records).
pub mod addr {
    /// 16 bytes: an IPv6 address, or an IPv4 one in the first 4 (rest zero).
    pub const IP: usize = 0;
    pub const PORT: usize = IP + 16; // u16
    /// 4 or 6; anything else is refused.
    pub const FAMILY: usize = PORT + 2; // u8
    pub const FLOWINFO: usize = FAMILY + 2; // u32 after a pad byte; 0 for IPv4
    pub const SCOPE_ID: usize = FLOWINFO + 4; // u32; 0 for IPv4

    // Then 4 bytes of padding, so records stay 8-aligned.
    const _: () = assert!(SCOPE_ID + 4 + 4 == super::ADDR_SIZE);
}

/// A responses block (inside peer and route records; `cap` is
/// [`PEER_CODES`] or [`ROUTE_CODES`]). The exact codes are two arrays,
/// keys then counts, so neither needs padding.
pub mod responses {
    pub const CLASS: usize = 0; // 5 × u64: 1xx, 2xx, 3xx, 4xx, 5xx
    pub const CODES_OTHER: usize = CLASS + 5 * 8; // u64
    /// How many of the `cap` code slots are used (the rest are zero).
    pub const N_CODES: usize = CODES_OTHER + 8; // u32
    /// A word the block leaves to its record: a peer keeps its history
    /// count here ([`peer::HISTORY_COUNT`](super::peer::HISTORY_COUNT)); a
    /// route leaves it zero.
    pub const SPARE: usize = N_CODES + 4; // u32
    pub const KEYS: usize = SPARE + 4; // cap × u16, ascending
    /// The counts of [`KEYS`], in the same order.
    pub const fn counts(cap: usize) -> usize {
        KEYS + cap * 2 // cap × u64
    }
    /// Bytes of a block with `cap` code slots.
    pub const fn size(cap: usize) -> usize {
        counts(cap) + cap * 8
    }
}

/// A peer record. Its history samples are in the history array, its
/// latency buckets in the pool.
pub mod peer {
    use super::{responses, ADDR_SIZE, PEER_CODES, PEER_REC_SIZE};

    pub const ADDR: usize = 0; // ADDR_SIZE, see `addr`
    pub const REQUESTS: usize = ADDR + ADDR_SIZE; // u64
    pub const NO_RESPONSE: usize = REQUESTS + 8; // u64
    pub const SENT_BYTES: usize = NO_RESPONSE + 8; // u64
    pub const RECEIVED_BYTES: usize = SENT_BYTES + 8; // u64
    pub const RESPONSES: usize = RECEIVED_BYTES + 8; // responses block of PEER_CODES
    /// Samples of this peer's history ring in use (at most the ring length).
    pub const HISTORY_COUNT: usize = RESPONSES + responses::SPARE; // u32
    pub const CONNS_OPENED: usize = RESPONSES + responses::size(PEER_CODES); // u64
    pub const CONNS_CLOSED: usize = CONNS_OPENED + 8; // u64
    pub const CONNS_FAILED: usize = CONNS_CLOSED + 8; // u64
    pub const CONNS_RESET: usize = CONNS_FAILED + 8; // u64
    pub const CONNS_ACTIVE: usize = CONNS_RESET + 8; // u64
    pub const LATENCY_SUM: usize = CONNS_ACTIVE + 8; // u64, ns
    pub const LATENCY_COUNT: usize = LATENCY_SUM + 8; // u64
    /// Percentiles of the whole-life histogram, computed once by the probe
    /// so that readers which only print them skip the histogram.
    pub const LATENCY_P50: usize = LATENCY_COUNT + 8; // u64, ns; 0 = none
    pub const LATENCY_P90: usize = LATENCY_P50 + 8; // u64, ns
    pub const LATENCY_P99: usize = LATENCY_P90 + 8; // u64, ns
    /// Where this peer's non-zero buckets start in the pool.
    pub const BUCKETS_AT: usize = LATENCY_P99 + 8; // u32
    /// How many bucket entries follow there (at most `BUCKETS`).
    pub const N_BUCKETS: usize = BUCKETS_AT + 4; // u32
    pub const WINDOW_REQUESTS_PER_SEC: usize = N_BUCKETS + 4; // f64
    pub const WINDOW_ERRORS_5XX_PER_SEC: usize = WINDOW_REQUESTS_PER_SEC + 8; // f64
    pub const WINDOW_SENT_BYTES_PER_SEC: usize = WINDOW_ERRORS_5XX_PER_SEC + 8; // f64
    pub const WINDOW_RECEIVED_BYTES_PER_SEC: usize = WINDOW_SENT_BYTES_PER_SEC + 8; // f64
    pub const WINDOW_LATENCY_AVG: usize = WINDOW_RECEIVED_BYTES_PER_SEC + 8; // u64, ns
    pub const WINDOW_LATENCY_P50: usize = WINDOW_LATENCY_AVG + 8; // u64, ns
    pub const WINDOW_LATENCY_P90: usize = WINDOW_LATENCY_P50 + 8; // u64, ns
    pub const WINDOW_LATENCY_P99: usize = WINDOW_LATENCY_P90 + 8; // u64, ns
    pub const FIRST_SEEN: usize = WINDOW_LATENCY_P99 + 8; // u64, unix ns
    pub const LAST_SEEN: usize = FIRST_SEEN + 8; // u64, unix ns
    const _: () = assert!(LAST_SEEN + 8 == PEER_REC_SIZE, "peer fields must end at PEER_REC_SIZE");
}

/// A route record. Its method and path are in the pool.
pub mod route {
    use super::{responses, ROUTE_CODES, ROUTE_REC_SIZE};

    /// Index of the peer record this route belongs to.
    pub const PEER: usize = 0; // u32
    /// 1 for the peer's overflow route ("other"), else 0.
    pub const IS_OTHER: usize = PEER + 4; // u8
    /// Bytes of the method in the pool (at most `METHOD_LEN`).
    pub const N_METHOD: usize = IS_OTHER + 1; // u8
    /// Bytes of the path in the pool, right after the method (at most `PATH_LEN`).
    pub const N_PATH: usize = N_METHOD + 1; // u8
    /// Where the method starts in the pool.
    pub const STRINGS_AT: usize = N_PATH + 2; // u32 after a pad byte
    pub const REQUESTS: usize = STRINGS_AT + 8; // u64 after a pad word
    pub const NO_RESPONSE: usize = REQUESTS + 8; // u64
    pub const RESPONSES: usize = NO_RESPONSE + 8; // responses block of ROUTE_CODES
    pub const LATENCY_SUM: usize = RESPONSES + responses::size(ROUTE_CODES); // u64, ns
    pub const LATENCY_COUNT: usize = LATENCY_SUM + 8; // u64
    pub const LATENCY_P50: usize = LATENCY_COUNT + 8; // u64, ns
    pub const LATENCY_P90: usize = LATENCY_P50 + 8; // u64, ns
    pub const LATENCY_P99: usize = LATENCY_P90 + 8; // u64, ns
    pub const REQUESTS_PER_SEC: usize = LATENCY_P99 + 8; // f64
    pub const ERRORS_5XX_PER_SEC: usize = REQUESTS_PER_SEC + 8; // f64
    const _: () = assert!(ERRORS_5XX_PER_SEC + 8 == ROUTE_REC_SIZE, "route fields must end at ROUTE_REC_SIZE");
}

/// A sampled request. Its strings are in the record, not the pool: the feed
/// is short, and a fixed record keeps it simple.
pub mod recent {
    use super::{ADDR_SIZE, METHOD_LEN, PATH_LEN, RECENT_REC_SIZE};

    pub const UNIX_NS: usize = 0; // u64
    pub const PEER: usize = UNIX_NS + 8; // ADDR_SIZE, see `addr`
    /// Bytes of [`METHOD`] in use.
    pub const N_METHOD: usize = PEER + ADDR_SIZE; // u8
    /// Bytes of [`PATH`] in use.
    pub const N_PATH: usize = N_METHOD + 1; // u8
    /// Final status code; 0 when the exchange ended without one.
    pub const STATUS: usize = N_PATH + 1; // u16
    pub const METHOD: usize = STATUS + 2 + 4; // METHOD_LEN bytes after a pad word, zero-padded
    pub const PATH: usize = METHOD + METHOD_LEN; // PATH_LEN bytes, zero-padded
    pub const LATENCY: usize = PATH + PATH_LEN; // u64, ns
    const _: () = assert!(LATENCY + 8 == RECENT_REC_SIZE, "recent fields must end at RECENT_REC_SIZE");
}

/// One sample of a peer's history ring (each peer's ring has the header's
/// `history_len` samples; unused ones are zero).
pub mod history {
    pub const REQUESTS: usize = 0; // u32
    pub const ERRORS_5XX: usize = REQUESTS + 4; // u32
    pub const CONN_FAILED: usize = ERRORS_5XX + 4; // u32
    pub const LATENCY_P99_US: usize = CONN_FAILED + 4; // u32, µs
    const _: () = assert!(LATENCY_P99_US + 4 == super::HISTORY_REC_SIZE);
}

/// One non-zero latency bucket of a peer, in the pool. A peer's entries
/// are in strictly ascending bucket order.
pub mod bucket_entry {
    pub const INDEX: usize = 0; // u8, below `BUCKETS`
    pub const COUNT: usize = INDEX + 1; // u64, unaligned
    const _: () = assert!(COUNT + 8 == super::BUCKET_ENTRY_SIZE);
}

/// The probe's counters in the slot header (offsets relative to the slot
/// start, like the `S_*` fields).
pub mod counters {
    use super::{S_COUNTERS, S_N_IFACES};

    pub const EVENTS_DROPPED: usize = S_COUNTERS; // u64
    pub const CONN_TABLE_FULL: usize = EVENTS_DROPPED + 8; // u64
    pub const CONN_EVICTED: usize = CONN_TABLE_FULL + 8; // u64
    pub const PEER_TABLE_FULL: usize = CONN_EVICTED + 8; // u64
    pub const ROUTE_OVERFLOW: usize = PEER_TABLE_FULL + 8; // u64
    pub const RECENT_SAMPLED_OUT: usize = ROUTE_OVERFLOW + 8; // u64
    pub const PARSE_ERRORS: usize = RECENT_SAMPLED_OUT + 8; // u64
    const _: () = assert!(PARSE_ERRORS + 8 == S_N_IFACES);
}

/// One interface name in the slot header (`MAX_IFACES` of them from
/// `S_IFACES` on, `IFACE_LEN` bytes each).
pub mod iface {
    /// Bytes of the name in use.
    pub const N_NAME: usize = 0; // u8
    pub const NAME: usize = N_NAME + 1; // IFACE_LEN - 1 bytes, zero-padded
}

/// Largest slot we agree to create or read (guards against absurd capacities
/// and hostile headers alike). 65,536 peers (`--max-peers`' own limit) with
/// the default routes and 60 history samples take ~244 MiB, so the probe's
/// defaults fit at any peer count (a longer history at that many peers is
/// refused at start); a reader's buffer never grows past this.
pub const MAX_SLOT_SIZE: u64 = 256 << 20;

/// Largest table file a reader accepts (header + two slots of
/// [`MAX_SLOT_SIZE`], 512 MiB + 4 KiB). A file must also be exactly the size
/// its header's capacities imply; this cap is checked first, on the open
/// descriptor, before anything is read.
pub const MAX_FILE_SIZE: u64 = HEADER_SIZE + 2 * MAX_SLOT_SIZE;

/// Largest pool for these capacities: every route's longest strings and
/// every bucket of every peer.
pub fn pool_cap(max_peers: u32, max_routes: u32) -> Option<u64> {
    u64::from(max_routes)
        .checked_mul((METHOD_LEN + PATH_LEN) as u64)?
        .checked_add(u64::from(max_peers).checked_mul((BUCKETS * BUCKET_ENTRY_SIZE) as u64)?)
}

/// Size of one slot (header + the largest body) for these capacities, or
/// `None` when it overflows or exceeds [`MAX_SLOT_SIZE`].
pub fn slot_size(max_peers: u32, max_routes: u32, max_recent: u32, history_len: u32) -> Option<u64> {
    let body = body_len(max_peers.into(), history_len.into(), max_routes.into(), max_recent.into())?
        .checked_add(pool_cap(max_peers, max_routes)?)?;
    // Round up to 8 so the second slot's atomics-free header stays aligned.
    let size = SLOT_HEADER_SIZE.checked_add(body)?.checked_add(7)? & !7;
    (size <= MAX_SLOT_SIZE).then_some(size)
}

/// Length of the fixed-size records of a body with these counts (the pool
/// follows them).
pub fn body_len(n_peers: u64, history_len: u64, n_routes: u64, n_recent: u64) -> Option<u64> {
    n_peers
        .checked_mul(PEER_REC_SIZE as u64)?
        .checked_add(n_peers.checked_mul(history_len)?.checked_mul(HISTORY_REC_SIZE as u64)?)?
        .checked_add(n_routes.checked_mul(ROUTE_REC_SIZE as u64)?)?
        .checked_add(n_recent.checked_mul(RECENT_REC_SIZE as u64)?)
}

/// A cheap 64-bit checksum: Fletcher-style running sums over four
/// interleaved lanes of 64-bit words (only adds, so it runs at memory
/// speed), then mixed. It is not cryptographic: it only has to catch a copy
/// torn by a concurrent publish, on top of the sequence numbers. Changing
/// any single byte always changes the plain sums.
pub fn checksum(parts: &[&[u8]]) -> u64 {
    let mut c = Checksum::default();
    for part in parts {
        c.update(part);
        c.end_part();
    }
    c.finish()
}

/// [`checksum`] fed piece by piece: the reader sums each chunk of the slot
/// right after `pread` put it in the cache, instead of walking megabytes a
/// second time from memory.
#[derive(Debug, Clone, Default)]
pub struct Checksum {
    a: [u64; 4],
    b: [u64; 4],
    total: u64,
    /// Bytes of an unfinished 32-byte block.
    tail: [u8; 32],
    tail_len: usize,
}

impl Checksum {
    #[inline(always)]
    fn block(&mut self, c: &[u8]) {
        for l in 0..4 {
            let w = u64::from_le_bytes(c[l * 8..l * 8 + 8].try_into().expect("8-byte word"));
            self.a[l] = self.a[l].wrapping_add(w);
            self.b[l] = self.b[l].wrapping_add(self.a[l]);
        }
    }

    /// Adds `data` to the current part (pieces of one part concatenate).
    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.tail_len > 0 {
            let n = (32 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + n].copy_from_slice(&data[..n]);
            self.tail_len += n;
            data = &data[n..];
            if self.tail_len < 32 {
                return;
            }
            let t = self.tail;
            self.block(&t);
            self.tail_len = 0;
        }
        let mut chunks = data.chunks_exact(32);
        for c in &mut chunks {
            self.block(c);
        }
        let rest = chunks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    /// Ends a part: its last block is padded with zeros.
    fn end_part(&mut self) {
        if self.tail_len > 0 {
            let mut t = [0u8; 32];
            t[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            self.block(&t);
            self.tail_len = 0;
        }
    }

    /// The checksum of everything added, as one part.
    pub fn finish(mut self) -> u64 {
        self.end_part();
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut h = self.total.wrapping_mul(K);
        for v in self.a.into_iter().chain(self.b) {
            h = (h ^ v).wrapping_mul(K);
            h ^= h >> 31;
        }
        h
    }
}

/// Longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Stores little-endian fields at their offsets in one record (or header):
/// `records.rs` writes every field at its name from this module, so the
/// order of the calls does not matter and cannot drift from the reader's.
/// An offset past the record panics; the record sizes bound them all.
pub struct RecordWriter<'a> {
    rec: &'a mut [u8],
}

impl<'a> RecordWriter<'a> {
    /// Writes into `rec` as it is: bytes no field covers keep their value
    /// (a freshly created, zeroed file for the header; [`Enc::record`]
    /// zeroes slot records first).
    pub fn new(rec: &'a mut [u8]) -> Self {
        RecordWriter { rec }
    }
    #[inline]
    pub fn bytes(&mut self, at: usize, b: &[u8]) {
        self.rec[at..at + b.len()].copy_from_slice(b);
    }
    #[inline]
    pub fn u8(&mut self, at: usize, v: u8) {
        self.rec[at] = v;
    }
    #[inline]
    pub fn u16(&mut self, at: usize, v: u16) {
        self.bytes(at, &v.to_le_bytes());
    }
    #[inline]
    pub fn u32(&mut self, at: usize, v: u32) {
        self.bytes(at, &v.to_le_bytes());
    }
    #[inline]
    pub fn u64(&mut self, at: usize, v: u64) {
        self.bytes(at, &v.to_le_bytes());
    }
    #[inline]
    pub fn f64(&mut self, at: usize, v: f64) {
        self.u64(at, v.to_bits());
    }
    /// A socket address ([`addr`]) starting at `at`.
    pub fn addr(&mut self, at: usize, a: &SocketAddr) {
        let (ip, family, flowinfo, scope_id) = match a {
            SocketAddr::V4(v4) => {
                let mut ip = [0u8; 16];
                ip[..4].copy_from_slice(&v4.ip().octets());
                (ip, 4, 0, 0)
            }
            SocketAddr::V6(v6) => (v6.ip().octets(), 6, v6.flowinfo(), v6.scope_id()),
        };
        self.bytes(at + addr::IP, &ip);
        self.u16(at + addr::PORT, a.port());
        self.u8(at + addr::FAMILY, family);
        self.u32(at + addr::FLOWINFO, flowinfo);
        self.u32(at + addr::SCOPE_ID, scope_id);
    }
}

/// Hands out consecutive pieces of a slot (records, the history array, the
/// pool). The writer encodes straight into the table's inactive slot (no
/// second slot-sized buffer), so this writes in place rather than
/// appending; the capacities bound what is encoded, and a write past the
/// end panics.
pub struct Enc<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Enc<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Enc { buf, pos: 0 }
    }
    /// Bytes handed out so far.
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// The next `size` bytes, zeroed, to write fields into. The slot still
    /// holds the publish before last: zeroing first means padding, unused
    /// code slots and any field not written read as zero, never as what
    /// was there before.
    #[inline]
    pub fn record(&mut self, size: usize) -> RecordWriter<'_> {
        let rec = &mut self.buf[self.pos..self.pos + size];
        rec.fill(0);
        self.pos += size;
        RecordWriter::new(rec)
    }
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    pub fn zeros(&mut self, n: usize) {
        self.buf[self.pos..self.pos + n].fill(0);
        self.pos += n;
    }
}

/// Why a record did not decode; the reader wraps it into `ReadError::Corrupt`.
pub type DecResult<T> = Result<T, String>;

// Little-endian loads at fixed offsets. Callers only pass offsets inside
// records whose length they checked, so the slicing cannot go out of bounds.
#[inline]
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}
#[inline]
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}
#[inline]
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
#[inline]
pub(crate) fn f64_at(b: &[u8], at: usize) -> f64 {
    f64::from_bits(u64_at(b, at))
}

/// The socket address ([`addr`]) starting at `at`; an unknown family is
/// an error.
#[inline]
pub(crate) fn addr_at(b: &[u8], at: usize) -> DecResult<SocketAddr> {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[at + addr::IP..at + addr::IP + 16]);
    let port = u16_at(b, at + addr::PORT);
    match b[at + addr::FAMILY] {
        4 => Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]), port))),
        6 => Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            u32_at(b, at + addr::FLOWINFO),
            u32_at(b, at + addr::SCOPE_ID),
        ))),
        f => Err(format!("address family {f}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_utf8("abc", 8), "abc");
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("日本語", 7), "日本");
        assert_eq!(truncate_utf8("", 0), "");
    }

    #[test]
    fn checksum_sees_every_byte() {
        let base = vec![7u8; 301];
        let h = checksum(&[&base]);
        for i in 0..base.len() {
            let mut m = base.clone();
            m[i] ^= 1;
            assert_ne!(checksum(&[&m]), h, "byte {i}");
        }
        assert_ne!(checksum(&[&base[..300]]), h);
    }

    #[test]
    fn checksum_in_pieces_is_the_checksum_of_the_whole() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for cut in [1usize, 7, 31, 32, 33, 100, 999, 4096] {
            let mut c = Checksum::default();
            for piece in data.chunks(cut) {
                c.update(piece);
            }
            assert_eq!(c.finish(), checksum(&[&data]), "pieces of {cut}");
        }
    }

    /// The offsets of ABI 2 as numbers. The record modules derive each
    /// offset from the one before, so moving a field moves the rest without
    /// any size changing; this catches that. A failure here means the byte
    /// format changed: bump `ABI_VERSION`, then update these numbers.
    #[test]
    fn abi_2_offsets() {
        assert_eq!(ABI_VERSION, 2);
        assert_eq!([addr::IP, addr::PORT, addr::FAMILY, addr::FLOWINFO, addr::SCOPE_ID], [0, 16, 18, 20, 24]);
        assert_eq!(
            [responses::CLASS, responses::CODES_OTHER, responses::N_CODES, responses::SPARE, responses::KEYS],
            [0, 40, 48, 52, 56]
        );
        assert_eq!([responses::counts(PEER_CODES), responses::size(PEER_CODES)], [120, 376]);
        assert_eq!([responses::counts(ROUTE_CODES), responses::size(ROUTE_CODES)], [72, 136]);
        assert_eq!(
            [peer::ADDR, peer::REQUESTS, peer::NO_RESPONSE, peer::SENT_BYTES, peer::RECEIVED_BYTES, peer::RESPONSES],
            [0, 32, 40, 48, 56, 64]
        );
        assert_eq!(peer::HISTORY_COUNT, 116);
        assert_eq!(
            [peer::CONNS_OPENED, peer::CONNS_CLOSED, peer::CONNS_FAILED, peer::CONNS_RESET, peer::CONNS_ACTIVE],
            [440, 448, 456, 464, 472]
        );
        assert_eq!(
            [peer::LATENCY_SUM, peer::LATENCY_COUNT, peer::LATENCY_P50, peer::LATENCY_P90, peer::LATENCY_P99],
            [480, 488, 496, 504, 512]
        );
        assert_eq!([peer::BUCKETS_AT, peer::N_BUCKETS], [520, 524]);
        assert_eq!(
            [
                peer::WINDOW_REQUESTS_PER_SEC,
                peer::WINDOW_ERRORS_5XX_PER_SEC,
                peer::WINDOW_SENT_BYTES_PER_SEC,
                peer::WINDOW_RECEIVED_BYTES_PER_SEC,
                peer::WINDOW_LATENCY_AVG,
                peer::WINDOW_LATENCY_P50,
                peer::WINDOW_LATENCY_P90,
                peer::WINDOW_LATENCY_P99,
            ],
            [528, 536, 544, 552, 560, 568, 576, 584]
        );
        assert_eq!([peer::FIRST_SEEN, peer::LAST_SEEN, PEER_REC_SIZE], [592, 600, 608]);
        assert_eq!(
            [route::PEER, route::IS_OTHER, route::N_METHOD, route::N_PATH, route::STRINGS_AT, route::REQUESTS],
            [0, 4, 5, 6, 8, 16]
        );
        assert_eq!(
            [route::NO_RESPONSE, route::RESPONSES, route::LATENCY_SUM, route::LATENCY_COUNT],
            [24, 32, 168, 176]
        );
        assert_eq!([route::LATENCY_P50, route::LATENCY_P90, route::LATENCY_P99], [184, 192, 200]);
        assert_eq!([route::REQUESTS_PER_SEC, route::ERRORS_5XX_PER_SEC, ROUTE_REC_SIZE], [208, 216, 224]);
        assert_eq!(
            [recent::UNIX_NS, recent::PEER, recent::N_METHOD, recent::N_PATH, recent::STATUS, recent::METHOD],
            [0, 8, 40, 41, 42, 48]
        );
        assert_eq!([recent::PATH, recent::LATENCY, RECENT_REC_SIZE], [64, 192, 200]);
        assert_eq!(
            [history::REQUESTS, history::ERRORS_5XX, history::CONN_FAILED, history::LATENCY_P99_US],
            [0, 4, 8, 12]
        );
        assert_eq!([bucket_entry::INDEX, bucket_entry::COUNT], [0, 1]);
        assert_eq!([counters::EVENTS_DROPPED, counters::PARSE_ERRORS, iface::N_NAME, iface::NAME], [56, 104, 0, 1]);
    }

    #[test]
    fn header_fields_fit() {
        assert!(H_SEQ[1] + 8 <= HEADER_READ);
        assert!(S_IFACES + MAX_IFACES * IFACE_LEN <= SLOT_HEADER_SIZE as usize);
        assert!(PATH_LEN <= u8::MAX as usize);
    }
}

#[cfg(test)]
mod timing {
    #[test]
    #[ignore]
    fn checksum_timing() {
        let b: Vec<u8> = (0..9_000_000u32).map(|i| i as u8).collect();
        let mut best = u128::MAX;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            std::hint::black_box(super::checksum(&[std::hint::black_box(&b)]));
            best = best.min(t.elapsed().as_micros());
        }
        eprintln!("checksum of 9 MB: {best} µs");
    }
}
