//! Shared by the in-process tests: a broker without a store on a free loopback port, and a
//! poll-until helper (the broker updates its state asynchronously).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tern_broker::{Broker, BrokerConfig, ConnMeta, Security};

/// A broker without a store, allowing everyone, serving on a free loopback port.
pub(crate) async fn serve(config: BrokerConfig) -> (Broker, SocketAddr) {
    let broker = Broker::new(config, Security::allow_all());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let b = broker.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            b.accept_tcp(stream, peer, ConnMeta::plain("tcp"));
        }
    });
    (broker, addr)
}

/// Polls `f` every 20 ms until it holds, for up to 2 s; returns whether it did.
pub(crate) async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
