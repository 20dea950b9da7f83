use clap::Parser;
use upstreamtop_probe::cli::{Cli, Command};
use upstreamtop_probe::daemon;

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Dump { table }) => daemon::dump(table),
        Some(Command::Detach { state_dir }) => daemon::detach(state_dir),
        Some(Command::Status { state_dir }) => daemon::status(state_dir),
        None => daemon::run(cli),
    };
    if let Err(e) = result {
        eprintln!("upstreamtop-probe: {e:#}");
        std::process::exit(1);
    }
}
