//! Limits before CONNECT, in process: `mqtt.connect_timeout` covers authentication (a slow
//! authenticator gets CONNACK 0x89 Server busy when it runs out, counted as
//! `connect_timeout`), and the pending-connection cap applies to `Broker::accept_tcp`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_broker::auth::{AuthFuture, AuthOutcome, Authenticator, ConnectInfo, Principal};
use tern_broker::stats::Refusal;
use tern_broker::{Broker, BrokerConfig, ConnMeta, Security};
use tern_protocol::ReasonCode;
use tern_test_support::{RawClient, connect_v5, connect_v311};
use tokio::io::AsyncReadExt;

/// Allows everyone, after `delay`.
#[derive(Debug)]
struct Slow {
    delay: Duration,
}

impl Authenticator for Slow {
    fn authenticate<'a>(&'a self, info: &'a ConnectInfo<'a>) -> AuthFuture<'a, AuthOutcome> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            AuthOutcome::Allow(Principal {
                client_id: info.client_id.to_string(),
                username: None,
                expires_at: None,
                inline_acl: None,
                limits: None,
            })
        })
    }
}

fn refused(broker: &Broker, why: Refusal) -> u64 {
    let l = broker.stats().listeners.get("tcp");
    l.refused_total().find(|(r, _)| *r == why).map_or(0, |(_, n)| n)
}

async fn serve_with(config: BrokerConfig, security: Security) -> (Broker, std::net::SocketAddr) {
    let broker = Broker::new(config, security);
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

#[tokio::test]
async fn authentication_counts_against_the_connect_timeout() {
    let mut config = BrokerConfig::default();
    config.mqtt.connect_timeout = 1;
    let security = Security {
        authenticator: Arc::new(Slow { delay: Duration::from_secs(30) }),
        authorizer: Security::allow_all().authorizer,
    };
    let (broker, addr) = serve_with(config, security).await;
    let start = Instant::now();
    let (_c, ack) = RawClient::connect(addr, connect_v5("slow-auth")).await.unwrap();
    let took = start.elapsed();
    assert_eq!(ack.reason_code, ReasonCode::ServerBusy, "{ack:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "answered after {took:?}");
    // 3.1.1: return code 3 Server unavailable.
    let (_c, ack) = RawClient::connect(addr, connect_v311("slow-auth-3")).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::ServerUnavailable, "{ack:?}");
    assert!(common::eventually(|| refused(&broker, Refusal::ConnectTimeout) == 2).await);
    assert!(common::eventually(|| broker.pending_connections() == 0).await);
}

#[tokio::test]
async fn pending_cap_applies_to_accept_tcp_and_frees_on_connect() {
    let mut config = BrokerConfig::default();
    config.limits.max_pending_connections = 2;
    let (broker, addr) = common::serve(config).await;
    let a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(common::eventually(|| broker.pending_connections() == 2).await);
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the third pending connection must be closed at once");
    assert_eq!(refused(&broker, Refusal::TooManyPending), 1);
    drop(a);
    assert!(common::eventually(|| broker.pending_connections() == 1).await);
    let (_d, ack) = RawClient::connect(addr, connect_v5("after")).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(
        common::eventually(|| broker.pending_connections() == 1).await,
        "a connected client is not pending"
    );
}
