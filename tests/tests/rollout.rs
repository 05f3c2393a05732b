//! SPEC 6 with real processes: a config-center agent and three device
//! agents on loopback in one namespace. Each device runs three dependent
//! services (`a` <- `b` <- `c`), small shell daemons that log every reload
//! (SIGHUP), so the order of applying is read from their logs.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use anyhow::Context as _;
use mlag_testbed::{
    agent::{Agent, TempDir, agent_binary},
    netns::{self, Netns},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(20);
const KEY: &str = "app/prod/common";

const SERVICE_SCRIPT: &str = r#"#!/bin/sh
# service.sh NAME CONFIG LOG PIDFILE: logs "<ns> NAME <first line of CONFIG>" on every SIGHUP.
echo $$ > "$4"
trap 'echo "$(date +%s%N) $1 $(head -n 1 "$2" 2>/dev/null)" >> "$3"' HUP
while :; do sleep 0.05 & wait $!; done
"#;

struct Bed {
    ns: Netns,
    _host: Netns,
    dir: TempDir,
    port: u16,
    daemons: Vec<Child>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn free_port() -> u16 {
    // A port unlikely to clash across parallel runs of this test binary.
    30000 + (std::process::id() % 20000) as u16 + (rand_u16() % 500)
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: getrandom writes at most 2 bytes into b.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    u16::from_ne_bytes(b)
}

impl Bed {
    fn new() -> anyhow::Result<Self> {
        let ns = Netns::new("mro")?;
        let host = Netns::new("mroh")?;
        for i in 0..4 {
            netns::veth(&ns, &format!("m{i}"), &host, &format!("h{i}"))?;
        }
        let dir = TempDir::new("mlag-rollout")?;
        std::fs::write(dir.path().join("service.sh"), SERVICE_SCRIPT)?;
        Ok(Self {
            ns,
            _host: host,
            dir,
            port: free_port(),
            daemons: Vec::new(),
        })
    }

    fn center_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The center: an agent with only `[rollout.center]` (no dataplane).
    fn center(&self, batch_size: usize) -> anyhow::Result<Agent> {
        let db = self.dir.path().join("center.redb");
        Agent::start(
            &self.ns,
            &format!(
                "instance = \"{{instance}}\"\n\n[rollout.center]\nlisten = \"127.0.0.1:{}\"\ndb_path = \"{}\"\nbatch_size = {batch_size}\n",
                self.port,
                db.display()
            ),
        )
    }

    /// SIGKILLs the center (no chance to write anything more) and starts it
    /// again on the same database.
    fn kill_and_restart_center(&self, center: &mut Agent, batch_size: usize) -> anyhow::Result<()> {
        let pid = center.pid().context("center running")?;
        // SAFETY: signalling a pid has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        center.wait_exit(Duration::from_secs(10))?;
        *center = self.center(batch_size)?;
        Ok(())
    }

    fn device_dir(&self, device: usize) -> PathBuf {
        self.dir.path().join(format!("dev{device}"))
    }

    /// Starts the three service daemons of a device (once).
    fn daemons(&mut self, device: usize) -> anyhow::Result<()> {
        let d = self.device_dir(device);
        std::fs::create_dir_all(&d)?;
        for svc in ["a", "b", "c"] {
            let child = Command::new("sh")
                .arg(self.dir.path().join("service.sh"))
                .arg(format!("dev{device}/{svc}"))
                .arg(d.join(format!("{svc}.conf")))
                .arg(self.dir.path().join("reloads.log"))
                .arg(d.join(format!("{svc}.pid")))
                .spawn()?;
            self.daemons.push(child);
        }
        wait_until(WAIT, "service pid files", || {
            ["a", "b", "c"]
                .iter()
                .all(|s| d.join(format!("{s}.pid")).exists())
                .then_some(())
                .ok_or(())
        })?;
        Ok(())
    }

    fn device(&self, device: usize) -> anyhow::Result<Agent> {
        let d = self.device_dir(device);
        let service = |name: &str, deps: &str| {
            let conf = d.join(format!("{name}.conf"));
            let pid = d.join(format!("{name}.pid"));
            format!(
                "  {{ name = \"{name}\", config = \"{KEY}\", path = \"{}\", reload = [\"sh\", \"-c\", \"kill -HUP $(cat {})\"], health = [\"grep\", \"-q\", \"ok\", \"{}\"], depends_on = [{deps}] }},\n",
                conf.display(),
                pid.display(),
                conf.display()
            )
        };
        let text = format!(
            "instance = \"{{instance}}\"\n[dataplane]\nmember_ports = [\"m{device}\"]\n\n[rollout.device]\ncenter = \"{}\"\ndevice = \"dev{device}\"\nbackup_dir = \"{}\"\nservices = [\n{}{}{}]\n",
            self.center_url(),
            d.join("backup").display(),
            service("a", ""),
            service("b", "\"a\""),
            service("c", "\"b\"")
        );
        Agent::start(&self.ns, &text)
    }

    /// `sync-agent config ARGS --center URL` inside the namespace.
    fn config(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = self.ns.exec(
            agent_binary()?.to_str().context("path")?,
            &[&["config"], args, &["--center", &self.center_url(), "-j"]].concat(),
        )?;
        serde_json::from_str(&out).with_context(|| format!("config {args:?} answered {out}"))
    }

    fn reloads(&self) -> Vec<(u128, String, String)> {
        std::fs::read_to_string(self.dir.path().join("reloads.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                Some((
                    parts.next()?.parse().ok()?,
                    parts.next()?.to_string(),
                    parts.next().unwrap_or("").to_string(),
                ))
            })
            .collect()
    }

    fn conf(&self, device: usize, svc: &str) -> String {
        std::fs::read_to_string(self.device_dir(device).join(format!("{svc}.conf")))
            .unwrap_or_default()
    }
}

