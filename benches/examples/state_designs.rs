//! Issue #20's two designs for keeping workflow values out of RAM, prototyped side by side
//! on the same load, so the choice between them rests on numbers (ARCHITECTURE.md §3 has
//! the table):
//!
//! - `in-place`: values stay in the Raft log (keel-log) where the command that carried them
//!   was appended; memory holds each workflow's metadata with 16-byte references into the
//!   log. When the log is purged behind a snapshot, a compaction first copies the live
//!   values of the purged range into a value file.
//! - `store`: an embedded store (redb) behind the state machine; each apply batch is one
//!   write transaction (not synced: the Raft log is the write-ahead log), a snapshot is a
//!   synced commit, and memory holds running workflows only.
//!
//! Both append every command to a keel-log first (what the Raft log does, relaxed sync), so
//! the difference between them is the design, not the log. The load is the scale
//! benchmark's: workflows with 36-byte ids, a 100-byte input, ten steps of 2 KiB results and
//! a 64-byte output, 32 in flight, applied in batches of 64 commands. Then, in order:
//! memory per retained workflow, reads of whole workflows, a snapshot (what blocks apply,
//! what it costs in all), a full copy for a wiped follower, a restart, and retention: the
//! oldest half expires, its space is reclaimed, and half as many new workflows are loaded.
//!
//! ```text
//! cargo run --release -p keel-benches --example state_designs -- in-place 100000
//! cargo run --release -p keel-benches --example state_designs -- store 100000
//! ```
//!
//! Each design runs in its own process, so resident memory is its own.
#![forbid(unsafe_code)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "a prototype's lengths and counts are far below u32::MAX and f64's precision"
)]
#![allow(clippy::print_stdout, reason = "the report is this program's output")]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_log::{Encoded, Log, LogId, Options, SyncPolicy};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const STEPS: u32 = 10;
const INPUT_BYTES: usize = 100;
const RESULT_BYTES: usize = 2048;
const OUTPUT_BYTES: usize = 64;
const IN_FLIGHT: u64 = 32;
const APPLY_BATCH: usize = 64;
const ID_BYTES: usize = 36;
/// A command's bytes: kind, sequence number, workflow id, then the value.
const HEADER_BYTES: usize = 1 + 4 + ID_BYTES;
/// The output's sequence number in the store's value table.
const OUTPUT_SEQ: u32 = u32::MAX;
/// Entries the log keeps behind a snapshot (openraft's `max_in_snapshot_log_to_keep`).
const KEEP_BEHIND: u64 = 1000;
/// The store's page cache.
const STORE_CACHE_BYTES: usize = 32 << 20;
/// Whole workflows read back in the read test.
const READS: u64 = 2000;

type RaftLog = Log<Vec<u8>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Start,
    Step,
    Finish,
}

/// A 36-byte id shaped like a UUID, unique to `n`.
fn workflow_id(n: u64) -> String {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 12) & 0xfff,
        n
    )
}

fn command(kind: Kind, seq: u32, id: &str, value_len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + value_len);
    bytes.push(kind as u8);
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(id.as_bytes());
    let fill = u8::try_from(seq % 251).expect("below 251");
    bytes.resize(HEADER_BYTES + value_len, fill);
    bytes
}

fn parse(command: &[u8]) -> (Kind, u32, &str, &[u8]) {
    let kind = match command[0] {
        0 => Kind::Start,
        1 => Kind::Step,
        _ => Kind::Finish,
    };
    let seq = u32::from_le_bytes(command[1..5].try_into().expect("4 bytes"));
    let id = std::str::from_utf8(&command[5..HEADER_BYTES]).expect("ascii id");
    (kind, seq, id, &command[HEADER_BYTES..])
}

