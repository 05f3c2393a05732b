//! `cargo xtask bench` (or `mlag-bench center`): the config center's figures
//! against a real center in this process (real HTTP on loopback, real redb
//! file).
//!
//! - Long-poll notification: [`WAITERS`] devices each hold a long poll (one
//!   TCP connection each, as real devices do), opened by a child process
//!   (`mlag-bench center-waiters`) so that neither side needs more than
//!   [`WAITERS`] sockets (two per poll in one process would not fit a
//!   20,000 open-file hard limit, and raising it needs CAP_SYS_RESOURCE).
//!   Each process raises its open-file limit and fails loudly if it cannot.
//!   Once the center counts every poll as held, one change is put and each
//!   answer's arrival (CLOCK_MONOTONIC, the same clock in both processes) is
//!   timed from the start of the put. Every answer must carry the new
//!   version: one answered empty by its timeout (a lost notification), empty
//!   early, or failed is counted and printed. The waiters keep their
//!   connections open until every poll is answered (as devices keep them
//!   for their next requests) and report answers in batched pipe writes,
//!   so the figure is not the clients' own closing and reporting.
//! - Durable writes per second: one writer waiting for each write, then
//!   [`WRITERS`] concurrent writers (what group commit is for). Each write
//!   is acknowledged only after its transaction is fsynced.
//! - Rollout planning time for a large fleet.
//! - On etcd, the time for a rollout to resume after the center running
//!   its engine is SIGKILLed ([`resume_after_kill`]): two centers as real
//!   agent processes on one etcd, a paced rollout in progress.
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
/// Concurrent writers (one round each), and writes each makes.
pub const WRITERS: [usize; 2] = [64, 256];
pub const WRITES_PER_WRITER: usize = 50;
const PLAN_DEVICES: usize = 100_000;
const PLAN_SERVICES: usize = 10;
/// The name of the center's group-commit thread (`writer.rs`).
const WRITER_THREAD: &str = "center-writer";
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

/// The hidden subcommand of `mlag-bench` that runs the waiters.
pub const WAITERS_COMMAND: &str = "center-waiters";
/// Long polls are held at most this long by the center (its maximum).
const POLL_TIMEOUT_MS: u64 = 120_000;

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes.
fn mono_ns() -> u64 {
    crate::clock_ns(libc::CLOCK_MONOTONIC)
}

/// This process's resident anonymous memory now, in MB (from
/// /proc/self/status): how much fresh memory a step touched. Each fresh
/// page is zeroed by the kernel on first touch, which in a virtual machine
/// costs some 10 us per 4 KB page (the allocator's pre-faulting hides it
/// from the page-fault counters, not from the clock).
fn resident_anon_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (ns) every thread of process `pid` has run so far, from the
/// scheduler's own accounting (`/proc/PID/task/*/schedstat`, exact where
/// `stat`'s clock ticks are 10 ms): what a phase cost each process when
/// both share the cores.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// [`cpu_ns`] of the threads of process `pid` named `name` only (their
/// `comm`): the center's writer thread, which does the put and nothing
/// else while the long polls wait, so its time is the put's.
fn thread_cpu_ns(pid: u32, name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Raises this process's open-file limit to at least `needed`: the soft
/// limit up to the hard one, the hard one too if allowed (CAP_SYS_RESOURCE).
/// Fails naming both limits if it cannot: a bench short of descriptors
/// measures accept errors, not the center.
pub fn raise_fd_limit(needed: u64) -> anyhow::Result<u64> {
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) } != 0 {
        bail!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
    if now.rlim_cur >= needed {
        return Ok(now.rlim_cur);
    }
    let wanted = libc::rlimit {
        rlim_cur: needed,
        rlim_max: now.rlim_max.max(needed),
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
        return Ok(needed);
    }
    let err = std::io::Error::last_os_error();
    if now.rlim_max >= needed {
        let soft = libc::rlimit {
            rlim_cur: now.rlim_max,
            rlim_max: now.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
            return Ok(now.rlim_max);
        }
    }
    bail!(
        "open files: {needed} needed, limit is {} (hard {}); raising it failed: {err} (raise `ulimit -Hn` or run with CAP_SYS_RESOURCE)",
        now.rlim_cur,
        now.rlim_max
    )
}

