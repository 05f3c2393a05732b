//! Requests and responses on the control socket. Field names are stable: they
//! are what `-j` prints.

use serde::{Deserialize, Serialize};

/// Longest request line the server reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request to a running agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Overall state: ports, program, tables.
    Status,
    /// Kernel and agent counters.
    Counters,
    /// Most recent captured replies, newest first.
    Captured {
        /// At most this many.
        limit: Option<usize>,
    },
    /// Re-read the config file and apply what changed.
    Reload,
    /// The peer session.
    Peer,
    /// Synced ARP entries, both directions.
    Arp,
    /// Synced IPv6 neighbour (ND) entries, both directions.
    Nd,
    /// MC-LAG role and port identity.
    Mclag,
    /// Every object's state (or only the faulty ones).
    States {
        /// Only objects with a fault or in lost contact.
        #[serde(default)]
        faulty: bool,
    },
    /// Root-cause alarms: raised, suppressed under them, recently cleared.
    Alarms,
    /// Rollouts (on a center) and the device's services (on a device).
    Rollout,
    /// One object's state, dependency chains and histories.
    State {
        /// Object id.
        object: String,
    },
    /// The fabric: members, servers, faults, fabric config.
    Fabric,
    /// Publish a fabric-wide config change.
    FabricSet {
        /// Setting.
        key: String,
        /// Value.
        value: String,
    },
}

/// The envelope of every response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The answer, when ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// What went wrong, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A successful answer.
    pub fn ok<T: Serialize>(data: &T) -> Self {
        match serde_json::to_value(data) {
            Ok(value) => Self {
                ok: true,
                data: Some(value),
                error: None,
            },
            Err(e) => Self::error(format!("cannot encode the answer: {e}")),
        }
    }

    /// A failure.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            data: None,
            error: Some(message.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_stable_wire_names() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"command":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"captured","limit":5}"#).unwrap(),
            Request::Captured { limit: Some(5) }
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"format_disk"}"#).is_err());
    }
}
