//! A Debian bookworm container that boots systemd as PID 1, for the
//! boot-level tests (`systemd_boot.rs`).
//!
//! The root file system is made by `mmdebstrap` from Debian's packages and
//! cached as a tarball under `<target>/boot-root/` (keyed by the package
//! list); each test unpacks it into its own temporary directory and boots
//! it with `systemd-nspawn -b --register=no --keep-unit`:
//!   - its own network namespace (`--private-network`: only `lo`), where the
//!     test's backends and clients live too (threads that `setns()` into it);
//!   - the capabilities the probe needs, on top of nspawn's defaults, and
//!     the `bpf` system call, which nspawn's own filter leaves out;
//!   - a fresh bpffs instance of its own at `/sys/fs/bpf` (nspawn's `/sys`
//!     has none), mounted by the test and unmounted when it ends.
//!
//! systemd is never booted on this machine's own root file system: its
//! boot-time tmpfiles cleanup would empty the host's `/tmp`. Everything the
//! container writes stays under the test's directory, removed at the end.
//!
//! Commands run inside with `nsenter` into all of the container's
//! namespaces, with a clean environment and a deadline.

#![allow(dead_code)] // each test binary uses a part

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Boot to `multi-user.target` on a busy 2-core machine.
const BOOT: Duration = Duration::from_secs(90);
/// The default deadline of a command inside the container (apt installs
/// that start the probe: loading and verifying its programs).
pub const COMMAND: Duration = Duration::from_secs(180);

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the container cannot run here (not root, a tool missing), or None.
pub fn unsupported() -> Option<String> {
    if !nginx_tests::artifacts::is_root() {
        return Some("needs root (systemd-nspawn, network namespaces, tcx)".into());
    }
    for (tool, package) in
        [("mmdebstrap", "mmdebstrap"), ("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux")]
    {
        if !have(tool) {
            return Some(format!("{tool} not installed (apt-get install {package}, or ./build.sh deps)"));
        }
    }
    None
}

