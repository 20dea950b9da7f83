//! Run a real nginx (the vendored build, or any binary) in a temporary
//! prefix: a config builder, start/reload/signal/stop, the error log.
//!
//! The process runs in the foreground (`daemon off`) so the fixture owns the
//! master; dropping an [`Nginx`] stops it, and when the test is panicking the
//! error log is printed so the failure explains itself.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::http;

/// How long to wait for nginx to answer after start or to finish a reload.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything that goes into a generated `nginx.conf`.
///
/// Default locations: `= /health` returns 200, `/p/<group>/` proxies to each
/// upstream group (prefix stripped, HTTP/1.1 with keepalive to the group),
/// and `/upstreamtop` (`upstreamtop_status;`) when a module is loaded.
#[derive(Debug, Clone)]
pub struct NginxConf {
    pub binary: PathBuf,
    /// The upstreamtop module to `load_module`; `None` runs plain nginx.
    pub module: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1).
    pub listen_ip: IpAddr,
    /// 0 picks a free port at start.
    pub port: u16,
    pub workers: u32,
    /// `upstreamtop_table` (needs the module).
    pub table: Option<PathBuf>,
    /// `upstream <name> { <lines> }`; each line a directive such as
    /// `server 127.0.0.1:9001 max_fails=0` or `keepalive 16`.
    pub upstreams: Vec<(String, Vec<String>)>,
    /// `user` directive; `None` omits it. Defaults to `root` when running as
    /// root, so workers can read files in the 0700 temp prefix.
    pub user: Option<String>,
    /// Extra text inside `http {}`.
    pub extra_http: String,
    /// Extra text inside the `server {}` block.
    pub extra_server: String,
    /// Extra text at the main (top) level.
    pub extra_main: String,
    /// Add `location /upstreamtop { upstreamtop_status; }` when a module is
    /// loaded (default true).
    pub status_location: bool,
}

