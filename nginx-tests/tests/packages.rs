//! The Debian packages `./build.sh package` leaves in `target/deb/`, as
//! files: what each holds, where, and what it declares. (Installing them
//! under a real systemd is `systemd_boot.rs`; lintian runs in
//! `packaging/build-debs.sh`.)
//!
//! - the module package depends on exactly the nginx ABI it was built for,
//!   spelled as Debian's own libnginx-mod-* packages spell it
//!   (`nginx-abi-1.22.1-7`, what Debian's nginx `Provides:`), and `dpkg`
//!   refuses to configure it next to an nginx of another ABI;
//! - the module, its modules-available snippet and the maintainer scripts
//!   that enable it, where Debian's module packages put theirs;
//! - the probe package: both programs, the unit (its `ExecStart` in
//!   /usr/bin, otherwise config/'s), the conffile /etc/default/upstreamtop-probe,
//!   the system user's sysusers.d file, a man page per command and
//!   subcommand, bash/zsh/fish completions, the example configs.
//!
//! A missing package is a failure naming `./build.sh package`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use nginx_tests::artifacts;

fn deb(name: &str) -> PathBuf {
    let dir = artifacts::target_dir().join("deb");
    let arch = run("dpkg", &["--print-architecture"]);
    let manifest = std::fs::read_to_string(artifacts::workspace_root().join("Cargo.toml")).unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \"").and_then(|v| v.strip_suffix('"')))
        .expect("[workspace.package] version");
    let path = dir.join(format!("{name}_{version}_{arch}.deb"));
    assert!(path.is_file(), "{} missing: run ./build.sh package", path.display());
    path
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn field(deb: &Path, name: &str) -> String {
    run("dpkg-deb", &["-f", &deb.display().to_string(), name])
}

/// Paths (without the leading `.`) and their modes, from `dpkg-deb -c`.
fn contents(deb: &Path) -> Vec<(String, String)> {
    run("dpkg-deb", &["-c", &deb.display().to_string()])
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[5].trim_start_matches('.').trim_end_matches('/').to_owned(), cols[0].to_owned())
        })
        .filter(|(p, _)| !p.is_empty())
        .collect()
}

