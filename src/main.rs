//! Command-line entry point: parses arguments, sets up logging and hands over to the library.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use pgdecomp::classify::{to_json, to_text, Classifier};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc for small blocks, the system allocator for large ones (`src/alloc.rs`).
#[global_allocator]
static ALLOCATOR: pgdecomp::alloc::Routed = pgdecomp::alloc::Routed;

#[derive(Parser)]
#[command(
    name = "pgdecomp",
    version,
    about = "PostgreSQL proxy for splitting one database into two"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (for the default `run` command).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file and print a summary.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Compare the table dictionary with the main primary's tables.
    Dictionary {
        #[command(subcommand)]
        action: DictionaryAction,
    },
    /// The fleet's phase in etcd (needs a [fleet] section).
    Phase {
        #[command(subcommand)]
        action: PhaseAction,
    },
    /// Classify SQL (from the argument, or stdin when absent).
    /// The phase-7 cutover of the whole fleet (or, with --dry-run, its rehearsal).
    Cutover {
        #[arg(long)]
        config: PathBuf,
        /// Rehearse: hold, read the WAL position, wait for the catch-up, release; no
        /// promotion, no switch.
        #[arg(long)]
        dry_run: bool,
        /// Ask a running cutover to abort (honoured before its point of no return).
        #[arg(long, conflicts_with_all = ["dry_run", "status"])]
        abort: bool,
        /// Print the cutover record stored in etcd.
        #[arg(long, conflicts_with = "dry_run")]
        status: bool,
        #[arg(long, default_value = "requested by the operator")]
        reason: String,
    },
    Classify {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
        sql: Option<String>,
    },
}

