//! `keel-jepsen`: run a failure-injection test against real `keel` node processes.
#![allow(
    clippy::print_stdout,
    reason = "a command-line program answers on stdout"
)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keel_jepsen::nemesis::NemesisKind;
use keel_jepsen::run::{RunConfig, Workload, exit_code, run};

#[derive(Debug, Parser)]
#[command(name = "keel-jepsen", about = "Keel's failure-injection harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One run: clients and a nemesis for a time, then heal, read every node, check.
    Run {
        /// The workload.
        #[arg(long, value_enum, default_value = "log")]
        workload: Workload,
        /// The faults.
        #[arg(long, value_enum, default_value = "kill")]
        nemesis: NemesisKind,
        /// Seconds of clients and faults.
        #[arg(long, default_value_t = 30)]
        time_limit: u64,
        /// The seed (default: drawn at random and recorded).
        #[arg(long)]
        seed: Option<u64>,
        /// Concurrent clients.
        #[arg(long, default_value_t = 5)]
        clients: u64,
        /// Where reports go.
        #[arg(long, default_value = "store")]
        store: PathBuf,
        /// The `keel` binary (default: the one of this build).
        #[arg(long)]
        keel: Option<PathBuf>,
        /// A deliberate fault for the nodes of a sabotage build: `stale-reads` or
        /// `unfenced-fires`.
        #[arg(long)]
        sabotage: Option<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_target(false)
        .init();
    let Command::Run {
        workload,
        nemesis,
        time_limit,
        seed,
        clients,
        store,
        keel,
        sabotage,
    } = Cli::parse().command;
    let code = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(async {
            let keel = match keel.map_or_else(keel_jepsen::cluster::find_keel, Ok) {
                Ok(keel) => keel,
                Err(error) => {
                    eprintln!("keel-jepsen: {error:#}");
                    return 2;
                }
            };
            let config = RunConfig {
                workload,
                nemesis,
                time_limit: Duration::from_secs(time_limit),
                seed: seed.unwrap_or_else(rand::random),
                clients,
                keel,
                store,
                sabotage,
            };
            println!(
                "keel-jepsen: {} seed {} for {time_limit} s",
                config.test_name(),
                config.seed
            );
            match run(&config).await {
                Ok(outcome) => {
                    let summary = std::fs::read_to_string(outcome.dir.join("summary.txt"));
                    print!("{}", summary.unwrap_or_default());
                    println!("report: {}", outcome.dir.display());
                    exit_code(outcome.checked.validity)
                }
                Err(error) => {
                    eprintln!("keel-jepsen: harness failure: {error:#}");
                    2
                }
            }
        }),
        Err(error) => {
            eprintln!("keel-jepsen: starting the runtime: {error}");
            2
        }
    };
    std::process::exit(code);
}
