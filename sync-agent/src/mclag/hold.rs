//! Holding member ports out of service: after start until the pair has
//! converged (init delay), and on the slave while the peer link is down but
//! the peer lives (dual-active protection); both are pair-wide, so every
//! member port follows them. A single port is also held on the slave when
//! its settings differ from its twin's and `on_mismatch = "shut-port"`.
//!
//! Out of service is administrative down: the downstream bond sees the link
//! go and uses the other switch only. Veth and most drivers have no
//! protodown, and admin down works everywhere. What is held is brought back
//! up when the last reason goes and at clean exit. After a SIGKILL the ports
//! stay down until the next start, whose own init delay brings them up once
//! converged.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{port_ops::PortOps, task::Task};

/// Why member ports are held out of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldReason {
    /// Just started: waiting for the first bulk sync from the peer or the
    /// end of `init_delay_s`.
    InitDelay,
    /// Slave, peer link down, peer alive on the backup path: the master
    /// alone serves the downstream bonds.
    SplitBrain,
}

/// The reasons in force and the ports taken down for them.
#[derive(Debug, Default)]
pub(super) struct Holds {
    pub(super) reasons: BTreeSet<HoldReason>,
    /// Member ports held alone: their settings differ from their twin's
    /// (`on_mismatch = "shut-port"`, slave only).
    pub(super) inconsistent: BTreeSet<String>,
    /// Ports this task took down: name -> ifindex.
    pub(super) down: BTreeMap<String, u32>,
    /// Times ports were taken down / brought back (for the report).
    pub(super) taken_down: u64,
    pub(super) brought_up: u64,
}

impl<P: PortOps> Task<P> {
    /// Adds a reason and takes every member port down.
    pub(super) async fn hold(&mut self, reason: HoldReason, why: &str) {
        if self.holds.reasons.insert(reason) {
            tracing::warn!(?reason, why, "member ports held out of service");
        }
        self.apply_holds().await;
    }

    /// Drops a reason; the ports come back once none is left.
    pub(super) async fn release(&mut self, reason: HoldReason, why: &str) {
        if self.holds.reasons.remove(&reason) {
            tracing::info!(?reason, why, remaining = ?self.holds.reasons, "member port hold released");
        }
        self.apply_holds().await;
    }

    /// Makes the ports follow the reasons: every member port down while
    /// a pair-wide reason holds, an inconsistent one while it is; each back
    /// up once nothing holds it (also one that left the member list).
    pub(super) async fn apply_holds(&mut self) {
        let pair_held = !self.holds.reasons.is_empty();
        let release: Vec<(String, u32)> = self
            .holds
            .down
            .iter()
            .filter(|(name, _)| !pair_held && !self.holds.inconsistent.contains(name.as_str()))
            .map(|(name, ifindex)| (name.clone(), *ifindex))
            .collect();
        for (name, ifindex) in release {
            self.holds.down.remove(&name);
            match self.ops.set_in_service(ifindex, &name, true).await {
                Ok(()) => {
                    self.holds.brought_up += 1;
                    tracing::info!(interface = name, "member port back in service");
                }
                Err(err) => {
                    tracing::error!(interface = name, error = %err, "cannot bring the member port back up");
                }
            }
        }
        for port in self.ports.clone() {
            let Some(ifindex) = port.ifindex else {
                continue;
            };
            let held = pair_held || self.holds.inconsistent.contains(&port.name);
            if !held || self.holds.down.contains_key(&port.name) {
                continue;
            }
            match self.ops.set_in_service(ifindex, &port.name, false).await {
                Ok(()) => {
                    self.holds.taken_down += 1;
                    self.holds.down.insert(port.name.clone(), ifindex);
                    tracing::warn!(
                        interface = port.name,
                        reasons = ?self.holds.reasons,
                        inconsistent = self.holds.inconsistent.contains(&port.name),
                        "member port taken out of service"
                    );
                }
                Err(err) => {
                    tracing::error!(interface = port.name, error = %err, "cannot take the member port out of service");
                }
            }
        }
    }
}
