//! The member's side (SPEC 4.3-4.5): its own heartbeats, the view of the
//! other members, fabric config changes (applying, acknowledging, our own
//! changes published and sent again until every member acknowledged), and
//! faults both ways: local port changes out to the fabric, other members'
//! faults in to state inference.

use std::{collections::BTreeSet, time::Duration};

use super::{
    report::{FaultReport, SetReport},
    state::{Outcome, validate_setting},
    task::{RECENT, Task, ViewEntry},
    wire::{ConfigAck, ConfigChange, ConfigState, Fault, Heartbeat, Message, Role, SettingRecord},
};
use crate::{
    bus::{self, ids},
    clock::now_ms,
};

impl Task {
    /// This switch's heartbeat as of now.
    pub(super) fn own_heartbeat(&self) -> Heartbeat {
        Heartbeat {
            member: self.identity.clone(),
            role: self.role,
            model: self.config.model.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            servers: self.config.servers.clone(),
            addresses: self.own.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            interval_ms: self.heartbeat_interval().as_millis() as u64,
            ports: Some(Heartbeat::port_list(self.ports.keys().map(String::as_str))),
        }
    }

    /// Members send a heartbeat every tick while connected; a server that
    /// is also a member keeps itself in its own roster.
    pub(super) fn send_heartbeat(&mut self) {
        if self.connected && self.is_member() {
            let hb = self.own_heartbeat();
            self.publish(&Message::Heartbeat(hb.clone()));
            if self.rank.is_some() {
                self.roster.heartbeat(hb, now_ms());
            }
        }
    }

    /// Another member's heartbeat: it is up, as of now.
    pub(super) fn heard_heartbeat(&mut self, hb: &Heartbeat) {
        if self.view.get(&hb.member).is_none_or(|e| e.departed) {
            self.tell_membership(&hb.member, true);
        }
        let now = std::time::Instant::now();
        self.view.insert(
            hb.member.clone(),
            ViewEntry {
                heartbeat: hb.clone(),
                heard: Some(now),
                departed: false,
                since: now,
            },
        );
        self.member_seen(&hb.member);
    }

    /// The members watch follows the view after `member`'s entry was
    /// written: it is listed, with the ports its heartbeat lists (a
    /// heartbeat that says nothing of its ports keeps the list known), and
    /// members the view no longer holds (evicted from a full view) leave
    /// it. Readers wake only on a real change: a heartbeat repeating its
    /// ports costs one comparison.
    pub(super) fn member_seen(&self, member: &str) {
        let Some(entry) = self.view.get(member) else {
            return;
        };
        let said = entry.heartbeat.ports.as_deref();
        let view = &self.view;
        self.members_out.send_if_modified(|all| {
            let mut modified = false;
            match all.get_mut(member) {
                Some(known) => {
                    let same = matches!((said, known.as_deref()), (Some(s), Some(k)) if s == k);
                    if said.is_some() && !same {
                        let ports = entry.heartbeat.listed_ports().map(Into::into);
                        modified = *known != ports;
                        *known = ports;
                    }
                }
                None => {
                    all.insert(
                        member.to_string(),
                        entry.heartbeat.listed_ports().map(Into::into),
                    );
                    modified = true;
                }
            }
            if all.len() > view.len() {
                all.retain(|name, _| view.contains_key(name));
                modified = true;
            }
            modified
        });
    }

    /// Members forgotten by the view leave the members watch (state
    /// inference forgets them too).
    fn members_forgotten(&self, forgotten: &[String]) {
        self.members_out.send_if_modified(|all| {
            let before = all.len();
            for name in forgotten {
                all.remove(name);
            }
            all.len() != before
        });
    }

    /// Another member said it leaves (or its last will did).
    pub(super) fn heard_departed(&mut self, member: &str) {
        if self.view.get(member).is_some_and(|e| !e.departed) {
            self.tell_membership(member, false);
        }
        if let Some(entry) = self.view.get_mut(member) {
            entry.departed = true;
            entry.since = std::time::Instant::now();
        }
    }

