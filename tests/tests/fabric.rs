//! Fabric sync over MQTT (SPEC 4) with real agent processes in namespaces on
//! one bridge: two servers (primary sw0, backup sw1) and clients.

use std::{process::Command, time::Duration};

use anyhow::Context as _;

use mlag_testbed::{
    fabric::{
        FabricLab, HUB_IP, counter, heartbeat_gaps, median, setting, show, switch_ip, up_members,
        wait_active, wait_all_see, wait_fault, wait_setting,
    },
    wait_until,
};
use sync_agent::fabric::{
    identity::Identity,
    seal::Codec,
    wire::{ConfigChange, Heartbeat, Membership, Message, Role, ServerStatus, Topics},
};

const SETTLE: Duration = Duration::from_secs(20);

#[test]
fn members_see_each_other_apply_config_and_hear_faults() -> anyhow::Result<()> {
    let lab = FabricLab::new(4)?;
    let agents: Vec<_> = (0..4).map(|n| lab.start(n, "")).collect::<Result<_, _>>()?;
    let all: Vec<&_> = agents.iter().collect();
    wait_all_see(&all, &["sw0", "sw1", "sw2", "sw3"], SETTLE)?;

    let roles: Vec<_> = agents
        .iter()
        .map(|a| show(a).map(|f| (f["role"].clone(), f["rank"].clone())))
        .collect::<Result<_, _>>()?;
    assert_eq!(roles[0], ("both".into(), 0.into()));
    assert_eq!(roles[1], ("both".into(), 1.into()));
    assert_eq!(roles[2], ("client".into(), serde_json::Value::Null));
    wait_until(SETTLE, "primary active and backup standby", || {
        let (p, b) = (show(&agents[0]).unwrap(), show(&agents[1]).unwrap());
        if p["active"] == true && b["active"] == false {
            Ok(())
        } else {
            Err((p["active"].clone(), b["active"].clone()))
        }
    })?;
    let member = show(&agents[3])?["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["identity"] == "sw2")
        .cloned()
        .unwrap();
    assert_eq!(member["model"], "lab-switch");
    assert_eq!(member["role"], "client");
    assert!(
        member["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some(switch_ip(2).as_str()))
    );

    // A change made on a client reaches and is acknowledged by everyone.
    agents[2].query(&["fabric", "set", "site.ntp", "10.9.9.9"])?;
    for agent in &agents {
        wait_setting(agent, "site.ntp", "10.9.9.9", SETTLE)?;
    }
    wait_until(SETTLE, "every member's ack at the origin", || {
        let s = setting(&agents[2], "site.ntp").unwrap().unwrap();
        let acks = s["acks"].as_object().unwrap();
        if acks.len() == 4 && acks.values().all(|v| v == "applied") {
            Ok(())
        } else {
            Err(s)
        }
    })?;
    // The origin holds its change before the active server's retained
    // record of it comes back, so that record is dropped before its
    // signature check, and counted.
    wait_until(
        SETTLE,
        "the server's record dropped as already held",
        || match counter(&agents[2], "setting_already_held") {
            0 => Err(show(&agents[2]).map(|f| f["counters"].clone()).ok()),
            n => Ok(n),
        },
    )?;
    let s = setting(&agents[0], "site.ntp")?.unwrap();
    assert_eq!(s["changed_by"], "sw2");
    assert!(
        show(&agents[2])?["pending_changes"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A setting that changes behaviour: the heartbeat interval. Measured on
    // the wire (arrival gaps of sw3's heartbeats at the broker), before and
    // after, against the midpoint of the two intervals: the lab's 300 ms
    // and the 600 ms set here are far enough apart that only a switch
    // really heartbeating at the new interval passes.
    let broker = switch_ip(0);
    let window = Duration::from_secs(4);
    let midpoint = Duration::from_millis(450);
    let before = heartbeat_gaps(&lab, &broker, "sw3", window)?;
    let old = median(&before).context("no heartbeats from sw3 before the change")?;
    assert!(
        before.len() >= 4 && old < midpoint,
        "sw3 should heartbeat every ~300 ms before the change: gaps {before:?}"
    );
    agents[0].query(&["fabric", "set", "heartbeat_interval_ms", "600"])?;
    for agent in &agents {
        wait_setting(agent, "heartbeat_interval_ms", "600", SETTLE)?;
    }
    // The timer follows the setting at its next tick.
    std::thread::sleep(Duration::from_millis(700));
    let after = heartbeat_gaps(&lab, &broker, "sw3", window)?;
    let new = median(&after).context("no heartbeats from sw3 after the change")?;
    assert!(
        after.len() >= 3 && new > midpoint,
        "sw3 should heartbeat every ~600 ms after the change (median {new:?}, before {old:?}): gaps {after:?}"
    );
    assert!(
        after.len() < before.len(),
        "fewer heartbeats in the same window at the longer interval: {} before, {} after",
        before.len(),
        after.len()
    );
    wait_all_see(&all, &["sw0", "sw1", "sw2", "sw3"], SETTLE)?;

    // Unknown settings and bad values are refused with a reason.
    let err = agents[1]
        .query(&["fabric", "set", "bogus", "1"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown setting 'bogus'"), "{err}");
    let err = agents[1]
        .query(&["fabric", "set", "heartbeat_interval_ms", "5"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("between 100 and 60000"), "{err}");

    // An abrupt loss (SIGKILL, no goodbye) is announced from the MQTT last will.
    let mut agents = agents;
    let pid = agents[3].pid().unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = agents[3].wait_exit(Duration::from_secs(5));
    wait_until(SETTLE, "sw3's departure from its last will", || {
        let f = show(&agents[2]).unwrap();
        let hit = f["announcements"].as_array().unwrap().iter().any(|a| {
            a["member"] == "sw3"
                && a["joined"] == false
                && a["reason"].as_str().unwrap_or("").contains("last will")
        });
        if hit {
            Ok(())
        } else {
            Err(f["announcements"].clone())
        }
    })?;
    assert!(!up_members(&agents[1])?.contains(&"sw3".to_string()));
    // A late joiner gets the whole fabric at once from the retained state:
    // the config in force (nobody sends it again) and the topology.
    agents[3] = lab.start(3, "")?;
    wait_setting(&agents[3], "site.ntp", "10.9.9.9", SETTLE)?;
    wait_setting(&agents[3], "heartbeat_interval_ms", "600", SETTLE)?;
    let all: Vec<&_> = agents.iter().collect();
    wait_all_see(&all, &["sw0", "sw1", "sw2", "sw3"], SETTLE)?;

    // A port taken down on sw3 is a fault everywhere else.
    lab.nodes[3].ip(&["link", "set", "p1b", "down"])?;
    for agent in &agents[..3] {
        wait_fault(agent, "sw3", "p1", "port-down", SETTLE)?;
    }
    // ... and feeds the state inference as `fabric port-down` on the remote port.
    wait_until(SETTLE, "sw0 infers sw3's p1 down", || {
        let state = agents[0]
            .query(&["show", "state", "port:sw3/p1"])
            .map_err(|e| e.to_string())?;
        let text = state.to_string();
        if text.contains("port-down") && text.contains("\"down\"") {
            Ok(())
        } else {
            Err(text)
        }
    })?;
    lab.nodes[3].ip(&["link", "set", "p1b", "up"])?;
    wait_fault(&agents[0], "sw3", "p1", "port-up", SETTLE)?;
    Ok(())
}

/// Runs `program args` in `ns` and returns stdout.
fn run_in(ns: &mlag_testbed::netns::Netns, program: &str, args: &[&str]) -> anyhow::Result<String> {
    ns.exec(program, args)
}

/// Raw publishes seen by a plain MQTT subscriber (mosquitto_sub), as
/// (topic, payload bytes).
fn sniff(
    ns: &mlag_testbed::netns::Netns,
    broker: &str,
    seconds: u32,
) -> anyhow::Result<std::process::Child> {
    Ok(Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "timeout",
            &seconds.to_string(),
            "mosquitto_sub",
            "-h",
            broker,
            "-t",
            "mlag-sync/#",
            "-F",
            "%t %x",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?)
}

fn sniffed(child: std::process::Child) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (topic, hex) = l.split_once(' ')?;
            Some((topic.to_string(), hex::decode(hex.trim()).ok()?))
        })
        .collect())
}

fn publish_raw(
    ns: &mlag_testbed::netns::Netns,
    broker: &str,
    topic: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("payload");
    std::fs::write(&file, payload)?;
    run_in(
        ns,
        "mosquitto_pub",
        &[
            "-h",
            broker,
            "-t",
            topic,
            "-q",
            "1",
            "-f",
            file.to_str().unwrap(),
        ],
    )?;
    Ok(())
}

#[test]
fn sealed_bodies_are_unreadable_on_the_wire_and_tampering_is_refused() -> anyhow::Result<()> {
    let lab = FabricLab::new(3)?;
    let key_dir = tempfile::tempdir()?;
    let key = key_dir.path().join("fabric.key");
    std::fs::write(&key, "6b".repeat(32))?;
    let extra = format!(
        "servers = [\"{}\"]\n[fabric.encryption]\nmode = \"aead\"\nkey_id = 7\nkey_file = \"{}\"\n",
        switch_ip(0),
        key.display()
    );
    let agents: Vec<_> = (0..3)
        .map(|n| lab.start(n, &extra))
        .collect::<Result<_, _>>()?;
    let all: Vec<&_> = agents.iter().collect();
    wait_all_see(&all, &["sw0", "sw1", "sw2"], SETTLE)?;
    assert_eq!(show(&agents[0])?["encryption"], "aead");

    let broker = switch_ip(0);
    let sniffer = sniff(&lab.hub, &broker, 4)?;
    std::thread::sleep(Duration::from_millis(500));
    agents[1].query(&["fabric", "set", "site.secret", "correct-horse-battery"])?;
    for agent in &agents {
        wait_setting(agent, "site.secret", "correct-horse-battery", SETTLE)?;
    }
    let seen = sniffed(sniffer)?;
    let change = seen
        .iter()
        .find(|(t, _)| t == "mlag-sync/DEV_CONF_MSG/change/sw1")
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the plain subscriber saw no change message; saw {:?}",
                seen.iter().map(|s| &s.0).collect::<Vec<_>>()
            )
        })?;
    for (topic, body) in &seen {
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains("correct-horse")
                && !text.contains("site.secret")
                && !text.contains("\"member\""),
            "{topic} readable: {text}"
        );
    }
    // The clear header still routes: magic, schema 2, channel 2 (config), sealed, key id 7, sender.
    assert_eq!(&change.1[..6], b"MF\x02\x02\x01\x07");
    assert_eq!(&change.1[7..10], b"sw1");

    // Tampered: one body bit flipped; replayed: the original again; clear: refused.
    let mut tampered = change.1.clone();
    *tampered.last_mut().unwrap() ^= 0x01;
    publish_raw(&lab.hub, &broker, &change.0, &tampered)?;
    publish_raw(&lab.hub, &broker, &change.0, &change.1)?;
    // Signed by sw1 itself, but not sealed.
    let clear_bytes =
        Codec::new(lab.identity("sw1"), lab.roster(), None).seal(&Message::Change(ConfigChange {
            origin: "sw1".into(),
            seq: 1,
            key: "site.secret".into(),
            value: "evil".into(),
            at_ms: 99_999_999_999_999,
        }));
    publish_raw(&lab.hub, &broker, &change.0, &clear_bytes)?;
    publish_raw(
        &lab.hub,
        &broker,
        "mlag-sync/DEV_CONF_MSG/change/junk",
        b"not a fabric message",
    )?;
    for agent in [&agents[0], &agents[2]] {
        wait_until(
            SETTLE,
            "tampered, replayed, unsealed and malformed counted",
            || {
                let c = show(agent).unwrap()["counters"].clone();
                let ok = ["tampered", "replayed", "unsealed", "malformed"]
                    .iter()
                    .all(|k| c[k].as_u64().unwrap_or(0) >= 1);
                if ok { Ok(()) } else { Err(c) }
            },
        )?;
        assert_eq!(
            setting(agent, "site.secret")?.unwrap()["value"],
            "correct-horse-battery"
        );
    }
    // And the agents keep working.
    agents[2].query(&["fabric", "set", "site.after", "still-fine"])?;
    wait_setting(&agents[0], "site.after", "still-fine", SETTLE)?;
    Ok(())
}

