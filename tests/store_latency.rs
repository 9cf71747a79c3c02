//! A by-hand timing of the PostgreSQL store's per-write path, not a test
//! of it (nothing here asserts a duration): sequential one-record appends,
//! then claims and acks of one lane, through a relay that counts the
//! client's bursts to the server (each burst is a round trip the client
//! waited for; pipelined messages travel in one). Run it on a quiet
//! machine:
//!
//! `cargo test --release --test store_latency -- --ignored --nocapture`
//! (the figures go to stderr)

#![allow(clippy::unwrap_used)]

#[path = "support/pg.rs"]
mod pg;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use handover::journal::{self, Cipher};
use handover::store::{self, Handle, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const APPENDS: u32 = 2_000;
const CLAIMS: u32 = 200;

/// Relays to `upstream`, counting the reads from the client side.
async fn counting_relay(upstream: SocketAddr, bursts: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let bursts = Arc::clone(&bursts);
            tokio::spawn(async move {
                client.set_nodelay(true).unwrap();
                let server = TcpStream::connect(upstream).await.unwrap();
                server.set_nodelay(true).unwrap();
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let up = async move {
                    let mut buf = vec![0; 64 * 1024];
                    loop {
                        let n = client_rx.read(&mut buf).await.unwrap_or(0);
                        if n == 0 || server_tx.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        bursts.fetch_add(1, Ordering::Relaxed);
                    }
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

#[tokio::test]
#[ignore = "a timing to run by hand, in release mode"]
async fn sequential_appends_claims_and_acks() {
    let db = pg::TestDb::create().await;
    let bursts = Arc::new(AtomicU64::new(0));
    let relay = counting_relay(db.addr(), Arc::clone(&bursts)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Handle::open(
        &store::Config::postgres(db.url_via(relay)),
        &journal::Config::new(dir.path()),
        Cipher::new([7; 32]),
    )
    .await
    .unwrap();
    // Warm: the pool's connections open and (if cached) prepare.
    for _ in 0..20 {
        let record = Record {
            lane: b"warm".to_vec(),
            body: b"warm".to_vec(),
        };
        store.append(vec![record]).await.unwrap();
    }
    let claimed = store
        .claim("warm", 100, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .ack(&claimed.iter().map(|c| c.seq).collect::<Vec<_>>())
        .await
        .unwrap();

    let before = bursts.load(Ordering::Relaxed);
    let started = Instant::now();
    for i in 0..APPENDS {
        let record = Record {
            lane: format!("lane {i}").into_bytes(),
            body: vec![b'x'; 200],
        };
        store.append(vec![record]).await.unwrap();
    }
    report(
        "append",
        APPENDS,
        started,
        bursts.load(Ordering::Relaxed) - before,
    );

    let before = bursts.load(Ordering::Relaxed);
    let started = Instant::now();
    for _ in 0..CLAIMS {
        let claimed = store
            .claim("timing", 1, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
    }
    report(
        "claim",
        CLAIMS,
        started,
        bursts.load(Ordering::Relaxed) - before,
    );

    let claimed = store
        .claim("timing acks", 1_000, Duration::from_secs(60))
        .await
        .unwrap();
    let before = bursts.load(Ordering::Relaxed);
    let started = Instant::now();
    let acks = u32::try_from(claimed.len().min(1_000)).unwrap();
    for record in claimed.iter().take(1_000) {
        store.ack(&[record.seq]).await.unwrap();
    }
    report(
        "ack",
        acks,
        started,
        bursts.load(Ordering::Relaxed) - before,
    );
}

/// Prints one operation's figures: µs and client bursts (round trips) each.
fn report(name: &str, count: u32, started: Instant, bursts: u64) {
    eprintln!(
        "{name}: {count} sequential, {:.0} µs each, {:.2} client bursts each",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(count),
        bursts as f64 / f64::from(count),
    );
}