    /// Forgets members departed, or silent, for longer than
    /// `prune_after_ms` (counted as `members_pruned`): a fabric where
    /// switches come and go does not grow this switch's memory.
    pub(super) fn prune_view(&mut self) {
        let after = Duration::from_millis(self.config.prune_after_ms);
        let server = self.rank.is_some();
        let mut pruned = Vec::new();
        self.view.retain(|name, e| {
            // Other members know members from the servers' records only
            // (they do not hear heartbeats): such a member stays until a
            // server announces its departure. (Not "absent from the retained
            // records after a reconnect": rumqttd 0.20 delivers at most as
            // many retained messages per subscription as it has free
            // in-flight slots, so absence proves nothing.)
            if !server && e.heard.is_none() && !e.departed {
                return true;
            }
            let last = e.heard.map_or(e.since, |h| h.max(e.since));
            let keep = last.elapsed() <= after;
            if !keep {
                pruned.push(name.clone());
            }
            keep
        });
        if pruned.is_empty() {
            return;
        }
        self.count_by("members_pruned", pruned.len() as u64);
        for name in &pruned {
            self.outbox.forget(name);
        }
        self.members_forgotten(&pruned);
        if let Some(suppressed) = self.logs.admit("pruned") {
            tracing::info!(
                count = pruned.len(),
                first = pruned[0],
                suppressed,
                "forgot members departed or silent for {after:?}"
            );
        }
    }

    /// A fabric config change from another switch: applied (or refused),
    /// acknowledged by members, and an active server republishes the
    /// config state.
    pub(super) fn heard_change(&mut self, change: ConfigChange) {
        self.hlc.observe(change.at_ms);
        let outcome = self.store.apply(&change);
        match &outcome {
            Outcome::Applied => {
                tracing::info!(
                    key = change.key,
                    value = change.value,
                    by = change.origin,
                    "fabric setting applied"
                );
                self.count("changes_applied");
                self.log_settings();
            }
            Outcome::Rejected(why) => self.reject(
                "change",
                &format!(
                    "change {} from {} refused: {why}",
                    change.key, change.origin
                ),
                "changes_rejected",
            ),
            Outcome::AlreadyApplied | Outcome::Superseded => self.count("changes_duplicate"),
        }
        if self.is_member() {
            let text = outcome.ack_text();
            self.store
                .ack(&self.identity.clone(), &change.origin, change.seq, &text);
            self.publish(&Message::Ack(ConfigAck {
                member: self.identity.clone(),
                origin: change.origin.clone(),
                seq: change.seq,
                outcome: text,
            }));
        }
        self.save_store();
        if self.active && outcome == Outcome::Applied {
            self.publish_setting(&change.key);
        }
        if outcome == Outcome::Applied {
            self.settle_sets();
        }
    }

    /// A member acknowledged a change; ours stop being resent to it.
    pub(super) fn heard_ack(&mut self, ack: ConfigAck) {
        self.store
            .ack(&ack.member, &ack.origin, ack.seq, &ack.outcome);
        if ack.origin == self.identity {
            self.outbox.answered(ack.seq, &ack.member);
            for p in &mut self.pending_sets {
                if p.change.seq == ack.seq {
                    p.waiting.remove(&ack.member);
                    p.acks.insert(ack.member.clone(), ack.outcome.clone());
                }
            }
            self.settle_sets();
        }
        // Saved at the next heartbeat tick, not here: the origin of a
        // change hears an ack from every member, and a save (the whole
        // store, fsync, rename) per ack was a thousand file writes per
        // change in a fabric of a thousand. An ack lost with a crash before
        // the tick only makes the origin send that change again, and the
        // member acknowledges a change it already has.
        self.store_unsaved = true;
    }

