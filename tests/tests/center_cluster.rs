//! Several config centers on one three-member etcd cluster (real `etcd`
//! processes from the Debian package, real agents), in a namespace of the
//! test's own:
//!
//! - the center running the rollout engine is SIGKILLed in the middle of a
//!   paced rollout: the other center takes the engine over and releases
//!   the remaining batches in order, none before its pace, none skipped;
//! - one etcd member is SIGKILLed: writes go on; every member down: the
//!   center answers 503 naming etcd, and works again once etcd is back;
//! - device agents (two dependent services each) that know both centers
//!   fail over when their center is SIGKILLed, keep their configs through
//!   a total etcd outage, and get changes again once etcd is back.
//!
//! In the first two, devices are played by the test over the center's HTTP
//! API (register, long poll, ack), so it sees exactly what each center
//! hands out and when.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use mlag_testbed::{
    agent::{Agent, TempDir},
    etcd::EtcdCluster,
    netns::Netns,
};

/// Seconds of each center's etcd session lease.
const LEASE_TTL_S: u64 = 3;
/// The rollout's pace between batches.
const PACE_MS: u64 = 3000;
const DEVICES: usize = 3;

fn center_config(port: u16, dir: &std::path::Path, etcd: &EtcdCluster, pace_ms: u64) -> String {
    let endpoints: Vec<String> = etcd.urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "instance = \"{{instance}}\"\n\n[rollout.center]\nlisten = \"127.0.0.1:{port}\"\ndb_path = \"{}\"\nstore = \"etcd\"\netcd_endpoints = [{}]\netcd_lease_ttl_s = {LEASE_TTL_S}\nbatch_size = 1\npace_ms = {pace_ms}\n",
        dir.join("unused.redb").display(),
        endpoints.join(", ")
    )
}

fn base_port() -> u16 {
    30000 + (std::process::id() % 20000) as u16
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(40))
        .build()?)
}

async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    let answer = client.get(url).send().await?;
    let status = answer.status();
    let text = answer.text().await?;
    ensure!(status.is_success(), "GET {url}: {status}: {text}");
    Ok(serde_json::from_str(&text)?)
}

async fn runs_engine(client: &reqwest::Client, base: &str) -> bool {
    get_json(client, &format!("{base}/v1/stats"))
        .await
        .is_ok_and(|s| s["runs_engine"] == true)
}

async fn register(client: &reqwest::Client, base: &str, device: &str) -> anyhow::Result<()> {
    let services = serde_json::json!([{
        "name": "s",
        "config": {"namespace": "cl", "group": "prod", "name": "k"},
        "depends_on": [],
    }]);
    let answer = client
        .post(format!("{base}/v1/devices/{device}/register"))
        .json(&serde_json::json!({ "services": services }))
        .send()
        .await?;
    ensure!(
        answer.status().is_success(),
        "register {device}: {}",
        answer.text().await?
    );
    Ok(())
}

/// Puts `content` as the next version of cl/prod/k: (status, body).
async fn put(
    client: &reqwest::Client,
    base: &str,
    content: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let answer = client
        .put(format!("{base}/v1/configs/cl/prod/k"))
        .json(&serde_json::json!({ "format": "text", "content": content, "author": "test" }))
        .send()
        .await?;
    let status = answer.status().as_u16();
    let text = answer.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(text.into())))
}

/// One long poll of `device` (having nothing): (status, assignments).
async fn poll(
    client: &reqwest::Client,
    base: &str,
    device: &str,
    timeout_ms: u64,
) -> anyhow::Result<(u16, Vec<serde_json::Value>)> {
    let answer = client
        .get(format!(
            "{base}/v1/devices/{device}/watch?timeout_ms={timeout_ms}"
        ))
        .send()
        .await?;
    let status = answer.status().as_u16();
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    let assignments = body["assignments"].as_array().cloned().unwrap_or_default();
    Ok((status, assignments))
}

async fn ack(
    client: &reqwest::Client,
    base: &str,
    device: &str,
    rollout: u64,
    version: u64,
) -> anyhow::Result<()> {
    let answer = client
        .post(format!("{base}/v1/devices/{device}/ack"))
        .json(&serde_json::json!({
            "rollout_id": rollout, "service": "s", "version": version, "ok": true, "reason": "",
        }))
        .send()
        .await?;
    ensure!(
        answer.status().is_success(),
        "ack {device}: {}",
        answer.text().await?
    );
    Ok(())
}

