//! SPEC 6.2 "subscription": config releases pushed over the fabric. A
//! config center runs on the fabric server's agent (sw0); a device agent
//! (sw1) does not long-poll and would ask its center only once an hour, so a
//! new version can reach it within the test only by the push.

use std::{path::Path, time::Duration, time::Instant};

use anyhow::Context as _;
use mlag_testbed::{
    agent::{Agent, TempDir, agent_binary},
    fabric::{self, FabricLab, switch_ip, wait_all_see},
    wait_until,
};

const KEY: &str = "fab/push/ntp";
const CENTER_PORT: u16 = 7488;

fn center_url() -> String {
    format!("http://{}:{CENTER_PORT}", switch_ip(0))
}

/// `sync-agent config ARGS --center URL -j` inside switch `n`'s namespace.
fn config(lab: &FabricLab, n: usize, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = lab.nodes[n].exec(
        agent_binary()?.to_str().context("path")?,
        &[args, &["--center", &center_url(), "-j"]].concat(),
    )?;
    serde_json::from_str(&out).with_context(|| format!("config {args:?} answered {out}"))
}

fn device_counters(agent: &Agent) -> anyhow::Result<serde_json::Value> {
    Ok(agent.query(&["show", "rollout"])?["device"]["counters"].clone())
}

fn wait_file(path: &Path, content: &str) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(15),
        &format!("{} to hold {content:?}", path.display()),
        || {
            let now = std::fs::read_to_string(path).unwrap_or_default();
            if now == content { Ok(()) } else { Err(now) }
        },
    )
}

#[test]
fn a_device_without_long_polling_gets_a_change_by_push() -> anyhow::Result<()> {
    let lab = FabricLab::new(2)?;
    let dir = TempDir::new("mlag-push")?;
    let servers = format!("servers = [\"{}\"]\n", switch_ip(0));
    let center = lab.start(
        0,
        &format!(
            "{servers}\n[rollout.center]\nlisten = \"{}:{CENTER_PORT}\"\ndb_path = \"{}\"\ninsecure = true\n",
            switch_ip(0),
            dir.path().join("center.redb").display()
        ),
    )?;
    let ntp = dir.path().join("ntp.conf");
    let device = lab.start(
        1,
        &format!(
            "{servers}\n[rollout.device]\ncenter = \"{}\"\ndevice = \"sw1\"\nbackup_dir = \"{}\"\nlong_poll = false\nrecheck_s = 3600\nservices = [ {{ name = \"ntp\", config = \"{KEY}\", path = \"{}\" }} ]\n",
            center_url(),
            dir.path().join("backup").display(),
            ntp.display()
        ),
    )?;
    wait_all_see(&[&device], &["sw1"], Duration::from_secs(15))?;
    wait_until(Duration::from_secs(15), "sw1 registered", || {
        let c = device_counters(&device).map_err(|e| e.to_string())?;
        (c["watches"].as_u64() >= Some(1))
            .then_some(())
            .ok_or(c.to_string())
    })?;
    let watches_before = device_counters(&device)?["watches"].as_u64().unwrap_or(0);

    for (round, content) in ["server 10.0.0.1\n", "server 10.0.0.2\n"]
        .iter()
        .enumerate()
    {
        let started = Instant::now();
        config(
            &lab,
            0,
            &[
                "config",
                "put",
                KEY,
                "--format",
                "text",
                "--content",
                content,
            ],
        )?;
        wait_file(&ntp, content)?;
        eprintln!(
            "round {round}: put -> applied on the device in {:?} (push only)",
            started.elapsed()
        );
    }
    let counters = device_counters(&device)?;
    assert!(
        counters["pushes"].as_u64() >= Some(2),
        "every change came by push: {counters}"
    );
    assert!(
        counters["watches"].as_u64().unwrap_or(0) - watches_before <= 2,
        "one ask per push, no polling: {counters}"
    );
    assert!(fabric::counter(&center, "releases_announced") >= 2);
    assert!(fabric::counter(&device, "releases_heard") >= 2);
    Ok(())
}
