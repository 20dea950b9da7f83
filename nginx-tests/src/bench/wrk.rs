//! Drive load with `wrk` (Debian package `wrk`) and read its summary.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One `wrk` run.
#[derive(Debug, Clone)]
pub struct WrkSpec {
    pub url: String,
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
    /// Extra request headers (`-H`).
    pub headers: Vec<(String, String)>,
    /// `taskset -c <cpus>` for wrk itself.
    pub cpus: Option<String>,
}

impl WrkSpec {
    pub fn new(url: &str, duration: Duration) -> Self {
        WrkSpec { url: url.to_owned(), threads: 2, connections: 64, duration, headers: Vec::new(), cpus: None }
    }
}

/// What `wrk --latency` printed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// "Non-2xx or 3xx responses".
    pub non_2xx_3xx: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
}

/// The wrk command line for `spec`, running for `secs` seconds.
fn command(spec: &WrkSpec, secs: u64) -> Command {
    let mut cmd = match &spec.cpus {
        Some(cpus) => {
            // taskset execs wrk: the pid stays wrk's (see Running::stop).
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    cmd.args(["--latency", "-t", &spec.threads.to_string(), "-c", &spec.connections.to_string()]).args([
        "-d",
        &format!("{secs}s"),
        "--timeout",
        "5s",
    ]);
    for (name, value) in &spec.headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    cmd.arg(&spec.url);
    cmd
}

fn result(out: std::process::Output) -> Result<WrkResult> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk exited with {}: {}{}", out.status, stdout, String::from_utf8_lossy(&out.stderr));
    }
    parse(&stdout).with_context(|| format!("unexpected wrk output:\n{stdout}"))
}

/// Run wrk to completion.
pub fn run(spec: &WrkSpec) -> Result<WrkResult> {
    let secs = spec.duration.as_secs_f64().ceil().max(1.0) as u64;
    result(command(spec, secs).output().context("run wrk (apt-get install wrk)")?)
}

/// A wrk run in the background, for as long as the caller needs load.
pub struct Running {
    child: Option<std::process::Child>,
}

/// Start wrk with no end of its own (an hour at most): [`Running::stop`]
/// ends it.
pub fn start(spec: &WrkSpec) -> Result<Running> {
    let child = command(spec, 3600)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("start wrk (apt-get install wrk)")?;
    Ok(Running { child: Some(child) })
}

impl Running {
    /// Has wrk exited (it should not before [`Running::stop`])?
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// SIGINT: wrk stops its threads and prints its summary as at the end
    /// of a timed run.
    pub fn stop(mut self) -> Result<WrkResult> {
        let child = self.child.take().context("wrk already stopped")?;
        let pid = libc::pid_t::try_from(child.id()).context("wrk pid")?;
        // SAFETY: kill(2) with our own child's pid and a valid signal.
        unsafe { libc::kill(pid, libc::SIGINT) };
        result(child.wait_with_output().context("wait for wrk")?)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Parse wrk's text summary.
pub fn parse(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let (mut saw_rps, mut saw_p99) = (false, false);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => {
                r.requests_per_sec = v.parse().context("Requests/sec")?;
                saw_rps = true;
            }
            ["50%", v] => r.p50_ms = latency_ms(v)?,
            ["99%", v] => {
                r.p99_ms = latency_ms(v)?;
                saw_p99 = true;
            }
            [n, "requests", "in", ..] => r.requests = n.parse().context("requests")?,
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx_3xx = n.parse().context("non-2xx")?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                r.socket_errors = rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum();
            }
            _ => {}
        }
    }
    if !saw_rps || !saw_p99 {
        bail!("no Requests/sec or 99% line");
    }
    Ok(r)
}

/// "812.00us", "1.23ms", "2.01s" → ms.
fn latency_ms(v: &str) -> Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("m") {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("latency {v:?} has no unit");
    };
    Ok(num.parse::<f64>().with_context(|| format!("latency {v:?}"))? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 2s test @ http://127.0.0.1:18090/p/app/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms    1.01ms  21.26ms   85.12%
    Req/Sec    15.42k     1.03k   17.19k    70.00%
  Latency Distribution
     50%  812.00us
     75%    2.36ms
     90%    3.06ms
     99%    5.66ms
  61235 requests in 2.00s, 9.05MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  30584.17
Transfer/sec:      4.52MB
";

    #[test]
    fn parses_the_summary() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.requests_per_sec, 30584.17);
        assert_eq!(r.p50_ms, 0.812);
        assert_eq!(r.p99_ms, 5.66);
        assert_eq!(r.requests, 61235);
        assert_eq!(r.non_2xx_3xx, 12);
        assert_eq!(r.socket_errors, 4);
    }

    #[test]
    fn output_without_figures_is_an_error() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_err());
        assert!(latency_ms("12").is_err());
        assert_eq!(latency_ms("1.5s").unwrap(), 1500.0);
    }
}