/// A small FNV-1a, to name the cached root by its package list.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The cached bookworm root tarball with `packages` installed (made with
/// mmdebstrap on first use: about a minute, from Debian's mirror).
pub fn root_tarball(packages: &[String]) -> Result<PathBuf> {
    let mut packages = packages.to_vec();
    packages.sort();
    packages.dedup();
    let list = packages.join(",");
    let dir = nginx_tests::artifacts::target_dir().join("boot-root");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let tar = dir.join(format!("bookworm-{:016x}.tar", fnv(&format!("minbase|{list}"))));
    if tar.exists() {
        return Ok(tar);
    }
    let partial =
        dir.join(format!(".{}.{}.partial.tar", tar.file_name().unwrap().to_string_lossy(), std::process::id()));
    eprintln!("boot: mmdebstrap bookworm ({list}) -> {} (once; about a minute)", tar.display());
    let started = Instant::now();
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--mode=root", "--quiet"])
        .arg(format!("--include={list}"))
        .args(["bookworm"])
        .arg(&partial)
        .stdin(Stdio::null())
        .output()
        .context("run mmdebstrap")?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!("mmdebstrap failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    std::fs::rename(&partial, &tar).context("rename the root tarball")?;
    // Roots for an older package list are not used again.
    for old in std::fs::read_dir(&dir)?.flatten().map(|e| e.path()) {
        let name = old.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if old != tar && name.starts_with("bookworm-") && name.ends_with(".tar") {
            let _ = std::fs::remove_file(&old);
        }
    }
    eprintln!("boot: root made in {:.0?}", started.elapsed());
    Ok(tar)
}

/// A running container. Dropping it powers it off, unmounts its bpffs and
/// removes its directory.
pub struct Container {
    dir: PathBuf,
    root: PathBuf,
    bpffs: PathBuf,
    name: String,
    nspawn: Option<Child>,
    leader: u32,
}

impl Container {
    /// Unpack `tarball` under a new temporary directory and boot it, with
    /// `binds` (host directory, container path) mounted read-only.
    pub fn boot(tarball: &Path, binds: &[(&Path, &str)]) -> Result<Container> {
        let started = Instant::now();
        let dir = tempfile::Builder::new().prefix("upstreamtop-boot-").tempdir().context("temp dir")?.keep();
        let name =
            format!("upstreamtop-boot-{}", dir.file_name().unwrap().to_string_lossy().rsplit('-').next().unwrap());
        let mut container =
            Container { root: dir.join("root"), bpffs: dir.join("bpffs"), dir, name, nspawn: None, leader: 0 };
        std::fs::create_dir(&container.root)?;
        std::fs::create_dir(&container.bpffs)?;
        let status = Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(tarball)
            .arg("-C")
            .arg(&container.root)
            .status()
            .context("run tar")?;
        if !status.success() {
            bail!("unpacking {} failed: {status}", tarball.display());
        }
        let status = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&container.bpffs).status()?;
        if !status.success() {
            bail!("mount -t bpf on {} failed", container.bpffs.display());
        }

        let console = File::create(container.dir.join("console.log"))?;
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args(["-b", "--register=no", "--keep-unit", "--quiet", "--link-journal=no", "--private-network"])
            .arg(format!("--machine={}", container.name))
            .arg("--directory")
            .arg(&container.root)
            .arg("--capability=CAP_BPF,CAP_NET_ADMIN,CAP_PERFMON")
            .arg("--system-call-filter=bpf")
            .arg(format!("--bind={}:/sys/fs/bpf", container.bpffs.display()));
        for (host, inside) in binds {
            cmd.arg(format!("--bind-ro={}:{inside}", host.display()));
        }
        container.nspawn = Some(
            cmd.stdin(Stdio::null())
                .stdout(console.try_clone()?)
                .stderr(console)
                .spawn()
                .context("spawn systemd-nspawn")?,
        );
        container.wait_for_boot()?;
        eprintln!("boot: {} up in {:.1?}", container.name, started.elapsed());
        Ok(container)
    }

    /// The container's PID 1 (systemd) as the host sees it, then a
    /// finished boot (`is-system-running`: running or degraded).
    fn wait_for_boot(&mut self) -> Result<()> {
        let deadline = Instant::now() + BOOT;
        let nspawn = self.nspawn.as_mut().unwrap();
        let pid = nspawn.id();
        while self.leader == 0 {
            if let Some(status) = nspawn.try_wait()? {
                bail!("systemd-nspawn exited with {status}:\n{}", self.console());
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                if std::fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|c| c.trim() == "systemd") {
                    self.leader = child;
                }
            }
            if Instant::now() > deadline {
                bail!("no systemd inside {} within {BOOT:?}:\n{}", self.name, self.console());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            let state = self.sh_with("systemctl is-system-running", Duration::from_secs(10));
            let text = state.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
            match text.as_str() {
                "running" => return Ok(()),
                "degraded" => {
                    let failed =
                        self.sh("systemctl --failed --no-legend --plain").map(|o| o.stdout).unwrap_or_default();
                    eprintln!("boot: degraded, failed units: {}", String::from_utf8_lossy(&failed).trim());
                    return Ok(());
                }
                _ if Instant::now() > deadline => {
                    bail!("boot did not finish within {BOOT:?} (state {text:?}):\n{}", self.console())
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host path of the container's `/sys/fs/bpf`.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// Host path of a file inside the container (read only through it:
    /// symbolic links inside point into the container).
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// What systemd printed on the console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// `sh -c script` inside, with `COMMAND` as the deadline.
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.sh_with(script, COMMAND)
    }

    pub fn sh_with(&self, script: &str, deadline: Duration) -> Result<Output> {
        self.run(script, None, deadline)
    }

    /// `sh -c script` inside; its stdout, or an error with its output.
    pub fn ok(&self, script: &str) -> Result<String> {
        let out = self.sh(script)?;
        if !out.status.success() {
            bail!(
                "in {}: `{script}`: {}\nstdout: {}\nstderr: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Write `contents` to `path` inside (through the container's own view,
    /// so no symbolic link leads out of it).
    pub fn write(&self, path: &str, contents: &str) -> Result<()> {
        let out = self.run(r#"mkdir -p "$(dirname "$0")" && cat >"$0""#, Some((path, contents.as_bytes())), COMMAND)?;
        if !out.status.success() {
            bail!("writing {path}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn run(&self, script: &str, stdin: Option<(&str, &[u8])>, deadline: Duration) -> Result<Output> {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.leader.to_string())
            .args(["--all", "--", "/usr/bin/env", "-i"])
            .args(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"])
            .args(["DEBIAN_FRONTEND=noninteractive", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"])
            .args(["/bin/sh", "-c", script]);
        if let Some((arg0, _)) = stdin {
            cmd.arg(arg0);
        }
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn nsenter")?;
        if let Some((_, bytes)) = stdin {
            child.stdin.take().unwrap().write_all(bytes)?;
        }
        // Read the pipes on threads so a chatty command cannot block on a
        // full pipe while we wait.
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
            buf
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
            buf
        });
        let end = Instant::now() + deadline;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                bail!("in {}: `{script}` still running after {deadline:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Output {
            status,
            stdout: out_reader.join().map_err(|_| anyhow!("stdout reader"))?,
            stderr: err_reader.join().map_err(|_| anyhow!("stderr reader"))?,
        })
    }

    /// `systemctl show UNIT -p KEY` values.
    pub fn show(&self, unit: &str, key: &str) -> Result<String> {
        self.ok(&format!("systemctl show {unit} -P {key}"))
    }

    /// The unit's journal (for failure messages).
    pub fn journal(&self, unit: &str) -> String {
        self.sh(&format!("journalctl -u {unit} --no-pager -o short-monotonic -n 200"))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn netns(&self) -> Result<File> {
        File::open(format!("/proc/{}/ns/net", self.leader)).context("open the container's network namespace")
    }

    /// Run `f` on a new thread inside the container's network namespace:
    /// sockets it opens (listeners, clients) belong to that namespace,
    /// whichever thread uses them later, and threads it spawns start there.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = self.netns()?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> Result<T> {
                    enter(&ns)?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow!("thread inside the container's network namespace panicked"))?
        })
    }

    /// Like `in_netns`, in the background.
    pub fn spawn_in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        let ns = self.netns()?;
        Ok(std::thread::spawn(move || -> Result<T> {
            enter(&ns)?;
            Ok(f())
        }))
    }
}

fn enter(ns: &File) -> Result<()> {
    // SAFETY: setns on a namespace fd we hold open; it changes only the
    // calling thread, a thread made for this.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns into the container's network namespace");
    }
    Ok(())
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut nspawn) = self.nspawn.take() {
            // SIGRTMIN+4: systemd powers off.
            if self.leader != 0 {
                // SAFETY: kill(2) to the container's PID 1, found as a child
                // of our own systemd-nspawn.
                unsafe { libc::kill(self.leader as libc::pid_t, libc::SIGRTMIN() + 4) };
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while nspawn.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    eprintln!("boot: {} did not power off in 30 s: killing systemd-nspawn", self.name);
                    let _ = nspawn.kill();
                    let _ = nspawn.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Mounts of ours under the directory (the bpffs; nspawn's own live
        // in its namespace and went with it), innermost first.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").arg("--lazy").arg(m).status();
        }
        // nspawn leaves its propagation directory on a /run that is not tmpfs.
        let _ = std::fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&self.name));
        if std::env::var_os("UPSTREAMTOP_KEEP_BOOT").is_some() {
            eprintln!("boot: kept {}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("boot: removing {}: {e}", self.dir.display());
        }
    }
}

/// Programs attached with tcx to `ifindex` in the calling thread's network
/// namespace: (ingress, egress), from BPF_PROG_QUERY.
pub fn tcx_programs(ifindex: u32) -> std::io::Result<(u32, u32)> {
    /// `union bpf_attr`, the BPF_PROG_QUERY member (linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    let count = |attach_type| {
        let mut attr = Query { target_ifindex: ifindex, attach_type, ..Default::default() };
        // SAFETY: bpf(2) with a BPF_PROG_QUERY attr of the size we pass; no
        // id array (prog_ids = 0), so the kernel only writes prog_cnt.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut Query,
                std::mem::size_of::<Query>() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(attr.prog_cnt)
        }
    };
    Ok((count(BPF_TCX_INGRESS)?, count(BPF_TCX_EGRESS)?))
}
