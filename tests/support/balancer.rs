//! A TCP load balancer for tests, like a Kubernetes Service in front of hub replicas: one
//! loopback address; each connection goes to the next backend in turn that accepts it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running balancer; stops when dropped.
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Balancer {
    /// Balances connections over `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let next = Arc::new(AtomicUsize::new(0));
        let backends = Arc::new(backends);
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let (backends, next, token) = (backends.clone(), next.clone(), token.clone());
                tokio::spawn(async move {
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..backends.len() {
                        let backend = backends[(start + i) % backends.len()];
                        if let Ok(mut server) = TcpStream::connect(backend).await {
                            let mut client = client;
                            tokio::select! {
                                _ = token.cancelled() => {}
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            }
                            return;
                        }
                    }
                });
            }
        });
        Balancer { addr, stop }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
