//! The daemon: attach, fold, publish every interval, detach on a signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use std::{cell::RefCell, rc::Rc};

use anyhow::{bail, Context, Result};
use upstreamtop_table::{Capacities, TableWriter};

use crate::aggregate::{AggLimits, Aggregator};
use crate::bpf::{types, BpfConfig, Programs};
use crate::cli::Cli;
use crate::sweep::{collect, SweepConfig};
use crate::{ifaces, notify};

/// The ring buffer is drained this often (events are submitted without
/// wakeups, so the programs never pay for one).
const POLL: Duration = Duration::from_millis(50);
/// A SYN unanswered this long is a failed connection (covers the first
/// SYN retransmissions).
const SYN_TIMEOUT: Duration = Duration::from_secs(5);
/// Recent-feed samples kept per interval; the rest are counted.
const RECENT_PER_INTERVAL: usize = 20;
const RECENT_LEN: usize = 100;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn log(msg: &str) {
    eprintln!("upstreamtop-probe: {msg}");
}

/// Attach to what `cli.ifaces` asks for (or every up interface), detach
/// from interfaces that are gone. Returns true when something changed.
fn sync_ifaces(progs: &mut Programs, cli: &Cli, first: bool) -> Result<bool> {
    let all = ifaces::list()?;
    let wanted = if cli.ifaces.is_empty() || first {
        ifaces::select(&all, &cli.ifaces)?
    } else {
        // Named interfaces that went away and came back get a new ifindex.
        all.iter().filter(|i| cli.ifaces.contains(&i.name)).cloned().collect()
    };
    let mut changed = false;
    for (index, name) in progs.attached() {
        if !all.iter().any(|i| i.index == index && i.name == name) {
            progs.detach(index);
            log(&format!("detached from {name} (gone)"));
            changed = true;
        }
    }
    let attached = progs.attached();
    for i in &wanted {
        if attached.iter().any(|(idx, _)| *idx == i.index) {
            continue;
        }
        match progs.attach(&i.name, i.index) {
            Ok(()) => {
                log(&format!("attached to {}", i.name));
                changed = true;
            }
            // Named interfaces must work; in watch-everything mode one odd
            // device must not stop the others.
            Err(e) if first && !cli.ifaces.is_empty() => return Err(e),
            Err(e) if first && i.name == "lo" => return Err(e),
            Err(e) => log(&format!("skipping {}: {e:#}", i.name)),
        }
    }
    if changed {
        let names: Vec<String> = progs.attached().into_iter().map(|(_, n)| n).collect();
        let vlan = all.iter().any(|i| i.vlan && names.contains(&i.name));
        progs.set_skip_tagged(vlan);
    }
    Ok(changed)
}

/// Keep the programs' view of the ephemeral port range current (an admin
/// may change it at runtime); on failure every port stays eligible.
fn set_ephemeral_ports(progs: &mut Programs) {
    match ifaces::ephemeral_ports() {
        Ok((lo, hi)) => progs.set_ephemeral_ports(lo, hi),
        Err(e) => log(&format!("{e:#}; peeking at every untracked connection")),
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let interval = cli.interval;
    let cfg = BpfConfig {
        ignore_ports: cli.ignore_ports.clone(),
        only: cli.only.clone(),
        max_conns: cli.max_conns,
        max_peers: cli.max_peers,
        max_codes: cli.max_peers.saturating_mul(16),
        // ~40k exchange events: a few hundred ms of a busy host even when the
        // daemon is starved of CPU (drops are counted; peer totals stay exact).
        ring_bytes: 1 << 23,
    };
    // Unknown interfaces fail before anything is loaded.
    ifaces::select(&ifaces::list()?, &cli.ifaces)?;
    let mut progs = Programs::load(&cfg)?;
    let caps = Capacities {
        max_peers: cli.max_peers,
        // Room for each peer's "other" route next to the regular ones.
        max_routes: cli.max_routes + cli.max_peers,
        max_recent: RECENT_LEN as u32,
        history_len: cli.history,
    };
    let mut writer = TableWriter::create(&cli.table, caps).with_context(|| {
        format!("cannot create the table at {} (is its directory writable?)", cli.table.display())
    })?;
    install_signal_handlers();
    set_ephemeral_ports(&mut progs);
    sync_ifaces(&mut progs, &cli, true)?;
    if progs.attached().is_empty() {
        bail!("no interface to attach to");
    }

    let agg = Rc::new(RefCell::new(Aggregator::new(AggLimits {
        max_routes: cli.max_routes as usize,
        history_len: cli.history as usize,
        recent_per_interval: RECENT_PER_INTERVAL,
        recent_len: RECENT_LEN,
    })));
    let a = agg.clone();
    let ring = progs.ring_buffer(move |ev: &types::exchange_event| a.borrow_mut().on_event(ev))?;
    let sweep = SweepConfig {
        syn_timeout_ns: SYN_TIMEOUT.as_nanos() as u64,
        idle_timeout_ns: cli.conn_idle.as_nanos() as u64,
    };

    let mut next = Instant::now();
    let mut ready = false;
    while !STOP.load(Ordering::Relaxed) {
        ring.consume().context("draining the events ring buffer")?;
        if Instant::now() >= next {
            next += interval;
            if cli.ifaces.is_empty() || progs.attached().len() < cli.ifaces.len() {
                if let Err(e) = sync_ifaces(&mut progs, &cli, false) {
                    log(&format!("watching interfaces: {e:#}"));
                }
            }
            set_ephemeral_ports(&mut progs);
            let mut agg = agg.borrow_mut();
            let totals = collect(&progs, &mut agg, sweep)?;
            let names = progs.attached().into_iter().map(|(_, n)| n).collect();
            let snap = agg.snapshot(&totals, interval.as_nanos() as u64, names);
            let report = writer
                .publish(&snap)
                .with_context(|| format!("publishing to {}", cli.table.display()))?;
            if report.peers_truncated + report.routes_truncated + report.recent_truncated > 0 {
                log(&format!("table full: {report:?}"));
            }
            if !ready {
                ready = true;
                notify::notify("READY=1")?;
                log(&format!("publishing to {} every {interval:?}", cli.table.display()));
            }
        }
        std::thread::sleep(POLL.min(next.saturating_duration_since(Instant::now())));
    }
    let _ = notify::notify("STOPPING=1");
    log("stopping: detaching programs");
    drop(ring);
    drop(progs);
    Ok(())
}

/// `upstreamtop-probe dump`: the current table as JSON on stdout.
pub fn dump(table: &std::path::Path) -> Result<()> {
    let mut reader = upstreamtop_table::TableReader::new(table);
    let snap = reader.snapshot().map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = crate::aggregate::unix_ns();
    let report = upstreamtop_report::build_report(
        &snap,
        &upstreamtop_report::NginxConfig::default(),
        &upstreamtop_report::Query::default(),
        now,
    );
    println!("{}", upstreamtop_report::render_json(&report));
    Ok(())
}
