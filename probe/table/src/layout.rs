//! The byte layout of the table file: the one definition both the writer and
//! the reader use.
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
//! ABI 2 (this one) moved route strings and peer histograms out of fixed
//! fields into the pool and added each peer's whole-life latency
//! percentiles: a slot of 1,000 peers × 16 routes went from 9.3 to ~5.6 MB,
//! and every reader copies and checksums the whole slot per publish.

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

/// Socket address: ip[16], port u16, family u8, pad u8, flowinfo u32, scope_id u32, pad u32.
pub const ADDR_SIZE: usize = 32;

pub const PEER_REC_SIZE: usize = ADDR_SIZE
    + 4 * 8 // requests, no_response, sent, received
    + 5 * 8 // class
    + 8 // codes_other
    + 4 + 4 // n_codes, history_count
    + PEER_CODES * 2
    + PEER_CODES * 8
    + 5 * 8 // conns
    + 2 * 8 // latency sum, count
    + 3 * 8 // latency p50, p90, p99 over all buckets
    + 4 + 4 // buckets: pool offset, number of non-zero buckets
    + 8 * 8 // window
    + 2 * 8; // first/last seen

/// One non-zero latency bucket in the pool: index byte, then its count.
pub const BUCKET_ENTRY_SIZE: usize = 1 + 8;
const _: () = assert!(BUCKETS <= 256, "bucket index is a byte");

pub const ROUTE_REC_SIZE: usize = 4 + 1 + 1 + 1 + 1 // peer, is_other, method_len, path_len, pad
    + 4 + 4 // pool offset of method then path, pad
    + 2 * 8 // requests, no_response
    + 5 * 8 // class
    + 8 // codes_other
    + 4 + 4 // n_codes, pad
    + ROUTE_CODES * 2
    + ROUTE_CODES * 8
    + 5 * 8 // latency sum, count, p50, p90, p99
    + 2 * 8; // rps, 5xx rps

pub const RECENT_REC_SIZE: usize = 8 // unix_ns
    + ADDR_SIZE
    + 1 + 1 + 2 + 4 // method_len, path_len, status, pad
    + METHOD_LEN
    + PATH_LEN
    + 8; // latency

pub const HISTORY_REC_SIZE: usize = 16;

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

/// Writes little-endian fields into a byte slice from a cursor on. The
/// writer encodes straight into the table's inactive slot (no second
/// slot-sized buffer), so this writes in place rather than appending; the
/// capacities bound what is encoded, and a write past the end panics.
pub struct Enc<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Enc<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Enc { buf, pos: 0 }
    }
    /// Bytes written so far.
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// Everything written so far.
    pub fn written(&mut self) -> &mut [u8] {
        &mut self.buf[..self.pos]
    }
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    pub fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    pub fn zeros(&mut self, n: usize) {
        self.buf[self.pos..self.pos + n].fill(0);
        self.pos += n;
    }
    /// `bytes` (already bounded by the caller) padded with zeros to `width`.
    pub fn padded(&mut self, bytes: &[u8], width: usize) {
        debug_assert!(bytes.len() <= width);
        let n = bytes.len().min(width);
        self.bytes(&bytes[..n]);
        self.zeros(width - n);
    }
    pub fn addr(&mut self, a: &SocketAddr) {
        match a {
            SocketAddr::V4(v4) => {
                self.padded(&v4.ip().octets(), 16);
                self.u16(v4.port());
                self.u8(4);
                self.u8(0);
                self.u32(0);
                self.u32(0);
            }
            SocketAddr::V6(v6) => {
                self.padded(&v6.ip().octets(), 16);
                self.u16(v6.port());
                self.u8(6);
                self.u8(0);
                self.u32(v6.flowinfo());
                self.u32(v6.scope_id());
            }
        }
        self.u32(0);
    }
}

/// Why a record did not decode; the reader wraps it into `ReadError::Corrupt`.
pub type DecResult<T> = Result<T, String>;

/// Reads little-endian fields from a byte slice, never past its end.
pub struct Dec<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Dec { b, pos: 0 }
    }
    pub fn at(b: &'a [u8], pos: usize) -> Self {
        Dec { b, pos }
    }
    pub fn bytes(&mut self, n: usize) -> DecResult<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or("offset overflow")?;
        let s = self.b.get(self.pos..end).ok_or_else(|| format!("record cut at byte {}", self.pos))?;
        self.pos = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> DecResult<u8> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> DecResult<u16> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().map_err(|_| "u16")?))
    }
    pub fn u32(&mut self) -> DecResult<u32> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().map_err(|_| "u32")?))
    }
    pub fn u64(&mut self) -> DecResult<u64> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().map_err(|_| "u64")?))
    }
    pub fn f64(&mut self) -> DecResult<f64> {
        Ok(f64::from_bits(self.u64()?))
    }
    pub fn skip(&mut self, n: usize) -> DecResult<()> {
        self.bytes(n).map(|_| ())
    }
    /// A string of `len` bytes stored in a `width`-byte field.
    pub fn str_field(&mut self, len: usize, width: usize, what: &str) -> DecResult<String> {
        let field = self.bytes(width)?;
        let s = field.get(..len).ok_or_else(|| format!("{what} length {len} exceeds {width}"))?;
        std::str::from_utf8(s).map(str::to_owned).map_err(|_| format!("{what} is not UTF-8"))
    }
    pub fn addr(&mut self) -> DecResult<SocketAddr> {
        let ip: [u8; 16] = self.bytes(16)?.try_into().map_err(|_| "ip")?;
        let port = self.u16()?;
        let family = self.u8()?;
        self.skip(1)?;
        let flowinfo = self.u32()?;
        let scope_id = self.u32()?;
        self.skip(4)?;
        match family {
            4 => Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]), port))),
            6 => Ok(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope_id))),
            f => Err(format!("address family {f}")),
        }
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
