//! `cargo xtask bench` (or `mlag-bench center`): the config center's figures
//! against a real center in this process (real HTTP on loopback, real redb
//! file).
//!
//! - Long-poll notification: [`WAITERS`] devices each hold a long poll (one
//!   TCP connection each, as real devices do); once the center counts every
//!   one of them as held, one change is put and each answer's arrival is
//!   timed from the start of the put. Every answer must carry the new
//!   version: one that does not (answered by its timeout, i.e. a lost
//!   notification) is counted and printed.
//! - Durable writes per second: one writer waiting for each write, then
//!   [`WRITERS`] concurrent writers (what group commit is for). Each write
//!   is acknowledged only after its transaction is fsynced.
//! - Rollout planning time for a large fleet.
//!
//! The client side is a minimal HTTP/1.1 exchange on a raw socket so that
//! the figures are the center's, not a client library's. Timings are
//! printed, never asserted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sync_agent::rollout::{
    center::{self, CenterConfig, RolloutOptions},
    wire::{ConfigKey, Format, PutConfig, Register, ServiceRegistration},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Long polls held when the change is put.
pub const WAITERS: usize = 10_000;
/// Sequential writes measured.
pub const WRITES: usize = 1_000;
/// Concurrent writers, and writes each makes.
pub const WRITERS: usize = 64;
pub const WRITES_PER_WRITER: usize = 50;
const PLAN_DEVICES: usize = 100_000;
const PLAN_SERVICES: usize = 10;
/// Connections opened at once while the waiters arrive.
const CONNECT_AT_ONCE: usize = 512;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn put(content: &str) -> PutConfig {
    PutConfig {
        format: Format::Text,
        content: content.into(),
        description: String::new(),
        author: "bench".into(),
    }
}

/// Sends one GET on `stream` and reads its answer: (status, body).
async fn get(stream: &mut tokio::net::TcpStream, path: &str) -> anyhow::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: center\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let (head_end, length) = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the answer's head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .context("answer without content-length")?;
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed in the answer's body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = std::str::from_utf8(&buf[9..12])?.parse()?;
    Ok((
        status,
        String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned(),
    ))
}

/// Runs the center benchmark and prints its figures.
pub fn run() -> anyhow::Result<()> {
    // Each waiting request holds a socket at both ends.
    let limit = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: setrlimit with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!();
    println!("config center (SPEC 6), real HTTP and redb on this machine:");
    runtime.block_on(async {
        let config = CenterConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            db_path: dir.path().join("bench.redb"),
            ..Default::default()
        };
        let (addr, center, server) =
            center::bind_with_shutdown(config, std::future::pending()).await?;
        tokio::spawn(server);
        long_polls(addr, &center).await?;
        writes(&center).await
    })?;
    let steps: Vec<(String, Vec<String>)> = (0..PLAN_DEVICES)
        .map(|d| {
            (
                format!("dev{d}"),
                (0..PLAN_SERVICES).map(|s| format!("svc{s}")).collect(),
            )
        })
        .collect();
    let start = Instant::now();
    let batches = center::plan(&steps, 100);
    println!(
        "  rollout planning: {PLAN_DEVICES} devices x {PLAN_SERVICES} services in {:.1} ms ({} batches of at most 100 steps)",
        ms(start.elapsed()),
        batches.len()
    );
    Ok(())
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

