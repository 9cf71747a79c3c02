//! The operator commands (`handover status`, `backfill`, `verify`,
//! `dead-letters`): thin clients of the admin API that render for a human
//! (tables, a live view on a terminal, plain lines otherwise) or print JSON
//! for scripts (`--json`).

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::admin::{DeadLetterView, Status, VerifyStatus};
use crate::cutover::procedure::{Report as FlipReport, Request as FlipRequest};
use crate::verify::Report;

/// The default admin API address.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The admin API could not be reached.
    #[error("cannot reach the admin API at {url}: {message}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The admin API refused the request.
    #[error("the admin API answered {status}: {message}")]
    Refused {
        /// The status.
        status: u16,
        /// The error description.
        message: String,
    },
    /// The answer was not what this version expects.
    #[error("unexpected answer from the admin API: {0}")]
    Unexpected(String),
}

/// A client of one proxy's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl AdminClient {
    /// A client of the admin API at `base` with the bearer `token`.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// The admin URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let (status, value, text) = self.call_raw(method, path, body).await?;
        if !status.is_success() {
            let message = value
                .get("error_description")
                .or_else(|| value.get("error"))
                .and_then(Value::as_str)
                .map_or_else(|| text.trim().to_owned(), str::to_owned);
            let hint = if status == StatusCode::UNAUTHORIZED {
                " (set HANDOVER_ADMIN_TOKEN)"
            } else {
                ""
            };
            return Err(Error::Refused {
                status: status.as_u16(),
                message: format!("{message}{hint}"),
            });
        }
        Ok(value)
    }

    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value, String), Error> {
        let url = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(value) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(value.to_string()))
            }
            None => Full::default(),
        };
        let request = builder.body(body).map_err(|err| Error::Unreachable {
            url: url.clone(),
            message: err.to_string(),
        })?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| Error::Unreachable {
                url: url.clone(),
                message: "no answer within 30s".to_owned(),
            })?
            .map_err(|err| Error::Unreachable {
                url: url.clone(),
                message: crate::error::chain(&err),
            })?;
        read_answer(&url, response).await
    }

    fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, Error> {
        serde_json::from_value(value).map_err(|err| Error::Unexpected(err.to_string()))
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<Status, Error> {
        Self::decode(self.call(Method::GET, "/status", None).await?)
    }

    /// `POST /backfill/{operation}` with optional settings.
    pub async fn backfill(
        &self,
        operation: &str,
        rate: Option<u64>,
        concurrency: Option<usize>,
    ) -> Result<Value, Error> {
        let mut body = serde_json::Map::new();
        if let Some(rate) = rate {
            body.insert("rate".to_owned(), rate.into());
        }
        if let Some(concurrency) = concurrency {
            body.insert("concurrency".to_owned(), concurrency.into());
        }
        let body = (!body.is_empty()).then_some(Value::Object(body));
        self.call(Method::POST, &format!("/backfill/{operation}"), body)
            .await
    }

    /// Starts a verify and waits for it, calling `progress` while it runs.
    pub async fn verify(
        &self,
        request: &crate::verify::Request,
        mut progress: impl FnMut(&VerifyStatus),
    ) -> Result<Report, Error> {
        let started = self
            .call(
                Method::POST,
                "/verify",
                Some(
                    serde_json::to_value(request)
                        .map_err(|err| Error::Unexpected(err.to_string()))?,
                ),
            )
            .await?;
        let id = started
            .get("id")
            .and_then(Value::as_u64)
            .unwrap_or_default();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let status: VerifyStatus =
                Self::decode(self.call(Method::GET, "/verify", None).await?)?;
            if status.id != id {
                return Err(Error::Unexpected(format!(
                    "verify {id} was replaced by verify {}",
                    status.id
                )));
            }
            match status.state.as_str() {
                "done" => {
                    return status.report.ok_or_else(|| {
                        Error::Unexpected("a finished verify without a report".to_owned())
                    });
                }
                "failed" => {
                    return Err(Error::Refused {
                        status: 500,
                        message: format!("verify failed: {}", status.error.unwrap_or_default()),
                    });
                }
                _ => progress(&status),
            }
        }
    }

    /// `POST` a flip endpoint (`/cutover`, `/rollback`, `/complete`,
    /// `/cutover/prepare`, `/cutover/commit`, `/cutover/abort`). Refusals
    /// and aborts come back as reports, not errors.
    pub async fn flip(&self, path: &str, request: &FlipRequest) -> Result<FlipReport, Error> {
        let body =
            serde_json::to_value(request).map_err(|err| Error::Unexpected(err.to_string()))?;
        let (status, value, text) = self.call_raw(Method::POST, path, Some(body)).await?;
        if status.is_success() || status == StatusCode::CONFLICT {
            return Self::decode(value);
        }
        let message = value
            .get("error_description")
            .and_then(Value::as_str)
            .map_or_else(|| text.trim().to_owned(), str::to_owned);
        Err(Error::Refused {
            status: status.as_u16(),
            message,
        })
    }

    /// Streams a tokens file to `POST /backfill/tokens`.
    pub async fn upload_tokens(
        &self,
        path: &std::path::Path,
    ) -> Result<crate::backfill::TokenImport, Error> {
        use tokio::io::AsyncReadExt as _;
        let url = format!("{}/backfill/tokens", self.base);
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|err| Error::Unexpected(format!("cannot read {}: {err}", path.display())))?;
        let (mut sender, body) = crate::http::channel_body(8);
        let feeder = tokio::spawn(async move {
            let mut buffer = vec![0u8; 256 << 10];
            loop {
                match file.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if sender
                            .send_data(Bytes::copy_from_slice(&buffer[..n]))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(err) => {
                        sender.abort(Box::new(err));
                        break;
                    }
                }
            }
        });
        let client: Client<HttpConnector, crate::http::Body> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut builder = Request::post(&url).header(header::CONTENT_TYPE, "application/x-ndjson");
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder
            .body(body)
            .map_err(|err| Error::Unexpected(err.to_string()))?;
        let response = client
            .request(request)
            .await
            .map_err(|err| Error::Unreachable {
                url: url.clone(),
                message: crate::error::chain(&err),
            })?;
        let (status, value, text) = read_answer(&url, response).await?;
        let _ = feeder.await;
        if !status.is_success() {
            let message = value
                .get("error_description")
                .and_then(Value::as_str)
                .map_or_else(|| text.trim().to_owned(), str::to_owned);
            return Err(Error::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Self::decode(value)
    }

    /// `GET /dead-letters`.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterView>, Error> {
        Self::decode(self.call(Method::GET, "/dead-letters", None).await?)
    }

    /// `POST /dead-letters/retry`.
    pub async fn retry_dead_letters(&self) -> Result<u64, Error> {
        let answer = self.call(Method::POST, "/dead-letters/retry", None).await?;
        Ok(answer
            .get("retried")
            .and_then(Value::as_u64)
            .unwrap_or_default())
    }
}

