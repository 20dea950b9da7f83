//! `config/upstreamtop-probe.service` is checked against the real probe.
//! systemd is not PID 1 on test machines, so what the unit grants is
//! reproduced with util-linux `setpriv`: the probe runs as `nobody` with
//! EXACTLY the capabilities the unit lists (ambient + bounding set, no new
//! privileges, umask 077) and must attach, say READY=1 over NOTIFY_SOCKET,
//! and publish counts equal to what a backend served; with any one of those
//! capabilities missing it must fail with a message naming it. Under
//! `strace` its system calls must fit the unit's `SystemCallFilter=` (as
//! `systemd-analyze syscall-filter` expands it) and its sockets the unit's
//! `RestrictAddressFamilies=`. `systemd-analyze verify` checks the file,
//! and `./build.sh install` is run into a DESTDIR.
//!
//! Root, setpriv, strace and systemd-analyze are each checked for; a test
//! that lacks one says so and passes.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nginx_tests::artifacts;
use nginx_tests::backend::{Backend, Profile};
use nginx_tests::load::{self, LoadSpec, Route};
use upstreamtop_table::{Snapshot, TableReader};

const NOBODY: u32 = 65534;
/// Loading and verifying the BPF programs on a busy 2-core machine.
const START: Duration = Duration::from_secs(30);

/// The unit file as (section, key, value) entries, in order.
struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn path() -> PathBuf {
        artifacts::workspace_root().join("config/upstreamtop-probe.service")
    }

    fn load() -> Unit {
        let text = std::fs::read_to_string(Self::path()).expect("read config/upstreamtop-probe.service");
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';'])) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_owned();
            } else {
                let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
                out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        Unit(out)
    }

    /// The last value of `key` in [Service] (systemd: later wins for
    /// single-valued settings).
    fn service(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(s, k, _)| s == "Service" && k == key).map(|(_, _, v)| v.as_str())
    }

    /// Space-separated list settings accumulate over repeated lines.
    fn service_list(&self, key: &str) -> BTreeSet<String> {
        self.0
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .flat_map(|(_, _, v)| v.split_whitespace().map(str::to_owned))
            .collect()
    }

    /// `CAP_BPF` etc. granted by the unit (ambient, which must equal the
    /// bounding set).
    fn capabilities(&self) -> Vec<String> {
        let ambient = self.service_list("AmbientCapabilities");
        assert_eq!(ambient, self.service_list("CapabilityBoundingSet"), "ambient set = bounding set");
        ambient.into_iter().collect()
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn prerequisites(test: &str, tools: &[&str]) -> bool {
    if !artifacts::is_root() {
        eprintln!("skipping {test}: needs root (setpriv to another user, tcx)");
        return false;
    }
    for tool in tools {
        if !have(tool) {
            eprintln!("skipping {test}: {tool} not installed");
            return false;
        }
    }
    true
}

/// `CAP_NET_ADMIN` -> `net_admin` (setpriv's spelling).
fn setpriv_name(cap: &str) -> String {
    cap.strip_prefix("CAP_").unwrap_or(cap).to_ascii_lowercase()
}

/// Capability numbers from linux/capability.h for the ones the unit uses.
fn cap_bit(cap: &str) -> u64 {
    let n = match cap {
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("add {other} to cap_bit"),
    };
    1 << n
}

/// `setpriv` that leaves exactly `caps` (ambient, inheritable, bounding)
/// to `nobody`, with no_new_privs, like the unit's
/// DynamicUser/AmbientCapabilities/CapabilityBoundingSet/NoNewPrivileges.
fn as_nobody_with(caps: &[String]) -> Command {
    let set: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", setpriv_name(c))))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--init-groups", "--no-new-privs"])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"));
    cmd
}

/// A table directory like the unit's RuntimeDirectory=: owned by the
/// service user, 0755, plus a NOTIFY_SOCKET the probe (as nobody) may send
/// to.
struct RunDir {
    dir: tempfile::TempDir,
    notify: UnixDatagram,
}

impl RunDir {
    fn new() -> RunDir {
        let dir = tempfile::Builder::new().prefix("upstreamtop-unit-").tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
        let sock = dir.path().join("notify");
        let notify = UnixDatagram::bind(&sock).expect("bind notify socket");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod notify socket");
        notify.set_read_timeout(Some(Duration::from_millis(200))).expect("socket timeout");
        RunDir { dir, notify }
    }

