//! Load generator and trivial upstream for the pass-through benchmark
//! (`benches/passthrough.sh`; what it measures and why: `benches/README.md`).
//!
//! Subcommands:
//!
//! - `upstream --listen ADDR [--threads N]`: answers `200` with a fixed
//!   64-byte JSON body on every path, HTTP/1.1 or h2c (by preface).
//! - `open-loop --url URL --rate N --duration S --connections C [--warmup S]`:
//!   requests are *scheduled* at fixed intervals of `1/rate` by a pacer
//!   thread, whatever the responses do, and handed to whichever of the `C`
//!   keep-alive connections is free. Each latency is measured from the
//!   request's **intended** send time, so a stall delays every request
//!   scheduled during it and shows up in the percentiles (no coordinated
//!   omission). The time between intended and actual send (`send_lag`) is
//!   reported too: it is the generator's own error, and it is the same for
//!   every configuration measured in one run.
//! - `closed-loop --url URL --duration S --connections C`: `C` connections,
//!   each sending its next request as soon as the previous answer arrived:
//!   the maximum throughput, and latency under saturation.
//! - `wait-ready --url URL`: polls until the URL answers `200` (the script's
//!   readiness check).
//! - `summarize DIR`: reads the JSON reports the script wrote and prints the
//!   comparison table (added latency and throughput ratios, per round, then
//!   median over rounds) against the DESIGN.md §8 budgets.
//! - `fdatasync --dir DIR --count N`: the disk's own latency for what a
//!   durable journal append costs (append a small record, `fdatasync`), so
//!   that a benchmark can put it next to the trigger-write latency measured
//!   in the same run (`benches/trigger_write.sh`).
//!
//! The load modes send `GET` with no body by default; `--method`, `--body`
//! and `--header` make them send a trigger (`POST /clients` with a JSON body
//! and a bearer token). Any `2xx` answer counts as a success. `open-loop
//! --timeline FILE` also writes every measured request (intended send time,
//! latency, outcome), for the scripts that look at *when* requests were slow
//! or failed (`benches/cutover.sh`).
//!
//! Latencies are kept as exact samples in a vector and sorted at the end
//! (a 30 s run at 5,000 req/s is 150,000 samples, 1.2 MB): exact percentiles,
//! no histogram error to reason about.

// A benchmark CLI prints its report on stdout; that is its whole job.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

/// The upstream's answer: 64 bytes of JSON, about the size of a small
/// OpenID Connect management answer's envelope.
const BODY: &[u8; 64] = br#"{"status":"ok","server":"loadgen-upstream","pad":"0123456789ab"}"#;

/// How long a single request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// After the schedule ends, how long in-flight and queued requests get to
/// finish; what is still queued then counts as a timeout.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Upstream and load generator for benches/passthrough.sh"
)]
struct Cli {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A trivial HTTP/1.1 + h2c upstream answering 200 with 64 bytes of JSON.
    Upstream {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Tokio worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// A bare hyper reverse proxy (hyper-util server and pooled client, no
    /// header hygiene, tracing or metrics): a reference for what the stack
    /// alone costs, not a product.
    BareProxy {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// The upstream's address.
        #[arg(long)]
        upstream: SocketAddr,
        /// Tokio worker threads (multi-thread scheduler, like handover).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Fixed-rate open-loop load, latency from the intended send time.
    OpenLoop {
        #[command(flatten)]
        common: Common,
        /// Requests per second, scheduled at fixed intervals.
        #[arg(long)]
        rate: f64,
    },
    /// Back-to-back requests on every connection: maximum throughput.
    ClosedLoop {
        #[command(flatten)]
        common: Common,
    },
    /// The disk's own append + fdatasync latency in DIR.
    Fdatasync {
        /// Directory to write the probe file in (the journal's disk).
        #[arg(long)]
        dir: PathBuf,
        /// Appends, each followed by one `fdatasync`.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Bytes appended before each `fdatasync` (about one journal record).
        #[arg(long, default_value_t = 128)]
        record_bytes: usize,
        /// Print the report as JSON (for the script) instead of a line.
        #[arg(long)]
        json: bool,
        /// Free-form labels stored in the JSON report.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Waits until URL answers 200.
    WaitReady {
        /// The URL to poll.
        #[arg(long)]
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 20.0)]
        timeout: f64,
    },
    /// Prints the comparison of the JSON reports in DIR.
    Summarize {
        /// Directories holding the `*.json` reports of one run each; the
        /// rounds of several runs are pooled.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Also write the summary as JSON to this file.
        #[arg(long)]
        json_out: Option<PathBuf>,
        /// Leave out the rounds of a scenario in which any run saw other
        /// programs use more than this many cores.
        #[arg(long)]
        max_other_load: Option<f64>,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Target URL (http only); its path is requested every time.
    #[arg(long)]
    url: String,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of load before measuring; those samples are discarded.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Persistent HTTP/1.1 keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Tokio worker threads of the generator (1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the report as JSON (for the script) instead of a table.
    #[arg(long)]
    json: bool,
    /// Free-form labels stored in the JSON report (`target=handover`).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Processes (all their threads) whose CPU time is read at the start
    /// and the end of the measured window: the proxy under test.
    #[arg(long = "cpu-pid")]
    cpu_pids: Vec<u32>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: http::Method,
    /// Request body (sent with `Content-Length`), e.g. a JSON document.
    #[arg(long)]
    body: Option<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(header::HeaderName, header::HeaderValue)>,
    /// Open loop only: write every measured request to this file, one line
    /// each, `due_us,latency_us,outcome` (`due_us` from the schedule's start,
    /// whose wall-clock time is in the header line; outcome is the status
    /// code, `error` or `timeout`).
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// Other processes of the benchmark (the upstream). With `--cpu-pid`
    /// and the generator itself they are subtracted from the machine's busy
    /// time to report the load *other* programs put on the machine during
    /// the window.
    #[arg(long = "own-pid")]
    own_pids: Vec<u32>,
    /// A mix of requests instead of `--method`/`--body`/`--header`: a JSON
    /// array of `{"name", "weight", "method", "path", "body", "headers":
    /// ["Name: value"], "lines": FILE}` (path absolute, on `--url`'s host).
    /// Request *n* of the run takes the template of slot `n % sum(weights)`
    /// (weights interleaved, so every second has the same mix), and `{seq}`
    /// / `{seq%N}` / `{line}` in its path and body become `n` / `n mod N` /
    /// line `n mod (lines in FILE)` of the entry's `lines` file (e.g. a
    /// refresh token per line). Failures are counted per template
    /// (`client_update: status 400`).
    #[arg(long, conflicts_with_all = ["body", "headers"])]
    mix: Option<PathBuf>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("label {text:?} is not KEY=VALUE"))?;
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_header(text: &str) -> Result<(header::HeaderName, header::HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("header {text:?} is not `Name: value`"))?;
    let name = header::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|err| format!("bad header name in {text:?}: {err}"))?;
    let value = header::HeaderValue::from_str(value.trim())
        .map_err(|err| format!("bad header value in {text:?}: {err}"))?;
    Ok((name, value))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        // `cargo bench` runs every bench target; this one is driven by
        // benches/passthrough.sh instead.
        eprintln!("loadgen: nothing to do without a subcommand; run benches/passthrough.sh");
        return std::process::ExitCode::SUCCESS;
    };
    match run(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Upstream { listen, threads } => runtime(threads)?.block_on(upstream(listen)),
        Command::BareProxy {
            listen,
            upstream,
            threads,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
            .context("cannot build the tokio runtime")?
            .block_on(bare_proxy(listen, upstream)),
        Command::OpenLoop { common, rate } => {
            if !(rate > 0.0 && rate.is_finite()) {
                bail!("--rate must be a positive number, got {rate}");
            }
            let target = Target::parse(&common.url)?.with_request(&common)?;
            let samples = runtime(common.threads)?.block_on(open_loop(&target, &common, rate))?;
            emit(&common, Mode::OpenLoop, Some(rate), samples)
        }
        Command::ClosedLoop { common } => {
            let target = Target::parse(&common.url)?.with_request(&common)?;
            let samples = runtime(common.threads)?.block_on(closed_loop(&target, &common))?;
            emit(&common, Mode::ClosedLoop, None, samples)
        }
        Command::Fdatasync {
            dir,
            count,
            record_bytes,
            json,
            labels,
        } => fdatasync(&dir, count, record_bytes, json, labels),
        Command::WaitReady { url, timeout } => {
            let target = Target::parse(&url)?;
            runtime(1)?.block_on(wait_ready(&target, Duration::from_secs_f64(timeout)))
        }
        Command::Summarize {
            dirs,
            json_out,
            max_other_load,
        } => summarize(&dirs, json_out.as_deref(), max_other_load),
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")
}

// ---------------------------------------------------------------- upstream

async fn upstream(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("loadgen upstream listening on {}", listener.local_addr()?);
    // HTTP/1.1, or HTTP/2 when the client opens with the h2 preface (h2c).
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                eprintln!("loadgen upstream: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_request| async {
                let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(response)
            });
            // A client closing its connection is the normal end.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn bare_proxy(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    use hyper_util::client::legacy::{Client, connect::HttpConnector};

    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("loadgen bare proxy listening on {}", listener.local_addr()?);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, hyper::body::Incoming> =
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
    let base: Arc<str> = Arc::from(format!("http://{upstream}"));
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                eprintln!("loadgen bare proxy: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let client = client.clone();
        let base = Arc::clone(&base);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                    let client = client.clone();
                    let uri = format!(
                        "{base}{}",
                        request.uri().path_and_query().map_or("/", |pq| pq.as_str())
                    );
                    async move {
                        // A failure closes the downstream connection: good
                        // enough for a reference that never fails.
                        *request.uri_mut() = uri.parse::<Uri>().map_err(anyhow::Error::from)?;
                        request.headers_mut().remove(header::HOST);
                        client.request(request).await.map_err(anyhow::Error::from)
                    }
                });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------- client

/// Where requests go and what they are: a resolved address, the `Host`
/// header, the path, and the method, extra headers and body.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    host: header::HeaderValue,
    path: String,
    method: http::Method,
    headers: Vec<(header::HeaderName, header::HeaderValue)>,
    body: Bytes,
    /// `--mix`: the templates, one per weight slot, and the run's request
    /// counter (shared by every connection).
    mix: Option<Arc<Mix>>,
}

