//! The operator commands (`handover status`, `backfill`, `verify`,
//! `dead-letters`): thin clients of the admin API that render for a human
//! (tables, a live view on a terminal, plain lines otherwise) or print JSON
//! for scripts (`--json`).

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use crate::api::{AdminClient, Error, FlipReport, FlipRequest, Status, VerifyReport};
use crate::model::Dataset;

/// Which flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    /// Source → target.
    Cutover,
    /// Target → source.
    Rollback,
}

/// Drives a flip through one instance's admin API. In a fleet, any
/// instance coordinates every other through the shared store.
pub async fn flip(
    client: &AdminClient,
    flip: Flip,
    request: &FlipRequest,
) -> Result<FlipReport, Error> {
    let path = match flip {
        Flip::Cutover => "/cutover",
        Flip::Rollback => "/rollback",
    };
    client.flip(path, request).await
}

/// Renders a flip report, step by step.
pub fn render_flip(admin: &str, report: &FlipReport) -> String {
    let mut out = format!(
        "{admin}: {} · phase {} · epoch {} · primary {}\n",
        report.outcome.as_str().to_uppercase(),
        report.phase,
        report.epoch,
        report.primary
    );
    if !report.preflight.is_empty() {
        out.push_str("  pre-flight:\n");
        for check in &report.preflight {
            let mark = if check.ok && check.warning {
                "warn"
            } else if check.ok {
                "ok  "
            } else if check.forceable {
                "WARN"
            } else {
                "FAIL"
            };
            out.push_str(&format!("    [{mark}] {}: {}\n", check.check, check.detail));
        }
    }
    if !report.steps.is_empty() {
        out.push_str("  steps:\n");
        for step in &report.steps {
            let mark = if step.ok { "ok  " } else { "FAIL" };
            out.push_str(&format!("    {:>6} ms [{mark}] {}", step.at_ms, step.step));
            if !step.detail.is_empty() {
                out.push_str(&format!(": {}", step.detail));
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "  write pause {} ms · held {} · released {} · refused (buffer full) {}\n",
            report.pause_ms, report.held, report.released, report.rejected
        ));
    }
    if let Some(reason) = &report.reason {
        out.push_str(&format!("  reason: {reason}\n"));
    }
    out
}