/// Runs the center benchmark and prints its figures.
/// The whole center bench; with `only_polls`, only the long polls on redb
/// and their floor (the figure to iterate on).
pub fn run(only_polls: bool) -> anyhow::Result<()> {
    // The center's end of every poll, plus the database and the runtime.
    let limit = raise_fd_limit(WAITERS as u64 + 1024)?;
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!();
    println!("config center (SPEC 6), real HTTP and redb on this machine (open files {limit}):");
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
        answer_floor().await?;
        answer_floor_http().await?;
        if only_polls {
            return Ok(());
        }
        writes(&center).await
    })?;
    if only_polls {
        return Ok(());
    }
    on_etcd(&runtime)?;
    put_anatomy(dir.path())?;
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

/// The long-poll and durable-write figures again with the center's state
/// in etcd (`store = "etcd"`): one etcd member on this machine, started
/// here (Debian package `etcd-server`), beside the redb figures above.
fn on_etcd(runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let etcd = crate::etcd::Etcd::start_here()?;
    println!();
    println!(
        "config center on etcd (store = \"etcd\", one member on this machine at {}, fsync per commit):",
        etcd.url
    );
    runtime.block_on(async {
        let config = CenterConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            store: center::StoreKind::Etcd,
            etcd_endpoints: vec![etcd.url.clone()],
            etcd_prefix: Some("/mlag-bench/".into()),
            ..Default::default()
        };
        let (addr, center, server) =
            center::bind_with_shutdown(config, std::future::pending()).await?;
        let server = tokio::spawn(server);
        long_polls(addr, &center).await?;
        writes(&center).await?;
        server.abort();
        anyhow::Ok(())
    })?;
    drop(etcd);
    resume_after_kill()
}

/// Rounds of the resume figure (each with two fresh centers).
const RESUME_RUNS: usize = 5;
/// The centers' session lease in the resume figure: the smallest the
/// config allows, so the figure is the take-over's own work plus a lease
/// a deployment could choose.
const RESUME_LEASE_TTL_S: u64 = 3;
/// The rollout's pace in the resume figure: long enough that the engine's
/// center is killed while the next batch waits for it.
const RESUME_PACE_MS: u64 = 1000;
/// When, after the acknowledgement that starts the pace, the engine's
/// center is killed.
const RESUME_KILL_AFTER_MS: u64 = 200;
const RESUME_DEVICES: usize = 3;

/// `mlag-bench center resume` (also the last part of `mlag-bench center`):
/// how long a rollout stands still when the center running its engine
/// dies. One etcd member and two centers (the `SYNC_AGENT_BIN` agent,
/// each its own process, `etcd_lease_ttl_s` = [`RESUME_LEASE_TTL_S`]) in a
/// namespace of their own; three devices, played over HTTP against the
/// surviving center, are in a rollout of one device per batch with a pace
/// of [`RESUME_PACE_MS`]. The first batch is acknowledged (which starts
/// the pace on the engine's center), the next device's long poll is held
/// on the other center, and [`RESUME_KILL_AFTER_MS`] later the engine's
/// center is SIGKILLed. Measured from the SIGKILL:
///
/// - take-over: until the surviving center says it runs the engine
///   (`GET /v1/stats`, asked every 20 ms): bounded by the lease TTL (the
///   dead center's lease must expire; etcd checks leases every 500 ms)
///   plus the election's answer;
/// - resume: until the next batch is handed out (the held long poll of
///   the next device answered with the new version). The new engine arms
///   the stored pace afresh at the take-over (so no batch is early), so
///   this is the take-over plus a full pace plus the release's commit and
///   notification.
pub fn resume_after_kill() -> anyhow::Result<()> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let ns = crate::netns::Netns::new("mbr")?;
    let etcd = crate::etcd::Etcd::start(&ns)?;
    println!();
    println!(
        "rollout resume after SIGKILL of the engine's center (two center processes on one etcd member, etcd_lease_ttl_s = {RESUME_LEASE_TTL_S}, one device per batch, pace {RESUME_PACE_MS} ms, kill {RESUME_KILL_AFTER_MS} ms into the pace; load average at start {}):",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut takeovers = Vec::new();
    let mut resumes = Vec::new();
    for run in 0..RESUME_RUNS {
        let (takeover, resume) = resume_once(&ns, &etcd, run)
            .with_context(|| format!("resume run {run}; etcd:\n{}", etcd.log()))?;
        println!(
            "  run {}: take-over {:.0} ms, resume {:.0} ms",
            run + 1,
            ms(takeover),
            ms(resume)
        );
        takeovers.push(takeover);
        resumes.push(resume);
    }
    takeovers.sort();
    resumes.sort();
    let ttl = Duration::from_secs(RESUME_LEASE_TTL_S);
    let max_takeover = takeovers[takeovers.len() - 1];
    println!(
        "  take-over (SIGKILL -> the other center runs the engine): p50 {:.0} ms, max {:.0} ms; resume (SIGKILL -> next batch handed out): p50 {:.0} ms, max {:.0} ms, of which the re-armed pace {RESUME_PACE_MS} ms",
        ms(percentile(&takeovers, 0.5)),
        ms(max_takeover),
        ms(percentile(&resumes, 0.5)),
        ms(resumes[resumes.len() - 1]),
    );
    // The dead center's lease runs out one TTL after its last keep-alive
    // (sent every 500 ms), and etcd revokes expired leases on a 500 ms
    // tick: the take-over falls between TTL - 0.5 s and TTL + 0.5 s, plus
    // the revocation's commit and the election's answer.
    println!(
        "  goal (issue 19: another center takes the engine over within the lease TTL, {} ms): {} (max take-over / TTL = {:.2}); what bounds it: the lease the center was granted (the TTL less 1 s) from its last keep-alive (every 500 ms) + etcd's lease-expiry tick (500 ms) + the revocation's commit; a rollout resumes one pace after the take-over",
        ttl.as_millis(),
        if max_takeover <= ttl {
            "met"
        } else {
            "not met"
        },
        max_takeover.as_secs_f64() / ttl.as_secs_f64()
    );
    Ok(())
}

