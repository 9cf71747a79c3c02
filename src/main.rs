//! The `handover` binary: parses the command line, validates the config
//! before binding anything, and maps failures to exit codes (DESIGN.md §7):
//! 0 success, 1 the operation ran and found a problem, 2 usage, 64 bad
//! config, 69 the admin API could not be reached (an operator command did
//! not run at all).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use handover::config::Config;
use handover::telemetry::{self, LogFormat};

/// Exit code for a bad config file (EX_USAGE from sysexits.h).
const EXIT_CONFIG: u8 = 64;
/// Exit code when the operation ran and found a problem.
const EXIT_PROBLEM: u8 = 1;
/// Exit code when an operator command cannot reach the admin API
/// (EX_UNAVAILABLE from sysexits.h): the operation did not run, so a
/// script must not read it as "found drift" (1).
const EXIT_UNREACHABLE: u8 = 69;
/// Exit code for a usage error (clap's own).
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "handover",
    version,
    about = "Migrate an OpenID Connect server without logging anybody out"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy, sync workers, backfill and admin API.
    Serve {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file (and resolve its secrets) without starting anything.
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a stopped proxy's journal for damage, or salvage it (keep every
    /// readable record, quarantine the damaged segments).
    Journal {
        /// `check` (read only; exit 1 when damage is found) or `salvage`.
        #[arg(value_enum)]
        action: JournalAction,
        /// The config file (the journal directory and key come from it).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run a standalone Connect2id or Authlete emulator (rehearsals, tests).
    Emulate(Box<EmulateArgs>),
    /// Zero-config demo: emulated source and target, the proxy in front,
    /// realistic traffic, then a comparison of both servers.
    Demo(DemoArgs),
    /// Show the migration status (phase, primary, lag, backfill progress).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Refresh every second.
        #[arg(long)]
        watch: bool,
    },
    /// Control the backfill, or (Authlete target) import a tokens file.
    Backfill {
        #[command(flatten)]
        admin: AdminArgs,
        /// What to do.
        #[arg(value_enum, required_unless_present = "tokens_file")]
        action: Option<BackfillAction>,
        /// An Authlete target: create the tokens of this JSON-lines file
        /// (see the README for the format).
        #[arg(long, value_name = "FILE", conflicts_with = "action")]
        tokens_file: Option<PathBuf>,
        /// Records per second (0 = unlimited), applied live.
        #[arg(long)]
        rate: Option<u64>,
        /// Writes in flight, applied live.
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Compare the primary and the secondary; exit 0 only when drift is zero
    /// and every dataset was measured.
    Verify {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only this dataset (clients, authorizations, sessions).
        #[arg(long)]
        dataset: Option<handover::model::Dataset>,
        /// Journal a sync of every drifted key.
        #[arg(long)]
        repair: bool,
        /// List at most N drifted keys per dataset.
        #[arg(long, value_name = "N")]
        list: Option<usize>,
    },
    /// The fenced flip to the target: hold writes, drain, verify, flip,
    /// release. Exit 0 only when it cut over.
    Cutover(FlipArgs),
    /// The same fenced flip back to the source.
    Rollback(FlipArgs),
    /// After a cutover: stop syncing for good (a plain pass-through).
    Complete {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List or retry the changes the sync gave up on.
    DeadLetters {
        #[command(flatten)]
        admin: AdminArgs,
        /// `list` (default) or `retry`.
        #[arg(value_enum, default_value = "list")]
        action: DeadLetterAction,
    },
}

#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The admin API of the proxy.
    #[arg(long, default_value = handover::api::DEFAULT_ADMIN_URL, env = "HANDOVER_ADMIN_URL")]
    admin: String,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct FlipArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Run the pre-flight checks only.
    #[arg(long)]
    dry_run: bool,
    /// Bound on the write pause (e.g. 2s, 500ms); past it the flip aborts.
    #[arg(long, value_parser = parse_duration_arg)]
    max_pause: Option<std::time::Duration>,
    /// Flip despite dead letters or an unfinished backfill.
    #[arg(long)]
    force: bool,
    /// Removed: a fleet shares a PostgreSQL store, and any instance
    /// coordinates the cutover through it.
    #[arg(long = "peer", value_name = "URL", hide = true)]
    peers: Vec<String>,
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    handover::config::parse_duration(text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackfillAction {
    Start,
    Pause,
    Resume,
    /// Only apply --rate / --concurrency.
    Set,
    /// Only show it (in a fleet, from any instance: the fleet's).
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum JournalAction {
    /// Read every segment and report torn tails and corrupt records.
    Check,
    /// Keep every readable record, move the damaged segments to
    /// `<journal dir>/quarantine/`, write a clean segment.
    Salvage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DeadLetterAction {
    List,
    Retry,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Seconds of traffic.
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Concurrent simulated users.
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Records of each dataset on the source before the proxy starts (the
    /// backfill copies them under live traffic).
    #[arg(long, default_value_t = 3000)]
    records: usize,
    /// Which kind of new server to migrate to.
    #[arg(long, value_enum, default_value_t = EmulatorKind::Connect2id)]
    target: EmulatorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EmulatorKind {
    Connect2id,
    Authlete,
}

#[derive(Debug, clap::Args)]
struct EmulateArgs {
    /// Which server to play.
    #[arg(long, value_enum)]
    kind: EmulatorKind,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: std::net::SocketAddr,
    /// Bearer token for every management API (Connect2id), or the v3
    /// service access token (Authlete).
    #[arg(long, env = "HANDOVER_EMULATOR_TOKEN")]
    api_token: String,
    /// Connect2id: pre-load N clients, N long-lived authorizations and N
    /// sessions.
    #[arg(long, default_value_t = 0)]
    seed: usize,
    /// Connect2id: the server JWK set (with the `hmac` and
    /// `refresh-token-encrypt` keys); two emulators given the same set
    /// accept each other's SIDs and refresh tokens. A file that does not
    /// exist yet is created with a new set.
    #[arg(long, value_name = "FILE")]
    jwks: Option<PathBuf>,
    /// Connect2id: the base path of the endpoints, e.g. /c2id.
    #[arg(long, default_value = "")]
    base_path: String,
    /// Connect2id: the issuer URL (defaults to http://ADDR + base path).
    #[arg(long)]
    issuer: Option<String>,
    /// Added latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fraction of requests answered with an error (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Authlete: the service id in v3 paths.
    #[arg(long, default_value_t = handover::emulator::authlete::DEFAULT_SERVICE_ID)]
    service_id: u64,
    /// Authlete: the v2 service API key (Basic user; defaults to the service id).
    #[arg(long)]
    api_key: Option<String>,
    /// Authlete: the v2 service API secret (Basic password; defaults to the token).
    #[arg(long)]
    api_secret: Option<String>,
    /// Connect2id: individual strictness switches as a JSON object, over the
    /// --strictness preset, e.g. '{"backchannel_logout":true}'.
    #[arg(long, value_name = "JSON")]
    switches: Option<String>,
    /// Connect2id: a tenant of the multi-tenant edition (repeatable).
    #[arg(long = "tenant", value_name = "ID")]
    tenants: Vec<String>,
    /// Connect2id: an issuer alias of the default tenant (repeatable).
    #[arg(long = "issuer-alias", value_name = "URL")]
    issuer_aliases: Vec<String>,
    /// Authlete: the v2 service owner API key (Basic user of the v2 service APIs).
    #[arg(long)]
    owner_api_key: Option<String>,
    /// Authlete: the v2 service owner API secret (defaults to the token).
    #[arg(long)]
    owner_api_secret: Option<String>,
    /// Which reading of the API to play: `lenient` (the emulator as the
    /// product was first written against) or `real` (every behaviour of the
    /// real server that is harder on a migration). Omitted: Connect2id plays
    /// the real server's defaults, Authlete the lenient reading.
    #[arg(long, value_enum)]
    strictness: Option<StrictnessPreset>,
    /// Authlete: one switch at its strict value, over the preset (repeat):
    /// paths, owner-credentials, aliases, replace-update, rate-limit, sweep,
    /// result-codes, client-single-token, typed-client-metadata, revoke-order,
    /// slow-batch.
    #[arg(long = "strict", value_name = "SWITCH", value_parser = parse_switch)]
    strict: Vec<handover::emulator::authlete::Switch>,
    /// Authlete: one switch at its lenient value, over the preset (repeat).
    #[arg(long = "lenient", value_name = "SWITCH", value_parser = parse_switch)]
    lenient: Vec<handover::emulator::authlete::Switch>,
    /// Authlete: cap the request rate, e.g. `50/1s` (429 with Retry-After
    /// beyond it); implies the rate-limit switch.
    #[arg(long, value_name = "N/DURATION", value_parser = parse_rate_limit)]
    rate_limit: Option<handover::emulator::authlete::RateLimit>,
    /// Authlete: delete tokens unused for this long, e.g. `2160h` (Authlete's
    /// 90 days) or `30s` to compress time; implies the sweep switch.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    sweep_unused_after: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StrictnessPreset {
    Lenient,
    Real,
}

fn parse_switch(text: &str) -> Result<handover::emulator::authlete::Switch, String> {
    text.parse().map_err(|err| format!("{err}"))
}

fn parse_rate_limit(text: &str) -> Result<handover::emulator::authlete::RateLimit, String> {
    let (requests, per) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not N/DURATION (e.g. 50/1s)"))?;
    let requests: u32 = requests
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {requests:?} is not a request count"))?;
    let per = parse_duration_arg(per)?;
    if requests == 0 || per.is_zero() {
        return Err(format!("{text:?}: the count and the window must be > 0"));
    }
    Ok(handover::emulator::authlete::RateLimit { requests, per })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(&config, cli.log_format),
        Command::Check { config } => check(&config),
        Command::Journal { action, config } => journal(action, &config),
        Command::Emulate(args) => emulate(*args, cli.log_format),
        Command::Demo(args) => demo(&args),
        Command::Status { admin, watch } => operate(&admin, |client, json| async move {
            handover::cli::watch_status(&client, watch, json).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Backfill {
            admin,
            action,
            tokens_file,
            rate,
            concurrency,
        } => operate(&admin, |client, json| async move {
            if let Some(path) = tokens_file {
                let report = client.upload_tokens(&path).await?;
                if json {
                    write_stdout(&format!(
                        "{}\n",
                        serde_json::to_string(&report).unwrap_or_default()
                    ));
                } else {
                    write_stdout(&format!(
                        "tokens file {}: {} lines · {} tokens created · {} expired · {} invalid · {} refused · {:.0} tokens/s\n",
                        path.display(),
                        report.lines,
                        report.created,
                        report.expired,
                        report.invalid,
                        report.failed,
                        report.rate
                    ));
                    for error in &report.errors {
                        write_stdout(&format!("  {error}\n"));
                    }
                }
                return Ok(if report.failed == 0 && report.invalid == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_PROBLEM)
                });
            }
            let operation = match action.unwrap_or(BackfillAction::Start) {
                BackfillAction::Start => "start",
                BackfillAction::Pause => "pause",
                BackfillAction::Resume => "resume",
                BackfillAction::Set => "settings",
                BackfillAction::Status => {
                    let status = client.status().await?;
                    if json {
                        write_stdout(&format!(
                            "{}\n",
                            serde_json::to_string(&status.backfill).unwrap_or_default()
                        ));
                    } else {
                        write_stdout(&handover::cli::render_status(&status));
                    }
                    return Ok(ExitCode::SUCCESS);
                }
            };
            let answer = client.backfill(operation, rate, concurrency).await?;
            if json {
                write_stdout(&format!("{answer}\n"));
            } else {
                let status = client.status().await?;
                write_stdout(&handover::cli::render_status(&status));
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Verify {
            admin,
            dataset,
            repair,
            list,
        } => operate(&admin, |client, json| async move {
            let request = handover::api::VerifyRequest {
                dataset,
                repair,
                list,
            };
            // A progress line redrawn in place: only on a terminal, never
            // into a log file or a pipe.
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let report = client
                .verify(&request, |status| {
                    if terminal {
                        eprint!(
                            "\rverifying {}: {} records scanned   ",
                            status.dataset.map_or("", |d| d.as_str()),
                            status.scanned
                        );
                    }
                })
                .await?;
            if terminal {
                eprint!("\r{:60}\r", "");
            }
            if json {
                write_stdout(&format!(
                    "{}\n",
                    serde_json::to_string(&report).unwrap_or_default()
                ));
            } else {
                write_stdout(&handover::cli::render_report(&report));
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_PROBLEM)
            })
        }),
        Command::Cutover(args) => flip_command(args, handover::cli::Flip::Cutover),
        Command::Rollback(args) => flip_command(args, handover::cli::Flip::Rollback),
        Command::Complete { admin } => operate(&admin, |client, json| async move {
            let report = client.flip("/complete", &Default::default()).await?;
            if json {
                write_stdout(&format!(
                    "{}\n",
                    serde_json::to_string(&report).unwrap_or_default()
                ));
            } else {
                write_stdout(&handover::cli::render_flip(client.base(), &report));
            }
            Ok(if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_PROBLEM)
            })
        }),
        Command::DeadLetters { admin, action } => operate(&admin, |client, json| async move {
            match action {
                DeadLetterAction::List => {
                    let letters = client.dead_letters().await?;
                    if json {
                        write_stdout(&format!(
                            "{}\n",
                            serde_json::to_string(&letters).unwrap_or_default()
                        ));
                    } else if letters.is_empty() {
                        write_stdout("no dead letters\n");
                    } else {
                        for letter in &letters {
                            write_stdout(&format!(
                                "#{} {}: {}\n",
                                letter.seq, letter.change, letter.reason
                            ));
                        }
                    }
                }
                DeadLetterAction::Retry => {
                    let retried = client.retry_dead_letters().await?;
                    write_stdout(&format!("journaled {retried} dead letters again\n"));
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn emulate(args: EmulateArgs, log_format: LogFormat) -> ExitCode {
    use handover::emulator::{authlete, connect2id};
    telemetry::init(log_format);
    let Some(runtime) = runtime() else {
        return ExitCode::from(EXIT_PROBLEM);
    };
    let result: Result<(), String> = runtime.block_on(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            signal.cancel();
        });
        match args.kind {
            EmulatorKind::Connect2id => {
                let preset = match args.strictness {
                    None => connect2id::Preset::Default,
                    Some(StrictnessPreset::Lenient) => connect2id::Preset::Lenient,
                    Some(StrictnessPreset::Real) => connect2id::Preset::Real,
                };
                let strictness =
                    connect2id::strictness_from_flags(preset, args.switches.as_deref())
                        .map_err(|err| err.to_string())?;
                connect2id::run(
                    connect2id::Options {
                        listen: args.listen,
                        api_token: args.api_token,
                        seed: args.seed,
                        jwks: args.jwks,
                        base_path: args.base_path,
                        issuer: args.issuer,
                        latency_ms: args.latency_ms,
                        error_rate: args.error_rate,
                        strictness,
                        tenants: args.tenants,
                        issuer_aliases: args.issuer_aliases,
                    },
                    stop,
                )
                .await
                .map_err(|err| err.to_string())
            }
            EmulatorKind::Authlete => {
                let mut options = authlete::Options::new(args.listen, args.api_token);
                options.service_id = args.service_id;
                options.api_key = args.api_key;
                options.api_secret = args.api_secret;
                options.latency_ms = args.latency_ms;
                options.error_rate = args.error_rate;
                options.owner_api_key = args.owner_api_key;
                options.owner_api_secret = args.owner_api_secret;
                options.strictness = match args.strictness {
                    None | Some(StrictnessPreset::Lenient) => authlete::Strictness::lenient(),
                    Some(StrictnessPreset::Real) => authlete::Strictness::real(),
                };
                for switch in args.strict {
                    options.strictness.set(switch, true);
                }
                for switch in args.lenient {
                    options.strictness.set(switch, false);
                }
                if args.rate_limit.is_some() {
                    options.strictness.rate_limit = args.rate_limit;
                }
                if args.sweep_unused_after.is_some() {
                    options.strictness.sweep_unused_after = args.sweep_unused_after;
                }
                authlete::run(options, stop)
                    .await
                    .map_err(|err| err.to_string())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("handover: {err}");
            ExitCode::from(EXIT_PROBLEM)
        }
    }
}

fn demo(args: &DemoArgs) -> ExitCode {
    // Quiet logs: the demo prints its own progress; RUST_LOG overrides.
    if std::env::var_os("RUST_LOG").is_none() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
            .with_writer(std::io::stderr)
            .try_init();
    } else {
        telemetry::init(LogFormat::Text);
    }
    let Some(runtime) = runtime() else {
        return ExitCode::from(EXIT_PROBLEM);
    };
    let options = handover::demo::Options {
        duration: std::time::Duration::from_secs(args.duration.max(1)),
        users: args.users.max(1),
        records: args.records,
    };
    let passed = match args.target {
        EmulatorKind::Connect2id => runtime
            .block_on(handover::demo::run(options))
            .map(|summary| summary.passed()),
        EmulatorKind::Authlete => runtime
            .block_on(handover::demo::authlete::run(options))
            .map(|summary| summary.passed()),
    };
    match passed {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_PROBLEM),
        Err(err) => {
            eprintln!("handover demo: {err}");
            ExitCode::from(EXIT_PROBLEM)
        }
    }
}

fn flip_command(args: FlipArgs, flip: handover::cli::Flip) -> ExitCode {
    let request = handover::api::FlipRequest {
        dry_run: args.dry_run,
        max_pause_ms: args
            .max_pause
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        force: args.force,
    };
    if !args.peers.is_empty() {
        eprintln!(
            "error: --peer was removed: several instances share a [store] kind = \"postgres\", and `handover cutover` on any one of them coordinates the rest (README, \"Running several instances\")"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    operate(&args.admin, |client, json| async move {
        let report = handover::cli::flip(&client, flip, &request).await?;
        if json {
            // A list, as when several instances were driven one by one.
            write_stdout(&format!(
                "{}\n",
                serde_json::to_string(&[&report]).unwrap_or_default()
            ));
        } else {
            write_stdout(&handover::cli::render_flip(client.base(), &report));
        }
        Ok(if report.succeeded() {
            ExitCode::SUCCESS
        } else if report.outcome == handover::api::Outcome::Unreachable {
            ExitCode::from(EXIT_UNREACHABLE)
        } else {
            ExitCode::from(EXIT_PROBLEM)
        })
    })
}

fn write_stdout(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Runs an operator command against the admin API (token from
/// `HANDOVER_ADMIN_TOKEN`).
fn operate<F, Fut>(admin: &AdminArgs, command: F) -> ExitCode
where
    F: FnOnce(handover::api::AdminClient, bool) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, handover::api::Error>>,
{
    let Some(runtime) = runtime() else {
        return ExitCode::from(EXIT_PROBLEM);
    };
    let token = std::env::var("HANDOVER_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let client = handover::api::AdminClient::new(&admin.admin, token);
    match runtime.block_on(command(client, admin.json)) {
        Ok(code) => code,
        Err(err @ handover::api::Error::Unreachable { .. }) => {
            eprintln!("handover: {err}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        Err(err) => {
            eprintln!("handover: {err}");
            ExitCode::from(EXIT_PROBLEM)
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(err) => {
            eprintln!("handover: cannot start the async runtime: {err}");
            None
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("handover: warning: {warning}");
            }
            eprintln!("handover: {} is valid", path.display());
            if matches!(config.store.kind, handover::store::Kind::Postgres { .. }) {
                return check_store(&config.store);
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("handover: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `handover journal check|salvage`: offline, on the journal directory of
/// the config (the proxy must be stopped: the journal is locked while it
/// runs). Exit 0 clean (check) or salvaged, 1 damage found (check) or the
/// salvage refused or failed, 64 bad config.
fn journal(action: JournalAction, path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("handover: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let cipher = match config.journal_cipher() {
        Ok(cipher) => cipher,
        Err(err) => {
            eprintln!("handover: journal key: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let dir = &config.journal.dir;
    let config_arg = path.display().to_string();
    match action {
        JournalAction::Check => match handover::journal::check(dir, &cipher) {
            Ok(report) => {
                write_stdout(&handover::cli::render_journal_check(&report, &config_arg));
                if report.clean() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_PROBLEM)
                }
            }
            Err(err) => {
                eprintln!("handover: {err}");
                ExitCode::from(EXIT_PROBLEM)
            }
        },
        JournalAction::Salvage => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                .to_string();
            match handover::journal::salvage(dir, &cipher, &stamp) {
                Ok(salvaged) => {
                    write_stdout(&handover::cli::render_salvage(&salvaged));
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("handover: {err}");
                    ExitCode::from(EXIT_PROBLEM)
                }
            }
        }
    }
}

/// `check` with a PostgreSQL store: connects (without changing anything)
/// and compares the schema version with this build's.
fn check_store(store: &handover::store::Config) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::from(EXIT_PROBLEM);
    };
    match runtime.block_on(handover::store::probe(store)) {
        Ok(schema) if schema.found > schema.supported => {
            eprintln!(
                "handover: store: the database schema is at version {}, newer than this build's {}; upgrade handover",
                schema.found, schema.supported
            );
            ExitCode::from(EXIT_PROBLEM)
        }
        Ok(schema) if schema.found < schema.supported => {
            eprintln!(
                "handover: store: PostgreSQL reachable; schema version {} (this build: {}), `serve` migrates it at start",
                schema.found, schema.supported
            );
            ExitCode::SUCCESS
        }
        Ok(schema) => {
            eprintln!(
                "handover: store: PostgreSQL reachable; schema version {} is current",
                schema.found
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("handover: {err}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

fn serve(path: &std::path::Path, log_format: LogFormat) -> ExitCode {
    // Validate before anything else: a bad config never binds a socket.
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("handover: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(log_format);
    for warning in &config.warnings {
        tracing::warn!(warning = %warning, "check the config");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("handover: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_PROBLEM);
        }
    };
    let result = runtime.block_on(async {
        let listeners = handover::app::Listeners::bind(&config).await?;
        handover::app::run(listeners, config, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("handover: {err}");
            ExitCode::from(EXIT_PROBLEM)
        }
    }
}

/// Completes on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only ctrl-c stops the proxy");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
