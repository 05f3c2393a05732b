//! `[inference]`: history depth, declared objects and extra rules (SPEC 5).

use serde::{Deserialize, Serialize};

use super::{Dependency, Layer, Rule};
use crate::validate::Problems;

fn default_history() -> usize {
    32
}

/// `[inference]`: objects and rules beyond the built-in ones.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    /// Entries kept in each object's state and information histories.
    #[serde(default = "default_history")]
    pub history: usize,
    /// Objects to add to the model (e.g. a service on an IP interface).
    #[serde(default)]
    pub objects: Vec<DeclaredObject>,
    /// Rules that normalise information to states (before the built-in ones).
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            history: default_history(),
            objects: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// An object declared in the config.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeclaredObject {
    /// Its id, e.g. `svc:web`.
    pub id: String,
    /// Its layer.
    pub layer: Layer,
    /// Its kind, e.g. `service`.
    pub kind: String,
    /// What it depends on.
    #[serde(default)]
    pub depends_on: Vec<DeclaredDependency>,
}

/// A dependency declared in the config.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeclaredDependency {
    /// The object depended on, e.g. `ip:eth0`.
    pub id: String,
    /// belongs-to (same layer) or maps-to (a lower layer realises this one).
    pub kind: Dependency,
}

impl InferenceConfig {
    /// Every problem of the `[inference]` section.
    pub fn problems(&self, out: &mut Problems) {
        if !(1..=4096).contains(&self.history) {
            out.add(
                "inference.history",
                format!("{} must be between 1 and 4096", self.history),
            );
        }
        for (i, object) in self.objects.iter().enumerate() {
            if object.id.is_empty() || !object.id.contains(':') {
                out.add(
                    format!("inference.objects[{i}].id"),
                    format!("'{}' must look like kind:name (e.g. svc:web)", object.id),
                );
            }
        }
    }
}
