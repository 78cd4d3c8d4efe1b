//! `keel-jepsen`: run a failure-injection test against real `keel` node processes.
#![allow(
    clippy::print_stdout,
    reason = "a command-line program answers on stdout"
)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keel_jepsen::nemesis::NemesisKind;
use keel_jepsen::nemesis::scenario::Scenario;
use keel_jepsen::network::{NetKind, enter_own_namespace};
use keel_jepsen::profile::{Profile, ProfileConfig, run_profile};
use keel_jepsen::run::{RunConfig, Workload, exit_code, run};

#[derive(Debug, Parser)]
#[command(name = "keel-jepsen", about = "Keel's failure-injection harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One run (clients and a nemesis for a time, then heal, read every node, check), or
    /// with `--profile` a planned sequence of runs.
    Run {
        /// A planned sequence instead of one run: `ci` (fixed seed, every nemesis, negative
        /// controls) or `soak` (every nemesis in rotation, random seeds, until the time
        /// limit).
        #[arg(long, value_enum)]
        profile: Option<Profile>,
        /// A regression scenario (a fixed fault schedule, with its own workload unless
        /// `--workload` says otherwise) instead of `--nemesis`.
        #[arg(long, value_enum, conflicts_with_all = ["profile", "nemesis"])]
        scenario: Option<Scenario>,
        /// The workload (default: `log`, or the scenario's).
        #[arg(long, value_enum)]
        workload: Option<Workload>,
        /// The faults.
        #[arg(long, value_enum, default_value = "kill")]
        nemesis: NemesisKind,
        /// Seconds of clients and faults (a soak: its whole length).
        #[arg(long, default_value_t = 30)]
        time_limit: u64,
        /// The seed (default: drawn at random and recorded).
        #[arg(long)]
        seed: Option<u64>,
        /// Concurrent clients (per workload).
        #[arg(long, default_value_t = 5)]
        clients: u64,
        /// Where reports go.
        #[arg(long, default_value = "store")]
        store: PathBuf,
        /// How the links between nodes are built: `netns` (root: a network namespace per
        /// node, partitions by nftables), `proxy` (a TCP proxy per link), or `auto` (netns
        /// when it can be built). With `--profile`, `proxy` keeps every run on proxies.
        #[arg(long, value_enum, default_value = "auto")]
        net: NetKind,
        /// The `keel` binary (default: the one of this build).
        #[arg(long)]
        keel: Option<PathBuf>,
        /// A deliberate fault for the nodes of a sabotage build: `stale-reads`,
        /// `forgetful-sessions`, `unfenced-fires`, `ack-before-fsync`,
        /// `off-by-one-truncation`, `halved-delays`, `no-takeover`, `unordered-answers`,
        /// `unfenced-runs` or `dropped-values`.
        #[arg(long)]
        sabotage: Option<String>,
        /// The sabotage build's `keel`, for the ci profile's negative controls (default:
        /// `target/sabotage/debug/keel` above the working directory, if built).
        #[arg(long)]
        sabotage_keel: Option<PathBuf>,
        /// TLS on every port and authentication on: certificates from a CA of the run's own,
        /// the harness an admin by certificate, remote workers by a worker token.
        #[arg(long, conflicts_with = "profile")]
        tls: bool,
    },
}

/// The sabotage build's `keel` where `cargo build --features sabotage --target-dir
/// target/sabotage` puts it, looked for from the working directory upwards.
fn default_sabotage_keel() -> Option<PathBuf> {
    let here = std::env::current_dir().ok()?;
    here.ancestors()
        .map(|dir| dir.join("target/sabotage/debug/keel"))
        .find(|path| path.is_file())
}

/// Logs to standard error, `RUST_LOG` filtering (default: warnings).
fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_target(false)
        .init();
}

fn main() {
    init_tracing();
    let Command::Run {
        profile,
        scenario,
        workload,
        nemesis,
        time_limit,
        seed,
        clients,
        store,
        net,
        keel,
        sabotage,
        sabotage_keel,
        tls,
    } = Cli::parse().command;
    // Before any thread starts: this may re-execute the program in a namespace of its own.
    if let Err(error) = enter_own_namespace(net) {
        eprintln!("keel-jepsen: {error:#}");
        std::process::exit(2);
    }
    let code = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(async {
            let keel = match keel.map_or_else(keel_jepsen::cluster::find_keel, Ok) {
                Ok(keel) => keel,
                Err(error) => {
                    eprintln!("keel-jepsen: {error:#}");
                    return 2;
                }
            };
            if let Some(profile) = profile {
                let config = ProfileConfig {
                    profile,
                    time_limit: Duration::from_secs(time_limit),
                    keel,
                    sabotage_keel: sabotage_keel.or_else(default_sabotage_keel),
                    store,
                    clients,
                };
                return run_profile_and_report(&config).await;
            }
            let config = RunConfig {
                workload: workload
                    .or(scenario.map(Scenario::workload))
                    .unwrap_or(Workload::Log),
                nemesis: if scenario.is_some() {
                    NemesisKind::None
                } else {
                    nemesis
                },
                time_limit: Duration::from_secs(time_limit),
                seed: seed.unwrap_or_else(rand::random),
                clients,
                keel,
                store,
                sabotage,
                progress: true,
                scenario,
                net,
                tls,
            };
            run_and_report(&config).await
        }),
        Err(error) => {
            eprintln!("keel-jepsen: starting the runtime: {error}");
            2
        }
    };
    std::process::exit(code);
}

/// Runs once; exit code 0 valid, 1 invalid, 2 unknown or harness failure.
async fn run_and_report(config: &RunConfig) -> i32 {
    println!(
        "keel-jepsen: {} seed {} for {} s",
        config.test_name(),
        config.seed,
        config.time_limit.as_secs()
    );
    match run(config).await {
        Ok(outcome) => {
            let summary = std::fs::read_to_string(outcome.dir.join("summary.txt"));
            print!("{}", summary.unwrap_or_default());
            println!("report: {}", outcome.dir.join("index.html").display());
            exit_code(outcome.checked.validity)
        }
        Err(error) => {
            eprintln!("keel-jepsen: harness failure: {error:#}");
            2
        }
    }
}

/// Runs a profile; exit code 0 when every run came out as expected, 1 when one did not,
/// 2 on a harness failure.
async fn run_profile_and_report(config: &ProfileConfig) -> i32 {
    println!("keel-jepsen: profile {:?}", config.profile);
    match run_profile(config, |run| println!("{}", run.line())).await {
        Ok(outcome) => {
            let summary = std::fs::read_to_string(outcome.dir.join("summary.txt"));
            print!("{}", summary.unwrap_or_default());
            println!("profile report: {}", outcome.dir.display());
            i32::from(!outcome.passed())
        }
        Err(error) => {
            eprintln!("keel-jepsen: harness failure: {error:#}");
            2
        }
    }
}
