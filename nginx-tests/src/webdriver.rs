//! A small W3C WebDriver client: a `chromedriver` process on a free
//! loopback port, one headless Chromium session, and the few commands the
//! browser tests need (navigate, run a script, find and click an element,
//! press keys, read the console, take a screenshot), spoken as JSON over
//! [`crate::http`].
//!
//! The browser runs with `--headless=new --no-sandbox --disable-gpu` (tests
//! run as root, where Chromium's sandbox will not start) and a private
//! profile directory. Its console is collected through chromedriver's
//! `goog:loggingPrefs` and `/session/{id}/se/log`. Dropping a [`Browser`]
//! ends the session, makes sure the browser process is gone, and stops
//! chromedriver; only processes this module started are signalled.
//!
//! `UPSTREAMTOP_CHROMEDRIVER` and `UPSTREAMTOP_CHROMIUM` override where the
//! two binaries are looked for (default: `PATH`, then Debian's
//! `/usr/bin/chromedriver` and `/usr/bin/chromium`).

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::http;

/// How long chromedriver may take to listen, and the browser to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// One WebDriver command (navigation waits for the page's load event).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The key of an element reference in W3C WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// WebDriver key codes for [`Browser::keys`].
pub mod key {
    pub const ENTER: char = '\u{E007}';
    pub const ESCAPE: char = '\u{E00C}';
    pub const ARROW_UP: char = '\u{E013}';
    pub const ARROW_DOWN: char = '\u{E015}';
}

/// The two programs a browser test needs, or `None` when either is
/// missing (Debian packages `chromium` and `chromium-driver`).
pub fn binaries() -> Option<(PathBuf, PathBuf)> {
    let find = |var: &str, name: &str| -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(path)).filter(|p| p.is_file());
        }
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/lib/chromium")])
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    };
    Some((find("UPSTREAMTOP_CHROMEDRIVER", "chromedriver")?, find("UPSTREAMTOP_CHROMIUM", "chromium")?))
}

/// `true` when Chromium and chromedriver are installed; otherwise prints
/// the one-line skip notice and returns `false`.
pub fn browser_or_skip(test: &str) -> bool {
    if binaries().is_some() {
        return true;
    }
    eprintln!(
        "skipping {test}: chromium or chromedriver not found (Debian packages chromium, chromium-driver; \
         ./build.sh deps installs them)"
    );
    false
}

/// One entry of the browser's console (`level` is `SEVERE` for errors,
/// `WARNING`, `INFO`; `source` e.g. `console-api`, `network`, `security`,
/// `javascript`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub level: String,
    pub source: String,
    pub message: String,
}

impl LogEntry {
    pub fn is_error(&self) -> bool {
        self.level == "SEVERE"
    }
}

/// An element reference of the current page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element(String);

/// Window size and other start options.
#[derive(Debug, Clone)]
pub struct Options {
    pub width: u32,
    pub height: u32,
    /// `TZ` for the browser (the page prints local times).
    pub timezone: String,
}

impl Default for Options {
    fn default() -> Self {
        Options { width: 1280, height: 900, timezone: "UTC".to_owned() }
    }
}

/// A chromedriver process and one headless Chromium session.
pub struct Browser {
    driver: Option<Child>,
    client: RefCell<http::Client>,
    session: String,
    /// The browser's own process (`goog:processID`), to make sure it is gone.
    browser_pid: Option<u32>,
    dir: tempfile::TempDir,
    /// Console entries read so far (the endpoint hands each out once).
    console: RefCell<Vec<LogEntry>>,
}

impl Browser {
    /// Start chromedriver and a session with default [`Options`].
    pub fn start() -> Result<Browser> {
        Self::start_with(&Options::default())
    }

