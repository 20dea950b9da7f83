//! Run the `upstreamtop-probe` daemon with a private table file and read
//! its snapshots.

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
    child: Option<Child>,
    dir: tempfile::TempDir,
    table: PathBuf,
    reader: TableReader,
}

impl Probe {
    /// Start the probe with `--table <tmp>/table` plus `args`, and wait for
    /// its first publish.
    pub fn start<S: AsRef<str>>(args: &[S]) -> Result<Probe> {
        let bin = crate::artifacts::probe_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("nginx-tests-probe-")
            .tempdir()
            .context("create probe temp dir")?;
        // Workers of an nginx running as nobody must be able to read the
        // table: open the private dir up.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .context("chmod probe temp dir")?;
        let table = dir.path().join("table");
        let log = std::fs::File::create(dir.path().join("probe.log")).context("create probe log")?;
        let log2 = log.try_clone().context("dup probe log")?;
        let child = Command::new(&bin)
            .arg("--table")
            .arg(&table)
            .args(args.iter().map(AsRef::as_ref))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let reader = TableReader::new(&table);
        let mut probe = Probe { child: Some(child), dir, table, reader };
        if let Err(e) = probe.wait_seq(1, START_TIMEOUT) {
            let log = probe.log();
            probe.kill();
            return Err(e.context(format!("probe did not publish; its output:\n{log}")));
        }
        Ok(probe)
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

    /// SIGTERM and wait (the probe detaches its programs on the way out).
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
        // Graceful first: the probe removes its tcx links itself; a killed
        // process's links go away with its file descriptors anyway.
        if self.stop().is_err() {
            self.kill();
        }
        if std::thread::panicking() {
            eprintln!("---- probe output ----\n{}---- end of probe output ----", self.log());
        }
    }
}
