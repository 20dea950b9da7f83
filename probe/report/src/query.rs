//! Parsing the status request's query string into a [`Query`].

use crate::config::Query;

/// Largest `routes=` / `recent=` accepted: far above any table capacity,
/// low enough that a typo cannot ask for absurd work.
const MAX_LIST: usize = 100_000;

/// Parses `upstream=NAME&routes=N&history=0|1&recent=N&route_labels=0|1`
/// (`format=json|prometheus` is the module's business: only validated
/// here; unknown arguments are ignored). Values are percent-decoded. A bad value is an error naming
/// the parameter, fit for a 400 body.
pub fn parse_query(query_string: &str) -> Result<Query, String> {
    let mut q = Query::default();
    for arg in query_string.split('&').filter(|a| !a.is_empty()) {
        let (key, raw) = arg.split_once('=').unwrap_or((arg, ""));
        let value = percent_decode(raw).ok_or_else(|| format!("parameter {key}: invalid percent-encoding"))?;
        match key {
            "upstream" => {
                if value.is_empty() {
                    return Err("parameter upstream: empty group name".into());
                }
                q.upstream = Some(value);
            }
            "routes" => q.routes = count(key, &value)?,
            "recent" => q.recent = count(key, &value)?,
            "history" => q.history = flag(key, &value)?,
            "route_labels" | "routes_labels" => q.route_labels = flag(key, &value)?,
            // Acted on by the module; checked here so a typo is a 400, not
            // silently JSON.
            "format" if value != "json" && value != "prometheus" => {
                return Err(format!("parameter format: expected json or prometheus, got {value:?}"));
            }
            _ => {}
        }
    }
    Ok(q)
}

fn count(key: &str, value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n <= MAX_LIST => Ok(n),
        _ => Err(format!("parameter {key}: expected a number from 0 to {MAX_LIST}, got {value:?}")),
    }
}

fn flag(key: &str, value: &str) -> Result<bool, String> {
    match value {
        // A bare `?history` means "on".
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("parameter {key}: expected 0 or 1, got {value:?}")),
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

    #[test]
    fn defaults_and_every_parameter() {
        assert_eq!(parse_query("").unwrap(), Query::default());
        let q =
            parse_query("upstream=api%20v2&routes=3&history=0&recent=5&format=prometheus&route_labels=0&x=y").unwrap();
        assert_eq!(
            q,
            Query { upstream: Some("api v2".into()), routes: 3, history: false, recent: 5, route_labels: false }
        );
        assert!(parse_query("history").unwrap().history);
        assert!(!parse_query("routes_labels=off").unwrap().route_labels);
        // The last occurrence wins, like nginx's $arg_.
        assert_eq!(parse_query("routes=1&routes=2").unwrap().routes, 2);
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
        ] {
            let e = parse_query(qs).unwrap_err();
            assert!(e.starts_with(&format!("parameter {name}:")), "{qs}: {e}");
        }
    }
}
