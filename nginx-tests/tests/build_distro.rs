//! `module/build-distro.sh --nginx PATH` picks the source tree and the
//! configure arguments for the nginx binary it is given (`--dry-run`: what it
//! would build with, nothing built). Stand-in binaries print `nginx -V` for
//! other versions:
//!   - Debian's nginx: nginx-dev's tree, Debian's conf_flags;
//!   - nginx 1.28.3 (the nginx-src crate's version): the crate's tree, the
//!     binary's own arguments less third-party modules and --builddir;
//!   - nginx 1.26.2: refused, naming what to fetch; accepted with NGINX_SRC
//!     pointing at a 1.26.2 tree.
//!
//! Building and loading for real: distro_nginx.rs for Debian's nginx,
//! systemd_boot.rs for the packaged module.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nginx_tests::artifacts;

fn script() -> PathBuf {
    artifacts::workspace_root().join("module/build-distro.sh")
}

fn run(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(script());
    cmd.args(args).env("CARGO_TARGET_DIR", artifacts::target_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run module/build-distro.sh")
}

/// The dry run's lines: version, source, configure, out.
fn dry_run(nginx: &Path, env: &[(&str, &Path)]) -> Vec<String> {
    let out = run(&["--nginx", &nginx.display().to_string(), "--dry-run"], env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// A stand-in nginx whose `-V` says `version` and `args`.
fn fake_nginx(dir: &Path, version: &str, args: &str) -> PathBuf {
    let path = dir.join(format!("fake-nginx-{version}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho 'nginx version: nginx/{version}' >&2\necho 'built by gcc 12.2.0' >&2\n\
             echo \"configure arguments: {args}\" >&2\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The nginx-src crate's tree in cargo's registry, if cargo fetched it.
fn crate_tree() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(home.join("registry/src"))
        .ok()?
        .flatten()
        .flat_map(|index| std::fs::read_dir(index.path()).into_iter().flatten().flatten())
        .map(|e| e.path().join("nginx"))
        .filter(|p| p.parent().unwrap().file_name().unwrap().to_string_lossy().starts_with("nginx-src-"))
        .filter(|p| p.join("src/core/nginx.h").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn tree_version(tree: &Path) -> String {
    let header = std::fs::read_to_string(tree.join("src/core/nginx.h")).unwrap();
    header
        .lines()
        .find_map(|l| l.strip_prefix("#define NGINX_VERSION"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("NGINX_VERSION")
}

#[test]
fn debian_nginx_is_built_against_nginx_dev_with_debians_flags() {
    let (nginx, dev) = (Path::new("/usr/sbin/nginx"), Path::new("/usr/share/nginx/src"));
    if !nginx.exists() || !dev.join("conf_flags").exists() {
        eprintln!("SKIPPED: no /usr/sbin/nginx + nginx-dev (apt-get install nginx-light nginx-dev)");
        return;
    }
    let lines = dry_run(nginx, &[]);
    assert_eq!(lines[1], format!("source {} (debian)", dev.display()), "{lines:#?}");
    let flags = std::fs::read_to_string(dev.join("conf_flags")).unwrap();
    let debian: Vec<&str> = flags
        .split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map(|(inside, _)| inside.split_whitespace().collect())
        .expect("NGX_CONF_FLAGS=( ... )");
    assert_eq!(lines[2], format!("configure {}", debian.join(" ")));
    assert_eq!(
        lines[3],
        format!("out {}", artifacts::target_dir().join("distro/ngx_http_upstreamtop_module.so").display())
    );
}

#[test]
fn other_versions_use_a_matching_source_with_the_binarys_flags_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();

    // The crate's version: its tree, the binary's flags without what cannot
    // or must not be repeated here.
    match crate_tree() {
        Some(tree) => {
            let version = tree_version(&tree);
            let nginx = fake_nginx(
                dir.path(),
                &version,
                "--prefix=/etc/nginx --with-compat --with-cc-opt='-g -O2 -fPIC' \
                 --add-dynamic-module=/build/njs/nginx --builddir=/build/objs --with-threads",
            );
            let lines = dry_run(&nginx, &[]);
            assert_eq!(lines[0], format!("version {version}"));
            assert_eq!(lines[1], format!("source {} (crate)", tree.display()));
            assert_eq!(
                lines[2],
                r"configure --prefix=/etc/nginx --with-compat --with-cc-opt=-g\ -O2\ -fPIC --with-threads"
            );
            let out = artifacts::target_dir().join(format!("nginx-{version}/ngx_http_upstreamtop_module.so"));
            assert_eq!(lines[3], format!("out {}", out.display()));
        }
        None => eprintln!("no nginx-src crate in cargo's registry: its case is not checked"),
    }

    // A version nobody has here: refused, saying what to fetch.
    let nginx = fake_nginx(dir.path(), "1.26.2", "--prefix=/etc/nginx --with-compat");
    let out = run(&["--nginx", &nginx.display().to_string(), "--dry-run"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is nginx 1.26.2, and no nginx 1.26.2 source is available offline"), "{stderr}");
    assert!(stderr.contains("NGINX_SRC=/path/to/nginx-1.26.2"), "{stderr}");
    assert!(out.stdout.is_empty());

    // ... unless NGINX_SRC holds that version.
    let src = dir.path().join("nginx-1.26.2");
    std::fs::create_dir_all(src.join("src/core")).unwrap();
    std::fs::write(src.join("src/core/nginx.h"), "#define NGINX_VERSION      \"1.26.2\"\n").unwrap();
    std::fs::write(src.join("configure"), "#!/bin/sh\n").unwrap();
    let lines = dry_run(&nginx, &[("NGINX_SRC", &src)]);
    assert_eq!(lines[1], format!("source {} (given)", src.display()));
    assert_eq!(lines[2], "configure --prefix=/etc/nginx --with-compat");

    // Not an nginx at all.
    let out = run(&["--nginx", "/nonexistent/nginx", "--dry-run"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/nginx is not an executable nginx"));
}