fn wait_all_reloaded(bed: &Bed, devices: &[usize], line: &str) -> anyhow::Result<()> {
    wait_until(
        WAIT,
        &format!("every service reloaded with '{line}'"),
        || {
            let reloads = bed.reloads();
            let missing: Vec<String> = devices
                .iter()
                .flat_map(|d| ["a", "b", "c"].map(|s| format!("dev{d}/{s}")))
                .filter(|who| !reloads.iter().any(|(_, w, l)| w == who && l == line))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(missing)
            }
        },
    )
}

/// The rollout of `version`, now.
fn rollout_of(bed: &Bed, version: u64) -> anyhow::Result<serde_json::Value> {
    let rollouts = bed.config(&["rollouts"])?;
    rollouts
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["version"] == version)
        .cloned()
        .with_context(|| format!("no rollout of version {version}: {rollouts}"))
}

/// Waits for the rollout of `version` to be `state` at batch `batch`.
fn wait_rollout_at(
    bed: &Bed,
    version: u64,
    state: &str,
    batch: u64,
) -> anyhow::Result<serde_json::Value> {
    wait_until(
        WAIT,
        &format!("rollout of version {version} {state} at batch {batch}"),
        || {
            let r = rollout_of(bed, version).map_err(|e| e.to_string())?;
            if r["state"] == state && r["current_batch"] == batch {
                Ok(r)
            } else {
                Err(r.to_string())
            }
        },
    )
}

fn wait_rollout(bed: &Bed, version: u64, state: &str) -> anyhow::Result<serde_json::Value> {
    wait_until(
        WAIT,
        &format!("rollout of version {version} {state}"),
        || {
            let rollouts = bed.config(&["rollouts"]).map_err(|e| e.to_string())?;
            let r = rollouts
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["version"] == version)
                .cloned();
            match r {
                Some(r) if r["state"] == state => Ok(r),
                other => Err(format!("{other:?}")),
            }
        },
    )
}

