//! Run the `upstreamtop-probe` daemon with a private table file and a
//! private bpffs state directory (so parallel tests never share pins), and
//! read its snapshots. Drop stops it and runs `upstreamtop-probe detach` on
//! that state directory, so no test leaves programs attached.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use upstreamtop_table::{Snapshot, TableReader};

/// First publish: loading BPF programs and attaching can take a while on a
/// busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// A running probe. Drop kills it (and prints its log if the test panics).
pub struct Probe {
    /// The `upstreamtop-probe` binary this fixture runs.
    bin: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
    table: PathBuf,
    state_dir: PathBuf,
    args: Vec<String>,
    reader: TableReader,
}

/// Detach what test processes that died without their Drop (killed by a
/// timeout, SIGKILL) left pinned: their programs would go on running on
/// every packet of the interface.
fn reap_dead_test_pins(bin: &Path) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/bpf") else { return };
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("upstreamtop-test-")
            .or_else(|| name.strip_prefix("upstreamtop-unit-test-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new(bin).arg("detach").arg("--state-dir").arg(ent.path()).output();
        }
    }
}

/// A state directory under /sys/fs/bpf no other probe uses.
fn private_state_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    PathBuf::from(format!("/sys/fs/bpf/upstreamtop-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

impl Probe {
    /// Start the probe with `--table <tmp>/table`, `--state-dir
    /// /sys/fs/bpf/upstreamtop-test-<pid>-<n>` plus `args`, and wait for its
    /// first publish.
    pub fn start<S: AsRef<str>>(args: &[S]) -> Result<Probe> {
        // A missing binary fails before anything is created.
        Self::start_bin(&crate::artifacts::probe_bin()?, args)
    }

    /// [`Probe::start`] with another `upstreamtop-probe` binary (an older
    /// build, compared side by side in the bench); every later command of
    /// this fixture (restart, `detach`, …) runs that binary too.
    pub fn start_bin<S: AsRef<str>>(bin: &Path, args: &[S]) -> Result<Probe> {
        anyhow::ensure!(bin.is_file(), "no probe binary at {}", bin.display());
        let bin = bin.to_path_buf();
        reap_dead_test_pins(&bin);
        let dir = tempfile::Builder::new().prefix("nginx-tests-probe-").tempdir().context("create probe temp dir")?;
        // Workers of an nginx running as nobody must be able to read the
        // table: open the private dir up.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .context("chmod probe temp dir")?;
        let table = dir.path().join("table");
        let reader = TableReader::new(&table);
        let mut probe = Probe {
            bin,
            child: None,
            dir,
            table,
            state_dir: private_state_dir(),
            args: args.iter().map(|a| a.as_ref().to_string()).collect(),
            reader,
        };
        probe.spawn()?;
        if let Err(e) = probe.wait_seq(1, START_TIMEOUT) {
            let log = probe.log();
            probe.kill();
            return Err(e.context(format!("probe did not publish; its output:\n{log}")));
        }
        Ok(probe)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = &self.bin;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("probe.log"))
            .context("open probe log")?;
        let log2 = log.try_clone().context("dup probe log")?;
        let child = Command::new(bin)
            .arg("--table")
            .arg(&self.table)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Start the probe again (after [`Probe::stop`] or [`Probe::kill9`])
    /// with the same table, state directory and arguments; returns its
    /// first publish.
    pub fn restart(&mut self) -> Result<Snapshot> {
        if self.child.is_some() {
            bail!("the probe is still running");
        }
        self.spawn()?;
        let pid = self.pid();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let snap = self.wait_publish_or_first()?;
            if snap.meta.pid == pid {
                return Ok(snap);
            }
            if Instant::now() > deadline {
                bail!("the restarted probe (pid {pid}) did not publish; output:\n{}", self.log());
            }
        }
    }

    /// The next publish, or any readable one when there is none yet.
    fn wait_publish_or_first(&mut self) -> Result<Snapshot> {
        match self.snapshot() {
            Ok(s) => self.wait_seq(s.meta.publish_seq + 1, START_TIMEOUT),
            Err(_) => self.wait_seq(1, START_TIMEOUT),
        }
    }

    /// Another probe process on this probe's table and state directory with
    /// `args` instead of this one's (for starts a test expects to fail or
    /// kills itself); output is captured.
    pub fn command<S: AsRef<str>>(&self, args: &[S]) -> Result<Command> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--table").arg(&self.table).arg("--state-dir").arg(&self.state_dir);
        cmd.args(args.iter().map(AsRef::as_ref)).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Ok(cmd)
    }

    /// The arguments [`Probe::start`] was given.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// SIGKILL: the probe gets no chance to clean up or publish.
    pub fn kill9(&mut self) {
        self.kill();
    }

    /// The probe's bpffs state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `upstreamtop-probe <sub> --state-dir <ours>`, its stdout.
    pub fn state_command(&self, sub: &str) -> Result<String> {
        let bin = &self.bin;
        let out = Command::new(bin)
            .arg(sub)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()
            .with_context(|| format!("run {} {sub}", bin.display()))?;
        if !out.status.success() {
            bail!("upstreamtop-probe {sub} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn table_path(&self) -> &Path {
        &self.table
    }

    /// The probe's stdout + stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("probe.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The latest publish.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        self.reader.snapshot().map_err(|e| anyhow!("read {}: {e}", self.table.display()))
    }

    /// Wait for the next publish after now and return it.
    pub fn wait_publish(&mut self) -> Result<Snapshot> {
        let seq = self.snapshot()?.meta.publish_seq;
        self.wait_seq(seq + 1, PUBLISH_TIMEOUT)
    }

    /// Poll publishes until `done(snapshot)` holds; on timeout return the
    /// last snapshot anyway so the caller's assertion shows the difference.
    pub fn wait_until(&mut self, timeout: Duration, mut done: impl FnMut(&Snapshot) -> bool) -> Result<Snapshot> {
        let deadline = Instant::now() + timeout;
        loop {
            let snap = self.wait_publish()?;
            if done(&snap) || Instant::now() > deadline {
                return Ok(snap);
            }
        }
    }

    fn wait_seq(&mut self, seq: u64, timeout: Duration) -> Result<Snapshot> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("wait for probe")? {
                    self.child = None;
                    bail!("probe exited with {status}");
                }
            } else {
                bail!("probe is not running");
            }
            let last_err = match self.reader.snapshot() {
                Ok(snap) if snap.meta.publish_seq >= seq => return Ok(snap),
                Ok(snap) => format!("publish_seq {} < {seq}", snap.meta.publish_seq),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!("no publish #{seq} within {timeout:?} ({last_err})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (the programs stay attached through their pins
    /// until [`Probe::restart`] adopts them or Drop detaches them).
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().context("wait for probe")? {
                if !status.success() {
                    bail!("probe exited with {status} on SIGTERM; output:\n{}", self.log());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("probe ignored SIGTERM for 10 s; killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.stop().is_err() {
            self.kill();
        }
        // The pinned links outlive the process: remove them.
        if let Err(e) = self.state_command("detach") {
            eprintln!("probe fixture: {e:#}");
        }
        if std::thread::panicking() {
            eprintln!("---- probe output ----\n{}---- end of probe output ----", self.log());
        }
    }
}
