//! Report -> exposition: names, labels, types and values.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::{
    dataplane::report::{AgentCounters, PortCaptures},
    peersync::report::Stats,
    rollout::device::report::DeviceCounters,
};

/// The classic text parsed back: family -> type, and every sample as
/// (name, labels as written, value).
struct Parsed {
    types: BTreeMap<String, String>,
    samples: Vec<(String, String, f64)>,
}

fn parse(text: &str) -> Parsed {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let old = types.insert(name.to_string(), kind.to_string());
            assert!(old.is_none(), "{name} has two TYPE lines");
        } else if !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            samples.push((name.into(), labels.into(), value.parse().unwrap()));
        }
    }
    Parsed { types, samples }
}

impl Parsed {
    /// The value of `name` at exactly `labels` (as written: `a="x",b="y"`).
    fn value(&self, name: &str, labels: &str) -> f64 {
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in {:#?}", self.samples))
            .2
    }

    fn kind(&self, name: &str) -> &str {
        self.types
            .get(name)
            .unwrap_or_else(|| panic!("no TYPE line for {name}"))
    }

    fn names(&self) -> Vec<&str> {
        self.samples.iter().map(|(n, _, _)| n.as_str()).collect()
    }
}

fn scrape() -> Scrape {
    Scrape {
        instance: "switch-a".into(),
        uptime_s: 12.5,
        states: Some(Ok(serde_json::from_value(json!({
            "objects": [], "counters": {"infos": 0, "unknown_infos": 0, "unknown_objects": 0, "changes": 0}
        }))
        .unwrap())),
        ..Scrape::default()
    }
}

fn counters() -> CountersReport {
    CountersReport {
        seen: 100,
        arp_replies: 40,
        peer: 7,
        own: 3,
        shared: 2,
        unmatched: 28,
        captured: 10,
        ringbuf_full: 5,
        na_peer: 4,
        agent: AgentCounters {
            records_read: 14,
            ..Default::default()
        },
        per_port: BTreeMap::from([(
            "eth1".to_string(),
            PortCaptures {
                peer: 6,
                own: 1,
                na_peer: 4,
                na_own: 0,
            },
        )]),
        ..Default::default()
    }
}

#[test]
fn classifier_counters_are_counters_by_family_class_and_port() {
    let p = parse(
        &Scrape {
            counters: Some(Ok(counters())),
            ..scrape()
        }
        .prometheus_text(),
    );
    assert_eq!(p.kind("mlag_sync_classifier_frames_total"), "counter");
    assert_eq!(p.value("mlag_sync_classifier_frames_total", ""), 100.0);
    assert_eq!(
        p.value(
            "mlag_sync_classifier_classified_total",
            r#"family="arp",class="peer""#
        ),
        7.0
    );
    assert_eq!(
        p.value(
            "mlag_sync_classifier_classified_total",
            r#"family="nd",class="peer""#
        ),
        4.0
    );
    assert_eq!(
        p.value("mlag_sync_classifier_captured_total", r#"family="arp""#),
        10.0
    );
    assert_eq!(p.kind("mlag_sync_ringbuf_lost_total"), "counter");
    assert_eq!(p.value("mlag_sync_ringbuf_lost_total", ""), 5.0);
    assert_eq!(p.value("mlag_sync_ringbuf_records_read_total", ""), 14.0);
    assert_eq!(
        p.value(
            "mlag_sync_port_captured_total",
            r#"port="eth1",family="arp",class="peer""#
        ),
        6.0
    );
    assert_eq!(p.value("mlag_sync_module_up", r#"module="dataplane""#), 1.0);
    assert_eq!(p.kind("mlag_sync_module_up"), "gauge");
    assert_eq!(p.kind("mlag_sync_agent_uptime_seconds"), "gauge");
    assert_eq!(p.value("mlag_sync_agent_uptime_seconds", ""), 12.5);
}

fn peer_report(state: &str) -> PeerReport {
    let mut stats = Stats {
        sessions_established: 2,
        entries_sent: 9,
        refresh_interfaces: 3,
        ..Default::default()
    };
    stats.rejected.insert("bad_version".into(), 4);
    stats.local_failures.insert("inject_failed".into(), 1);
    stats.nd.entries_sent = 6;
    serde_json::from_value(json!({
        "state": state, "local_address": "169.254.0.1", "peer_address": "169.254.0.2",
        "role": "connect", "local_version": "1.0", "peer_version": null,
        "negotiated_version": null, "peer_name": null, "peer_system_id": null,
        "peer_boot_id": null, "peer_capabilities": null, "last_hello_ms_ago": 250,
        "session_up_s": 30, "alive": true, "keepalive_interval_ms": 100,
        "dead_interval_ms": 500, "boot_id": 1, "entries": 11, "pending": 0,
        "unacked": 2, "acked_seq": 0, "next_seq": 0, "learnt": 5, "evicted": 0,
        "counters": stats,
    }))
    .unwrap()
}

#[test]
fn peer_session_state_is_one_gauge_per_state_and_rejects_are_by_reason() {
    let p = parse(
        &Scrape {
            peer: Some(Ok(peer_report("up"))),
            ..scrape()
        }
        .prometheus_text(),
    );
    let peer = r#"peer="169.254.0.2""#;
    for (state, value) in [
        ("up", 1.0),
        ("opening", 0.0),
        ("connecting", 0.0),
        ("down", 0.0),
    ] {
        assert_eq!(
            p.value(
                "mlag_sync_peer_session_state",
                &format!(r#"peer="169.254.0.2",state="{state}""#)
            ),
            value,
            "{state}"
        );
    }
    assert_eq!(
        p.kind("mlag_sync_peer_sessions_established_total"),
        "counter"
    );
    assert_eq!(
        p.value("mlag_sync_peer_sessions_established_total", peer),
        2.0
    );
    assert_eq!(p.value("mlag_sync_peer_entries_sent_total", peer), 9.0);
    assert_eq!(p.value("mlag_sync_peer_nd_entries_sent_total", peer), 6.0);
    assert_eq!(p.kind("mlag_sync_peer_refresh_interfaces"), "gauge");
    assert_eq!(p.value("mlag_sync_peer_refresh_interfaces", peer), 3.0);
    assert_eq!(
        p.value(
            "mlag_sync_peer_rejected_total",
            r#"peer="169.254.0.2",reason="bad_version""#
        ),
        4.0
    );
    assert_eq!(
        p.value(
            "mlag_sync_peer_local_failures_total",
            r#"peer="169.254.0.2",reason="inject_failed""#
        ),
        1.0
    );
    assert_eq!(p.kind("mlag_sync_peer_send_entries"), "gauge");
    assert_eq!(p.value("mlag_sync_peer_send_entries", peer), 11.0);
    assert_eq!(p.value("mlag_sync_peer_last_hello_age_seconds", peer), 0.25);
    assert!(
        !p.names().iter().any(|n| n.contains("rejected_bad")),
        "maps are labelled, not flattened into names"
    );
}

fn mclag_report() -> MclagReport {
    serde_json::from_value(json!({
        "role": "slave", "own_address": "192.0.2.1", "peer_address": "192.0.2.2",
        "peer_alive": true, "backup_configured": false, "backup_alive": null,
        "split_brain": false, "error": null, "shared_mac": null,
        "ports": [{"name": "eth1", "mlag_id": 1, "original_mac": null, "current_mac": null,
                   "twin_mac": null, "link_local": [], "held_down": true}],
        "last_role_change_unix_ms": null, "role_changes": 3, "announcements_sent": 8,
    }))
    .unwrap()
}

#[test]
fn mclag_role_is_one_for_the_current_role_only() {
    let report = mclag_report();
    let p = parse(
        &Scrape {
            mclag: Some(Ok(report)),
            ..scrape()
        }
        .prometheus_text(),
    );
    assert_eq!(p.value("mlag_sync_mclag_role", r#"role="slave""#), 1.0);
    assert_eq!(p.value("mlag_sync_mclag_role", r#"role="master""#), 0.0);
    assert_eq!(p.value("mlag_sync_mclag_role", r#"role="undecided""#), 0.0);
    assert_eq!(p.value("mlag_sync_mclag_role_changes_total", ""), 3.0);
    assert_eq!(p.kind("mlag_sync_mclag_role_changes_total"), "counter");
    assert_eq!(
        p.value("mlag_sync_mclag_port_held_down", r#"port="eth1""#),
        1.0
    );
}

fn fabric_report() -> FabricReport {
    let member = |name: &str, state: &str| {
        json!({"identity": name, "role": "client", "model": "linux", "version": "1",
               "servers": [], "addresses": [], "uptime_s": 1,
               "last_heartbeat_ms_ago": 1500, "state": state})
    };
    serde_json::from_value(json!({
        "identity": "sw1", "role": "both", "role_reason": "", "rank": 0, "active": true,
        "broker": "embedded", "connected": true, "encryption": "none", "tls": false,
        "members": [member("sw1", "up"), member("sw2", "up"), member("sw3", "silent")],
        "servers": [], "announcements": [], "faults": [], "config": [], "pending_changes": [],
        "counters": {"received": 40, "tampered": 2, "heartbeat_flood": 1},
        "rejected": {"tampered": 2, "heartbeat_flood": 1},
    }))
    .unwrap()
}

#[test]
fn fabric_members_by_state_and_rejects_by_kind_apart_from_other_counters() {
    let report = fabric_report();
    let p = parse(
        &Scrape {
            fabric: Some(Ok(report)),
            ..scrape()
        }
        .prometheus_text(),
    );
    assert_eq!(p.value("mlag_sync_fabric_members", r#"state="up""#), 2.0);
    assert_eq!(
        p.value("mlag_sync_fabric_members", r#"state="silent""#),
        1.0
    );
    assert_eq!(
        p.value("mlag_sync_fabric_members", r#"state="departed""#),
        0.0
    );
    assert_eq!(
        p.value("mlag_sync_fabric_rejected_total", r#"kind="tampered""#),
        2.0
    );
    assert_eq!(p.value("mlag_sync_fabric_received_total", ""), 40.0);
    assert!(!p.names().contains(&"mlag_sync_fabric_tampered_total"));
    assert_eq!(
        p.value(
            "mlag_sync_fabric_member_heartbeat_age_seconds",
            r#"member="sw3""#
        ),
        1.5
    );
    assert_eq!(p.value("mlag_sync_fabric_role", r#"role="both""#), 1.0);
}

fn states_report() -> StatesReport {
    let object = |id: &str, actual_level: Option<u8>, level: u8| {
        let actual: Vec<_> = actual_level
            .map(|l| json!({"name": "down", "level": l, "lost_contact": false, "source": "link"}))
            .into_iter()
            .collect();
        json!({"id": id, "layer": "physical", "kind": "port", "actual": actual,
               "logical": [], "effective": [], "fault_level": level, "since_ms": 0,
               "state_history": [], "info_history": []})
    };
    serde_json::from_value(json!({
        "objects": [object("port:a", Some(3), 3), object("lan:a", None, 3), object("switch:A", None, 0)],
        "counters": {"infos": 5, "unknown_infos": 1, "unknown_objects": 0, "changes": 2},
    }))
    .unwrap()
}

#[test]
fn inference_objects_by_level_and_alarms() {
    let report = states_report();
    let p = parse(
        &Scrape {
            states: Some(Ok(report)),
            ..scrape()
        }
        .prometheus_text(),
    );
    assert_eq!(p.value("mlag_sync_inference_objects", r#"level="3""#), 2.0);
    assert_eq!(p.value("mlag_sync_inference_objects", r#"level="0""#), 1.0);
    assert_eq!(p.value("mlag_sync_inference_alarms", ""), 1.0);
    assert_eq!(
        p.value(
            "mlag_sync_inference_object_fault_level",
            r#"object="lan:a",kind="port""#
        ),
        3.0
    );
    assert_eq!(p.value("mlag_sync_inference_state_changes_total", ""), 2.0);
}

fn rollout_reports() -> (CenterReport, CenterStats, DeviceReport) {
    let step = |state: &str| {
        json!({"device": "d", "service": "s", "state": state, "reason": "",
               "assigned_ms": null, "acked_ms": null})
    };
    let rollouts: CenterReport = serde_json::from_value(json!([{
        "id": 1, "key": {"namespace": "app", "group": "prod", "name": "web"}, "version": 2,
        "state": "running", "batch_size": 2, "pace_ms": 0, "current_batch": 0,
        "batches": [[step("succeeded"), step("assigned")], [step("pending")]],
        "created_ms": 0, "paused_reason": "",
    }]))
    .unwrap();
    let stats = CenterStats {
        requests: BTreeMap::from([(200, 7), (404, 1)]),
        refused: BTreeMap::from([("not_found".to_string(), 1)]),
        waiting_polls: 3,
        runs_engine: true,
    };
    let device: DeviceReport = serde_json::from_value(json!({
        "device": "d", "center": "http://c", "connected": true, "services": [],
        "counters": DeviceCounters { applied: 4, ..Default::default() },
    }))
    .unwrap();
    (rollouts, stats, device)
}

#[test]
fn rollout_steps_by_state_center_requests_and_long_polls() {
    let (rollouts, stats, device) = rollout_reports();
    let p = parse(
        &Scrape {
            center: Some((rollouts, stats)),
            device: Some(Ok(device)),
            ..scrape()
        }
        .prometheus_text(),
    );
    assert_eq!(
        p.value("mlag_sync_rollout_steps", r#"state="succeeded""#),
        1.0
    );
    assert_eq!(
        p.value("mlag_sync_rollout_steps", r#"state="pending""#),
        1.0
    );
    assert_eq!(p.value("mlag_sync_rollout_steps", r#"state="failed""#), 0.0);
    assert_eq!(p.value("mlag_sync_rollouts", r#"state="running""#), 1.0);
    assert_eq!(
        p.value("mlag_sync_center_requests_total", r#"code="200""#),
        7.0
    );
    assert_eq!(
        p.value("mlag_sync_center_refused_total", r#"reason="not_found""#),
        1.0
    );
    assert_eq!(p.kind("mlag_sync_center_long_polls_waiting"), "gauge");
    assert_eq!(p.value("mlag_sync_center_long_polls_waiting", ""), 3.0);
    assert_eq!(p.value("mlag_sync_center_runs_engine", ""), 1.0);
    assert_eq!(p.value("mlag_sync_device_applied_total", ""), 4.0);
}

#[test]
fn a_module_that_did_not_answer_is_down_and_adds_nothing_else() {
    let p = parse(
        &Scrape {
            counters: Some(Err("no answer within 2s".into())),
            ..scrape()
        }
        .prometheus_text(),
    );
    assert_eq!(p.value("mlag_sync_module_up", r#"module="dataplane""#), 0.0);
    assert!(!p.names().iter().any(|n| n.contains("classifier")));
}

#[test]
fn every_family_has_help_and_type_and_counters_end_in_total() {
    let (rollouts, stats, device) = rollout_reports();
    let full = Scrape {
        counters: Some(Ok(counters())),
        peer: Some(Ok(peer_report("down"))),
        mclag: Some(Ok(mclag_report())),
        states: Some(Ok(states_report())),
        fabric: Some(Ok(fabric_report())),
        center: Some((rollouts, stats)),
        device: Some(Ok(device)),
        ..scrape()
    };
    let text = full.prometheus_text();
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    let p = parse(&text);
    for (name, kind) in &p.types {
        assert!(name.starts_with("mlag_sync_"), "{name}");
        assert_eq!(kind == "counter", name.ends_with("_total"), "{name} {kind}");
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    for name in p.names() {
        assert!(p.types.contains_key(name), "{name} has no TYPE");
    }
    let om = full.openmetrics();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE mlag_sync_classifier_frames counter\n"));
    assert!(
        om.contains("\nmlag_sync_classifier_frames_total 100\n"),
        "{om}"
    );
}
