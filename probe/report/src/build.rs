//! [`build_report`]: joins a table snapshot with nginx's configuration.
//!
//! Rules (see also `model.rs`):
//! - every configured server of every group is listed, with zero counts
//!   when the wire saw nothing; a peer listed by several groups shows the
//!   same wire figures in each (the wire cannot tell groups apart);
//! - wire peers no group lists go to `unlisted`, never dropped;
//! - nginx's own listening sockets (client traffic to nginx, e.g. a test
//!   client on loopback) are excluded everywhere, totals included;
//! - `totals` and `share` always cover every non-listener peer, whatever
//!   `?upstream=` selects;
//! - `?upstream=NAME` keeps only that group in `upstreams`; `unlisted` stays
//!   empty unless NAME is `unlisted` (then only `unlisted` is filled), and
//!   `recent` keeps only requests to the selected peers.

use std::collections::{BTreeMap, HashMap, HashSet};

use upstreamtop_table::{PeerStats, ProbeMeta, RecentRequest, RouteStats, Snapshot};

use crate::config::{NginxConfig, Query};
use crate::join::{key, show, AddrKey, ConfigIndex, Listeners};
use crate::model::{Probe, Recent, Report, Totals, Upstream};
use crate::peer::{self, add_table_responses, clean_path, ms, round3, PeerCtx};

/// Version of the JSON document (`Report::version`).
pub const SCHEMA_VERSION: u32 = 1;

/// The group name `?upstream=` uses for peers no group lists.
pub const UNLISTED: &str = "unlisted";

/// True when the probe last published more than `max(3 × interval, 5 s)`
/// before `now_unix_ns` (or never).
pub fn stale(snap: &Snapshot, now_unix_ns: u64) -> bool {
    stale_meta(&snap.meta, now_unix_ns)
}

/// [`stale`] from the probe's meta alone.
pub fn stale_meta(meta: &ProbeMeta, now_unix_ns: u64) -> bool {
    let after = meta.interval_ns.saturating_mul(3).max(5_000_000_000);
    meta.published_unix_ns == 0 || now_unix_ns.saturating_sub(meta.published_unix_ns) > after
}

/// Age of the last publish in whole seconds when the table is stale.
pub fn stale_age_s(snap: &Snapshot, now_unix_ns: u64) -> Option<u64> {
    stale_age_s_meta(&snap.meta, now_unix_ns)
}

/// [`stale_age_s`] from the probe's meta alone.
pub fn stale_age_s_meta(meta: &ProbeMeta, now_unix_ns: u64) -> Option<u64> {
    stale_meta(meta, now_unix_ns).then(|| now_unix_ns.saturating_sub(meta.published_unix_ns) / 1_000_000_000)
}

pub(crate) fn probe(m: &ProbeMeta, now_ns: u64) -> Probe {
    let c = &m.counters;
    let is_stale = stale_meta(m, now_ns);
    Probe {
        up: !is_stale,
        stale: is_stale,
        pid: m.pid,
        started: m.started_unix_ns / 1_000_000,
        last_publish: m.published_unix_ns / 1_000_000,
        age_ms: now_ns.saturating_sub(m.published_unix_ns) / 1_000_000,
        interval_ms: m.interval_ns / 1_000_000,
        interfaces: m.interfaces.clone(),
        drops: BTreeMap::from([
            ("events_dropped".to_owned(), c.events_dropped),
            ("conn_table_full".to_owned(), c.conn_table_full),
            ("peer_table_full".to_owned(), c.peer_table_full),
            ("recent_sampled_out".to_owned(), c.recent_sampled_out),
            ("parse_errors".to_owned(), c.parse_errors),
        ]),
        overflows: BTreeMap::from([
            ("route_overflow".to_owned(), c.route_overflow),
            ("conn_evicted".to_owned(), c.conn_evicted),
        ]),
    }
}

