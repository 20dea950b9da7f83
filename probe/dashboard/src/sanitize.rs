//! Makes wire-controlled text safe to print.
//!
//! Paths, methods and even upstream names come from HTTP traffic an attacker
//! can shape. Printed raw, `ESC [ ...` could move the cursor, retitle the
//! window or hide rows, `\r` could overwrite a line, and bidi overrides could
//! make `/admin` read as something else. Every such character is replaced by
//! a visible escape (`\x1b`, `\u{202e}`), so the operator sees that something
//! odd was sent instead of the terminal acting on it.

use std::borrow::Cow;

use upstreamtop_report::schema::{Peer, Recent, Report, Responses, Route, Upstream};

/// Longest text kept from the wire, in characters; the rest becomes `…`.
pub const MAX_CHARS: usize = 512;

/// True for characters that must never reach the terminal as themselves.
fn is_dangerous(c: char) -> bool {
    c.is_control() // C0 (ESC, CR, BEL, ...), DEL, C1 (CSI 0x9b, ...)
        || matches!(c,
            '\u{061c}'                 // arabic letter mark
            | '\u{200b}'..='\u{200f}'  // zero-width chars, LRM, RLM
            | '\u{2028}' | '\u{2029}'  // line / paragraph separator
            | '\u{202a}'..='\u{202e}'  // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}'  // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}'  // bidi isolates
            | '\u{feff}'               // BOM / zero-width no-break space
            | '\u{fff9}'..='\u{fffb}') // interlinear annotations
}

/// `text` with dangerous characters made visible and length bounded.
/// Borrows when nothing needs changing (the common case).
pub fn clean(text: &str) -> Cow<'_, str> {
    let needs_work = text.chars().any(is_dangerous) || text.len() > MAX_CHARS;
    if !needs_work {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(MAX_CHARS * 2));
    for (i, c) in text.chars().enumerate() {
        if i >= MAX_CHARS {
            out.push('…');
            break;
        }
        if is_dangerous(c) {
            let code = c as u32;
            if code <= 0xff {
                out.push_str(&format!("\\x{code:02x}"));
            } else {
                out.push_str(&format!("\\u{{{code:x}}}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn fix(s: &mut String) {
    if let Cow::Owned(o) = clean(s) {
        *s = o;
    }
}

/// Cleans every string of a report in place: one pass right where the
/// report enters the program, so no renderer can forget it.
pub fn report(r: &mut Report) {
    fix(&mut r.nginx_version);
    r.probe.interfaces.iter_mut().for_each(fix);
    r.upstreams = std::mem::take(&mut r.upstreams)
        .into_iter()
        .map(|(name, mut up)| {
            upstream(&mut up);
            (clean(&name).into_owned(), up)
        })
        .collect();
    upstream(&mut r.unlisted);
    r.recent.iter_mut().for_each(recent);
}

fn upstream(u: &mut Upstream) {
    fix(&mut u.scope);
    u.peers.iter_mut().for_each(peer);
}

fn peer(p: &mut Peer) {
    fix(&mut p.server);
    fix(&mut p.name);
    fix(&mut p.state);
    fix(&mut p.state_from);
    fix(&mut p.counted_in);
    fix(&mut p.diagnosis);
    responses(&mut p.responses);
    p.routes.iter_mut().for_each(route);
}

fn route(r: &mut Route) {
    fix(&mut r.method);
    fix(&mut r.path);
    responses(&mut r.responses);
}

fn responses(r: &mut Responses) {
    if r.codes.keys().any(|k| matches!(clean(k), Cow::Owned(_))) {
        r.codes = std::mem::take(&mut r.codes).into_iter().map(|(k, v)| (clean(&k).into_owned(), v)).collect();
    }
}

fn recent(r: &mut Recent) {
    fix(&mut r.method);
    fix(&mut r.path);
    fix(&mut r.server);
    fix(&mut r.upstream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_is_borrowed() {
        assert!(matches!(clean("/api/orders/:id"), Cow::Borrowed(_)));
        assert!(matches!(clean("/ünïcödé/日本"), Cow::Borrowed(_)));
    }

    #[test]
    fn escapes_become_visible() {
        assert_eq!(clean("/a\x1b[2J/b"), "/a\\x1b[2J/b");
        assert_eq!(clean("/x\r/y\x07"), "/x\\x0d/y\\x07");
        assert_eq!(clean("/\u{9b}31m"), "/\\x9b31m");
        assert_eq!(clean("/\u{202e}nimda"), "/\\u{202e}nimda");
        assert_eq!(clean("/\u{2067}x\u{2069}"), "/\\u{2067}x\\u{2069}");
        assert_eq!(clean("a\u{7f}"), "a\\x7f");
        assert_eq!(clean("tab\there"), "tab\\x09here");
    }

    #[test]
    fn long_text_is_bounded() {
        let long = "a".repeat(5000);
        let c = clean(&long);
        assert_eq!(c.chars().count(), MAX_CHARS + 1);
        assert!(c.ends_with('…'));
    }
}
