use clap::Parser;
use upstreamtop_probe::cli::{Cli, Command};
use upstreamtop_probe::daemon;

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Dump { table }) => daemon::dump(table),
        None => daemon::run(cli),
    };
    if let Err(e) = result {
        eprintln!("upstreamtop-probe: {e:#}");
        std::process::exit(1);
    }
}