/// Which flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    /// Source → target.
    Cutover,
    /// Target → source.
    Rollback,
}

/// Drives a flip on one instance, or on several together: every instance
/// prepares (holds, drains, verifies); only if all are prepared do all
/// commit, else all prepared ones abort. Returns one report per instance,
/// in order.
pub async fn flip(
    clients: &[AdminClient],
    flip: Flip,
    request: &FlipRequest,
) -> Result<Vec<FlipReport>, Error> {
    let single = match flip {
        Flip::Cutover => "/cutover",
        Flip::Rollback => "/rollback",
    };
    if clients.len() == 1 || request.dry_run {
        let mut reports = Vec::new();
        for client in clients {
            reports.push(client.flip(single, request).await?);
        }
        return Ok(reports);
    }
    let mut prepares = tokio::task::JoinSet::new();
    for (index, client) in clients.iter().enumerate() {
        let client = client.clone();
        let request = request.clone();
        prepares.spawn(async move { (index, client.flip("/cutover/prepare", &request).await) });
    }
    let mut prepared: Vec<Option<Result<FlipReport, Error>>> =
        (0..clients.len()).map(|_| None).collect();
    while let Some(joined) = prepares.join_next().await {
        if let Ok((index, result)) = joined {
            prepared[index] = Some(result);
        }
    }
    let all_prepared = prepared
        .iter()
        .all(|r| matches!(r, Some(Ok(report)) if report.outcome == "prepared"));
    let second = if all_prepared {
        "/cutover/commit"
    } else {
        "/cutover/abort"
    };
    let mut reports = Vec::new();
    for (client, first) in clients.iter().zip(prepared) {
        let first =
            first.unwrap_or_else(|| Err(Error::Unexpected("prepare did not finish".to_owned())));
        match first {
            Ok(report) if report.outcome == "prepared" => {
                reports.push(client.flip(second, &FlipRequest::default()).await?)
            }
            Ok(report) => reports.push(report),
            Err(err) => {
                // This instance is in an unknown state; the others abort.
                reports.push(FlipReport {
                    outcome: "unreachable".to_owned(),
                    reason: Some(err.to_string()),
                    ..FlipReport::default()
                });
            }
        }
    }
    Ok(reports)
}

