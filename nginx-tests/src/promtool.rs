//! `promtool check metrics`: the Prometheus project's own judgement of an
//! exposition, so the tests do not hand-roll a format checker.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// `promtool check metrics` on `text`: Ok, or promtool's complaint.
pub fn check_metrics(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn promtool")?;
    child.stdin.take().context("promtool stdin")?.write_all(text.as_bytes()).context("feed promtool")?;
    let out = child.wait_with_output().context("wait for promtool")?;
    if !out.status.success() {
        bail!(
            "promtool check metrics failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
