//! The `berth` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "A multi-tenant web application host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground: SIGHUP reloads, SIGUSR1 reopens logs, SIGTERM drains and exits.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate everything `serve` would load; print one line per problem.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The front end; started by `serve`, never by hand.
    #[command(hide = true)]
    Front {
        #[arg(long, default_value = "info")]
        log_level: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match berth::config::load(&config) {
            Ok(cfg) => {
                for note in &cfg.notes {
                    println!("note: {note}");
                }
                let sites: usize = cfg.tenants.iter().map(|t| t.sites.len()).sum();
                println!(
                    "{}: ok ({} files, {} tenants, {} sites)",
                    config.display(),
                    cfg.files.len(),
                    cfg.tenants.len(),
                    sites
                );
                ExitCode::SUCCESS
            }
            Err(problems) => {
                print!("{problems}");
                ExitCode::from(1)
            }
        },
        Command::Serve { config } => {
            let level = std::env::var("BERTH_LOG")
                .ok()
                .and_then(|s| berth::logging::parse_level(&s))
                .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
            berth::logging::init("supervisor", level);
            match berth::supervisor::run(&config, level) {
                Ok(()) => ExitCode::SUCCESS,
                Err(berth::supervisor::Error::Config(problems)) => {
                    eprint!("{problems}");
                    eprintln!(
                        "berth: configuration has {} problem(s); not started",
                        problems.len()
                    );
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("berth: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Front { log_level } => {
            let level = berth::logging::parse_level(&log_level)
                .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
            berth::logging::init("front", level);
            match berth::front::run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("front end failed: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