/// The commands of workflows `first..first + count`, 32 in flight: each group of 32
/// starts, takes its steps in turn, and finishes.
fn load(first: u64, count: u64) -> impl Iterator<Item = Vec<u8>> {
    (first..first + count)
        .step_by(IN_FLIGHT as usize)
        .flat_map(move |group| {
            let end = (group + IN_FLIGHT).min(first + count);
            (0..STEPS + 2).flat_map(move |phase| {
                (group..end).map(move |n| {
                    let id = workflow_id(n);
                    match phase {
                        0 => command(Kind::Start, 0, &id, INPUT_BYTES),
                        p if p <= STEPS => command(Kind::Step, p, &id, RESULT_BYTES),
                        _ => command(Kind::Finish, OUTPUT_SEQ, &id, OUTPUT_BYTES),
                    }
                })
            })
        })
}

/// What a design does with the commands and the questions asked of it.
trait Design {
    /// Applies the command at Raft index `index`; `log` holds it.
    fn apply(&mut self, log: &RaftLog, index: u64, command: &[u8]);
    /// Ends an apply batch.
    fn end_batch(&mut self);
    /// Reads every value of workflow `id`; returns their total length.
    fn read(&self, log: &RaftLog, id: &str) -> usize;
    /// Builds a snapshot at `last`: returns how long apply was blocked.
    fn snapshot(&mut self, log: &RaftLog, dir: &Path, last: u64) -> Duration;
    /// Writes everything a wiped follower needs to `out`; returns its length.
    fn transfer(&self, log: &RaftLog, out: &Path) -> u64;
    /// Drops the finished workflows `ids`.
    fn expire(&mut self, ids: &[String]);
    /// Reclaims disk after the log is purged up to `mark`; returns bytes copied.
    fn reclaim(&mut self, log: &RaftLog, mark: u64) -> u64;
    /// Closes and reopens from `dir`, as a restarted process does.
    fn restart(&mut self, dir: &Path);
}

// ---------------------------------------------------------------- values referenced in place

/// Where a value is: in the Raft log (`off` into the command at index `pos`), or in the
/// value file at offset `pos` (`off == u32::MAX`).
#[derive(Clone, Copy, Default)]
struct ValueRef {
    pos: u64,
    off: u32,
    len: u32,
}

const IN_VALUE_FILE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct EntryMeta {
    /// The step's name, interned.
    name: u32,
    value: ValueRef,
}

struct WorkflowMeta {
    kind: u32,
    finished: bool,
    created_ms: u64,
    finished_ms: u64,
    input: ValueRef,
    output: ValueRef,
    journal: Vec<EntryMeta>,
}

struct InPlace {
    workflows: HashMap<Box<str>, WorkflowMeta>,
    values: File,
    values_len: u64,
    dir: PathBuf,
}

impl InPlace {
    fn open(dir: &Path) -> Self {
        let values = File::options()
            .create(true)
            .read(true)
            .append(true)
            .open(dir.join("values"))
            .expect("value file");
        let values_len = values.metadata().expect("stat").len();
        Self {
            workflows: HashMap::new(),
            values,
            values_len,
            dir: dir.to_owned(),
        }
    }

    fn value(&self, log: &RaftLog, at: ValueRef) -> Vec<u8> {
        if at.off == IN_VALUE_FILE {
            let mut bytes = vec![0; at.len as usize];
            self.values
                .read_exact_at(&mut bytes, at.pos)
                .expect("read a value");
            return bytes;
        }
        let record = log.get(at.pos).expect("read").expect("a live value");
        let start = at.off as usize;
        record.as_slice()[start..start + at.len as usize].to_vec()
    }