#[test]
fn the_engines_center_is_sigkilled_mid_rollout_and_the_other_continues_it() -> anyhow::Result<()> {
    let ns = Netns::new("mck")?;
    let etcd = EtcdCluster::start(&ns, 3)?;
    let dir = TempDir::new("mlag-center-cluster")?;
    let port = base_port();
    let bases = [
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port + 1),
    ];
    let mut centers = [
        Agent::start(&ns, &center_config(port, dir.path(), &etcd, PACE_MS))?,
        Agent::start(&ns, &center_config(port + 1, dir.path(), &etcd, PACE_MS))?,
    ];
    let result = ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(take_over(&bases, &mut centers))
    });
    result.with_context(|| {
        format!(
            "center logs:\n{}\n{}\netcd:\n{}",
            centers[0].log_text(),
            centers[1].log_text(),
            etcd.log()
        )
    })
}

async fn take_over(bases: &[String; 2], centers: &mut [Agent; 2]) -> anyhow::Result<()> {
    let client = client()?;
    // Exactly one center runs the engine.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let runs = [
            runs_engine(&client, &bases[0]).await,
            runs_engine(&client, &bases[1]).await,
        ];
        match runs {
            [true, false] => break 0,
            [false, true] => break 1,
            [true, true] => bail!("both centers run the engine"),
            [false, false] if Instant::now() > deadline => bail!("no center runs the engine"),
            [false, false] => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let other = 1 - leader;
    let (lead, base) = (&bases[leader], &bases[other]);
    let devices: Vec<String> = (0..DEVICES).map(|d| format!("dev{d}")).collect();
    for device in &devices {
        register(&client, base, device).await?;
    }
    // Written through the center that does not run the engine.
    let (status, record) = put(&client, base, "v1").await?;
    ensure!(status == 200, "put: {status} {record}");
    let rollouts = get_json(&client, &format!("{lead}/v1/rollouts")).await?;
    let rollout = &rollouts[0];
    let id = rollout["id"].as_u64().context("rollout id")?;
    let order: Vec<String> = rollout["batches"]
        .as_array()
        .context("batches")?
        .iter()
        .map(|b| b[0]["device"].as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(order.len() == DEVICES, "{rollout}");

    // Batch 1 through the other center; the engine's center arms the pace.
    let (status, got) = poll(&client, base, &order[0], 5000).await?;
    ensure!(status == 200 && got.len() == 1, "{status} {got:?}");
    ack(&client, base, &order[0], id, 1).await?;
    let mut acked = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    centers[leader].kill()?;
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(20);
    while !runs_engine(&client, base).await {
        ensure!(
            Instant::now() < deadline,
            "the surviving center did not take the engine over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "engine taken over {:?} after the SIGKILL (lease TTL {LEASE_TTL_S} s)",
        killed.elapsed()
    );

    let mut released = HashMap::new();
    for (batch, device) in order.iter().enumerate().skip(1) {
        if let Some(later) = order.get(batch + 1) {
            let (status, early) = poll(&client, base, later, 10).await?;
            ensure!(
                status == 200 && early.is_empty(),
                "{later} released before its batch: {status} {early:?}"
            );
        }
        let (status, got) = poll(&client, base, device, 20000).await?;
        let waited = acked.elapsed();
        ensure!(
            status == 200 && got.len() == 1,
            "batch {} to {device}: {status} {got:?}",
            batch + 1
        );
        ensure!(
            waited >= Duration::from_millis(PACE_MS),
            "batch {} released {waited:?} after the previous ack, before its pace",
            batch + 1
        );
        released.insert(device.clone(), waited);
        ack(&client, base, device, id, 1).await?;
        acked = Instant::now();
    }
    let done = get_json(&client, &format!("{base}/v1/rollouts/{id}")).await?;
    ensure!(done["state"] == "done", "{done}");
    let steps: Vec<&str> = done["batches"]
        .as_array()
        .context("batches")?
        .iter()
        .flat_map(|b| b.as_array().cloned().unwrap_or_default())
        .map(|s| {
            if s["state"] == "succeeded" {
                "ok"
            } else {
                "not"
            }
        })
        .collect();
    ensure!(steps == ["ok"; DEVICES], "none skipped: {done}");
    eprintln!("later batches released after (since the previous ack): {released:?}");
    Ok(())
}

#[test]
fn writes_go_on_without_one_etcd_member_and_resume_after_a_total_outage() -> anyhow::Result<()> {
    let ns = Netns::new("mco")?;
    let mut etcd = EtcdCluster::start(&ns, 3)?;
    let dir = TempDir::new("mlag-center-outage")?;
    let port = base_port();
    let base = format!("http://127.0.0.1:{port}");
    let center = Agent::start(&ns, &center_config(port, dir.path(), &etcd, 0))?;
    let result = ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(outage(&base, &mut etcd))
    });
    if std::env::var_os("MLAG_TEST_SHOW_LOG").is_some() {
        eprintln!("{}", center.log_text());
    }
    result.with_context(|| format!("center log:\n{}", center.log_text()))
}