/// Renders a flip report, step by step.
pub fn render_flip(admin: &str, report: &FlipReport) -> String {
    let mut out = format!(
        "{admin}: {} · phase {} · epoch {} · primary {}\n",
        report.outcome.to_uppercase(),
        report.phase,
        report.epoch,
        report.primary
    );
    if !report.preflight.is_empty() {
        out.push_str("  pre-flight:\n");
        for check in &report.preflight {
            let mark = if check.ok {
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
    let backfill = &status.backfill;
    let limit = if backfill.rate_limit == 0 {
        "unlimited".to_owned()
    } else {
        format!("{}/s", backfill.rate_limit)
    };
    out.push_str(&format!(
        "backfill {} (rate {limit}, concurrency {})\n",
        backfill.state, backfill.concurrency
    ));
    for (dataset, progress) in &backfill.datasets {
        let done = progress.copied + progress.skipped + progress.failed;
        let fraction = if progress.total == 0 {
            if backfill.state == "done" { 1.0 } else { 0.0 }
        } else {
            (done as f64 / progress.total as f64).min(1.0)
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
        if let Some(error) = &progress.error {
            line.push_str(&format!(" · error: {error}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// One line of `/status`, for logs and pipes.
pub fn status_line(status: &Status) -> String {
    let datasets: Vec<String> = status
        .backfill
        .datasets
        .iter()
        .map(|(dataset, p)| {
            let done = p.copied + p.skipped + p.failed;
            let percent = if p.total == 0 {
                0.0
            } else {
                100.0 * done as f64 / p.total as f64
            };
            format!("{dataset}={percent:.1}%")
        })
        .collect();
    format!(
        "phase={} epoch={} primary={} ready={} depth={} lag_ms={} dead_letters={} backfill={} {}",
        status.phase,
        status.epoch,
        status.primary,
        status.ready,
        status.journal.depth,
        status.journal.lag_ms,
        status.journal.dead_letters,
        status.backfill.state,
        datasets.join(" ")
    )
}

/// Renders a verify report as a table.
pub fn render_report(report: &Report) -> String {
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
    out.push_str(&format!(
        "drift {} (primary: {})\n",
        report.drift, report.primary
    ));
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

/// Reads an admin API answer whole: its status, its JSON (`Null` when it is
/// not JSON) and its text (for messages that are not JSON).
async fn read_answer(
    url: &str,
    response: http::Response<hyper::body::Incoming>,
) -> Result<(StatusCode, Value, String), Error> {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|err| Error::Unreachable {
            url: url.to_owned(),
            message: err.to_string(),
        })?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, value, String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{BackfillStatus, DatasetProgress, JournalStatus};

    #[test]
    fn status_renders_bars_and_lines() {
        let mut datasets = std::collections::BTreeMap::new();
        datasets.insert(
            "clients".to_owned(),
            DatasetProgress {
                total: 100,
                copied: 40,
                skipped: 10,
                failed: 0,
                rate: 250.0,
                eta_s: 1,
                error: None,
            },
        );
        let status = Status {
            phase: "mirroring".into(),
            epoch: 1,
            primary: "source".into(),
            ready: true,
            journal: JournalStatus::default(),
            backfill: BackfillStatus {
                state: "running".into(),
                rate_limit: 0,
                concurrency: 32,
                elapsed_ms: 0,
                datasets,
            },
        };
        let text = render_status(&status);
        assert!(text.contains("clients"), "{text}");
        assert!(text.contains(" 50.0%"), "{text}");
        assert!(text.contains("ETA 1s"), "{text}");
        assert!(status_line(&status).contains("clients=50.0%"));
    }
}
