//! `show states` and `show state OBJECT`: the reports and their text
//! rendering. The JSON field names are read by the namespace tests and by
//! operators' scripts: never rename them.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    AlarmRecord, Dependency, ObjectId, ObjectView, StateView,
    alarms::{AlarmStats, AlarmView},
    webhook::WebhookStats,
};

/// Counters of the inference task.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InferenceStats {
    /// Information applied.
    pub infos: u64,
    /// Information no rule knows.
    pub unknown_infos: u64,
    /// Information about objects not in the model.
    pub unknown_objects: u64,
    /// Effective state changes.
    pub changes: u64,
    /// Neighbours left out of the model (over its bound).
    #[serde(default)]
    pub neighbours_left_out: u64,
    /// The alarm table's counters.
    #[serde(default)]
    pub alarms: AlarmStats,
}

/// `show alarms`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AlarmsReport {
    /// The fault level from which alarms are raised.
    pub level: u8,
    /// Whether lost contact raises alarms.
    pub lost_contact: bool,
    /// Raised alarms, each with its root causes and what is suppressed
    /// under it, by object.
    pub alarms: Vec<AlarmView>,
    /// Recently cleared alarms, newest first.
    pub cleared: Vec<AlarmView>,
    /// Counters.
    pub counters: AlarmStats,
    /// The webhook's counters, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookStats>,
    /// Alarms raised by other fabric members' inference (heard on the
    /// fault channel), by origin and object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemoteAlarm>,
    /// Other members' alarms dropped (queue full, or too many kept).
    #[serde(default)]
    pub remote_dropped: u64,
}

/// Another member's alarm as `show alarms` lists it.
///
/// When its origin departs (or goes silent) the alarm stays listed, as the
/// last word of a switch that can no longer confirm or clear it, marked
/// with when it departed: what was wrong just before a switch vanished is
/// what an operator looks at first (monitoring systems keep an unreachable
/// host's last problems, shown as unknown, rather than resolve them). The
/// origin's own lost-contact alarm stands beside it here. It goes when the
/// origin clears it after coming back (a restarted origin clears those of
/// its earlier boot), or when the fabric forgets the origin
/// (`prune_after_ms` after its departure).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteAlarm {
    /// The alarm as its origin published it.
    #[serde(flatten)]
    pub alarm: AlarmRecord,
    /// When this switch heard its origin departed (ms since the epoch);
    /// absent while the origin is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_departed_ms: Option<u64>,
}

/// `show states`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatesReport {
    /// The objects.
    pub objects: Vec<ObjectView>,
    /// Counters.
    pub counters: InferenceStats,
}

/// `show state OBJECT`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateReport {
    /// The object with its histories.
    pub object: ObjectView,
    /// What it depends on, transitively.
    pub depends_on: Vec<ChainLink>,
    /// What depends on it, transitively.
    pub dependents: Vec<ChainLink>,
}

/// One edge of a dependency chain.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChainLink {
    /// Nearer object.
    pub from: ObjectId,
    /// Farther object.
    pub to: ObjectId,
    /// belongs-to or maps-to.
    pub kind: Dependency,
    /// Distance from the queried object.
    pub depth: usize,
    /// The farther object's fault level.
    pub fault_level: u8,
}

/// `down(3),lost-contact(0)`, or `-` for none.
fn states_text(states: &[StateView]) -> String {
    if states.is_empty() {
        return "-".into();
    }
    states
        .iter()
        .map(|s| format!("{}({})", s.name, s.level))
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for StatesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:<8} {:<13} {:<18} {:<22} {:<18} {:>5}",
            "object", "layer", "kind", "actual", "logical", "effective", "level"
        )?;
        for o in &self.objects {
            writeln!(
                f,
                "{:<28} {:<8} {:<13} {:<18} {:<22} {:<18} {:>5}",
                o.id.0,
                format!("{:?}", o.layer).to_lowercase(),
                o.kind,
                states_text(&o.actual),
                states_text(&o.logical),
                states_text(&o.effective),
                o.fault_level
            )?;
        }
        let c = &self.counters;
        writeln!(
            f,
            "({} objects; {} infos, {} unknown, {} about unknown objects, {} changes)",
            self.objects.len(),
            c.infos,
            c.unknown_infos,
            c.unknown_objects,
            c.changes
        )
    }
}

