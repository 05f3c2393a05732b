use serde_json::json;

use super::*;
use crate::{
    fabric::report::FabricReport,
    inference::report::{AlarmsReport, StatesReport},
    rollout::report::RolloutReport,
};

const HOSTILE: &str = "<script>alert(1)</script>";

fn fabric(members: &[(&str, &str, &str)], faults: &[(&str, &str, &str)]) -> FabricReport {
    serde_json::from_value(json!({
        "identity": "sw-a", "role": "both", "role_reason": "in the roster as a server",
        "rank": 0, "active": true, "broker": "10.99.0.1:1883", "connected": true,
        "encryption": "aead", "tls": false,
        "members": members.iter().map(|(identity, role, state)| json!({
            "identity": identity, "role": role, "model": "lab", "version": "0.1.0",
            "servers": [], "addresses": [], "uptime_s": 5, "last_heartbeat_ms_ago": 100,
            "state": state,
        })).collect::<Vec<_>>(),
        "servers": [
            {"server": "sw-a", "rank": 0, "active": true, "last_status_ms_ago": 10},
            {"server": "sw-b", "rank": 1, "active": false, "last_status_ms_ago": 20},
        ],
        "announcements": [],
        "faults": faults.iter().enumerate().map(|(n, (member, port, kind))| json!({
            "member": member, "boot": 1, "seq": n, "port": port, "kind": kind,
            "at_ms": 1000 + n, "received_ms": 1000 + n,
        })).collect::<Vec<_>>(),
        "config": [], "pending_changes": [], "counters": {},
    }))
    .unwrap()
}

fn object(id: &str, level: u8, effective: &str, logical_from: &[&str]) -> serde_json::Value {
    let state = |source: &str| json!({"name": effective, "level": level, "lost_contact": false, "source": source});
    json!({
        "id": id, "layer": "l2", "kind": "lan-port",
        "actual": [], "logical": logical_from.iter().map(|s| state(s)).collect::<Vec<_>>(),
        "effective": [state(&logical_from.join(","))], "fault_level": level, "since_ms": 1,
        "state_history": [], "info_history": [],
    })
}

fn states(objects: Vec<serde_json::Value>) -> StatesReport {
    serde_json::from_value(json!({
        "objects": objects,
        "counters": {"infos": 1, "unknown_infos": 0, "unknown_objects": 0, "changes": 1},
    }))
    .unwrap()
}

fn alarms(raised: &[(&str, &[&str])]) -> AlarmsReport {
    serde_json::from_value(json!({
        "level": 3, "lost_contact": false,
        "alarms": raised.iter().map(|(object, roots)| json!({
            "object": object, "states": [{"name": "down", "level": 3, "lost_contact": false, "source": "link"}],
            "level": 3, "root_causes": roots, "raised_ms": 5, "suppressed": [],
        })).collect::<Vec<_>>(),
        "cleared": [], "counters": crate::inference::alarms::AlarmStats::default(),
    }))
    .unwrap()
}

fn snapshot() -> Snapshot {
    Snapshot {
        instance: "sw-a".into(),
        roles: vec!["fabric".into()],
        taken_unix_ms: 1,
        ..Snapshot::default()
    }
}

fn page_of(snapshot: &Snapshot) -> String {
    let mut failures = 0;
    let view = ViewJson {
        instance: snapshot.instance.clone(),
        roles: snapshot.roles.clone(),
        taken_unix_ms: snapshot.taken_unix_ms,
        sections: sections(snapshot, &mut failures),
        stats: WebStats::default(),
    };
    assert_eq!(failures, 0, "every graph drawn");
    page(&view, 2000)
}

#[test]
fn only_the_sections_of_running_modules_appear() {
    let mut s = snapshot();
    s.faulty = Some(Ok(states(vec![])));
    let page = page_of(&s);
    assert!(page.contains("<section id=\"inference\">"), "{page}");
    for absent in ["id=\"mlag\"", "id=\"fabric\"", "id=\"rollout\""] {
        assert!(!page.contains(absent), "{absent} shown without its module");
    }
    assert!(page.contains("no faulty objects"), "{page}");

    s.fabric = Some(Ok(fabric(&[("sw-a", "both", "up")], &[])));
    s.rollout = Some(RolloutReport {
        center: Some(Default::default()),
        device: None,
    });
    let page = page_of(&s);
    assert!(page.contains("<section id=\"fabric\">"));
    assert!(page.contains("<section id=\"rollout\">"));
    assert!(!page.contains("id=\"mlag\""));
}