    fn table(&self) -> PathBuf {
        self.dir.path().join("upstreamtop/table")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("probe.log")).unwrap_or_default()
    }

    /// Spawn `cmd` + the probe with the unit's arguments, stdout/stderr to
    /// probe.log, umask 077 (the probe must set its modes itself).
    fn spawn(&self, mut cmd: Command, probe_args: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.path().join("probe.log")).expect("create log");
        cmd.arg(artifacts::probe_bin().expect("probe binary"))
            .arg("--table")
            .arg(self.table())
            .args(probe_args)
            .env("NOTIFY_SOCKET", self.dir.path().join("notify"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        // SAFETY: umask(2) is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
        cmd.spawn().expect("spawn setpriv + probe")
    }

    /// Wait for READY=1 on the notify socket.
    fn wait_ready(&self, child: &mut Child) -> Result<(), String> {
        let deadline = Instant::now() + START;
        let mut buf = [0u8; 256];
        loop {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == "READY=1") {
                    return Ok(());
                }
            }
            if let Some(status) = child.try_wait().expect("wait") {
                return Err(format!("probe exited with {status} before READY=1:\n{}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("no READY=1 within {START:?}:\n{}", self.log()));
            }
        }
    }
}

/// SIGTERM, then wait (SIGKILL after 10 s); the exit status.
fn stop(child: &mut Child, pid: u32) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own, not yet reaped child.
    unsafe { libc::kill(libc::pid_t::try_from(pid).expect("pid"), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `Key:\tvalue` lines of /proc/PID/status.
fn proc_status(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn unit_file_declares_notify_nonroot_least_privilege_and_hardening() {
    let unit = Unit::load();
    let svc = |k: &str| unit.service(k).unwrap_or_else(|| panic!("[Service] {k}= missing"));
    assert_eq!(svc("Type"), "notify");
    assert!(svc("ExecStart").starts_with("/usr/local/bin/upstreamtop-probe --table /run/upstreamtop/table"));
    assert!(unit.service("DynamicUser") == Some("yes") || unit.service("User").is_some_and(|u| u != "root"));
    assert_eq!(unit.capabilities(), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
    for (key, want) in [
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RuntimeDirectory", "upstreamtop"),
        ("RuntimeDirectoryMode", "0755"),
        ("RuntimeDirectoryPreserve", "yes"),
        ("UMask", "0022"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("RestrictNamespaces", "yes"),
    ] {
        assert_eq!(unit.service(key), Some(want), "{key}=");
    }
    assert_eq!(unit.service_list("RestrictAddressFamilies"), BTreeSet::from(["AF_UNIX".to_owned()]));
    assert!(unit.service("PrivateNetwork").is_none_or(|v| v == "no"), "the probe needs the host's interfaces");
    assert!(unit.service("PrivateUsers").is_none_or(|v| v == "no"), "capabilities must count in the host's namespace");
    // The table path the unit passes is inside the runtime directory.
    assert!(svc("ExecStart").contains(&format!("/run/{}/", svc("RuntimeDirectory"))));
    let mode = std::fs::metadata(Unit::path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o444, 0o444, "unit file readable by all: {mode:o}");
}

#[test]
fn systemd_analyze_verify_and_security() {
    if !have("systemd-analyze") {
        eprintln!(
            "skipping systemd_analyze_verify_and_security: systemd-analyze not installed (Debian package systemd)"
        );
        return;
    }
    // verify wants ExecStart to exist: point it at the built probe, as
    // `build.sh install` points it at $PREFIX/bin.
    let probe = artifacts::probe_bin().expect("probe binary");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("upstreamtop-probe.service");
    let text = std::fs::read_to_string(Unit::path()).unwrap();
    std::fs::write(&unit, text.replace("/usr/local/bin/upstreamtop-probe", &probe.display().to_string())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");

    let out =
        Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let level = nginx_tests::systemd::exposure_level(&text, "upstreamtop-probe.service")
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security: exposure {level} (0 = locked down, 10 = unprotected)");
    // What remains is what the probe needs: CAP_BPF, CAP_NET_ADMIN, the
    // host's network, host-namespace capabilities.
    assert!(level <= 2.0, "exposure {level}:\n{text}");
}

#[test]
fn probe_as_nobody_with_exactly_the_unit_capabilities_publishes_exact_counts() {
    let test = "probe_as_nobody_with_exactly_the_unit_capabilities_publishes_exact_counts";
    if !prerequisites(test, &["setpriv"]) {
        return;
    }
    let caps = Unit::load().capabilities();
    let backend = Backend::loopback(Profile::fast().statuses(&[(200, 8), (404, 1), (503, 1)])).unwrap();
    let run = RunDir::new();
    let mut child = run.spawn(as_nobody_with(&caps), &["--iface", "lo", "--interval", "200ms"]);
    let pid = child.id();
    if let Err(e) = run.wait_ready(&mut child) {
        stop(&mut child, pid);
        panic!("{e}");
    }

    // What the kernel says the running probe has.
    let status = proc_status(pid);
    let want: u64 = caps.iter().map(|c| cap_bit(c)).sum();
    for key in ["CapEff", "CapPrm", "CapAmb", "CapBnd"] {
        let got = u64::from_str_radix(&status[key], 16).unwrap();
        assert_eq!(got, want, "{key} {got:#x}, unit grants {caps:?} = {want:#x}");
    }
    assert!(status["Uid"].split_whitespace().all(|u| u == NOBODY.to_string()), "Uid {}", status["Uid"]);
    assert_eq!(status["NoNewPrivs"], "1");

    let spec = LoadSpec::new(backend.addr(), vec![Route::get("/api/orders", 3), Route::get("/api/users/42", 1)])
        .requests(400)
        .concurrency(2);
    let got = load::run(&spec).unwrap();
    assert_eq!(got.errors, 0, "{:?}", got.error_samples);

    let mut reader = TableReader::new(&run.table());
    let want_codes: Vec<(u16, u64)> = backend.by_status().into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let observed = |snap: &Snapshot| {
        snap.peers.iter().find(|p| p.addr == backend.addr()).map(|p| (p.requests, p.responses.codes.clone()))
    };
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(snap) = reader.snapshot() {
            last = observed(&snap);
            if last == Some((backend.total(), want_codes.clone())) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = stop(&mut child, pid);
    assert_eq!(last, Some((400, want_codes)), "table (left) vs backend; probe log:\n{}", run.log());
    assert!(exit.success(), "SIGTERM exit: {exit}\n{}", run.log());

    // Readable by nginx workers whatever their user, despite umask 077.
    let dir = std::fs::metadata(run.table().parent().unwrap()).unwrap();
    let file = std::fs::metadata(run.table()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o755);
    assert_eq!(file.permissions().mode() & 0o777, 0o644);
    assert_eq!(file.uid(), NOBODY, "the table belongs to the service user");
    eprintln!(
        "as nobody with {caps:?}: READY=1, {} requests counted = backend, table 0644 in a 0755 dir",
        backend.total()
    );
}

#[test]
fn probe_with_one_capability_fewer_fails_naming_it() {
    if !prerequisites("probe_with_one_capability_fewer_fails_naming_it", &["setpriv"]) {
        return;
    }
    let caps = Unit::load().capabilities();
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let run = RunDir::new();
        let mut child = run.spawn(as_nobody_with(&fewer), &["--iface", "lo"]);
        let pid = child.id();
        let deadline = Instant::now() + START;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                stop(&mut child, pid);
                panic!("without {missing} the probe kept running:\n{}", run.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = run.log();
        assert!(!status.success(), "without {missing}: exit {status}\n{log}");
        let last = log.lines().last().unwrap_or_default();
        assert!(last.contains(missing.as_str()), "without {missing}, the last line names it: {last}\n{log}");
        assert!(!run.table().exists(), "nothing published without {missing}");
        eprintln!("without {missing}: {status}: {last}");
    }
}

/// Every system call name in the expansion of `filter` (names and @groups)
/// by `systemd-analyze syscall-filter`.
fn expand_syscall_filter(filter: &BTreeSet<String>) -> BTreeSet<String> {
    let out = Command::new("systemd-analyze").arg("syscall-filter").arg("--no-pager").output().unwrap();
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') && t.starts_with('@') {
            current = Some(t.to_owned());
            groups.entry(t.to_owned()).or_default();
        } else if let Some(g) = &current {
            groups.get_mut(g).unwrap().push(t.to_owned());
        }
    }
    fn expand(name: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
        match groups.get(name) {
            Some(members) => members.iter().for_each(|m| expand(m, groups, out)),
            None if name.starts_with('@') => panic!("unknown syscall group {name}"),
            None => {
                out.insert(name.to_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    filter.iter().for_each(|f| expand(f, &groups, &mut out));
    out
}

#[test]
fn probe_syscalls_and_sockets_fit_the_unit_filters() {
    if !prerequisites("probe_syscalls_and_sockets_fit_the_unit_filters", &["setpriv", "strace", "systemd-analyze"]) {
        return;
    }
    let unit = Unit::load();
    let allowed = expand_syscall_filter(&unit.service_list("SystemCallFilter"));
    let families = unit.service_list("RestrictAddressFamilies");
    let run = RunDir::new();
    let trace = run.dir.path().join("strace.out");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o"]).arg(&trace);
    let setpriv = as_nobody_with(&unit.capabilities());
    cmd.arg(setpriv.get_program()).args(setpriv.get_args());
    let backend = Backend::loopback(Profile::fast()).unwrap();
    let mut child = run.spawn(cmd, &["--iface", "lo", "--interval", "100ms"]);
    let ready = run.wait_ready(&mut child);
    // Some traffic so the counting and publishing paths run too.
    let got = load::run(&LoadSpec::new(backend.addr(), vec![Route::get("/x", 1)]).requests(50)).unwrap();
    assert_eq!(got.errors, 0);
    std::thread::sleep(Duration::from_millis(500));
    // strace's child is setpriv, which exec'd the probe: signal it.
    let probe_pid: u32 = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("probe pid under strace");
    let exit = stop(&mut child, probe_pid);
    ready.unwrap();
    assert!(exit.success(), "{exit}\n{}", run.log());

    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("execve(") && l.contains("upstreamtop-probe") && !l.contains("setpriv"))
        .expect("probe execve in the trace");
    let mut used = BTreeSet::new();
    let mut sockets = BTreeSet::new();
    for line in &lines[start..] {
        // "PID name(args) = ret" | "PID <... name resumed>..." | "PID +++ exited" | "PID --- SIG"
        let rest = line.split_once(' ').map_or("", |(_, r)| r.trim_start());
        let name = rest.strip_prefix("<... ").unwrap_or(rest);
        let name: String = name.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            used.insert(name);
        }
        if let Some(args) = rest.strip_prefix("socket(") {
            sockets.insert(args.split(',').next().unwrap_or_default().to_owned());
        }
    }
    let outside: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        outside.is_empty(),
        "system calls outside SystemCallFilter={:?}: {outside:?}",
        unit.service_list("SystemCallFilter")
    );
    assert!(sockets.is_subset(&families), "socket families {sockets:?} vs RestrictAddressFamilies={families:?}");
    assert!(used.contains("bpf"));
    eprintln!("{} distinct system calls, all allowed; socket families {sockets:?}", used.len());
}

#[test]
fn build_sh_install_into_a_destdir() {
    let root = artifacts::workspace_root();
    let release = artifacts::target_dir().join("release/upstreamtop-probe");
    if !release.exists() {
        eprintln!("skipping build_sh_install_into_a_destdir: {} missing (./build.sh build)", release.display());
        return;
    }
    let dest = tempfile::tempdir().unwrap();
    let out = Command::new(root.join("build.sh"))
        .arg("install")
        .env("DESTDIR", dest.path())
        .env("PREFIX", "/opt/upstreamtop")
        .env("CARGO_TARGET_DIR", artifacts::target_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = |p: &str| dest.path().join(p.trim_start_matches('/'));
    let mode =
        |p: &Path| std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777;
    assert_eq!(mode(&d("/opt/upstreamtop/bin/upstreamtop-probe")), 0o755);
    let unit = d("/etc/systemd/system/upstreamtop-probe.service");
    assert_eq!(mode(&unit), 0o644);
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains("\nExecStart=/opt/upstreamtop/bin/upstreamtop-probe --table /run/upstreamtop/table"),
        "{text}"
    );
    for example in ["nginx.conf", "prometheus.yml", "grafana-dashboard.json", "upstreamtop-probe.service"] {
        let p = d(&format!("/opt/upstreamtop/share/upstreamtop/{example}"));
        assert_eq!(mode(&p), 0o644, "{}", p.display());
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(root.join("config").join(example)).unwrap());
    }
    // Nothing lands outside DESTDIR's /etc, PREFIX and the distro module dir.
    let mut tops: Vec<_> = std::fs::read_dir(dest.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    tops.sort();
    assert!(
        tops.iter().all(|t| [OsStr::new("etc"), OsStr::new("opt"), OsStr::new("usr")].contains(&t.as_os_str())),
        "{tops:?}"
    );
}

/// The unit's pinning setup, reproduced: the ExecStartPre=+ step makes a
/// bpffs directory owned by the service user, BindPaths= puts it at the
/// --state-dir of ExecStart (here with `unshare -m` + `mount --bind`), and
/// the probe as nobody with exactly the unit's capabilities pins into it.
/// Traffic while the probe is stopped is counted: the restarted probe's
/// table equals what the backend served.
#[test]
fn probe_as_nobody_pins_in_the_units_state_dir_and_a_restart_loses_nothing() {
    let test = "probe_as_nobody_pins_in_the_units_state_dir_and_a_restart_loses_nothing";
    if !prerequisites(test, &["setpriv", "unshare", "mount"]) {
        return;
    }
    let unit = Unit::load();
    let exec = unit.service("ExecStart").unwrap();
    let bind = unit.service("BindPaths").expect("BindPaths= for the state dir");
    let (_, target) = bind.trim_start_matches('-').split_once(':').expect("BindPaths=SRC:DST");
    assert!(exec.contains(&format!("--state-dir {target} ")), "ExecStart passes the bind target: {exec}");

    let bpffs_dir = PathBuf::from(format!("/sys/fs/bpf/upstreamtop-unit-test-{}", std::process::id()));
    let status = Command::new("sh")
        .arg("-c")
        .arg("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf")
        .status()
        .expect("mount bpffs");
    assert!(status.success(), "bpffs at /sys/fs/bpf");
    std::fs::create_dir_all(&bpffs_dir).expect("state dir in bpffs");
    std::os::unix::fs::chown(&bpffs_dir, Some(NOBODY), None).expect("chown state dir");
    std::fs::set_permissions(&bpffs_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod state dir");
    // Whatever happens, no pinned program outlives the test.
    struct Detach(PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            if self.0.exists() {
                let _ = Command::new(artifacts::probe_bin().unwrap())
                    .arg("detach")
                    .arg("--state-dir")
                    .arg(&self.0)
                    .output();
            }
        }
    }
    let _detach = Detach(bpffs_dir.clone());

    let backend = Backend::loopback(Profile::fast().statuses(&[(200, 8), (404, 1), (503, 1)])).unwrap();
    let run = RunDir::new();
    let state = run.dir.path().join("bpf");
    std::fs::create_dir(&state).unwrap();
    let caps = unit.capabilities();
    let spawn = || {
        let nobody = as_nobody_with(&caps);
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", r#"mount --bind "$0" "$1" && shift && exec "$@""#])
            .arg(&bpffs_dir)
            .arg(&state)
            .arg("setpriv")
            .args(nobody.get_args());
        let state_arg = state.display().to_string();
        let mut child = run.spawn(cmd, &["--iface", "lo", "--interval", "200ms", "--state-dir", &state_arg]);
        if let Err(e) = run.wait_ready(&mut child) {
            let _ = child.kill();
            panic!("{e}");
        }
        child
    };
    let load = |n: u64| {
        let spec = LoadSpec::new(backend.addr(), vec![Route::get("/api/orders", 3), Route::get("/api/users/42", 1)])
            .requests(n)
            .concurrency(2);
        let got = load::run(&spec).unwrap();
        assert_eq!(got.errors, 0, "{:?}", got.error_samples);
    };
    let settle = || {
        let mut reader = TableReader::new(&run.table());
        let want = Some((backend.total(), backend.by_status().into_iter().collect::<Vec<_>>()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = reader.snapshot().ok().and_then(|s| {
                s.peers.iter().find(|p| p.addr == backend.addr()).map(|p| (p.requests, p.responses.codes.clone()))
            });
            if got == want || Instant::now() > deadline {
                return (got, want);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let mut child = spawn();
    load(200);
    let (got, want) = settle();
    // unshare's sh exec'd setpriv, which exec'd the probe: same pid.
    let pid = child.id();
    let exit = stop(&mut child, pid);
    assert_eq!(got, want, "first run; log:\n{}", run.log());
    assert!(exit.success(), "{}", run.log());
    assert!(run.log().contains("programs stay attached"), "{}", run.log());
    // Nobody runs now; the pinned programs count this.
    load(100);
    let mut child = spawn();
    let (got, want) = settle();
    let pid = child.id();
    let exit = stop(&mut child, pid);
    let log = run.log();
    let detach = Command::new(artifacts::probe_bin().unwrap())
        .args(["detach", "--state-dir"])
        .arg(&bpffs_dir)
        .output()
        .expect("detach");
    assert_eq!(got, want, "after the restart; log:\n{log}");
    assert_eq!(want.map(|w| w.0), Some(300));
    assert!(exit.success(), "{log}");
    assert!(log.contains("pinned maps reused"), "{log}");
    assert!(detach.status.success(), "{}", String::from_utf8_lossy(&detach.stderr));
    assert!(!bpffs_dir.exists());
}
