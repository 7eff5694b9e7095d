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
    /// Write a media volume holding every regular file under DIR
    Pack {
        /// Directory to pack: a file's path relative to it is its URL path
        dir: std::path::PathBuf,
        /// Output: a regular file (created or truncated) or a block device (written in place)
        volume: std::path::PathBuf,
    },
    /// List a volume's objects (path, size, content type) and verify their checksums
    Inspect {
        /// Volume file or block device; exit status 1 if it is corrupt or a checksum fails
        volume: std::path::PathBuf,
    },
    /// Run the appliance: serve the volume over HTTP on the given NIC, with the console
    Serve(appliance::server::ServeArgs),
    /// Measure the fast path in-process (server loop over the simulated link, beside memcpy)
    Bench(appliance::bench::BenchArgs),
    /// Run as PID 1 of the image (also when started as /init); with --store, edit a configuration offline.
    Init(appliance::boot::InitArgs),
}

/// Counts heap allocations for `appliance bench` (allocs_on_packet_path); forwards to the
/// system allocator.
#[global_allocator]
static ALLOCATOR: appliance::accounting::CountingAlloc = appliance::accounting::CountingAlloc;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse_from(appliance::boot::command_line_args());
    match cli.command {
        Command::Pack { dir, volume } => std::process::exit(appliance::volume::cli::pack(&dir, &volume)),
        Command::Inspect { volume } => std::process::exit(appliance::volume::cli::inspect(&volume)),
        Command::Init(args) => {
            if let Err(e) = appliance::boot::main(args) {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        Command::Bench(args) => {
            if let Err(e) = appliance::bench::run(args) {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        Command::Serve(args) => match appliance::server::serve(args) {
            // Under the image's init the exit status asks it to power off or reboot.
            Ok(appliance::server::Outcome::Poweroff) if std::env::var_os(appliance::boot::SUPERVISED_ENV).is_some() => {
                std::process::exit(appliance::boot::EXIT_POWEROFF)
            }
            Ok(appliance::server::Outcome::Poweroff) => std::process::exit(0),
            Ok(appliance::server::Outcome::Reboot) => std::process::exit(appliance::boot::EXIT_REBOOT),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        },
    }
}
