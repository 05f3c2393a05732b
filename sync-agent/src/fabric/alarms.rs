//! Root-cause alarms over the fabric (issue 16): this switch's state
//! inference hands its alarms (raised, changed, cleared) to the task, which
//! publishes them on the fault channel, retained per object; alarms heard
//! from other members go back to inference, which lists them as remote.
//!
//! The task keeps the alarms it has raised (bounded), so that a
//! reconnect (a restarted broker may have lost the retained copies)
//! publishes them again, and a record of an earlier boot still retained
//! at the broker, which this run did not raise, is published cleared.

use std::collections::BTreeMap;

use super::{task::Task, wire::Alarm, wire::Message};
use crate::{bus, clock::now_ms};

/// Most of its own raised alarms the task keeps for republishing.
pub(super) const OWN_ALARMS: usize = 4096;

/// This switch's raised alarms, by object, as last published.
pub(super) type OwnAlarms = BTreeMap<String, Alarm>;

impl Task {
    /// The local inference raised, changed or cleared an alarm: it goes out
    /// on the fault channel (when connected; a raised one waits for the
    /// next connect otherwise).
    pub(super) fn publish_alarm(&mut self, record: bus::AlarmRecord) {
        let limit = bus::AlarmRecord::MAX_LISTED;
        let alarm = Alarm {
            member: self.identity.clone(),
            boot: self.boot,
            object: record.object.0,
            state: record.state,
            level: record.level,
            root_causes: record
                .root_causes
                .into_iter()
                .take(limit)
                .map(|o| o.0)
                .collect(),
            suppressed: record
                .suppressed
                .into_iter()
                .take(limit)
                .map(|o| o.0)
                .collect(),
            raised_ms: record.raised_ms,
            cleared_ms: record.cleared_ms,
        };
        if alarm.cleared_ms == 0 {
            if self.own_alarms.len() >= OWN_ALARMS && !self.own_alarms.contains_key(&alarm.object) {
                self.count("alarms_not_kept");
            } else {
                self.own_alarms.insert(alarm.object.clone(), alarm.clone());
            }
        } else {
            self.own_alarms.remove(&alarm.object);
        }
        if !self.connected {
            self.count("alarms_unpublished");
            return;
        }
        self.publish(&Message::Alarm(alarm));
        self.count("alarms_published");
    }

    /// (Re)connected: every alarm raised here goes out again.
    pub(super) fn republish_alarms(&mut self) {
        let all: Vec<Alarm> = self.own_alarms.values().cloned().collect();
        for alarm in all {
            self.publish(&Message::Alarm(alarm));
        }
    }

    /// One of our own alarms as the broker retains it: a raised one from an
    /// earlier boot that this run has not raised is published cleared.
    pub(super) fn reconcile_own_alarm(&mut self, alarm: &Alarm) {
        if alarm.boot == self.boot || alarm.cleared_ms != 0 {
            return;
        }
        if self.own_alarms.contains_key(&alarm.object) {
            return;
        }
        self.count("alarms_corrected");
        let cleared = Alarm {
            boot: self.boot,
            cleared_ms: now_ms(),
            ..alarm.clone()
        };
        self.publish(&Message::Alarm(cleared));
    }

