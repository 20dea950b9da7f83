//! What is on the screen, whatever the source: the reports of every host
//! flattened into one list of backends, one merged feed and the banners.
//! Both the TUI and the plain-text snapshot render a [`Board`].

use std::cmp::Ordering;

use upstreamtop_report::schema::{Peer, Recent, Report};

use crate::cli::SortKey;

/// Group name shown for peers no `upstream {}` lists: the name the
/// endpoint's `?upstream=` takes for them, so `--upstream unlisted` works.
pub const UNLISTED: &str = upstreamtop_report::UNLISTED;

/// One backend row.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Stable identity across polls: host, group, server.
    pub key: String,
    /// The nginx host it was seen from; empty with a single host.
    pub host: String,
    pub upstream: String,
    /// Whose view the peer's `nginx` figures are (the group's `scope`:
    /// `all_workers`, `worker`, `unknown`, `none`; empty from older modules).
    pub scope: String,
    /// The worker whose figures a group without `zone` shows.
    pub worker_pid: u32,
    pub peer: Peer,
    /// Requests per second per interval, oldest first: the probe's history
    /// when it sends one, else what this dashboard has seen.
    pub history: Vec<f64>,
}

impl Backend {
    /// `group server`, with the host in front when several are watched.
    pub fn label(&self) -> String {
        let mut s = String::new();
        if !self.host.is_empty() {
            s.push_str(&self.host);
            s.push(' ');
        }
        if !self.upstream.is_empty() {
            s.push_str(&self.upstream);
            s.push(' ');
        }
        s.push_str(&self.peer.server);
        s
    }

    /// Case-insensitive substring match on anything an operator might type.
    pub fn matches(&self, filter: &str) -> bool {
        if filter.is_empty() {
            return true;
        }
        let f = filter.to_lowercase();
        let hit = |s: &str| s.to_lowercase().contains(&f);
        hit(&self.host)
            || hit(&self.upstream)
            || hit(&self.peer.server)
            || hit(&self.peer.name)
            || hit(&self.peer.state)
            || self.peer.routes.iter().any(|r| hit(&r.path) || hit(&r.method))
    }
}

/// One line of the recent feed.
#[derive(Debug, Clone)]
pub struct RecentRow {
    pub host: String,
    pub req: Recent,
}

impl RecentRow {
    /// The request's group, [`UNLISTED`] for peers no group lists.
    pub fn group(&self) -> &str {
        if self.req.upstream.is_empty() {
            UNLISTED
        } else {
            &self.req.upstream
        }
    }

    /// Same rule as [`Backend::matches`], so a filter narrows the feed too.
    pub fn matches(&self, filter: &str) -> bool {
        if filter.is_empty() {
            return true;
        }
        let f = filter.to_lowercase();
        [&self.host, self.group(), &self.req.server, &self.req.path, &self.req.method]
            .iter()
            .any(|s| s.to_lowercase().contains(&f))
    }
}

/// How one host fared this round.
#[derive(Debug, Clone)]
pub struct HostLine {
    pub host: String,
    /// The current error, if the last poll failed.
    pub error: Option<String>,
    /// Shown figures are older than the last poll (Unix ms of the report).
    pub showing_old: Option<u64>,
    pub probe_state: ProbeState,
    pub probe_age_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeState {
    Up,
    Stale,
    Down,
    /// The endpoint did not answer: nothing is known about the probe.
    NoAnswer,
    Unknown,
}

impl ProbeState {
    pub fn label(self) -> &'static str {
        match self {
            ProbeState::Up => "probe up",
            ProbeState::Stale => "probe STALE",
            ProbeState::Down => "probe DOWN",
            ProbeState::NoAnswer => "NO ANSWER",
            ProbeState::Unknown => "no data",
        }
    }
}

/// Everything one frame shows.
#[derive(Debug, Clone, Default)]
pub struct Board {
    pub hosts: Vec<HostLine>,
    pub rps: f64,
    pub errors_rps: f64,
    pub window_ms: u64,
    /// Newest report time (Unix ms); 0 without data.
    pub timestamp: u64,
    pub backends: Vec<Backend>,
    /// Newest first.
    pub recent: Vec<RecentRow>,
    /// Events the probes could not count in full (ring buffer full, tables
    /// full, parse errors), summed over hosts; the feed's deliberate
    /// sampling is left out.
    pub drops: u64,
}

impl Board {
    /// Merges per-host reports. `reports[i]` is the latest good report of
    /// `hosts[i]` (possibly from an earlier poll), `None` if never had.
    pub fn build(hosts: Vec<HostLine>, reports: &[Option<&Report>]) -> Board {
        let multi = hosts.len() > 1;
        let mut b = Board { hosts, ..Board::default() };
        for (i, report) in reports.iter().enumerate() {
            let Some(r) = report else { continue };
            let host = if multi { b.hosts[i].host.clone() } else { String::new() };
            b.rps += r.totals.rps;
            b.errors_rps += r.totals.errors_rps;
            b.window_ms = b.window_ms.max(r.probe.interval_ms);
            b.timestamp = b.timestamp.max(r.timestamp);
            b.drops +=
                r.probe.drops.iter().filter(|(k, _)| k.as_str() != "recent_sampled_out").map(|(_, v)| v).sum::<u64>();
            let groups =
                r.upstreams.iter().map(|(n, u)| (n.as_str(), u)).chain(std::iter::once((UNLISTED, &r.unlisted)));
            for (group, up) in groups {
                for p in &up.peers {
                    b.backends.push(Backend {
                        key: format!("{host}\u{0}{group}\u{0}{}", p.server),
                        host: host.clone(),
                        upstream: group.to_string(),
                        scope: up.scope.clone(),
                        worker_pid: up.worker_pid,
                        peer: p.clone(),
                        history: p.history.as_ref().map(|h| h.rps.clone()).unwrap_or_default(),
                    });
                }
            }
            b.recent.extend(r.recent.iter().map(|req| RecentRow { host: host.clone(), req: req.clone() }));
        }
        b.recent.sort_by_key(|r| std::cmp::Reverse(r.req.time));
        b
    }

    /// Backends matching `filter`, ranked by `sort`.
    pub fn ranked(&self, sort: SortKey, filter: &str) -> Vec<&Backend> {
        let mut v: Vec<&Backend> = self.backends.iter().filter(|b| b.matches(filter)).collect();
        v.sort_by(|a, b| compare(a, b, sort));
        v
    }
}

fn desc(a: f64, b: f64) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

fn by_name(a: &Backend, b: &Backend) -> Ordering {
    (&a.host, &a.upstream, &a.peer.server).cmp(&(&b.host, &b.upstream, &b.peer.server))
}

/// Ties fall back to the name, so equal rows never swap places between frames.
fn compare(a: &Backend, b: &Backend, sort: SortKey) -> Ordering {
    let (pa, pb) = (&a.peer, &b.peer);
    let primary = match sort {
        SortKey::Rps => desc(pa.rps, pb.rps).then(pb.requests.cmp(&pa.requests)),
        SortKey::Latency => desc(pa.header_time_window.p99, pb.header_time_window.p99)
            .then(desc(pa.header_time_window.avg, pb.header_time_window.avg))
            .then(desc(pa.header_time_total.p99, pb.header_time_total.p99)),
        SortKey::Errors => desc(pa.errors_rps, pb.errors_rps)
            .then(pb.responses.c5xx.cmp(&pa.responses.c5xx))
            .then(pb.no_response.cmp(&pa.no_response)),
        SortKey::Name => Ordering::Equal,
    };
    primary.then_with(|| by_name(a, b))
}
