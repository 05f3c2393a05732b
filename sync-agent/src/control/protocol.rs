//! Requests and responses on the control socket. Field names are stable: they
//! are what `-j` prints.

use serde::{Deserialize, Serialize};

use crate::{dataplane::AttachedMode, mac::MacAddr};

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
    /// MC-LAG role and port identity.
    Mclag,
    /// Every object's state (or only the faulty ones).
    States {
        /// Only objects with a fault or in lost contact.
        #[serde(default)]
        faulty: bool,
    },
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

/// `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    /// Instance name.
    pub instance: String,
    /// Agent version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Config file in use.
    pub config_file: String,
    /// Kernel id of the classifier program.
    pub program_id: Option<u32>,
    /// Kernel id of the pass-only program.
    pub pass_program_id: Option<u32>,
    /// Whether `own` replies are synced.
    pub sync_own_replies: bool,
    /// Whether every VRRP MAC counts as shared.
    pub vrrp_prefix_is_shared: bool,
    /// Member ports.
    pub ports: Vec<PortStatus>,
    /// MAC table contents.
    pub peer_macs: Vec<MacAddr>,
    /// This switch's MACs.
    pub own_macs: Vec<MacAddr>,
    /// Shared MACs.
    pub shared_macs: Vec<MacAddr>,
}

/// One member port in `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortStatus {
    /// Interface name.
    pub name: String,
    /// Interface index, if the interface exists.
    pub ifindex: Option<u32>,
    /// Current MAC.
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// Attach mode, if the classifier is attached.
    pub xdp_mode: Option<AttachedMode>,
    /// Why it is not attached, if it is not.
    pub problem: Option<String>,
}

/// `show counters`: kernel counters summed over CPUs, plus the agent's own.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CountersReport {
    /// Frames seen by the classifier.
    pub seen: u64,
    /// ARP replies among them.
    pub arp_replies: u64,
    /// Replies classified peer.
    pub peer: u64,
    /// Replies classified own.
    pub own: u64,
    /// Replies classified shared.
    pub shared: u64,
    /// Malformed frames.
    pub malformed: u64,
    /// Replies lost because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Replies to none of the known MACs.
    pub unmatched: u64,
    /// Replies pushed to the ring buffer.
    pub captured: u64,
    /// The agent's side.
    pub agent: AgentCounters,
}

/// Counters kept by the agent process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentCounters {
    /// Records read from the ring buffer.
    pub records_read: u64,
    /// Records that failed validation.
    pub invalid_records: u64,
    /// Replies the agent received from the reader.
    pub replies_received: u64,
    /// Control requests that could not be parsed.
    pub bad_requests: u64,
}

/// One entry of `show captured`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CapturedEntry {
    /// Member port it arrived on (name, or `ifindex N` if unknown).
    pub port: String,
    /// Its index.
    pub ifindex: u32,
    /// `peer` or `own`.
    pub class: String,
    /// Outer VLAN id (0 untagged).
    pub outer_vlan: u16,
    /// Inner VLAN id (0 unless double-tagged).
    pub inner_vlan: u16,
    /// Tags on the frame.
    pub vlan_count: u8,
    /// Ethernet destination.
    pub dst_mac: MacAddr,
    /// ARP sender MAC.
    pub sender_mac: MacAddr,
    /// ARP sender IP.
    pub sender_ip: std::net::Ipv4Addr,
    /// ARP target MAC.
    pub target_mac: MacAddr,
    /// ARP target IP.
    pub target_ip: std::net::Ipv4Addr,
    /// Milliseconds since capture.
    pub age_ms: u64,
    /// Frame length on the wire.
    pub frame_len: u16,
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

    #[test]
    fn counters_report_has_the_documented_top_level_integers() {
        let value = serde_json::to_value(CountersReport::default()).unwrap();
        for field in [
            "seen",
            "arp_replies",
            "peer",
            "own",
            "shared",
            "malformed",
            "ringbuf_full",
        ] {
            assert!(value[field].is_u64(), "{field}");
        }
    }
}