    /// Another member's alarm: to inference (through the handle's
    /// subscribers). A member flooding is refused like a fault flood.
    pub(super) fn heard_alarm(&mut self, alarm: Alarm) {
        if !self.fault_rate.allow(&alarm.member) {
            self.reject(
                "alarm",
                &format!("alarm flood from {}", alarm.member),
                "alarm_flood",
            );
            return;
        }
        self.count("alarms_received");
        let record = bus::AlarmRecord {
            origin: alarm.member,
            object: bus::ObjectId(alarm.object),
            state: alarm.state,
            level: alarm.level,
            root_causes: alarm.root_causes.into_iter().map(bus::ObjectId).collect(),
            suppressed: alarm.suppressed.into_iter().map(bus::ObjectId).collect(),
            raised_ms: alarm.raised_ms,
            cleared_ms: alarm.cleared_ms,
        };
        // No subscriber (no inference wired) is fine.
        let _ = self.alarms_heard.send(record);
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::{bus::ObjectId, fabric::task::test_task};

    fn record(object: &str, cleared_ms: u64) -> bus::AlarmRecord {
        bus::AlarmRecord {
            origin: String::new(),
            object: ObjectId::from(object),
            state: "down".into(),
            level: 3,
            root_causes: vec![ObjectId::from(object)],
            suppressed: (0..100).map(|i| ObjectId(format!("svc:{i}"))).collect(),
            raised_ms: 1,
            cleared_ms,
        }
    }

    #[tokio::test]
    async fn own_alarms_are_kept_while_raised_bounded_in_size_and_forgotten_when_cleared() {
        let (infos, _rx) = mpsc::channel(4);
        let (mut task, _eventloop) = test_task(infos);
        task.publish_alarm(record("port:p1", 0));
        let kept = &task.own_alarms["port:p1"];
        assert_eq!(kept.member, task.identity);
        assert_eq!(kept.suppressed.len(), bus::AlarmRecord::MAX_LISTED);
        assert_eq!(task.counters.get("alarms_unpublished"), Some(&1));
        task.publish_alarm(record("port:p1", 9));
        assert!(task.own_alarms.is_empty());
    }

    #[tokio::test]
    async fn a_raised_alarm_of_an_earlier_boot_still_retained_is_published_cleared() {
        let (infos, _rx) = mpsc::channel(4);
        let (mut task, _eventloop) = test_task(infos);
        let old = Alarm {
            member: task.identity.clone(),
            boot: task.boot.wrapping_add(1),
            object: "port:p1".into(),
            state: "down".into(),
            level: 3,
            root_causes: vec!["port:p1".into()],
            suppressed: vec![],
            raised_ms: 1,
            cleared_ms: 0,
        };
        // Of this boot, or already cleared: nothing to correct.
        task.reconcile_own_alarm(&Alarm {
            boot: task.boot,
            ..old.clone()
        });
        task.reconcile_own_alarm(&Alarm {
            cleared_ms: 2,
            ..old.clone()
        });
        assert_eq!(task.counters.get("alarms_corrected"), None);
        // Raised again by this run: it stands.
        task.publish_alarm(record("port:p1", 0));
        task.reconcile_own_alarm(&old);
        assert_eq!(task.counters.get("alarms_corrected"), None);
        // Not raised by this run: corrected.
        task.publish_alarm(record("port:p1", 5));
        task.reconcile_own_alarm(&old);
        assert_eq!(task.counters.get("alarms_corrected"), Some(&1));
    }

    #[tokio::test]
    async fn another_members_alarm_reaches_the_subscribers_and_a_flood_is_refused() {
        let (infos, _rx) = mpsc::channel(4);
        let (mut task, _eventloop) = test_task(infos);
        let mut heard = task.alarms_heard.subscribe();
        let alarm = Alarm {
            member: "sw9".into(),
            boot: 1,
            object: "switch:sw2".into(),
            state: "lost-contact".into(),
            level: 0,
            root_causes: vec!["switch:sw2".into()],
            suppressed: vec!["port:sw2/p1".into()],
            raised_ms: 4,
            cleared_ms: 0,
        };
        task.heard_alarm(alarm.clone());
        let got = heard.try_recv().unwrap();
        assert_eq!(got.origin, "sw9");
        assert_eq!(got.object, ObjectId::from("switch:sw2"));
        assert_eq!(got.suppressed, [ObjectId::from("port:sw2/p1")]);
        assert!(got.raised());
        for _ in 0..10_000 {
            task.heard_alarm(alarm.clone());
        }
        assert!(task.counters.get("alarm_flood").copied().unwrap_or(0) > 0);
    }
}
