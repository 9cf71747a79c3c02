//! Logging set-up: `tracing` to stderr, human-readable or JSON lines,
//! filtered by `RUST_LOG` (default `info`). Nothing here logs secrets; the
//! code that handles them never puts them in fields, and text that quotes
//! an upstream passes through [`redact`] first.
//!
//! Log volume is bounded: each call site (one `debug!`/`info!`/... line in
//! the source, ours or a dependency's) writes at most
//! [`LOG_LINES_PER_SECOND`] lines a second, so that one abusive client
//! (an HTTP/2 flood at `RUST_LOG=debug`, a stream of malformed requests at
//! `info`) cannot fill the disk with the same line. What is dropped is
//! counted and reported once a second in a `warn` line.

pub mod redact;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Lines one call site may write per second. A healthy proxy writes a few
/// lines a minute at `info`; 50 a second from one line of code is already a
/// flood, and at ~200 bytes a line bounds each call site to ~10 KB/s.
pub const LOG_LINES_PER_SECOND: u32 = 50;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let limit = RateLimit::new(LOG_LINES_PER_SECOND);
    let suppressed = limit.suppressed();
    let result = match format {
        LogFormat::Text => builder.finish().with(limit).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(limit)
            .try_init(),
    };
    // A second init (tests, the demo) keeps the first subscriber.
    if result.is_ok() {
        report_suppressed(suppressed);
    }
}

/// Renders an error chain on one line (`a: b: c`), for log fields.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Drops events past [`RateLimit::per_second`] per call site per second
/// (a [`Layer`] whose `event_enabled` vetoes the event for the whole
/// subscriber, so it is never formatted).
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    window: Mutex<Window>,
    suppressed: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    counts: HashMap<Identifier, u32>,
}

impl RateLimit {
    /// At most `per_second` events per call site per second.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: Mutex::new(Window {
                started: Instant::now(),
                counts: HashMap::new(),
            }),
            suppressed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Events dropped so far (the reporter takes and resets it).
    pub fn suppressed(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.suppressed)
    }

    /// Whether an event of `callsite` at `now` may be written.
    pub fn admit(&self, callsite: Identifier, now: Instant) -> bool {
        let Ok(mut window) = self.window.lock() else {
            return true;
        };
        if now.saturating_duration_since(window.started) >= Duration::from_secs(1) {
            window.started = now;
            window.counts.clear();
        }
        let count = window.counts.entry(callsite).or_insert(0);
        if *count >= self.per_second {
            drop(window);
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *count += 1;
        true
    }
}

impl<S: tracing::Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) -> bool {
        self.admit(event.metadata().callsite(), Instant::now())
    }
}

/// Reports dropped lines once a second, from a thread of its own (an
/// event cannot be emitted from inside the subscriber that drops them).
fn report_suppressed(suppressed: Arc<AtomicU64>) {
    let spawned = std::thread::Builder::new()
        .name("handover-log-limit".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let dropped = suppressed.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        per_call_site_per_second = LOG_LINES_PER_SECOND,
                        "dropped log lines over the rate limit"
                    );
                }
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the log rate-limit reporter");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn each_call_site_gets_its_budget_per_second() {
        let limit = RateLimit::new(3);
        let a = tracing::callsite::Identifier(&A);
        let b = tracing::callsite::Identifier(&B);
        let start = Instant::now();
        let admitted =
            |id: &Identifier, at: Instant| (0..10).filter(|_| limit.admit(id.clone(), at)).count();
        assert_eq!(admitted(&a, start), 3);
        assert_eq!(
            admitted(&b, start),
            3,
            "another call site has its own budget"
        );
        assert_eq!(admitted(&a, start + Duration::from_millis(999)), 0);
        assert_eq!(admitted(&a, start + Duration::from_secs(1)), 3);
        assert_eq!(limit.suppressed().load(Ordering::Relaxed), 7 + 7 + 10 + 7);
    }

    static A: tracing::callsite::DefaultCallsite = tracing::callsite::DefaultCallsite::new(&META_A);
    static B: tracing::callsite::DefaultCallsite = tracing::callsite::DefaultCallsite::new(&META_B);
    static META_A: tracing::Metadata<'static> = tracing::metadata! {
        name: "a", target: "test", level: tracing::Level::DEBUG, fields: &[],
        callsite: &A, kind: tracing::metadata::Kind::EVENT
    };
    static META_B: tracing::Metadata<'static> = tracing::metadata! {
        name: "b", target: "test", level: tracing::Level::DEBUG, fields: &[],
        callsite: &B, kind: tracing::metadata::Kind::EVENT
    };

    #[test]
    fn a_flood_of_one_line_is_cut_to_the_budget() {
        let written = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(RateLimit::new(LOG_LINES_PER_SECOND))
            .with(Count(Arc::clone(&written)));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..20_000 {
                tracing::debug!(i, "a frame from an abusive client");
            }
            tracing::warn!("another line still gets through");
        });
        let written = written.load(Ordering::Relaxed);
        // One budget per second the loop took (a fraction of one, unless
        // the machine stalls for seconds), plus the other line.
        assert!(
            written > usize::try_from(LOG_LINES_PER_SECOND).unwrap(),
            "{written}"
        );
        assert!(written < 20_000 / 10, "{written}");
    }
}
