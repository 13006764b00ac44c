//! The NATS cluster harness itself (tests/src/nats.rs): a 3-node nats-server cluster with
//! JetStream forms (health, routes, one meta leader), survives the loss of a node and takes it
//! back. Needs `nats-server` (`apt-get install nats-server`); fails without it.
//!
//! Run alone: `TERN_E2E_NO_BUILD=1 cargo test -p tern-e2e --test nats_harness`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tern_e2e::nats::{NatsAuth, NatsCluster};

async fn routes(c: &NatsCluster, i: usize) -> Result<u64> {
    let routez = c.monitor(i, "/routez").await?;
    routez["num_routes"].as_u64().with_context(|| format!("no num_routes in {routez}"))
}

async fn check(c: &NatsCluster, expect_running: &[usize]) -> Result<()> {
    ensure!(c.running() == expect_running, "running {:?}, expected {expect_running:?}", c.running());
    c.health().await?.map_err(anyhow::Error::msg)?;
    let leader = c.meta_leader(expect_running[0]).await?.context("no meta leader")?;
    ensure!(
        expect_running.iter().any(|&i| c.server_name(i) == leader),
        "meta leader {leader} is not a running node"
    );
    for &i in expect_running {
        let (status, body) = c.http_get(i, "/healthz").await?;
        ensure!(status == 200 && body.contains("\"ok\""), "node {i}: /healthz {status} {body}");
        ensure!(routes(c, i).await? == expect_running.len() as u64 - 1, "node {i}: routes");
        ensure!(c.meta_leader(i).await?.as_deref() == Some(leader.as_str()), "node {i}: leader");
        c.ping(i).await.with_context(|| format!("node {i}: client port"))?;
    }
    Ok(())
}

#[tokio::test]
async fn three_nodes_lose_one_and_take_it_back() -> Result<()> {
    let c = NatsCluster::start(3).await?;
    let urls = c.urls();
    ensure!(urls.len() == 3 && urls.iter().all(|u| u.starts_with("nats://127.0.0.1:")), "{urls:?}");
    ensure!(c.url_list() == urls.join(","), "{}", c.url_list());
    check(&c, &[0, 1, 2]).await.with_context(|| c.log_tails(30))?;

    c.kill(1);
    ensure!(!c.is_running(1), "node 1 still running after kill");
    ensure!(c.ping(1).await.is_err(), "node 1's client port still answers");
    // The survivors keep a quorum (2 of 3): routes drop to 1, and a meta leader among them
    // (a new one if node 1 led) within a few seconds.
    c.wait_healthy(Duration::from_secs(30)).await?;
    check(&c, &[0, 2]).await.with_context(|| c.log_tails(30))?;

    c.restart(1).await?;
    check(&c, &[0, 1, 2]).await.with_context(|| c.log_tails(30))?;
    ensure!(c.logs(1).matches("--- tern-e2e: starting").count() == 2, "node 1's log: {}", c.logs(1));
    Ok(())
}

/// Client authentication on a single node: CONNECT without the password is refused.
#[tokio::test]
async fn password_protected_node() -> Result<()> {
    let auth = NatsAuth::UserPassword { user: "tern".into(), password: "s3cret \"quoted\"".into() };
    let c = NatsCluster::start_with(1, auth).await?;
    c.ping(0).await?;
    let open = NatsCluster::start(1).await?;
    open.ping(0).await?;
    // The open node's harness sends no credentials; the protected one must refuse that.
    let mut anonymous = tokio::net::TcpStream::connect(("127.0.0.1", port_of(&c.url(0)))).await?;
    let err = refused(&mut anonymous).await?;
    ensure!(err.contains("Authorization Violation"), "{err}");
    Ok(())
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("nats://host:port")
}

async fn refused(s: &mut tokio::net::TcpStream) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n").await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = s.read(&mut buf).await?;
            got.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&got).contains("-ERR") {
                return anyhow::Ok(());
            }
        }
    })
    .await??;
    Ok(String::from_utf8_lossy(&got).into_owned())
}
