//! What the config center shows an operator (`show rollout`, its `center`
//! part).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::rollout::wire::Rollout;

/// The center's rollouts, newest first (plan, batches, per-device state).
/// In JSON a bare array of [`Rollout`], as `GET /v1/rollouts` answers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct CenterReport {
    /// Every rollout the center remembers, newest first.
    pub rollouts: Vec<Rollout>,
}

/// The center's request counters and long polls (what `GET /v1/stats`
/// shows, with every answered request by status), for metrics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CenterStats {
    /// Requests answered since start, by HTTP status.
    pub requests: BTreeMap<u16, u64>,
    /// Requests refused since start, by reason.
    pub refused: BTreeMap<String, u64>,
    /// Long polls held right now.
    pub waiting_polls: usize,
    /// Whether this center runs the rollout engine's timed work (pace
    /// timers, step timeouts, device expiry): always with redb; with
    /// several centers on etcd, only the elected one.
    #[serde(default)]
    pub runs_engine: bool,
}

impl fmt::Display for CenterReport {
    /// Pretty JSON, as `show rollout` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::rollout::report::write_pretty_json(f, self)
    }
}