/// Puts until one is acknowledged (within `within`); returns the version
/// and how many attempts were refused first.
async fn put_until_stored(
    client: &reqwest::Client,
    base: &str,
    content: &str,
    within: Duration,
) -> anyhow::Result<(u64, usize)> {
    let deadline = Instant::now() + within;
    let mut refused = 0;
    loop {
        match put(client, base, content).await {
            Ok((200, record)) => {
                return Ok((record["version"].as_u64().context("version")?, refused));
            }
            other if Instant::now() > deadline => bail!("put {content:?} not stored: {other:?}"),
            _ => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn outage(base: &str, etcd: &mut EtcdCluster) -> anyhow::Result<()> {
    let client = client()?;
    register(&client, base, "dev0").await?;
    let (version, _) = put_until_stored(&client, base, "one", Duration::from_secs(5)).await?;
    ensure!(version == 1);

    // One member of three gone (the first endpoint the center names):
    // a quorum remains, writes and polls go on.
    etcd.kill(0)?;
    let started = Instant::now();
    let (version, refused) =
        put_until_stored(&client, base, "two", Duration::from_secs(20)).await?;
    ensure!(version == 2);
    eprintln!(
        "one etcd member killed: next write stored after {:?} ({refused} refused first)",
        started.elapsed()
    );
    for i in 0..5 {
        let (status, record) = put(&client, base, &format!("three {i}")).await?;
        ensure!(
            status == 200,
            "write {i} with two members of three: {status} {record}"
        );
    }
    let (status, got) = poll(&client, base, "dev0", 5000).await?;
    ensure!(status == 200 && got.len() == 1, "{status} {got:?}");

    // No quorum at all: refused with 503 and a reason naming etcd, for
    // writes and for polls.
    etcd.kill(1)?;
    etcd.kill(2)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = put(&client, base, "during the outage").await?;
        if status == 503 {
            let reason = body["error"].as_str().unwrap_or_default();
            ensure!(
                reason.contains("etcd"),
                "503 without a clear reason: {body}"
            );
            eprintln!("write during the outage: 503 {reason}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "writes not refused with 503 while every etcd member is down: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = poll(&client, base, "dev0", 1000).await?;
    ensure!(status == 503, "a poll during the outage: {status}");

    // etcd back: writes and polls work again, and nothing of the outage
    // was stored.
    for i in 0..3 {
        etcd.restart(i)?;
    }
    let started = Instant::now();
    let (version, refused) =
        put_until_stored(&client, base, "after", Duration::from_secs(60)).await?;
    eprintln!(
        "etcd back: next write stored after {:?} ({refused} refused first)",
        started.elapsed()
    );
    ensure!(
        version == 8,
        "version {version}: the outage's write was stored or lost one"
    );
    let (status, got) = poll(&client, base, "dev0", 5000).await?;
    ensure!(status == 200 && got.len() == 1, "{status} {got:?}");
    Ok(())
}

/// A device agent with two dependent services (`b` after `a`) that knows
/// both centers.
fn device_config(device: usize, dir: &std::path::Path, centers: &[String]) -> String {
    let d = dir.join(format!("dev{device}"));
    let service = |name: &str, deps: &str| {
        format!(
            "  {{ name = \"{name}\", config = \"cl/prod/{name}\", path = \"{}\", depends_on = [{deps}] }},\n",
            d.join(format!("{name}.conf")).display()
        )
    };
    let urls: Vec<String> = centers.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "instance = \"{{instance}}\"\n\n[rollout.device]\ncenter = [{}]\ndevice = \"dev{device}\"\nbackup_dir = \"{}\"\nwatch_timeout_ms = 5000\nservices = [\n{}{}]\n",
        urls.join(", "),
        d.join("backup").display(),
        service("a", ""),
        service("b", "\"a\""),
    )
}

/// Whether process `pid` runs (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains("zombie"))
    })
}

/// What device `device` has applied: (a.conf, b.conf).
fn applied(dir: &std::path::Path, device: usize) -> (String, String) {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(format!("dev{device}/{name}.conf"))).unwrap_or_default()
    };
    (read("a"), read("b"))
}