    /// One setting as the active server retains it: taken when newer than
    /// ours (a member that was away, or joins late, catches up here).
    pub(super) fn heard_setting(&mut self, record: SettingRecord) {
        let change = record.change;
        if self.store.apply(&change) == Outcome::Applied {
            tracing::info!(
                key = change.key,
                value = change.value,
                by = change.origin,
                "fabric setting taken from the server's record"
            );
            self.log_settings();
            self.save_store();
            self.settle_sets();
        }
    }

    /// The server's config snapshot (from a server of an older version):
    /// settings newer than ours are taken.
    pub(super) fn heard_config_state(&mut self, state: ConfigState) {
        let mut applied = false;
        for change in state.entries.values() {
            self.hlc.observe(change.at_ms);
            if self.store.apply(change) == Outcome::Applied {
                tracing::info!(
                    key = change.key,
                    value = change.value,
                    by = change.origin,
                    "fabric setting taken from the server's snapshot"
                );
                applied = true;
            }
        }
        if applied {
            self.log_settings();
            self.save_store();
        }
    }

    /// Our changes not acknowledged by every member within `resend_ms` go
    /// out again.
    pub(super) fn resend_changes(&mut self) {
        for change in self
            .outbox
            .due(Duration::from_millis(self.config.resend_ms))
        {
            tracing::info!(
                key = change.key,
                seq = change.seq,
                "config change not acknowledged by all; sending again"
            );
            self.count("changes_resent");
            self.publish(&Message::Change(change));
        }
    }

    /// `fabric set`: validates, applies here, and publishes the change to
    /// every member, awaiting their acknowledgements. The error is the
    /// operator's reason for the refusal.
    pub(super) fn publish_change(
        &mut self,
        key: String,
        value: String,
    ) -> Result<(ConfigChange, BTreeSet<String>), String> {
        validate_setting(&key, &value)?;
        self.next_seq = self.next_seq.max(now_ms()) + 1;
        let change = ConfigChange {
            origin: self.identity.clone(),
            seq: self.next_seq,
            key,
            value,
            at_ms: self.hlc.now(),
        };
        if let Outcome::Rejected(why) = self.store.apply(&change) {
            return Err(why);
        }
        let me = self.identity.clone();
        self.store.ack(&me, &me, change.seq, "applied");
        self.log_settings();
        self.save_store();
        let waiting: BTreeSet<String> = self
            .view
            .iter()
            .filter(|(_, e)| !e.departed && e.heartbeat.role != Role::Server)
            .map(|(n, _)| n.clone())
            .collect();
        tracing::info!(
            key = change.key,
            value = change.value,
            members = waiting.len(),
            "publishing fabric config change"
        );
        if !waiting.is_empty() {
            self.outbox.add(change.clone(), waiting.clone());
        }
        self.publish(&Message::Change(change.clone()));
        if self.active {
            self.publish_setting(&change.key);
        }
        Ok((change, waiting))
    }

    /// Answers the `fabric set` requests that are settled: superseded as
    /// soon as a newer change to the key is in force (here, or at a member
    /// that says so), applied or rejected once every member still in the
    /// fabric answered, timed out at `set_timeout_ms`.
    pub(super) fn settle_sets(&mut self) {
        let view = &self.view;
        let now = std::time::Instant::now();
        let mut i = 0;
        while i < self.pending_sets.len() {
            let p = &mut self.pending_sets[i];
            // A departed (or forgotten) member is not waited for.
            p.waiting
                .retain(|m| view.get(m).is_some_and(|e| !e.departed));
            let in_force = self
                .store
                .entries
                .get(&p.change.key)
                .is_some_and(|e| e.change == p.change);
            let outcome = if !in_force || p.acks.values().any(|o| o == "superseded") {
                "superseded"
            } else if p.waiting.is_empty() {
                if p.acks.values().all(|o| o == "applied") {
                    "applied"
                } else {
                    "rejected"
                }
            } else if now >= p.deadline {
                "timed out"
            } else {
                i += 1;
                continue;
            };
            let p = self.pending_sets.swap_remove(i);
            tracing::info!(
                key = p.change.key,
                outcome,
                acked = p.acks.len(),
                missing = p.waiting.len(),
                "fabric set answered"
            );
            let _ = p.reply.send(Ok(SetReport {
                outcome: outcome.into(),
                acks: p.acks,
                missing: p.waiting.into_iter().collect(),
                waited_ms: p.started.elapsed().as_millis() as u64,
                change: p.change,
            }));
        }
    }