#[test]
fn a_change_rolls_out_one_service_per_device_per_batch_in_dependency_order() -> anyhow::Result<()> {
    let mut bed = Bed::new()?;
    let _center = bed.center(2)?;
    bed.config(&["put", KEY, "--format", "text", "--content", "ok v1"])?;
    let mut devices = Vec::new();
    for d in 1..=3 {
        bed.daemons(d)?;
        devices.push(bed.device(d)?);
    }
    wait_all_reloaded(&bed, &[1, 2, 3], "ok v1")?;

    let put = bed.config(&["put", KEY, "--format", "text", "--content", "ok v2"])?;
    assert_eq!(put["version"], 2);
    let rollout = wait_rollout(&bed, 2, "done")?;
    wait_all_reloaded(&bed, &[1, 2, 3], "ok v2")?;

    // No device twice in a batch; each batch released only after the previous one succeeded.
    let batches = rollout["batches"].as_array().context("batches")?;
    let mut previous_acked = 0u64;
    for batch in batches {
        let steps = batch.as_array().unwrap();
        assert!(steps.len() <= 2, "batch size 2: {batch}");
        let mut devices_in_batch: Vec<&str> =
            steps.iter().filter_map(|s| s["device"].as_str()).collect();
        devices_in_batch.sort();
        let before = devices_in_batch.len();
        devices_in_batch.dedup();
        assert_eq!(
            before,
            devices_in_batch.len(),
            "a device twice in one batch: {batch}"
        );
        let assigned = steps
            .iter()
            .filter_map(|s| s["assigned_ms"].as_u64())
            .min()
            .context("assigned")?;
        assert!(
            assigned >= previous_acked,
            "batch released before the previous one was acknowledged"
        );
        previous_acked = steps
            .iter()
            .filter_map(|s| s["acked_ms"].as_u64())
            .max()
            .context("acked")?;
        assert!(steps.iter().all(|s| s["state"] == "succeeded"));
    }
    // Dependency order on every device, from the services' own reload logs.
    let reloads = bed.reloads();
    for d in 1..=3 {
        let at = |svc: &str| {
            reloads
                .iter()
                .find(|(_, w, l)| *w == format!("dev{d}/{svc}") && l == "ok v2")
                .map(|r| r.0)
                .unwrap()
        };
        assert!(
            at("a") < at("b") && at("b") < at("c"),
            "dev{d}: a, b, c in order"
        );
    }

    // Same content, new version: nothing is fetched or applied again.
    let counters = |agent: &Agent| -> anyhow::Result<(u64, u64)> {
        let c = agent.query(&["show", "rollout"])?["device"]["counters"].clone();
        Ok((
            c["fetched"].as_u64().unwrap_or(0),
            c["applied"].as_u64().unwrap_or(0),
        ))
    };
    let before: Vec<(u64, u64)> = devices
        .iter()
        .map(counters)
        .collect::<anyhow::Result<_>>()?;
    let same = bed.config(&[
        "put",
        KEY,
        "--format",
        "text",
        "--content",
        "ok v2",
        "--description",
        "same bytes",
    ])?;
    assert_eq!(same["version"], 3);
    wait_rollout(&bed, 3, "done")?;
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<(u64, u64)> = devices
        .iter()
        .map(counters)
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(
        before, after,
        "an MD5-equal version is neither fetched nor applied"
    );
    Ok(())
}

#[test]
fn a_failing_health_check_restores_the_old_file_and_pauses_the_rollout() -> anyhow::Result<()> {
    let mut bed = Bed::new()?;
    let _center = bed.center(1)?;
    bed.config(&["put", KEY, "--format", "text", "--content", "ok v1"])?;
    let mut devices = Vec::new();
    for d in 1..=2 {
        bed.daemons(d)?;
        devices.push(bed.device(d)?);
    }
    wait_all_reloaded(&bed, &[1, 2], "ok v1")?;
    let put_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    bed.config(&["put", KEY, "--format", "text", "--content", "bad v2"])?;
    let rollout = wait_rollout(&bed, 2, "paused")?;
    assert!(
        !rollout["paused_reason"].as_str().unwrap_or("").is_empty(),
        "{rollout}"
    );
    // The failed step's device applied v2 and counted the failure; its
    // service was reloaded with v1 again after the put (the restore); nobody
    // else was touched. (The daemon's log alone cannot show the v2 reload:
    // two SIGHUPs close together run its trap once, after the restore.)
    let failed = &rollout["batches"][0][0];
    assert_eq!(failed["state"], "failed", "{rollout}");
    let device = failed["device"].as_str().context("device")?;
    let who = format!(
        "{device}/{}",
        failed["service"].as_str().context("service")?
    );
    let index: usize = device.trim_start_matches("dev").parse()?;
    let counters = devices[index - 1].query(&["show", "rollout"])?["device"]["counters"].clone();
    assert!(counters["failed"].as_u64() >= Some(1), "{counters}");
    wait_until(
        WAIT,
        &format!("{who} reloaded with v1 after the put of v2"),
        || {
            bed.reloads()
                .iter()
                .any(|(at, w, l)| *at > put_at && *w == who && l == "ok v1")
                .then_some(())
                .ok_or("not restored yet")
        },
    )?;
    for d in 1..=2 {
        for s in ["a", "b", "c"] {
            assert_eq!(bed.conf(d, s), "ok v1", "dev{d}/{s}");
        }
    }
    // Rollback gives a new version with the old content.
    let back = bed.config(&["rollback", KEY, "--version", "1"])?;
    assert_eq!(
        (back["version"].as_u64(), back["content"].as_str()),
        (Some(3), Some("ok v1"))
    );
    let history = bed.config(&["history", KEY])?;
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(3),
        "history intact: {history}"
    );
    Ok(())
}