/// One round of [`resume_after_kill`] under its own key prefix: (take-over,
/// resume), both from the SIGKILL.
fn resume_once(
    ns: &crate::netns::Netns,
    etcd: &crate::etcd::Etcd,
    run: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let dir = crate::agent::TempDir::new("mlag-bench-resume")?;
    let ports = [7481, 7482];
    let config = |port: u16| {
        format!(
            "instance = \"{{instance}}\"\n\n[rollout.center]\nlisten = \"127.0.0.1:{port}\"\ndb_path = \"{}\"\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_prefix = \"/bench-resume/{run}/\"\netcd_lease_ttl_s = {RESUME_LEASE_TTL_S}\nbatch_size = 1\npace_ms = {RESUME_PACE_MS}\n",
            dir.path().join("unused.redb").display(),
            etcd.url
        )
    };
    let mut centers = [
        crate::agent::Agent::start(ns, &config(ports[0]))?,
        crate::agent::Agent::start(ns, &config(ports[1]))?,
    ];
    let bases = ports.map(|port| format!("http://127.0.0.1:{port}"));
    let measured = ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(resume_round(&bases, &mut centers))
    });
    measured.with_context(|| {
        format!(
            "center logs:\n{}\n{}",
            centers[0].log_text(),
            centers[1].log_text()
        )
    })
}