/// One `--mix` entry as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MixEntry {
    name: String,
    weight: u32,
    method: String,
    path: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    lines: Option<PathBuf>,
}

/// A parsed `--mix`.
#[derive(Debug)]
struct Mix {
    templates: Vec<Template>,
    /// Template index per weight slot, interleaved.
    slots: Vec<usize>,
    next: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Template {
    name: Arc<str>,
    method: http::Method,
    path: String,
    body: String,
    headers: Vec<(header::HeaderName, header::HeaderValue)>,
    /// What `{line}` takes its values from.
    lines: Vec<String>,
}

impl Template {
    fn render(&self, template: &str, seq: u64) -> anyhow::Result<String> {
        render(template, seq, &self.lines)
    }
}

impl Mix {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the mix {}", path.display()))?;
        let entries: Vec<MixEntry> = serde_json::from_str(&text).with_context(|| {
            format!("the mix {} is not a JSON array of requests", path.display())
        })?;
        if entries.is_empty() {
            bail!("the mix {} is empty", path.display());
        }
        let mut templates = Vec::with_capacity(entries.len());
        let mut weights = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.weight == 0 || !entry.path.starts_with('/') {
                bail!(
                    "mix entry {:?}: the weight must be positive and the path absolute",
                    entry.name
                );
            }
            let headers = entry
                .headers
                .iter()
                .map(|text| parse_header(text).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?;
            let lines = match &entry.lines {
                None => Vec::new(),
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {}", file.display()))?
                    .lines()
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned)
                    .collect(),
            };
            // Both templates must render to something valid.
            render(&entry.path, 0, &lines)?
                .parse::<Uri>()
                .with_context(|| format!("mix entry {:?}: bad path", entry.name))?;
            render(&entry.body, 0, &lines)?;
            weights.push(entry.weight);
            templates.push(Template {
                name: entry.name.into(),
                method: entry
                    .method
                    .parse()
                    .with_context(|| format!("bad method {:?}", entry.method))?,
                path: entry.path,
                body: entry.body,
                headers,
                lines,
            });
        }
        // Interleave: slot k goes to the template whose share is furthest
        // behind (smooth weighted round robin).
        let total: u32 = weights.iter().sum();
        let mut credit = vec![0_i64; weights.len()];
        let mut slots = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, w) in credit.iter_mut().zip(&weights) {
                *c += i64::from(*w);
            }
            let best = (0..credit.len())
                .max_by_key(|&i| (credit[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            credit[best] -= i64::from(total);
            slots.push(best);
        }
        Ok(Self {
            templates,
            slots,
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The next request of the run: its template and its sequence number.
    fn next(&self) -> (&Template, u64) {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let slot = usize::try_from(n % self.slots.len() as u64).unwrap_or(0);
        (&self.templates[self.slots[slot]], n)
    }
}

/// Replaces `{seq}` with `seq`, `{seq%N}` with `seq mod N` and `{line}`
/// with `lines[seq mod lines.len()]`.
fn render(template: &str, seq: u64, lines: &[String]) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len() + 8);
    let mut rest = template;
    while let Some(at) = rest
        .find("{seq")
        .into_iter()
        .chain(rest.find("{line}"))
        .min()
    {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail
            .find('}')
            .with_context(|| format!("unclosed placeholder in {template:?}"))?;
        let inner = &tail[1..end];
        if inner == "seq" {
            out.push_str(&seq.to_string());
        } else if inner == "line" {
            if lines.is_empty() {
                bail!("{{line}} in {template:?} but no `lines` file (or it is empty)");
            }
            let at = usize::try_from(seq % lines.len() as u64).unwrap_or(0);
            out.push_str(&lines[at]);
        } else if let Some(modulus) = inner.strip_prefix("seq%") {
            let modulus: u64 = modulus
                .parse()
                .ok()
                .filter(|m| *m > 0)
                .with_context(|| format!("bad placeholder {{{inner}}} in {template:?}"))?;
            out.push_str(&(seq % modulus).to_string());
        } else {
            bail!("unknown placeholder {{{inner}}} in {template:?}");
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported, got {url:?}");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("URL {url:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(authority.host(), port))
            .with_context(|| format!("cannot resolve {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to no address"))?;
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
        Ok(Self {
            addr,
            host: header::HeaderValue::from_str(authority.as_str())
                .context("host is not a valid header value")?,
            path,
            method: http::Method::GET,
            headers: Vec::new(),
            body: Bytes::new(),
            mix: None,
        })
    }

    /// The method, headers and body given on the command line, or the mix.
    fn with_request(mut self, common: &Common) -> anyhow::Result<Self> {
        if let Some(path) = &common.mix {
            self.mix = Some(Arc::new(Mix::load(path)?));
        }
        self.method = common.method.clone();
        self.headers.clone_from(&common.headers);
        self.body = common
            .body
            .as_ref()
            .map_or_else(Bytes::new, |body| Bytes::from(body.clone()));
        Ok(self)
    }
}

/// One persistent HTTP/1.1 connection, reconnected after an error.
struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(target: Target) -> Self {
        Self {
            target,
            sender: None,
        }
    }

    async fn connect(&mut self) -> anyhow::Result<()> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the peer closes.
            let _ = connection.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// One request, its whole response body read. Anything but a `2xx` is
    /// an error.
    async fn exchange(&mut self) -> anyhow::Result<()> {
        let result = self.try_exchange().await;
        if result.is_err() {
            // Start over on a fresh connection next time.
            self.sender = None;
        }
        result
    }

    async fn try_exchange(&mut self) -> anyhow::Result<()> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            self.connect().await?;
        }
        let sender = self
            .sender
            .as_mut()
            .context("no connection after connecting")?;
        sender.ready().await?;
        let (request, name) = if let Some(mix) = &self.target.mix {
            let (template, seq) = mix.next();
            let mut request = Request::builder()
                .method(template.method.clone())
                .uri(template.render(&template.path, seq)?)
                .header(header::HOST, self.target.host.clone());
            for (name, value) in &template.headers {
                request = request.header(name, value);
            }
            let body = Bytes::from(template.render(&template.body, seq)?);
            (
                request.body(Full::new(body))?,
                Some(Arc::clone(&template.name)),
            )
        } else {
            let mut request = Request::builder()
                .method(self.target.method.clone())
                .uri(self.target.path.as_str())
                .header(header::HOST, self.target.host.clone());
            for (name, value) in &self.target.headers {
                request = request.header(name, value);
            }
            (request.body(Full::new(self.target.body.clone()))?, None)
        };
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if !status.is_success() {
            return Err(StatusError(status, name).into());
        }
        Ok(())
    }
}

