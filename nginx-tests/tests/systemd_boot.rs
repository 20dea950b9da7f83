//! The Debian packages (`./build.sh package`) under a real systemd: a
//! Debian bookworm container booting systemd 252 as PID 1 (see `boot/`),
//! the packages installed with apt, Debian's own nginx with the packaged
//! module, test backends and clients in the container's network namespace.
//!
//! `packages_install_count_restart_and_purge_under_systemd` (every run):
//!   - `apt-get install ./upstreamtop_*.deb ./libnginx-mod-http-upstreamtop_*.deb`
//!     enables and starts the unit; it is active (running) through
//!     `Type=notify`, as its system user `upstreamtop` (made by the package
//!     with sysusers.d), with exactly the three capabilities, and nginx's
//!     workers (www-data) can read the table it publishes;
//!     the module is enabled the Debian way and nginx loads it;
//!   - nginx's `/upstreamtop` gives per-backend requests and exact codes
//!     equal to what the backends served;
//!   - `systemctl restart` under load: the totals continue, nothing lost;
//!   - `apt-get purge`: every tcx program detached, the pins, the table, the
//!     unit, the module snippet and /etc/default gone, nginx still serving.
//!
//! `full_life_cycle_under_systemd` (`./build.sh test --slow`, or
//! `UPSTREAMTOP_SLOW_TESTS=1`) adds: `systemd-analyze security` as
//! docs/operations.md states it; `systemctl stop` leaves the programs
//! counting and `start` resumes; `kill -9` of the main process: systemd
//! restarts it and the totals continue; `systemctl reload nginx` and an
//! nginx binary upgrade (USR2, QUIT) under load: the endpoint keeps
//! answering; a package upgrade N -> N+1 under load keeps counting.
//!
//! Skipped, with a message, without root, mmdebstrap or systemd-nspawn
//! (`./build.sh deps` installs them); missing packages are a failure naming
//! `./build.sh package`.

mod boot;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use boot::Container;
use nginx_tests::backend::{Backend, Profile};
use nginx_tests::load::{self, LoadResult, LoadSpec, Route};
use nginx_tests::{artifacts, http};
use serde_json::Value;

/// CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39): what the unit grants.
const UNIT_CAPS: u64 = (1 << 12) | (1 << 38) | (1 << 39);
/// Debian's range for system users (adduser.conf, sysusers).
const SYSTEM_UIDS: std::ops::RangeInclusive<u32> = 100..=999;
const BACKENDS: [&str; 2] = ["127.0.0.1:9101", "127.0.0.1:9102"];
const NGINX: &str = "127.0.0.1:80";
/// Waiting for the endpoint to show what the backends served.
const SETTLE: Duration = Duration::from_secs(30);

fn slow() -> bool {
    std::env::var("UPSTREAMTOP_SLOW_TESTS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// target/deb/NAME_<version>_<arch>.deb, as `./build.sh package` leaves it.
fn deb(name: &str) -> PathBuf {
    let dir = artifacts::target_dir().join("deb");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with(&format!("{name}_")) && f.ends_with(".deb")
        })
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| panic!("no {name}_*.deb in {}: run ./build.sh package", dir.display()))
}