    /// Writes snapshot `bytes` after syncing the log and the value file it points into.
    fn persist(&self, log: &RaftLog, dir: &Path, bytes: &[u8]) {
        sync_dir_files(log.dir());
        self.values.sync_data().expect("sync values");
        let mut file = File::create(dir.join("snapshot")).expect("snapshot file");
        file.write_all(bytes).expect("write snapshot");
        file.sync_data().expect("sync snapshot");
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.workflows.len() * 320);
        out.extend_from_slice(&(self.workflows.len() as u32).to_le_bytes());
        let put_ref = |out: &mut Vec<u8>, at: ValueRef| {
            out.extend_from_slice(&at.pos.to_le_bytes());
            out.extend_from_slice(&at.off.to_le_bytes());
            out.extend_from_slice(&at.len.to_le_bytes());
        };
        for (id, meta) in &self.workflows {
            out.push(u8::try_from(id.len()).expect("short id"));
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(&meta.kind.to_le_bytes());
            out.push(u8::from(meta.finished));
            out.extend_from_slice(&meta.created_ms.to_le_bytes());
            out.extend_from_slice(&meta.finished_ms.to_le_bytes());
            put_ref(&mut out, meta.input);
            put_ref(&mut out, meta.output);
            out.extend_from_slice(&(meta.journal.len() as u32).to_le_bytes());
            for entry in &meta.journal {
                out.extend_from_slice(&entry.name.to_le_bytes());
                put_ref(&mut out, entry.value);
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> HashMap<Box<str>, WorkflowMeta> {
        let mut rest = bytes;
        let mut take = |n: usize| {
            let (slice, tail) = rest.split_at(n);
            rest = tail;
            slice
        };
        let u32_of = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4"));
        let u64_of = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8"));
        let count = u32_of(take(4));
        let mut workflows = HashMap::with_capacity(count as usize);
        for _ in 0..count {
            let id_len = take(1)[0] as usize;
            let id: Box<str> = std::str::from_utf8(take(id_len)).expect("id").into();
            let kind = u32_of(take(4));
            let finished = take(1)[0] == 1;
            let created_ms = u64_of(take(8));
            let finished_ms = u64_of(take(8));
            let mut read_ref = || ValueRef {
                pos: u64_of(take(8)),
                off: u32_of(take(4)),
                len: u32_of(take(4)),
            };
            let input = read_ref();
            let output = read_ref();
            let entries = u32_of(take(4));
            let journal = (0..entries)
                .map(|_| EntryMeta {
                    name: u32_of(take(4)),
                    value: ValueRef {
                        pos: u64_of(take(8)),
                        off: u32_of(take(4)),
                        len: u32_of(take(4)),
                    },
                })
                .collect();
            workflows.insert(
                id,
                WorkflowMeta {
                    kind,
                    finished,
                    created_ms,
                    finished_ms,
                    input,
                    output,
                    journal,
                },
            );
        }
        workflows
    }
}

impl Design for InPlace {
    fn apply(&mut self, _log: &RaftLog, index: u64, command: &[u8]) {
        let (kind, seq, id, value) = parse(command);
        let at = ValueRef {
            pos: index,
            off: HEADER_BYTES as u32,
            len: value.len() as u32,
        };
        match kind {
            Kind::Start => {
                self.workflows.insert(
                    id.into(),
                    WorkflowMeta {
                        kind: 0,
                        finished: false,
                        created_ms: index,
                        finished_ms: 0,
                        input: at,
                        output: ValueRef::default(),
                        journal: Vec::new(),
                    },
                );
            }
            Kind::Step => {
                let meta = self.workflows.get_mut(id).expect("started");
                meta.journal.push(EntryMeta {
                    name: seq,
                    value: at,
                });
            }
            Kind::Finish => {
                let meta = self.workflows.get_mut(id).expect("started");
                meta.finished = true;
                meta.finished_ms = index;
                meta.output = at;
                meta.journal.shrink_to_fit();
            }
        }
    }

    fn end_batch(&mut self) {}

    fn read(&self, log: &RaftLog, id: &str) -> usize {
        let meta = &self.workflows[id];
        let mut total = self.value(log, meta.input).len() + self.value(log, meta.output).len();
        for entry in &meta.journal {
            total += self.value(log, entry.value).len();
        }
        total
    }

    fn snapshot(&mut self, log: &RaftLog, dir: &Path, _last: u64) -> Duration {
        // The metadata is serialized under the state lock (a persistent map would make this
        // a pointer copy, at a cost on every apply); the log's bytes the snapshot points
        // at are synced whatever the sync policy.
        let blocked = Instant::now();
        let bytes = self.encode();
        let blocked = blocked.elapsed();
        self.persist(log, dir, &bytes);
        blocked
    }

    fn transfer(&self, log: &RaftLog, out: &Path) -> u64 {
        let mut file = BufWriter::new(File::create(out).expect("transfer file"));
        file.write_all(&self.encode()).expect("write");
        for meta in self.workflows.values() {
            for at in std::iter::once(meta.input)
                .chain(meta.journal.iter().map(|e| e.value))
                .chain(std::iter::once(meta.output))
            {
                file.write_all(&self.value(log, at)).expect("write");
            }
        }
        file.flush().expect("flush");
        file.get_ref().metadata().expect("stat").len()
    }

    fn expire(&mut self, ids: &[String]) {
        for id in ids {
            self.workflows.remove(id.as_str());
        }
    }

    fn reclaim(&mut self, log: &RaftLog, mark: u64) -> u64 {
        let mut copied = 0;
        let mut moved: Vec<(ValueRef, ValueRef)> = Vec::new();
        let mut pending = Vec::new();
        for meta in self.workflows.values() {
            for at in std::iter::once(meta.input)
                .chain(meta.journal.iter().map(|e| e.value))
                .chain(std::iter::once(meta.output))
            {
                if at.off != IN_VALUE_FILE && at.pos <= mark {
                    let record = log.get(at.pos).expect("read").expect("live");
                    let start = at.off as usize;
                    pending.extend_from_slice(&record.as_slice()[start..start + at.len as usize]);
                    let to = ValueRef {
                        pos: self.values_len + copied,
                        off: IN_VALUE_FILE,
                        len: at.len,
                    };
                    copied += u64::from(at.len);
                    moved.push((at, to));
                    if pending.len() >= 1 << 20 {
                        self.values.write_all(&pending).expect("append values");
                        pending.clear();
                    }
                }
            }
        }
        self.values.write_all(&pending).expect("append values");
        self.values.sync_data().expect("sync values");
        self.values_len += copied;
        let relocation: HashMap<(u64, u32), ValueRef> = moved
            .into_iter()
            .map(|(from, to)| ((from.pos, from.off), to))
            .collect();
        let relocate = |at: &mut ValueRef| {
            if let Some(to) = relocation.get(&(at.pos, at.off))
                && at.off != IN_VALUE_FILE
            {
                *at = *to;
            }
        };
        for meta in self.workflows.values_mut() {
            relocate(&mut meta.input);
            relocate(&mut meta.output);
            for entry in &mut meta.journal {
                relocate(&mut entry.value);
            }
        }
        // The relocated references are durable before the log range they pointed into goes.
        self.persist(log, &self.dir, &self.encode());
        log.purge_upto(LogId::new(1, mark)).expect("purge");
        copied
    }

    fn restart(&mut self, dir: &Path) {
        let mut bytes = Vec::new();
        File::open(dir.join("snapshot"))
            .expect("snapshot")
            .read_to_end(&mut bytes)
            .expect("read snapshot");
        let reopened = Self::open(&self.dir);
        *self = Self {
            workflows: Self::decode(&bytes),
            ..reopened
        };
    }
}

// ---------------------------------------------------------------- an embedded store (redb)

const WORKFLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("workflows");
const VALUES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("values");
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiry");
const RUNNING: TableDefinition<&str, ()> = TableDefinition::new("running");
const APPLIED: TableDefinition<&str, u64> = TableDefinition::new("applied");

/// A running workflow's metadata, as the store design keeps it in memory.
struct Running {
    created_ms: u64,
    journal: Vec<u32>,
}

struct Store {
    db: Option<Database>,
    path: PathBuf,
    running: HashMap<Box<str>, Running>,
    batch: Vec<(u64, Vec<u8>)>,
}

fn open_store(path: &Path) -> Database {
    Database::builder()
        .set_cache_size(STORE_CACHE_BYTES)
        .create(path)
        .expect("open the store")
}

impl Store {
    fn db(&self) -> &Database {
        self.db.as_ref().expect("open")
    }

    fn meta_bytes(running: &Running, finished: bool) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(24 + 4 * running.journal.len());
        bytes.push(u8::from(finished));
        bytes.extend_from_slice(&running.created_ms.to_le_bytes());
        for name in &running.journal {
            bytes.extend_from_slice(&name.to_le_bytes());
        }
        bytes
    }
}

impl Design for Store {
    fn apply(&mut self, _log: &RaftLog, index: u64, command: &[u8]) {
        self.batch.push((index, command.to_vec()));
    }