async fn resume_round(
    bases: &[String; 2],
    centers: &mut [crate::agent::Agent; 2],
) -> anyhow::Result<(Duration, Duration)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(40))
        .build()?;
    let runs_engine = |base: &str| {
        let request = client.get(format!("{base}/v1/stats")).send();
        async move {
            match request.await {
                Ok(answer) => answer
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|stats| stats["runs_engine"] == true),
                Err(_) => false,
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        match [runs_engine(&bases[0]).await, runs_engine(&bases[1]).await] {
            [true, false] => break 0,
            [false, true] => break 1,
            [true, true] => bail!("both centers run the engine"),
            _ if Instant::now() > deadline => bail!("no center runs the engine"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let base = &bases[1 - leader];
    let services = serde_json::json!([{
        "name": "s",
        "config": {"namespace": "bench", "group": "prod", "name": "resume"},
        "depends_on": [],
    }]);
    for d in 0..RESUME_DEVICES {
        let answer = client
            .post(format!("{base}/v1/devices/dev{d}/register"))
            .json(&serde_json::json!({ "services": services }))
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "register dev{d}");
    }
    let answer = client
        .put(format!("{base}/v1/configs/bench/prod/resume"))
        .json(&serde_json::json!({ "format": "text", "content": "v1", "author": "bench" }))
        .send()
        .await?;
    anyhow::ensure!(answer.status().is_success(), "put: {}", answer.status());
    let rollouts: serde_json::Value = client
        .get(format!("{base}/v1/rollouts"))
        .send()
        .await?
        .json()
        .await?;
    let id = rollouts[0]["id"].as_u64().context("rollout id")?;
    let order: Vec<String> = rollouts[0]["batches"]
        .as_array()
        .context("batches")?
        .iter()
        .map(|b| b[0]["device"].as_str().unwrap_or_default().to_string())
        .collect();
    anyhow::ensure!(order.len() == RESUME_DEVICES, "{rollouts}");
    let poll = |device: &str, timeout_ms: u64| {
        let request = client
            .get(format!(
                "{base}/v1/devices/{device}/watch?timeout_ms={timeout_ms}"
            ))
            .send();
        async move {
            let body: serde_json::Value = request.await?.json().await?;
            anyhow::Ok((
                Instant::now(),
                body["assignments"].as_array().cloned().unwrap_or_default(),
            ))
        }
    };
    let (_, first) = poll(&order[0], 5000).await?;
    anyhow::ensure!(first.len() == 1, "batch 1: {first:?}");
    let answer = client
        .post(format!("{base}/v1/devices/{}/ack", order[0]))
        .json(&serde_json::json!({
            "rollout_id": id, "service": "s", "version": 1, "ok": true, "reason": "",
        }))
        .send()
        .await?;
    anyhow::ensure!(answer.status().is_success(), "ack: {}", answer.status());
    let acked = Instant::now();
    // The next device waits on the surviving center, as a device does.
    let next = tokio::spawn(poll(&order[1], 30_000));
    tokio::time::sleep_until((acked + Duration::from_millis(RESUME_KILL_AFTER_MS)).into()).await;
    anyhow::ensure!(
        !next.is_finished(),
        "batch 2 was handed out before the SIGKILL"
    );
    let killed = Instant::now();
    centers[leader].kill()?;
    while !runs_engine(base).await {
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(30),
            "the surviving center did not take the engine over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = killed.elapsed();
    let (answered, got) = next.await??;
    anyhow::ensure!(got.len() == 1 && got[0]["version"] == 1, "batch 2: {got:?}");
    let resume = answered.duration_since(killed);
    anyhow::ensure!(
        resume >= takeover,
        "batch 2 handed out {resume:?} after the SIGKILL, before the take-over ({takeover:?})"
    );
    centers[1 - leader].kill()?;
    Ok((takeover, resume))
}

/// The put of the long-poll figure taken apart, on the engine and the
/// store directly (no HTTP, no group commit): [`WAITERS`] devices use one
/// key, and one new version releases to all of them in one batch.
fn put_anatomy(dir: &std::path::Path) -> anyhow::Result<()> {
    use center::engine::{Engine, PlanOptions};
    let key: ConfigKey = "bench/prod/anatomy".parse().map_err(err)?;
    let current = |_: &ConfigKey| Some((1, "md5-v1".to_string()));
    let mut engine = Engine::new();
    for d in 0..WAITERS {
        let registration = one_service(&key);
        engine
            .register(&format!("dev{d}"), registration, &current, 1)
            .map_err(err)?;
    }
    let store = center::store::Store::open(&dir.join("anatomy.redb"), 1 << 20).map_err(err)?;
    let mut txn = store.begin_write().map_err(err)?;
    center::rollout_store::save_in(&mut *txn, &engine.take_changes()).map_err(err)?;
    txn.commit().map_err(err)?;
    let options = PlanOptions {
        batch_size: WAITERS,
        ..Default::default()
    };
    let start = Instant::now();
    engine.new_version(&key, 2, "md5-v2", &options, 2);
    let planned = start.elapsed();
    let changes = engine.take_changes();
    let encoded = start.elapsed();
    let bytes: usize = changes
        .devices
        .iter()
        .filter_map(|(_, json)| json.as_ref().map(String::len))
        .chain(
            changes
                .rollouts
                .iter()
                .filter_map(|(_, json)| json.as_ref().map(String::len)),
        )
        .sum();
    let mut txn = store.begin_write().map_err(err)?;
    center::rollout_store::save_in(&mut *txn, &changes).map_err(err)?;
    let inserted = start.elapsed();
    txn.commit().map_err(err)?;
    let committed = start.elapsed();
    println!(
        "  the put's parts ({WAITERS} devices released one version): planning and releasing {:.1} ms, encoding {} device and {} rollout records ({:.1} MB) {:.1} ms, inserting them {:.1} ms, commit {:.1} ms",
        ms(planned),
        changes.devices.len(),
        changes.rollouts.len(),
        bytes as f64 / 1e6,
        ms(encoded - planned),
        ms(inserted - encoded),
        ms(committed - inserted),
    );
    Ok(())
}

/// A device's registration: service `s` using `key`.
fn one_service(key: &ConfigKey) -> Register {
    Register {
        services: vec![ServiceRegistration {
            name: "s".into(),
            config: key.clone(),
            depends_on: vec![],
        }],
        ..Default::default()
    }
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// `mlag-bench center-waiters ADDR COUNT MD5`: holds COUNT long polls
/// (devices dev0..) that have MD5 for service `s`, and prints one line per
/// answer: `answer ARRIVAL_NS HELD_MS KIND` where KIND is `change:MD5`,
/// `empty` or `error:MESSAGE`. The parent reads them.
pub fn waiters_main(args: Vec<String>) -> anyhow::Result<()> {
    let [addr, count, md5] = args.as_slice() else {
        bail!("usage: mlag-bench {WAITERS_COMMAND} ADDR COUNT MD5");
    };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let count: usize = count.parse().context("COUNT")?;
    raise_fd_limit(count as u64 + 256)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECT_AT_ONCE));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for d in 0..count {
            let path =
                format!("/v1/devices/dev{d}/watch?have=s:{md5}&timeout_ms={POLL_TIMEOUT_MS}");
            let (tx, connecting) = (tx.clone(), connecting.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let mut kept = None;
                let answer = async {
                    let permit = connecting.acquire_owned().await?;
                    let stream = kept.insert(tokio::net::TcpStream::connect(addr).await?);
                    stream.set_nodelay(true)?;
                    drop(permit);
                    get(stream, &path).await
                }
                .await;
                let at = mono_ns();
                let kind = match answer {
                    Ok((200, body)) => {
                        let answer: serde_json::Value =
                            serde_json::from_str(&body).unwrap_or_default();
                        match answer["assignments"][0]["md5"].as_str() {
                            Some(md5) => format!("change:{md5}"),
                            None => "empty".to_string(),
                        }
                    }
                    Ok((status, body)) => format!("error:{status} {}", body.replace('\n', " ")),
                    Err(e) => format!("error:{}", format!("{e:#}").replace('\n', " ")),
                };
                let line = format!("answer {at} {} {kind}", sent.elapsed().as_millis());
                let _ = tx.send((line, kept));
            });
        }
        drop(tx);
        use std::io::Write as _;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        // Connections stay open until every poll is answered, as a device
        // keeps its connection for the fetch, the ack and the next poll:
        // closing them is not part of being notified.
        let mut open = Vec::with_capacity(count);
        while let Some((line, stream)) = rx.recv().await {
            writeln!(out, "{line}")?;
            open.extend(stream);
            // Lines queued meanwhile go in the same write: one pipe write
            // per answer would cost both processes more than the answers.
            while let Ok((line, stream)) = rx.try_recv() {
                writeln!(out, "{line}")?;
                open.extend(stream);
            }
            out.flush()?;
        }
        drop(open);
        anyhow::Ok(())
    })
}