/// A complete answer that was not a `2xx`.
#[derive(Debug)]
struct StatusError(StatusCode, Option<Arc<str>>);

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.1 {
            Some(name) => write!(f, "{name}: status {}", self.0),
            None => write!(f, "status {}", self.0),
        }
    }
}

impl std::error::Error for StatusError {}

/// How a failed request is counted: `status 503`, or `transport` for
/// anything that did not produce a complete answer.
fn error_kind(err: &anyhow::Error) -> String {
    err.downcast_ref::<StatusError>()
        .map_or_else(|| "transport".to_owned(), |status| status.to_string())
}

async fn wait_ready(target: &Target, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error;
    loop {
        let mut conn = Conn::new(target.clone());
        match tokio::time::timeout(Duration::from_secs(1), conn.exchange()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => last_error = format!("{err:#}"),
            Err(_) => last_error = "no answer within 1s".to_owned(),
        }
        if Instant::now() >= deadline {
            bail!(
                "{}{} not ready after {timeout:?}: {last_error}",
                target.addr,
                target.path
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- load

/// What one run collected, in nanoseconds.
#[derive(Debug, Default)]
struct Samples {
    /// Per successful request in the window: latency (open-loop: from the
    /// intended send time; closed-loop: from the actual send).
    latency: Vec<u64>,
    /// Open-loop only: from the actual send (what the server took).
    service: Vec<u64>,
    /// Open-loop only: actual minus intended send time (generator error).
    send_lag: Vec<u64>,
    errors: u64,
    /// Failed requests by kind (`status 503`, `transport`).
    error_kinds: BTreeMap<String, u64>,
    timeouts: u64,
    first_error: Option<String>,
    /// Open loop with `--timeline`: every measured request as (intended
    /// send time from the schedule's start, latency, outcome), in ns.
    timeline: Vec<(u64, u64, Outcome)>,
    measured: Duration,
    /// CPU time the `--cpu-pid` processes used during the window.
    cpu: Option<Duration>,
    /// Cores' worth of CPU that programs outside the benchmark used during
    /// the window.
    other_load: Option<f64>,
}

impl Samples {
    fn merge(&mut self, other: Self) {
        self.latency.extend(other.latency);
        self.service.extend(other.service);
        self.send_lag.extend(other.send_lag);
        self.errors += other.errors;
        for (kind, count) in other.error_kinds {
            *self.error_kinds.entry(kind).or_default() += count;
        }
        self.timeouts += other.timeouts;
        self.timeline.extend(other.timeline);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn error(&mut self, err: &anyhow::Error) {
        self.errors += 1;
        *self.error_kinds.entry(error_kind(err)).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{err:#}"));
        }
    }
}

/// What became of one request in a `--timeline`.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok,
    Error(Option<StatusCode>),
    Timeout,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// CPU time used so far by every thread of the given processes, from
/// `/proc/PID/task/*/schedstat` (nanoseconds on the CPU, not ticks).
fn cpu_time(pids: &[u32]) -> Option<Duration> {
    let mut total = 0u64;
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let path = task.ok()?.path().join("schedstat");
            let text = std::fs::read_to_string(path).ok()?;
            total += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(Duration::from_nanos(total))
}

/// Busy CPU time of the whole machine (every core), from `/proc/stat`:
/// everything but idle and iowait, steal included (the hypervisor's other
/// guests take it from us too).
fn machine_busy() -> Option<Duration> {
    /// `USER_HZ`, fixed at 100 on Linux for `/proc/stat`.
    const TICKS_PER_SECOND: u64 = 100;
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = fields[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some(Duration::from_millis(busy * 1000 / TICKS_PER_SECOND))
}

/// What the CPU watcher found over the measured window.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    /// The `--cpu-pid` processes (the proxy under test).
    watched: Option<Duration>,
    /// Cores' worth of busy time not accounted for by the benchmark's own
    /// processes.
    other_load: Option<f64>,
}

/// Reads CPU times at `from` and at `to`, in the background.
fn watch_cpu(
    watched: Vec<u32>,
    own: Vec<u32>,
    from: Instant,
    to: Instant,
) -> tokio::task::JoinHandle<CpuUse> {
    let mut ours = watched.clone();
    ours.extend(own);
    ours.push(std::process::id());
    tokio::spawn(async move {
        tokio::time::sleep_until(from.into()).await;
        let start = (cpu_time(&watched), cpu_time(&ours), machine_busy());
        tokio::time::sleep_until(to.into()).await;
        let end = (cpu_time(&watched), cpu_time(&ours), machine_busy());
        let window = (to - from).as_secs_f64().max(1e-9);
        let watched = if watched.is_empty() {
            None
        } else {
            end.0.zip(start.0).and_then(|(e, s)| e.checked_sub(s))
        };
        let other_load = match (start, end) {
            ((_, Some(ours0), Some(busy0)), (_, Some(ours1), Some(busy1))) => {
                let busy = busy1.saturating_sub(busy0).as_secs_f64();
                let ours = ours1.saturating_sub(ours0).as_secs_f64();
                Some((((busy - ours) / window).max(0.0) * 100.0).round() / 100.0)
            }
            _ => None,
        };
        CpuUse {
            watched,
            other_load,
        }
    })
}

async fn connect_all(target: &Target, connections: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let mut conn = Conn::new(target.clone());
        conn.connect().await?;
        conns.push(conn);
    }
    Ok(conns)
}

async fn open_loop(target: &Target, common: &Common, rate: f64) -> anyhow::Result<Samples> {
    let conns = connect_all(target, common.connections).await?;
    let warmup = Duration::from_secs_f64(common.warmup);
    let duration = Duration::from_secs_f64(common.duration);
    // The schedule starts a little after every connection is up.
    let start = Instant::now() + Duration::from_millis(20);
    // The same instant on the wall clock, for `--timeline` readers that
    // line requests up with events logged by other processes.
    let start_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        + Duration::from_millis(20);
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let hard_deadline = end + DRAIN_GRACE;
    let cpu = watch_cpu(
        common.cpu_pids.clone(),
        common.own_pids.clone(),
        measure_from,
        end,
    );
    let count = ((common.warmup + common.duration) * rate).ceil();
    // `as` saturates for f64 -> u64, and the count is positive and finite.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let count = count as u64;

    // The pacer is an OS thread: tokio's timer has a 1 ms granularity,
    // which would smear the schedule; `thread::sleep` is an hrtimer.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let interval = 1.0 / rate;
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            for i in 0..count {
                // Computed from the start, not accumulated: no drift.
                #[allow(clippy::cast_precision_loss)]
                let due = start + Duration::from_secs_f64(i as f64 * interval);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if tx.send(due).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the pacer thread")?;

    // Free connections queue on the mutex (tokio's is FIFO): the next due
    // request goes to the connection that has waited longest.
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let keep_timeline = common.timeline.is_some();
    let mut workers = Vec::with_capacity(conns.len());
    for mut conn in conns {
        let rx = Arc::clone(&rx);
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let note = |samples: &mut Samples, due: Instant, took: u64, outcome| {
                if keep_timeline {
                    samples.timeline.push((nanos(due - start), took, outcome));
                }
            };
            loop {
                let due = {
                    let mut rx = rx.lock().await;
                    rx.recv().await
                };
                let Some(due) = due else { break };
                let measured = due >= measure_from;
                let sent = Instant::now();
                if sent >= hard_deadline {
                    // Still queued long after the schedule ended: the
                    // target cannot keep up with the rate.
                    if measured {
                        samples.timeouts += 1;
                        note(&mut samples, due, nanos(sent - due), Outcome::Timeout);
                    }
                    continue;
                }
                let budget = REQUEST_TIMEOUT.min(hard_deadline - sent);
                let result = tokio::time::timeout(budget, conn.exchange()).await;
                let done = Instant::now();
                if !measured {
                    if !matches!(result, Ok(Ok(()))) {
                        conn.sender = None;
                    }
                    continue;
                }
                let took = nanos(done - due);
                match result {
                    Ok(Ok(())) => {
                        samples.latency.push(took);
                        samples.service.push(nanos(done - sent));
                        samples.send_lag.push(nanos(sent - due));
                        note(&mut samples, due, took, Outcome::Ok);
                    }
                    Ok(Err(err)) => {
                        let status = err.downcast_ref::<StatusError>().map(|status| status.0);
                        samples.error(&err);
                        note(&mut samples, due, took, Outcome::Error(status));
                    }
                    Err(_) => {
                        conn.sender = None;
                        samples.timeouts += 1;
                        note(&mut samples, due, took, Outcome::Timeout);
                    }
                }
            }
            samples
        }));
    }
    let mut samples = Samples::default();
    for worker in workers {
        samples.merge(worker.await.context("a connection task panicked")?);
    }
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    samples.measured = duration;
    let cpu = cpu.await.context("the CPU watcher panicked")?;
    samples.cpu = cpu.watched;
    samples.other_load = cpu.other_load;
    if let Some(path) = &common.timeline {
        write_timeline(path, start_unix, &mut samples.timeline)?;
    }
    Ok(samples)
}

/// Writes a `--timeline` file: a header line with the schedule's start as
/// Unix time, then `due_us,latency_us,outcome` per request, by due time.
fn write_timeline(
    path: &Path,
    start_unix: Duration,
    timeline: &mut [(u64, u64, Outcome)],
) -> anyhow::Result<()> {
    use std::io::Write as _;
    timeline.sort_unstable_by_key(|&(due, _, _)| due);
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(
        out,
        "# start_unix_s={}.{:09} columns=due_us,latency_us,outcome",
        start_unix.as_secs(),
        start_unix.subsec_nanos()
    )?;
    for &(due, took, outcome) in timeline.iter() {
        let outcome = match outcome {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Error(Some(status)) => status.as_u16().to_string(),
            Outcome::Error(None) => "error".to_owned(),
            Outcome::Timeout => "timeout".to_owned(),
        };
        writeln!(out, "{},{},{outcome}", due / 1_000, took / 1_000)?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

async fn closed_loop(target: &Target, common: &Common) -> anyhow::Result<Samples> {
    let conns = connect_all(target, common.connections).await?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(common.warmup);
    let end = measure_from + Duration::from_secs_f64(common.duration);
    let cpu = watch_cpu(
        common.cpu_pids.clone(),
        common.own_pids.clone(),
        measure_from,
        end,
    );
    let mut workers = Vec::with_capacity(conns.len());
    for mut conn in conns {
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = tokio::time::timeout(REQUEST_TIMEOUT, conn.exchange()).await;
                let done = Instant::now();
                // Counted by completion time, so the window holds exactly
                // the work done during it.
                if done < measure_from || done > end {
                    continue;
                }
                match result {
                    Ok(Ok(())) => samples.latency.push(nanos(done - sent)),
                    Ok(Err(err)) => samples.error(&err),
                    Err(_) => {
                        conn.sender = None;
                        samples.timeouts += 1;
                    }
                }
            }
            samples
        }));
    }
    let mut samples = Samples::default();
    for worker in workers {
        samples.merge(worker.await.context("a connection task panicked")?);
    }
    samples.measured = end - measure_from;
    let cpu = cpu.await.context("the CPU watcher panicked")?;
    samples.cpu = cpu.watched;
    samples.other_load = cpu.other_load;
    Ok(samples)
}