    fn end_batch(&mut self) {
        let mut tx = self.db().begin_write().expect("begin");
        tx.set_durability(Durability::None).expect("durability");
        {
            let mut workflows = tx.open_table(WORKFLOWS).expect("table");
            let mut values = tx.open_table(VALUES).expect("table");
            let mut expiry = tx.open_table(EXPIRY).expect("table");
            let mut running = tx.open_table(RUNNING).expect("table");
            let mut applied = tx.open_table(APPLIED).expect("table");
            for (index, command) in self.batch.drain(..) {
                let (kind, seq, id, value) = parse(&command);
                match kind {
                    Kind::Start => {
                        let meta = Running {
                            created_ms: index,
                            journal: Vec::new(),
                        };
                        workflows
                            .insert(id, Self::meta_bytes(&meta, false).as_slice())
                            .expect("insert");
                        running.insert(id, ()).expect("insert");
                        self.running.insert(id.into(), meta);
                        values.insert((id, 0), value).expect("insert");
                    }
                    Kind::Step => {
                        let meta = self.running.get_mut(id).expect("running");
                        meta.journal.push(seq);
                        workflows
                            .insert(id, Self::meta_bytes(meta, false).as_slice())
                            .expect("insert");
                        values.insert((id, seq), value).expect("insert");
                    }
                    Kind::Finish => {
                        let meta = self.running.remove(id).expect("running");
                        workflows
                            .insert(id, Self::meta_bytes(&meta, true).as_slice())
                            .expect("insert");
                        running.remove(id).expect("remove");
                        expiry.insert((index, id), ()).expect("insert");
                        values.insert((id, OUTPUT_SEQ), value).expect("insert");
                    }
                }
                applied.insert("applied", index).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }

    fn read(&self, _log: &RaftLog, id: &str) -> usize {
        let tx = self.db().begin_read().expect("read");
        let values = tx.open_table(VALUES).expect("table");
        values
            .range((id, 0)..=(id, OUTPUT_SEQ))
            .expect("range")
            .map(|item| item.expect("value").1.value().len())
            .sum()
    }

    fn snapshot(&mut self, _log: &RaftLog, _dir: &Path, last: u64) -> Duration {
        // A synced commit makes everything applied so far durable; a read transaction
        // taken after it is the snapshot's consistent view, held while it is sent.
        let blocked = Instant::now();
        let mut tx = self.db().begin_write().expect("begin");
        tx.set_durability(Durability::Immediate)
            .expect("durability");
        tx.open_table(APPLIED)
            .expect("table")
            .insert("snapshot", last)
            .expect("insert");
        tx.commit().expect("commit");
        blocked.elapsed()
    }

    fn transfer(&self, _log: &RaftLog, out: &Path) -> u64 {
        let mut file = BufWriter::new(File::create(out).expect("transfer file"));
        let tx = self.db().begin_read().expect("read");
        let workflows = tx.open_table(WORKFLOWS).expect("table");
        for item in workflows.iter().expect("iter") {
            let (key, value) = item.expect("row");
            file.write_all(key.value().as_bytes()).expect("write");
            file.write_all(value.value()).expect("write");
        }
        let values = tx.open_table(VALUES).expect("table");
        for item in values.iter().expect("iter") {
            let (key, value) = item.expect("row");
            file.write_all(key.value().0.as_bytes()).expect("write");
            file.write_all(value.value()).expect("write");
        }
        file.flush().expect("flush");
        file.get_ref().metadata().expect("stat").len()
    }

    fn expire(&mut self, ids: &[String]) {
        let tx = self.db().begin_write().expect("begin");
        {
            let mut workflows = tx.open_table(WORKFLOWS).expect("table");
            let mut values = tx.open_table(VALUES).expect("table");
            for id in ids {
                workflows.remove(id.as_str()).expect("remove");
                values
                    .retain_in((id.as_str(), 0)..=(id.as_str(), OUTPUT_SEQ), |_, _| false)
                    .expect("remove values");
            }
        }
        tx.commit().expect("commit");
    }

    fn reclaim(&mut self, log: &RaftLog, mark: u64) -> u64 {
        log.purge_upto(LogId::new(1, mark)).expect("purge");
        0
    }

    fn restart(&mut self, _dir: &Path) {
        self.db = None;
        let db = open_store(&self.path);
        let tx = db.begin_read().expect("read");
        let applied = tx
            .open_table(APPLIED)
            .expect("table")
            .get("applied")
            .expect("get")
            .map(|v| v.value());
        assert!(applied.is_some(), "the store knows where it stands");
        let running = tx.open_table(RUNNING).expect("table");
        assert!(running.first().expect("first").is_none(), "nothing runs");
        drop(running);
        drop(tx);
        self.db = Some(db);
    }
}

// ---------------------------------------------------------------- the run

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("a field of /proc/self/status")
}

fn sync_dir_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            File::open(&path)
                .expect("open")
                .sync_data()
                .expect("fdatasync");
        }
    }
}

