//! The tokens-file import into an Authlete target (`POST
//! /backfill/tokens`, `handover backfill --tokens-file FILE`): tokens issued
//! before handover was deployed whose values the source's records do not
//! expose, exported from the old system by the operator as JSON lines,
//! streamed (memory stays flat) and created in Authlete in batches. A bad
//! line is named by its number in the report, never quoted (it holds
//! tokens).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::api::TokenImport;

/// Why a tokens file could not be imported at all (bad lines are counted
/// in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upload broke off.
    #[error("reading the tokens file failed: {0}")]
    Read(String),
    /// The import was stopped (shutdown) or its bookkeeping failed.
    #[error("the import stopped before the end of the file")]
    Stopped,
    /// A line is longer than any token line can be.
    #[error("line {line} is longer than {limit} bytes")]
    LineTooLong {
        /// Its number (from 1).
        line: u64,
        /// The limit.
        limit: usize,
    },
}

/// One line of a tokens file (`handover backfill --tokens-file FILE`):
/// tokens issued before handover was deployed whose values the source's
/// records do not expose (access tokens; refresh tokens of transient
/// authorizations), exported from the old system by the operator.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenLine {
    /// The Connect2id `client_id`.
    pub client_id: String,
    /// The subject (absent for client credentials).
    #[serde(default)]
    pub subject: Option<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The OAuth grant type (default `authorization_code`).
    #[serde(default)]
    pub grant_type: Option<String>,
    /// The access token value.
    #[serde(default)]
    pub access_token: Option<String>,
    /// When it expires, epoch seconds (absent: the service default).
    #[serde(default)]
    pub access_token_expires_at: Option<u64>,
    /// The refresh token value.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// When it expires, epoch seconds (absent: `target.refresh_token_duration`).
    #[serde(default)]
    pub refresh_token_expires_at: Option<u64>,
}

/// Tokens created per Authlete call (the v3 batch API; one by one on v2).
pub const TOKEN_BATCH: usize = 500;
/// Batches in flight at once.
pub const TOKEN_BATCHES_IN_FLIGHT: usize = 4;
/// Longest line accepted in a tokens file.
const MAX_TOKEN_LINE: usize = 64 << 10;

impl TokenLine {
    /// The Authlete token of this line, or `None` when it expired.
    pub(crate) fn spec(
        &self,
        now: u64,
        unbounded_refresh: Duration,
    ) -> Option<crate::servers::authlete::TokenSpec> {
        let remaining = |at: Option<u64>| at.map(|at| at.saturating_sub(now));
        let access_left = remaining(self.access_token_expires_at);
        let refresh_left = remaining(self.refresh_token_expires_at);
        let access = self.access_token.clone().filter(|_| access_left != Some(0));
        let refresh = self
            .refresh_token
            .clone()
            .filter(|_| refresh_left != Some(0));
        if access.is_none() && refresh.is_none() {
            return None;
        }
        Some(crate::servers::authlete::TokenSpec {
            grant_type: crate::servers::authlete::authlete_grant(
                self.grant_type.as_deref().unwrap_or("authorization_code"),
            )
            .to_owned(),
            client_id: self.client_id.clone(),
            subject: self.subject.clone(),
            scopes: self.scopes.clone(),
            access_token: access,
            access_token_duration: access_left.unwrap_or(0),
            refresh_token: refresh,
            refresh_token_duration: refresh_left.unwrap_or(unbounded_refresh.as_secs()),
        })
    }
}

/// Imports a tokens file (JSON lines, streamed: memory stays flat) into an
/// Authlete target, in batches.
pub async fn import_tokens<B>(
    authlete: Arc<crate::servers::authlete::Authlete>,
    mut body: B,
) -> Result<TokenImport, Error>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let started = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let unbounded = authlete.config().refresh_token_duration;
    let report = Arc::new(Mutex::new(TokenImport::default()));
    let mut pending: Vec<crate::servers::authlete::TokenSpec> = Vec::with_capacity(TOKEN_BATCH);
    let mut buffer: Vec<u8> = Vec::new();
    let mut batches = tokio::task::JoinSet::new();
    let permits = Arc::new(Semaphore::new(TOKEN_BATCHES_IN_FLIGHT));
    let mut line_number = 0u64;
    let flush = |pending: &mut Vec<crate::servers::authlete::TokenSpec>,
                 batches: &mut tokio::task::JoinSet<()>,
                 permit: tokio::sync::OwnedSemaphorePermit| {
        let batch = std::mem::take(pending);
        let authlete = Arc::clone(&authlete);
        let report = Arc::clone(&report);
        batches.spawn(async move {
            let count = batch.len() as u64;
            let result = authlete.create_tokens(&batch).await;
            drop(permit);
            if let Ok(mut report) = report.lock() {
                match result {
                    Ok(()) => report.created += count,
                    Err(err) => {
                        report.failed += count;
                        if report.errors.len() < 5 {
                            report
                                .errors
                                .push(format!("a batch of {count} tokens: {err}"));
                        }
                    }
                }
            }
        });
    };
    let mut finished = false;
    while !finished {
        let frame = match body.frame().await {
            None => {
                finished = true;
                None
            }
            Some(Err(err)) => return Err(Error::Read(err.to_string())),
            Some(Ok(frame)) => frame.into_data().ok(),
        };
        if let Some(bytes) = frame {
            buffer.extend_from_slice(&bytes);
        }
        // Every complete line (the last one may lack its newline).
        loop {
            let end = match buffer.iter().position(|b| *b == b'\n') {
                Some(end) => end,
                None if finished && !buffer.is_empty() => buffer.len(),
                None => break,
            };
            let line: Vec<u8> = buffer.drain(..(end + 1).min(buffer.len())).collect();
            line_number += 1;
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            {
                let mut record = report.lock().map_err(|_| Error::Stopped)?;
                record.lines += 1;
                match serde_json::from_str::<TokenLine>(text) {
                    Err(err) => {
                        record.invalid += 1;
                        if record.errors.len() < 5 {
                            let message: String = err.to_string().chars().take(120).collect();
                            record.errors.push(format!("line {line_number}: {message}"));
                        }
                    }
                    Ok(token) => match token.spec(now, unbounded) {
                        None => record.expired += 1,
                        Some(spec) => pending.push(spec),
                    },
                }
            }
            if pending.len() >= TOKEN_BATCH {
                let permit = Arc::clone(&permits)
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::Stopped)?;
                flush(&mut pending, &mut batches, permit);
            }
        }
        if buffer.len() > MAX_TOKEN_LINE {
            return Err(Error::LineTooLong {
                line: line_number + 1,
                limit: MAX_TOKEN_LINE,
            });
        }
    }
    if !pending.is_empty() {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Stopped)?;
        flush(&mut pending, &mut batches, permit);
    }
    while batches.join_next().await.is_some() {}
    let mut report = report
        .lock()
        .map(|r| r.clone())
        .map_err(|_| Error::Stopped)?;
    let elapsed = started.elapsed().as_secs_f64();
    if elapsed > 0.0 {
        report.rate = report.created as f64 / elapsed;
    }
    tracing::info!(
        lines = report.lines,
        created = report.created,
        expired = report.expired,
        invalid = report.invalid,
        failed = report.failed,
        rate = report.rate,
        "tokens file imported"
    );
    Ok(report)
}
