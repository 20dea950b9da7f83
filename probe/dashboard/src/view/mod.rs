//! Rendering: lays the lines of [`lines`] out on the terminal. Every size
//! from 1x1 up works; what does not fit is cut, never wrapped or panicked on.

pub mod format;
pub mod lines;

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::state::{App, Screen};
use format::dim;

/// Draws the whole screen for `app`.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width == 0 || area.height == 0 {
        return;
    }
    let board = app.board();
    let mut rows = Rows::new(area);

    if let Some(r) = rows.take_top(1) {
        frame.render_widget(Paragraph::new(lines::header(board, app.paused)), r);
    }
    let detail = matches!(app.screen, Screen::Detail(_));
    if let Some(r) = rows.take_bottom(1) {
        let footer = lines::footer(app.sort.label(), &app.filter, app.editing_filter, detail);
        frame.render_widget(Paragraph::new(footer), r);
    }
    let banners = lines::banners(board, Some(app.interval), app.polls);
    if !banners.is_empty() {
        let n = banners.len().min(3).min(rows.left() as usize / 2 + 1) as u16;
        if let Some(r) = rows.take_top(n) {
            frame.render_widget(Paragraph::new(banners), r);
        }
    }
    let body = rows.rest();
    if body.height == 0 {
        return;
    }
    match &app.screen {
        Screen::Main => draw_main(frame, app, body),
        Screen::Detail(_) => match app.detail() {
            Some(b) => {
                let text = lines::detail_lines(b, body.width as usize);
                let max_scroll = (text.len() as u16).saturating_sub(body.height);
                let scroll = app.detail_scroll.min(max_scroll);
                frame.render_widget(Paragraph::new(text).scroll((scroll, 0)), body);
            }
            None => {
                let msg =
                    Line::from(Span::styled("this backend is gone from the latest answer — Esc to go back", dim()));
                frame.render_widget(Paragraph::new(msg), body);
            }
        },
        Screen::Help => frame.render_widget(Paragraph::new(lines::help_lines()), body),
    }
}

fn draw_main(frame: &mut Frame, app: &App, area: Rect) {
    let board = app.board();
    let visible = app.visible();
    let width = area.width as usize;
    // The feed gets up to a third of the height, but only once the backends
    // have room for their rows.
    let mut rows = Rows::new(area);
    let feed_lines = if area.height >= 12 {
        let want = board.recent.iter().filter(|r| r.matches(&app.filter)).count().min((area.height as usize) / 3);
        if want > 0 {
            want + 1
        } else {
            0
        }
    } else {
        0
    };
    if feed_lines > 0 {
        if let Some(r) = rows.take_bottom(feed_lines as u16) {
            let mut text = vec![Line::from(Span::styled(
                format!("recent requests ({} newest)", feed_lines - 1),
                format::bold().fg(Color::Cyan),
            ))];
            text.extend(lines::recent_lines(board, &app.filter, feed_lines - 1));
            frame.render_widget(Paragraph::new(text), r);
        }
    }
    let list = rows.rest();
    if list.height == 0 {
        return;
    }
    if visible.is_empty() {
        let msg = if !app.filter.is_empty() {
            "no backend matches the filter (Esc clears it)".to_string()
        } else if board.hosts.iter().all(|h| h.error.is_some()) {
            "no data".to_string()
        } else {
            "no backends seen yet — is nginx proxying plain-HTTP traffic?".to_string()
        };
        frame.render_widget(Paragraph::new(Line::from(Span::styled(msg, Style::default().fg(Color::Yellow)))), list);
        return;
    }
    let cols = lines::columns(&visible, Some(width));
    let max_share = visible.iter().map(|b| b.peer.share).fold(0.0_f64, f64::max);
    let mut text = vec![lines::backend_titles(cols)];
    let mut selected_at = (0, 0);
    for b in &visible {
        let sel = app.selected.as_deref() == Some(b.key.as_str());
        let bl = lines::backend_lines(b, max_share, cols, app.max_routes, sel);
        if sel {
            selected_at = (text.len(), bl.len());
        }
        text.extend(bl);
    }
    let total = board.ranked(app.sort, &app.filter).len();
    if total > visible.len() {
        text.push(Line::from(Span::styled(
            format!("  … {} more (--backends, / to filter)", total - visible.len()),
            dim(),
        )));
    }
    // Scroll so the selected backend and its routes stay in view; the
    // titles scroll away first, which is fine on a short terminal.
    let h = list.height as usize;
    let (start, len) = selected_at;
    let scroll = if start + len > h { (start + len - h).min(start) } else { 0 };
    frame.render_widget(Paragraph::new(text).scroll((scroll.min(u16::MAX as usize) as u16, 0)), list);
}

/// Hands out rows of an area from the top and the bottom.
struct Rows {
    area: Rect,
}

impl Rows {
    fn new(area: Rect) -> Rows {
        Rows { area }
    }

    fn left(&self) -> u16 {
        self.area.height
    }

    fn take_top(&mut self, n: u16) -> Option<Rect> {
        let n = n.min(self.area.height);
        if n == 0 {
            return None;
        }
        let r = Rect { height: n, ..self.area };
        self.area.y += n;
        self.area.height -= n;
        Some(r)
    }

    fn take_bottom(&mut self, n: u16) -> Option<Rect> {
        // Keep the top row for the header on 1-row terminals.
        let n = n.min(self.area.height);
        if n == 0 {
            return None;
        }
        self.area.height -= n;
        Some(Rect { y: self.area.y + self.area.height, height: n, ..self.area })
    }

    fn rest(&self) -> Rect {
        self.area
    }
}
