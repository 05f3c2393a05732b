//! SPEC 6.1 with a real process: the config center is SIGKILLed in the
//! middle of a burst of concurrent writes (over HTTP, group-committed) and
//! restarted on the same store: the redb file, or a real etcd (`store =
//! "etcd"`, one etcd transaction per group commit). Every write it
//! acknowledged must be there after the restart, and nothing may be
//! half-applied: each stored version has its audit record and its rollout
//! (a put and the rollout it starts are one transaction), versions have no
//! gaps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mlag_testbed::{
    agent::{Agent, TempDir},
    etcd::Etcd,
    netns::Netns,
};

/// Concurrent writers.
const WRITERS: usize = 48;
/// Config keys they write (several writers per key, racing on versions).
const KEYS: usize = 8;
/// Devices using every key (so every put starts a rollout).
const DEVICES: usize = 3;
/// Acknowledged writes before the kill.
const KILL_AFTER: usize = 400;

/// The center's config; `etcd`: its client URL (`store = "etcd"`), else
/// the state is in the redb file `db`.
fn center_config(port: u16, db: &std::path::Path, etcd: Option<&str>) -> String {
    let store = match etcd {
        Some(url) => format!("store = \"etcd\"\netcd_endpoints = [\"{url}\"]\n"),
        None => String::new(),
    };
    format!(
        "instance = \"{{instance}}\"\n\n[rollout.center]\nlisten = \"127.0.0.1:{port}\"\ndb_path = \"{}\"\nbatch_size = 2\n{store}",
        db.display()
    )
}

fn key(k: usize) -> String {
    format!("crash/prod/k{k}")
}

/// An acknowledged write: what the center answered.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    version: u64,
    md5: String,
    content: String,
}

#[test]
fn acknowledged_writes_survive_a_sigkill_mid_burst_and_none_is_half_applied() -> anyhow::Result<()>
{
    let ns = Netns::new("mcc")?;
    sigkill_mid_burst(&ns, None)
}

#[test]
fn on_etcd_acknowledged_writes_survive_a_sigkill_mid_burst_and_none_is_half_applied()
-> anyhow::Result<()> {
    let ns = Netns::new("mce")?;
    let etcd = Etcd::start(&ns)?;
    sigkill_mid_burst(&ns, Some(&etcd.url)).with_context(|| format!("etcd log:\n{}", etcd.log()))
}

fn sigkill_mid_burst(ns: &Netns, etcd: Option<&str>) -> anyhow::Result<()> {
    let dir = TempDir::new("mlag-center-crash")?;
    let db = dir.path().join("center.redb");
    let port = 30000 + (std::process::id() % 20000) as u16;
    let base = format!("http://127.0.0.1:{port}");
    let mut center = Agent::start(ns, &center_config(port, &db, etcd))?;
    let pid = center.pid().context("center running")? as i32;

    let (acked, refused) = ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(burst(&base, pid))
    })?;
    center.wait_exit(Duration::from_secs(10))?;
    assert!(
        acked.len() >= KILL_AFTER,
        "only {} writes acknowledged before the kill",
        acked.len()
    );
    assert!(
        refused > 0,
        "no write was cut off by the kill: it did not land mid-burst"
    );

    let center = Agent::start(ns, &center_config(port, &db, etcd))?;
    ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(check(&base, &acked))
    })?;
    let log = center.log_text();
    if etcd.is_some() {
        assert!(
            !db.exists() && log.contains("store=etcd"),
            "the center did not keep its state in etcd:\n{log}"
        );
    }
    assert!(
        !log.contains("had no rollout stored"),
        "a version was stored without its rollout:\n{log}"
    );
    Ok(())
}

