//! Where the built artifacts live: the vendored nginx binary, the module
//! `.so` files, the probe and the dashboard.
//!
//! Every lookup honours an environment override first, then picks the newest
//! candidate under `target/{release,debug}` so a fresh `cargo build` wins over
//! a stale one. A missing artifact is an error that names the command that
//! builds it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Result};

/// Profiles searched, in no particular order: the newest file wins.
const PROFILES: [&str; 2] = ["release", "debug"];

/// The workspace root (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is `<root>/nginx-tests` at compile time; the parent
    // is the workspace root however the tests are launched.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or_else(|| manifest.to_path_buf())
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The nginx binary built by `nginx-sys`'s `vendored` feature
/// (`UPSTREAMTOP_NGINX` overrides).
pub fn vendored_nginx() -> Result<PathBuf> {
    if let Some(path) = env_override("UPSTREAMTOP_NGINX")? {
        return Ok(path);
    }
    let mut candidates = Vec::new();
    for profile in PROFILES {
        let build = target_dir().join(profile).join("build");
        let Ok(entries) = std::fs::read_dir(&build) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("nginx-sys-") {
                // The layout under `out/` differs between nginx-sys versions
                // (`out/objs/nginx`, `out/<build>/objs/nginx`): search a few
                // levels for `objs/nginx`.
                find_objs_nginx(&entry.path().join("out"), 4, &mut candidates);
            }
        }
    }
    newest(candidates).ok_or_else(|| {
        missing(
            "vendored nginx binary",
            &format!("{}/{{release,debug}}/build/nginx-sys-*/out/objs/nginx", target_dir().display()),
            "cargo build --release -p ngx_http_upstreamtop_module",
            "UPSTREAMTOP_NGINX",
        )
    })
}

/// An nginx for tests that need no module: the vendored build when it
/// exists, else the distro's `/usr/sbin/nginx`.
pub fn plain_nginx() -> Result<PathBuf> {
    match vendored_nginx() {
        Ok(path) => Ok(path),
        Err(e) => {
            let distro = PathBuf::from("/usr/sbin/nginx");
            if distro.is_file() {
                Ok(distro)
            } else {
                Err(e.context("no /usr/sbin/nginx either (apt-get install nginx-light)"))
            }
        }
    }
}

/// The module built for the vendored nginx (`UPSTREAMTOP_MODULE` overrides).
pub fn module_so() -> Result<PathBuf> {
    if let Some(path) = env_override("UPSTREAMTOP_MODULE")? {
        return Ok(path);
    }
    profile_artifact(
        "libngx_http_upstreamtop_module.so",
        "nginx module",
        "cargo build --release -p ngx_http_upstreamtop_module",
        "UPSTREAMTOP_MODULE",
    )
}

/// The module built against the Debian nginx by `module/build-distro.sh`.
pub fn distro_module_so() -> Result<PathBuf> {
    let path = target_dir().join("distro").join("ngx_http_upstreamtop_module.so");
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing("module for the distro nginx", &path.display().to_string(), "module/build-distro.sh", ""))
    }
}

/// The `upstreamtop-probe` daemon (`UPSTREAMTOP_PROBE` overrides).
pub fn probe_bin() -> Result<PathBuf> {
    if let Some(path) = env_override("UPSTREAMTOP_PROBE")? {
        return Ok(path);
    }
    profile_artifact(
        "upstreamtop-probe",
        "probe binary",
        "cargo build --release -p upstreamtop-probe",
        "UPSTREAMTOP_PROBE",
    )
}

/// The `upstreamtop` dashboard (`UPSTREAMTOP_DASHBOARD` overrides).
pub fn dashboard_bin() -> Result<PathBuf> {
    if let Some(path) = env_override("UPSTREAMTOP_DASHBOARD")? {
        return Ok(path);
    }
    profile_artifact("upstreamtop", "dashboard binary", "cargo build --release -p upstreamtop", "UPSTREAMTOP_DASHBOARD")
}

/// `true` when the process runs as root (netns, tcx and `user root` need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn env_override(var: &str) -> Result<Option<PathBuf>> {
    match std::env::var_os(var) {
        Some(value) if !value.is_empty() => {
            let path = PathBuf::from(value);
            if path.is_file() {
                Ok(Some(path))
            } else {
                bail!("{var}={} does not name a file", path.display())
            }
        }
        _ => Ok(None),
    }
}

fn profile_artifact(file: &str, what: &str, build: &str, var: &str) -> Result<PathBuf> {
    let candidates =
        PROFILES.iter().map(|profile| target_dir().join(profile).join(file)).filter(|path| path.is_file()).collect();
    newest(candidates)
        .ok_or_else(|| missing(what, &format!("{}/{{release,debug}}/{file}", target_dir().display()), build, var))
}

fn find_objs_nginx(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    let candidate = dir.join("objs").join("nginx");
    if candidate.is_file() {
        out.push(candidate);
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) && entry.file_name() != "objs" {
            find_objs_nginx(&entry.path(), depth - 1, out);
        }
    }
}

fn newest(candidates: Vec<PathBuf>) -> Option<PathBuf> {
    candidates
        .into_iter()
        .max_by_key(|path| std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH))
}

fn missing(what: &str, looked: &str, build: &str, var: &str) -> anyhow::Error {
    let hint = if var.is_empty() { String::new() } else { format!(" (or set {var}=<path>)") };
    anyhow::anyhow!("{what} not found at {looked}: build it with `{build}`{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn missing_error_names_the_build_command() {
        let err = missing("probe binary", "/x", "cargo build -p p", "VAR");
        let text = err.to_string();
        assert!(text.contains("cargo build -p p"), "{text}");
        assert!(text.contains("VAR=<path>"), "{text}");
    }
}