/// One answer as the waiters' process reported it.
struct Answer {
    at_ns: u64,
    held_ms: u64,
    kind: String,
}

fn parse_answer(line: &str) -> Option<Answer> {
    let mut parts = line.strip_prefix("answer ")?.splitn(3, ' ');
    Some(Answer {
        at_ns: parts.next()?.parse().ok()?,
        held_ms: parts.next()?.parse().ok()?,
        kind: parts.next()?.to_string(),
    })
}

/// The waiters' process, started: its answers come on the channel, one
/// line each (see [`waiters_main`]).
struct Waiters {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Both processes' CPU time when the answers were set off
    /// ([`Waiters::mark_start`]): (server's, waiters').
    cpu_at_start: (u64, u64),
}

impl Waiters {
    /// Starts [`WAITERS`] polls at `addr` by devices that have `md5`.
    fn spawn(addr: SocketAddr, md5: &str) -> anyhow::Result<Waiters> {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args([
                WAITERS_COMMAND,
                &addr.to_string(),
                &WAITERS.to_string(),
                md5,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the waiters' process")?;
        let stdout = child.stdout.take().context("waiters' stdout")?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Waiters {
            child,
            lines,
            cpu_at_start: (0, 0),
        })
    }

    /// Waits until `held()` counts every poll as held by the server: the
    /// figure must not mix in polls answered at once on arrival. Returns
    /// how long that took. (Polls time out after 120 s: the ramp must be
    /// done well before.)
    async fn until_held(&mut self, held: impl Fn() -> usize) -> anyhow::Result<Duration> {
        let ramp = Instant::now();
        let deadline = ramp + Duration::from_secs(100);
        while held() < WAITERS {
            if let Ok(line) = self.lines.try_recv() {
                let _ = self.child.kill();
                bail!(
                    "a long poll was answered before any change ({} held): {line}",
                    held()
                );
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("only {} of {WAITERS} long polls held after 100 s", held());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(ramp.elapsed())
    }

    /// Notes both processes' CPU time just before the change that answers
    /// the polls.
    fn mark_start(&mut self) {
        self.cpu_at_start = (cpu_ns(std::process::id()), cpu_ns(self.child.id()));
    }

    /// Reads every answer: the time from `start_ns` to each one that
    /// carries `md5`, sorted, and the others counted.
    async fn answers(mut self, start_ns: u64, md5: &str) -> anyhow::Result<Answers> {
        let expect = format!("change:{md5}");
        let mut got = Answers {
            latencies: Vec::with_capacity(WAITERS),
            ..Answers::default()
        };
        while let Some(line) = self.lines.recv().await {
            let Some(answer) = parse_answer(&line) else {
                bail!("waiters' process printed {line:?}");
            };
            if answer.kind == expect {
                got.latencies
                    .push(Duration::from_nanos(answer.at_ns.saturating_sub(start_ns)));
                if got.latencies.len() == WAITERS {
                    // Before the waiters close their connections.
                    got.cpu_ns = (
                        cpu_ns(std::process::id()).saturating_sub(self.cpu_at_start.0),
                        cpu_ns(self.child.id()).saturating_sub(self.cpu_at_start.1),
                    );
                }
                continue;
            }
            if answer.kind == "empty" && answer.held_ms + 1000 >= POLL_TIMEOUT_MS {
                got.by_timeout += 1;
            } else if answer.kind == "empty" {
                got.empty_early += 1;
            } else if answer.kind.starts_with("change:") {
                got.wrong += 1;
            } else {
                got.failed += 1;
            }
            if got.problems.len() < 3 {
                got.problems.push(line);
            }
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the waiters' process failed: {status}");
        }
        got.latencies.sort();
        Ok(got)
    }
}

/// What the waiters got.
#[derive(Default)]
struct Answers {
    /// Of the answers that carried the change, sorted.
    latencies: Vec<Duration>,
    by_timeout: usize,
    empty_early: usize,
    wrong: usize,
    failed: usize,
    /// The first few lines that were not the change.
    problems: Vec<String>,
    /// CPU time from the change to the last answer: (the server's process
    /// — the center or the floor's server, and this bench's reading —,
    /// the waiters' process); zero unless every poll got the change.
    cpu_ns: (u64, u64),
}

impl Answers {
    /// `p50 .. ms, p99 .. ms, first .., last .., N within 100 ms`.
    fn summary(&self) -> String {
        let l = &self.latencies;
        let within = l
            .iter()
            .filter(|l| **l < Duration::from_millis(100))
            .count();
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, first {:.1} ms, last {:.1} ms, {within} within 100 ms",
            ms(percentile(l, 0.5)),
            ms(percentile(l, 0.99)),
            ms(l[0]),
            ms(l[l.len() - 1]),
        )
    }

    /// `answered by their timeout .., empty early .., ...`.
    fn problems(&self) -> String {
        format!(
            "answered by their timeout (lost notification) {}, empty early {}, other version {}, failed {}{}",
            self.by_timeout,
            self.empty_early,
            self.wrong,
            self.failed,
            if self.problems.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.problems)
            }
        )
    }

