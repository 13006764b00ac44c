//! Group-commit throughput and latency of `Store::apply`, the broker's durable write path.
//!
//! One writer applies batches back to back, as the broker's persister does. Each batch holds
//! `TERN_BENCH_BATCH` (default 500) publications of one QoS 1 message to one persistent
//! session: `PutMessage` + `PutDelivery`, interleaved as the broker emits them. The "steady"
//! workload also acknowledges the previous batch's deliveries (`DeleteDelivery`), so the
//! tables stay small. Figures: messages/s over the run, and batch latency percentiles.
//!
//! Run (docs/persistence.md has the figures):
//!   scripts/postgres.sh start --durable      # fsync on: the figures must include it
//!   TERN_TEST_POSTGRES_URL=... cargo bench -p tern-store --bench apply
//! Env: TERN_BENCH_BACKENDS (default "sqlite-full,sqlite-normal,postgres"; postgres needs
//!      TERN_TEST_POSTGRES_URL and is skipped without it), TERN_BENCH_BATCHES (default 1000;
//!      after 20 unmeasured warm-up batches that open the pool's connections and prepare the
//!      statements, as a running broker has long done),
//!      TERN_BENCH_BATCH (default 500), TERN_BENCH_PAYLOAD (bytes, default 100),
//!      TERN_BENCH_RATE (messages/s to pace the writer at; default 0 = as fast as it goes: the
//!      latency at saturation; a rate shows the latency at that load).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::Connection;
use tern_broker::store::{Store, StoreOp, StoredDelivery, StoredMessage, StoredSession};
use tern_store::{Db, SqliteSynchronous, StoreOptions};

const SESSIONS: usize = 100;

/// Batches applied before measuring.
const WARMUP: usize = 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Config {
    batches: usize,
    batch: usize,
    payload: usize,
    rate: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let config = Config {
        batches: env_usize("TERN_BENCH_BATCHES", 1000),
        batch: env_usize("TERN_BENCH_BATCH", 500),
        payload: env_usize("TERN_BENCH_PAYLOAD", 100),
        rate: env_usize("TERN_BENCH_RATE", 0),
    };
    let backends =
        std::env::var("TERN_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite-full,sqlite-normal,postgres".into());
    let pace = if config.rate == 0 {
        "as fast as possible".to_owned()
    } else {
        format!("paced at {} msgs/s", config.rate)
    };
    println!(
        "apply: {} batches of {} publications ({} B payload), one writer, {} sessions, {pace}",
        config.batches, config.batch, config.payload, SESSIONS
    );
    println!("| backend | workload | ops/batch | msgs/s | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    for backend in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        match backend {
            "sqlite-full" => bench_sqlite(config, SqliteSynchronous::Full).await?,
            "sqlite-normal" => bench_sqlite(config, SqliteSynchronous::Normal).await?,
            "postgres" => bench_postgres(config).await?,
            other => anyhow::bail!("unknown backend {other:?}"),
        }
    }
    Ok(())
}

async fn bench_sqlite(config: Config, synchronous: SqliteSynchronous) -> Result<()> {
    let name = match synchronous {
        SqliteSynchronous::Full => "sqlite (synchronous=FULL)",
        SqliteSynchronous::Normal => "sqlite (synchronous=NORMAL)",
    };
    // Next to the build, on the same disk as a real deployment would be (not a tmpfs).
    let dir = tempfile::Builder::new().prefix("tern-bench-").tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let options = StoreOptions { sqlite_synchronous: synchronous, ..StoreOptions::default() };
    for workload in [Workload::Publish, Workload::Steady] {
        let db = tern_store::connect(&url, &options).await?;
        run(&db, name, workload, config).await?;
        db.close().await;
    }
    Ok(())
}