fn put_key(ns: &Netns, base: &str, name: &str, content: &str) -> anyhow::Result<()> {
    let (base, name, content) = (base.to_string(), name.to_string(), content.to_string());
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let answer = client()?
                .put(format!("{base}/v1/configs/cl/prod/{name}"))
                .json(
                    &serde_json::json!({ "format": "text", "content": content, "author": "test" }),
                )
                .send()
                .await?;
            let status = answer.status();
            ensure!(
                status.is_success(),
                "put {name}: {status}: {}",
                answer.text().await?
            );
            Ok(())
        })
    })
}

fn wait_applied(
    dir: &std::path::Path,
    devices: usize,
    want: (&str, &str),
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let want = (want.0.to_string(), want.1.to_string());
    mlag_testbed::wait_until(within, "every device applied", || {
        let seen: Vec<(String, String)> = (0..devices).map(|d| applied(dir, d)).collect();
        if seen.iter().all(|s| *s == want) {
            Ok(())
        } else {
            Err(seen)
        }
    })?;
    Ok(started.elapsed())
}

#[test]
fn devices_fail_over_to_the_other_center_and_keep_their_configs_through_an_etcd_outage()
-> anyhow::Result<()> {
    const DEVICES: usize = 3;
    let ns = Netns::new("mcd")?;
    let mut etcd = EtcdCluster::start(&ns, 3)?;
    let dir = TempDir::new("mlag-center-devices")?;
    let port = base_port();
    let bases = vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port + 1),
    ];
    let mut first = Agent::start(&ns, &center_config(port, dir.path(), &etcd, 0))?;
    let second = Agent::start(&ns, &center_config(port + 1, dir.path(), &etcd, 0))?;
    let mut devices = Vec::new();
    for d in 0..DEVICES {
        std::fs::create_dir_all(dir.path().join(format!("dev{d}")))?;
        devices.push(Agent::start(&ns, &device_config(d, dir.path(), &bases))?);
    }
    let logs = |devices: &[Agent]| {
        devices
            .iter()
            .map(Agent::log_text)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut run = || -> anyhow::Result<()> {
        put_key(&ns, &bases[0], "a", "a1")?;
        put_key(&ns, &bases[0], "b", "b1")?;
        wait_applied(dir.path(), DEVICES, ("a1", "b1"), Duration::from_secs(30))?;

        // The devices' first center dies: a change through the other
        // reaches them.
        first.kill()?;
        put_key(&ns, &bases[1], "a", "a2")?;
        put_key(&ns, &bases[1], "b", "b2")?;
        let took = wait_applied(dir.path(), DEVICES, ("a2", "b2"), Duration::from_secs(30))?;
        eprintln!("after the SIGKILL of their center, devices applied v2 within {took:?}");

        // No etcd at all: the devices keep what they applied and keep
        // running; once etcd is back, changes flow again.
        for i in 0..3 {
            etcd.kill(i)?;
        }
        std::thread::sleep(Duration::from_secs(4));
        for (d, device) in devices.iter().enumerate() {
            ensure!(
                device.pid().is_some_and(alive),
                "device {d} stopped during the outage:\n{}",
                device.log_text()
            );
            ensure!(
                applied(dir.path(), d) == ("a2".into(), "b2".into()),
                "device {d} lost its configs during the outage"
            );
        }
        for i in 0..3 {
            etcd.restart(i)?;
        }
        mlag_testbed::wait_until(Duration::from_secs(60), "a write after the outage", || {
            put_key(&ns, &bases[1], "a", "a3").map_err(|e| e.to_string())
        })?;
        put_key(&ns, &bases[1], "b", "b3")?;
        let took = wait_applied(dir.path(), DEVICES, ("a3", "b3"), Duration::from_secs(60))?;
        eprintln!("after etcd came back, devices applied v3 within {took:?}");
        Ok(())
    };
    let result = run();
    result.with_context(|| {
        format!(
            "center logs:\n{}\n{}\ndevice logs:\n{}",
            first.log_text(),
            second.log_text(),
            logs(&devices)
        )
    })
}
