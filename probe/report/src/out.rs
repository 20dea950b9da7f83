//! The output buffer every answer is written into, and the number and
//! string spellings both formats share.
//!
//! Answers are written by hand rather than through `serde_json` or `fmt`:
//! a thousand peers make megabytes of text, and writing keys as literal
//! chunks and numbers from registers into a pre-sized buffer is what keeps
//! a fresh render within a few milliseconds. The spellings are exactly
//! what serde gives for the same values (`tests` and the schema tests in
//! `crate::tests` hold them to it).

/// Rounds to 3 decimals: µs for ms figures, thousandths for rates. Keeps
/// the answer short and readable.
pub fn round3(v: f64) -> f64 {
    if !v.is_finite() {
        return 0.0;
    }
    let x = v * 1000.0;
    // Same as x.round(), minus a libm call per figure (hot: history arrays).
    let r = if x.abs() < 1e15 { (round_i64(x) as f64).copysign(x) } else { x.round() };
    r / 1000.0
}

/// Nanoseconds as milliseconds, rounded to µs.
pub fn ms(ns: u64) -> f64 {
    round3(ns as f64 / 1e6)
}

/// `x.round() as i64` (half away from zero) for `|x| < 1e15`, without the
/// libm call `round` compiles to on baseline x86-64: truncation is exact
/// there, and so is the fraction it leaves.
pub(crate) fn round_i64(x: f64) -> i64 {
    let t = x as i64;
    let f = x - t as f64;
    if f >= 0.5 {
        t + 1
    } else if f <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// Two-digit decimal pairs, "00" to "99".
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes the decimal digits of `v` from `out[start]` on; returns where
/// they end. `start` must leave room for 20 digits.
#[inline(always)]
fn digits_at(out: &mut [u8; 24], start: usize, mut v: u64) -> usize {
    let end = start + v.checked_ilog10().map_or(1, |l| l as usize + 1);
    let mut i = end;
    while v >= 100 {
        let p = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        out[i] = PAIRS[p];
        out[i + 1] = PAIRS[p + 1];
    }
    if v >= 10 {
        let p = v as usize * 2;
        i -= 2;
        out[i] = PAIRS[p];
        out[i + 1] = PAIRS[p + 1];
    } else {
        i -= 1;
        out[i] = b'0' + v as u8;
    }
    end
}

/// The eight decimal digits of `v < 10^8` (leading zeros included) as
/// ASCII in the bytes of a little-endian word, most significant first:
/// split into 4-digit halves, then pairs, then digits, all lanes at once
/// (the multiply-shift pairs divide exactly by 100 below 43,699 and by 10
/// below 179, and no lane carries into its neighbour).
#[inline(always)]
fn swar8(v: u32) -> u64 {
    let x = u64::from(v / 10_000) | (u64::from(v % 10_000) << 32);
    let q = ((x * 10_486) >> 20) & 0x0000_007F_0000_007F;
    let y = q | ((x - q * 100) << 16);
    let q = ((y * 103) >> 10) & 0x000F_000F_000F_000F;
    let z = q | ((y - q * 10) << 8);
    z + 0x3030_3030_3030_3030
}

/// Decimals printed of `frac < 1000` thousandths: trailing zeros dropped,
/// at least one kept (`.0`, `.5`, `.25`, `.125`).
#[inline(always)]
fn keep_digits(frac: u32) -> usize {
    if !frac.is_multiple_of(10) {
        3
    } else if !frac.is_multiple_of(100) {
        2
    } else {
        1
    }
}

/// True when `bytes` holds no control byte, `"`, `\\` or `?`: a string
/// JSON takes as it is, and a path with no query to cut. Eight bytes per
/// step (the exact zero-byte tests of "Bit Twiddling Hacks"); the
/// byte-by-byte scans this replaces were a third of a route's cost.
#[inline]
pub(crate) fn nothing_to_escape_or_cut(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    #[inline(always)]
    fn word_plain(w: u64) -> bool {
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        let control = w.wrapping_sub(0x20 * ONES) & !w & HIGH;
        (control
            | zero(w ^ (u64::from(b'"') * ONES))
            | zero(w ^ (u64::from(b'\\') * ONES))
            | zero(w ^ (u64::from(b'?') * ONES)))
            == 0
    }
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
    if bytes.len() < 8 {
        // Assembled in a register: a padded stack copy read back as a word
        // would stall on store forwarding.
        let w = bytes.iter().rev().fold(0u64, |w, &b| w << 8 | u64::from(b));
        return word_plain(w | (u64::from(b'a') * ONES) << (bytes.len() * 8));
    }
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        if !word_plain(word(c)) {
            return false;
        }
    }
    // The last 8 bytes again, overlapping what was checked.
    chunks.remainder().is_empty() || word_plain(word(&bytes[bytes.len() - 8..]))
}