#[test]
fn a_restarted_device_restores_its_services_from_its_backup_before_asking_the_center()
-> anyhow::Result<()> {
    let mut bed = Bed::new()?;
    let mut center = bed.center(10)?;
    bed.config(&["put", KEY, "--format", "text", "--content", "ok v1"])?;
    bed.daemons(1)?;
    let mut device = bed.device(1)?;
    wait_all_reloaded(&bed, &[1], "ok v1")?;
    device.stop()?;
    center.stop()?;
    for s in ["a", "b", "c"] {
        std::fs::remove_file(bed.device_dir(1).join(format!("{s}.conf")))?;
    }
    let device = bed.device(1)?;
    wait_until(WAIT, "files restored from the local backup", || {
        if ["a", "b", "c"].iter().all(|s| bed.conf(1, s) == "ok v1") {
            Ok(())
        } else {
            Err(())
        }
    })?;
    // A file is written before its service's reload, and the report is
    // published after it: the count follows the files by a reload.
    wait_until(WAIT, "3 services restored in the report", || {
        let report = device
            .query(&["show", "rollout"])
            .map_err(|e| e.to_string())?;
        if report["device"]["counters"]["restored_from_backup"] == 3 {
            Ok(())
        } else {
            Err(report.to_string())
        }
    })?;
    let _ = Path::new("");
    Ok(())
}

#[test]
fn a_center_alone_runs_without_a_dataplane_and_status_names_its_role() -> anyhow::Result<()> {
    let bed = Bed::new()?;
    let center = bed.center(1)?;
    let status = center.query(&["status"])?;
    assert_eq!(
        status["roles"],
        serde_json::json!(["rollout-center"]),
        "{status}"
    );
    assert_eq!(status["ports"], serde_json::json!([]), "{status}");
    assert!(
        center.log_text().contains("roles: rollout-center"),
        "{}",
        center.log_text()
    );
    // And it serves.
    let put = bed.config(&["put", KEY, "--format", "text", "--content", "ok v1"])?;
    assert_eq!(put["version"], 1);
    Ok(())
}

#[test]
fn a_rollout_continues_exactly_where_it_was_after_the_center_is_killed() -> anyhow::Result<()> {
    let mut bed = Bed::new()?;
    let mut center = bed.center(1)?;
    bed.config(&["put", KEY, "--format", "text", "--content", "ok v1"])?;
    let mut devices = Vec::new();
    for d in 1..=2 {
        bed.daemons(d)?;
        devices.push(bed.device(d)?);
    }
    wait_all_reloaded(&bed, &[1, 2], "ok v1")?;

    // Kill 1: paused for approval after the first batch (dev1/a).
    bed.config(&[
        "put",
        KEY,
        "--format",
        "text",
        "--content",
        "ok v2",
        "--approve-each-batch",
    ])?;
    let before = wait_rollout_at(&bed, 2, "paused", 1)?;
    let id = before["id"].as_u64().context("id")?;
    bed.kill_and_restart_center(&mut center, 1)?;
    let after = rollout_of(&bed, 2)?;
    assert_eq!(after["state"], "paused", "{after}");
    assert_eq!(after["current_batch"], 1, "{after}");
    assert_eq!(after["batches"], before["batches"], "steps unchanged");
    // The devices poll the restarted center (several times: 1 s apart at
    // most after a refused connection); the unreleased batch stays so.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rollout_of(&bed, 2)?["batches"], before["batches"]);
    let next = &before["batches"][1][0];
    let (dev, svc) = (
        next["device"].as_str().context("device")?,
        next["service"].as_str().context("service")?,
    );
    let d: usize = dev.trim_start_matches("dev").parse()?;
    assert_eq!(
        bed.conf(d, svc),
        "ok v1",
        "{dev}/{svc} got v2 outside its batch"
    );
    // A device that registers again is not handed v2 either.
    let restarted = d - 1;
    devices[restarted].stop()?;
    devices[restarted] = bed.device(d)?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        bed.conf(d, svc),
        "ok v1",
        "{dev}/{svc} got v2 on re-registering"
    );

    // Kill 2: right after releasing a batch (its step assigned, maybe
    // applied, its ack maybe lost): the step completes after the restart.
    bed.config(&["continue", &id.to_string()])?;
    bed.kill_and_restart_center(&mut center, 1)?;
    wait_rollout_at(&bed, 2, "paused", 2)?;

    // Go on to the end, one approval per batch.
    for batch in 3..=6 {
        bed.config(&["continue", &id.to_string()])?;
        if batch < 6 {
            wait_rollout_at(&bed, 2, "paused", batch)?;
        }
    }
    wait_rollout(&bed, 2, "done")?;
    wait_all_reloaded(&bed, &[1, 2], "ok v2")?;

    // Kill 3: paused after a failure; the failed version never reaches the
    // other device, and the rollout still says why it stopped.
    bed.config(&["put", KEY, "--format", "text", "--content", "bad v3"])?;
    let paused = wait_rollout(&bed, 3, "paused")?;
    bed.kill_and_restart_center(&mut center, 1)?;
    // The API shows committed state only: a rollout it showed paused is
    // paused on disk, so it is paused at once after the restart.
    let after = rollout_of(&bed, 3)?;
    assert_eq!(after["state"], "paused", "{after}");
    assert_eq!(after["paused_reason"], paused["paused_reason"], "{after}");
    std::thread::sleep(Duration::from_secs(3));
    for s in ["a", "b", "c"] {
        assert_eq!(
            bed.conf(2, s),
            "ok v2",
            "dev2/{s} was handed the failed version"
        );
    }
    assert_eq!(rollout_of(&bed, 3)?["state"], "paused");
    Ok(())
}

