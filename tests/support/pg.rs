//! A PostgreSQL database of its own for each test, so tests run in parallel.
//!
//! The server is found, once per test binary, in this order:
//!
//! 1. `HANDOVER_TEST_DATABASE_URL` (a URL or key=value string; its user must
//!    be allowed to create databases);
//! 2. the server at `127.0.0.1:5432` (user `postgres`, trust auth, database
//!    `test`), if it answers;
//! 3. a throwaway cluster started from `/usr/lib/postgresql/*/bin`
//!    (`initdb`, `postgres`) in a temporary directory on a free port, as the
//!    `postgres` user when running as root. It stops when the test binary
//!    exits (its shell watches our stdin pipe) and removes its directory.
//!
//! If none works the test **fails**, saying how to install PostgreSQL.
//! [`TestDb::create`] makes a database with a unique name; dropping the
//! [`TestDb`] drops it.

#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tokio_postgres::NoTls;
use tokio_postgres::config::{Host, SslMode};

const HOW_TO_INSTALL: &str = "no PostgreSQL server for the store tests: set HANDOVER_TEST_DATABASE_URL \
     (e.g. postgres://postgres@127.0.0.1:5432/test), run a server at 127.0.0.1:5432 \
     (user postgres, trust auth, database test), or install the server binaries \
     (Debian/Ubuntu: `apt-get install postgresql`; the tests then start a throwaway cluster \
     from /usr/lib/postgresql/*/bin)";

/// Where the server is: a key=value prefix without `dbname`, and the
/// database to connect to for CREATE/DROP DATABASE.
#[derive(Debug, Clone)]
struct Server {
    base: String,
    admin_db: String,
}

/// The throwaway cluster's process, kept for the life of the binary: when
/// the process exits its stdin pipe closes, and the shell stops the server.
static CLUSTER: Mutex<Option<(Child, ChildStdin)>> = Mutex::new(None);

static SERVER: OnceCell<Result<Server, String>> = OnceCell::const_new();

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The key=value form of `config`, without the database name.
fn base_of(config: &tokio_postgres::Config) -> String {
    let mut parts = Vec::new();
    if let Some(host) = config.get_hosts().first() {
        match host {
            Host::Tcp(name) => parts.push(format!("host={}", quote(name))),
            Host::Unix(path) => parts.push(format!("host={}", quote(&path.to_string_lossy()))),
        }
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote(&String::from_utf8_lossy(password))
        ));
    }
    let mode = match config.get_ssl_mode() {
        SslMode::Disable => "disable",
        SslMode::Require => "require",
        _ => "prefer",
    };
    parts.push(format!("sslmode={mode}"));
    parts.join(" ")
}

async fn answers(conninfo: &str) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(|err| err.to_string())?;
    let driver = tokio::spawn(connection);
    let result = client
        .simple_query("SELECT 1")
        .await
        .map(drop)
        .map_err(|err| err.to_string());
    drop(client);
    let _ = driver.await;
    result
}