// ---------------------------------------------------------------- disk

/// The disk's own cost of a durable append, as the script stores it.
#[derive(Debug, Serialize)]
struct FdatasyncReport {
    mode: &'static str,
    dir: String,
    labels: BTreeMap<String, String>,
    count: usize,
    record_bytes: usize,
    /// `write` + `fdatasync` of one record, in microseconds.
    latency_us: Percentiles,
    /// Of which in `fdatasync`.
    fdatasync_us: Percentiles,
    /// Appends per second, one after the other.
    achieved_per_s: f64,
}

/// Appends `count` records of `record_bytes` to a fresh file in `dir`, each
/// followed by `fdatasync`: the journal's `sync = "always"` path with one
/// writer and no batching, minus everything but the disk.
fn fdatasync(
    dir: &Path,
    count: usize,
    record_bytes: usize,
    json: bool,
    labels: Vec<(String, String)>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let mut handle = file.as_file();
    let record = vec![0x5a_u8; record_bytes.max(1)];
    let mut whole = Vec::with_capacity(count);
    let mut synced = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count.max(1) {
        let t0 = Instant::now();
        handle.write_all(&record).context("write")?;
        let t1 = Instant::now();
        handle.sync_data().context("fdatasync")?;
        let t2 = Instant::now();
        whole.push(nanos(t2 - t0));
        synced.push(nanos(t2 - t1));
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    #[allow(clippy::cast_precision_loss)]
    let achieved_per_s = (whole.len() as f64 / elapsed).round();
    let report = FdatasyncReport {
        mode: "fdatasync",
        dir: dir.display().to_string(),
        labels: labels.into_iter().collect(),
        count: whole.len(),
        record_bytes: record.len(),
        latency_us: Percentiles::of(&mut whole),
        fdatasync_us: Percentiles::of(&mut synced),
        achieved_per_s,
    };
    let l = &report.latency_us;
    let line = format!(
        "fdatasync {} x{} B: p50={}us p99={}us p99.9={}us max={}us {}/s",
        report.dir, report.record_bytes, l.p50, l.p99, l.p999, l.max, report.achieved_per_s
    );
    if json {
        println!("{}", serde_json::to_string(&report)?);
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(())
}

// ---------------------------------------------------------------- reports

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    OpenLoop,
    ClosedLoop,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

impl Percentiles {
    fn of(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let micros = |ns: u64| {
            #[allow(clippy::cast_precision_loss)]
            let us = ns as f64 / 1_000.0;
            (us * 10.0).round() / 10.0
        };
        // Nearest rank: the smallest sample with at least q of all samples
        // at or below it.
        let rank = |q: f64| {
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let index = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            micros(samples[index])
        };
        let sum: u128 = samples.iter().map(|&ns| u128::from(ns)).sum();
        #[allow(clippy::cast_precision_loss)]
        let mean = (sum / samples.len() as u128) as u64;
        Self {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            p999: rank(0.999),
            max: micros(samples[samples.len() - 1]),
            mean: micros(mean),
        }
    }
}

/// One run's result, as the script stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Report {
    mode: Mode,
    url: String,
    labels: BTreeMap<String, String>,
    connections: usize,
    /// Offered rate (open-loop only).
    rate: Option<f64>,
    warmup_s: f64,
    duration_s: f64,
    /// Successful requests in the measured window.
    requests: u64,
    /// Failed requests (connection errors, non-2xx).
    errors: u64,
    /// The same by kind: `status 503`, `transport`.
    #[serde(default)]
    error_kinds: BTreeMap<String, u64>,
    /// Requests that took longer than the request timeout, or were still
    /// queued when the drain grace ran out.
    timeouts: u64,
    first_error: Option<String>,
    /// Successful requests per second in the measured window.
    achieved_rps: f64,
    /// Open-loop: from the intended send time. Closed-loop: from the send.
    latency_us: Percentiles,
    /// Open-loop only: from the actual send.
    service_us: Option<Percentiles>,
    /// Open-loop only: actual minus intended send time.
    send_lag_us: Option<Percentiles>,
    /// CPU time of the `--cpu-pid` processes per successful request (us).
    #[serde(default)]
    cpu_us_per_request: Option<f64>,
    /// The same, as a fraction of one core over the window.
    #[serde(default)]
    cpu_utilization: Option<f64>,
    /// Cores' worth of CPU used by programs outside the benchmark during
    /// the window (0 to 2 on a 2-core machine): the noise.
    #[serde(default)]
    other_load: Option<f64>,
}

fn emit(
    common: &Common,
    mode: Mode,
    rate: Option<f64>,
    mut samples: Samples,
) -> anyhow::Result<()> {
    let requests = samples.latency.len() as u64;
    #[allow(clippy::cast_precision_loss)]
    let achieved_rps = requests as f64 / samples.measured.as_secs_f64().max(1e-9);
    let open = mode == Mode::OpenLoop;
    let window = samples.measured.as_secs_f64().max(1e-9);
    #[allow(clippy::cast_precision_loss)]
    let cpu_us_per_request = samples
        .cpu
        .filter(|_| requests > 0)
        .map(|cpu| (cpu.as_secs_f64() * 1e6 / requests as f64 * 10.0).round() / 10.0);
    let cpu_utilization = samples
        .cpu
        .map(|cpu| (cpu.as_secs_f64() / window * 1000.0).round() / 1000.0);
    let report = Report {
        mode,
        url: common.url.clone(),
        labels: common.labels.iter().cloned().collect(),
        connections: common.connections,
        rate,
        warmup_s: common.warmup,
        duration_s: common.duration,
        requests,
        errors: samples.errors,
        error_kinds: std::mem::take(&mut samples.error_kinds),
        timeouts: samples.timeouts,
        first_error: samples.first_error.take(),
        achieved_rps: achieved_rps.round(),
        latency_us: Percentiles::of(&mut samples.latency),
        service_us: open.then(|| Percentiles::of(&mut samples.service)),
        send_lag_us: open.then(|| Percentiles::of(&mut samples.send_lag)),
        cpu_us_per_request,
        cpu_utilization,
        other_load: samples.other_load,
    };
    if common.json {
        println!("{}", serde_json::to_string(&report)?);
        eprintln!("{}", one_line(&report));
    } else {
        print_report(&report);
    }
    Ok(())
}

fn one_line(report: &Report) -> String {
    let l = &report.latency_us;
    format!(
        "{} {} rps={} err={} timeout={} p50={}us p99={}us p99.9={}us max={}us cpu/req={} other-load={}",
        report.labels.get("target").map_or("-", String::as_str),
        match report.mode {
            Mode::OpenLoop => "open-loop",
            Mode::ClosedLoop => "closed-loop",
        },
        report.achieved_rps,
        report.errors,
        report.timeouts,
        l.p50,
        l.p99,
        l.p999,
        l.max,
        report
            .cpu_us_per_request
            .map_or_else(|| "-".to_owned(), |us| format!("{us}us")),
        report
            .other_load
            .map_or_else(|| "-".to_owned(), |load| load.to_string())
    )
}

fn print_report(report: &Report) {
    println!("url          {}", report.url);
    match report.rate {
        Some(rate) => println!(
            "mode         open-loop, {rate} req/s offered, {} connections",
            report.connections
        ),
        None => println!(
            "mode         closed-loop, {} connections",
            report.connections
        ),
    }
    println!(
        "window       {} s after {} s warm-up",
        report.duration_s, report.warmup_s
    );
    println!("requests     {}", report.requests);
    println!(
        "errors       {} (timeouts {})",
        report.errors, report.timeouts
    );
    for (kind, count) in &report.error_kinds {
        println!("  {kind:<10} {count}");
    }
    if let Some(err) = &report.first_error {
        println!("first error  {err}");
    }
    println!("achieved     {} req/s", report.achieved_rps);
    if let (Some(per_request), Some(utilization)) =
        (report.cpu_us_per_request, report.cpu_utilization)
    {
        println!("watched cpu  {per_request} us per request, {utilization} of a core");
    }
    if let Some(load) = report.other_load {
        println!("other load   {load} cores used by programs outside the benchmark");
    }
    println!();
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (us)", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    let row = |name: &str, p: &Percentiles| {
        println!(
            "{name:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            p.p50, p.p90, p.p99, p.p999, p.max, p.mean
        );
    };
    match report.mode {
        Mode::OpenLoop => row("from intended send", &report.latency_us),
        Mode::ClosedLoop => row("from send", &report.latency_us),
    }
    if let Some(p) = &report.service_us {
        row("from actual send", p);
    }
    if let Some(p) = &report.send_lag_us {
        row("send lag (generator error)", p);
    }
}