impl fmt::Display for AlarmsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |ids: &[ObjectId]| {
            ids.iter()
                .map(ObjectId::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        writeln!(
            f,
            "{:<28} {:<22} {:<28} {:>14}",
            "alarm", "state", "root cause", "raised (ms)"
        )?;
        for a in &self.alarms {
            writeln!(
                f,
                "{:<28} {:<22} {:<28} {:>14}",
                a.object.0,
                states_text(&a.states),
                ids(&a.root_causes),
                a.raised_ms
            )?;
            for s in &a.suppressed {
                writeln!(
                    f,
                    "  suppressed {:<17} {}",
                    s.object.0,
                    states_text(&s.states)
                )?;
            }
        }
        if !self.cleared.is_empty() {
            writeln!(f, "recently cleared:")?;
            for a in &self.cleared {
                writeln!(
                    f,
                    "  {:<26} root cause {} (raised {}, cleared {})",
                    a.object.0,
                    ids(&a.root_causes),
                    a.raised_ms,
                    a.cleared_ms
                )?;
            }
        }
        let c = &self.counters;
        writeln!(
            f,
            "({} raised, {} suppressed; level {}{}; {} raised, {} cleared in all)",
            c.active,
            c.suppressed_now,
            self.level,
            if self.lost_contact {
                ", lost contact too"
            } else {
                ""
            },
            c.raised,
            c.cleared
        )?;
        if !self.remote.is_empty() {
            writeln!(f, "remote alarms (from other fabric members):")?;
            for remote in &self.remote {
                let a = &remote.alarm;
                writeln!(
                    f,
                    "  {:<12} {:<26} {:<22} root cause {}{}{}",
                    a.origin,
                    a.object.0,
                    a.state,
                    ids(&a.root_causes),
                    if a.suppressed.is_empty() {
                        String::new()
                    } else {
                        format!(", suppressed {}", ids(&a.suppressed))
                    },
                    if remote.origin_departed_ms.is_some() {
                        " (origin departed: its last word, unconfirmed)"
                    } else {
                        ""
                    }
                )?;
            }
        }
        if let Some(w) = &self.webhook {
            writeln!(
                f,
                "webhook: {} posts, {} failures, {} dropped{}",
                w.posts,
                w.failures,
                w.dropped,
                w.last_error
                    .as_ref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for StateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.object;
        writeln!(
            f,
            "{} ({:?} {}), fault level {}",
            o.id.0, o.layer, o.kind, o.fault_level
        )?;
        writeln!(f, "  actual    {}", states_text(&o.actual))?;
        writeln!(f, "  logical   {}", states_text(&o.logical))?;
        writeln!(f, "  effective {}", states_text(&o.effective))?;
        if let Some(g) = &o.group {
            writeln!(
                f,
                "  group     {} over {} ({} up; degraded level {})",
                g.redundancy,
                g.members
                    .iter()
                    .map(ObjectId::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                g.up,
                g.degraded_level
            )?;
        }
        writeln!(f, "depends on:")?;
        for l in &self.depends_on {
            writeln!(
                f,
                "  {}{} -[{:?}]-> {} (level {})",
                "  ".repeat(l.depth - 1),
                l.from.0,
                l.kind,
                l.to.0,
                l.fault_level
            )?;
        }
        writeln!(f, "depended on by:")?;
        for l in &self.dependents {
            writeln!(
                f,
                "  {}{} <-[{:?}]- {} (level {})",
                "  ".repeat(l.depth - 1),
                l.from.0,
                l.kind,
                l.to.0,
                l.fault_level
            )?;
        }
        writeln!(f, "information history (newest last):")?;
        for i in &o.info_history {
            writeln!(
                f,
                "  {} {} {}{}",
                i.at_ms,
                i.source,
                i.message,
                if i.known { "" } else { " (unknown)" }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        bus::{Info, ids},
        inference::{Layer, Model, RuleTable},
    };

    /// A switch with one port and its LAN port, the port down.
    fn model() -> Model {
        let mut m = Model::new();
        m.add_object(ids::switch("a"), Layer::Physical, "switch")
            .unwrap();
        m.add_object(ids::port("eth0"), Layer::Physical, "port")
            .unwrap();
        m.add_dependency(&ids::port("eth0"), &ids::switch("a"), Dependency::BelongsTo)
            .unwrap();
        m.add_object(ids::lan("eth0"), Layer::L2, "lan-port")
            .unwrap();
        m.add_dependency(&ids::lan("eth0"), &ids::port("eth0"), Dependency::MapsTo)
            .unwrap();
        m.apply(
            Info::new("netlink", "link-down", ids::port("eth0")),
            &RuleTable::builtin(),
            5,
        )
        .unwrap();
        m
    }

    #[test]
    fn states_render_as_one_aligned_row_per_object_and_the_counters() {
        let report = StatesReport {
            objects: model().views().collect(),
            counters: InferenceStats {
                infos: 1,
                changes: 2,
                ..InferenceStats::default()
            },
        };
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "object                       layer    kind          actual             logical                effective          level"
        );
        assert!(lines.contains(
            &"lan:eth0                     l2       lan-port      -                  down(3)                down(3)                3"
        ));
        assert_eq!(
            lines.last(),
            Some(&"(3 objects; 1 infos, 0 unknown, 0 about unknown objects, 2 changes)")
        );
    }

    #[test]
    fn alarms_render_with_their_root_causes_and_what_is_suppressed_under_them() {
        use crate::inference::{alarms::Alarms, config::AlarmConfig};
        let m = model();
        let mut alarms = Alarms::new(AlarmConfig::default());
        alarms.update(&m, &[ids::port("eth0"), ids::lan("eth0")], 5);
        let (raised, cleared) = alarms.report(&m);
        let report = AlarmsReport {
            level: 1,
            lost_contact: true,
            alarms: raised,
            cleared,
            counters: alarms.stats(),
            webhook: None,
            remote: Vec::new(),
            remote_dropped: 0,
        };
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[1].starts_with("port:eth0") && lines[1].contains("down(3)"),
            "{text}"
        );
        assert!(lines[1].contains("port:eth0"), "root cause: {text}");
        assert_eq!(lines[2], "  suppressed lan:eth0          down(3)");
        assert_eq!(
            lines[3],
            "(1 raised, 1 suppressed; level 1, lost contact too; 1 raised, 0 cleared in all)"
        );
        // Another member's alarm, with its origin.
        let alarm = AlarmRecord {
            origin: "sw2".into(),
            object: ids::switch("sw3"),
            state: "lost-contact".into(),
            level: 0,
            root_causes: vec![ids::switch("sw3")],
            suppressed: vec![ids::remote_port("sw3", "p1")],
            raised_ms: 7,
            cleared_ms: 0,
        };
        let with_remote = AlarmsReport {
            remote: vec![RemoteAlarm {
                alarm: alarm.clone(),
                origin_departed_ms: None,
            }],
            ..report
        };
        let text = with_remote.to_string();
        assert!(
            text.contains("remote alarms (from other fabric members):\n  sw2          switch:sw3                 lost-contact           root cause switch:sw3, suppressed port:sw3/p1\n"),
            "{text}"
        );
        // The JSON keeps the record's fields at the top of each entry.
        let json = serde_json::to_value(&with_remote).unwrap();
        assert_eq!(json["remote"][0]["origin"], "sw2");
        assert!(json["remote"][0].get("origin_departed_ms").is_none());
        // Its origin departed: marked as its last word.
        let stale = AlarmsReport {
            remote: vec![RemoteAlarm {
                alarm,
                origin_departed_ms: Some(9),
            }],
            ..with_remote
        };
        assert!(
            stale
                .to_string()
                .contains("suppressed port:sw3/p1 (origin departed: its last word, unconfirmed)\n"),
            "{stale}"
        );
        assert_eq!(
            serde_json::to_value(&stale).unwrap()["remote"][0]["origin_departed_ms"],
            9
        );
    }

    #[test]
    fn one_state_renders_its_chains_and_information_history() {
        let m = model();
        let report = StateReport {
            object: m.view(&ids::lan("eth0")).unwrap(),
            depends_on: vec![
                ChainLink {
                    from: ids::lan("eth0"),
                    to: ids::port("eth0"),
                    kind: Dependency::MapsTo,
                    depth: 1,
                    fault_level: 3,
                },
                ChainLink {
                    from: ids::port("eth0"),
                    to: ids::switch("a"),
                    kind: Dependency::BelongsTo,
                    depth: 2,
                    fault_level: 0,
                },
            ],
            dependents: Vec::new(),
        };
        assert_eq!(
            report.to_string(),
            "lan:eth0 (L2 lan-port), fault level 3\n\
             \x20 actual    -\n\
             \x20 logical   down(3)\n\
             \x20 effective down(3)\n\
             depends on:\n\
             \x20 lan:eth0 -[MapsTo]-> port:eth0 (level 3)\n\
             \x20   port:eth0 -[BelongsTo]-> switch:a (level 0)\n\
             depended on by:\n\
             information history (newest last):\n"
        );
    }
}
