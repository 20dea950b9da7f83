//! The dashboard's state: the latest answer of every host, what the
//! operator selected, the ranking, the filter, pause, and which screen is up.
//! Pure data and key handling, no terminal: tests drive it directly.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use upstreamtop_report::schema::Report;

use crate::board::{Backend, Board, HostLine, ProbeState};
use crate::cli::SortKey;
use crate::source::{HostResult, SourceError};

/// Local history kept per backend when the probe sends none.
const LOCAL_HISTORY: usize = 120;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    Main,
    /// Drill-down into the backend with this key.
    Detail(String),
    Help,
}

#[derive(Debug, Default)]
struct HostSlot {
    host: String,
    last: Option<Report>,
    error: Option<SourceError>,
}

/// Everything the renderer needs besides the terminal size.
#[derive(Debug)]
pub struct App {
    pub sort: SortKey,
    pub paused: bool,
    pub filter: String,
    pub editing_filter: bool,
    /// Key of the selected backend (kept across re-ranking).
    pub selected: Option<String>,
    pub screen: Screen,
    /// Where Esc returns from help.
    help_return: Option<Screen>,
    /// First line shown on the detail screen.
    pub detail_scroll: u16,
    pub interval: Duration,
    pub max_backends: usize,
    pub max_routes: usize,
    pub quit: bool,
    /// `--upstream NAME`: only this group (the endpoint filters too; this
    /// keeps `--table` mode and older modules to the same rule).
    pub only_upstream: Option<String>,
    /// Answers received so far (0 = still waiting for the first).
    pub polls: u64,
    hosts: Vec<HostSlot>,
    local_history: HashMap<String, VecDeque<f64>>,
    board: Board,
}

impl App {
    pub fn new(hosts: Vec<String>, sort: SortKey, interval: Duration, max_backends: usize, max_routes: usize) -> App {
        let mut app = App {
            sort,
            paused: false,
            filter: String::new(),
            editing_filter: false,
            selected: None,
            screen: Screen::Main,
            help_return: None,
            detail_scroll: 0,
            interval,
            max_backends,
            max_routes,
            quit: false,
            only_upstream: None,
            polls: 0,
            hosts: hosts.into_iter().map(|host| HostSlot { host, ..HostSlot::default() }).collect(),
            local_history: HashMap::new(),
            board: Board::default(),
        };
        app.rebuild();
        app
    }

    /// Keeps only the group `name` from now on.
    pub fn set_only_upstream(&mut self, name: Option<String>) {
        self.only_upstream = name;
        self.rebuild();
    }

    pub fn board(&self) -> &Board {
        &self.board
    }

    /// Takes one round of answers. A host that failed keeps its last good
    /// report (shown as old) and gets an error banner. While paused the
    /// answers are stored but the screen stays as it was.
    pub fn update(&mut self, results: Vec<HostResult>) {
        self.polls += 1;
        for r in results {
            let idx = match self.hosts.iter().position(|h| h.host == r.host) {
                Some(i) => i,
                None => {
                    self.hosts.push(HostSlot { host: r.host.clone(), ..HostSlot::default() });
                    self.hosts.len() - 1
                }
            };
            let slot = &mut self.hosts[idx];
            match r.result {
                Ok(report) => {
                    slot.last = Some(report);
                    slot.error = None;
                }
                Err(e) => slot.error = Some(e),
            }
        }
        if !self.paused {
            self.rebuild();
        }
    }

    /// True when every host failed its last poll (for `--once`'s exit code).
    pub fn all_failed(&self) -> bool {
        self.hosts.iter().all(|h| h.error.is_some() || h.last.is_none())
    }