    /// `CPU to the last answer: server .. ms, waiters .. ms (.. us per
    /// answer)`: whether the cores or the waiting limited the answers.
    fn cpu(&self) -> String {
        let (server, waiters) = self.cpu_ns;
        if server + waiters == 0 {
            return "CPU not measured (not every poll got the change)".into();
        }
        format!(
            "CPU to the last answer: server {:.1} ms, waiters {:.1} ms ({:.1} + {:.1} us per answer)",
            server as f64 / 1e6,
            waiters as f64 / 1e6,
            server as f64 / 1e3 / WAITERS as f64,
            waiters as f64 / 1e3 / WAITERS as f64,
        )
    }

    /// First to last answer, and that per answer (us).
    fn spread(&self) -> (f64, f64) {
        let l = &self.latencies;
        let spread = l[l.len() - 1] - l[0];
        (ms(spread), spread.as_secs_f64() * 1e6 / l.len() as f64)
    }
}

async fn long_polls(addr: SocketAddr, center: &Arc<center::Center>) -> anyhow::Result<()> {
    let key: ConfigKey = "bench/prod/common".parse().map_err(err)?;
    let v1 = center
        .put(key.clone(), put("v1"), RolloutOptions::default())
        .await
        .map_err(err)?;
    // Registered concurrently: the group commit takes them in batches.
    let registered = Instant::now();
    let mut registering = tokio::task::JoinSet::new();
    for d in 0..WAITERS {
        let registration = one_service(&key);
        let center = center.clone();
        registering.spawn(async move { center.register(format!("dev{d}"), registration).await });
    }
    while let Some(done) = registering.join_next().await {
        done?.map_err(err)?;
    }
    let registered = registered.elapsed();
    let mut waiters = Waiters::spawn(addr, &v1.md5)?;
    let ramp = waiters.until_held(|| center.waiting_polls()).await?;
    let before = center.write_stats();
    let resident = resident_anon_mb();
    let writer_before = thread_cpu_ns(std::process::id(), WRITER_THREAD);
    waiters.mark_start();
    let start = mono_ns();
    let opts = RolloutOptions {
        batch_size: Some(WAITERS),
        ..Default::default()
    };
    let v2 = center
        .put(key.clone(), put("v2"), opts)
        .await
        .map_err(err)?;
    let put_took = Duration::from_nanos(mono_ns() - start);
    let grew = resident_anon_mb() - resident;
    let after = center.write_stats();
    let got = waiters.answers(start, &v2.md5).await?;
    let put_cpu = thread_cpu_ns(std::process::id(), WRITER_THREAD).saturating_sub(writer_before);
    println!(
        "  {WAITERS} devices registered concurrently in {:.2} s; {WAITERS} polls held after {:.1} s",
        registered.as_secs_f64(),
        ramp.as_secs_f64()
    );
    if got.latencies.is_empty() {
        println!(
            "  long poll: no answer carried the change ({})",
            got.problems()
        );
        return Ok(());
    }
    let (spread, each) = got.spread();
    // Where the put's time goes: the put's commit is the only one running
    // (every poll is held, nothing else writes).
    println!(
        "  the put: applying (engine and store, in the transaction) {:.1} ms, committing (pages and fsync) {:.1} ms, in {} commit(s), resident memory +{grew:.1} MB; answers from the first to the last {spread:.1} ms ({each:.1} us per answer)",
        (after.apply_ns - before.apply_ns) as f64 / 1e6,
        (after.commit_ns - before.commit_ns) as f64 / 1e6,
        after.commits - before.commits,
    );
    println!(
        "  long-poll notification, {} held polls answered by one change (put {:.1} ms incl. planning and fsync): {}; {}; {}",
        got.latencies.len(),
        ms(put_took),
        got.summary(),
        got.cpu(),
        got.problems()
    );
    if got.cpu_ns.0 > 0 {
        // The writer's time is the put's: planning and releasing, storing,
        // the commit, and waking the polls; the rest is answering them.
        let answering = got.cpu_ns.0.saturating_sub(put_cpu);
        println!(
            "  the center's CPU split: the put ({WRITER_THREAD} thread: planning, storing, commit, waking {WAITERS} polls) {:.1} ms; answering (every other thread, this bench's reading of the answers included) {:.1} ms, {:.1} us per answer",
            put_cpu as f64 / 1e6,
            answering as f64 / 1e6,
            answering as f64 / 1e3 / WAITERS as f64,
        );
    }
    Ok(())
}