async fn long_polls(addr: SocketAddr, center: &Arc<center::Center>) -> anyhow::Result<()> {
    let key: ConfigKey = "bench/prod/common".parse().map_err(err)?;
    let v1 = center
        .put(key.clone(), put("v1"), RolloutOptions::default())
        .await
        .map_err(err)?;
    // Registered concurrently: the group commit takes them in batches.
    let mut registering = tokio::task::JoinSet::new();
    for d in 0..WAITERS {
        let registration = Register {
            services: vec![ServiceRegistration {
                name: "s".into(),
                config: key.clone(),
                depends_on: vec![],
            }],
            ..Default::default()
        };
        let center = center.clone();
        registering.spawn(async move { center.register(format!("dev{d}"), registration).await });
    }
    while let Some(done) = registering.join_next().await {
        done?.map_err(err)?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let early: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECT_AT_ONCE));
    for d in 0..WAITERS {
        let path = format!(
            "/v1/devices/dev{d}/watch?have=s:{}&timeout_ms=120000",
            v1.md5
        );
        let (tx, connecting, early) = (tx.clone(), connecting.clone(), early.clone());
        tokio::spawn(async move {
            let answer = async {
                let permit = connecting.acquire_owned().await?;
                let mut stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                drop(permit);
                get(&mut stream, &path).await
            }
            .await;
            // Only the change should answer: anything before it is wrong.
            let mut early = early.lock().unwrap();
            if early.len() < 3 {
                early.push(match &answer {
                    Ok((status, body)) => format!("{status} {body}"),
                    Err(e) => format!("{e:#}"),
                });
            }
            drop(early);
            let _ = tx.send((Instant::now(), answer));
        });
    }
    drop(tx);
    // Every poll must be held by the center before the change, or the
    // figure would mix in polls answered at once on arrival.
    // (Polls time out after 120 s: the ramp must be done well before.)
    let deadline = Instant::now() + Duration::from_secs(100);
    while center.waiting_polls() < WAITERS {
        let answered: Vec<String> = early.lock().unwrap().iter().take(3).cloned().collect();
        if !answered.is_empty() {
            bail!(
                "long polls answered before any change ({} held): {answered:?}",
                center.waiting_polls()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {WAITERS} long polls held after 100 s",
                center.waiting_polls()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    let opts = RolloutOptions {
        batch_size: Some(WAITERS),
        ..Default::default()
    };
    let v2 = center
        .put(key.clone(), put("v2"), opts)
        .await
        .map_err(err)?;
    let put_took = start.elapsed();
    let expect = format!("\"md5\":\"{}\"", v2.md5);
    let mut latencies = Vec::with_capacity(WAITERS);
    let (mut failed, mut empty) = (0, 0);
    while let Some((at, answer)) = rx.recv().await {
        match answer {
            Ok((200, body)) if body.contains(&expect) => {
                latencies.push(at.saturating_duration_since(start))
            }
            Ok((200, _)) => empty += 1,
            _ => failed += 1,
        }
    }
    latencies.sort();
    if latencies.is_empty() {
        println!("  long poll: no answer carried the change ({failed} failed, {empty} empty)");
        return Ok(());
    }
    println!(
        "  long-poll notification, {} held polls answered by one change (put {:.1} ms incl. fsync): p50 {:.1} ms, p99 {:.1} ms, first {:.1} ms, last {:.1} ms; lost (answered without the change) {empty}, failed {failed}",
        latencies.len(),
        ms(put_took),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies[0]),
        ms(latencies[latencies.len() - 1]),
    );
    Ok(())
}

async fn writes(center: &Arc<center::Center>) -> anyhow::Result<()> {
    let other: ConfigKey = "bench/prod/writes".parse().map_err(err)?;
    let start = Instant::now();
    for i in 0..WRITES {
        center
            .put(
                other.clone(),
                put(&format!("write {i}")),
                RolloutOptions::default(),
            )
            .await
            .map_err(err)?;
    }
    let elapsed = start.elapsed();
    println!(
        "  durable writes, one writer waiting for each: {WRITES} in {:.3} s = {:.0} per s",
        elapsed.as_secs_f64(),
        WRITES as f64 / elapsed.as_secs_f64()
    );
    let start = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let center = center.clone();
        writers.spawn(async move {
            let key: ConfigKey = format!("bench/prod/writer{w}").parse().map_err(err)?;
            for i in 0..WRITES_PER_WRITER {
                center
                    .put(
                        key.clone(),
                        put(&format!("write {i}")),
                        RolloutOptions::default(),
                    )
                    .await
                    .map_err(err)?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let elapsed = start.elapsed();
    let total = WRITERS * WRITES_PER_WRITER;
    println!(
        "  durable writes, {WRITERS} concurrent writers: {total} in {:.3} s = {:.0} per s (each acknowledged after its fsync)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