/// The output buffer, with one method per JSON shape. Bytes rather than a
/// `String` so numbers go in with one copy from a stack buffer; everything
/// written is ASCII or comes from a `&str`, so it stays UTF-8.
pub(crate) struct Out(pub(crate) Vec<u8>);

impl Out {
    /// The text written (always UTF-8: see the type's comment).
    pub(crate) fn into_string(self) -> String {
        String::from_utf8(self.0).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    #[inline]
    pub(crate) fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    /// Decimal digits of `v`. Below 10^16 (every counter in practice) the
    /// digits are computed in registers and stored as whole words:
    /// building them byte by byte in a stack array and copying that out
    /// made the CPU wait on store forwarding for every number.
    #[inline(always)]
    pub(crate) fn u64(&mut self, v: u64) {
        if v < 100_000_000 {
            self.digits8(v as u32);
        } else {
            self.u64_long(v);
        }
    }

    /// [`Self::u64`] from 10^8 on (byte counts, timestamps).
    #[inline(never)]
    fn u64_long(&mut self, v: u64) {
        if v < 10_000_000_000_000_000 {
            self.digits8((v / 100_000_000) as u32);
            self.put_word(swar8((v % 100_000_000) as u32), 8);
        } else {
            let mut out = [0u8; 24];
            let n = digits_at(&mut out, 0, v);
            self.put(&out, n);
        }
    }

    /// `v < 10^8` without leading zeros.
    #[inline(always)]
    fn digits8(&mut self, v: u32) {
        if v < 10 {
            // Zeros and single digits: most class and code counts of a
            // route, no conversion needed.
            self.0.push(b'0' + v as u8);
            return;
        }
        if v < 100 {
            let p = v as usize * 2;
            self.0.extend_from_slice(&[PAIRS[p], PAIRS[p + 1]]);
            return;
        }
        if v < 10_000 {
            // Three or four digits: two pairs.
            let (hi, lo) = (v / 100, v % 100);
            let (h, l) = (hi as usize * 2, lo as usize * 2);
            let word = if hi < 10 {
                u64::from(b'0' + hi as u8) | u64::from(PAIRS[l]) << 8 | u64::from(PAIRS[l + 1]) << 16
            } else {
                u64::from(PAIRS[h])
                    | u64::from(PAIRS[h + 1]) << 8
                    | u64::from(PAIRS[l]) << 16
                    | u64::from(PAIRS[l + 1]) << 24
            };
            self.put_word(word, if hi < 10 { 3 } else { 4 });
            return;
        }
        let n = v.ilog10() as usize + 1;
        self.put_word(swar8(v) >> ((8 - n) * 8), n);
    }

    /// Appends the first `n` (≤ 8) bytes of `word` (little-endian): one
    /// 8-byte store, then the length is cut back.
    #[inline(always)]
    fn put_word(&mut self, word: u64, n: usize) {
        let len = self.0.len();
        self.0.extend_from_slice(&word.to_le_bytes());
        self.0.truncate(len + n);
    }

    /// `a / 1000` as `int.frac` with 1–3 decimals (what [`Self::f64`]
    /// prints for a float with at most three): below 10^8 the integer and
    /// the fraction come from one SWAR conversion of `a`.
    #[inline(always)]
    fn milli(&mut self, a: u64) {
        if a < 100_000 {
            // Up to "99.999" (most latencies in ms, most rates): integer
            // digits, point and decimals assembled in one word from the
            // pairs table (cheaper than a full SWAR conversion for five
            // digits).
            let a = a as u32;
            let int = a / 1000;
            let frac = a - int * 1000;
            let hundreds = frac / 100;
            let p = (frac - hundreds * 100) as usize * 2;
            let (tens, ones) = (PAIRS[p], PAIRS[p + 1]);
            let decimals = u64::from(b'0' + hundreds as u8) | u64::from(tens) << 8 | u64::from(ones) << 16;
            let (int_word, n_int) = if int < 10 {
                (u64::from(b'0' + int as u8), 1)
            } else {
                let q = int as usize * 2;
                (u64::from(PAIRS[q]) | u64::from(PAIRS[q + 1]) << 8, 2)
            };
            // Trailing zeros dropped, one decimal always kept.
            let keep = if ones != b'0' {
                3
            } else if tens != b'0' {
                2
            } else {
                1
            };
            self.put_word(int_word | u64::from(b'.') << (8 * n_int) | decimals << (8 * (n_int + 1)), n_int + 1 + keep);
        } else if a < 100_000_000 {
            let a = a as u32;
            let digits = swar8(a);
            // Integer digits: those above the last three, at least one.
            let n_int = a.checked_ilog10().map_or(1, |l| (l as usize + 1).saturating_sub(3).max(1));
            self.put_word(digits >> ((5 - n_int) * 8), n_int);
            self.put_word(u64::from(b'.') | ((digits >> 40) << 8), 1 + keep_digits(a % 1000));
        } else {
            self.u64(a / 1000);
            self.frac3((a % 1000) as u32);
        }
    }

    /// `.d`, `.dd` or `.ddd` for `frac < 1000` thousandths, trailing zeros
    /// dropped but one digit always kept (`.0`, `.5`, `.25`, `.125`).
    #[inline(always)]
    fn frac3(&mut self, frac: u32) {
        // swar8 puts the three digits in bytes 5..8.
        self.put_word(u64::from(b'.') | ((swar8(frac) >> 40) << 8), 1 + keep_digits(frac));
    }

    /// Appends `out[..n]`. The whole array goes in as one fixed-size copy
    /// (a few vector moves, where a variable-length copy is a `memcpy`
    /// call), then the length is cut back.
    #[inline]
    fn put(&mut self, out: &[u8; 24], n: usize) {
        let len = self.0.len();
        self.0.extend_from_slice(out);
        self.0.truncate(len + n);
    }

    pub(crate) fn bool(&mut self, v: bool) {
        self.raw(if v { "true" } else { "false" });
    }

    /// Report floats are rounded to 3 decimals: print those as fixed point
    /// (exact: the text parses back to the same f64); anything else falls
    /// back to Rust's shortest round-trip form.
    pub(crate) fn f64(&mut self, v: f64) {
        if !v.is_finite() {
            // JSON has no NaN/inf; the report never produces them.
            return self.raw("0.0");
        }
        // Whole numbers (counts per second, most history figures): no
        // division needed to know the text is exact. -0.0 prints "0.0".
        let t = v as i64;
        if t as f64 == v && t.unsigned_abs() < 1_000_000_000_000 {
            if t < 0 {
                self.0.push(b'-');
            }
            self.u64(t.unsigned_abs());
            self.raw(".0");
            return;
        }
        let x = v * 1000.0;
        if x.abs() < 1e15 {
            let m = round_i64(x);
            if m.unsigned_abs() < 1_000_000_000_000_000 && m as f64 / 1000.0 == v {
                // Sign, integer part, point, 1–3 decimals.
                if m < 0 {
                    self.0.push(b'-');
                }
                self.milli(m.unsigned_abs());
                return;
            }
        }
        use std::io::Write;
        let _ = write!(self.0, "{v:?}");
    }

    /// What [`Self::f64`] prints for [`round3`]`(x)`, from
    /// the rounded integer thousandths directly: below 10^15 thousandths
    /// `round3(x)` is the double nearest `r / 1000` for the integer
    /// `r = round(x × 1000)`, and `f64` finds that same `r` again (the
    /// double's error, times 1000, is far below one half) and prints its
    /// digits. This skips the division and the second rounding.
    #[inline]
    pub(crate) fn round3(&mut self, x: f64) {
        let y = x * 1000.0;
        // False for NaN and infinities too.
        if y.abs() < 1e15 {
            let r = round_i64(y);
            if r < 0 {
                self.0.push(b'-');
            }
            self.milli(r.unsigned_abs());
        } else {
            self.f64(round3(x));
        }
    }

    /// `n` then `.0`: a whole count as [`Self::f64`] prints it, in one
    /// word below 10^6.
    #[inline(always)]
    pub(crate) fn count_as_float(&mut self, n: u32) {
        const POINT_ZERO: u64 = 0x302e; // ".0"
        if n < 10 {
            // Most 5xx counts of a history (and quiet peers' requests).
            self.put_word(u64::from(b'0' + n as u8) | POINT_ZERO << 8, 3);
        } else if n < 100 {
            let p = n as usize * 2;
            self.put_word(u64::from(PAIRS[p]) | u64::from(PAIRS[p + 1]) << 8 | POINT_ZERO << 16, 4);
        } else if n < 1_000_000 {
            let d = n.checked_ilog10().map_or(1, |l| l as usize + 1);
            let word = (swar8(n) >> ((8 - d) * 8)) | (u64::from(u16::from_le_bytes(*b".0")) << (d * 8));
            self.put_word(word, d + 2);
        } else {
            self.u64(n.into());
            self.raw(".0");
        }
    }

    /// `n / 1000` as [`Self::f64`] prints `round3(n as f64 / 1000.0)`, for
    /// `n < 2^32`: that float is the double nearest `n / 1000`, whose
    /// three-decimal text is exactly the integer's digits (no float work).
    #[inline]
    pub(crate) fn thousandths(&mut self, n: u32) {
        self.milli(n.into());
    }

    /// What [`Self::f64`] prints for [`ms`]`(ns)`, in
    /// integers when that is provably the same text: below 2^50 ns the two
    /// float roundings in `ms` move `ns / 1000` by less than 0.0003, so
    /// rounding to whole µs can only differ from integer rounding at an
    /// exact half (`ns % 1000 == 500`), which takes the float path.
    #[inline(always)]
    pub(crate) fn ms(&mut self, ns: u64) {
        if ns < 1 << 50 && ns % 1000 != 500 {
            self.milli((ns + 500) / 1000);
        } else {
            self.f64(ms(ns));
        }
    }

    /// `{"avg":…,"p50":…,"p90":…,"p99":…}` of nanosecond figures in ms, as
    /// the JSON writer prints percentiles.
    pub(crate) fn ms_percentiles(&mut self, avg: u64, p50: u64, p90: u64, p99: u64) {
        self.raw("{\"avg\":");
        self.ms(avg);
        self.raw(",\"p50\":");
        self.ms(p50);
        self.raw(",\"p90\":");
        self.ms(p90);
        self.raw(",\"p99\":");
        self.ms(p99);
        self.raw("}");
    }

    /// `"bytes"`, for bytes [`nothing_to_escape_or_cut`] accepted.
    #[inline]
    pub(crate) fn quoted(&mut self, bytes: &[u8]) {
        self.0.reserve(bytes.len() + 2);
        self.0.push(b'"');
        self.short(bytes);
        self.0.push(b'"');
    }

    /// Appends `b`; strings up to 64 bytes (methods, paths, addresses) as
    /// fixed-size 8- or 16-byte copies, the last one overlapping, instead
    /// of a `memcpy` call each.
    #[inline(always)]
    fn short(&mut self, b: &[u8]) {
        fn at<const N: usize>(b: &[u8], i: usize) -> &[u8; N] {
            b[i..i + N].try_into().expect("N bytes")
        }
        let (n, start) = (b.len(), self.0.len());
        if (16..=64).contains(&n) {
            let mut i = 0;
            while i + 16 <= n {
                self.0.extend_from_slice(at::<16>(b, i));
                i += 16;
            }
            if i < n {
                self.0.truncate(start + n - 16);
                self.0.extend_from_slice(at::<16>(b, n - 16));
            }
        } else if (8..16).contains(&n) {
            self.0.extend_from_slice(at::<8>(b, 0));
            self.0.truncate(start + n - 8);
            self.0.extend_from_slice(at::<8>(b, n - 8));
        } else {
            self.0.extend_from_slice(b);
        }
    }

    /// A quoted, escaped string (the escapes serde_json uses).
    pub(crate) fn str(&mut self, s: &str) {
        self.str_bytes(s.as_bytes());
    }

    /// [`Self::str`] for the bytes of a `&str` (callers pass whole strings
    /// or prefixes cut at an ASCII byte, so the output stays UTF-8).
    pub(crate) fn str_bytes(&mut self, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // Nearly every string (addresses, names, paths) needs no escape.
        if nothing_to_escape_or_cut(bytes) || !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
            self.0.reserve(bytes.len() + 2);
            self.0.push(b'"');
            self.0.extend_from_slice(bytes);
            self.0.push(b'"');
            return;
        }
        self.0.push(b'"');
        for &b in bytes {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0..=0x1f => &[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]],
                _ => {
                    self.0.push(b);
                    continue;
                }
            };
            self.0.extend_from_slice(esc);
        }
        self.0.push(b'"');
    }
}

