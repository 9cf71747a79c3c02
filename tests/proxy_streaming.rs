//! Bodies stream both ways: a 50 MiB upload echoed back as a 50 MiB
//! download goes through the proxy without the proxy buffering it. Its own
//! test binary, so the process's memory is this test's alone.
#![allow(clippy::unwrap_used)] // tests unwrap freely; a panic is a failure

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::proxy::{FakeUpstream, TestProxy};

const TOTAL: usize = 50 << 20;
const CHUNK: usize = 64 << 10;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mebibytes_stream_both_ways_with_flat_memory() {
    // The upstream echoes the request body back as it arrives.
    let upstream = FakeUpstream::start(|request: Request<Incoming>| async move {
        let body = request
            .into_body()
            .map_err(handover::http::BoxError::from)
            .boxed_unsync();
        Response::new(body)
    })
    .await;
    let proxy = TestProxy::start(TestProxy::config_for(&upstream.url())).await;
    let client: Client<_, handover::http::Body> =
        Client::builder(TokioExecutor::new()).build_http();

    let baseline = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampler = {
        let peak = std::sync::Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let (mut tx, body) = handover::http::channel_body(4);
    let producer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        for _ in 0..TOTAL / CHUNK {
            tx.send_data(chunk.clone()).await.unwrap();
        }
    });
    let request = Request::put(proxy.url("/c2id/upload")).body(body).unwrap();
    let response = client.request(request).await.unwrap();
    let mut body = response.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(data.iter().all(|b| *b == b'x'));
            received += data.len();
        }
    }
    producer.await.unwrap();
    sampler.abort();
    assert_eq!(received, TOTAL);
    let growth_mib = (peak.load(std::sync::atomic::Ordering::Relaxed) - baseline) / 1024;
    // Buffering the body anywhere (client, proxy or upstream) would add at
    // least 50 MiB; streaming keeps it to a few socket buffers.
    eprintln!("rss growth {growth_mib} MiB");
    assert!(
        growth_mib < 24,
        "memory grew by {growth_mib} MiB while streaming 50 MiB"
    );
}
