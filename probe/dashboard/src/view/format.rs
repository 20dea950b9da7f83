//! Number formats, fixed-width cells, sparklines, bars and colours shared by
//! every screen and by the plain-text snapshot.

use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Span;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use crate::sanitize;

/// A span of wire text: sanitised again here so that no code path can put
/// a raw escape on the screen, even with a report that skipped the source.
pub fn wire(text: &str, style: Style) -> Span<'static> {
    Span::styled(sanitize::clean(text).into_owned(), style)
}

/// Wire text sanitised first, then fitted to `width` columns (in this order,
/// so a visible escape like `\x1b` is measured at its real width).
pub fn wire_fit(text: &str, width: usize, style: Style) -> Span<'static> {
    Span::styled(fit(&sanitize::clean(text), width), style)
}

/// Cuts `text` to `width` terminal columns (ending in `…` when cut) and pads
/// it with spaces to exactly `width`.
pub fn fit(text: &str, width: usize) -> String {
    let mut out = truncate(text, width);
    let w = out.width();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(w)));
    out
}

/// Cuts `text` to at most `width` columns, ending in `…` when cut.
pub fn truncate(text: &str, width: usize) -> String {
    if text.width() <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let cw = c.width().unwrap_or(0);
        if used + cw > width - 1 {
            break;
        }
        used += cw;
        out.push(c);
    }
    out.push('…');
    out
}

/// Right-aligns `text` in `width` columns.
pub fn right(text: &str, width: usize) -> String {
    let t = truncate(text, width);
    format!("{}{t}", " ".repeat(width.saturating_sub(t.width())))
}

/// Requests per second: two decimals below 10, one below 1000, then whole.
pub fn rps(v: f64) -> String {
    if !v.is_finite() || v <= 0.0 {
        "0".into()
    } else if v < 9.995 {
        // (9.995 and up would print as "10.00": use the next format)
        format!("{v:.2}")
    } else if v < 999.95 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Milliseconds as `0.42ms`, `2.1ms`, `140ms`, `1.25s`; `-` for none.
pub fn ms(v: f64) -> String {
    if !v.is_finite() || v <= 0.0 {
        "-".into()
    } else if v < 0.995 {
        // Thresholds sit where rounding would spill into the next format
        // ("1.00ms", "10.0ms", "1000ms").
        format!("{v:.2}ms")
    } else if v < 9.95 {
        format!("{v:.1}ms")
    } else if v < 999.5 {
        format!("{v:.0}ms")
    } else {
        format!("{:.2}s", v / 1000.0)
    }
}

/// Bytes as `512B`, `1.2KB`, `3.4MB`, `5.6GB`.
pub fn bytes(v: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut f = v as f64;
    let mut u = 0;
    while f >= 1000.0 && u < UNITS.len() - 1 {
        f /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v}B")
    } else {
        format!("{f:.1}{}", UNITS[u])
    }
}

/// A percentage that never rounds a non-zero count to `0%`.
pub fn pct(part: u64, total: u64) -> String {
    if total == 0 {
        return "-".into();
    }
    let p = part as f64 * 100.0 / total as f64;
    if part > 0 && p < 1.0 {
        "<1%".into()
    } else if part < total && p > 99.0 {
        ">99%".into()
    } else {
        format!("{p:.0}%")
    }
}

/// `HH:MM:SS` (UTC) of a Unix-ms timestamp, with `.mmm` when asked.
pub fn clock(unix_ms: u64, millis: bool) -> String {
    let secs = unix_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    if millis {
        format!("{h:02}:{m:02}:{s:02}.{:03}", unix_ms % 1000)
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The last `width` values as a sparkline scaled to their maximum; zero is
/// blank so an idle interval reads as a gap. Right-aligned: newest at the end.
pub fn sparkline(values: &[f64], width: usize) -> String {
    let tail = &values[values.len().saturating_sub(width)..];
    let max = tail.iter().copied().filter(|v| v.is_finite()).fold(0.0_f64, f64::max);
    let mut out = " ".repeat(width - tail.len());
    for &v in tail {
        if !v.is_finite() || v <= 0.0 || max <= 0.0 {
            out.push(' ');
        } else {
            let i = ((v / max) * 7.0).round().clamp(0.0, 7.0) as usize;
            out.push(SPARKS[i]);
        }
    }
    out
}

const EIGHTHS: [char; 8] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];

/// A bar of `fraction` (0..=1) of `width` cells, in eighths, padded.
pub fn bar(fraction: f64, width: usize) -> String {
    let f = if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 };
    let eighths = (f * width as f64 * 8.0).round() as usize;
    let mut out = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        out.push(EIGHTHS[eighths % 8 - 1]);
    }
    let w = out.chars().count();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(w)));
    out
}

/// Colour of a status class (1..=5), 0 for "no response".
pub fn class_color(class: u16) -> Color {
    match class {
        1 => Color::Blue,
        2 => Color::Green,
        3 => Color::Cyan,
        4 => Color::Yellow,
        5 => Color::Red,
        _ => Color::Magenta,
    }
}

pub fn status_style(status: u16) -> Style {
    Style::default().fg(class_color(status / 100))
}

/// Methods coloured so a write stands out from a read.
pub fn method_style(method: &str) -> Style {
    let c = match method {
        "GET" | "HEAD" => Color::Green,
        "POST" => Color::Yellow,
        "PUT" | "PATCH" => Color::Blue,
        "DELETE" => Color::Red,
        _ => Color::Magenta,
    };
    Style::default().fg(c)
}

pub fn dim() -> Style {
    Style::default().add_modifier(Modifier::DIM)
}

pub fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("ab", 4), "ab  ");
        assert_eq!(fit("日本語", 4), "日… ");
        assert_eq!(fit("x", 0), "");
        assert_eq!(right("12", 4), "  12");
        assert_eq!(truncate("abc", 1), "…");
    }

    #[test]
    fn numbers() {
        assert_eq!(rps(0.0), "0");
        assert_eq!(rps(0.5), "0.50");
        assert_eq!(rps(104.04), "104.0");
        assert_eq!(rps(12345.6), "12346");
        assert_eq!(rps(9.996), "10.0");
        assert_eq!(rps(999.96), "1000");
        assert_eq!(ms(0.0), "-");
        assert_eq!(ms(2.14), "2.1ms");
        assert_eq!(ms(140.2), "140ms");
        assert_eq!(ms(1250.0), "1.25s");
        assert_eq!(ms(0.996), "1.0ms");
        assert_eq!(ms(9.96), "10ms");
        assert_eq!(ms(999.7), "1.00s");
        assert_eq!(pct(1, 1000), "<1%");
        assert_eq!(pct(999, 1000), ">99%");
        assert_eq!(pct(42, 100), "42%");
        assert_eq!(bytes(1_234_567), "1.2MB");
        assert_eq!(clock(1_700_000_000_123, true), "22:13:20.123");
    }

    #[test]
    fn graphics() {
        assert_eq!(sparkline(&[1.0, 2.0, 4.0, 8.0], 6), "  ▂▃▅█");
        assert_eq!(sparkline(&[0.0, 0.0], 2), "  ");
        assert_eq!(sparkline(&[5.0; 20], 3), "███");
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██  ");
        assert_eq!(bar(f64::NAN, 2), "  ");
        assert_eq!(bar(0.0625, 2).chars().next(), Some('▏'));
    }
}