/// Registers the devices, then runs the writers until the kill cuts them
/// off; returns the acknowledged writes and how many writers were refused.
async fn burst(base: &str, pid: i32) -> anyhow::Result<(Vec<Acked>, usize)> {
    let client = reqwest::Client::new();
    for d in 0..DEVICES {
        let services: Vec<serde_json::Value> = (0..KEYS)
            .map(|k| {
                let config = serde_json::json!({ "namespace": "crash", "group": "prod", "name": format!("k{k}") });
                serde_json::json!({ "name": format!("s{k}"), "config": config, "depends_on": [] })
            })
            .collect();
        let answer = client
            .post(format!("{base}/v1/devices/dev{d}/register"))
            .json(&serde_json::json!({ "services": services }))
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "register: {}",
            answer.text().await?
        );
    }
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (client, acked, count) = (client.clone(), acked.clone(), count.clone());
        let base = base.to_string();
        writers.spawn(async move {
            let key = key(w % KEYS);
            for i in 0.. {
                let content = format!("writer {w} write {i}");
                let body = serde_json::json!({ "format": "text", "content": content, "author": format!("w{w}") });
                let answer = client
                    .put(format!("{base}/v1/configs/{key}"))
                    .json(&body)
                    .send()
                    .await;
                // Cut off by the kill (connection refused or reset): this
                // write may or may not be stored, and the writer stops.
                let Ok(answer) = answer else { return true };
                if !answer.status().is_success() {
                    return true;
                }
                let Ok(record) = answer.json::<serde_json::Value>().await else {
                    return true;
                };
                acked.lock().unwrap().push(Acked {
                    key: key.clone(),
                    version: record["version"].as_u64().unwrap_or(0),
                    md5: record["md5"].as_str().unwrap_or_default().to_string(),
                    content,
                });
                count.fetch_add(1, Ordering::Relaxed);
            }
            false
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Relaxed) < KILL_AFTER {
        if Instant::now() > deadline {
            bail!(
                "only {} writes acknowledged in 60 s",
                count.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // SAFETY: signalling a pid has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut refused = 0;
    while let Some(done) = writers.join_next().await {
        refused += usize::from(done?);
    }
    let acked = acked.lock().unwrap().clone();
    Ok((acked, refused))
}

async fn get(client: &reqwest::Client, url: String) -> anyhow::Result<serde_json::Value> {
    let answer = client.get(&url).send().await?;
    anyhow::ensure!(
        answer.status().is_success(),
        "GET {url}: {}",
        answer.status()
    );
    Ok(answer.json().await?)
}

/// Every acknowledged write is stored as it was answered; every stored
/// version has its audit record and the newest of each key its rollout.
async fn check(base: &str, acked: &[Acked]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let mut stored: BTreeMap<String, BTreeMap<u64, (String, String)>> = BTreeMap::new();
    for k in 0..KEYS {
        let history = get(&client, format!("{base}/v1/configs/{}/history", key(k))).await?;
        let versions = stored.entry(key(k)).or_default();
        for record in history.as_array().context("history")? {
            versions.insert(
                record["version"].as_u64().context("version")?,
                (
                    record["content"].as_str().context("content")?.to_string(),
                    record["md5"].as_str().context("md5")?.to_string(),
                ),
            );
        }
        let numbers: Vec<u64> = versions.keys().copied().collect();
        let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
        assert_eq!(numbers, expected, "{}: versions with gaps", key(k));
    }
    for a in acked {
        let got = stored.get(&a.key).and_then(|v| v.get(&a.version));
        assert_eq!(
            got,
            Some(&(a.content.clone(), a.md5.clone())),
            "acknowledged write {a:?} lost or changed after the SIGKILL"
        );
    }
    let audit = get(&client, format!("{base}/v1/audit?limit=10000")).await?;
    let audited: BTreeSet<(String, u64, String)> = audit
        .as_array()
        .context("audit")?
        .iter()
        .filter(|e| e["action"] == "put")
        .map(|e| {
            (
                e["key"].as_str().unwrap_or_default().to_string(),
                e["version"].as_u64().unwrap_or(0),
                e["md5"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let versions: BTreeSet<(String, u64, String)> = stored
        .iter()
        .flat_map(|(k, v)| v.iter().map(|(n, (_, md5))| (k.clone(), *n, md5.clone())))
        .collect();
    assert_eq!(
        audited, versions,
        "audit records and stored versions differ (one written without the other)"
    );
    let rollouts = get(&client, format!("{base}/v1/rollouts")).await?;
    for (k, v) in &stored {
        let newest = *v.keys().last().context("a version")?;
        let of_key: Vec<u64> = rollouts
            .as_array()
            .context("rollouts")?
            .iter()
            .filter(|r| {
                let named = format!(
                    "{}/{}/{}",
                    r["key"]["namespace"].as_str().unwrap_or_default(),
                    r["key"]["group"].as_str().unwrap_or_default(),
                    r["key"]["name"].as_str().unwrap_or_default()
                );
                &named == k
            })
            .filter_map(|r| r["version"].as_u64())
            .collect();
        assert!(
            of_key.contains(&newest),
            "{k} version {newest} has no rollout (rollouts of versions {of_key:?})"
        );
    }
    let devices = get(&client, format!("{base}/v1/devices")).await?;
    assert_eq!(devices.as_array().map(Vec::len), Some(DEVICES), "{devices}");
    Ok(())
}