/// The MD5 the floors' answers carry.
const FLOOR_MD5: &str = "0123456789abcdef0123456789abcdef";

/// The body of the floors' answers: the center's answer to the bench's
/// devices, one assignment of [`FLOOR_MD5`].
fn floor_body() -> String {
    format!(
        r#"{{"assignments":[{{"rollout_id":2,"service":"s","key":{{"namespace":"bench","group":"prod","name":"common"}},"version":2,"md5":"{FLOOR_MD5}"}}]}}"#
    )
}

/// The floor under the long-poll figure on this machine: the same waiters'
/// process, the same [`WAITERS`] connections and requests, answered by a
/// server that does no work at all: every connection's task waits on one
/// shared signal and writes one pre-built answer of the center's shape.
/// What is left is the kernel's loopback TCP, the wake-up of one task per
/// connection and the waiters' own reading, on the same cores.
async fn answer_floor() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let body = floor_body();
    let answer: Arc<[u8]> = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\ndate: Mon, 07 Dec 2026 03:00:00 GMT\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into();
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (go, signal) = tokio::sync::watch::channel(false);
    let server = {
        let held = held.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (held, answer, mut signal) = (held.clone(), answer.clone(), signal.clone());
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let mut head = Vec::with_capacity(512);
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if signal.wait_for(|go| *go).await.is_err() {
                        return;
                    }
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                    // Open until the waiter closes, as the center keeps it.
                    let _ = stream.read(&mut chunk).await;
                });
            }
        })
    };
    let got = floor_round(addr, &held, go).await;
    server.abort();
    print_floor(
        "floor, the same {WAITERS} polls answered by a zero-work server (one task per connection, one shared pre-built answer)",
        &got?,
    );
    Ok(())
}

