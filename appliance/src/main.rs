//! `appliance`: the command line. Sub-commands dispatch to the library.
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "appliance", version, about = "Streams static media from NVMe to the wire over HTTP/1.1 and TLS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {}
}
