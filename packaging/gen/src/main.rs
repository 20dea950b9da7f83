//! Man pages (`clap_mangen`) and shell completions (`clap_complete`) for
//! `upstreamtop-probe` and `upstreamtop`, generated from their clap
//! definitions (`probe/src/cli.rs`, `probe/dashboard/src/cli.rs`), so a flag
//! added there is documented in the packages without a second copy.
//!
//! Usage: `upstreamtop-gen OUT_DIR` writes
//!   OUT_DIR/man/upstreamtop-probe.1, upstreamtop-probe-dump.1, ... upstreamtop.1
//!   OUT_DIR/completions/bash/upstreamtop-probe, .../zsh/_upstreamtop-probe,
//!   .../fish/upstreamtop-probe.fish (and the same for upstreamtop)
//!
//! and prints each path it wrote.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// Where each program's pages point the reader next.
const SEE_ALSO_PROBE: &str = "upstreamtop(1), systemctl(1) status upstreamtop-probe, /usr/share/doc/upstreamtop/";
const SEE_ALSO_DASHBOARD: &str = "upstreamtop-probe(1), /usr/share/doc/upstreamtop/";

fn main() -> Result<()> {
    let out: PathBuf = std::env::args_os().nth(1).map(PathBuf::from).context("usage: upstreamtop-gen OUT_DIR")?;
    for path in generate(&out)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// Every file for both programs; the paths written.
fn generate(out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (cmd, see_also) in
        [(upstreamtop_probe::cli::Cli::command(), SEE_ALSO_PROBE), (upstreamtop::Args::command(), SEE_ALSO_DASHBOARD)]
    {
        written.extend(man_pages(cmd.clone(), see_also, &out.join("man"))?);
        written.extend(completions(cmd, &out.join("completions"))?);
    }
    Ok(written)
}

/// The program's page, and one page per subcommand (`upstreamtop-probe-dump.1`).
fn man_pages(cmd: clap::Command, see_also: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = cmd.get_name().to_owned();
    let mut written = vec![man_page(&cmd, see_also, &dir.join(format!("{name}.1")))?];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let page = format!("{name}-{}", sub.get_name());
        // Titled like git's pages (upstreamtop-probe-dump(1)), the synopsis
        // as typed (upstreamtop-probe dump), with the parent's version.
        let sub = sub
            .clone()
            .name(page.clone())
            .bin_name(format!("{name} {}", sub.get_name()))
            .version(cmd.get_version().unwrap_or_default().to_owned());
        written.push(man_page(&sub, &format!("{name}(1)"), &dir.join(format!("{page}.1")))?);
    }
    Ok(written)
}

fn man_page(cmd: &clap::Command, see_also: &str, path: &Path) -> Result<PathBuf> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut roff).with_context(|| format!("render {}", path.display()))?;
    roff.extend_from_slice(format!(".SH \"SEE ALSO\"\n{}\n", see_also.replace('-', "\\-")).as_bytes());
    std::fs::write(path, roff).with_context(|| format!("write {}", path.display()))?;
    Ok(path.to_owned())
}

/// bash, zsh and fish, named and placed as Debian's completion packages
/// expect them (`_name` for zsh, `name.fish` for fish).
fn completions(mut cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_owned();
    let mut written = Vec::new();
    for (shell, file) in
        [(Shell::Bash, name.clone()), (Shell::Zsh, format!("_{name}")), (Shell::Fish, format!("{name}.fish"))]
    {
        let shell_dir = dir.join(shell.to_string());
        std::fs::create_dir_all(&shell_dir).with_context(|| format!("create {}", shell_dir.display()))?;
        let path = shell_dir.join(file);
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut text);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn pages_and_completions_name_every_flag() {
        let dir = std::env::temp_dir().join(format!("upstreamtop-gen-test-{}", std::process::id()));
        let written = generate(&dir).unwrap();
        assert_eq!(written.len(), 4 + 3 + 1 + 3, "{written:#?}");
        for (cmd, page) in [
            (upstreamtop_probe::cli::Cli::command(), "upstreamtop-probe"),
            (upstreamtop::Args::command(), "upstreamtop"),
        ] {
            let man = read(dir.join(format!("man/{page}.1")));
            assert!(man.starts_with(".ie \\n(.g .ds Aq"), "roff: {}", &man[..80.min(man.len())]);
            assert!(man.contains(&format!(".TH {page} 1")), "title line");
            let bash = read(dir.join(format!("completions/bash/{page}")));
            let zsh = read(dir.join(format!("completions/zsh/_{page}")));
            let fish = read(dir.join(format!("completions/fish/{page}.fish")));
            for arg in cmd.get_arguments().filter_map(|a| a.get_long()) {
                // roff escapes '-' as '\-'.
                assert!(man.contains(&format!("\\-\\-{}", arg.replace('-', "\\-"))), "{page}.1 lacks --{arg}");
                assert!(bash.contains(&format!("--{arg}")), "bash completion lacks --{arg}");
                assert!(zsh.contains(&format!("--{arg}")), "zsh completion lacks --{arg}");
                assert!(fish.contains(&format!("-l {arg}")), "fish completion lacks --{arg}");
            }
        }
        for sub in ["dump", "detach", "status"] {
            let man = read(dir.join(format!("man/upstreamtop-probe-{sub}.1")));
            assert!(man.contains("\\-\\-"), "upstreamtop-probe-{sub}.1 has its flags");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