// ---------------------------------------------------------------- summary

/// DESIGN.md §8: added latency at a fixed open-loop rate.
const BUDGET_ADDED_P50_US: f64 = 100.0;
/// DESIGN.md §8: added latency at a fixed open-loop rate.
const BUDGET_ADDED_P99_US: f64 = 1_000.0;
/// DESIGN.md §8: throughput relative to nginx in the same run.
const BUDGET_THROUGHPUT_VS_NGINX: f64 = 1.1;

/// The baseline every proxy is compared with.
const DIRECT: &str = "direct";
const NGINX: &str = "nginx";
const HANDOVER: &str = "handover";

#[derive(Debug, Serialize)]
struct Summary {
    rounds: Vec<String>,
    /// Per scenario (`open-loop@2000`, `closed-loop`) and proxy.
    added_latency: Vec<AddedLatency>,
    throughput: Vec<Ratio>,
    /// Proxy CPU time per request, each proxy relative to nginx.
    cpu_per_request: Vec<Ratio>,
    verdicts: Vec<Verdict>,
}

#[derive(Debug, Serialize)]
struct AddedLatency {
    scenario: String,
    proxy: String,
    /// Per round: proxy p50 minus direct p50 measured in the same round.
    p50_us: Vec<f64>,
    /// Per round: proxy p99 minus direct p99.
    p99_us: Vec<f64>,
    median_p50_us: f64,
    median_p99_us: f64,
    /// The same, on the latency from the actual send (the generator's own
    /// send lag taken out): a cross-check, not the budget figure.
    median_service_p50_us: f64,
    median_service_p99_us: f64,
}

