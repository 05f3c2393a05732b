//! What the config center shows an operator (`show rollout`, its `center`
//! part).

use std::fmt;

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

impl fmt::Display for CenterReport {
    /// Pretty JSON, as `show rollout` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::rollout::report::write_pretty_json(f, self)
    }
}