impl NginxConf {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        NginxConf {
            binary: binary.into(),
            module: None,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            workers: 1,
            table: None,
            upstreams: Vec::new(),
            user: crate::artifacts::is_root().then(|| "root".to_owned()),
            extra_http: String::new(),
            extra_server: String::new(),
            extra_main: String::new(),
            status_location: true,
        }
    }

    /// The vendored nginx with the module built for it loaded.
    pub fn vendored_with_module() -> Result<Self> {
        Ok(Self::new(crate::artifacts::vendored_nginx()?).module(crate::artifacts::module_so()?))
    }

    pub fn module(mut self, so: impl Into<PathBuf>) -> Self {
        self.module = Some(so.into());
        self
    }

    pub fn listen_ip(mut self, ip: IpAddr) -> Self {
        self.listen_ip = ip;
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn workers(mut self, workers: u32) -> Self {
        self.workers = workers;
        self
    }

    pub fn table(mut self, path: impl Into<PathBuf>) -> Self {
        self.table = Some(path.into());
        self
    }

    pub fn user(mut self, user: Option<&str>) -> Self {
        self.user = user.map(str::to_owned);
        self
    }

    /// An upstream group from raw directive lines (`;` optional).
    pub fn upstream<S: AsRef<str>>(mut self, name: &str, lines: &[S]) -> Self {
        let lines = lines.iter().map(|l| l.as_ref().to_owned()).collect();
        self.upstreams.push((name.to_owned(), lines));
        self
    }

    /// An upstream group of plain `server <addr>` lines plus `keepalive 32`
    /// (so nginx reuses backend connections like a real deployment).
    pub fn upstream_servers(self, name: &str, addrs: &[SocketAddr]) -> Self {
        let mut lines: Vec<String> = addrs.iter().map(|a| format!("server {a} max_fails=0")).collect();
        lines.push("keepalive 32".to_owned());
        self.upstream(name, &lines)
    }

    pub fn extra_http(mut self, text: &str) -> Self {
        self.extra_http.push_str(text);
        self.extra_http.push('\n');
        self
    }

    pub fn extra_server(mut self, text: &str) -> Self {
        self.extra_server.push_str(text);
        self.extra_server.push('\n');
        self
    }

    pub fn extra_main(mut self, text: &str) -> Self {
        self.extra_main.push_str(text);
        self.extra_main.push('\n');
        self
    }

    pub fn status_location(mut self, on: bool) -> Self {
        self.status_location = on;
        self
    }

    /// The config text for a prefix directory and a concrete port.
    pub fn render(&self, prefix: &Path, port: u16) -> String {
        let p = prefix.display();
        let mut c = String::from("# generated by nginx-tests\n");
        if let Some(module) = &self.module {
            let _ = writeln!(c, "load_module {};", module.display());
        }
        let _ = writeln!(c, "daemon off;\nmaster_process on;");
        let _ = writeln!(c, "worker_processes {};", self.workers.max(1));
        if let Some(user) = &self.user {
            let _ = writeln!(c, "user {user};");
        }
        let _ = writeln!(c, "pid {p}/nginx.pid;");
        let _ = writeln!(c, "error_log {p}/logs/error.log notice;");
        c.push_str(&self.extra_main);
        let _ = writeln!(c, "events {{\n    worker_connections 4096;\n}}");
        c.push_str("http {\n    access_log off;\n");
        let _ = writeln!(c, "    client_body_temp_path {p}/tmp/client_body;");
        let _ = writeln!(c, "    proxy_temp_path {p}/tmp/proxy;");
        if let (Some(table), true) = (&self.table, self.module.is_some()) {
            let _ = writeln!(c, "    upstreamtop_table {};", table.display());
        }
        for (name, lines) in &self.upstreams {
            let _ = writeln!(c, "    upstream {name} {{");
            for line in lines {
                let line = line.trim().trim_end_matches(';');
                let _ = writeln!(c, "        {line};");
            }
            c.push_str("    }\n");
        }
        for line in self.extra_http.lines() {
            let _ = writeln!(c, "    {line}");
        }
        let listen = match self.listen_ip {
            IpAddr::V4(ip) => format!("{ip}:{port}"),
            IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        };
        let _ = writeln!(c, "    server {{\n        listen {listen};");
        c.push_str("        location = /health {\n            return 200 \"ok\\n\";\n        }\n");
        if self.module.is_some() && self.status_location {
            c.push_str("        location /upstreamtop {\n            upstreamtop_status;\n        }\n");
        }
        for (name, _) in &self.upstreams {
            let _ = writeln!(
                c,
                "        location /p/{name}/ {{\n            proxy_pass http://{name}/;\n            \
                 proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }}"
            );
        }
        for line in self.extra_server.lines() {
            let _ = writeln!(c, "        {line}");
        }
        c.push_str("    }\n}\n");
        c
    }
}