fn deb_field(deb: &Path, field: &str) -> String {
    let out = std::process::Command::new("dpkg-deb").arg("-f").arg(deb).arg(field).output().expect("dpkg-deb -f");
    assert!(out.status.success(), "dpkg-deb -f {}: {}", deb.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What the container needs besides the packages: systemd and D-Bus,
/// Debian's nginx, and every run-time dependency of the packages (the
/// container has no network, so apt finds them installed).
fn root_packages(debs: &[PathBuf]) -> Vec<String> {
    let mut packages: Vec<String> = ["systemd", "dbus", "nginx"].map(String::from).to_vec();
    for deb in debs {
        for dep in deb_field(deb, "Depends").split(',') {
            let first = dep.split('|').next().unwrap_or_default();
            let name = first.split_whitespace().next().unwrap_or_default();
            // nginx-abi-* is virtual, provided by nginx.
            if !name.is_empty() && !name.starts_with("nginx-abi-") {
                packages.push(name.to_owned());
            }
        }
    }
    packages
}

/// The packages as version N (built) and, for upgrades, N+1 (the same
/// files repacked with a higher version), in one directory bound at /debs.
struct Debs {
    dir: tempfile::TempDir,
    version: String,
}

impl Debs {
    fn new(with_next: bool) -> Debs {
        let dir = tempfile::Builder::new().prefix("upstreamtop-debs-").tempdir().unwrap();
        let probe = deb("upstreamtop");
        let version = deb_field(&probe, "Version");
        for built in [probe, deb("libnginx-mod-http-upstreamtop")] {
            let name = deb_field(&built, "Package");
            std::fs::copy(&built, dir.path().join(format!("{name}_N.deb"))).unwrap();
            if with_next {
                let tree = dir.path().join(format!("{name}.tree"));
                let next = format!("{version}+1");
                let script = format!(
                    r#"dpkg-deb -R "$0" "$1" && sed -i 's/^Version: .*/Version: {next}/' "$1/DEBIAN/control" && dpkg-deb -b "$1" "$2" >/dev/null && rm -rf "$1""#
                );
                let status = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(script)
                    .arg(&built)
                    .arg(&tree)
                    .arg(dir.path().join(format!("{name}_N+1.deb")))
                    .status()
                    .unwrap();
                assert!(status.success(), "repacking {} as {next}", built.display());
            }
        }
        Debs { dir, version }
    }
}

/// The container with the packages installed, nginx proxying to two test
/// backends, the probe configured for loopback clients.
struct Site {
    backends: Vec<Backend>,
    c: Container,
    debs: Debs,
}

fn nginx_site(with_endpoint: bool) -> String {
    let servers: String = BACKENDS.iter().map(|b| format!("    server {b};\n")).collect();
    let endpoint = if with_endpoint {
        "    location = /upstreamtop {\n        upstreamtop_status;\n        allow 127.0.0.1;\n        deny all;\n    }\n"
    } else {
        ""
    };
    format!(
        "upstream app {{\n    zone app 64k;\n{servers}}}\n\
         server {{\n    listen 80 default_server;\n    location / {{\n        proxy_pass http://app;\n    }}\n{endpoint}}}\n"
    )
}

impl Site {
    /// Boot, install both packages, check what installing did, configure.
    fn install(debs: Debs) -> Result<Site> {
        let tar = boot::root_tarball(&root_packages(&[deb("upstreamtop"), deb("libnginx-mod-http-upstreamtop")]))?;
        let c = Container::boot(&tar, &[(debs.dir.path(), "/debs")])?;
        let started = Instant::now();
        let out = c.sh("apt-get install -y /debs/upstreamtop_N.deb /debs/libnginx-mod-http-upstreamtop_N.deb 2>&1")?;
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status.success(), "apt-get install failed:\n{log}\n{}", c.journal("upstreamtop-probe"));
        eprintln!("apt-get install of both packages: {:.1?}", started.elapsed());
        let site = Site { backends: Vec::new(), c, debs };
        site.check_installed()?;
        // Started by the installation, as installed.
        site.check_unit()?;

        // The backends, in the container's network namespace.
        let mut site = site;
        for (addr, profile) in
            BACKENDS.iter().zip([Profile::fast().statuses(&[(200, 8), (404, 1), (503, 1)]), Profile::fast()])
        {
            let addr: SocketAddr = addr.parse()?;
            site.backends.push(site.c.in_netns(move || Backend::start(addr, profile))??);
        }
        // What an admin does next: the probe leaves nginx's own port out
        // (clients reach it over loopback here), nginx gets the endpoint.
        site.c.write(
            "/etc/default/upstreamtop-probe",
            "UPSTREAMTOP_PROBE_ARGS=\"--ignore-port 80 --interval 500ms\"\n",
        )?;
        site.c.write("/etc/nginx/sites-enabled/default", &nginx_site(true))?;
        site.c.ok("nginx -t 2>&1 && systemctl reload nginx && systemctl restart upstreamtop-probe")?;
        site.check_unit()?;
        Ok(site)
    }

    /// Files and links as Debian's packages put them; the unit enabled.
    fn check_installed(&self) -> Result<()> {
        let c = &self.c;
        assert_eq!(c.ok("systemctl is-enabled upstreamtop-probe")?, "enabled");
        assert_eq!(
            c.ok("readlink /etc/nginx/modules-enabled/50-mod-http-upstreamtop.conf")?,
            "/usr/share/nginx/modules-available/mod-http-upstreamtop.conf"
        );
        assert_eq!(
            c.ok("cat /usr/share/nginx/modules-available/mod-http-upstreamtop.conf")?,
            "load_module modules/ngx_http_upstreamtop_module.so;"
        );
        c.ok(
            "test -f /usr/lib/nginx/modules/ngx_http_upstreamtop_module.so && test -f /etc/default/upstreamtop-probe",
        )?;
        c.ok("test -f /usr/share/doc/upstreamtop/examples/nginx.conf && test -f /usr/share/man/man1/upstreamtop-probe.1.gz")?;
        c.ok("test -f /usr/share/bash-completion/completions/upstreamtop-probe")?;
        assert_eq!(
            c.ok("systemctl show upstreamtop-probe -P FragmentPath")?,
            "/lib/systemd/system/upstreamtop-probe.service"
        );
        // nginx (reloaded by the package's trigger) runs the module.
        c.ok("nginx -t 2>&1")?;
        Ok(())
    }

    /// Active (running) through Type=notify, as the system user
    /// upstreamtop, exactly the unit's three capabilities, no new
    /// privileges, its table readable by nginx's workers; the probe's pid.
    fn check_unit(&self) -> Result<u32> {
        let c = &self.c;
        let show = |k: &str| c.show("upstreamtop-probe", k);
        assert_eq!(show("Type")?, "notify");
        let state = (show("ActiveState")?, show("SubState")?);
        ensure!(
            state == ("active".into(), "running".into()),
            "upstreamtop-probe is {state:?}:\n{}",
            c.journal("upstreamtop-probe")
        );
        assert_eq!(show("User")?, "upstreamtop");
        let user: u32 = c.ok("id -u upstreamtop")?.parse()?;
        ensure!(SYSTEM_UIDS.contains(&user), "upstreamtop has uid {user}, not a system user's");
        let pid: u32 = show("MainPID")?.parse()?;
        let status = c.ok(&format!("cat /proc/{pid}/status"))?;
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}:")))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("{k} in /proc/{pid}/status"))
        };
        for uid in field("Uid").split_whitespace() {
            ensure!(uid.parse::<u32>()? == user, "the probe runs as uid {uid}, upstreamtop is {user}");
        }
        for key in ["CapEff", "CapPrm", "CapAmb", "CapBnd"] {
            let got = u64::from_str_radix(&field(key), 16)?;
            ensure!(got == UNIT_CAPS, "{key} {got:#x}, the unit grants {UNIT_CAPS:#x}");
        }
        assert_eq!(field("NoNewPrivs"), "1");
        c.ok("su -s /bin/sh www-data -c 'head -c 8 /run/upstreamtop/table' | grep -q UPTOPTBL")
            .context("nginx's user reads the table")?;
        Ok(pid)
    }

    fn report(&self) -> Result<Value> {
        let resp = self.c.in_netns(|| http::get(&format!("http://{NGINX}/upstreamtop")))??;
        ensure!(resp.status == 200, "/upstreamtop: {} {}", resp.status, resp.text());
        Ok(serde_json::from_slice(&resp.body)?)
    }

    /// Per backend: (requests, exact codes), as the endpoint says.
    fn counted(report: &Value) -> BTreeMap<String, (u64, BTreeMap<u16, u64>)> {
        let mut out = BTreeMap::new();
        for peer in report["upstreams"]["app"]["peers"].as_array().into_iter().flatten() {
            let codes = peer["responses"]["codes"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.parse().unwrap_or(0), v.as_u64().unwrap_or(0)))
                .collect();
            out.insert(
                peer["server"].as_str().unwrap_or_default().to_owned(),
                (peer["requests"].as_u64().unwrap_or(0), codes),
            );
        }
        out
    }

    /// What the backends served, the same way.
    fn served(&self) -> BTreeMap<String, (u64, BTreeMap<u16, u64>)> {
        self.backends.iter().map(|b| (b.addr().to_string(), (b.total(), b.by_status()))).collect()
    }

    /// The endpoint's figures equal the backends' (waiting for the next
    /// publishes); the last report.
    fn settle(&self, what: &str) -> Result<Value> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let report = self.report();
            if let Ok(report) = &report {
                if Self::counted(report) == self.served() {
                    let total: u64 = self.backends.iter().map(Backend::total).sum();
                    eprintln!("{what}: {total} requests, per backend and exact code = the backends'");
                    return Ok(report.clone());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: the endpoint {:?} vs the backends {:?} after {SETTLE:?}\n{}",
                    report.as_ref().map(Self::counted),
                    self.served(),
                    self.c.journal("upstreamtop-probe")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn spec() -> LoadSpec {
        LoadSpec::new(NGINX.parse().unwrap(), vec![Route::get("/api/orders", 3), Route::get("/api/users/42", 1)])
            .concurrency(4)
    }

    fn load(&self, n: u64) -> Result<()> {
        let got = self.c.in_netns(move || load::run(&Self::spec().requests(n)))??;
        ensure!(got.errors == 0, "{} requests without an answer: {:?}", got.errors, got.error_samples);
        Ok(())
    }

    /// Steady load (about `rate` req/s) until the handle is stopped.
    fn background_load(&self, rate: f64) -> Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let join = self.c.spawn_in_netns(move || {
            load::run_until(&Self::spec().rate(Some(rate)).duration(Duration::from_secs(3600)), &flag)
        })?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Load { stop, join: Some(join) })
    }

    /// Poll the endpoint every 50 ms until stopped: (200s, other answers).
    fn poll_endpoint(&self) -> Result<Poller> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (flag, ok2, bad2) = (stop.clone(), ok.clone(), bad.clone());
        let join = self.c.spawn_in_netns(move || {
            let mut failures = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match http::get(&format!("http://{NGINX}/upstreamtop")) {
                    Ok(r) if r.status == 200 => ok2.fetch_add(1, Ordering::Relaxed),
                    other => {
                        failures.push(format!("{:?}", other.map(|r| (r.status, r.text()))));
                        bad2.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(50));
            }
            failures
        })?;
        Ok(Poller { stop, ok, bad, join: Some(join) })
    }

    /// Starts of the probe that took the pinned programs over, so far.
    fn takeovers(&self) -> usize {
        let out = self.c.sh("journalctl -u upstreamtop-probe -o cat --no-pager").expect("journalctl");
        String::from_utf8_lossy(&out.stdout).matches("pinned maps reused").count()
    }

    fn probe_pid(report: &Value) -> u64 {
        report["probe"]["pid"].as_u64().unwrap_or(0)
    }

    /// Remove the endpoint from nginx (as an admin would first), purge both
    /// packages; nothing of the probe is left, nginx keeps serving.
    fn purge(&self) -> Result<()> {
        let c = &self.c;
        c.write("/etc/nginx/sites-enabled/default", &nginx_site(false))?;
        c.ok("systemctl reload nginx")?;
        let out = c.sh("apt-get purge -y upstreamtop libnginx-mod-http-upstreamtop 2>&1")?;
        ensure!(out.status.success(), "apt-get purge: {}", String::from_utf8_lossy(&out.stdout));
        let (ingress, egress) = c.in_netns(|| boot::tcx_programs(1))??;
        ensure!((ingress, egress) == (0, 0), "after purge, tcx programs on lo: {ingress} ingress, {egress} egress");
        ensure!(!c.bpffs().join("upstreamtop").exists(), "after purge, pins left in /sys/fs/bpf/upstreamtop");
        for gone in [
            "/run/upstreamtop",
            "/etc/default/upstreamtop-probe",
            "/lib/systemd/system/upstreamtop-probe.service",
            "/etc/systemd/system/multi-user.target.wants/upstreamtop-probe.service",
            "/etc/nginx/modules-enabled/50-mod-http-upstreamtop.conf",
            "/usr/lib/nginx/modules/ngx_http_upstreamtop_module.so",
        ] {
            c.ok(&format!("! test -e {gone} && ! test -L {gone}"))
                .with_context(|| format!("{gone} left after purge"))?;
        }
        assert_eq!(c.sh("systemctl is-active upstreamtop-probe")?.stdout, b"inactive\n");
        c.ok("nginx -t 2>&1 && systemctl is-active nginx")?;
        self.load(50)?;
        eprintln!("purge: no tcx program on lo, no pin, table, unit or module snippet left; nginx serving");
        Ok(())
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<Result<Result<LoadResult>>>>,
}