#[derive(Debug, Serialize)]
struct Ratio {
    name: String,
    per_round: Vec<f64>,
    median: f64,
}

#[derive(Debug, Serialize)]
struct Verdict {
    budget: String,
    measured: String,
    status: Status,
    /// Why a verdict is inconclusive.
    note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Status {
    Met,
    Missed,
    /// The run was too noisy to tell (see the note).
    Inconclusive,
}

impl Status {
    fn of(met: bool) -> Self {
        if met { Self::Met } else { Self::Missed }
    }
}

/// A p99 comparison is only meaningful while the generator's own send lag
/// (which is everybody else's load on the machine, seen from here) stays
/// well below the budget being checked.
const MAX_LAG_P99_FOR_P99_VERDICT_US: f64 = BUDGET_ADDED_P99_US / 2.0;

/// A throughput ratio is only meaningful while both proxies had most of
/// their core; below this the other tenants took it.
const MIN_UTILIZATION_FOR_THROUGHPUT_VERDICT: f64 = 0.8;

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    }
}

fn fmt_list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn scenario_of(report: &Report) -> String {
    match (report.mode, report.rate) {
        (Mode::OpenLoop, Some(rate)) => format!("open-loop@{rate}"),
        _ => "closed-loop".to_owned(),
    }
}