/// Bytes the files under `dir` occupy on disk.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|entry| {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                disk_bytes(&path)
            } else {
                path.metadata().expect("stat").blocks() * 512
            }
        })
        .sum()
}

/// Appends workflows `first..first + count` to the log and applies them; returns the time
/// spent applying and the last index.
fn run_load(design: &mut dyn Design, log: &RaftLog, first: u64, count: u64) -> (Duration, u64) {
    let mut applying = Duration::ZERO;
    let mut last = 0;
    let mut commands = load(first, count).peekable();
    while commands.peek().is_some() {
        let batch: Vec<Encoded<Vec<u8>>> = commands
            .by_ref()
            .take(APPLY_BATCH)
            .map(|c| Encoded::new(&c).expect("encode"))
            .collect();
        let refs: Vec<&Encoded<Vec<u8>>> = batch.iter().collect();
        let appended = log.append_next(1, &refs).expect("append");
        last = appended.last.expect("a batch").index;
        let first_index = last + 1 - batch.len() as u64;
        let started = Instant::now();
        for (offset, encoded) in batch.iter().enumerate() {
            design.apply(
                log,
                first_index + offset as u64,
                encoded.archived().as_slice(),
            );
        }
        design.end_batch();
        applying += started.elapsed();
    }
    (applying, last)
}