/// Renders `/status` for a human: a headline and one bar per dataset.
pub fn render_status(status: &Status) -> String {
    let mut out = String::new();
    let journal = &status.journal;
    out.push_str(&format!(
        "phase {} · epoch {} · primary {} · {} · journal depth {} · lag {} ms · dead letters {}\n",
        status.phase,
        status.epoch,
        status.primary,
        if status.ready { "ready" } else { "NOT READY" },
        journal.depth,
        journal.lag_ms,
        journal.dead_letters,
    ));
    out.push_str(&sync_headline(&status.sync));
    out.push('\n');
    let backfill = &status.backfill;
    let limit = if backfill.rate_limit == 0 {
        "unlimited".to_owned()
    } else {
        format!("{}/s", backfill.rate_limit)
    };
    // A fleet: the instance that runs it (pause, resume and settings go
    // to its admin API).
    let runner = backfill.runner.as_ref().map_or_else(String::new, |runner| {
        format!(" on {} ({})", runner.instance, runner.admin_url)
    });
    out.push_str(&format!(
        "backfill {}{runner} (rate {limit}, concurrency {})\n",
        backfill.state, backfill.concurrency
    ));
    for (dataset, progress) in &backfill.datasets {
        let done = progress.settled();
        let fraction = if progress.total == 0 && backfill.state == crate::api::BackfillState::Done {
            1.0
        } else {
            progress.fraction()
        };
        let filled = (fraction * 24.0).round() as usize;
        let bar: String = "█".repeat(filled) + &"░".repeat(24 - filled);
        let mut line = format!(
            "  {dataset:<15} [{bar}] {:>5.1}%  {done}/{}  copied {} · live-owned {} · failed {}",
            fraction * 100.0,
            progress.total,
            progress.copied,
            progress.skipped,
            progress.failed
        );
        if progress.rate > 0.0 {
            line.push_str(&format!(
                " · {:.0}/s · ETA {}s",
                progress.rate, progress.eta_s
            ));
        }
        if progress.unconfirmed > 0 {
            line.push_str(&format!(
                " · {} exported values unconfirmed",
                progress.unconfirmed
            ));
        }
        if !progress.not_copied.is_empty() {
            let reasons: Vec<String> = progress
                .not_copied
                .iter()
                .map(|(reason, count)| format!("{reason} {count}"))
                .collect();
            line.push_str(&format!(" · not copied: {}", reasons.join(", ")));
        }
        if let Some(error) = &progress.error {
            line.push_str(&format!(" · error: {error}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    for warning in &status.warnings {
        out.push_str(&format!("WARNING: {warning}\n"));
    }
    if let Some(parity) = &status.key_parity {
        let keys: Vec<String> = parity
            .keys
            .iter()
            .map(|probe| {
                format!(
                    "{} {}/{} equal{}",
                    probe.key,
                    probe.equal,
                    probe.probed,
                    if probe.differ > 0 {
                        format!(", {} DIFFER", probe.differ)
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        out.push_str(&format!(
            "secret keys {} ({})\n",
            if parity.ok { "proven equal" } else { "DIFFER" },
            keys.join(" · ")
        ));
    }
    if let Some(fallback) = &status.fallback {
        out.push_str(&render_fallback(fallback));
    }
    if let Some(fleet) = &status.fleet {
        let live = fleet.instances.iter().filter(|m| m.live).count();
        out.push_str(&format!(
            "fleet: {live} live of {} registered\n",
            fleet.instances.len()
        ));
        for member in &fleet.instances {
            out.push_str(&format!(
                "  {}{} {} v{} phase {} lease renewed {} ms ago{}\n",
                member.instance,
                if member.instance == fleet.this {
                    " (this)"
                } else {
                    ""
                },
                member.admin_url,
                member.version,
                member.phase,
                member.lease_age_ms,
                if member.live { "" } else { " · EXPIRED" }
            ));
        }
    }
    out
}

/// The sync's line of `handover status`: what limits it (the adaptive
/// concurrency, a `Retry-After`) and how the secondary answers.
fn sync_headline(sync: &crate::api::SyncStatus) -> String {
    let mut line = format!(
        "sync {:.0}/s · concurrency {} of max {} · in flight {} · waiting {} · {} latency p50 {:.0} ms p99 {:.0} ms",
        sync.rate,
        sync.concurrency_limit,
        sync.max_concurrency,
        sync.in_flight,
        sync.waiting,
        sync.secondary,
        sync.latency_ms.p50,
        sync.latency_ms.p99,
    );
    if sync.min_latency_ms > 0.0 {
        line.push_str(&format!(" (min {:.0} ms)", sync.min_latency_ms));
    }
    if sync.throttled_ms > 0 {
        line.push_str(&format!(
            " · THROTTLED by {} for {:.1} s (Retry-After)",
            sync.secondary,
            sync.throttled_ms as f64 / 1000.0
        ));
    }
    if sync.overloaded > 0 {
        line.push_str(&format!(" · {} answers 429/503", sync.overloaded));
    }
    line
}

/// The fallback line of the status: how often the previous primary was
/// asked and for how long it still is.
fn render_fallback(fallback: &crate::api::FallbackStatus) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let left = |until: u64| {
        let seconds = until.saturating_sub(now) / 1000;
        if seconds == 0 {
            "closed".to_owned()
        } else if seconds >= 86_400 {
            format!(
                "open {}d {}h more",
                seconds / 86_400,
                seconds % 86_400 / 3_600
            )
        } else {
            format!("open {seconds}s more")
        }
    };
    let used: Vec<String> = fallback
        .used
        .iter()
        .map(|(dataset, count)| format!("{dataset} {count}"))
        .collect();
    let mut line = format!(
        "fallback to {}: used {} · in-flight state {}",
        fallback.previous,
        if used.is_empty() {
            "never".to_owned()
        } else {
            used.join(" · ")
        },
        left(fallback.open_until_ms)
    );
    if let Some(until) = fallback.refresh_open_until_ms {
        line.push_str(&format!(" · refreshes {}", left(until)));
    }
    line.push('\n');
    line
}

/// One line of `/status`, for logs and pipes.
pub(crate) fn status_line(status: &Status) -> String {
    let datasets: Vec<String> = status
        .backfill
        .datasets
        .iter()
        .map(|(dataset, p)| format!("{dataset}={:.1}%", 100.0 * p.fraction()))
        .collect();
    let sync = &status.sync;
    let mut line = format!(
        "phase={} epoch={} primary={} ready={} depth={} lag_ms={} dead_letters={} sync_rate={:.0} concurrency={} in_flight={} waiting={} latency_p50_ms={:.0} latency_p99_ms={:.0} throttled_ms={} backfill={} {}",
        status.phase,
        status.epoch,
        status.primary,
        status.ready,
        status.journal.depth,
        status.journal.lag_ms,
        status.journal.dead_letters,
        sync.rate,
        sync.concurrency_limit,
        sync.in_flight,
        sync.waiting,
        sync.latency_ms.p50,
        sync.latency_ms.p99,
        sync.throttled_ms,
        status.backfill.state,
        datasets.join(" ")
    );
    if status.journal.untracked > 0 {
        line.push_str(&format!(" untracked={}", status.journal.untracked));
    }
    if let Some(fallback) = &status.fallback {
        let used: u64 = fallback.used.values().sum();
        line.push_str(&format!(" fallbacks={used}"));
        if let Some(tokens) = fallback.used.get(&Dataset::Tokens) {
            line.push_str(&format!(" fallbacks_tokens={tokens}"));
        }
    }
    line
}

/// Renders a verify report as a table.
pub fn render_report(report: &VerifyReport) -> String {
    let mut out = format!(
        "{:<16}{:>10}{:>10}{:>10}{:>12}{:>10}{:>8}{:>11}\n",
        "dataset",
        "primary",
        "secondary",
        "matching",
        "mismatched",
        "missing",
        "extra",
        "in_flight"
    );
    for (dataset, d) in &report.datasets {
        out.push_str(&format!(
            "{dataset:<16}{:>10}{:>10}{:>10}{:>12}{:>10}{:>8}{:>11}\n",
            d.primary,
            d.secondary,
            d.matching,
            d.mismatched,
            d.missing_on_target,
            d.extra_on_target,
            d.in_flight
        ));
    }
    for (dataset, d) in &report.datasets {
        if !d.drifted_keys.is_empty() {
            out.push_str(&format!(
                "drifted {dataset}: {}\n",
                d.drifted_keys.join(", ")
            ));
        }
        if d.repaired > 0 {
            out.push_str(&format!(
                "repair journaled for {} {dataset} keys\n",
                d.repaired
            ));
        }
    }
    for (dataset, d) in &report.datasets {
        if let Some(samples) = &d.samples {
            out.push_str(&format!(
                "{dataset}: refresh tokens seen in live traffic {} · exported values (unconfirmed) {}\n",
                samples.live, samples.exported
            ));
        }
    }
    for reason in &report.not_measured {
        out.push_str(&format!("not measured: {reason}\n"));
    }
    out.push_str(&format!(
        "drift {} (primary: {})\n",
        report.drift, report.primary
    ));
    out
}

/// The report of `handover journal check`: one headline per log (journal,
/// dead letters, registrations), one line per damaged place, and what to do.
pub fn render_journal_check(report: &crate::journal::Report, config: &str) -> String {
    let mut out = String::new();
    for log in &report.logs {
        out.push_str(&format!(
            "{} {}: {} segments · cursor {} · {} readable records, {} pending · {}\n",
            log.name,
            log.dir.display(),
            log.segments,
            log.cursor
                .map_or_else(|| "none".to_owned(), |cursor| cursor.to_string()),
            log.readable,
            log.pending,
            if log.clean() { "clean" } else { "DAMAGED" }
        ));
        if let Some(problem) = &log.cursor_problem {
            out.push_str(&format!("  cursor file: {problem}\n"));
        }
        if log.wrong_key {
            out.push_str(
                "  no pending record decrypts although their checksums are good: wrong journal.payload_key?\n",
            );
        }
        for damage in &log.damage {
            let file = damage.segment.file_name().map_or_else(
                || damage.segment.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            );
            out.push_str(&format!(
                "  {file} at byte {}: {} ({} bytes, {} records, {} pending): {}\n",
                damage.offset,
                damage.kind.as_str(),
                damage.bytes,
                damage.records,
                damage.pending,
                damage.reason
            ));
        }
    }
    if report.clean() {
        out.push_str("the journal is clean\n");
    } else {
        out.push_str(&format!(
            "damage found: with the proxy stopped, run `handover journal salvage -c {config}` (it keeps every readable record and moves the damaged segments to quarantine/)\n"
        ));
    }
    out
}

/// The report of `handover journal salvage`: what moved where, what was
/// kept and lost, and what `handover verify --repair` will fix.
pub fn render_salvage(salvaged: &crate::journal::Salvaged) -> String {
    let Some(quarantine) = &salvaged.quarantine else {
        return "the journal is clean: nothing to salvage\n".to_owned();
    };
    let mut out = format!(
        "salvaged; the original files are in {}\n",
        quarantine.display()
    );
    let name = |path: &std::path::Path| {
        path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    let mut lost_changes = 0;
    for log in &salvaged.logs {
        let moved: Vec<String> = log.quarantined.iter().map(|p| name(p)).collect();
        out.push_str(&format!(
            "  {}: quarantined {} · kept {} pending records{} · lost {} · cursor {} -> {}\n",
            log.name,
            if moved.is_empty() {
                "the cursor file".to_owned()
            } else {
                moved.join(", ")
            },
            log.kept,
            log.written
                .as_ref()
                .map_or_else(String::new, |path| format!(" in {}", name(path))),
            log.lost,
            log.cursor.0,
            log.cursor.1
        ));
        if log.name == "journal" {
            lost_changes += log.lost;
        } else if log.lost > 0 {
            out.push_str(&format!(
                "  {} {} entries could not be read.\n",
                log.lost, log.name
            ));
        }
    }
    if salvaged.logs.iter().any(|log| log.lost > 0) {
        out.push_str(&format!(
            "{lost_changes} pending changes could not be read and are no longer in the journal: the new server may miss what they changed. \
Start handover and run `handover verify --repair`: it compares every synced dataset on both servers and journals a sync of each key that differs \
(lost registrations, updates, deletions, authorizations, sessions and revocations that removed records all show up as drift). \
It cannot see a lost change that leaves no difference it compares (verify lists those datasets as \"not measured\").\n"
        ));
    } else {
        out.push_str("no pending change was lost; nothing for `handover verify --repair` to fix beyond the usual\n");
    }
    out
}

/// Prints `/status` once, or every second with `watch` (redrawn in place on
/// a terminal, one line per second otherwise).
pub async fn watch_status(client: &AdminClient, watch: bool, json: bool) -> Result<(), Error> {
    let terminal = std::io::stdout().is_terminal();
    loop {
        let status = client.status().await?;
        let mut out = std::io::stdout().lock();
        let text = if json {
            serde_json::to_string(&status).unwrap_or_default() + "\n"
        } else if watch && !terminal {
            status_line(&status) + "\n"
        } else {
            render_status(&status)
        };
        if watch && terminal && !json {
            // Clear the screen and redraw from the top.
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        drop(out);
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackfillStatus, DatasetProgress, JournalStatus};

    #[test]
    fn status_renders_bars_and_lines() {
        let mut datasets = std::collections::BTreeMap::new();
        datasets.insert(
            crate::model::Dataset::Clients,
            DatasetProgress {
                total: 100,
                copied: 40,
                skipped: 10,
                failed: 0,
                not_copied: Default::default(),
                unconfirmed: 0,
                rate: 250.0,
                eta_s: 1,
                error: None,
            },
        );
        let status = Status {
            phase: crate::model::Phase::Mirroring,
            epoch: 1,
            primary: crate::model::Side::Source,
            ready: true,
            journal: JournalStatus::default(),
            backfill: BackfillStatus {
                state: crate::api::BackfillState::Running,
                rate_limit: 0,
                concurrency: 32,
                elapsed_ms: 0,
                datasets,
                runner: Some(crate::api::BackfillRunner {
                    instance: "pid2-b".to_owned(),
                    admin_url: "http://10.0.0.2:9901".to_owned(),
                }),
            },
            warnings: vec!["2 changes could not be tracked since then".to_owned()],
            sync: crate::api::SyncStatus {
                secondary: crate::model::Side::Target,
                concurrency_limit: 120,
                max_concurrency: 1024,
                in_flight: 96,
                waiting: 0,
                latency_ms: crate::api::LatencyMs {
                    p50: 101.4,
                    p99: 140.2,
                    samples: 2048,
                },
                min_latency_ms: 100.2,
                throttled_ms: 2500,
                overloaded: 3,
                rate: 950.0,
            },
            key_parity: None,
            fallback: Some(crate::api::FallbackStatus {
                previous: crate::model::Side::Source,
                flipped_at_ms: 0,
                open_until_ms: 0,
                refresh_open_until_ms: Some(u64::MAX),
                used: [(Dataset::Tokens, 7)].into_iter().collect(),
            }),
            fleet: Some(crate::api::FleetStatus {
                this: "pid1-a".to_owned(),
                instances: vec![
                    crate::api::FleetMember {
                        instance: "pid1-a".to_owned(),
                        admin_url: "http://10.0.0.1:9901".to_owned(),
                        version: "0.1.0".to_owned(),
                        phase: "mirroring".to_owned(),
                        lease_age_ms: 120,
                        live: true,
                    },
                    crate::api::FleetMember {
                        instance: "pid2-b".to_owned(),
                        admin_url: "http://10.0.0.2:9901".to_owned(),
                        version: "0.1.0".to_owned(),
                        phase: "mirroring".to_owned(),
                        lease_age_ms: 45_000,
                        live: false,
                    },
                ],
            }),
        };
        let text = render_status(&status);
        assert!(text.contains("fleet: 1 live of 2 registered"), "{text}");
        assert!(
            text.contains("backfill running on pid2-b (http://10.0.0.2:9901) (rate unlimited"),
            "{text}"
        );
        assert!(
            text.contains("pid2-b http://10.0.0.2:9901 v0.1.0 phase mirroring lease renewed 45000 ms ago · EXPIRED"),
            "{text}"
        );
        assert!(
            text.contains(
                "sync 950/s · concurrency 120 of max 1024 · in flight 96 · waiting 0 · target latency p50 101 ms p99 140 ms (min 100 ms) · THROTTLED by target for 2.5 s (Retry-After) · 3 answers 429/503"
            ),
            "{text}"
        );
        assert!(
            text.contains("WARNING: 2 changes could not be tracked"),
            "{text}"
        );
        assert!(
            text.contains(
                "fallback to source: used tokens 7 · in-flight state closed · refreshes open "
            ),
            "{text}"
        );
        assert!(status_line(&status).contains("fallbacks_tokens=7"));
        assert!(text.contains("clients"), "{text}");
        assert!(text.contains(" 50.0%"), "{text}");
        assert!(text.contains("ETA 1s"), "{text}");
        assert!(status_line(&status).contains("clients=50.0%"));
    }
}