/// Builds the whole answer. `now_unix_ns` is the reader's wall clock.
pub fn build_report(snap: &Snapshot, conf: &NginxConfig, query: &Query, now_unix_ns: u64) -> Report {
    let listeners = Listeners::new(&conf.listen);
    let index = ConfigIndex::new(conf);

    // Wire peers by address, nginx's own sockets left out. Should the probe
    // ever report one address twice (e.g. mapped and plain IPv4), the first
    // joins the configuration and the others are shown as unlisted.
    let keys: Vec<AddrKey> = snap.peers.iter().map(|p| key(&p.addr)).collect();
    let counted: Vec<bool> = keys.iter().map(|k| !listeners.is_listener(k)).collect();
    let mut by_key: HashMap<AddrKey, usize> = HashMap::with_capacity(snap.peers.len());
    let mut extra: Vec<usize> = Vec::new();
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| counted[*i]) {
        if by_key.insert(*k, i).is_some() {
            extra.push(i);
        }
    }
    let mut routes_of: Vec<Vec<&RouteStats>> = vec![Vec::new(); snap.peers.len()];
    for r in &snap.routes {
        if let Some(v) = routes_of.get_mut(r.peer as usize) {
            v.push(r);
        }
    }

    let mut totals = Totals::default();
    for (p, _) in snap.peers.iter().zip(&counted).filter(|(_, c)| **c) {
        totals.requests += p.requests;
        totals.rps += p.window.requests_per_sec;
        add_table_responses(&mut totals.responses, &p.responses);
        totals.errors_rps += p.window.errors_5xx_per_sec;
        totals.sent += p.sent_bytes;
        totals.received += p.received_bytes;
    }
    let cx = PeerCtx { query, interval_ns: snap.meta.interval_ns, now_ns: now_unix_ns, total_rps: totals.rps };
    totals.rps = round3(totals.rps);
    totals.errors_rps = round3(totals.errors_rps);

    let wanted = |name: &str| query.upstream.as_deref().is_none_or(|u| u == name);
    let mut upstreams: BTreeMap<String, Upstream> = BTreeMap::new();
    for up in conf.upstreams.iter().filter(|u| wanted(&u.name)) {
        let group = upstreams.entry(up.name.clone()).or_default();
        group.implicit = up.implicit;
        let mut seen: HashSet<AddrKey> = HashSet::new();
        for s in &up.servers {
            let k = key(&s.addr);
            let i = by_key.get(&k).copied();
            let stats: Option<&PeerStats> = i.map(|i| &snap.peers[i]);
            let routes = i.map_or(&[][..], |i| &routes_of[i][..]);
            if let (Some(p), true) = (stats, seen.insert(k)) {
                group.requests += p.requests;
                group.rps += p.window.requests_per_sec;
            }
            group.peers.push(peer::peer(show(&k), Some(s), stats, routes, &cx));
        }
        group.rps = round3(group.rps);
    }

    let mut unlisted = Upstream::default();
    if query.upstream.as_deref().is_none_or(|u| u == UNLISTED) {
        let mut idx: Vec<usize> = by_key.iter().filter(|(k, _)| !index.is_listed(k)).map(|(_, &i)| i).collect();
        idx.extend(&extra);
        // Table order, not hash order: the rate sum and the order of equal
        // servers below must not depend on the hasher's seed.
        idx.sort_unstable();
        for &i in &idx {
            let p = &snap.peers[i];
            unlisted.requests += p.requests;
            unlisted.rps += p.window.requests_per_sec;
        }
        unlisted.rps = round3(unlisted.rps);
        unlisted.peers =
            idx.iter().map(|&i| peer::peer(show(&keys[i]), None, Some(&snap.peers[i]), &routes_of[i], &cx)).collect();
        unlisted.peers.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.server.cmp(&b.server)));
    }

    let recent = recent_list(&snap.recent, &listeners, &index, query);

    Report {
        version: SCHEMA_VERSION,
        nginx_version: conf.nginx_version.clone(),
        timestamp: now_unix_ns / 1_000_000,
        probe: probe(&snap.meta, now_unix_ns),
        totals,
        upstreams,
        unlisted,
        recent,
    }
}

/// The `recent` list: newest first, nginx's own sockets left out, the
/// group resolved, `?upstream=` and `?recent=` applied.
pub(crate) fn recent_list(
    recent: &[RecentRequest],
    listeners: &Listeners,
    index: &ConfigIndex,
    query: &Query,
) -> Vec<Recent> {
    recent
        .iter()
        .rev()
        .filter_map(|r| {
            let k = key(&r.peer);
            if listeners.is_listener(&k) {
                return None;
            }
            let group = index.first_group(&k);
            let upstream = match &query.upstream {
                None => group.unwrap_or("").to_owned(),
                Some(u) if index.group_lists(&k, u) => u.clone(),
                Some(u) if u == UNLISTED && group.is_none() => String::new(),
                Some(_) => return None,
            };
            Some(Recent {
                time: r.unix_ns / 1_000_000,
                method: r.method.clone(),
                path: clean_path(&r.path),
                server: show(&k),
                upstream,
                status: r.status,
                header_time: ms(r.latency_ns),
            })
        })
        .take(query.recent)
        .collect()
}
