//! What an e2e test needs before it can run (root, external tools), and the
//! one-line "skipping" notice when it is missing: a test without its
//! prerequisites says so and passes rather than failing on the machine.

use std::process::{Command, Stdio};

use crate::artifacts;

/// `true` as root; otherwise prints why `test` needs root and returns `false`.
pub fn root_or_skip(test: &str, why: &str) -> bool {
    if artifacts::is_root() {
        return true;
    }
    eprintln!("skipping {test}: needs root ({why}); run with sudo");
    false
}

/// `true` when `tool --version` runs; otherwise prints which Debian
/// `package` provides it and returns `false`.
pub fn tool_or_skip(test: &str, tool: &str, package: &str) -> bool {
    if Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok() {
        return true;
    }
    eprintln!("skipping {test}: {tool} not found (Debian package {package}; ./build.sh deps installs it)");
    false
}