async fn find_server() -> Result<Server, String> {
    if let Ok(url) = std::env::var("HANDOVER_TEST_DATABASE_URL") {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| "HANDOVER_TEST_DATABASE_URL is not a PostgreSQL URL".to_owned())?;
        let server = Server {
            base: base_of(&config),
            admin_db: config.get_dbname().unwrap_or("postgres").to_owned(),
        };
        answers(&format!(
            "{} dbname={}",
            server.base,
            quote(&server.admin_db)
        ))
        .await
        .map_err(|err| format!("HANDOVER_TEST_DATABASE_URL does not answer: {err}"))?;
        return Ok(server);
    }
    let local = Server {
        base: "host=127.0.0.1 port=5432 user=postgres sslmode=disable connect_timeout=3".to_owned(),
        admin_db: "test".to_owned(),
    };
    let local_error = match answers(&format!("{} dbname=test", local.base)).await {
        Ok(()) => return Ok(local),
        Err(err) => err,
    };
    let server = tokio::task::spawn_blocking(start_cluster)
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| {
            format!("{HOW_TO_INSTALL}\n(127.0.0.1:5432: {local_error}; throwaway cluster: {err})")
        })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match answers(&format!("{} dbname=postgres", server.base)).await {
            Ok(()) => return Ok(server),
            Err(err) if Instant::now() > deadline => {
                return Err(format!(
                    "{HOW_TO_INSTALL}\n(the throwaway cluster did not answer: {err})"
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|err| format!("/usr/lib/postgresql: {err}"))?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no /usr/lib/postgresql/*/bin/initdb".to_owned())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The command, run as `postgres` when we are root (initdb refuses root).
fn as_server_user(program: &Path, root: bool) -> Command {
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn start_cluster() -> Result<Server, String> {
    let bin = bin_dir()?;
    let root = is_root();
    let dir = tempfile::Builder::new()
        .prefix("handover-pg-")
        .tempdir()
        .map_err(|err| err.to_string())?
        .keep();
    if root {
        let status = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(&dir)
            .status()
            .map_err(|err| format!("chown: {err}"))?;
        if !status.success() {
            return Err("cannot give the cluster directory to the postgres user".to_owned());
        }
    }
    let data = dir.join("data");
    let out = as_server_user(&bin.join("initdb"), root)
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync"])
        .output()
        .map_err(|err| format!("initdb: {err}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|err| err.to_string())?
        .port();
    let script = r#""$1/postgres" -D "$2" -p "$3" -k "$4" -c listen_addresses=127.0.0.1 -F >"$4/log" 2>&1 &
pid=$!
read _line
kill -INT "$pid"
wait "$pid"
rm -rf "$4""#;
    let mut child = as_server_user(Path::new("sh"), root)
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(&bin)
        .arg(&data)
        .arg(port.to_string())
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("start postgres: {err}"))?;
    let stdin = child.stdin.take().expect("stdin is piped");
    *CLUSTER.lock().unwrap() = Some((child, stdin));
    Ok(Server {
        base: format!("host=127.0.0.1 port={port} user=postgres sslmode=disable"),
        admin_db: "postgres".to_owned(),
    })
}

/// A database of one's own.
#[derive(Debug)]
pub struct TestDb {
    /// The connection string (key=value form) of the database.
    pub url: String,
    name: String,
    admin: String,
}

impl TestDb {
    /// Creates a database with a unique name; panics (the test fails) when
    /// no server can be found, saying how to get one.
    pub async fn create() -> TestDb {
        let server = match SERVER.get_or_init(find_server).await {
            Ok(server) => server.clone(),
            Err(message) => panic!("{message}"),
        };
        let name = format!(
            "handover_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        );
        let admin = format!("{} dbname={}", server.base, quote(&server.admin_db));
        let (client, connection) = tokio_postgres::connect(&admin, NoTls)
            .await
            .expect("connect to the test server");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create a test database");
        TestDb {
            url: format!("{} dbname={}", server.base, quote(&name)),
            name,
            admin,
        }
    }

    /// The connection string of this database through `addr` (a relay).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let config: tokio_postgres::Config = self.url.parse().unwrap();
        let mut parts = vec![
            format!("host={}", addr.ip()),
            format!("port={}", addr.port()),
        ];
        if let Some(user) = config.get_user() {
            parts.push(format!("user={}", quote(user)));
        }
        if let Some(password) = config.get_password() {
            parts.push(format!(
                "password={}",
                quote(&String::from_utf8_lossy(password))
            ));
        }
        parts.push("sslmode=disable".to_owned());
        parts.push(format!("dbname={}", quote(&self.name)));
        parts.join(" ")
    }

    /// Where the server listens (TCP).
    pub fn addr(&self) -> std::net::SocketAddr {
        let config: tokio_postgres::Config = self.url.parse().unwrap();
        let host = match &config.get_hosts()[0] {
            Host::Tcp(host) => host.clone(),
            Host::Unix(_) => panic!("the test database must be reached over TCP"),
        };
        let ip: std::net::IpAddr = if host == "localhost" {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            host.parse().unwrap()
        };
        std::net::SocketAddr::new(ip, config.get_ports()[0])
    }

    /// A client of the database, for looking at the raw tables.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime: do it on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for dropping the test database");
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&admin, NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if let Ok(Err(err)) = dropped {
            let _ = writeln!(std::io::stderr(), "cannot drop test database: {err}");
        }
    }
}

/// A throwaway cluster of one's own, for tests that restart the server or
/// change its settings (never the shared server: other tests use it in
/// parallel). Runs as `postgres` when we are root; stopped and removed
/// when dropped.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    root: bool,
    /// Holds the data directory, the socket and the log.
    dir: PathBuf,
    /// Where it listens (127.0.0.1).
    pub port: u16,
}

/// How a [`Cluster`] is set up.
#[derive(Debug, Default)]
pub struct ClusterOptions {
    /// PEM certificate and key: `ssl = on` with them.
    pub tls: Option<(String, String)>,
}

impl Cluster {
    /// Initializes and starts a cluster on a free port; panics (the test
    /// fails) without the server binaries, saying how to install them.
    pub fn start(options: &ClusterOptions) -> Cluster {
        let bin = bin_dir().unwrap_or_else(|err| panic!("{HOW_TO_INSTALL}\n({err})"));
        let root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("handover-pg-own-")
            .tempdir()
            .unwrap()
            .keep();
        let data = dir.join("data");
        if let Some((cert, key)) = &options.tls {
            std::fs::write(dir.join("server.crt"), cert).unwrap();
            std::fs::write(dir.join("server.key"), key).unwrap();
            // The server refuses a key others may read.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(
                dir.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        if root {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(
                status.success(),
                "cannot give {} to postgres",
                dir.display()
            );
        }
        let out = as_server_user(&bin.join("initdb"), root)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        // The tests measure outcomes, not durability against power loss.
        writeln!(conf, "fsync = off").unwrap();
        if options.tls.is_some() {
            writeln!(conf, "ssl = on").unwrap();
            writeln!(
                conf,
                "ssl_cert_file = '{}'",
                dir.join("server.crt").display()
            )
            .unwrap();
            writeln!(
                conf,
                "ssl_key_file = '{}'",
                dir.join("server.key").display()
            )
            .unwrap();
        }
        drop(conf);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            bin,
            root,
            dir,
            port,
        };
        cluster.pg_ctl(&["start"]);
        cluster
    }

    fn pg_ctl(&self, action: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let out = as_server_user(&self.bin.join("pg_ctl"), self.root)
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "-o", &options])
            .args(action)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {action:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// Stops the server (`-m fast`: sessions are disconnected, as in a
    /// failover or a restart for maintenance); returns when it is down.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    /// Starts it again on the same data and port; returns when it accepts
    /// connections.
    pub fn resume(&self) {
        self.pg_ctl(&["start"]);
    }

    /// The key=value connection string of database `test` (created on
    /// first use) with `extra` settings (e.g. `sslmode=require`).
    pub async fn database(&self, extra: &str) -> String {
        let admin = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&admin, NoTls).await.unwrap();
        tokio::spawn(connection);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = 'test'", &[])
            .await
            .unwrap()
            .is_some();
        if !exists {
            client.batch_execute("CREATE DATABASE test").await.unwrap();
        }
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=test {extra}",
            self.port
        )
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_server_user(&self.bin.join("pg_ctl"), self.root)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "stop", "-m", "immediate"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
