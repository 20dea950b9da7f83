//! One [`TableReader`] per worker, kept between requests, and the answers
//! rendered from the publish it read last.
//!
//! nginx workers are single-threaded, so a thread-local is the whole
//! synchronisation story. The reader re-opens the file itself when the probe
//! replaces it; this file makes sure a path change (another
//! `upstreamtop_table` after a reload in single-process mode) gets a fresh
//! reader, and that a reader which panicked is never used again.
//!
//! Whatever is at the path cannot hold a worker: the reader opens it
//! `O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC`, reads only a regular
//! file (checked on the descriptor), and refuses one larger than its
//! header's capacities imply before copying anything; a FIFO, a symlink or
//! an oversized file is an [`Outcome::Unreadable`], answered 503 like any
//! other bad table.
//!
//! Why a cache: a dashboard or scraper polls several times per publish
//! interval, and a thousand peers make a body of megabytes. While the
//! probe has not published again (one `pread` of the header tells), the
//! same query against the same nginx configuration gets the body rendered
//! for the first request of the interval, with only its clock figures
//! (`timestamp`, `probe.age_ms`) rewritten — exactly what a fresh render
//! would give. A fresh publish is read in place
//! ([`TableReader::view_if_new`]) and rendered by
//! [`upstreamtop_report::render`], never decoded into a `Snapshot`.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use upstreamtop_report::{NginxConfig, Query, RenderedBody};
use upstreamtop_table::{ProbeMeta, PublishId, ReadError, SnapshotView, TableReader};

/// Bodies kept per worker for the current publish (one per distinct
/// query/format; a dashboard and a scraper typically need two).
const MAX_CACHED: usize = 3;

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

struct Worker {
    path: PathBuf,
    reader: TableReader,
    /// The publish the cached bodies come from.
    publish: Option<(PublishId, ProbeMeta)>,
    cached: Vec<(Key, Body)>,
    /// A body no request sends any more, kept as the buffer of the next
    /// render (megabytes at a thousand peers: writing into mapped memory
    /// spares the page faults of a fresh allocation).
    spare: Vec<u8>,
}

/// What a body depends on besides the publish and the clock: the query and
/// nginx's configuration without the balancers' live state
/// ([`NginxConfig::without_live_state`]; otherwise every request under load
/// would see new in-flight counts and render afresh).
#[derive(PartialEq, Hash)]
struct Key {
    query: Query,
    conf: NginxConfig,
}

/// A rendered answer, shared between the cache and the requests still
/// sending it.
pub(crate) type Body = Rc<Rendered>;

pub(crate) struct Rendered {
    /// Restamp with [`RenderedBody::at`] before sending.
    pub body: RenderedBody,
    /// A weak entity tag naming the publish, the query and the
    /// configuration the body was rendered from (and the clock, for a body
    /// that depends on it): equal tags, equal figures.
    pub etag: String,
}

pub(crate) enum Outcome {
    Unreadable(ReadError),
    /// The probe's last publish is too old to show.
    Stale {
        age_s: u64,
        published_unix_ns: u64,
    },
    Ready(Body),
}

/// The answer for `query` from the table at `path`.
///
/// May panic if the reader or a renderer does (the caller catches it); the
/// worker state is taken out of the slot while in use, so a panic drops it
/// and the next request starts from a fresh reader and an empty cache.
pub(crate) fn answer(path: &Path, conf: NginxConfig, query: Query, now_unix_ns: u64) -> Outcome {
    let slot = WORKER.with(|cell| cell.borrow_mut().take());
    let mut worker = match slot {
        Some(w) if w.path == path => w,
        _ => Worker {
            path: path.to_owned(),
            reader: TableReader::new(path),
            publish: None,
            cached: Vec::new(),
            spare: Vec::new(),
        },
    };
    let key = Key { query, conf: conf.without_live_state() };
    let outcome = worker.answer(key, &conf, now_unix_ns);
    WORKER.with(|cell| *cell.borrow_mut() = Some(worker));
    outcome
}

impl Worker {
    fn answer(&mut self, key: Key, live: &NginxConfig, now: u64) -> Outcome {
        let known = self.publish.as_ref().map(|(id, _)| *id);
        let Worker { reader, publish, cached, spare, .. } = self;
        let view = match reader.view_if_new(known) {
            Err(e) => {
                *publish = None;
                cached.clear();
                return Outcome::Unreadable(e);
            }
            Ok(Some(view)) => view,
            Ok(None) => {
                // Same publish: staleness moves with the clock, the body does not.
                if let Some((_, meta)) = publish.as_ref() {
                    if let Some(stale) = stale(meta, now) {
                        return stale;
                    }
                }
                if let Some((_, body)) = cached.iter().find(|(k, _)| *k == key) {
                    return Outcome::Ready(body.clone());
                }
                // Not rendered yet for this query: read the publish again
                // (it may be newer by now, which is just as good).
                match reader.view_if_new(None) {
                    Ok(Some(view)) => view,
                    Ok(None) => return Outcome::Unreadable(ReadError::Busy(reader.path().to_owned())),
                    Err(e) => {
                        *publish = None;
                        cached.clear();
                        return Outcome::Unreadable(e);
                    }
                }
            }
        };
        if known != Some(view.id()) {
            *publish = Some((view.id(), view.meta().clone()));
            for (_, body) in cached.drain(..) {
                recycle(spare, body);
            }
        }
        if let Some(stale) = stale(view.meta(), now) {
            return stale;
        }
        let body = Rc::new(render(&view, &key, live, now, spare));
        if !body.body.clock_dependent {
            if cached.len() >= MAX_CACHED {
                let (_, old) = cached.remove(0);
                recycle(spare, old);
            }
            cached.push((key, body.clone()));
        }
        Outcome::Ready(body)
    }
}

fn stale(meta: &ProbeMeta, now: u64) -> Option<Outcome> {
    meta.is_stale(now)
        .then(|| Outcome::Stale { age_s: meta.age_ns(now) / 1_000_000_000, published_unix_ns: meta.published_unix_ns })
}

/// Keeps the larger of `spare` and `body`'s buffer when no request still
/// sends `body` (a body in flight stays with its request's pool).
fn recycle(spare: &mut Vec<u8>, body: Body) {
    if let Ok(rendered) = Rc::try_unwrap(body) {
        if rendered.body.body.capacity() > spare.capacity() {
            *spare = rendered.body.body;
        }
    }
}

/// Renders `view` for `key` with nginx's `live` state into the `spare`
/// buffer, with its entity tag.
fn render(view: &SnapshotView, key: &Key, live: &NginxConfig, now: u64, spare: &mut Vec<u8>) -> Rendered {
    let body = upstreamtop_report::render(view, live, &key.query, now, std::mem::take(spare));
    // DefaultHasher::new() has fixed keys: every worker derives the same
    // tag for the same publish, so a poller balanced across workers still
    // gets its 304s.
    let mut h = DefaultHasher::new();
    view.id().hash(&mut h);
    key.hash(&mut h);
    if body.clock_dependent {
        // A peer's state was judged against the clock: the figures may
        // change within the publish, at most once per interval.
        (now / view.meta().interval_ns.max(1)).hash(&mut h);
    }
    Rendered { body, etag: format!("W/\"{:016x}\"", h.finish()) }
}