#[test]
fn canaries_go_first_alone_and_listeners_show_confirmed_versions() -> anyhow::Result<()> {
    let mut bed = Bed::new()?;
    let _center = bed.center(10)?;
    bed.config(&["put", KEY, "--format", "text", "--content", "ok v1"])?;
    let mut devices = Vec::new();
    for d in 1..=3 {
        bed.daemons(d)?;
        devices.push(bed.device(d)?);
    }
    wait_all_reloaded(&bed, &[1, 2, 3], "ok v1")?;

    bed.config(&[
        "put",
        KEY,
        "--format",
        "text",
        "--content",
        "ok v2",
        "--canary",
        "dev3",
        "--approve-each-batch",
    ])?;
    let r = wait_rollout_at(&bed, 2, "paused", 1)?;
    let first: Vec<&str> = r["batches"][0]
        .as_array()
        .context("batch")?
        .iter()
        .filter_map(|s| s["device"].as_str())
        .collect();
    assert_eq!(first, vec!["dev3"], "the canary alone first: {r}");
    assert!(
        r["paused_reason"]
            .as_str()
            .unwrap_or("")
            .contains("approval"),
        "{r}"
    );
    // Listeners: dev3/a confirmed v2, the rest still v1, each with its MD5.
    let listeners = bed.config(&["listeners", KEY])?;
    let rows = listeners.as_array().context("listeners")?;
    assert_eq!(rows.len(), 9, "{listeners}");
    let v1 = bed.config(&["get", KEY, "--version", "1"])?["md5"].clone();
    let v2 = bed.config(&["get", KEY])?["md5"].clone();
    for row in rows {
        let canary = row["device"] == "dev3" && row["service"] == "a";
        let (version, md5) = if canary { (2, &v2) } else { (1, &v1) };
        assert_eq!(row["version"], version, "{row}");
        assert_eq!(&row["md5"], md5, "{row}");
    }
    assert_eq!(bed.conf(1, "a"), "ok v1", "dev1 waits for the approval");
    // An unknown canary is refused before anything is stored.
    let refused = bed.config(&[
        "put",
        KEY,
        "--format",
        "text",
        "--content",
        "ok v3",
        "--canary",
        "nobody",
    ]);
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(bed.config(&["get", KEY])?["version"], 2);
    Ok(())
}