fn report(metric: &str, value: impl std::fmt::Display) {
    println!("| {metric} | {value} |");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "store".to_owned());
    let workflows: u64 = args
        .next()
        .map_or(10_000, |n| n.parse().expect("a workflow count"));
    let dir = tempfile::tempdir_in(std::env::var("STATE_DESIGNS_DIR").unwrap_or(".".into()))
        .expect("tempdir");
    let log_options = Options {
        sync: SyncPolicy::Relaxed,
        ..Options::default()
    };
    let log = RaftLog::open(dir.path().join("log"), log_options.clone()).expect("log");
    let mut design: Box<dyn Design> = match which.as_str() {
        "in-place" => Box::new(InPlace::open(dir.path())),
        "store" => {
            let path = dir.path().join("state.redb");
            Box::new(Store {
                db: Some(open_store(&path)),
                path,
                running: HashMap::new(),
                batch: Vec::new(),
            })
        }
        other => panic!("unknown design {other:?}: in-place or store"),
    };
    println!("| {which}, {workflows} workflows | |\n|---|---|");
    let last = measure_retained(design.as_mut(), &log, dir.path(), workflows);
    drop(log);
    measure_reclaim(design.as_mut(), dir.path(), &log_options, workflows, last);
}

/// Loads `workflows`, then reports memory, snapshot, reads and the full copy; returns the
/// last index.
fn measure_retained(design: &mut dyn Design, log: &RaftLog, dir: &Path, workflows: u64) -> u64 {
    let anon_before = status_kib("RssAnon:");
    let started = Instant::now();
    let (applying, last) = run_load(design, log, 0, workflows);
    let loaded = started.elapsed();
    let commands = workflows * u64::from(STEPS + 2);
    report(
        "load: wall time (log append + apply)",
        format!("{loaded:.2?}"),
    );
    report(
        "apply only: commands/s",
        format!("{:.0}", commands as f64 / applying.as_secs_f64()),
    );
    let blocked = design.snapshot(log, dir, last);
    let anon_after = status_kib("RssAnon:");
    report(
        "RssAnon per retained workflow",
        format!(
            "{} B",
            (anon_after.saturating_sub(anon_before)) * 1024 / workflows
        ),
    );
    report(
        "RssFile after load",
        format!("{} MiB", status_kib("RssFile:") / 1024),
    );
    report("snapshot: apply blocked", format!("{blocked:.2?}"));
    let started = Instant::now();
    let mut total = 0;
    for n in 0..READS {
        total += design.read(log, &workflow_id(n * 7919 % workflows));
    }
    assert_eq!(
        total,
        READS as usize * (INPUT_BYTES + STEPS as usize * RESULT_BYTES + OUTPUT_BYTES)
    );
    report(
        "read a whole workflow (12 values), warm",
        format!("{:.1?}", started.elapsed() / READS as u32),
    );
    let started = Instant::now();
    let sent = design.transfer(log, &dir.join("transfer"));
    report(
        "full copy for a wiped follower",
        format!("{} MiB in {:.2?}", sent >> 20, started.elapsed()),
    );
    std::fs::remove_file(dir.join("transfer")).expect("remove transfer");
    last
}