/// `write!` into the buffer, for the few figures spelled by `fmt` (floats
/// whose exact shortest form matters more than speed).
impl std::fmt::Write for Out {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.raw(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_escape_or_cut_finds_every_special_byte() {
        for len in 0..40usize {
            for at in 0..len.max(1) {
                for b in 0..=255u8 {
                    let mut v = vec![b'x'; len];
                    if len > 0 {
                        v[at] = b;
                    }
                    let special = len > 0 && (b < 0x20 || b == b'"' || b == b'\\' || b == b'?');
                    assert_eq!(nothing_to_escape_or_cut(&v), !special, "len {len} at {at} byte {b}");
                }
            }
        }
    }

    #[test]
    fn short_copies_any_length() {
        let src: Vec<u8> = (0..200u8).map(|i| b'a' + i % 26).collect();
        for n in 0..200 {
            let mut w = Out(b"xy".to_vec());
            w.quoted(&src[..n]);
            assert_eq!(w.0, [&b"xy\""[..], &src[..n], b"\""].concat(), "{n}");
        }
    }

    #[test]
    fn fixed_point_floats() {
        let f = |v: f64| {
            let mut w = Out(Vec::new());
            w.f64(v);
            w.into_string()
        };
        assert_eq!(f(4.0), "4.0");
        assert_eq!(f(0.6), "0.6");
        assert_eq!(f(1.25), "1.25");
        assert_eq!(f(0.001), "0.001");
        assert_eq!(f(-0.05), "-0.05");
        assert_eq!(f(f64::NAN), "0.0");
        for m in 0..20_000i64 {
            let v = m as f64 / 1000.0;
            assert_eq!(f(v).parse::<f64>().unwrap(), v);
        }
    }

    /// The straightforward spelling the fast paths replace: `round()` and a
    /// fixed-point print when exact, else Rust's shortest form.
    fn reference(v: f64) -> String {
        if !v.is_finite() {
            return "0.0".into();
        }
        let m = (v * 1000.0).round();
        if m.abs() < 1e15 && m / 1000.0 == v {
            let m = m as i64;
            let frac = format!("{:03}", m.unsigned_abs() % 1000);
            let frac = frac.trim_end_matches('0');
            let sign = if m < 0 { "-" } else { "" };
            format!("{sign}{}.{}", m.unsigned_abs() / 1000, if frac.is_empty() { "0" } else { frac })
        } else {
            format!("{v:?}")
        }
    }

    #[test]
    fn fast_floats_match_the_reference() {
        let f = |v: f64| {
            let mut w = Out(Vec::new());
            w.f64(v);
            w.into_string()
        };
        let mut vals = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1e12,
            1e12 - 1.0,
            -1e12,
            999_999_999_999.999,
            1e15,
            1e20,
            0.1 + 0.2,
            2.0005,
            -2.0005,
        ];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let scale = [1.0, 1e-3, 1e3, 1e6, 1e-6, 1e9][(x % 6) as usize];
            let v = (x >> 11) as f64 / (1u64 << 53) as f64 * scale * if x & 1 == 0 { 1.0 } else { -1.0 };
            vals.extend([v, round3(v), (v * 1000.0).round() / 1000.0, v.trunc()]);
        }
        let u = |v: u64| {
            let mut w = Out(Vec::new());
            w.u64(v);
            w.into_string()
        };
        for v in [0, 9, 10, 99, 100, 101, 999, 1000, 12345, u64::from(u32::MAX), u64::MAX - 1, u64::MAX]
            .into_iter()
            .chain((0..64).map(|b| 1u64 << b))
            .chain((1..20).map(|e| 10u64.pow(e) - 1))
        {
            assert_eq!(u(v), v.to_string());
        }
        let th = |n: u32| {
            let mut w = Out(Vec::new());
            w.thousandths(n);
            w.into_string()
        };
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..300_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Every digit count, and every value up to 10^5.
            let v = [i, x, x >> (x % 64), 99_999_990 + i % 20, 9_999_999_999_999_990 + i % 20][(i % 5) as usize];
            assert_eq!(u(v), v.to_string());
        }
        let ms_text = |ns: u64| {
            let mut w = Out(Vec::new());
            w.ms(ns);
            w.into_string()
        };
        for i in 0..400_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let around = |c: u64| c.saturating_sub(3) + x % 7;
            let ns =
                [i, x, x >> (x % 64), around((x >> 20) / 1000 * 1000 + 500), around(1 << 50), around((x >> 14) * 1000)]
                    [(i % 6) as usize];
            assert_eq!(ms_text(ns), f(ms(ns)), "{ns}");
        }
        let r3 = |x: f64| {
            let mut w = Out(Vec::new());
            w.round3(x);
            w.into_string()
        };
        let wh = |n: u32| {
            let mut w = Out(Vec::new());
            w.count_as_float(n);
            w.into_string()
        };
        for i in 0..400_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
            let scale = [1.0, 1e-3, 1e3, 1e6, 1e-6, 1e9, 1e12, 1e15][(x % 8) as usize];
            let sign = if x & 1 == 0 { 1.0 } else { -1.0 };
            // Random magnitudes, exact halves of a thousandth, integers.
            let v = [unit * scale * sign, ((x >> 20) as f64 + 0.5) / 1000.0 * sign, (x >> (x % 64)) as f64 * sign]
                [(i % 3) as usize];
            assert_eq!(r3(v), f(round3(v)), "{v:?}");
            assert_eq!(wh(x as u32), f(f64::from(x as u32)), "{}", x as u32);
        }
        for v in [
            0.0,
            -0.0,
            0.0004,
            -0.0004,
            0.0005,
            -0.0005,
            1e12,
            999_999_999_999.999_5,
            f64::NAN,
            f64::INFINITY,
            -f64::INFINITY,
            1e300,
        ] {
            assert_eq!(r3(v), f(round3(v)), "{v:?}");
        }
        for n in [0, 9, 10, 99_999, 999_999, 1_000_000, u32::MAX] {
            assert_eq!(wh(n), f(f64::from(n)), "{n}");
        }
        for n in 0..200_000u32 {
            assert_eq!(wh(n), f(f64::from(n)), "{n}");
            assert_eq!(u(n.into()), n.to_string());
        }
        for n in (0..200_000u32).chain([u32::MAX, u32::MAX - 1, 4_294_967_000, 1 << 31]) {
            assert_eq!(th(n), f(round3(f64::from(n) / 1000.0)), "{n}");
        }
        for v in vals {
            assert_eq!(f(v), reference(v), "{v:?}");
            let r3 = if v.is_finite() { (v * 1000.0).round() / 1000.0 } else { 0.0 };
            assert_eq!(round3(v).to_bits(), r3.to_bits(), "round3({v:?})");
        }
    }
}
