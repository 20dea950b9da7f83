//! The plain-text snapshot: for `--once` and when stdout is not a terminal
//! (piped into a file, `watch`, a log). Same lines as the TUI, no colour,
//! no cursor movement, wire text already neutralised.

use std::time::Duration;

use crate::board::Board;
use crate::cli::SortKey;
use crate::view::lines;

/// What a snapshot includes.
#[derive(Debug, Clone, Copy)]
pub struct PlainOptions<'a> {
    pub sort: SortKey,
    pub filter: &'a str,
    pub backends: usize,
    pub routes: usize,
    pub recent: usize,
    /// The poll interval; None for `--once` (no retry to announce).
    pub interval: Option<Duration>,
}

/// One snapshot, ending in a newline.
pub fn render(board: &Board, polls: u64, opt: &PlainOptions<'_>) -> String {
    let mut out = Vec::new();
    out.push(lines::plain(&lines::header(board, false)));
    for b in lines::banners(board, opt.interval, polls) {
        out.push(lines::plain(&b));
    }
    let ranked = board.ranked(opt.sort, opt.filter);
    let shown: Vec<_> = ranked.iter().copied().take(opt.backends.max(1)).collect();
    if shown.is_empty() {
        out.push("no backends seen".to_string());
    } else {
        let cols = lines::columns(&shown, None);
        let max_share = shown.iter().map(|b| b.peer.share).fold(0.0_f64, f64::max);
        out.push(lines::plain(&lines::backend_titles(cols)));
        for b in &shown {
            out.extend(lines::backend_lines(b, max_share, cols, opt.routes, false).iter().map(lines::plain));
        }
        if ranked.len() > shown.len() {
            out.push(format!("  … {} more", ranked.len() - shown.len()));
        }
    }
    let recent = lines::recent_lines(board, opt.filter, opt.recent);
    if !recent.is_empty() {
        out.push("recent requests".to_string());
        out.extend(recent.iter().map(lines::plain));
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}
