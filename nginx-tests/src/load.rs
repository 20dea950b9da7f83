//! A load generator: N client threads sending a weighted mix of routes to
//! one address, for a fixed request count or a duration, and reporting what
//! came back per status and per route.
//!
//! Routes are assigned by a global request index walked over the weights
//! (not randomly), so with a fixed request count the per-route totals are
//! known in advance and tests can assert them exactly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::http::{Client, Request};

/// One weighted route of the mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: String,
    /// Request target (path and optional query).
    pub target: String,
    pub weight: u32,
    pub body: Vec<u8>,
    /// Extra headers for this route only.
    pub headers: Vec<(String, String)>,
}

impl Route {
    pub fn get(target: &str, weight: u32) -> Self {
        Route { method: "GET".into(), target: target.into(), weight, body: Vec::new(), headers: Vec::new() }
    }

    pub fn post(target: &str, weight: u32, body: &[u8]) -> Self {
        Route { method: "POST".into(), body: body.to_vec(), ..Self::get(target, weight) }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Requests(u64),
    Elapsed(Duration),
    /// Until the `stop` flag of [`run_until`] is set.
    Stopped,
}

/// Headers sent with every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headers {
    /// Host (+ Content-Length) only.
    Minimal,
    /// What a browser sends (user agent, accept-*, a long cookie, a request
    /// id): request heads of ~1 KB, as in production.
    Realistic,
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: SocketAddr,
    pub routes: Vec<Route>,
    pub until: Until,
    pub concurrency: usize,
    pub keepalive: bool,
    pub headers: Headers,
    pub timeout: Duration,
    /// Overall request rate cap (req/s), spread evenly over the clients;
    /// `None` sends as fast as responses come back.
    pub rate: Option<f64>,
}

impl LoadSpec {
    pub fn new(target: SocketAddr, routes: Vec<Route>) -> Self {
        LoadSpec {
            target,
            routes,
            until: Until::Requests(100),
            concurrency: 4,
            keepalive: true,
            headers: Headers::Minimal,
            timeout: crate::http::DEFAULT_TIMEOUT,
            rate: None,
        }
    }

    pub fn rate(mut self, per_sec: Option<f64>) -> Self {
        self.rate = per_sec.filter(|r| *r > 0.0);
        self
    }

    pub fn requests(mut self, n: u64) -> Self {
        self.until = Until::Requests(n);
        self
    }

    pub fn duration(mut self, d: Duration) -> Self {
        self.until = Until::Elapsed(d);
        self
    }

    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn keepalive(mut self, on: bool) -> Self {
        self.keepalive = on;
        self
    }

    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }
}

/// What a run got back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadResult {
    /// Responses per status.
    pub by_status: BTreeMap<u16, u64>,
    /// Responses per (method, target, status).
    pub by_route: BTreeMap<(String, String, u16), u64>,
    /// Requests that got no response (connect/read errors).
    pub errors: u64,
    /// First few error messages, for diagnostics.
    pub error_samples: Vec<String>,
    pub elapsed: Duration,
    /// TCP connections opened by the clients.
    pub connections: u64,
}

impl LoadResult {
    /// Responses received.
    pub fn responses(&self) -> u64 {
        self.by_status.values().sum()
    }

    pub fn requests_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.responses() as f64 / secs
        } else {
            0.0
        }
    }

    fn merge(&mut self, other: LoadResult) {
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.by_route {
            *self.by_route.entry(k).or_insert(0) += v;
        }
        self.errors += other.errors;
        self.connections += other.connections;
        for e in other.error_samples {
            if self.error_samples.len() < 5 {
                self.error_samples.push(e);
            }
        }
    }
}

/// The route for global request number `index`: weights laid out in turn.
pub fn route_for(routes: &[Route], index: u64) -> &Route {
    let total: u64 = routes.iter().map(|r| u64::from(r.weight)).sum();
    let mut slot = index % total.max(1);
    for route in routes {
        if slot < u64::from(route.weight) {
            return route;
        }
        slot -= u64::from(route.weight);
    }
    &routes[0]
}