fn load_reports(dir: &Path) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "json")
            || path.file_name().is_some_and(|name| name == "summary.json")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a loadgen report", path.display()))?;
        reports.push(report);
    }
    Ok(reports)
}

#[allow(clippy::too_many_lines)] // one table after another, read top to bottom
fn summarize(
    dirs: &[PathBuf],
    json_out: Option<&Path>,
    max_other_load: Option<f64>,
) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for (index, dir) in dirs.iter().enumerate() {
        let mut run = load_reports(dir)?;
        if run.is_empty() {
            bail!("no reports in {}", dir.display());
        }
        if dirs.len() > 1 {
            // Rounds of different runs are different rounds.
            for report in &mut run {
                let round = report.labels.get("round").cloned().unwrap_or_default();
                report
                    .labels
                    .insert("round".to_owned(), format!("{}.{round}", index + 1));
            }
        }
        reports.extend(run);
    }
    // (scenario, round, target) -> report
    let mut by_key: BTreeMap<(String, String, String), &Report> = BTreeMap::new();
    let mut scenarios = BTreeSet::new();
    let mut rounds = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for report in &reports {
        let round = report.labels.get("round").cloned().unwrap_or_default();
        let target = report
            .labels
            .get("target")
            .cloned()
            .unwrap_or_else(|| report.url.clone());
        let scenario = scenario_of(report);
        scenarios.insert(scenario.clone());
        rounds.insert(round.clone());
        targets.insert(target.clone());
        by_key.insert((scenario, round, target), report);
    }
    if let Some(limit) = max_other_load {
        let noisy: BTreeSet<(String, String)> = by_key
            .iter()
            .filter(|(_, r)| r.other_load.is_none_or(|load| load > limit))
            .map(|((scenario, round, _), _)| (scenario.clone(), round.clone()))
            .collect();
        by_key
            .retain(|(scenario, round, _), _| !noisy.contains(&(scenario.clone(), round.clone())));
        println!(
            "== only rounds where other programs used <= {limit} cores in every run: \
             {} scenario-rounds left out ==",
            noisy.len()
        );
        if by_key.is_empty() {
            bail!("no round was quiet enough");
        }
        scenarios = by_key.keys().map(|(s, _, _)| s.clone()).collect();
        rounds = by_key.keys().map(|(_, r, _)| r.clone()).collect();
    }
    let proxies: Vec<&String> = targets.iter().filter(|t| *t != DIRECT).collect();

    println!("== every run (latency from the intended send time, us) ==");
    println!("   other = cores used by programs outside the benchmark during the window");
    println!(
        "{:<20} {:<6} {:<14} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>6}",
        "scenario",
        "round",
        "target",
        "req/s",
        "errors",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "lag p99",
        "cpu/req",
        "other"
    );
    for ((scenario, round, target), report) in &by_key {
        let l = &report.latency_us;
        let lag = report
            .send_lag_us
            .map_or(String::from("-"), |p| p.p99.to_string());
        let cpu = report
            .cpu_us_per_request
            .map_or(String::from("-"), |us| us.to_string());
        let other = report
            .other_load
            .map_or(String::from("-"), |load| format!("{load:.2}"));
        println!(
            "{scenario:<20} {round:<6} {target:<14} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {cpu:>8} {other:>6}",
            report.achieved_rps,
            report.errors + report.timeouts,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            lag
        );
    }

    let mut summary = Summary {
        rounds: rounds.iter().cloned().collect(),
        added_latency: Vec::new(),
        throughput: Vec::new(),
        cpu_per_request: Vec::new(),
        verdicts: Vec::new(),
    };

    println!();
    println!("== added latency: proxy minus direct in the same round (us; median over rounds) ==");
    println!(
        "   p50/p99 from the intended send time (the budget figure); svc = from the actual send"
    );
    println!(
        "{:<20} {:<14} {:>8} {:>8} {:>8} {:>8}   per round p50 | p99",
        "scenario", "proxy", "p50", "p99", "svc p50", "svc p99"
    );
    for scenario in scenarios.iter().filter(|s| s.starts_with("open-loop")) {
        for proxy in &proxies {
            let mut p50 = Vec::new();
            let mut p99 = Vec::new();
            let mut service_p50 = Vec::new();
            let mut service_p99 = Vec::new();
            for round in &rounds {
                let direct = by_key.get(&(scenario.clone(), round.clone(), DIRECT.to_owned()));
                let via = by_key.get(&(scenario.clone(), round.clone(), (*proxy).clone()));
                if let (Some(direct), Some(via)) = (direct, via) {
                    p50.push(via.latency_us.p50 - direct.latency_us.p50);
                    p99.push(via.latency_us.p99 - direct.latency_us.p99);
                    if let (Some(d), Some(v)) = (direct.service_us, via.service_us) {
                        service_p50.push(v.p50 - d.p50);
                        service_p99.push(v.p99 - d.p99);
                    }
                }
            }
            if p50.is_empty() {
                continue;
            }
            let added = AddedLatency {
                scenario: scenario.clone(),
                proxy: (*proxy).clone(),
                median_p50_us: median(&p50),
                median_p99_us: median(&p99),
                median_service_p50_us: median(&service_p50),
                median_service_p99_us: median(&service_p99),
                p50_us: p50,
                p99_us: p99,
            };
            println!(
                "{:<20} {:<14} {:>8.0} {:>8.0} {:>8.0} {:>8.0}   {} | {}",
                added.scenario,
                added.proxy,
                added.median_p50_us,
                added.median_p99_us,
                added.median_service_p50_us,
                added.median_service_p99_us,
                fmt_list(&added.p50_us),
                fmt_list(&added.p99_us)
            );
            summary.added_latency.push(added);
        }
    }

    println!();
    println!("== throughput ratios, closed loop (same round) ==");
    let closed = "closed-loop".to_owned();
    let rps = |round: &String, target: &str| {
        by_key
            .get(&(closed.clone(), round.clone(), target.to_owned()))
            .map(|r| r.achieved_rps)
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for proxy in &proxies {
        if proxy.as_str() != NGINX {
            pairs.push(((*proxy).clone(), NGINX.to_owned()));
        }
    }
    for proxy in &proxies {
        pairs.push(((*proxy).clone(), DIRECT.to_owned()));
    }
    for (over, under) in pairs {
        let per_round: Vec<f64> = rounds
            .iter()
            .filter_map(|round| Some(rps(round, &over)? / rps(round, &under)?))
            .collect();
        if per_round.is_empty() {
            continue;
        }
        let ratio = Ratio {
            name: format!("{over}/{under}"),
            median: median(&per_round),
            per_round,
        };
        println!(
            "{:<24} {:>6.2}   per round: {}",
            ratio.name,
            ratio.median,
            ratio
                .per_round
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        summary.throughput.push(ratio);
    }

    // A proxy that did not use its whole core was held back by the other
    // core (generator + upstream): its ratio is then a lower bound.
    let utilization: Vec<String> = proxies
        .iter()
        .filter_map(|proxy| {
            let values: Vec<f64> = rounds
                .iter()
                .filter_map(|round| {
                    by_key
                        .get(&(closed.clone(), round.clone(), (*proxy).clone()))
                        .and_then(|r| r.cpu_utilization)
                })
                .collect();
            (!values.is_empty()).then(|| format!("{proxy} {:.2}", median(&values)))
        })
        .collect();
    if !utilization.is_empty() {
        println!(
            "proxy core utilization (1.00 = saturated; below ~0.95 the other core limited it): {}",
            utilization.join(", ")
        );
    }

    println!();
    println!("== proxy CPU time per request (us, all threads; median over rounds) ==");
    println!(
        "{:<20} {}",
        "scenario",
        proxies
            .iter()
            .map(|p| format!("{p:>14}"))
            .collect::<String>()
    );
    for scenario in &scenarios {
        let cpu = |round: &String, target: &str| {
            by_key
                .get(&(scenario.clone(), round.clone(), target.to_owned()))
                .and_then(|r| r.cpu_us_per_request)
        };
        let mut line = format!("{scenario:<20} ");
        for proxy in &proxies {
            let values: Vec<f64> = rounds.iter().filter_map(|r| cpu(r, proxy)).collect();
            line.push_str(&format!("{:>14.1}", median(&values)));
        }
        println!("{line}");
        for proxy in proxies.iter().filter(|p| p.as_str() != NGINX) {
            let per_round: Vec<f64> = rounds
                .iter()
                .filter_map(|r| Some(cpu(r, proxy)? / cpu(r, NGINX)?))
                .collect();
            if !per_round.is_empty() {
                summary.cpu_per_request.push(Ratio {
                    name: format!("{scenario}: {proxy}/{NGINX}"),
                    median: median(&per_round),
                    per_round,
                });
            }
        }
    }
    for ratio in &summary.cpu_per_request {
        println!(
            "{:<40} {:>6.2}   per round: {}",
            ratio.name,
            ratio.median,
            ratio
                .per_round
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    // Verdicts, on the medians over rounds.
    let lag_p99 = |scenario: &str| {
        let values: Vec<f64> = by_key
            .iter()
            .filter(|((s, _, _), _)| s == scenario)
            .filter_map(|(_, r)| r.send_lag_us.map(|p| p.p99))
            .collect();
        median(&values)
    };
    for added in summary.added_latency.iter().filter(|a| a.proxy == HANDOVER) {
        let lag = lag_p99(&added.scenario);
        let p99_noise = (lag > MAX_LAG_P99_FOR_P99_VERDICT_US).then(|| {
            format!(
                "generator send lag p99 {lag:.0} us (median of the runs) exceeds \
                 {MAX_LAG_P99_FOR_P99_VERDICT_US} us: other load on the machine dominates p99"
            )
        });
        let p99_status = |met: bool| {
            if p99_noise.is_some() {
                Status::Inconclusive
            } else {
                Status::of(met)
            }
        };
        let nginx = summary
            .added_latency
            .iter()
            .find(|a| a.proxy == NGINX && a.scenario == added.scenario);
        summary.verdicts.push(Verdict {
            budget: format!("{}: added p50 <= {BUDGET_ADDED_P50_US} us", added.scenario),
            measured: format!("{:.0} us", added.median_p50_us),
            status: Status::of(added.median_p50_us <= BUDGET_ADDED_P50_US),
            note: None,
        });
        summary.verdicts.push(Verdict {
            budget: format!("{}: added p99 <= {BUDGET_ADDED_P99_US} us", added.scenario),
            measured: format!("{:.0} us", added.median_p99_us),
            status: p99_status(added.median_p99_us <= BUDGET_ADDED_P99_US),
            note: p99_noise.clone(),
        });
        if let Some(nginx) = nginx {
            summary.verdicts.push(Verdict {
                budget: format!("{}: added p50 <= nginx's (aim)", added.scenario),
                measured: format!(
                    "{:.0} vs {:.0} us",
                    added.median_p50_us, nginx.median_p50_us
                ),
                status: Status::of(added.median_p50_us <= nginx.median_p50_us),
                note: None,
            });
            summary.verdicts.push(Verdict {
                budget: format!("{}: added p99 <= nginx's (aim)", added.scenario),
                measured: format!(
                    "{:.0} vs {:.0} us",
                    added.median_p99_us, nginx.median_p99_us
                ),
                status: p99_status(added.median_p99_us <= nginx.median_p99_us),
                note: p99_noise.clone(),
            });
        }
    }
    if let Some(ratio) = summary
        .throughput
        .iter()
        .find(|r| r.name == format!("{HANDOVER}/{NGINX}"))
    {
        let starved: Vec<String> = [HANDOVER, NGINX]
            .iter()
            .filter_map(|proxy| {
                let values: Vec<f64> = rounds
                    .iter()
                    .filter_map(|round| {
                        by_key
                            .get(&(closed.clone(), round.clone(), (*proxy).to_owned()))
                            .and_then(|r| r.cpu_utilization)
                    })
                    .collect();
                let utilization = median(&values);
                (utilization < MIN_UTILIZATION_FOR_THROUGHPUT_VERDICT)
                    .then(|| format!("{proxy} {utilization:.2}"))
            })
            .collect();
        let met = ratio.median >= BUDGET_THROUGHPUT_VS_NGINX;
        summary.verdicts.push(Verdict {
            budget: format!("throughput handover/nginx >= {BUDGET_THROUGHPUT_VS_NGINX}"),
            measured: format!("{:.2}", ratio.median),
            status: if starved.is_empty() {
                Status::of(met)
            } else {
                Status::Inconclusive
            },
            note: (!starved.is_empty()).then(|| {
                format!(
                    "proxy core utilization {} below {MIN_UTILIZATION_FOR_THROUGHPUT_VERDICT}: \
                     other load took the core",
                    starved.join(", ")
                )
            }),
        });
    }
    println!();
    println!("== DESIGN.md section 8 budgets (median over rounds) ==");
    for verdict in &summary.verdicts {
        let status = match verdict.status {
            Status::Met => "MET",
            Status::Missed => "MISSED",
            Status::Inconclusive => "NOISY",
        };
        println!(
            "{status:<6} {:<46} measured {}",
            verdict.budget, verdict.measured
        );
        if let Some(note) = &verdict.note {
            println!("       ({note})");
        }
    }
    if let Some(path) = json_out {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
