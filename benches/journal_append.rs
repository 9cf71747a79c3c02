//! Journal append latency under `sync = always`, next to the disk's own
//! fdatasync latency measured in the same run (DESIGN.md §8: a durable append
//! may add at most the disk's fdatasync p99 + 0.5 ms).
//!
//! `cargo bench --bench journal_append` (set `JOURNAL_BENCH_DIR` to measure
//! another disk than the temp dir's; `JOURNAL_BENCH_APPENDS` for the number
//! of appends per scenario).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use handover::journal::{Cipher, Commit, Config, Journal, Observer};

#[derive(Default)]
struct Counts {
    commits: AtomicUsize,
    records: AtomicUsize,
}

impl Observer for Counts {
    fn on_commit(&self, commit: &Commit) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(commit.records, Ordering::Relaxed);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(name: &str, mut samples: Vec<Duration>, elapsed: Duration, extra: &str) -> String {
    samples.sort_unstable();
    format!(
        "{name:<28} n={:<6} p50={:>7.3} ms  p99={:>7.3} ms  max={:>7.3} ms  {:>8.0}/s  {extra}",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        samples.len() as f64 / elapsed.as_secs_f64(),
    )
}

fn fdatasync_baseline(dir: &std::path::Path, n: usize) -> String {
    let path = dir.join("fdatasync-baseline");
    let mut file = std::fs::File::create(&path).expect("create baseline file");
    let record = [0x5au8; 128];
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        file.write_all(&record).expect("write baseline");
        file.sync_data().expect("fdatasync baseline");
        samples.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    summary("raw write+fdatasync", samples, elapsed, "")
}

fn journal_run(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    appenders: usize,
    total: usize,
) -> String {
    let counts = Arc::new(Counts::default());
    let sub = dir.join(format!("journal-{appenders}"));
    let (journal, _) =
        Journal::open_with_observer(Config::new(&sub), Cipher::new([1; 32]), counts.clone())
            .expect("open journal");
    let per_task = total / appenders;
    let started = Instant::now();
    let samples = rt.block_on(async {
        let tasks: Vec<_> = (0..appenders)
            .map(|task| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(per_task);
                    for i in 0..per_task {
                        // A realistic body: a key plus a little payload.
                        let body =
                            format!("authz:subject-{task}|client-{i:08}-{i:0>64}").into_bytes();
                        let t = Instant::now();
                        let seq = journal.append(body).await.expect("append");
                        samples.push(t.elapsed());
                        journal.ack(seq);
                    }
                    samples
                })
            })
            .collect();
        let mut all = Vec::with_capacity(total);
        for task in tasks {
            all.extend(task.await.expect("appender task"));
        }
        all
    });
    let elapsed = started.elapsed();
    rt.block_on(journal.close()).expect("close journal");
    let commits = counts.commits.load(Ordering::Relaxed);
    let records = counts.records.load(Ordering::Relaxed);
    summary(
        &format!("journal append x{appenders}"),
        samples,
        elapsed,
        &format!(
            "fsyncs={commits} ({:.1} records/fsync)",
            records as f64 / commits.max(1) as f64
        ),
    )
}

fn main() {
    let base = std::env::var_os("JOURNAL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let n: usize = std::env::var("JOURNAL_BENCH_APPENDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "journal append, sync = always, dir {}", base.display());
    let _ = writeln!(out, "{}", fdatasync_baseline(dir.path(), n));
    let _ = writeln!(out, "{}", journal_run(&rt, dir.path(), 1, n));
    let _ = writeln!(out, "{}", journal_run(&rt, dir.path(), 32, n * 4));
    let _ = writeln!(out, "{}", fdatasync_baseline(dir.path(), n));
}