    pub fn start_with(options: &Options) -> Result<Browser> {
        let (driver_bin, chromium) = binaries()
            .ok_or_else(|| anyhow!("chromium/chromedriver not installed (apt-get install chromium chromium-driver)"))?;
        let dir = tempfile::Builder::new().prefix("nginx-tests-browser-").tempdir().context("browser temp dir")?;
        let log = dir.path().join("chromedriver.log");
        // A port another process takes between the probe and the bind makes
        // chromedriver exit: try again on another.
        let mut last = None;
        for _ in 0..3 {
            let port = crate::nginx::free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
            let mut child = Command::new(&driver_bin)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .env("TZ", &options.timezone)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("spawn {}", driver_bin.display()))?;
            let client = http::Client::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).timeout(COMMAND_TIMEOUT);
            let client = RefCell::new(client);
            match wait_driver_ready(&mut child, &client) {
                Ok(()) => {
                    let mut browser = Browser {
                        driver: Some(child),
                        client,
                        session: String::new(),
                        browser_pid: None,
                        dir,
                        console: RefCell::new(Vec::new()),
                    };
                    browser.new_session(&chromium, options).map_err(|e| {
                        e.context(format!("start a Chromium session; chromedriver log:\n{}", browser.driver_log()))
                    })?;
                    return Ok(browser);
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    last = Some(e.context(format!("chromedriver log:\n{text}")));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("chromedriver did not start")))
    }

    fn new_session(&mut self, chromium: &Path, options: &Options) -> Result<()> {
        let profile = self.dir.path().join("profile");
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--window-size={},{}", options.width, options.height),
            format!("--user-data-dir={}", profile.display()),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--no-proxy-server".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--force-color-profile=srgb".to_owned(),
            "--lang=en-US".to_owned(),
        ];
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": { "binary": chromium.display().to_string(), "args": args },
                    "goog:loggingPrefs": { "browser": "ALL" }
                }
            }
        });
        let value = self.command("POST", "/session", Some(&caps))?;
        self.session = value["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in the new session answer: {value}"))?
            .to_owned();
        self.browser_pid = value["capabilities"]["goog:processID"].as_u64().and_then(|p| u32::try_from(p).ok());
        Ok(())
    }

    /// One WebDriver command; the answer's `value`, or its error.
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        command(&self.client, method, path, body)
    }

    fn session_command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.command(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Navigate and wait for the load event.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.session_command("POST", "/url", Some(&json!({ "url": url }))).map(drop)
    }

    /// Run `script` (a function body: `return ...;`) in the page with
    /// `args` as `arguments`; its return value as JSON.
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.session_command("POST", "/execute/sync", Some(&json!({ "script": script, "args": args })))
            .with_context(|| format!("script: {}", script.chars().take(120).collect::<String>()))
    }

    /// Run `script` every 100 ms until `done` accepts its value; on timeout
    /// the last value goes into the error.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        args: &[Value],
        mut done: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.execute(script, args)?;
            if done(&value) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("{what}: not within {timeout:?}; last value: {value}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first element matching a CSS selector.
    pub fn find(&self, css: &str) -> Result<Element> {
        let value =
            self.session_command("POST", "/element", Some(&json!({ "using": "css selector", "value": css })))?;
        value[ELEMENT_KEY]
            .as_str()
            .map(|id| Element(id.to_owned()))
            .ok_or_else(|| anyhow!("{css}: no element in {value}"))
    }

    /// Click in the middle of the element (scrolled into view), like a user.
    pub fn click(&self, element: &Element) -> Result<()> {
        self.session_command("POST", &format!("/element/{}/click", element.0), Some(&json!({}))).map(drop)
    }

    /// Press and release each key in turn, at whatever has the focus
    /// (letters as themselves, [`key`] for the others).
    pub fn keys(&self, keys: &str) -> Result<()> {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|c| {
                let c = c.to_string();
                [json!({ "type": "keyDown", "value": c }), json!({ "type": "keyUp", "value": c })]
            })
            .collect();
        let body = json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] });
        self.session_command("POST", "/actions", Some(&body))?;
        self.session_command("DELETE", "/actions", None).map(drop)
    }

    /// Move the mouse pointer to (`x`, `y`) CSS pixels of the viewport.
    pub fn move_mouse(&self, x: u32, y: u32) -> Result<()> {
        let body = json!({ "actions": [{
            "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
            "actions": [{ "type": "pointerMove", "duration": 0, "origin": "viewport", "x": x, "y": y }]
        }] });
        self.session_command("POST", "/actions", Some(&body))?;
        self.session_command("DELETE", "/actions", None).map(drop)
    }

    /// Every console entry since the session started.
    pub fn console(&self) -> Result<Vec<LogEntry>> {
        let value = self.session_command("POST", "/se/log", Some(&json!({ "type": "browser" })))?;
        let fresh = value.as_array().ok_or_else(|| anyhow!("browser log is not an array: {value}"))?;
        let mut all = self.console.borrow_mut();
        all.extend(fresh.iter().map(|e| LogEntry {
            level: e["level"].as_str().unwrap_or_default().to_owned(),
            source: e["source"].as_str().unwrap_or_default().to_owned(),
            message: e["message"].as_str().unwrap_or_default().to_owned(),
        }));
        Ok(all.clone())
    }

    /// Resize the window (CSS pixels of the outer window).
    pub fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        self.session_command("POST", "/window/rect", Some(&json!({ "width": width, "height": height }))).map(drop)
    }

    /// A PNG of the viewport.
    pub fn screenshot_png(&self) -> Result<Vec<u8>> {
        let value = self.session_command("GET", "/screenshot", None)?;
        let text = value.as_str().ok_or_else(|| anyhow!("screenshot is not a string"))?;
        let png = base64_decode(text)?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            bail!("screenshot is not a PNG");
        }
        Ok(png)
    }

    /// chromedriver's own log (for failure messages).
    pub fn driver_log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        // The end says what went wrong; the start is the capabilities.
        let keep = text.len().saturating_sub(8000);
        let start = (keep..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        text[start..].to_owned()
    }

    fn stop_driver(&mut self) {
        let Some(mut child) = self.driver.take() else { return };
        // chromedriver's own shutdown command, then a signal if it lingers.
        let _ = self.command("GET", "/shutdown", None);
        let deadline = Instant::now() + Duration::from_secs(3);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// End the session and make sure the browser process is gone.
    fn end_session(&mut self) {
        if self.session.is_empty() {
            return;
        }
        let _ = self.session_command("DELETE", "", None);
        self.session.clear();
        let Some(pid) = self.browser_pid.take() else { return };
        let Ok(pid) = libc::pid_t::try_from(pid) else { return };
        // The browser is chromedriver's child, so it is not ours to reap:
        // "gone" is kill(pid, 0) failing. Quit does not always end it.
        let alive = || {
            // SAFETY: signal 0 only checks that the process exists.
            unsafe { libc::kill(pid, 0) == 0 }
        };
        for (signal, wait) in [(0, 2000), (libc::SIGTERM, 3000), (libc::SIGKILL, 1000)] {
            if signal != 0 && alive() {
                // SAFETY: kill(2) on the browser process this session started.
                unsafe { libc::kill(pid, signal) };
            }
            let deadline = Instant::now() + Duration::from_millis(wait);
            while alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !alive() {
                return;
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(entries) = self.console() {
                eprintln!("---- browser console ----");
                for e in entries {
                    eprintln!("{} {}: {}", e.level, e.source, e.message);
                }
                eprintln!("---- end of browser console ----");
            }
        }
        self.end_session();
        self.stop_driver();
    }
}

/// One WebDriver command; the answer's `value`, or its error.
fn command(client: &RefCell<http::Client>, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let mut req = http::Request::new(method, path);
    if let Some(body) = body {
        req.body = serde_json::to_vec(body).context("encode command")?;
        req = req.header("Content-Type", "application/json; charset=utf-8");
    }
    let resp = client.borrow_mut().send(&req)?;
    let doc: Value = serde_json::from_slice(&resp.body)
        .with_context(|| format!("{method} {path}: answer {} is not JSON: {}", resp.status, resp.text()))?;
    let value = doc.get("value").cloned().unwrap_or(Value::Null);
    if resp.status != 200 {
        let error = value["error"].as_str().unwrap_or("unknown error");
        let message = value["message"].as_str().unwrap_or_default();
        bail!("{method} {path}: {} {error}: {message}", resp.status);
    }
    Ok(value)
}

/// Wait until chromedriver answers `/status` with `ready`.
fn wait_driver_ready(child: &mut Child, client: &RefCell<http::Client>) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("wait for chromedriver")? {
            bail!("chromedriver exited with {status}");
        }
        if let Ok(v) = command(client, "GET", "/status", None) {
            if v["ready"] == true {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("chromedriver not ready within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Standard base64 (with or without padding, whitespace ignored).
pub fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (i, b) in text.bytes().enumerate() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => bail!("bad base64 byte {b:#04x} at {i}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9v\nYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
        assert_eq!(base64_decode("/+8=").unwrap(), [0xff, 0xef]);
        assert!(base64_decode("Zm9v!").is_err());
    }

    #[test]
    fn key_codes_are_webdriver_private_use_characters() {
        for k in [key::ENTER, key::ESCAPE, key::ARROW_UP, key::ARROW_DOWN] {
            assert!(('\u{E000}'..='\u{E05D}').contains(&k), "{k:?}");
        }
    }
}
