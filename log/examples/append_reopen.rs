//! Keel's main job until the cluster exists: append records durably, close, reopen (which
//! runs recovery), and read them back zero-copy.
//!
//! `cargo run --release -p keel-log --example append_reopen [DIR] [COUNT]`
//! (default directory `./keel-data/example-log`, 100 000 records).
#![allow(
    clippy::print_stdout,
    clippy::cast_precision_loss,
    reason = "an example prints its results; rates need no exact integers"
)]

use std::time::Instant;

use keel_log::{Encoded, Log, Options};

type Step = (u64, String);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "keel-data/example-log".to_owned());
    let count: u64 = args.next().map_or(Ok(100_000), |s| s.parse())?;

    let log = Log::<Step>::open(&dir, Options::default())?;
    let first = log.state()?.last.map_or(0, |id| id.index + 1);
    println!("opened {dir}: {first} records already there");

    let started = Instant::now();
    let mut last_ticket = None;
    for chunk_start in (first..first + count).step_by(256) {
        let chunk_end = (chunk_start + 256).min(first + count);
        let records = (chunk_start..chunk_end)
            .map(|i| Encoded::new(&(i, format!("step {i} of a durable workflow"))))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<_> = records.iter().collect();
        last_ticket = Some(log.append_next(1, &refs)?.ticket);
    }
    if let Some(ticket) = last_ticket {
        ticket.wait()?;
    }
    let elapsed = started.elapsed();
    println!(
        "appended {count} records durably in {elapsed:.2?} ({:.0} records/s, group commit)",
        count as f64 / elapsed.as_secs_f64()
    );
    drop(log);

    let started = Instant::now();
    let log = Log::<Step>::open(&dir, Options::default())?;
    println!(
        "reopened (recovery checked every record) in {:.2?}",
        started.elapsed()
    );
    let state = log.state()?;
    println!(
        "log holds indexes {:?} ..= {:?}",
        state.first_index,
        state.last.map(|id| id.index)
    );

    let last = state.last.map_or(0, |id| id.index);
    let record = log.get(last)?.ok_or("the last record is missing")?;
    println!(
        "record {}: ({}, {:?})",
        record.id(),
        record.0,
        record.1.as_str()
    );
    let started = Instant::now();
    let mut total = 0u64;
    for record in log.reader().range(first..) {
        total += record?.0.to_native() & 1;
    }
    println!(
        "scanned {count} records zero-copy in {:.2?} (checksum {total})",
        started.elapsed()
    );
    Ok(())
}
