use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = upstreamtop::Args::parse();
    match upstreamtop::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("upstreamtop: {e:#}");
            ExitCode::from(2)
        }
    }
}