#[test]
fn a_hostile_member_identity_is_escaped_in_the_page_and_the_graph() {
    let mut s = snapshot();
    s.fabric = Some(Ok(fabric(
        &[("sw-a", "both", "up"), (HOSTILE, "client", "up")],
        &[(HOSTILE, "p\"1<b>", "port-down")],
    )));
    let page = page_of(&s);
    assert!(!page.contains(HOSTILE), "raw identity in the page:\n{page}");
    assert!(!page.contains("<b>"), "raw port name in the page");
    // Only the page's own script element, which has a src.
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    // The node's data-id attribute is escaped too.
    assert!(
        page.contains("data-id=\"&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "{page}"
    );
}

#[test]
fn a_fault_in_force_marks_the_member_and_a_later_port_up_clears_it() {
    let mut s = snapshot();
    let members = [
        ("sw-a", "both", "up"),
        ("sw-b", "both", "up"),
        ("sw-d", "client", "up"),
    ];
    s.fabric = Some(Ok(fabric(
        &members,
        &[
            ("sw-b", "b-c", "port-down"),
            ("sw-d", "p1", "port-down"),
            ("sw-d", "p1", "port-up"),
        ],
    )));
    let page = page_of(&s);
    assert!(page.contains("sw-b: port-down b-c"), "{page}");
    assert!(!page.contains("sw-d: port-down"), "{page}");
    assert!(page.contains("class=\"member server active up\""), "{page}");
    assert!(
        page.contains("class=\"member server standby up fault\" data-id=\"sw-b\""),
        "{page}"
    );
}

#[test]
fn faulty_objects_are_coloured_by_level_and_root_causes_marked() {
    let mut s = snapshot();
    s.faulty = Some(Ok(states(vec![
        object("twin:1", 3, "down", &[]),
        object("mlag:1", 1, "degraded", &["twin:1"]),
    ])));
    s.alarms = Some(Ok(alarms(&[("twin:1", &["twin:1"])])));
    let page = page_of(&s);
    assert!(
        page.contains("class=\"object level-3 root\" data-id=\"twin:1\""),
        "{page}"
    );
    assert!(
        page.contains("class=\"object level-1\" data-id=\"mlag:1\""),
        "{page}"
    );
    assert!(page.contains("root cause"));
    // Level 3 red, level 1 yellow, as the legend says.
    assert!(
        page.contains("#ff8a80ff") && page.contains("#fff59dff"),
        "{page}"
    );
    assert!(page.contains("<td class=\"root\">twin:1</td>"), "{page}");
}

#[test]
fn rollouts_show_each_batch_with_its_steps_and_the_current_one() {
    let rollout = json!({
        "id": 7, "key": {"namespace": "lab", "group": "prod", "name": "motd"}, "version": 2,
        "state": "running", "batch_size": 2, "pace_ms": 1000, "current_batch": 1,
        "batches": [
            [{"device": "sw-d", "service": "motd", "state": "succeeded", "reason": "", "assigned_ms": 1, "acked_ms": 2}],
            [{"device": "sw-a", "service": "motd", "state": "assigned", "reason": "", "assigned_ms": 3, "acked_ms": null},
             {"device": "sw-b", "service": "motd", "state": "pending", "reason": "", "assigned_ms": null, "acked_ms": null}],
        ],
        "created_ms": 1, "paused_reason": "", "canary": ["canary"], "approve_each_batch": false,
    });
    let mut s = snapshot();
    s.rollout = Some(RolloutReport {
        center: Some(serde_json::from_value(json!([rollout])).unwrap()),
        device: None,
    });
    let page = page_of(&s);
    assert!(page.contains("#7 lab/prod/motd version 2"), "{page}");
    assert!(page.contains("batch 1 (canary)"), "{page}");
    assert!(page.contains("batch 2 ◀ now"), "{page}");
    assert!(
        page.contains("<span class=\"step succeeded\" title=\"\">sw-d motd: succeeded</span>"),
        "{page}"
    );
    assert!(page.contains("sw-b motd: pending"), "{page}");
}

#[test]
fn a_module_that_did_not_answer_is_named_in_its_section() {
    let mut s = snapshot();
    s.fabric = Some(Err("no answer within 2s".into()));
    let page = page_of(&s);
    assert!(
        page.contains("fabric sync did not answer: no answer within 2s"),
        "{page}"
    );
}
