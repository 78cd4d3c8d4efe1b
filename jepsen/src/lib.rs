//! keel-jepsen: Keel's failure-injection harness.
//!
//! A run starts three real `keel node` processes (the `keel` binary of the same build), on
//! loopback behind link proxies or, as root, in a network namespace each; drives seeded
//! client processes and a seeded nemesis against them, records every operation as a
//! history (JSON lines, on the harness's monotonic clock), heals every fault, reads every
//! node's final state, checks the history against it, and writes a report. One seed reproduces the schedule of faults and operations.
//!
//! ```text
//!  run ─► Network (proxies or namespaces) ─► Cluster (3 × keel node) ─► init
//!     ├─► clients: log · timers (+ fire watchers) · workflows ─► cluster ─┐
//!     ├─► nemesis or scenario ──kill/pause/cut/skew/flip/power-cut──► nodes├─► Recorder
//!     └─► heal ─► settle ─► final logs, digests, timers, workflows ───────┘  (history)
//!           └─► check_log · check_timers · check_workflows · check_digests · nemesis
//!               anomalies, then nodes stopped ─► check_log_fences on every node's whole
//!               log (purged ranges copied) ─► report (test.json, history.jsonl,
//!               results.json with each checker's coverage, summary.txt, latency.png,
//!               rate.png, index.html, node logs)
//! ```
//!
//! A profile (`profile`) runs planned sequences: `ci` (fixed seed, every nemesis, a
//! regression scenario, negative controls on the sabotage build) and `soak`.
//!
//! Exit codes of `keel-jepsen run`: 0 valid, 1 invalid, 2 unknown or harness failure.
#![forbid(unsafe_code)]

pub mod checker;
pub mod cluster;
pub mod history;
mod logs;
pub mod nemesis;
pub mod network;
pub mod profile;
pub mod report;
pub mod run;
pub mod security;
pub mod workload;