impl Load {
    fn finish(mut self) -> Result<LoadResult> {
        self.stop.store(true, Ordering::Relaxed);
        let got = self.join.take().unwrap().join().map_err(|_| anyhow::anyhow!("load thread panicked"))???;
        ensure!(got.errors == 0, "{} requests without an answer: {:?}", got.errors, got.error_samples);
        Ok(got)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

struct Poller {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
    join: Option<JoinHandle<Result<Vec<String>>>>,
}

impl Poller {
    /// (answers 200, the others).
    fn finish(mut self) -> Result<(u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.join.take().unwrap().join().map_err(|_| anyhow::anyhow!("poller panicked"))??;
        debug_assert_eq!(failures.len() as u64, self.bad.load(Ordering::Relaxed));
        Ok((self.ok.load(Ordering::Relaxed), failures))
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

fn skip(test: &str) -> bool {
    match boot::unsupported() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            true
        }
        None => false,
    }
}

/// Counts, then `systemctl restart` under load: the totals continue.
fn count_and_restart_under_load(site: &Site) -> Result<()> {
    site.load(300)?;
    let before = site.settle("installed")?;
    let (ingress, egress) = site.c.in_netns(|| boot::tcx_programs(1))??;
    ensure!((ingress, egress) == (1, 1), "tcx programs on lo: {ingress} ingress, {egress} egress (want 1 each)");

    let takeovers = site.takeovers();
    let load = site.background_load(150.0)?;
    let started = Instant::now();
    site.c.ok("systemctl restart upstreamtop-probe")?;
    let restart = started.elapsed();
    std::thread::sleep(Duration::from_millis(700));
    let sent = load.finish()?;
    site.check_unit()?;
    let after = site.settle("restart under load")?;
    ensure!(Site::probe_pid(&after) != Site::probe_pid(&before), "the endpoint still shows the old probe");
    ensure!(
        site.takeovers() == takeovers + 1,
        "the new probe did not take the pins over:\n{}",
        site.c.journal("upstreamtop-probe")
    );
    eprintln!("restart under load: {} requests sent meanwhile, restart took {restart:.1?}", sent.responses());
    Ok(())
}

#[test]
fn packages_install_count_restart_and_purge_under_systemd() {
    let test = "packages_install_count_restart_and_purge_under_systemd";
    if skip(test) {
        return;
    }
    if slow() {
        eprintln!("SKIPPED {test}: full_life_cycle_under_systemd covers it (--slow)");
        return;
    }
    let started = Instant::now();
    let site = Site::install(Debs::new(false)).unwrap();
    count_and_restart_under_load(&site).unwrap();
    site.purge().unwrap();
    eprintln!("{test}: {:.1?} (container {} at {})", started.elapsed(), site.c.name(), site.debs.version);
}

#[test]
fn full_life_cycle_under_systemd() {
    let test = "full_life_cycle_under_systemd";
    if skip(test) {
        return;
    }
    if !slow() {
        eprintln!(
            "SKIPPED {test}: the full boot-level test runs with ./build.sh test --slow (UPSTREAMTOP_SLOW_TESTS=1)"
        );
        return;
    }
    let started = Instant::now();
    let site = Site::install(Debs::new(true)).unwrap();
    let c = &site.c;

    // systemd-analyze security, as documented.
    let text = c.ok("systemd-analyze security --no-pager upstreamtop-probe.service 2>&1").unwrap();
    let level = nginx_tests::systemd::exposure_level(&text, "upstreamtop-probe.service")
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    let docs = std::fs::read_to_string(artifacts::workspace_root().join("docs/operations.md")).unwrap();
    let documented: f64 = docs
        .split("`systemd-analyze security` rates it")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("docs/operations.md: \"`systemd-analyze security` rates it N\"");
    assert_eq!(level, documented, "systemd-analyze security under systemd vs docs/operations.md");
    eprintln!("systemd-analyze security: {level}, as documented");

    count_and_restart_under_load(&site).unwrap();

    // stop: the programs stay and count; start: the totals continue.
    c.ok("systemctl stop upstreamtop-probe").unwrap();
    assert_eq!(c.show("upstreamtop-probe", "ActiveState").unwrap(), "inactive");
    assert_eq!(c.in_netns(|| boot::tcx_programs(1)).unwrap().unwrap(), (1, 1), "programs attached while stopped");
    site.load(200).unwrap();
    c.ok("systemctl start upstreamtop-probe").unwrap();
    site.check_unit().unwrap();
    site.settle("stop, 200 requests, start").unwrap();

    // kill -9: Restart=on-failure brings it back, the totals continue.
    let pid = site.check_unit().unwrap();
    let restarts: u32 = c.show("upstreamtop-probe", "NRestarts").unwrap().parse().unwrap();
    let load = site.background_load(100.0).unwrap();
    c.ok(&format!("kill -9 {pid}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: u32 = c.show("upstreamtop-probe", "NRestarts").unwrap().parse().unwrap();
        let state = c.show("upstreamtop-probe", "SubState").unwrap();
        if now == restarts + 1 && state == "running" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no restart after kill -9 ({now} restarts, {state}):\n{}",
            c.journal("upstreamtop-probe")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let new_pid = site.check_unit().unwrap();
    assert_ne!(new_pid, pid);
    load.finish().unwrap();
    site.settle("kill -9, restarted by systemd").unwrap();

    // nginx reload and binary upgrade under load: the endpoint answers.
    let load = site.background_load(100.0).unwrap();
    let poller = site.poll_endpoint().unwrap();
    c.ok("systemctl reload nginx && sleep 1 && systemctl reload nginx && sleep 1").unwrap();
    let old = c.ok("cat /run/nginx.pid").unwrap();
    c.ok(&format!(
        "kill -USR2 {old} && for i in $(seq 100); do [ -s /run/nginx.pid ] && [ \"$(cat /run/nginx.pid)\" != {old} ] && break; sleep 0.1; done \
         && [ \"$(cat /run/nginx.pid)\" != {old} ] && sleep 1 && kill -QUIT {old}"
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (answered, failures) = poller.finish().unwrap();
    load.finish().unwrap();
    assert!(
        failures.is_empty(),
        "the endpoint failed {} times during reloads and the upgrade: {failures:?}",
        failures.len()
    );
    assert!(answered > 20, "only {answered} polls answered");
    let new_master = c.ok("cat /run/nginx.pid").unwrap();
    assert_ne!(new_master, old);
    c.ok(&format!("kill -0 {new_master}")).unwrap();
    eprintln!(
        "nginx reload x2 and binary upgrade (master {old} -> {new_master}): {answered} polls of /upstreamtop, all 200; nginx.service {}",
        c.show("nginx", "ActiveState").unwrap()
    );
    site.settle("nginx reloads and upgrade").unwrap();

    // Package upgrade N -> N+1 under load.
    let before = site.report().unwrap();
    let takeovers = site.takeovers();
    let load = site.background_load(100.0).unwrap();
    let out =
        c.sh("apt-get install -y /debs/upstreamtop_N+1.deb /debs/libnginx-mod-http-upstreamtop_N+1.deb 2>&1").unwrap();
    assert!(out.status.success(), "upgrade: {}", String::from_utf8_lossy(&out.stdout));
    load.finish().unwrap();
    let next = format!("{}+1", site.debs.version);
    assert_eq!(c.ok("dpkg-query -W -f '${Version}' upstreamtop").unwrap(), next);
    assert_eq!(c.ok("dpkg-query -W -f '${Version}' libnginx-mod-http-upstreamtop").unwrap(), next);
    assert_eq!(c.ok("systemctl is-enabled upstreamtop-probe").unwrap(), "enabled");
    site.check_unit().unwrap();
    let after = site.settle("package upgrade N -> N+1 under load").unwrap();
    assert_ne!(Site::probe_pid(&after), Site::probe_pid(&before), "the upgrade restarted the probe");
    assert_eq!(site.takeovers(), takeovers + 1, "the upgraded probe took the pins over");

    site.purge().unwrap();
    eprintln!("{test}: {:.1?}", started.elapsed());
}