    /// Another member's fault: recorded once (by its fault number) and
    /// handed to state inference as `port:<member>/<port>`. Inference's
    /// queue being full drops the information (counted as
    /// `inference_dropped`) rather than stalling the fabric.
    pub(super) fn heard_fault(&mut self, fault: Fault) {
        if !self.fault_rate.allow(&fault.member) {
            self.reject(
                "fault",
                &format!("fault flood from {}", fault.member),
                "fault_flood",
            );
            return;
        }
        if !self.admit_fault(&fault) {
            return;
        }
        // Every fault is in `show fabric`; the log gets at most one line per
        // few seconds, whatever the rate.
        if let Some(suppressed) = self.logs.admit("fault") {
            tracing::info!(
                member = fault.member,
                port = fault.port,
                kind = fault.kind,
                suppressed,
                "fabric fault"
            );
        }
        self.count("faults_received");
        let info = bus::Info::new(
            "fabric",
            &fault.kind,
            ids::remote_port(&fault.member, &fault.port),
        );
        if let Err(err) = self.infos.try_send(info) {
            self.count("inference_dropped");
            if let Some(suppressed) = self.logs.admit("inference") {
                tracing::warn!(
                    member = fault.member,
                    port = fault.port,
                    suppressed,
                    "fabric fault not passed to state inference: {err}"
                );
            }
        }
        self.record_fault(fault);
    }

    /// Tells state inference that `member` is present (`member-up`) or
    /// departed or silent (`member-departed`: its switch object and ports
    /// go lost contact). Only changes are told; a full queue drops and
    /// counts (`inference_dropped`) rather than stalling the fabric.
    pub(super) fn tell_membership(&mut self, member: &str, present: bool) {
        let message = if present {
            "member-up"
        } else {
            "member-departed"
        };
        let info = bus::Info::new("fabric-membership", message, ids::switch(member));
        if self.infos.try_send(info).is_err() {
            self.count("inference_dropped");
        }
    }

    fn record_fault(&mut self, fault: Fault) {
        if self.faults.len() >= RECENT {
            self.faults.pop_front();
        }
        self.faults.push_back(FaultReport {
            fault,
            received_ms: now_ms(),
        });
    }

    /// A local port is now operationally up (`Some(true)`), down
    /// (`Some(false)`) or gone (`None`): a change from up to down or gone,
    /// or from down to up, is published as a fault. Loopback is never a
    /// fault.
    pub(super) fn port_changed(&mut self, name: String, operational: Option<bool>) {
        if name == "lo" {
            return;
        }
        let before = match operational {
            Some(up) => self.ports.insert(name.clone(), up),
            None => self.ports.remove(&name),
        };
        let kind = match (before, operational) {
            (Some(true), Some(false) | None) => "port-down",
            (Some(false), Some(true)) => "port-up",
            _ => return,
        };
        self.publish_fault(name, kind);
    }

    /// Publishes a fault of ours (retained per port) and records it.
    pub(super) fn publish_fault(&mut self, port: String, kind: &str) {
        self.fault_seq += 1;
        let fault = Fault {
            member: self.identity.clone(),
            boot: self.boot,
            seq: self.fault_seq,
            port,
            kind: kind.into(),
            at_ms: now_ms(),
        };
        tracing::info!(port = fault.port, kind, "publishing fault");
        self.publish(&Message::Fault(fault.clone()));
        self.record_fault(fault);
    }
}