/// Simulated members heartbeating to a broker from the hub, each signed
/// with its own key, until dropped.
struct Heartbeaters {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeaters {
    fn start(lab: &FabricLab, names: &[String], broker: &str) -> anyhow::Result<Self> {
        use std::sync::{Arc, atomic::AtomicBool};
        let mut codecs: Vec<(String, Codec)> = names
            .iter()
            .map(|n| (n.clone(), Codec::new(lab.identity(n), lab.roster(), None)))
            .collect();
        let broker = broker.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = lab.hub.spawn_async(move || async move {
            let options = rumqttc::MqttOptions::new("heartbeaters", broker, 1883);
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 4096);
            tokio::spawn(async move {
                loop {
                    if eventloop.poll().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
            let topics = Topics::new("mlag-sync");
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for (name, codec) in &mut codecs {
                    let beat = Message::Heartbeat(Heartbeat {
                        member: name.clone(),
                        role: Role::Client,
                        model: "sim".into(),
                        version: "0".into(),
                        servers: vec![],
                        addresses: vec![],
                        uptime_s: 1,
                        interval_ms: 300,
                        ports: None,
                    });
                    let (topic, _) = topics.topic_for(&beat);
                    let _ = client.try_publish(
                        topic,
                        rumqttc::QoS::AtMostOnce,
                        false,
                        codec.seal(&beat),
                    );
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Heartbeaters {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn names_of(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

/// Brokers hand a new subscription only as many retained messages as their
/// queues hold (rumqttd: 100), so the roster is retained in 64 buckets: a
/// member joining a fabric of hundreds still learns every member from the
/// server's retained roster, before any announcement reaches it.
#[test]
fn a_member_joining_a_fabric_of_hundreds_learns_every_member_from_the_retained_roster()
-> anyhow::Result<()> {
    const SIMULATED: usize = 250;
    let names: Vec<String> = (0..SIMULATED).map(|n| format!("sim{n:03}")).collect();
    let lab = FabricLab::with_extra_members(2, &names)?;
    let extra = format!("servers = [\"{}\"]\n", switch_ip(0));
    let server = lab.start(0, &extra)?;
    let _beats = Heartbeaters::start(&lab, &names, &switch_ip(0))?;
    let mut everyone: Vec<String> = names.clone();
    everyone.push("sw0".into());
    everyone.sort();
    wait_all_see(&[&server], &names_of(&everyone), Duration::from_secs(60))?;
    wait_active(&server, true, SETTLE)?;
    let buckets: std::collections::BTreeSet<u16> = everyone
        .iter()
        .map(|n| sync_agent::fabric::wire::roster_bucket(n))
        .collect();
    wait_until(SETTLE, "every roster bucket retained", || {
        let sent = counter(&server, "roster_records_sent");
        if sent >= buckets.len() as u64 {
            Ok(())
        } else {
            Err(sent)
        }
    })?;
    // Joins after every announcement was made: the retained roster is all
    // it has to learn the others from.
    let member = lab.start(1, &extra)?;
    everyone.push("sw1".into());
    everyone.sort();
    wait_all_see(&[&member], &names_of(&everyone), Duration::from_secs(60))?;
    Ok(())
}

#[test]
fn floods_and_garbage_are_counted_and_dropped() -> anyhow::Result<()> {
    let lab = FabricLab::with_extra_members(2, &["flood".to_string()])?;
    let extra = format!(
        "servers = [\"{}\"]\nmax_heartbeats_per_s = 5\n",
        switch_ip(0)
    );
    let agents: Vec<_> = (0..2)
        .map(|n| lab.start(n, &extra))
        .collect::<Result<_, _>>()?;
    wait_all_see(&[&agents[0], &agents[1]], &["sw0", "sw1"], SETTLE)?;
    let broker = switch_ip(0);
    // 200 heartbeats from a listed member in one burst, each properly
    // signed (so none is a replay): the rate limit is what stops them.
    let heartbeat = |member: &str| {
        Message::Heartbeat(Heartbeat {
            member: member.into(),
            role: Role::Client,
            model: "x".into(),
            version: "0".into(),
            servers: vec![],
            addresses: vec![],
            uptime_s: 1,
            interval_ms: 1,
            ports: None,
        })
    };
    let mut flood = Codec::new(lab.identity("flood"), lab.roster(), None);
    let dir = tempfile::tempdir()?;
    for i in 0..200 {
        std::fs::write(
            dir.path().join(format!("hb{i}")),
            flood.seal(&heartbeat("flood")),
        )?;
    }
    let script = format!(
        "for i in $(seq 0 199); do mosquitto_pub -h {broker} -t mlag-sync/DEV_INFO_MSG/member/flood -f {}/hb$i; done",
        dir.path().display()
    );
    run_in(&lab.hub, "sh", &["-c", &script])?;
    // Unknown schema version, oversized, a truncated header, impersonation.
    publish_raw(
        &lab.hub,
        &broker,
        "mlag-sync/DEV_INFO_MSG/member/x",
        b"MF\x09\x01\x00\x00\x01x{}",
    )?;
    publish_raw(
        &lab.hub,
        &broker,
        "mlag-sync/DEV_INFO_MSG/member/x",
        &vec![b'A'; 66 * 1024],
    )?;
    publish_raw(
        &lab.hub,
        &broker,
        "mlag-sync/DEV_FAULT_MSG/flood",
        b"MF\x02\x03\x00\x00\x05flood{}",
    )?;
    publish_raw(
        &lab.hub,
        &broker,
        "mlag-sync/DEV_INFO_MSG/member/sw1",
        &flood.seal(&heartbeat("sw1")),
    )?;
    // Heartbeats go to the server only (sw1, a member, learns members from
    // the server's roster records), so the server is where they are judged.
    wait_until(SETTLE, "every bad input counted at the server sw0", || {
        let c = show(&agents[0]).unwrap()["counters"].clone();
        let flood = c["heartbeat_flood"].as_u64().unwrap_or(0);
        let ok = flood >= 100
            && ["unknown_version", "malformed", "impersonation", "oversized"]
                .iter()
                .all(|k| c[k].as_u64().unwrap_or(0) >= 1);
        if ok { Ok(()) } else { Err(c) }
    })?;
    // The rest of the agent still works.
    agents[1].query(&["fabric", "set", "site.x", "1"])?;
    wait_setting(&agents[0], "site.x", "1", SETTLE)?;
    let member = show(&agents[1])?["counters"].clone();
    assert_eq!(
        member["heartbeat_flood"].as_u64().unwrap_or(0)
            + member["impersonation"].as_u64().unwrap_or(0),
        0,
        "a member that is not a server hears no heartbeats: {member}"
    );
    assert!(
        counter(&agents[1], "malformed") >= 1,
        "the fault channel still reaches every member"
    );
    let log = std::fs::read_to_string(&agents[0].log)?;
    let lines = log
        .lines()
        .filter(|l| l.contains("heartbeat flood"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "flood logged at a bounded rate, got {lines} lines"
    );
    assert!(counter(&agents[0], "oversized") + counter(&agents[0], "malformed") >= 2);
    Ok(())
}

#[test]
fn killing_the_primary_moves_everyone_to_the_backup_and_loses_nothing() -> anyhow::Result<()> {
    let lab = FabricLab::new(4)?;
    let mut agents: Vec<_> = (0..4).map(|n| lab.start(n, "")).collect::<Result<_, _>>()?;
    {
        let all: Vec<&_> = agents.iter().collect();
        wait_all_see(&all, &["sw0", "sw1", "sw2", "sw3"], SETTLE)?;
    }
    wait_active(&agents[0], true, SETTLE)?;

    // SIGKILL: no goodbye, no clean disconnect from the broker it hosts.
    let pid = agents[0].pid().unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = agents[0].wait_exit(Duration::from_secs(5));
    // A change made right after, while the clients are still on the dead broker.
    agents[2].query(&["fabric", "set", "site.during", "failover"])?;

    let backup = format!("{}:1883", switch_ip(1));
    for agent in &agents[1..] {
        wait_until(
            SETTLE,
            &format!("{} on the backup broker", agent.instance),
            || {
                let f = show(agent).unwrap();
                if f["broker"] == backup.as_str() && f["connected"] == true {
                    Ok(())
                } else {
                    Err((f["broker"].clone(), f["connected"].clone()))
                }
            },
        )?;
    }
    wait_active(&agents[1], true, SETTLE)?;
    for agent in [&agents[1], &agents[3]] {
        wait_setting(agent, "site.during", "failover", SETTLE)?;
    }
    wait_until(SETTLE, "sw0's departure announced by the backup", || {
        let f = show(&agents[3]).unwrap();
        let hit = f["announcements"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["member"] == "sw0" && a["joined"] == false && a["server"] == "sw1");
        if hit {
            Ok(())
        } else {
            Err(f["announcements"].clone())
        }
    })?;
    wait_all_see(
        &[&agents[1], &agents[2], &agents[3]],
        &["sw1", "sw2", "sw3"],
        SETTLE,
    )?;
    let before = show(&agents[3])?["announcements"].as_array().unwrap().len();

    // The primary returns: one active server again, nobody announced twice.
    agents[0] = lab.start(0, "")?;
    wait_until(SETTLE, "primary active, backup standby", || {
        let (p, b) = (show(&agents[0]).unwrap(), show(&agents[1]).unwrap());
        if p["active"] == true && b["active"] == false {
            Ok(())
        } else {
            Err((p["active"].clone(), b["active"].clone()))
        }
    })?;
    let primary = format!("{}:1883", switch_ip(0));
    for agent in &agents[1..] {
        wait_until(
            SETTLE,
            &format!("{} back on the primary", agent.instance),
            || {
                let f = show(agent).unwrap();
                if f["broker"] == primary.as_str() && f["connected"] == true {
                    Ok(())
                } else {
                    Err(f["broker"].clone())
                }
            },
        )?;
    }
    let all: Vec<&_> = agents.iter().collect();
    wait_all_see(&all, &["sw0", "sw1", "sw2", "sw3"], SETTLE)?;
    std::thread::sleep(Duration::from_secs(3));
    let after = show(&agents[3])?["announcements"]
        .as_array()
        .unwrap()
        .clone();
    let new = &after[before.min(after.len())..];
    for member in ["sw1", "sw2", "sw3"] {
        let joins = new
            .iter()
            .filter(|a| a["member"] == member && a["joined"] == true)
            .count();
        assert_eq!(
            joins, 0,
            "{member} announced again after the primary returned: {new:?}"
        );
        let departs = new
            .iter()
            .filter(|a| a["member"] == member && a["joined"] == false)
            .count();
        assert_eq!(
            departs, 0,
            "{member} announced departed while moving back: {new:?}"
        );
    }
    assert!(
        new.iter()
            .filter(|a| a["member"] == "sw0" && a["joined"] == true)
            .count()
            <= 1,
        "{new:?}"
    );
    // Still one fabric: a change now reaches everyone, the restarted primary included.
    agents[3].query(&["fabric", "set", "site.after", "return"])?;
    for agent in &agents {
        wait_setting(agent, "site.after", "return", SETTLE)?;
    }
    Ok(())
}

#[test]
fn the_fabric_runs_on_an_external_mosquitto_broker() -> anyhow::Result<()> {
    let lab = FabricLab::new(3)?;
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener 1883 {HUB_IP}\nallow_anonymous true\npersistence false\n"),
    )?;
    let mut mosquitto = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.hub.name(),
            "mosquitto",
            "-c",
            conf.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let _guard = scopeguard(&mut mosquitto);
    wait_until(SETTLE, "mosquitto listening", || {
        run_in(
            &lab.hub,
            "mosquitto_pub",
            &["-h", HUB_IP, "-t", "probe", "-m", "x"],
        )
        .map_err(|e| e.to_string())
    })?;
    let extra = format!("broker = \"mqtt://{HUB_IP}:1883\"\n");
    let agents: Vec<_> = (0..3)
        .map(|n| lab.start(n, &extra))
        .collect::<Result<_, _>>()?;
    let all: Vec<&_> = agents.iter().collect();
    wait_all_see(&all, &["sw0", "sw1", "sw2"], SETTLE)?;
    assert_eq!(show(&agents[2])?["broker"], format!("{HUB_IP}:1883"));
    agents[2].query(&["fabric", "set", "site.ntp", "10.1.1.1"])?;
    for agent in &agents {
        wait_setting(agent, "site.ntp", "10.1.1.1", SETTLE)?;
    }
    lab.nodes[1].ip(&["link", "set", "p1b", "down"])?;
    wait_fault(&agents[2], "sw1", "p1", "port-down", SETTLE)?;
    wait_active(&agents[0], true, SETTLE)?;
    assert_eq!(up_members(&agents[1])?, ["sw0", "sw1", "sw2"]);
    Ok(())
}

/// The pids of the processes named `name` in `ns`.
fn pids_in(ns: &mlag_testbed::netns::Netns, name: &str) -> anyhow::Result<Vec<i32>> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns.name()])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .collect())
}

/// `broker = "mosquitto"`: each server runs a mosquitto process as its
/// broker. The fabric works on it; a broker that dies is restarted and
/// counted; a SIGKILLed server takes its broker with it, and the members
/// move to the backup's.
#[test]
fn servers_can_host_mosquitto_which_is_restarted_and_dies_with_its_agent() -> anyhow::Result<()> {
    let lab = FabricLab::new(3)?;
    let extra = "broker = \"mosquitto\"\n";
    let mut agents: Vec<_> = (0..3)
        .map(|n| lab.start(n, extra))
        .collect::<Result<_, _>>()?;
    {
        let all: Vec<&_> = agents.iter().collect();
        wait_all_see(&all, &["sw0", "sw1", "sw2"], SETTLE)?;
    }
    assert_eq!(
        pids_in(&lab.nodes[0], "mosquitto")?.len(),
        1,
        "sw0 hosts one"
    );
    agents[2].query(&["fabric", "set", "site.ntp", "10.1.1.1"])?;
    for agent in &agents {
        wait_setting(agent, "site.ntp", "10.1.1.1", SETTLE)?;
    }
    // The backup's broker dies: it is restarted and counted.
    for pid in pids_in(&lab.nodes[1], "mosquitto")? {
        // SAFETY: signalling a pid has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait_until(SETTLE, "the backup's mosquitto restarted", || {
        let restarts = counter(&agents[1], "broker_restarts");
        let running = pids_in(&lab.nodes[1], "mosquitto").map_err(|e| e.to_string())?;
        if restarts >= 1 && running.len() == 1 {
            Ok(())
        } else {
            Err(format!("{restarts} restarts, running {running:?}"))
        }
    })?;
    // SIGKILL of the primary's agent: its mosquitto goes with it (nothing
    // left listening for members to hang on), and they move to the backup.
    let pid = agents[0].pid().context("sw0's pid")?;
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = agents[0].wait_exit(Duration::from_secs(5));
    wait_until(
        SETTLE,
        "sw0's mosquitto gone with its agent",
        || match pids_in(&lab.nodes[0], "mosquitto") {
            Ok(left) if left.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )?;
    let backup = format!("{}:1883", switch_ip(1));
    wait_until(SETTLE, "sw2 on the backup's mosquitto", || {
        let f = show(&agents[2]).map_err(|e| e.to_string())?;
        if f["broker"] == backup.as_str() && f["connected"] == true {
            Ok(())
        } else {
            Err(format!("{} {}", f["broker"], f["connected"]))
        }
    })?;
    wait_active(&agents[1], true, SETTLE)?;
    agents[2].query(&["fabric", "set", "site.after", "on-mosquitto"])?;
    wait_setting(&agents[1], "site.after", "on-mosquitto", SETTLE)?;
    Ok(())
}

/// Kills the broker process when the test ends, however it ends.
fn scopeguard(child: &mut std::process::Child) -> impl Drop + '_ {
    struct Guard<'a>(&'a mut std::process::Child);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    Guard(child)
}

#[test]
fn members_reach_the_embedded_broker_over_tls() -> anyhow::Result<()> {
    let lab = FabricLab::new(2)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display().to_string();
    let server_ip = switch_ip(0);
    let script = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=fabric-test-ca 2>/dev/null; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout broker.key -out broker.csr -subj /CN=sw0 2>/dev/null; \
         printf 'subjectAltName=IP:{server_ip}\\n' > ext; \
         openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out broker.pem -days 2 -extfile ext 2>/dev/null"
    );
    mlag_testbed::netns::sh("sh", &["-c", &script])?;
    let tls = |server: bool| {
        format!(
            "servers = [\"{server_ip}\"]\nport = 8883\n[fabric.tls]\nca_file = \"{d}/ca.pem\"\n{}",
            if server {
                format!("cert_file = \"{d}/broker.pem\"\nkey_file = \"{d}/broker.key\"\n")
            } else {
                String::new()
            }
        )
    };
    let agents = [lab.start(0, &tls(true))?, lab.start(1, &tls(false))?];
    wait_all_see(&[&agents[0], &agents[1]], &["sw0", "sw1"], SETTLE)?;
    assert_eq!(show(&agents[1])?["tls"], true);
    agents[1].query(&["fabric", "set", "site.tls", "yes"])?;
    wait_setting(&agents[0], "site.tls", "yes", SETTLE)?;
    // A plain-text client cannot talk to the TLS listener, whose certificate
    // verifies against the CA for the server's IP.
    let plain = lab.hub.exec(
        "timeout",
        &[
            "3",
            "mosquitto_sub",
            "-h",
            &server_ip,
            "-p",
            "8883",
            "-t",
            "#",
            "-C",
            "1",
        ],
    );
    assert!(
        plain.is_err(),
        "plain MQTT must fail against the TLS listener: {plain:?}"
    );
    let handshake = lab.hub.exec(
        "sh",
        &["-c", &format!("openssl s_client -connect {server_ip}:8883 -CAfile {d}/ca.pem -verify_ip {server_ip} -verify_return_error </dev/null 2>&1")],
    )?;
    assert!(
        handshake.contains("Verify return code: 0 (ok)"),
        "{handshake}"
    );
    Ok(())
}

/// Mutual TLS with a hosted mosquitto: members present client certificates
/// from the fabric's client CA; a client without one (or with one from
/// another CA) is refused at the handshake.
#[test]
fn a_hosted_mosquitto_admits_only_clients_with_a_certificate_from_the_client_ca()
-> anyhow::Result<()> {
    let lab = FabricLab::new(2)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display().to_string();
    let server_ip = switch_ip(0);
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let script = format!(
        "set -e; cd {d}; \
         openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=fabric-test-ca 2>/dev/null; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout broker.key -out broker.csr -subj /CN=sw0 2>/dev/null; \
         printf 'subjectAltName=IP:{server_ip}\\n' > ext; \
         openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out broker.pem -days 2 -extfile ext 2>/dev/null; \
         openssl req -x509 {ec} -keyout clients.key -out clients.pem -days 2 -subj /CN=fabric-test-client-ca 2>/dev/null; \
         openssl req -x509 {ec} -keyout rogue-ca.key -out rogue-ca.pem -days 2 -subj /CN=rogue-ca 2>/dev/null; \
         printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=clientAuth\\n' > client-ext; \
         for who in sw0 sw1 op; do \
           openssl req {ec} -keyout $who.key -out $who.csr -subj /CN=$who 2>/dev/null; \
           openssl x509 -req -in $who.csr -CA clients.pem -CAkey clients.key -CAcreateserial -out $who.pem -days 2 -extfile client-ext 2>/dev/null; \
         done; \
         openssl x509 -req -in sw1.csr -CA clients.pem -CAkey clients.key -CAcreateserial -out sw1-v1.pem -days 2 2>/dev/null; \
         openssl req {ec} -keyout rogue.key -out rogue.csr -subj /CN=rogue 2>/dev/null; \
         openssl x509 -req -in rogue.csr -CA rogue-ca.pem -CAkey rogue-ca.key -CAcreateserial -out rogue.pem -days 2 -extfile client-ext 2>/dev/null"
    );
    mlag_testbed::netns::sh("sh", &["-c", &script])?;
    let tls = |n: usize| {
        format!(
            "servers = [\"{server_ip}\"]\nport = 8883\nbroker = \"mosquitto\"\n[fabric.tls]\nca_file = \"{d}/ca.pem\"\nclient_cert_file = \"{d}/sw{n}.pem\"\nclient_key_file = \"{d}/sw{n}.key\"\n{}",
            if n == 0 {
                format!(
                    "cert_file = \"{d}/broker.pem\"\nkey_file = \"{d}/broker.key\"\nclient_ca_file = \"{d}/clients.pem\"\n"
                )
            } else {
                String::new()
            }
        )
    };
    // An X.509 v1 client certificate (what `openssl x509 -req` makes
    // without extensions) is refused at start, naming the file: rustls
    // would only drop every handshake.
    let mut v1 = mlag_testbed::agent::Agent::spawn(
        &lab.nodes[1],
        &lab.config(1, &tls(1).replace("sw1.pem", "sw1-v1.pem")),
    )?;
    if let Err(e) = v1.wait_exit(Duration::from_secs(20)) {
        anyhow::bail!("{e}; its log:\n{}", v1.log_text());
    }
    let log = v1.log_text();
    assert!(
        log.contains("client_cert_file") && log.contains("sw1-v1.pem") && log.contains("v3"),
        "{log}"
    );
    let agents = [lab.start(0, &tls(0))?, lab.start(1, &tls(1))?];
    wait_all_see(&[&agents[0], &agents[1]], &["sw0", "sw1"], SETTLE)?;
    agents[1].query(&["fabric", "set", "site.mtls", "yes"])?;
    wait_setting(&agents[0], "site.mtls", "yes", SETTLE)?;
    // One subscription attempt with `extra` arguments: Ok when the broker
    // let it subscribe and deliver a retained message.
    let subscribe = |extra: &str| {
        lab.hub.exec(
            "sh",
            &[
                "-c",
                &format!(
                    "timeout 5 mosquitto_sub -h {server_ip} -p 8883 --cafile {d}/ca.pem {extra} -t 'mlag-sync/#' -C 1 -W 4"
                ),
            ],
        )
    };
    let operator = subscribe(&format!("--cert {d}/op.pem --key {d}/op.key"));
    assert!(
        operator.as_ref().is_ok_and(|out| !out.is_empty()),
        "a client with a certificate from the client CA is served: {operator:?}"
    );
    for (who, extra) in [
        ("no certificate", String::new()),
        (
            "a certificate from another CA",
            format!("--cert {d}/rogue.pem --key {d}/rogue.key"),
        ),
    ] {
        let refused = subscribe(&extra);
        assert!(
            refused.is_err(),
            "a client with {who} must be refused: {refused:?}"
        );
    }
    Ok(())
}

/// Publishes `message` signed (and sealed with `key`) as `identity`, the
/// way an insider holding that key could.
fn publish_signed(
    lab: &FabricLab,
    identity: Identity,
    key: Option<(u8, [u8; 32])>,
    message: &Message,
) -> anyhow::Result<()> {
    let mut codec = Codec::new(identity, lab.roster(), key);
    let (topic, _) = Topics::new("mlag-sync").topic_for(message);
    publish_raw(&lab.hub, &switch_ip(0), &topic, &codec.seal(message))
}

/// Waits until each named counter of `agent` is at least 1.
fn wait_counted(agent: &mlag_testbed::agent::Agent, names: &[&str]) -> anyhow::Result<()> {
    wait_until(
        SETTLE,
        &format!("{} counts {names:?}", agent.instance),
        || {
            let c = show(agent).map_err(|e| serde_json::Value::String(e.to_string()))?["counters"]
                .clone();
            if names.iter().all(|k| c[k].as_u64().unwrap_or(0) >= 1) {
                Ok(())
            } else {
                Err(c)
            }
        },
    )
}

#[test]
fn a_member_cannot_speak_as_a_server_or_for_another_member() -> anyhow::Result<()> {
    let lab = FabricLab::new(3)?;
    let extra = format!("servers = [\"{}\"]\n", switch_ip(0));
    let agents: Vec<_> = (0..3)
        .map(|n| lab.start(n, &extra))
        .collect::<Result<_, _>>()?;
    let all: Vec<&_> = agents.iter().collect();
    wait_all_see(&all, &["sw0", "sw1", "sw2"], SETTLE)?;
    wait_active(&agents[0], true, SETTLE)?;
    let insider = lab.identity("sw2");

    // Server-only kinds signed by a member's own (valid) key.
    publish_signed(
        &lab,
        insider.clone(),
        None,
        &Message::Server(ServerStatus {
            server: "sw2".into(),
            rank: 0,
            active: true,
        }),
    )?;
    publish_signed(
        &lab,
        insider.clone(),
        None,
        &Message::Membership(Membership {
            server: "sw2".into(),
            member: "sw1".into(),
            joined: false,
            reason: "forged".into(),
            at_ms: 1,
        }),
    )?;
    // Another member's departure and change, under the insider's name ...
    publish_signed(
        &lab,
        insider.clone(),
        None,
        &Message::Departed {
            member: "sw1".into(),
            reason: "forged".into(),
        },
    )?;
    let change = |origin: &str| {
        Message::Change(ConfigChange {
            origin: origin.into(),
            seq: 1,
            key: "site.forged".into(),
            value: "yes".into(),
            at_ms: 1,
        })
    };
    publish_signed(&lab, insider, None, &change("sw1"))?;
    // ... and under the other member's name with a key that is not its own,
    // and from a name the roster does not list.
    publish_signed(&lab, Identity::generate("sw1"), None, &change("sw1"))?;
    publish_signed(
        &lab,
        Identity::generate("mallory"),
        None,
        &change("mallory"),
    )?;

    for agent in [&agents[0], &agents[1]] {
        wait_counted(
            agent,
            &[
                "not_server",
                "impersonation",
                "bad_signature",
                "unknown_sender",
            ],
        )?;
    }
    assert!(
        counter(&agents[1], "not_server") >= 2,
        "server status and announcement"
    );
    // Nothing of it took effect: no server sw2, sw1 still up, no setting.
    let f = show(&agents[1])?;
    assert!(
        f["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["server"] != "sw2"),
        "{}",
        f["servers"]
    );
    assert!(
        f["announcements"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["reason"] != "forged"),
        "{}",
        f["announcements"]
    );
    for agent in &agents {
        assert_eq!(setting(agent, "site.forged")?, None);
    }
    assert_eq!(up_members(&agents[0])?, ["sw0", "sw1", "sw2"]);
    // The forged log lines are bounded (one per reason per 5 s).
    let log = std::fs::read_to_string(&agents[1].log)?;
    assert!(
        log.lines()
            .filter(|l| l.contains("only a server may send it"))
            .count()
            <= 2
    );
    // The real members keep working.
    agents[2].query(&["fabric", "set", "site.real", "ok"])?;
    wait_setting(&agents[1], "site.real", "ok", SETTLE)?;
    Ok(())
}

#[test]
fn a_rotated_key_is_rolled_out_without_losing_messages() -> anyhow::Result<()> {
    let lab = FabricLab::new(3)?;
    let dir = tempfile::tempdir()?;
    let (k1, k2) = (dir.path().join("k1"), dir.path().join("k2"));
    std::fs::write(&k1, "11".repeat(32))?;
    std::fs::write(&k2, "22".repeat(32))?;
    let keyed = |send: &std::path::Path, id: u8, accept: Option<(&std::path::Path, u8)>| {
        let accept = accept
            .map(|(f, i)| {
                format!(
                    "also_accept = [{{ key_id = {i}, key_file = \"{}\" }}]\n",
                    f.display()
                )
            })
            .unwrap_or_default();
        format!(
            "servers = [\"{}\"]\n[fabric.encryption]\nmode = \"aead\"\nkey_id = {id}\nkey_file = \"{}\"\n{accept}",
            switch_ip(0),
            send.display()
        )
    };
    // Mid-rotation: sw0 and sw2 still send with key 1 and accept key 2; sw1
    // already sends with key 2 and still accepts key 1.
    let mut agents = vec![
        lab.start(0, &keyed(&k1, 1, Some((&k2, 2))))?,
        lab.start(1, &keyed(&k2, 2, Some((&k1, 1))))?,
        lab.start(2, &keyed(&k1, 1, Some((&k2, 2))))?,
    ];
    {
        let all: Vec<&_> = agents.iter().collect();
        wait_all_see(&all, &["sw0", "sw1", "sw2"], SETTLE)?;
    }
    agents[1].query(&["fabric", "set", "site.from_new_key", "1"])?;
    agents[2].query(&["fabric", "set", "site.from_old_key", "1"])?;
    for agent in &agents {
        wait_setting(agent, "site.from_new_key", "1", SETTLE)?;
        wait_setting(agent, "site.from_old_key", "1", SETTLE)?;
        assert_eq!(counter(agent, "wrong_key"), 0, "{}", agent.instance);
    }
    // A switch that only knows the old key refuses the new one, by name.
    stop(&mut agents[2]);
    agents[2] = lab.start(2, &keyed(&k1, 1, None))?;
    wait_all_see(&[&agents[2]], &["sw0", "sw1", "sw2"], SETTLE)?;
    // sw1's change (sealed with key 2) reaches sw2 directly: refused there.
    agents[1].query(&["fabric", "set", "site.after_restart", "1"])?;
    wait_counted(&agents[2], &["wrong_key"])?;
    Ok(())
}

/// The fault `agent` lists last for `member`'s `port`.
fn last_fault(
    agent: &mlag_testbed::agent::Agent,
    member: &str,
    port: &str,
) -> Option<serde_json::Value> {
    show(agent).ok()?["faults"]
        .as_array()?
        .iter()
        .rev()
        .find(|x| x["member"] == member && x["port"] == port)
        .cloned()
}

/// Waits until `agent` has heard `member`'s `port` `kind` from boot `boot`.
fn wait_fault_of_boot(
    agent: &mlag_testbed::agent::Agent,
    member: &str,
    port: &str,
    kind: &str,
    boot: &serde_json::Value,
) -> anyhow::Result<()> {
    wait_until(
        SETTLE,
        &format!(
            "{} hears {member}'s {port} {kind} of boot {boot}",
            agent.instance
        ),
        || match last_fault(agent, member, port) {
            Some(f) if f["kind"] == kind && f["boot"] == *boot => Ok(()),
            other => Err(other),
        },
    )
}

/// Waits until `agent`'s state inference has `object` down (`down`) or
/// not down.
fn wait_inferred(
    agent: &mlag_testbed::agent::Agent,
    object: &str,
    down: bool,
) -> anyhow::Result<()> {
    wait_until(
        SETTLE,
        &format!("{} infers {object} down = {down}", agent.instance),
        || {
            let state = agent
                .query(&["show", "state", object])
                .map_err(|e| serde_json::Value::String(e.to_string()))?;
            let effective = state["object"]["effective"].clone();
            let is_down = effective
                .as_array()
                .is_some_and(|all| all.iter().any(|e| e["name"] == "down"));
            if is_down == down {
                Ok(())
            } else {
                Err(effective)
            }
        },
    )
}

/// sw3's own boot id, from the fault it published last.
fn own_boot(agent: &mlag_testbed::agent::Agent) -> anyhow::Result<serde_json::Value> {
    last_fault(agent, "sw3", "p1")
        .map(|f| f["boot"].clone())
        .ok_or_else(|| anyhow::anyhow!("sw3 lists no fault of its own"))
}

#[test]
fn a_restarted_switchs_faults_are_heard_and_kept_for_late_joiners() -> anyhow::Result<()> {
    let lab = FabricLab::new(4)?;
    let mut agents: Vec<_> = (0..4).map(|n| lab.start(n, "")).collect::<Result<_, _>>()?;
    {
        let all: Vec<&_> = agents.iter().collect();
        wait_all_see(&all, &["sw0", "sw1", "sw2", "sw3"], SETTLE)?;
    }
    // Fault numbers 1 and 2 of sw3's first boot.
    lab.nodes[3].ip(&["link", "set", "p1b", "down"])?;
    wait_fault(&agents[0], "sw3", "p1", "port-down", SETTLE)?;
    lab.nodes[3].ip(&["link", "set", "p1b", "up"])?;
    wait_fault(&agents[0], "sw3", "p1", "port-up", SETTLE)?;
    let first_boot = own_boot(&agents[3])?;

    // sw3 restarts: its numbers start from 1 again, and are heard.
    stop(&mut agents[3]);
    agents[3] = lab.start(3, "")?;
    lab.nodes[3].ip(&["link", "set", "p1b", "down"])?;
    wait_until(SETTLE, "sw3 publishes its port-down", || {
        own_boot(&agents[3]).map_err(|e| e.to_string())
    })?;
    let second_boot = own_boot(&agents[3])?;
    assert_ne!(first_boot, second_boot);
    for agent in &agents[..3] {
        wait_fault_of_boot(agent, "sw3", "p1", "port-down", &second_boot)?;
    }
    wait_inferred(&agents[0], "port:sw3/p1", true)?;

    // A restarted receiver learns it from the broker's retained copy.
    stop(&mut agents[2]);
    agents[2] = lab.start(2, "")?;
    wait_fault_of_boot(&agents[2], "sw3", "p1", "port-down", &second_boot)?;
    wait_inferred(&agents[2], "port:sw3/p1", true)?;

    // The port comes back while sw3's agent is down: at its next start sw3
    // corrects what the broker kept, and the others hear it up.
    stop(&mut agents[3]);
    lab.nodes[3].ip(&["link", "set", "p1b", "up"])?;
    agents[3] = lab.start(3, "")?;
    wait_until(SETTLE, "sw3 corrects its retained port-down", || {
        let n = counter(&agents[3], "faults_corrected");
        if n >= 1 { Ok(()) } else { Err(n) }
    })?;
    let third_boot = own_boot(&agents[3])?;
    wait_fault_of_boot(&agents[0], "sw3", "p1", "port-up", &third_boot)?;
    wait_inferred(&agents[0], "port:sw3/p1", false)?;
    Ok(())
}

/// SIGKILLs an agent and waits for it to exit (before it is started again
/// in the same namespace).
fn stop(agent: &mut mlag_testbed::agent::Agent) {
    if let Some(pid) = agent.pid() {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = agent.wait_exit(Duration::from_secs(5));
}

#[test]
fn retained_replays_are_refused_even_after_a_restart() -> anyhow::Result<()> {
    let lab = FabricLab::new(3)?;
    let extra = format!("servers = [\"{}\"]\n", switch_ip(0));
    let mut agents: Vec<_> = (0..3)
        .map(|n| lab.start(n, &extra))
        .collect::<Result<_, _>>()?;
    {
        let all: Vec<&_> = agents.iter().collect();
        wait_all_see(&all, &["sw0", "sw1", "sw2"], SETTLE)?;
    }
    let broker = switch_ip(0);
    // Capture a change and a port-down of sw1's.
    let sniffer = sniff(&lab.hub, &broker, 5)?;
    std::thread::sleep(Duration::from_millis(500));
    agents[1].query(&["fabric", "set", "site.replay", "old"])?;
    lab.nodes[1].ip(&["link", "set", "p1b", "down"])?;
    wait_fault(&agents[2], "sw1", "p1", "port-down", SETTLE)?;
    let seen = sniffed(sniffer)?;
    let captured = |topic: &str| {
        seen.iter()
            .find(|(t, _)| t == topic)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| anyhow::anyhow!("nothing captured on {topic}"))
    };
    let change = captured("mlag-sync/DEV_CONF_MSG/change/sw1")?;
    let fault_topic = "mlag-sync/DEV_FAULT_MSG/sw1/p1";
    let fault = captured(fault_topic)?;
    // Both move on.
    agents[1].query(&["fabric", "set", "site.replay", "new"])?;
    lab.nodes[1].ip(&["link", "set", "p1b", "up"])?;
    for agent in [&agents[0], &agents[2]] {
        wait_setting(agent, "site.replay", "new", SETTLE)?;
        wait_fault(agent, "sw1", "p1", "port-up", SETTLE)?;
    }
    let replays_before = counter(&agents[2], "replayed");

    // The captured messages left retained at the broker, as an attacker
    // on the broker's network could (`mosquitto_pub -r`).
    for (topic, bytes) in [
        ("mlag-sync/DEV_CONF_MSG/change/sw1", &change),
        (fault_topic, &fault),
    ] {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("payload");
        std::fs::write(&file, bytes)?;
        run_in(
            &lab.hub,
            "mosquitto_pub",
            &[
                "-h",
                &broker,
                "-t",
                topic,
                "-q",
                "1",
                "-r",
                "-f",
                file.to_str().unwrap(),
            ],
        )?;
    }
    // Running receivers refuse them ...
    wait_until(SETTLE, "sw2 refuses both replays", || {
        let n = counter(&agents[2], "replayed");
        if n >= replays_before + 2 {
            Ok(())
        } else {
            Err(n)
        }
    })?;
    // ... and so does a restarted one, which gets them as retained copies:
    // the change is older than its start (minus the 5 s skew), the port
    // state older than the newest it had heard from sw1 before the restart
    // (its counters file).
    std::thread::sleep(Duration::from_secs(6));
    stop(&mut agents[2]);
    agents[2] = lab.start(2, &extra)?;
    wait_until(
        SETTLE,
        "the restarted sw2 refuses the retained replays",
        || {
            let (stale, replayed) = (
                counter(&agents[2], "stale"),
                counter(&agents[2], "replayed"),
            );
            if stale >= 1 && replayed >= 1 {
                Ok(())
            } else {
                Err((
                    stale,
                    replayed,
                    show(&agents[2]).map(|f| f["faults"].clone()).ok(),
                ))
            }
        },
    )?;
    assert!(lab.counters_file(2).exists());
    wait_setting(&agents[2], "site.replay", "new", SETTLE)?;
    let port_downs = show(&agents[2])?["faults"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["member"] == "sw1" && f["kind"] == "port-down")
        .count();
    assert_eq!(
        port_downs, 0,
        "the replayed port-down reached the restarted sw2"
    );
    Ok(())
}

#[test]
fn departed_members_are_forgotten_after_prune_after_ms() -> anyhow::Result<()> {
    let lab = FabricLab::new(3)?;
    let extra = "prune_after_ms = 2000\n";
    let mut agents: Vec<_> = (0..3)
        .map(|n| lab.start(n, extra))
        .collect::<Result<_, _>>()?;
    {
        let all: Vec<&_> = agents.iter().collect();
        wait_all_see(&all, &["sw0", "sw1", "sw2"], SETTLE)?;
    }
    agents[2].stop()?;
    let listed = |agent: &mlag_testbed::agent::Agent| -> Vec<(String, String)> {
        show(agent).unwrap()["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["identity"].as_str().unwrap_or("").to_string(),
                    m["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    // First shown departed, then gone, on both servers.
    wait_until(SETTLE, "sw2 shown departed on sw1", || {
        let members = listed(&agents[1]);
        if members.contains(&("sw2".into(), "departed".into())) {
            Ok(())
        } else {
            Err(members)
        }
    })?;
    for agent in &agents[..2] {
        wait_until(SETTLE, &format!("{} forgets sw2", agent.instance), || {
            let members = listed(agent);
            if members.iter().all(|(m, _)| m != "sw2") {
                Ok(())
            } else {
                Err(members)
            }
        })?;
        assert!(counter(agent, "members_pruned") >= 1);
    }
    // The rest of the fabric is untouched.
    wait_all_see(&[&agents[0], &agents[1]], &["sw0", "sw1"], SETTLE)?;
    Ok(())
}

#[test]
fn fabric_set_answers_applied_superseded_or_timed_out() -> anyhow::Result<()> {
    let lab = FabricLab::new(3)?;
    // Members silent for a while stay members (dead_after 6 s), so a
    // stopped switch is waited for until set_timeout_ms.
    let config = |n: usize| {
        lab.config(n, "set_timeout_ms = 1500\n")
            .replace("dead_after_ms = 1500", "dead_after_ms = 6000")
    };
    let agents: Vec<_> = (0..3)
        .map(|n| mlag_testbed::agent::Agent::start(&lab.nodes[n], &config(n)))
        .collect::<Result<_, _>>()?;
    let all: Vec<&_> = agents.iter().collect();
    wait_all_see(&all, &["sw0", "sw1", "sw2"], SETTLE)?;

    // Everyone answers: applied, with who acknowledged.
    let answer = agents[2].query(&["fabric", "set", "site.a", "1"])?;
    assert_eq!(answer["outcome"], "applied", "{answer}");
    for member in ["sw0", "sw1"] {
        assert_eq!(answer["acks"][member], "applied", "{answer}");
    }
    assert_eq!(answer["missing"], serde_json::json!([]), "{answer}");

    // sw2 frozen: it cannot answer.
    let sw2 = agents[2].pid().unwrap() as i32;
    unsafe { libc::kill(sw2, libc::SIGSTOP) };
    let (older, newer) = std::thread::scope(|s| {
        let older = s.spawn(|| agents[0].query(&["fabric", "set", "site.c", "old"]));
        std::thread::sleep(Duration::from_millis(300));
        // A newer change to the same key from sw1 while sw0's still waits.
        let newer = agents[1].query(&["fabric", "set", "site.c", "new"]);
        (older.join().expect("query thread"), newer)
    });
    unsafe { libc::kill(sw2, libc::SIGCONT) };
    let (older, newer) = (older?, newer?);
    assert_eq!(older["outcome"], "superseded", "{older}");
    assert_eq!(newer["outcome"], "timed out", "{newer}");
    assert_eq!(newer["missing"], serde_json::json!(["sw2"]), "{newer}");
    assert_eq!(newer["acks"]["sw0"], "applied", "{newer}");
    // The newer value is what everyone ends with, sw2 included once it runs
    // again (the change is resent until acknowledged).
    for agent in &agents {
        wait_setting(agent, "site.c", "new", SETTLE)?;
    }
    Ok(())
}

#[test]
fn adding_and_removing_a_server_address_changes_the_role_live() -> anyhow::Result<()> {
    let lab = FabricLab::new(3)?;
    let spare = "10.77.0.200";
    let extra = format!("servers = [\"{}\", \"{spare}\"]\n", switch_ip(0));
    let agents: Vec<_> = (0..3)
        .map(|n| lab.start(n, &extra))
        .collect::<Result<_, _>>()?;
    let all: Vec<&_> = agents.iter().collect();
    wait_all_see(&all, &["sw0", "sw1", "sw2"], SETTLE)?;
    let role = |agent: &mlag_testbed::agent::Agent| {
        let f = show(agent).unwrap();
        (
            f["role"].clone(),
            f["rank"].clone(),
            f["role_reason"].clone(),
        )
    };
    assert_eq!(role(&agents[2]).0, "client");

    // The backup's address appears on sw2: it becomes the backup server,
    // with its own embedded broker on that address.
    lab.nodes[2].ip(&["addr", "add", &format!("{spare}/24"), "dev", "fab0"])?;
    wait_until(SETTLE, "sw2 becomes the backup server", || {
        let (r, rank, why) = role(&agents[2]);
        if r == "both" && rank == 1 && why.as_str().unwrap_or("").contains(spare) {
            Ok(())
        } else {
            Err((r, rank, why))
        }
    })?;
    assert!(counter(&agents[2], "role_changes") >= 1);
    assert!(agents[2].log_text().contains("fabric role changed"));
    wait_until(
        SETTLE,
        "sw2's broker answers MQTT on the new address",
        || {
            run_in(
                &lab.hub,
                "mosquitto_pub",
                &["-h", spare, "-t", "probe", "-m", "x", "-q", "1"],
            )
            .map_err(|e| e.to_string())
        },
    )?;
    // A standby backup, the primary being there.
    assert_eq!(show(&agents[2])?["active"], false);

    // And back: the address removed, sw2 is a client again.
    lab.nodes[2].ip(&["addr", "del", &format!("{spare}/24"), "dev", "fab0"])?;
    wait_until(SETTLE, "sw2 is a client again", || {
        let (r, rank, why) = role(&agents[2]);
        if r == "client" && rank.is_null() {
            Ok(())
        } else {
            Err((r, rank, why))
        }
    })?;
    assert!(counter(&agents[2], "role_changes") >= 2);
    wait_all_see(&all, &["sw0", "sw1", "sw2"], SETTLE)?;
    Ok(())
}

/// Issue 16, item 5: a remote switch's port down in the fabric makes a
/// local declared object depending on it alarmed under that root cause.
#[test]
fn a_remote_ports_fault_alarms_a_local_declared_object_under_that_root_cause() -> anyhow::Result<()>
{
    let lab = FabricLab::new(3)?;
    // sw0 declares a service on sw2's port p1 (the remote port declared
    // too, so the dependency exists before any fault names it).
    let declared = r#"
[inference]
objects = [
  { id = "port:sw2/p1", layer = "physical", kind = "port" },
  { id = "svc:remote", layer = "service", kind = "service", depends_on = [{ id = "port:sw2/p1", kind = "maps-to" }] },
]
"#;
    let agents = [
        lab.start(0, declared)?,
        lab.start(1, "")?,
        lab.start(2, "")?,
    ];
    {
        let all: Vec<&_> = agents.iter().collect();
        wait_all_see(&all, &["sw0", "sw1", "sw2"], SETTLE)?;
    }
    lab.nodes[2].ip(&["link", "set", "p1b", "down"])?;
    wait_fault(&agents[0], "sw2", "p1", "port-down", SETTLE)?;
    wait_inferred(&agents[0], "svc:remote", true)?;
    let report = wait_until(SETTLE, "sw0 alarms sw2's port", || {
        let report = agents[0]
            .query(&["show", "alarms"])
            .map_err(|e| e.to_string())?;
        let on_port = report["alarms"]
            .as_array()
            .and_then(|all| all.iter().find(|a| a["object"] == "port:sw2/p1").cloned());
        match on_port {
            Some(alarm) => Ok((report, alarm)),
            None => Err(report.to_string()),
        }
    })?;
    let (report, alarm) = report;
    assert_eq!(
        alarm["root_causes"],
        serde_json::json!(["port:sw2/p1"]),
        "{report}"
    );
    let suppressed: Vec<&str> = alarm["suppressed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["object"].as_str())
        .collect();
    assert_eq!(suppressed, ["svc:remote"], "{report}");
    assert!(
        report["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["object"] != "svc:remote"),
        "the service raises no alarm of its own: {report}"
    );
    lab.nodes[2].ip(&["link", "set", "p1b", "up"])?;
    wait_inferred(&agents[0], "svc:remote", false)?;
    wait_until(SETTLE, "sw0's alarm on sw2's port cleared", || {
        let report = agents[0]
            .query(&["show", "alarms"])
            .map_err(|e| e.to_string())?;
        if report["alarms"]
            .as_array()
            .is_some_and(|all| all.iter().all(|a| a["object"] != "port:sw2/p1"))
        {
            Ok(())
        } else {
            Err(report.to_string())
        }
    })?;
    Ok(())
}
