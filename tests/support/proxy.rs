//! The proxy harness: a scriptable fake upstream, `TestProxy` running the
//! real `app::run` on ephemeral ports, HTTP clients, and test certificates.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use handover::config::Config;
use handover::http::{Body, BoxError};
use handover::tls::Files as TlsFiles;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the fake upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: usize,
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// An in-process upstream on `127.0.0.1:0` that records every request.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    /// Starts an upstream answering with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |request| Box::pin(handler(request)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let seen_in = Arc::clone(&seen);
        let task = tokio::spawn(handover::http::serve(
            listener,
            move |request: Request<Incoming>, _peer| {
                let handler = Arc::clone(&handler);
                let seen = Arc::clone(&seen_in);
                async move {
                    let record = Seen {
                        method: request.method().clone(),
                        uri: request.uri().clone(),
                        version: request.version(),
                        headers: request.headers().clone(),
                        body_len: 0,
                    };
                    seen.lock().unwrap().push(record);
                    Ok::<_, BoxError>(handler(request).await)
                }
            },
            stop.clone(),
        ));
        Self {
            addr,
            seen,
            stop,
            task: Some(task),
        }
    }

    /// An upstream that answers every request with a JSON description of
    /// it and echoes the body length (reading the whole body).
    pub async fn echo() -> Self {
        Self::start(|request: Request<Incoming>| async move {
            let (parts, body) = request.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let headers: serde_json::Map<String, serde_json::Value> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        serde_json::Value::from(v.to_str().unwrap_or("?")),
                    )
                })
                .collect();
            let description = serde_json::json!({
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "headers": headers,
                "body": String::from_utf8_lossy(&bytes),
            });
            handover::http::json_response(StatusCode::OK, &description)
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The real proxy (`app::run`) on ephemeral loopback ports.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The journal directory, removed on drop unless the test chose its own.
    pub journal_dir: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), handover::app::Error>>>,
}

impl TestProxy {
    /// Starts the proxy with a fresh temporary journal directory.
    pub async fn start(mut config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        config.journal.dir = dir.path().to_owned();
        let mut proxy = Self::start_with_journal(config).await;
        proxy.journal_dir = Some(dir);
        proxy
    }

    /// Starts the proxy on a bound listener with a fresh journal directory.
    pub async fn start_on_with_journal_dir(proxy: TcpListener, mut config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        config.journal.dir = dir.path().to_owned();
        let mut started = Self::start_on(proxy, config).await;
        started.journal_dir = Some(dir);
        started
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self) {
        let http = client();
        let url = self.admin_url("/readyz");
        let ready = eventually(Duration::from_secs(10), || async {
            match http
                .request(Request::get(&url).body(Full::default()).unwrap())
                .await
            {
                Ok(response) => response.status() == StatusCode::OK,
                Err(_) => false,
            }
        })
        .await;
        assert!(ready, "the proxy never became ready");
    }

    /// Starts the proxy on `config.journal.dir` as given (restart tests).
    pub async fn start_with_journal(config: Config) -> Self {
        let proxy = TcpListener::bind(config.proxy.listen).await.unwrap();
        Self::start_on(proxy, config).await
    }

    /// Starts the proxy on an already bound downstream listener.
    pub async fn start_on(proxy: TcpListener, config: Config) -> Self {
        let listeners = handover::app::Listeners {
            proxy,
            admin: TcpListener::bind(config.admin.listen).await.unwrap(),
        };
        let addr = listeners.proxy.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(handover::app::run(listeners, config, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin,
            journal_dir: None,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A config forwarding to `upstream` (the target is a dead address that
    /// nothing in these tests contacts).
    pub fn config_for(upstream: &str) -> Config {
        Config::for_test(upstream, "http://127.0.0.1:9/", "test-token")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Triggers shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Triggers shutdown and waits for `app::run` to return.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    /// Like [`TestProxy::shutdown`], in place (for a restart through a
    /// `&mut` owner).
    pub async fn stop(&mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn join(mut self) {
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a request and collects the response.
pub async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> (http::response::Parts, Bytes) {
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts, bytes)
}

pub async fn get(client: &HttpClient, url: &str) -> (http::response::Parts, Bytes) {
    send(client, Request::get(url).body(Full::default()).unwrap()).await
}

/// Polls `check` until it returns true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A self-signed certificate for `localhost`, written to a temp dir.
pub struct TestCert {
    pub dir: tempfile::TempDir,
    pub files: TlsFiles,
    pub cert_der: Vec<u8>,
}

impl TestCert {
    pub fn generate() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path: PathBuf = dir.path().join("tls.crt");
        let key_path: PathBuf = dir.path().join("tls.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Self {
            files: TlsFiles {
                cert: cert_path,
                key: key_path,
            },
            cert_der: cert.der().to_vec(),
            dir,
        }
    }
}

/// A response that arrives after `delay`, for the timeout and shutdown tests.
pub async fn delayed_response(delay: Duration) -> Response<Body> {
    tokio::time::sleep(delay).await;
    handover::http::text_response(StatusCode::OK, "slow but complete\n")
}