#[test]
fn an_operator_skips_a_dead_device_aborts_a_rollout_and_removes_the_device() -> anyhow::Result<()> {
    let mut bed = Bed::new()?;
    let _center = bed.center(1)?;
    bed.config(&["put", KEY, "--format", "text", "--content", "ok v1"])?;
    let mut devices = Vec::new();
    for d in 1..=2 {
        bed.daemons(d)?;
        devices.push(bed.device(d)?);
    }
    wait_all_reloaded(&bed, &[1, 2], "ok v1")?;
    let listed = bed.config(&["devices"])?;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // dev2 dies; v2 reaches dev1 and waits for dev2 until skipped.
    devices[1].stop()?;
    bed.config(&["put", KEY, "--format", "text", "--content", "ok v2"])?;
    let waiting = wait_rollout_at(&bed, 2, "running", 3)?;
    let id = waiting["id"].as_u64().context("id")?.to_string();
    wait_all_reloaded(&bed, &[1], "ok v2")?;
    let skipped = bed.config(&["skip", &id, "dev2"])?;
    assert_eq!(skipped["state"], "done", "{skipped}");
    assert!(
        skipped["batches"][3][0]["state"] == "skipped",
        "dev2's step skipped: {skipped}"
    );

    // A paused rollout is aborted: its released step goes back to v2.
    bed.config(&["put", KEY, "--format", "text", "--content", "bad v3"])?;
    wait_rollout(&bed, 3, "paused")?;
    let aborted = bed.config(&["abort", &wait_rollout(&bed, 3, "paused")?["id"].to_string()])?;
    assert_eq!(aborted["state"], "done", "{aborted}");
    assert!(
        aborted["paused_reason"]
            .as_str()
            .unwrap_or("")
            .contains("aborted"),
        "{aborted}"
    );
    assert!(aborted["batches"][1][0]["state"] == "skipped", "{aborted}");

    // dev2 is decommissioned.
    bed.config(&["remove-device", "dev2"])?;
    let listed = bed.config(&["devices"])?;
    let names: Vec<&str> = listed
        .as_array()
        .context("devices")?
        .iter()
        .filter_map(|d| d["device"].as_str())
        .collect();
    assert_eq!(names, vec!["dev1"]);
    Ok(())
}

/// `curl -X METHOD URL [--data-binary BODY]` inside the bed's namespace:
/// the HTTP status and the body.
fn curl(bed: &Bed, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    let url = format!("{}{path}", bed.center_url());
    let mut args = vec![
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        "-H",
        "content-type: application/json",
    ];
    if let Some(body) = body {
        args.extend(["--data-binary", body]);
    }
    args.push(&url);
    let out = bed.ns.exec("curl", &args)?;
    let (text, code) = out.trim_end().rsplit_once('\n').context("curl output")?;
    Ok((code.parse()?, text.to_string()))
}

#[test]
fn bad_requests_get_a_clear_4xx_are_counted_and_change_nothing() -> anyhow::Result<()> {
    let mut bed = Bed::new()?;
    let _center = bed.center(1)?;
    bed.config(&["put", KEY, "--format", "text", "--content", "ok v1"])?;
    bed.daemons(1)?;
    let _device = bed.device(1)?;
    wait_all_reloaded(&bed, &[1], "ok v1")?;
    let config = format!("/v1/configs/{KEY}");

    // Over the 1 MiB default: 413, naming the limit.
    let big = bed.dir.path().join("big.json");
    std::fs::write(
        &big,
        format!(
            "{{\"format\": \"text\", \"content\": \"{}\"}}",
            "x".repeat(2 << 20)
        ),
    )?;
    let (code, text) = curl(&bed, "PUT", &config, Some(&format!("@{}", big.display())))?;
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("bytes"), "{text}");
    // An unknown format, content that is not its format, a malformed key: 400.
    let (code, text) = curl(
        &bed,
        "PUT",
        &config,
        Some(r#"{"format": "exe", "content": "x"}"#),
    )?;
    assert_eq!(code, 400, "{text}");
    let (code, text) = curl(
        &bed,
        "PUT",
        &config,
        Some(r#"{"format": "json", "content": "{nope"}"#),
    )?;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("invalid json content"), "{text}");
    let (code, text) = curl(
        &bed,
        "PUT",
        "/v1/configs/app/prod/bad%20name",
        Some(r#"{"format": "text", "content": "x"}"#),
    )?;
    assert_eq!(code, 400, "{text}");
    // Acknowledgements from a stranger and for a rollout never sent.
    let ack = r#"{"rollout_id": 999, "service": "a", "version": 7, "ok": true}"#;
    let (code, text) = curl(&bed, "POST", "/v1/devices/ghost/ack", Some(ack))?;
    assert_eq!(code, 404, "{text}");
    let (code, text) = curl(&bed, "POST", "/v1/devices/dev1/ack", Some(ack))?;
    assert!(code == 404 || code == 409, "{code} {text}");

    // Nothing half-applied: still version 1, one entry of history.
    let history = bed.config(&["history", KEY])?;
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    // Every refusal counted under its reason.
    let stats = bed.config(&["stats"])?;
    let refused = &stats["refused"];
    assert_eq!(refused["too_large"], 1, "{stats}");
    assert_eq!(refused["invalid"], 3, "{stats}");
    let total: u64 = refused
        .as_object()
        .context("refused")?
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert_eq!(total, 6, "{stats}");
    Ok(())
}
