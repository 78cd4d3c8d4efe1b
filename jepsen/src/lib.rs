//! keel-jepsen: Keel's failure-injection harness.
//!
//! A run starts three real `keel node` processes on loopback (the `keel` binary of the same
//! build), drives seeded client processes and a seeded nemesis against them, records every
//! operation as a history (JSON lines, on the harness's monotonic clock), heals every
//! fault, reads every node's final state, checks the history against it, and writes a
//! report. One seed reproduces the schedule of faults and operations.
//!
//! ```text
//!  run ─► Cluster (3 × keel node) ─► init
//!     ├─► LogClient × N ──append/read──► cluster      ─┐
//!     ├─► nemesis (kill …) ──SIGKILL/restart──► nodes  ├─► Recorder (history.jsonl)
//!     └─► heal ─► settle ─► final logs + digests ─────┘
//!                              └─► check_log ─► report (test.json, results.json, summary.txt)
//! ```
//!
//! Exit codes of `keel-jepsen run`: 0 valid, 1 invalid, 2 unknown or harness failure.
#![forbid(unsafe_code)]

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod profile;
pub mod proxy;
pub mod report;
pub mod run;
pub mod workload;