/// Run the load; blocks until done. `stop` (optional) ends a run early.
pub fn run(spec: &LoadSpec) -> Result<LoadResult> {
    run_until(spec, &AtomicBool::new(false))
}

/// Like [`run`], also ending when `stop` becomes true (Ctrl-C in tools).
pub fn run_until(spec: &LoadSpec, stop: &AtomicBool) -> Result<LoadResult> {
    if spec.routes.is_empty() || spec.routes.iter().all(|r| r.weight == 0) {
        bail!("load: no route with a positive weight");
    }
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let total = Mutex::new(LoadResult::default());
    let browser_headers = Arc::new(realistic_headers());
    std::thread::scope(|scope| {
        for worker in 0..spec.concurrency {
            let (next, total, browser_headers) = (&next, &total, Arc::clone(&browser_headers));
            scope.spawn(move || {
                let mut mine = LoadResult::default();
                let mut client = Client::new(spec.target).keepalive(spec.keepalive).timeout(spec.timeout);
                // Each client paces itself at rate/concurrency, starting at
                // an offset so the clients do not fire in lockstep.
                let interval = spec.rate.map(|r| Duration::from_secs_f64(spec.concurrency as f64 / r));
                let mut due =
                    start + interval.map(|i| i.mul_f64(worker as f64 / spec.concurrency as f64)).unwrap_or_default();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(interval) = interval {
                        let now = Instant::now();
                        if due > now {
                            // Sleep in slices so a stop request is seen.
                            std::thread::sleep((due - now).min(Duration::from_millis(100)));
                            continue;
                        }
                        due += interval;
                        // A slow response (checkout) is made up for by the
                        // next requests; after a long stall (> 1 s behind)
                        // start afresh instead of bursting.
                        if due + Duration::from_secs(1) < now {
                            due = now;
                        }
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    match spec.until {
                        Until::Requests(n) if index >= n => break,
                        Until::Elapsed(d) if start.elapsed() >= d => break,
                        _ => {}
                    }
                    let route = route_for(&spec.routes, index);
                    let mut req = Request::new(&route.method, &route.target);
                    req.body = route.body.clone();
                    if spec.headers == Headers::Realistic {
                        req.headers.extend(browser_headers.iter().cloned());
                        req.headers.push(("X-Request-Id".into(), format!("{worker:04x}-{index:012x}")));
                    }
                    req.headers.extend(route.headers.iter().cloned());
                    match client.send(&req) {
                        Ok(resp) => {
                            *mine.by_status.entry(resp.status).or_insert(0) += 1;
                            *mine
                                .by_route
                                .entry((route.method.clone(), route.target.clone(), resp.status))
                                .or_insert(0) += 1;
                        }
                        Err(e) => {
                            mine.errors += 1;
                            if mine.error_samples.len() < 5 {
                                mine.error_samples.push(format!("{e:#}"));
                            }
                        }
                    }
                }
                mine.connections = client.connects();
                total.lock().expect("load result lock").merge(mine);
            });
        }
    });
    let mut result = total.into_inner().expect("load result lock");
    result.elapsed = start.elapsed();
    Ok(result)
}

/// Headers a browser sends (user agent, accept-*, a long cookie): what
/// `Headers::Realistic` adds to every request.
pub fn realistic_headers() -> Vec<(String, String)> {
    let cookie: String = (0..12).map(|i| format!("c{i}=v{:08x}{:08x}; ", i * 7919, i * 104_729)).collect();
    [
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
        ),
        ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
        ("Accept-Language", "en-US,en;q=0.9,de;q=0.8"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Referer", "http://shop.example/catalog/items?page=3&sort=price"),
        ("Cookie", cookie.trim_end_matches("; ")),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_index_walks_the_weights() {
        let routes = vec![Route::get("/a", 3), Route::get("/b", 0), Route::get("/c", 1)];
        let picked: Vec<&str> = (0..8).map(|i| route_for(&routes, i).target.as_str()).collect();
        assert_eq!(picked, ["/a", "/a", "/a", "/c", "/a", "/a", "/a", "/c"]);
    }
}