/// Purges behind the snapshot, restarts, expires the oldest half, loads half as many again
/// and purges again, reporting disk use and times.
fn measure_reclaim(
    design: &mut dyn Design,
    dir: &Path,
    log_options: &Options,
    workflows: u64,
    last: u64,
) {
    let log = RaftLog::open(dir.join("log"), log_options.clone()).expect("reopen log");
    let mark = last.saturating_sub(KEEP_BEHIND);
    let started = Instant::now();
    let copied = design.reclaim(&log, mark);
    report(
        "purge behind the snapshot: copied, time",
        format!("{} MiB, {:.2?}", copied >> 20, started.elapsed()),
    );
    report("disk after purge", format!("{} MiB", disk_bytes(dir) >> 20));
    drop(log);
    let started = Instant::now();
    let log = RaftLog::open(dir.join("log"), log_options.clone()).expect("reopen log");
    design.restart(dir);
    report(
        "restart (reopen + load state)",
        format!("{:.2?}", started.elapsed()),
    );
    let expired: Vec<String> = (0..workflows / 2).map(workflow_id).collect();
    let started = Instant::now();
    design.expire(&expired);
    report("expire half", format!("{:.2?}", started.elapsed()));
    let (_, last) = run_load(design, &log, workflows, workflows / 2);
    design.snapshot(&log, dir, last);
    let started = Instant::now();
    let copied = design.reclaim(&log, last.saturating_sub(KEEP_BEHIND));
    report(
        "after loading half as many again: purge copied, time",
        format!("{} MiB, {:.2?}", copied >> 20, started.elapsed()),
    );
    report(
        "disk after (same number retained)",
        format!("{} MiB", disk_bytes(dir) >> 20),
    );
}