/// The package's control files (postinst, conffiles, ...) unpacked.
fn control(deb: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run("dpkg-deb", &["-e", &deb.display().to_string(), &dir.path().join("DEBIAN").display().to_string()]);
    dir
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join("DEBIAN").join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// One file out of the package.
fn extract(deb: &Path, path: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    run("dpkg-deb", &["-x", &deb.display().to_string(), &dir.path().display().to_string()]);
    std::fs::read_to_string(dir.path().join(path.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn module_package_depends_on_the_exact_nginx_abi_and_enables_itself_like_debians() {
    let deb = deb("libnginx-mod-http-upstreamtop");
    let depends = field(&deb, "Depends");
    let abis: Vec<&str> = depends.split(", ").filter(|d| d.starts_with("nginx-abi-")).collect();
    assert_eq!(abis.len(), 1, "one nginx-abi dependency: {depends}");
    let abi = abis[0];
    // What Debian's nginx-dev says the ABI is, and what the distro nginx provides.
    let substvars = std::fs::read_to_string("/usr/share/nginx/src/debian/libnginx-mod.abisubstvars")
        .expect("nginx-dev's libnginx-mod.abisubstvars");
    assert!(substvars.lines().any(|l| l == format!("nginx:abi={abi}")), "{abi} vs nginx-dev:\n{substvars}");
    let provides = run("dpkg-query", &["-W", "-f", "${Provides}", "nginx"]);
    assert!(provides.split(", ").any(|p| p == abi), "nginx provides {provides}, the module needs {abi}");
    assert_eq!(field(&deb, "Section"), "httpd");

    let files: BTreeSet<String> = contents(&deb).into_iter().map(|(p, _)| p).collect();
    for want in [
        "/usr/lib/nginx/modules/ngx_http_upstreamtop_module.so",
        "/usr/share/nginx/modules-available/mod-http-upstreamtop.conf",
    ] {
        assert!(files.contains(want), "{want} not in {files:#?}");
    }
    assert_eq!(
        extract(&deb, "/usr/share/nginx/modules-available/mod-http-upstreamtop.conf"),
        "load_module modules/ngx_http_upstreamtop_module.so;\n"
    );
    // dh_nginx's scripts: link on install, keep an admin's removal, unlink on purge.
    let ctl = control(&deb);
    let postinst = read(ctl.path(), "postinst");
    assert!(postinst.contains("mod-http-upstreamtop.conf:50-mod-http-upstreamtop.conf"), "{postinst}");
    assert!(postinst.contains("/etc/nginx/modules-enabled/$to") && postinst.contains("nginx-reload"), "{postinst}");
    assert!(read(ctl.path(), "postrm").contains("purge"));
    eprintln!("module package: Depends {depends}");
}

#[test]
fn module_package_is_refused_next_to_an_nginx_of_another_abi() {
    if !artifacts::is_root() {
        eprintln!("SKIPPED: needs root (dpkg --root into a scratch directory)");
        return;
    }
    let deb = deb("libnginx-mod-http-upstreamtop");
    // A scratch dpkg database with an nginx of another ABI and the libraries.
    let root = tempfile::tempdir().unwrap();
    let admin = root.path().join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(dir)).unwrap();
    }
    std::fs::write(admin.join("available"), "").unwrap();
    let installed = |name: &str, extra: &str| {
        format!(
            "Package: {name}\nStatus: install ok installed\nPriority: optional\nSection: misc\n\
             Maintainer: test\nArchitecture: all\nVersion: 99\n{extra}Description: stand-in\n\n"
        )
    };
    let status = installed("nginx", "Provides: nginx-abi-1.99.0-1\n")
        + &installed("libc6", "")
        + &installed("libgcc-s1", "")
        + &installed("libssl3", "");
    std::fs::write(admin.join("status"), status).unwrap();
    let out =
        Command::new("dpkg").arg(format!("--root={}", root.path().display())).arg("-i").arg(&deb).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dpkg accepted the module next to nginx-abi-1.99.0-1:\n{text}");
    let abi = field(&deb, "Depends").split(", ").find(|d| d.starts_with("nginx-abi-")).unwrap().to_owned();
    assert!(text.contains(&format!("depends on {abi}")), "dpkg's reason names {abi}:\n{text}");
    eprintln!("next to nginx-abi-1.99.0-1: {}", text.lines().find(|l| l.contains("depends on")).unwrap_or_default());
}

#[test]
fn probe_package_holds_programs_unit_conffile_user_man_pages_completions_examples() {
    let deb = deb("upstreamtop");
    let files: std::collections::BTreeMap<String, String> = contents(&deb).into_iter().collect();
    let mut want = vec![
        ("/usr/bin/upstreamtop-probe", "-rwxr-xr-x"),
        ("/usr/bin/upstreamtop", "-rwxr-xr-x"),
        ("/lib/systemd/system/upstreamtop-probe.service", "-rw-r--r--"),
        ("/etc/default/upstreamtop-probe", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/upstreamtop.conf", "-rw-r--r--"),
        ("/usr/share/doc/upstreamtop/copyright", "-rw-r--r--"),
        ("/usr/share/doc/upstreamtop/examples/nginx.conf", "-rw-r--r--"),
        ("/usr/share/doc/upstreamtop/examples/prometheus.yml", "-rw-r--r--"),
        ("/usr/share/doc/upstreamtop/examples/grafana-dashboard.json", "-rw-r--r--"),
    ];
    let pages: Vec<String> = [
        "upstreamtop-probe",
        "upstreamtop-probe-dump",
        "upstreamtop-probe-detach",
        "upstreamtop-probe-status",
        "upstreamtop",
    ]
    .iter()
    .map(|p| format!("/usr/share/man/man1/{p}.1.gz"))
    .collect();
    let completions: Vec<String> = ["upstreamtop-probe", "upstreamtop"]
        .iter()
        .flat_map(|p| {
            [
                format!("/usr/share/bash-completion/completions/{p}"),
                format!("/usr/share/zsh/vendor-completions/_{p}"),
                format!("/usr/share/fish/vendor_completions.d/{p}.fish"),
            ]
        })
        .collect();
    want.extend(pages.iter().chain(&completions).map(|p| (p.as_str(), "-rw-r--r--")));
    for (path, mode) in want {
        assert_eq!(files.get(path).map(String::as_str), Some(mode), "{path} in the package, mode {mode}");
    }
    let root = artifacts::workspace_root();
    assert_eq!(
        extract(&deb, "/usr/share/doc/upstreamtop/examples/nginx.conf"),
        std::fs::read_to_string(root.join("config/nginx.conf")).unwrap()
    );
    assert_eq!(
        extract(&deb, "/usr/lib/sysusers.d/upstreamtop.conf"),
        std::fs::read_to_string(root.join("config/upstreamtop.sysusers")).unwrap()
    );

    // config/'s unit, with the packaged binary and the man page.
    let unit = extract(&deb, "/lib/systemd/system/upstreamtop-probe.service");
    let ours = std::fs::read_to_string(root.join("config/upstreamtop-probe.service")).unwrap();
    let strip = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("Documentation="))
            .map(|l| l.replace("/usr/local/bin/", "/usr/bin/"))
            .collect()
    };
    assert_eq!(strip(&unit), strip(&ours), "the packaged unit is config/'s");
    assert!(unit.contains("\nExecStart=/usr/bin/upstreamtop-probe --table /run/upstreamtop/table"), "{unit}");
    assert!(unit.contains("\nDocumentation=man:upstreamtop-probe(1)\n"), "{unit}");

    let ctl = control(&deb);
    assert_eq!(read(ctl.path(), "conffiles").trim(), "/etc/default/upstreamtop-probe");
    let postinst = read(ctl.path(), "postinst");
    let sysusers = postinst.find("systemd-sysusers").expect("postinst creates the user");
    let start =
        postinst.find("deb-systemd-invoke $_dh_action").expect("postinst starts (restarts on upgrade) the unit");
    assert!(sysusers < start, "the user exists before the unit starts:\n{postinst}");
    assert!(postinst.contains("deb-systemd-helper enable 'upstreamtop-probe.service'"), "{postinst}");
    let prerm = read(ctl.path(), "prerm");
    let stop = prerm.find("deb-systemd-invoke stop").expect("prerm stops the unit on remove");
    let detach = prerm.find("upstreamtop-probe detach").expect("prerm detaches on remove");
    assert!(stop < detach, "stopped, then detached:\n{prerm}");
    assert!(read(ctl.path(), "postrm").contains("rm -rf /sys/fs/bpf/upstreamtop"));
    let default = extract(&deb, "/etc/default/upstreamtop-probe");
    assert!(default.lines().any(|l| l == "UPSTREAMTOP_PROBE_ARGS=\"\""), "{default}");
    eprintln!("probe package: {} files, Depends {}", files.len(), field(&deb, "Depends"));
}
