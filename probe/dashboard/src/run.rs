//! The three ways to run: `--once`, plain snapshots when stdout is not a
//! terminal, and the interactive TUI.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{self, Event};
use crossterm::{cursor, execute, terminal};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use crate::cli::{Args, DEFAULT_URL};
use crate::plain::{self, PlainOptions};
use crate::source::{Endpoint, HostResult, Source, SourceSpec};
use crate::state::App;
use crate::view;

/// Recent requests printed per plain-text snapshot.
const PLAIN_RECENT: usize = 10;

/// Runs until `q`, `--secs`, a signal, or after one snapshot with `--once`.
/// Exit code 1 when `--once` got no report from any host.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let spec = spec(&args)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    let mut app = App::new(spec.hosts(), args.sort, args.interval, args.backends, args.routes);
    app.set_only_upstream(args.upstream.clone());
    let deadline = args.secs.map(|s| Instant::now() + Duration::from_secs(s));
    if args.once {
        let mut source = Source::open(&spec);
        app.update(source.poll(poll_timeout(args.interval)));
        print_snapshot(&app, &args)?;
        return Ok(if app.all_failed() { ExitCode::from(1) } else { ExitCode::SUCCESS });
    }
    if !io::stdout().is_terminal() {
        let mut source = Source::open(&spec);
        loop {
            let started = Instant::now();
            app.update(source.poll(poll_timeout(args.interval)));
            print_snapshot(&app, &args)?;
            let next = started + args.interval;
            if !sleep_until(next, deadline, &stop) {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    run_tui(app, spec, args.interval, deadline, stop)?;
    Ok(ExitCode::SUCCESS)
}

fn spec(args: &Args) -> anyhow::Result<SourceSpec> {
    if let Some(path) = &args.table {
        return Ok(SourceSpec::Table { path: path.clone(), upstream: args.upstream.clone() });
    }
    let urls = if args.urls.is_empty() { vec![DEFAULT_URL.to_string()] } else { args.urls.clone() };
    let eps = urls
        .iter()
        .map(|u| Endpoint::parse(u, args.upstream.as_deref()))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("bad --url")?;
    Ok(SourceSpec::Http(eps))
}

/// A poll may take up to the interval (at least 1s, at most 5s) per host.
fn poll_timeout(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(1), Duration::from_secs(5))
}

fn print_snapshot(app: &App, args: &Args) -> anyhow::Result<()> {
    let opt = PlainOptions {
        sort: app.sort,
        filter: &app.filter,
        backends: args.backends,
        routes: args.routes,
        recent: PLAIN_RECENT,
        interval: (!args.once).then_some(args.interval),
    };
    let text = plain::render(app.board(), app.polls, &opt);
    let mut out = io::stdout().lock();
    // A closed pipe (`| head`) ends the program quietly.
    match out.write_all(text.as_bytes()).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.context("writing to stdout"),
    }
}

/// Sleeps until `next`; false when the deadline passed or a signal came.
fn sleep_until(next: Instant, deadline: Option<Instant>, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        let now = Instant::now();
        if now >= next {
            return true;
        }
        thread::sleep((next - now).min(Duration::from_millis(100)));
    }
}

/// Puts the terminal back: cooked mode, main screen, visible cursor.
/// Safe to call more than once.
fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

fn run_tui(
    mut app: App,
    spec: SourceSpec,
    interval: Duration,
    deadline: Option<Instant>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    // The poller lives on its own thread so a slow or dead endpoint never
    // freezes the keys; it ends when the receiver is dropped.
    let (tx, rx) = mpsc::channel::<Vec<HostResult>>();
    let poll_stop = Arc::clone(&stop);
    let poller_done = Arc::new(AtomicBool::new(false));
    let poller_done2 = Arc::clone(&poller_done);
    thread::Builder::new()
        .name("poller".into())
        .spawn(move || {
            let mut source = Source::open(&spec);
            loop {
                let started = Instant::now();
                if tx.send(source.poll(poll_timeout(interval))).is_err() {
                    return;
                }
                let next = started + interval;
                while Instant::now() < next {
                    if poll_stop.load(Ordering::Relaxed) || poller_done2.load(Ordering::Relaxed) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        })
        .context("starting the poller thread")?;

    // Hangup means the terminal is gone (window closed, ssh dropped, tmux
    // killed): nothing is left to restore, so leave at once. The stop flag is
    // not enough here: on a hung-up tty crossterm 0.28's `event::poll` spins
    // forever on read() returning EIO/0 and never gets back to check it
    // (found by nginx-tests/tests/e2e_dashboard.rs: orphans at 100% CPU).
    // SAFETY: registering a signal action; `low_level::exit` is _exit(2),
    // async-signal-safe, and the closure touches nothing else.
    unsafe { signal_hook::low_level::register(signal_hook::consts::SIGHUP, || signal_hook::low_level::exit(129)) }
        .context("installing the SIGHUP handler")?;

    let original_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        original_hook(info);
    }));
    terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
    let result = (|| -> anyhow::Result<()> {
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)
            .context("entering the alternate screen")?;
        let mut term = Terminal::new(CrosstermBackend::new(io::stdout())).context("opening the terminal")?;
        term.clear().context("clearing the terminal")?;
        let mut dirty = true;
        let mut last_draw = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) || app.quit || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            while let Ok(results) = rx.try_recv() {
                app.update(results);
                dirty = true;
            }
            if dirty || last_draw.elapsed() >= Duration::from_secs(1) {
                term.draw(|f| view::draw(f, &app)).context("drawing")?;
                dirty = false;
                last_draw = Instant::now();
            }
            if event::poll(Duration::from_millis(100)).context("reading terminal events")? {
                match event::read().context("reading terminal events")? {
                    Event::Key(k) => {
                        app.on_key(k);
                        dirty = true;
                    }
                    Event::Resize(..) => dirty = true,
                    _ => {}
                }
            }
        }
    })();
    poller_done.store(true, Ordering::Relaxed);
    restore_terminal();
    let _ = std::panic::take_hook();
    result
}
