//! A TCP relay in front of a server that a test can sever and restore:
//! severing closes every relayed connection and refuses new ones (they are
//! accepted and closed at once), as a network partition seen by the client
//! would look once its connections time out.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    severed: Arc<AtomicBool>,
    /// Bumped at every sever: live connections watch it and close.
    generation: watch::Sender<u64>,
}

impl Relay {
    /// Relays `127.0.0.1:<free port>` to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let severed = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let relay = Relay {
            addr,
            severed: Arc::clone(&severed),
            generation: generation.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if severed.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let mut cut = generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        relay
    }

    /// Cuts every connection and refuses new ones.
    pub fn sever(&self) {
        self.severed.store(true, Ordering::Release);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.severed.store(false, Ordering::Release);
    }
}
