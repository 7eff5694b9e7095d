//! `appliance`: the command line. Sub-commands dispatch to the library.
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "appliance", version, about = "Streams static media from NVMe to the wire over HTTP/1.1 and TLS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run as PID 1 of the image (also when started as /init); with --store, edit a configuration offline.
    Init(appliance::boot::InitArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse_from(appliance::boot::command_line_args());
    match cli.command {
        Command::Init(args) => {
            if let Err(e) = appliance::boot::main(args) {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
}