#[derive(Subcommand)]
enum DictionaryAction {
    /// List the main primary's tables the dictionary does not know (exit 1 when any) and the
    /// dictionary entries with no table in the database.
    Check {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(Subcommand)]
enum PhaseAction {
    /// Store a phase (N for phases/phase-N.toml, or a phase file name) in etcd and wait until
    /// every registered instance runs it (exit 1 when some do not within --wait).
    Set {
        phase: String,
        #[arg(long)]
        config: PathBuf,
        /// Allow entering or leaving phase 7 (normally the cutover's job).
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the fleet to apply it (0: do not wait).
        #[arg(long, default_value_t = 10.0)]
        wait: f64,
    },
    /// Show the stored phase and each instance's applied phase and revision.
    Show {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Some(Command::Run { config }) => run(config),
        None => cli
            .config
            .context("--config FILE is required")
            .and_then(run),
        Some(Command::CheckConfig { config }) => load(&config).map(|s| println!("{}", s.summary())),
        Some(Command::Dictionary {
            action: DictionaryAction::Check { config, format },
        }) => dictionary_check(config, format),
        Some(Command::Classify {
            config,
            format,
            sql,
        }) => classify(config, format, sql),
        Some(Command::Phase { action }) => phase(action),
        Some(Command::Cutover {
            config,
            dry_run,
            abort,
            status,
            reason,
        }) => cutover(config, dry_run, abort, status, &reason),
    };
    if let Err(e) = result {
        // One line with the cause chain: operators read this in a terminal or a log.
        eprintln!("pgdecomp: {e:#}");
        std::process::exit(1);
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<pgdecomp::config::Snapshot> {
    pgdecomp::config::load(path).with_context(|| format!("invalid config {}", path.display()))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGDECOMP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: a log file (the demo's, a systemd journal) gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(config: PathBuf) -> anyhow::Result<()> {
    let snap = load(&config)?;
    let rt = runtime(snap.workers)?;
    rt.block_on(async move {
        let running = pgdecomp::app::start(snap).await.context("cannot start")?;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut shutdown = running.shared.shutdown.subscribe();
        let graceful = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break false,
                _ = term.recv() => break true,
                _ = shutdown.changed() => break true,
                // A failed reload is logged and counted; the old config keeps serving.
                _ = hup.recv() => { let _ = running.shared.reload(); }
            }
        };
        if graceful {
            let bound = running.shared.config.load().shutdown_timeout;
            tracing::info!(bound_seconds = bound.as_secs_f64(), "shutting down: no new connections; clients leave as their transactions end");
            tokio::select! {
                left = running.drain(bound) => {
                    if left > 0 {
                        tracing::warn!(clients = left, "shutdown_timeout passed; closing the remaining clients");
                    }
                }
                // A second signal (Ctrl-C) does not wait any longer.
                _ = tokio::signal::ctrl_c() => tracing::warn!("SIGINT during shutdown: closing now"),
            }
        }
        tracing::info!("shutting down");
        running.shutdown();
        Ok(())
    })
}

/// The proxy's runtime. One thread (the default) is PgBouncer's layout: side by side with a
/// two-thread work-stealing runtime it spent 0.82–0.98 times the CPU per transaction on most
/// workloads, never more than 1.03, for about the same TPS (benches/compare.sh, issue 12): no
/// cross-thread wake-ups or run-queue atomics. More threads are for hosts where one core
/// cannot carry the load.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    use tokio::runtime::Builder;
    match workers {
        1 => Builder::new_current_thread().enable_all().build(),
        0 => Builder::new_multi_thread().enable_all().build(),
        n => Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

/// `pgdecomp phase set|show`: the fleet's phase in etcd (`src/fleet/cli.rs`).
fn phase(action: PhaseAction) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match action {
        PhaseAction::Show { config } => {
            let snap = load(&config)?;
            let view = rt.block_on(pgdecomp::fleet::cli::show(&snap))?;
            print!("{}", view.to_text());
        }
        PhaseAction::Set {
            phase,
            config,
            force,
            wait,
        } => {
            let snap = load(&config)?;
            let wait = Duration::try_from_secs_f64(wait).context("--wait: seconds >= 0")?;
            let outcome = rt.block_on(pgdecomp::fleet::cli::set(&snap, &phase, force, wait))?;
            print!("{}", outcome.to_text());
            if !outcome.converged {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

/// `pgdecomp classify`: unparsable SQL is an answer (kind "unknown"), not a failure.
/// `pgdecomp cutover`: the JSON report on stdout, progress on stderr; the exit code says how
/// it ended (0 completed or rehearsed, 1 aborted, 2 refused).
fn cutover(
    config: PathBuf,
    dry_run: bool,
    abort: bool,
    status: bool,
    reason: &str,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let snap = std::sync::Arc::new(load(&config)?);
    use pgdecomp::cutover::cli;
    if status || abort {
        let record = match abort {
            true => rt.block_on(cli::request_abort(&snap, reason))?,
            false => rt.block_on(cli::status(&snap))?,
        };
        println!("{}", serde_json::to_string_pretty(&record)?);
        if abort {
            eprintln!("abort requested; a cutover past its point of no return goes on");
        }
        return Ok(());
    }
    let report = rt.block_on(cli::cutover(snap, dry_run));
    println!("{}", serde_json::to_string_pretty(&report)?);
    let code = report.outcome().map_or(1, |o| o.exit_code());
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

fn classify(config: Option<PathBuf>, format: Format, sql: Option<String>) -> anyhow::Result<()> {
    let classifier = match config {
        Some(path) => pgdecomp::config::load_classifier(&path)
            .with_context(|| format!("invalid config {}", path.display()))?,
        None => Classifier::gitlab_default(),
    };
    let sql = match sql {
        Some(sql) => sql,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading SQL from stdin")?;
            text
        }
    };
    let classification = classifier.classify(&sql);
    match format {
        Format::Json => println!("{}", to_json(&classification)),
        Format::Text => print!("{}", to_text(&classification)),
    }
    Ok(())
}

/// `pgdecomp dictionary check`: reads the main primary's catalog as the running proxy does.
fn dictionary_check(config: PathBuf, format: Format) -> anyhow::Result<()> {
    let snap = load(&config)?;
    let login =
        snap.health.login.clone().context(
            "needs a login for the main primary: [health] or [server] user and password",
        )?;
    let addr = snap
        .main
        .primary
        .clone()
        .context("needs clusters.main.primary (the address whose catalog is read)")?;
    let spec = pgdecomp::server::ServerSpec { addr, ..login };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let catalog = rt.block_on(pgdecomp::catalog::fetch(&spec, Duration::from_secs(30)))?;
    let dictionary = (*snap.classifier.dictionary)
        .clone()
        .with_partitions(catalog.partitions.iter().cloned());
    let report = pgdecomp::catalog::check(&dictionary, &catalog);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print!("{}", report.to_text(&snap.dictionary_name, &catalog.source)),
    }
    if !report.unknown.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