/// A running nginx master (and its workers) in a temporary prefix.
pub struct Nginx {
    conf: NginxConf,
    prefix: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Nginx {
    /// Write the config, start nginx, and wait until `/health` answers 200.
    /// With port 0 a free port is picked (and picked again if another
    /// process grabbed it in between).
    pub fn start(conf: NginxConf) -> Result<Nginx> {
        let attempts = if conf.port == 0 { 3 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let port = if conf.port == 0 { free_port(conf.listen_ip)? } else { conf.port };
            match Self::start_on(conf.clone(), port) {
                Ok(nginx) => return Ok(nginx),
                Err(e) if format!("{e:#}").contains("Address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("nginx did not start")))
    }

    fn start_on(conf: NginxConf, port: u16) -> Result<Nginx> {
        let (prefix, mut command) = prepare(&conf, port)?;
        let stderr = std::fs::File::create(prefix.path().join("logs/stderr.log")).context("create stderr log")?;
        let child = command
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {}", conf.binary.display()))?;
        let mut nginx = Nginx { conf, prefix, port, child: Some(child) };
        if let Err(e) = nginx.wait_ready() {
            let log = nginx.error_log();
            nginx.kill_now();
            return Err(e.context(format!("nginx did not start; error log:\n{log}")));
        }
        Ok(nginx)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = self.url("/health");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("wait for nginx")? {
                    self.child = None;
                    bail!("nginx exited with {status}");
                }
            }
            // Ready: answering, and every worker started (the master forks
            // them one by one; a test that notes the worker pids must see
            // them all, or a late one looks like a restart).
            let all_workers = children_of(self.pid()).len() >= self.conf.workers.max(1) as usize;
            match http::get(&url) {
                Ok(resp) if resp.status != 200 => bail!("/health answered {} instead of 200", resp.status),
                Ok(_) if all_workers => return Ok(()),
                _ => {}
            }
            if Instant::now() > deadline {
                bail!("nginx did not answer {url} with all its workers within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.conf.listen_ip, self.port)
    }

    /// `http://<listen addr>:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        match self.conf.listen_ip {
            IpAddr::V4(ip) => format!("http://{ip}:{}{path}", self.port),
            IpAddr::V6(ip) => format!("http://[{ip}]:{}{path}", self.port),
        }
    }

    /// An HTTP client for this nginx (keepalive on).
    pub fn client(&self) -> http::Client {
        http::Client::new(self.addr())
    }

    pub fn conf(&self) -> &NginxConf {
        &self.conf
    }

    pub fn prefix(&self) -> &Path {
        self.prefix.path()
    }

    /// The generated config text.
    pub fn conf_text(&self) -> String {
        std::fs::read_to_string(self.prefix().join("conf/nginx.conf")).unwrap_or_default()
    }

    /// The master's pid (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Current worker pids (children of the master).
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.pid())
    }

    /// Send a signal to the master (e.g. `libc::SIGHUP`).
    pub fn signal(&self, sig: i32) -> Result<()> {
        let pid = self.pid();
        if pid == 0 {
            bail!("nginx is not running");
        }
        let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: kill(2) with a pid we spawned and still own (not reaped).
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("kill({pid}, {sig})"));
        }
        Ok(())
    }

    /// Rewrite the config from `conf` (same port) and reload.
    pub fn reload_with(&mut self, conf: NginxConf) -> Result<()> {
        let conf_path = self.prefix().join("conf/nginx.conf");
        std::fs::write(&conf_path, conf.render(self.prefix.path(), self.port))
            .with_context(|| format!("write {}", conf_path.display()))?;
        self.conf = conf;
        self.reload()
    }

    /// SIGHUP and wait until every old worker is gone and new ones run.
    /// A config the master rejects is an error carrying the log lines.
    pub fn reload(&mut self) -> Result<()> {
        let log_path = self.prefix().join("logs/error.log");
        let log_before = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let old = self.worker_pids();
        self.signal(libc::SIGHUP)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = std::fs::read(&log_path).unwrap_or_default();
            let fresh = String::from_utf8_lossy(log.get(log_before as usize..).unwrap_or_default()).into_owned();
            if fresh.contains("[emerg]") {
                bail!("nginx rejected the reload:\n{fresh}");
            }
            let now = self.worker_pids();
            if !now.is_empty() && now.iter().all(|pid| !old.contains(pid)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("reload did not finish within {READY_TIMEOUT:?} (workers before {old:?}, now {now:?}):\n{fresh}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fast shutdown (SIGTERM), then SIGKILL if it lingers. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().context("wait for nginx")?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nginx ignored SIGTERM for 10 s; killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The error log, plus anything nginx wrote to stderr before it opened
    /// the log.
    pub fn error_log(&self) -> String {
        let mut log = std::fs::read_to_string(self.prefix().join("logs/error.log")).unwrap_or_default();
        let stderr = std::fs::read_to_string(self.prefix().join("logs/stderr.log")).unwrap_or_default();
        if !stderr.trim().is_empty() {
            log.push_str("--- stderr ---\n");
            log.push_str(&stderr);
        }
        log
    }

    /// Lines of the error log at `[alert]` or worse, and worker crashes
    /// ("exited on signal"): a test can assert this is empty.
    pub fn error_log_problems(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| {
                l.contains("[alert]") || l.contains("[crit]") || l.contains("[emerg]") || l.contains("exited on signal")
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- nginx error log ({}) ----\n{}---- end of nginx error log ----",
                self.prefix().display(),
                self.error_log()
            );
        }
    }
}

/// `nginx -t` on the rendered config: `(ok, stderr)`.
pub fn check_config(conf: &NginxConf) -> (bool, String) {
    let run = || -> Result<(bool, String)> {
        let port = if conf.port == 0 { free_port(conf.listen_ip)? } else { conf.port };
        // The prefix must outlive the run: nginx -t reads the config from it.
        let (_prefix, mut command) = prepare(conf, port)?;
        let out = command.arg("-t").output().with_context(|| format!("run {} -t", conf.binary.display()))?;
        Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    run().unwrap_or_else(|e| (false, format!("{e:#}")))
}

/// A fresh prefix holding `conf` rendered for `port`, and the command that
/// runs nginx on it (`-p`, `-c`, `-e` all inside the prefix, stdin closed).
fn prepare(conf: &NginxConf, port: u16) -> Result<(tempfile::TempDir, Command)> {
    let prefix = make_prefix()?;
    let conf_path = prefix.path().join("conf/nginx.conf");
    std::fs::write(&conf_path, conf.render(prefix.path(), port))
        .with_context(|| format!("write {}", conf_path.display()))?;
    let mut command = Command::new(&conf.binary);
    command
        .arg("-p")
        .arg(prefix.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(prefix.path().join("logs/error.log"))
        .stdin(Stdio::null());
    Ok((prefix, command))
}

/// A temp prefix with `conf/`, `logs/`, `tmp/`, readable by workers.
fn make_prefix() -> Result<tempfile::TempDir> {
    let prefix = tempfile::Builder::new().prefix("nginx-tests-").tempdir().context("create nginx prefix")?;
    for dir in ["conf", "logs", "tmp"] {
        std::fs::create_dir_all(prefix.path().join(dir)).with_context(|| format!("create {dir}/"))?;
    }
    Ok(prefix)
}

/// A port that was free a moment ago (bind to :0, read it, release it).
pub fn free_port(ip: IpAddr) -> Result<u16> {
    let listener = TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}:0"))?;
    Ok(listener.local_addr().context("local_addr")?.port())
}

/// Direct children of `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state ppid ...
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or_default();
        if state == "Z" {
            continue; // exited worker not yet reaped: already gone for us
        }
        if fields.next().and_then(|f| f.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_module_table_upstreams_and_locations() {
        let conf = NginxConf::new("/usr/sbin/nginx")
            .module("/m.so")
            .table("/t/table")
            .workers(2)
            .user(None)
            .upstream("app", &["server 127.0.0.1:9001", "keepalive 8;"])
            .extra_server("location /x { return 204; }");
        let text = conf.render(Path::new("/pfx"), 8080);
        assert!(text.starts_with("# generated by nginx-tests\nload_module /m.so;\n"), "{text}");
        assert!(text.contains("worker_processes 2;"));
        assert!(!text.contains("user "));
        assert!(text.contains("upstreamtop_table /t/table;"));
        assert!(text.contains("        server 127.0.0.1:9001;\n        keepalive 8;\n"), "{text}");
        assert!(text.contains("listen 127.0.0.1:8080;"));
        assert!(text.contains("location /upstreamtop {\n            upstreamtop_status;"));
        assert!(text.contains("location /p/app/ {\n            proxy_pass http://app/;"));
        assert!(text.contains("location /x { return 204; }"));
    }

    #[test]
    fn plain_nginx_has_no_module_directives() {
        let text = NginxConf::new("nginx").table("/t").render(Path::new("/p"), 1);
        assert!(!text.contains("upstreamtop"), "{text}");
    }
}
