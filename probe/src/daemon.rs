//! The daemon: attach (or take over pinned links, see pins.rs), fold,
//! publish every interval; on a signal publish once more and exit, leaving
//! pinned programs counting for the next run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use std::{cell::RefCell, rc::Rc};

use anyhow::{bail, Context, Result};
use upstreamtop_table::{Capacities, TableWriter};

use crate::aggregate::{AggLimits, Aggregator};
use crate::bpf::{ring_pending, types, BpfConfig, Programs};
use crate::cli::Cli;
use crate::peer_slots::PeerSlots;
use crate::pins::StateDir;
use crate::restore::Resume;
use crate::sweep::{read_totals, sweep_and_read, SweepConfig};
use crate::{ifaces, notify};

/// The ring buffer is drained this often (events are submitted without
/// wakeups, so the programs never pay for one).
const POLL: Duration = Duration::from_millis(50);
/// Recent-feed samples kept per interval; the rest are counted.
const RECENT_PER_INTERVAL: usize = 20;
const RECENT_LEN: usize = 100;
/// Idle HTTP peers whose totals are kept (banked) after their slot went
/// back, per `--max-peers`.
const BANKED_PER_PEER: u32 = 4;

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
    // The first pass also sees links adopted from a previous run.
    let mut changed = first;
    for (index, name) in progs.attached() {
        if !all.iter().any(|i| i.index == index && i.name == name) {
            progs.detach(index);
            log(&format!("detached from {name} (gone)"));
            changed = true;
        } else if first && !wanted.iter().any(|i| i.index == index) {
            progs.detach(index);
            log(&format!("detached from {name} (no longer asked for)"));
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
        max_tcp_peers: cli.max_tcp_peers,
        max_codes: cli.max_peers.saturating_mul(16),
        max_banked: cli.max_peers.saturating_mul(BANKED_PER_PEER),
        // Room for a burst of exchange events while the daemon is starved
        // of CPU. Drops are counted and cost only routes, latency and the
        // recent feed: peer totals are counted in the maps and stay exact.
        ring_bytes: 1 << 23,
    };
    // Unknown interfaces, an unwritable table directory and capacities too
    // large for a table fail before anything is loaded or pinned, so a
    // failed start leaves no state behind.
    ifaces::select(&ifaces::list()?, &cli.ifaces)?;
    let caps = Capacities {
        // HTTP backends (with slots, or idle and banked), then the peers
        // of other TCP.
        max_peers: cli.max_peers * (1 + BANKED_PER_PEER) + cli.max_tcp_peers,
        // Room for each peer's "other" route next to the regular ones.
        max_routes: cli.max_routes + cli.max_peers,
        max_recent: RECENT_LEN as u32,
        history_len: cli.history,
    };
    // The new table is built under a temporary name; the previous one stays
    // at the path, untouched, until the first publish below renames the new
    // one over it. Any exit before that (a verifier error, an interface
    // that fails to attach, kill -9) leaves the previous run's totals,
    // routes and history for the next start. (Dropping the writer removes
    // its temporary file; one left by kill -9 goes at the next start.)
    let mut writer = TableWriter::create(&cli.table, caps)
        .with_context(|| format!("cannot create the table at {} (is its directory writable?)", cli.table.display()))?;
    let (state, _lock) = state_dir(&cli)?;
    let mut progs = Programs::load(&cfg, state)?;
    // The previous run's last publish, which the first publish continues.
    let previous = upstreamtop_table::TableReader::new(&cli.table).snapshot().ok();
    let slots = RefCell::new(PeerSlots::new(&progs, cli.peer_idle)?);
    install_signal_handlers();
    set_ephemeral_ports(&mut progs);
    let live: Vec<(u32, String)> = ifaces::list()?.into_iter().map(|i| (i.index, i.name)).collect();
    progs.adopt_links(&live)?;
    sync_ifaces(&mut progs, &cli, true)?;
    if progs.attached().is_empty() {
        bail!("no interface to attach to");
    }

    let agg = Rc::new(RefCell::new(Aggregator::new(AggLimits {
        max_routes: cli.max_routes as usize,
        history_len: cli.history as usize,
        recent_per_interval: RECENT_PER_INTERVAL,
        recent_len: RECENT_LEN,
        max_tcp_peers: cli.max_tcp_peers as usize,
    })));
    if let Some(last) = &previous {
        let how = if progs.resumed() { Resume::Maps } else { Resume::TableOnly };
        let now = read_totals(&progs, &mut slots.borrow_mut())?;
        agg.borrow_mut().restore(last, &now, how);
        log(&format!(
            "continuing from publish #{} of {} ({})",
            last.meta.publish_seq,
            cli.table.display(),
            match how {
                Resume::Maps => "pinned maps reused: nothing was missed while no probe ran",
                Resume::TableOnly => "new maps: totals go on from the table; traffic while no probe ran is not counted",
            }
        ));
    } else if progs.resumed() {
        log("pinned maps reused (no previous table: routes start empty)");
    }
    let ring_agg = agg.clone();
    let ring = progs.ring_buffer(move |ev: &types::exchange_event| ring_agg.borrow_mut().on_event(ev))?;
    let sweep_cfg = SweepConfig { idle_timeout_ns: cli.conn_idle.as_nanos() as u64 };

    // Events stay in the ring until just before a publish, unless it fills
    // up: an event folded but not yet published is lost if the probe is
    // killed (-9), while one in the (pinned) ring is read by the next probe.
    let early_drain = (cfg.ring_bytes / 4) as usize;
    let publish = |progs: &Programs, writer: &mut TableWriter| -> Result<()> {
        let totals = sweep_and_read(progs, &mut agg.borrow_mut(), &mut slots.borrow_mut(), sweep_cfg)?;
        ring.consume().context("draining the events ring buffer")?;
        let names = progs.attached().into_iter().map(|(_, n)| n).collect();
        let mut agg = agg.borrow_mut();
        let snap = agg.end_interval(&totals, interval.as_nanos() as u64, names);
        let report = writer.publish(snap).with_context(|| format!("publishing to {}", cli.table.display()))?;
        if report.peers_truncated + report.routes_truncated + report.recent_truncated > 0 {
            log(&format!("table full: {report:?}"));
        }
        Ok(())
    };

    let mut next = Instant::now();
    let mut ready = false;
    while !STOP.load(Ordering::Relaxed) {
        if ring_pending(&ring) > early_drain {
            ring.consume().context("draining the events ring buffer")?;
        }
        if Instant::now() >= next {
            next += interval;
            if cli.ifaces.is_empty() || progs.attached().len() < cli.ifaces.len() {
                if let Err(e) = sync_ifaces(&mut progs, &cli, false) {
                    log(&format!("watching interfaces: {e:#}"));
                }
            }
            set_ephemeral_ports(&mut progs);
            publish(&progs, &mut writer)?;
            if !ready {
                ready = true;
                notify::notify("READY=1")?;
                log(&format!("publishing to {} every {interval:?}", cli.table.display()));
            }
        }
        std::thread::sleep(POLL.min(next.saturating_duration_since(Instant::now())));
    }
    let _ = notify::notify("STOPPING=1");
    // Whatever was counted up to now is in the table for the next run.
    publish(&progs, &mut writer)?;
    if progs.pinned() {
        log(&format!(
            "stopping: programs stay attached and counting (pinned in {}; `upstreamtop-probe detach --state-dir {0}` removes them)",
            cli.state_dir.display()
        ));
    } else {
        log("stopping: detaching programs");
    }
    drop(ring);
    drop(progs);
    Ok(())
}