/// The floor again on the center's own HTTP stack: `axum::serve` (hyper,
/// one task per connection, as the center is served) with one route of
/// the center's watch path, whose handler waits for the one shared signal
/// and answers one pre-built body (shared bytes, as the center's answers
/// now are). The center's figure minus this one is the center's own work
/// (the engine, the wake-ups, the middleware); this one minus the raw
/// floor is what HTTP on hyper and axum costs per answer.
async fn answer_floor_http() -> anyhow::Result<()> {
    use axum::http::{HeaderValue, header::CONTENT_TYPE};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let body = axum::body::Bytes::from(floor_body());
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (go, signal) = tokio::sync::watch::channel(false);
    let watch = {
        let held = held.clone();
        move || {
            let (held, mut signal, body) = (held.clone(), signal.clone(), body.clone());
            async move {
                held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = signal.wait_for(|go| *go).await;
                let json = HeaderValue::from_static("application/json");
                ([(CONTENT_TYPE, json)], body)
            }
        }
    };
    let app = axum::Router::new().route("/v1/devices/{device}/watch", axum::routing::get(watch));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let got = floor_round(addr, &held, go).await;
    server.abort();
    print_floor(
        "floor on the center's HTTP stack (axum::serve, one route, a handler that waits for one signal and answers shared pre-built bytes)",
        &got?,
    );
    Ok(())
}

/// One round against a floor server at `addr`: the waiters arrive, every
/// poll is counted `held`, then `go` answers them all.
async fn floor_round(
    addr: SocketAddr,
    held: &std::sync::atomic::AtomicUsize,
    go: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<Answers> {
    let mut waiters = Waiters::spawn(addr, "old")?;
    waiters
        .until_held(|| held.load(std::sync::atomic::Ordering::Relaxed))
        .await?;
    waiters.mark_start();
    let start = mono_ns();
    go.send_replace(true);
    waiters.answers(start, FLOOR_MD5).await
}

fn print_floor(what: &str, got: &Answers) {
    let what = what.replace("{WAITERS}", &WAITERS.to_string());
    if got.latencies.is_empty() {
        println!("  {what}: no answer arrived ({})", got.problems());
        return;
    }
    let (spread, each) = got.spread();
    println!(
        "  {what}: {}; first to last {spread:.1} ms ({each:.1} us per answer); {}; {}",
        got.summary(),
        got.cpu(),
        got.problems()
    );
}

async fn writes(center: &Arc<center::Center>) -> anyhow::Result<()> {
    let other: ConfigKey = "bench/prod/writes".parse().map_err(err)?;
    let before = center.write_stats();
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
    let after = center.write_stats();
    println!(
        "  durable writes, one writer waiting for each: {WRITES} in {:.3} s = {:.0} per s ({} commits)",
        elapsed.as_secs_f64(),
        WRITES as f64 / elapsed.as_secs_f64(),
        after.commits - before.commits
    );
    for writers in WRITERS {
        concurrent_writes(center, writers).await?;
    }
    Ok(())
}

/// `writers` tasks each making [`WRITES_PER_WRITER`] puts to a config of
/// its own, each waiting for its answer before the next.
async fn concurrent_writes(center: &Arc<center::Center>, writers: usize) -> anyhow::Result<()> {
    let before = center.write_stats();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let center = center.clone();
        tasks.spawn(async move {
            let key: ConfigKey = format!("bench/w{writers}/writer{w}").parse().map_err(err)?;
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
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = start.elapsed();
    let after = center.write_stats();
    let total = writers * WRITES_PER_WRITER;
    let commits = after.commits - before.commits;
    println!(
        "  durable writes, {writers} concurrent writers: {total} in {:.3} s = {:.0} per s; {commits} commits (one fsync each), {:.1} writes per commit; each acknowledged after its commit",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        (after.changes - before.changes) as f64 / commits.max(1) as f64
    );
    Ok(())
}
