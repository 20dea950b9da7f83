//! The status request's query string, parsed and validated once into a
//! [`Query`]; the module supplies only what its directive sets
//! ([`Defaults`]).

use std::fmt;

/// Largest `routes=` / `recent=` accepted: far above any table capacity,
/// low enough that a typo cannot ask for absurd work.
const MAX_LIST: usize = 100_000;

/// Top routes per peer in a JSON answer when `?routes=` is not given.
pub const DEFAULT_ROUTES: usize = 10;

/// Latest requests in a JSON answer when `?recent=` is not given.
pub const DEFAULT_RECENT: usize = 20;

/// The answer's format: `?format=`, else the directive's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    #[default]
    Json,
    /// Prometheus text exposition format 0.0.4.
    Prometheus,
    /// The live page for a browser ([`crate::page`]), which polls the JSON
    /// of the same location.
    Html,
}

/// What the `upstreamtop_status` directive decides for requests that do
/// not say otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// `upstreamtop_status prometheus;` makes Prometheus the default,
    /// `upstreamtop_status html;` the page; the module also picks the page
    /// for a browser (`Accept: text/html`) that names no format.
    pub format: Format,
    /// `false` with `upstreamtop_status prometheus noroutes;`: no route
    /// series, whatever the query says (a scrape config cannot turn them
    /// back on by accident).
    pub route_labels: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults { format: Format::Json, route_labels: true }
    }
}

/// What the status request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    /// `?format=json|prometheus|html`.
    pub format: Format,
    /// `?upstream=NAME`: only this group (`unlisted` for the peers no
    /// group lists).
    pub upstream: Option<String>,
    /// `?routes=N`: top routes per peer by requests. Default 10 for JSON;
    /// every route the probe keeps for Prometheus, since a route leaving a
    /// top N would make its counter series vanish and reappear (`topk()`
    /// in PromQL does the ranking).
    pub routes: usize,
    /// `?history=0` leaves the history arrays out.
    pub history: bool,
    /// `?recent=N`: latest requests; default 20.
    pub recent: usize,
    /// `?route_labels=0`: Prometheus output without per-route series.
    pub route_labels: bool,
}

impl Default for Query {
    /// A JSON request with no parameters.
    fn default() -> Self {
        Query {
            format: Format::Json,
            upstream: None,
            routes: DEFAULT_ROUTES,
            history: true,
            recent: DEFAULT_RECENT,
            route_labels: true,
        }
    }
}

/// A parameter that could not be used, fit for a 400 body: `parameter
/// NAME: expected …, got "…"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub parameter: String,
    pub problem: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "parameter {}: {}", self.parameter, self.problem)
    }
}

impl std::error::Error for QueryError {}

impl Query {
    /// Parses `format=json|prometheus&upstream=NAME&routes=N&history=0|1&
    /// recent=N&route_labels=0|1`. Values are percent-decoded; the last
    /// occurrence of a parameter wins (like nginx's `$arg_`); unknown
    /// parameters are ignored.
    pub fn parse(query_string: &str, defaults: Defaults) -> Result<Query, QueryError> {
        let mut q = Query { format: defaults.format, ..Query::default() };
        let mut routes = None;
        for arg in query_string.split('&').filter(|a| !a.is_empty()) {
            let (key, raw) = arg.split_once('=').unwrap_or((arg, ""));
            let value = percent_decode(raw).ok_or_else(|| error(key, "invalid percent-encoding".into()))?;
            match key {
                "format" => {
                    q.format = match value.as_str() {
                        "json" => Format::Json,
                        "prometheus" => Format::Prometheus,
                        "html" => Format::Html,
                        _ => return Err(error(key, format!("expected json, prometheus or html, got {value:?}"))),
                    }
                }
                "upstream" if value.is_empty() => return Err(error(key, "empty group name".into())),
                "upstream" => q.upstream = Some(value),
                "routes" => routes = Some(count(key, &value)?),
                "recent" => q.recent = count(key, &value)?,
                "history" => q.history = flag(key, &value)?,
                "route_labels" | "routes_labels" => q.route_labels = flag(key, &value)?,
                _ => {}
            }
        }
        q.routes = routes.unwrap_or(match q.format {
            Format::Json | Format::Html => DEFAULT_ROUTES,
            Format::Prometheus => usize::MAX,
        });
        q.route_labels &= defaults.route_labels;
        Ok(q)
    }
}

fn error(parameter: &str, problem: String) -> QueryError {
    QueryError { parameter: parameter.to_owned(), problem }
}

fn count(key: &str, value: &str) -> Result<usize, QueryError> {
    match value.parse::<usize>() {
        Ok(n) if n <= MAX_LIST => Ok(n),
        _ => Err(error(key, format!("expected a number from 0 to {MAX_LIST}, got {value:?}"))),
    }
}

fn flag(key: &str, value: &str) -> Result<bool, QueryError> {
    match value {
        // A bare `?history` means "on".
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(error(key, format!("expected 0 or 1, got {value:?}"))),
    }
}

/// `%XX` and `+` decoding; `None` on a malformed escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(qs: &str) -> Result<Query, QueryError> {
        Query::parse(qs, Defaults::default())
    }

    #[test]
    fn defaults_and_every_parameter() {
        assert_eq!(parse("").unwrap(), Query::default());
        let q = parse("upstream=api%20v2&routes=3&history=0&recent=5&format=prometheus&route_labels=0&x=y").unwrap();
        assert_eq!(
            q,
            Query {
                format: Format::Prometheus,
                upstream: Some("api v2".into()),
                routes: 3,
                history: false,
                recent: 5,
                route_labels: false
            }
        );
        assert!(parse("history").unwrap().history);
        assert!(!parse("routes_labels=off").unwrap().route_labels);
        // The last occurrence wins, like nginx's $arg_.
        assert_eq!(parse("routes=1&routes=2").unwrap().routes, 2);
        assert_eq!(parse("format=prometheus&format=json").unwrap().format, Format::Json);
    }

    #[test]
    fn the_directive_supplies_defaults_only() {
        let prom = Defaults { format: Format::Prometheus, route_labels: true };
        let q = Query::parse("", prom).unwrap();
        assert_eq!((q.format, q.routes), (Format::Prometheus, usize::MAX), "a scrape gets every route");
        assert_eq!(Query::parse("routes=4", prom).unwrap().routes, 4);
        assert_eq!(Query::parse("format=json", prom).unwrap().routes, DEFAULT_ROUTES);
        assert_eq!(parse("format=prometheus").unwrap().routes, usize::MAX);
        let noroutes = Defaults { format: Format::Prometheus, route_labels: false };
        assert!(!Query::parse("route_labels=1", noroutes).unwrap().route_labels, "noroutes is a cap");
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (qs, name) in [
            ("routes=-1", "routes"),
            ("routes=ten", "routes"),
            ("recent=99999999999", "recent"),
            ("history=maybe", "history"),
            ("route_labels=2", "route_labels"),
            ("upstream=", "upstream"),
            ("upstream=%zz", "upstream"),
            ("upstream=%ff", "upstream"),
            ("format=xml", "format"),
            ("format=%zz", "format"),
        ] {
            let e = parse(qs).unwrap_err().to_string();
            assert!(e.starts_with(&format!("parameter {name}:")), "{qs}: {e}");
        }
        assert_eq!(
            parse("format=xml").unwrap_err().to_string(),
            "parameter format: expected json, prometheus or html, got \"xml\""
        );
        assert_eq!(parse("format=html").unwrap().format, Format::Html);
    }
}
