//! The `berth` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use berth::usage::When;
use clap::{Parser, Subcommand, ValueEnum};

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
        /// Only this tenant: its own file's problems (exit 1 when it is refused)
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        /// With --tenant: its effective configuration, every value with its
        /// origin, and every override that was refused
        #[arg(long, requires = "tenant")]
        explain: bool,
    },
    /// Billing report from the usage database: average and peak memory, memory
    /// GiB-hours, CPU seconds, requests, traffic and limit events per tenant.
    Usage {
        #[arg(long, short)]
        config: PathBuf,
        /// Start of the window: RFC 3339 (2026-11-01T00:00:00Z), a date
        /// (midnight UTC), `now`, or a time ago (-7d, -1h, -30m) [default: -30d]
        #[arg(long, value_name = "T", allow_hyphen_values = true)]
        since: Option<When>,
        /// End of the window, in the same forms [default: now]
        #[arg(long, value_name = "T", allow_hyphen_values = true)]
        until: Option<When>,
        /// Only this tenant
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        /// A row for each app besides each tenant's own
        #[arg(long)]
        app: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The host's security checklist applied to what berth serves: modes and
    /// owners in web roots, keys, certificates, listeners, identities. Exit
    /// 0 when no finding is at or above --fail-on, 1 when one is, 2 when the
    /// configuration does not load.
    Audit {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = AuditFormat::Text)]
        format: AuditFormat,
        /// The least severity that makes the exit status 1: critical, high,
        /// medium, low or info
        #[arg(long, value_name = "SEVERITY", default_value = "high")]
        fail_on: berth::audit::Severity,
    },
    /// Act on a running berth over its control socket: as root or a member
    /// of admin_group on any tenant (--tenant), as a tenant's user on its own.
    Ctl(berth::control::client::CtlArgs),
    /// The front end; started by `serve`, never by hand.
    #[command(hide = true)]
    Front {
        #[arg(long, default_value = "info")]
        log_level: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum AuditFormat {
    Text,
    Json,
}

/// `berth audit`: the configuration loaded as `berth check` loads it (its
/// problems printed as check prints them, exit 2), then the checklist.
fn audit(
    config: &std::path::Path,
    format: AuditFormat,
    fail_on: berth::audit::Severity,
) -> ExitCode {
    let cfg = match berth::config::load(config) {
        Ok(cfg) => cfg,
        Err(problems) => {
            print!("{problems}");
            eprintln!(
                "berth audit: the configuration has {} problem(s) (see berth check); nothing audited",
                problems.len()
            );
            return ExitCode::from(2);
        }
    };
    let report = berth::audit::run(&cfg);
    let text = match format {
        AuditFormat::Text => {
            use std::io::IsTerminal;
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            report.text(config, fail_on, colour)
        }
        AuditFormat::Json => report.json() + "\n",
    };
    // (A reader that stops early, `berth audit | head`, changes nothing:
    // the exit status still says what was found.)
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if report.at_or_above(fail_on) > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The default window of `berth usage`: the last 30 days.
const USAGE_DEFAULT_DAYS: u64 = 30;

fn usage(
    config: &std::path::Path,
    since: Option<When>,
    until: Option<When>,
    query_tenant: Option<String>,
    per_app: bool,
    format: Format,
) -> ExitCode {
    let cfg = match berth::config::load(config) {
        Ok(cfg) => cfg,
        Err(problems) => {
            eprint!("{problems}");
            return ExitCode::from(1);
        }
    };
    // Whole seconds, so that relative times print as such.
    let now = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        );
    let default_since = When::Ago(Duration::from_secs(USAGE_DEFAULT_DAYS * 86_400));
    let query = berth::usage::Query {
        since: since.unwrap_or(default_since).resolve(now),
        until: until.unwrap_or(When::Now).resolve(now),
        tenant: query_tenant,
        per_app,
    };
    let db = cfg.server.state_dir.join(berth::usage::DB_FILE);
    match berth::usage::report(&db, &query) {
        Ok(report) => {
            let text = match format {
                Format::Table => report.table(),
                Format::Csv => report.csv(),
                Format::Json => report.json(),
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::from(1)
        }
    }
}

/// `berth check`: the whole configuration, or one tenant's own file (and
/// with `explain`, its effective configuration).
fn check(config: &std::path::Path, tenant: Option<&str>, explain: bool) -> ExitCode {
    let cfg = match berth::config::load(config) {
        Ok(cfg) => cfg,
        Err(problems) => {
            print!("{problems}");
            return ExitCode::from(1);
        }
    };
    if let Some(name) = tenant {
        let Some(t) = cfg.tenants.iter().find(|t| t.name == name) else {
            eprintln!("berth: no tenant {name:?} in {}", config.display());
            return ExitCode::from(1);
        };
        if explain {
            match berth::config::explain::explain(&cfg, name) {
                Ok(text) => print!("{text}"),
                Err(e) => {
                    eprintln!("berth: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        let owns: Vec<_> = t.own_files().collect();
        if owns.is_empty() && !explain {
            println!("tenant {name}: no own file (the administrator allows none)");
        }
        for own in &owns {
            if !explain {
                for p in &own.problems {
                    println!("{p}");
                }
                println!("{}", own.summary());
            }
        }
        return if owns.iter().any(|o| o.refused()) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
    for note in &cfg.notes {
        println!("note: {note}");
    }
    // A tenant's refused file stops nothing (the tenant keeps the
    // administrator's settings, or its last good file), but the
    // administrator should know.
    for t in &cfg.tenants {
        for own in t.own_files().filter(|o| o.refused()) {
            for p in &own.problems {
                println!("tenant {}: {p}", t.name);
            }
            println!("tenant {}: own file {}", t.name, own.summary());
        }
    }
    let sites: usize = cfg.tenants.iter().map(|t| t.sites.len()).sum();
    println!(
        "{}: ok ({} files, {} tenants, {} sites)",
        config.display(),
        cfg.files.len(),
        cfg.tenants.len(),
        sites
    );
    if let Some(c) = &cfg.cluster {
        // What every node of the farm must show alike.
        println!(
            "cluster: node {}, configuration fingerprint {}",
            c.name,
            berth::supervisor::cluster::fingerprint(&cfg)
        );
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    // An isolated app's init (see `berth::isolation::init`): before clap,
    // and with nothing else of berth's start-up.
    if std::env::args_os().nth(1).is_some_and(|a| a == "app-init") {
        berth::isolation::init::main();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            config,
            tenant,
            explain,
        } => check(&config, tenant.as_deref(), explain),
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
        Command::Usage {
            config,
            since,
            until,
            tenant,
            app,
            format,
        } => usage(&config, since, until, tenant, app, format),
        Command::Audit {
            config,
            format,
            fail_on,
        } => audit(&config, format, fail_on),
        Command::Ctl(args) => berth::control::client::main(args),
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