    fn rebuild(&mut self) {
        let lines = self
            .hosts
            .iter()
            .map(|h| {
                let (probe_state, probe_age_ms) = match &h.last {
                    None => (ProbeState::Unknown, 0),
                    Some(r) if r.probe.stale => (ProbeState::Stale, r.probe.age_ms),
                    Some(r) if !r.probe.up => (ProbeState::Down, r.probe.age_ms),
                    Some(r) => (ProbeState::Up, r.probe.age_ms),
                };
                let (probe_state, error) = match &h.error {
                    Some(SourceError::Unavailable { .. } | SourceError::Table(_)) => {
                        (ProbeState::Down, Some(h.error.as_ref().map(|e| e.to_string()).unwrap_or_default()))
                    }
                    Some(e) => (ProbeState::NoAnswer, Some(e.to_string())),
                    None => (probe_state, None),
                };
                let showing_old = match (&h.error, &h.last) {
                    (Some(_), Some(r)) => Some(r.timestamp),
                    _ => None,
                };
                HostLine { host: h.host.clone(), error, showing_old, probe_state, probe_age_ms }
            })
            .collect();
        let reports: Vec<Option<&Report>> = self.hosts.iter().map(|h| h.last.as_ref()).collect();
        let mut board = Board::build(lines, &reports);
        if let Some(only) = &self.only_upstream {
            board.backends.retain(|b| &b.upstream == only);
            board.recent.retain(|r| r.group() == only);
        }
        // Probe history is authoritative; without it, remember what we saw
        // (only for fresh answers, so a dead endpoint does not paint a flat line).
        let fresh: Vec<bool> = self.hosts.iter().map(|h| h.error.is_none()).collect();
        let multi = self.hosts.len() > 1;
        for b in &mut board.backends {
            let host_fresh = if multi {
                self.hosts.iter().zip(&fresh).any(|(h, f)| h.host == b.host && *f)
            } else {
                fresh.first().copied().unwrap_or(false)
            };
            let ring = self.local_history.entry(b.key.clone()).or_default();
            if host_fresh {
                ring.push_back(b.peer.rps);
                while ring.len() > LOCAL_HISTORY {
                    ring.pop_front();
                }
            }
            if b.history.is_empty() {
                b.history = ring.iter().copied().collect();
            }
        }
        self.board = board;
        self.fix_selection();
    }

    /// The backends on the main screen, in order.
    pub fn visible(&self) -> Vec<&Backend> {
        let mut v = self.board.ranked(self.sort, &self.filter);
        v.truncate(self.max_backends.max(1));
        v
    }

    /// The backend shown on the detail screen, if it still exists.
    pub fn detail(&self) -> Option<&Backend> {
        match &self.screen {
            Screen::Detail(key) => self.board.backends.iter().find(|b| &b.key == key),
            _ => None,
        }
    }

    fn fix_selection(&mut self) {
        let vis = self.visible();
        let keep = self.selected.as_ref().is_some_and(|k| vis.iter().any(|b| &b.key == k));
        if !keep {
            self.selected = vis.first().map(|b| b.key.clone());
        }
    }

    fn move_selection(&mut self, delta: isize) {
        let keys: Vec<String> = self.visible().iter().map(|b| b.key.clone()).collect();
        if keys.is_empty() {
            self.selected = None;
            return;
        }
        let cur = self.selected.as_ref().and_then(|k| keys.iter().position(|x| x == k)).unwrap_or(0);
        let next = (cur as isize + delta).clamp(0, keys.len() as isize - 1) as usize;
        self.selected = Some(keys[next].clone());
    }

    /// Handles one key press.
    pub fn on_key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && matches!(key.code, KeyCode::Char('c' | 'd')) {
            self.quit = true;
            return;
        }
        if self.editing_filter {
            match key.code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() && self.filter.chars().count() < 64 => self.filter.push(c),
                _ => {}
            }
            self.fix_selection();
            return;
        }
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.fix_selection();
            }
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                self.paused = !self.paused;
                if !self.paused {
                    self.rebuild();
                }
            }
            KeyCode::Char('/') => {
                self.screen = Screen::Main;
                self.editing_filter = true;
            }
            KeyCode::Char('?') | KeyCode::F(1) => {
                if self.screen == Screen::Help {
                    self.screen = self.help_return.take().unwrap_or(Screen::Main);
                } else {
                    self.help_return = Some(self.screen.clone());
                    self.screen = Screen::Help;
                }
            }
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => match self.screen {
                Screen::Help => self.screen = self.help_return.take().unwrap_or(Screen::Main),
                Screen::Detail(_) => self.screen = Screen::Main,
                Screen::Main if key.code == KeyCode::Esc => {
                    self.filter.clear();
                    self.fix_selection();
                }
                Screen::Main => {}
            },
            KeyCode::Enter | KeyCode::Right if self.screen == Screen::Main => {
                if let Some(k) = &self.selected {
                    self.screen = Screen::Detail(k.clone());
                    self.detail_scroll = 0;
                }
            }
            KeyCode::Up | KeyCode::Char('k') => self.scroll_or_move(-1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll_or_move(1),
            KeyCode::PageUp => self.scroll_or_move(-10),
            KeyCode::PageDown => self.scroll_or_move(10),
            KeyCode::Home | KeyCode::Char('g') => self.scroll_or_move(-100_000),
            KeyCode::End | KeyCode::Char('G') => self.scroll_or_move(100_000),
            _ => {}
        }
    }

    fn scroll_or_move(&mut self, delta: isize) {
        match self.screen {
            Screen::Main => self.move_selection(delta),
            Screen::Detail(_) => {
                let d = delta.clamp(-10_000, 10_000) as i32;
                self.detail_scroll = (self.detail_scroll as i32 + d).clamp(0, 10_000) as u16;
            }
            Screen::Help => {}
        }
    }
}
