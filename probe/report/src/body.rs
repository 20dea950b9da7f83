//! A rendered answer, and what a cache needs to send it again later in the
//! same publish interval.

use std::ops::Range;

/// A rendered answer, and what a cache needs to serve it again later in
/// the same publish interval.
#[derive(Debug, Clone)]
pub struct RenderedBody {
    /// The text (UTF-8; bytes because the module sends bytes and a
    /// `String` would cost a validation pass over megabytes).
    pub body: Vec<u8>,
    pub(crate) clock_fields: Option<ClockFields>,
    /// Some peer had no history samples, so its `state` was judged from
    /// its last request time against the clock: the body must not be
    /// reused at a later time.
    pub clock_dependent: bool,
}

/// Where the figures that move with the reader's clock sit in a JSON
/// body: the values of `"timestamp"` and `"probe"."age_ms"`.
#[derive(Debug, Clone)]
pub(crate) struct ClockFields {
    pub(crate) timestamp_at: Range<usize>,
    pub(crate) age_at: Range<usize>,
    pub(crate) published_unix_ns: u64,
}

/// A part of an answer to send: bytes that already exist, or a number to
/// spell out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPart<'a> {
    Bytes(&'a [u8]),
    Number(u64),
}

impl RenderedBody {
    /// A body that does not depend on the publish (the page).
    pub(crate) fn fixed(bytes: &[u8], mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(bytes);
        RenderedBody { body: buf, clock_fields: None, clock_dependent: false }
    }

    /// The body as it would be rendered at `now_unix_ns` from the same
    /// publish, configuration and query, in order (empty parts included).
    /// Only valid when [`Self::clock_dependent`] is false and the table is
    /// not stale at `now_unix_ns` (a stale table gets a 503, never this
    /// body).
    pub fn at(&self, now_unix_ns: u64) -> [BodyPart<'_>; 5] {
        let b = &self.body;
        let Some(c) = &self.clock_fields else {
            return [
                BodyPart::Bytes(b),
                BodyPart::Bytes(&[]),
                BodyPart::Bytes(&[]),
                BodyPart::Bytes(&[]),
                BodyPart::Bytes(&[]),
            ];
        };
        [
            BodyPart::Bytes(&b[..c.timestamp_at.start]),
            BodyPart::Number(now_unix_ns / 1_000_000),
            BodyPart::Bytes(&b[c.timestamp_at.end..c.age_at.start]),
            BodyPart::Number(now_unix_ns.saturating_sub(c.published_unix_ns) / 1_000_000),
            BodyPart::Bytes(&b[c.age_at.end..]),
        ]
    }
}