/// The state directory to pin into (and its lock), or none with a log
/// line saying why.
fn state_dir(cli: &Cli) -> Result<(Option<StateDir>, Option<std::fs::File>)> {
    if cli.no_pin {
        if StateDir::at(&cli.state_dir).links().is_ok_and(|l| !l.is_empty()) {
            log(&format!(
                "an earlier probe's programs are still attached (pinned in {0}); \
                 `upstreamtop-probe detach --state-dir {0}` removes them",
                cli.state_dir.display()
            ));
        }
        return Ok((None, None));
    }
    let sd = match StateDir::prepare(&cli.state_dir) {
        Ok(sd) => sd,
        Err(e) => {
            log(&format!(
                "not pinning ({e:#}): a restart continues the totals from the table, \
                 but what crosses the wire while no probe runs is not counted"
            ));
            return Ok((None, None));
        }
    };
    let lock = sd.lock()?;
    Ok((Some(sd), Some(lock)))
}

/// `upstreamtop-probe detach`: remove what a probe left pinned.
pub fn detach(state_dir: &std::path::Path) -> Result<()> {
    let sd = StateDir::at(state_dir);
    if !state_dir.exists() {
        println!("nothing pinned in {}", state_dir.display());
        return Ok(());
    }
    let _lock = sd.lock()?;
    let n = sd.clear(true)?;
    println!("detached {n} tcx links and removed {}", state_dir.display());
    Ok(())
}

/// `upstreamtop-probe status`: the pinned links.
pub fn status(state_dir: &std::path::Path) -> Result<()> {
    let sd = StateDir::at(state_dir);
    let names: Vec<(u32, String)> = ifaces::list()?.into_iter().map(|i| (i.index, i.name)).collect();
    for l in sd.links()? {
        let ifname = names.iter().find(|(i, _)| *i == l.ifindex).map_or("?", |(_, n)| n.as_str());
        let dir = if l.egress { "egress" } else { "ingress" };
        match crate::bpf::link_ids(&l.path) {
            Ok((link, prog, attached)) => println!(
                "link {link} prog {prog} ifindex {} iface {ifname} {dir} {}",
                l.ifindex,
                if attached { "attached" } else { "defunct" }
            ),
            Err(e) => println!("link ? prog ? ifindex {} iface {ifname} {dir} unreadable: {e:#}", l.ifindex),
        }
    }
    Ok(())
}

/// `upstreamtop-probe dump`: the current table as JSON on stdout, the
/// answer the module gives with no nginx configuration (every peer
/// unlisted).
pub fn dump(table: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let mut reader = upstreamtop_table::TableReader::new(table);
    let view = reader
        .view_if_new(None)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_context(|| format!("{}: no complete publish to read", table.display()))?;
    let conf = upstreamtop_report::NginxConfig::default();
    let body = upstreamtop_report::render(
        &view,
        &conf,
        &upstreamtop_report::Query::default(),
        crate::aggregate::unix_ns(),
        Vec::new(),
    );
    let mut out = std::io::stdout().lock();
    out.write_all(&body.body).and_then(|()| out.write_all(b"\n")).context("write to stdout")?;
    Ok(())
}