async fn bench_postgres(config: Config) -> Result<()> {
    let Ok(admin_url) = std::env::var("TERN_TEST_POSTGRES_URL") else {
        println!("| postgres | skipped: TERN_TEST_POSTGRES_URL is not set | | | | | |");
        return Ok(());
    };
    let mut admin =
        sqlx::PgConnection::connect(&admin_url).await.context("connect to TERN_TEST_POSTGRES_URL")?;
    let settings: Vec<String> = {
        let mut out = Vec::new();
        for setting in ["server_version", "fsync", "full_page_writes", "wal_sync_method"] {
            let value: String = sqlx::query_scalar(&format!("SHOW {setting}")).fetch_one(&mut admin).await?;
            out.push(format!("{setting}={value}"));
        }
        out
    };
    let name = format!("tern_bench_{}", std::process::id());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => anyhow::bail!("no database name in TERN_TEST_POSTGRES_URL"),
    };
    let label = format!("postgres ({}; synchronous_commit=on)", settings.join(", "));
    for workload in [Workload::Publish, Workload::Steady] {
        let db = tern_store::connect(&url, &StoreOptions::default()).await?;
        run(&db, &label, workload, config).await?;
        db.close().await;
    }
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// PutMessage + PutDelivery per publication.
    Publish,
    /// The same, plus DeleteDelivery of the previous batch's deliveries (acknowledgements).
    Steady,
}

async fn run(db: &Db, backend: &str, workload: Workload, config: Config) -> Result<()> {
    // Fresh ids per run so both workloads can share a database.
    let base = match workload {
        Workload::Publish => 1_000_000_000,
        Workload::Steady => 2_000_000_000,
    };
    let sessions: Vec<StoreOp> = (0..SESSIONS)
        .map(|i| {
            StoreOp::PutSession(StoredSession {
                client_id: format!("bench-{workload:?}-{i:03}"),
                expiry_interval: 3600,
                protocol: 5,
                disconnected_at: None,
                will: None,
                will_at: None,
                last_seq: 0,
                owner: None,
            })
        })
        .collect();
    db.apply(&sessions).await?;
    let payload = vec![0x5a_u8; config.payload];
    let mut latencies = Vec::with_capacity(config.batches);
    let mut previous: Vec<(String, i64)> = Vec::new();
    let mut ops_per_batch = 0;
    let interval =
        (config.rate > 0).then(|| Duration::from_secs_f64(config.batch as f64 / config.rate as f64));
    let mut started = Instant::now();
    for b in 0..WARMUP + config.batches {
        if b == WARMUP {
            latencies.clear();
            started = Instant::now();
        }
        if let Some(interval) = interval
            && b >= WARMUP
        {
            let due = started + interval * (b - WARMUP) as u32;
            tokio::time::sleep_until(due.into()).await;
        }
        let mut ops = Vec::with_capacity(config.batch * 3);
        if workload == Workload::Steady {
            for (client_id, seq) in previous.drain(..) {
                ops.push(StoreOp::DeleteDelivery { client_id, seq });
            }
        }
        for i in 0..config.batch {
            let id = base + (b * config.batch + i) as i64;
            let client = i % SESSIONS;
            ops.push(StoreOp::PutMessage(StoredMessage {
                id,
                topic: format!("bench/device-{client:03}/temperature"),
                payload: payload.clone(),
                qos: 1,
                retain: false,
                properties: Vec::new(),
                expires_at: None,
                created_at: 1_700_000_000_000 + id,
            }));
            let client_id = format!("bench-{workload:?}-{client:03}");
            ops.push(StoreOp::PutDelivery(StoredDelivery {
                client_id: client_id.clone(),
                seq: id,
                message_id: id,
                qos: 1,
                retain: false,
                subscription_ids: Vec::new(),
                state: 0,
            }));
            if workload == Workload::Steady {
                previous.push((client_id, id));
            }
        }
        ops_per_batch = ops_per_batch.max(ops.len());
        let t0 = Instant::now();
        db.apply(&ops).await?;
        latencies.push(t0.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| -> Duration {
        let i = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1).min(latencies.len() - 1);
        latencies[i]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let rate = (config.batches * config.batch) as f64 / elapsed.as_secs_f64();
    println!(
        "| {backend} | {} | {ops_per_batch} | {rate:.0} | {:.2} | {:.2} | {:.2} |",
        match workload {
            Workload::Publish => "publish",
            Workload::Steady => "publish + ack",
        },
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(pct(1.0)),
    );
    Ok(())
}
