//! Compiles the BPF programs with clang and generates the libbpf-rs skeleton
//! (with the shared record types) into OUT_DIR.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/upstreamtop.bpf.c";
const HEADER: &str = "src/bpf/upstreamtop.h";
const BTF: &str = "/sys/kernel/btf/vmlinux";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let vmlinux_dir = out.join("vmlinux");
    if let Err(msg) = generate_vmlinux_h(&vmlinux_dir) {
        panic!("\n\nupstreamtop-probe build: {msg}\n");
    }
    if Command::new("clang").arg("--version").output().is_err() {
        panic!(
            "\n\nupstreamtop-probe build: `clang` not found; the BPF programs need it \
             (Debian: apt-get install clang llvm libelf-dev zlib1g-dev bpftool)\n"
        );
    }

    let skel = out.join("upstreamtop.skel.rs");
    let result = SkeletonBuilder::new()
        .source(SRC)
        .clang_args([
            "-O2".into(),
            // alu32 + jmp32: 32-bit bounds the verifier can follow (v1, the
            // default of older clang, loses them on every u32 compare).
            "-mcpu=v3".into(),
            "-g".into(),
            "-Wall".into(),
            "-I".into(),
            vmlinux_dir.into_os_string(),
            "-I".into(),
            "src/bpf".into(),
        ])
        .build_and_generate(&skel);
    if let Err(e) = result {
        panic!("\n\nupstreamtop-probe build: compiling {SRC} failed: {e:#}\n");
    }
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed={HEADER}");
}

/// `vmlinux.h` from the running kernel's BTF (`bpftool btf dump`), so that
/// CO-RE relocations resolve against the kernel the programs are loaded on.
fn generate_vmlinux_h(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let target = dir.join("vmlinux.h");
    if target.exists() {
        return Ok(());
    }
    if !Path::new(BTF).exists() {
        return Err(format!(
            "{BTF} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF, \
             which the probe needs (CO-RE)"
        ));
    }
    let output = Command::new("bpftool")
        .args(["btf", "dump", "file", BTF, "format", "c"])
        .output()
        .map_err(|e| format!("running `bpftool` failed ({e}); install it (Debian: apt-get install bpftool)"))?;
    if !output.status.success() {
        return Err(format!(
            "`bpftool btf dump file {BTF} format c` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let tmp = dir.join("vmlinux.h.tmp");
    fs::write(&tmp, &output.stdout).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    fs::rename(&tmp, &target).map_err(|e| format!("renaming to {}: {e}", target.display()))?;
    Ok(())
}
