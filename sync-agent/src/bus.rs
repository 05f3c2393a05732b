//! The shared vocabulary: the typed messages SPEC modules exchange through
//! the channels the supervisor wires. A producer and its consumers both
//! import them from here, so no module reaches into another's internals
//! (holo keeps the same thing in `holo-utils/src/ibus.rs`).
//!
//! | message | producer | consumers | channel |
//! |---|---|---|---|
//! | [`CaptureBatch`] of [`Captured`] replies | dataplane (ring buffer reader) | peer sync, dataplane task | `mpsc`, backpressure into the ring |
//! | [`LinkEvent`] | netlink watcher (supervisor) | dataplane, inference, fabric | `broadcast` |
//! | [`MemberPort`] list | dataplane | peer sync, MC-LAG | `watch` |
//! | [`SessionEvent`] | peer sync | MC-LAG | `mpsc` |
//! | [`Liveness`] | [`crate::liveness`] | peer sync, MC-LAG (backup path) | `mpsc` |
//! | [`Info`] about an [`ObjectId`] | fabric (and any module with news) | inference | `mpsc`, drops counted |
//! | [`AlarmRecord`] | inference (own), fabric (heard) | fabric, inference | `broadcast` out, `mpsc` in |
//! | [`FabricMembers`] | fabric (its view) | inference | `watch` |

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};
use sync_common::{arp::ArpAddresses, capture::Class};

use crate::mac::MacAddr;
pub use crate::southbound::{
    links::{Link, LinkEvent},
    neighbours::NeighbourChange,
};

/// Depth of the link-event broadcast; a subscriber further behind than
/// this is told it lagged and re-reads what it needs.
pub const LINK_EVENTS_DEPTH: usize = 1024;

/// Depth of the neighbour-change broadcast (both families, one socket:
/// `southbound::neighbours::watch`); a subscriber further behind than this
/// misses the oldest changes and logs how many.
pub const NEIGHBOUR_CHANGES_DEPTH: usize = 1024;

/// A member port as the dataplane knows it: the classifier's port plus the
/// MLAG id it shares with its twin on the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberPort {
    /// Interface name.
    pub name: String,
    /// MLAG port id shared with the peer.
    pub mlag_id: u32,
    /// Interface index (None while the interface is missing).
    pub ifindex: Option<u32>,
    /// Current MAC.
    pub mac: Option<MacAddr>,
    /// Current MTU (compared with the twin's by MC-LAG).
    pub mtu: Option<u32>,
}

/// Per MLAG id, the sorted (outer, inner) VLANs a member port hands to a
/// VLAN interface (`[peer].vlan_interfaces`; inner 0 when single-tagged).
pub type VlanMap = std::collections::BTreeMap<u32, Vec<(u16, u16)>>;

/// The captured bytes of a frame, inline up to the capture size so a
/// capture costs no allocation between the ring buffer and peer sync (a
/// longer frame, e.g. an NA given a target option, spills to the heap).
pub type CapturedFrame = smallvec::SmallVec<[u8; sync_common::capture::CAPTURE_BYTES]>;

/// One ARP reply or Neighbour Advertisement the XDP program handed over
/// for syncing.
#[derive(Clone, Debug)]
pub struct Captured {
    /// Kernel monotonic time of capture, in nanoseconds.
    pub timestamp_ns: u64,
    /// Monotonic time the ring buffer reader took it off the ring, in
    /// nanoseconds (0: not known). With `timestamp_ns` it splits the
    /// capture's way to peer sync into the reader's wakeup and the hand-over
    /// (`show peer`'s latency).
    pub read_ns: u64,
    /// Interface it arrived on.
    pub ifindex: u32,
    /// Its class (peer or own; shared and unmatched are never captured).
    pub class: Class,
    /// Outer VLAN id, 0 if untagged.
    pub outer_vlan: u16,
    /// Inner VLAN id, 0 unless double-tagged.
    pub inner_vlan: u16,
    /// Number of tags.
    pub vlan_count: u8,
    /// Length of the frame on the wire.
    pub frame_len: u16,
    /// Ethernet destination.
    pub dst_mac: MacAddr,
    /// The ARP addresses (all zero for a Neighbour Advertisement).
    pub arp: ArpAddresses,
    /// For a Neighbour Advertisement (ND sync): its addresses and flags;
    /// None for an ARP reply.
    pub nd: Option<sync_common::nd::NdAddresses>,
    /// The captured bytes of the frame.
    pub frame: CapturedFrame,
}

/// The replies of one read of the ring buffer, in ring order, shared by
/// peer sync and the dataplane task (a clone is a reference count). The
/// reader owns the storage: once both have dropped their clones it fills
/// the same vector again (`dataplane::capture`'s batch pool), so draining
/// the ring allocates nothing once the pool has grown to the queues' depth.
#[derive(Clone, Debug)]
pub struct CaptureBatch(std::sync::Arc<Vec<Captured>>);

impl CaptureBatch {
    /// A batch over storage the reader recycles when this and every clone
    /// of it are gone.
    pub fn shared(storage: std::sync::Arc<Vec<Captured>>) -> Self {
        Self(storage)
    }
}

impl std::ops::Deref for CaptureBatch {
    type Target = [Captured];

    fn deref(&self) -> &[Captured] {
        &self.0
    }
}

impl From<Vec<Captured>> for CaptureBatch {
    fn from(replies: Vec<Captured>) -> Self {
        Self(std::sync::Arc::new(replies))
    }
}

/// What peer sync tells others about the peer session.
#[derive(Clone, Debug)]
pub enum SessionEvent {
    /// A session is established (the peer's hello).
    Up {
        /// The peer's election address, if it runs MC-LAG.
        mclag_address: Option<IpAddr>,
        /// The peer's member ports: MLAG id and MAC.
        ports: Vec<(u32, MacAddr)>,
        /// The peer's member port MTUs by MLAG id (empty from peers that
        /// do not send them).
        port_mtus: Vec<(u32, u32)>,
        /// The peer's VLAN interface map by MLAG id (ports it does not
        /// report are missing).
        port_vlans: VlanMap,
        /// The peer's capability bits (the sync sub-types it speaks).
        capabilities: u32,
    },
    /// The peer has sent everything it had when the session started, and
    /// this switch applied it (SYNC_DONE): converged.
    Synced,
    /// The peer's liveness is lost.
    Lost,
}

/// What a liveness task reports about the switch at the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Keepalives arrive; the peer agent has this boot id.
    Up {
        /// The peer's boot id.
        boot_id: u64,
    },
    /// No keepalive for the dead interval.
    Down,
}

/// The id of an inference object, e.g. `port:a-c`, `lan:a-c`, `ip:a-c`,
/// `switch:A`. Build ids with [`ids`], never by hand.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectId(pub String);

impl ObjectId {
    /// Wraps a string.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ObjectId {
    fn from(id: &str) -> Self {
        Self(id.to_string())
    }
}

impl From<String> for ObjectId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

/// One incoming piece of information for state inference: where from, what
/// it says, about which object.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Info {
    /// Where it comes from, e.g. `netlink`, `fabric`, `peer`, `agent`.
    pub source: String,
    /// What it says, e.g. `link-down`.
    pub message: String,
    /// The object it is about.
    pub object: ObjectId,
}

impl Info {
    /// Shorthand constructor.
    pub fn new(source: &str, message: &str, object: impl Into<ObjectId>) -> Self {
        Self {
            source: source.to_string(),
            message: message.to_string(),
            object: object.into(),
        }
    }
}

/// The other fabric members this switch's fabric view knows (departed
/// ones included until they are forgotten), each with the ports its
/// heartbeat lists (`None`: not said, e.g. an older agent). The fabric keeps
/// it current in a `watch`, so a reader that falls behind reads the latest
/// view, never a gap; state inference follows it: members and their ports
/// join the model before any fault names them, and a member the fabric
/// forgot leaves it. The lists are shared (`Arc`), so a reader tells an
/// unchanged member by pointer.
pub type FabricMembers = std::collections::BTreeMap<String, Option<std::sync::Arc<[String]>>>;

/// A root-cause alarm raised or cleared by state inference, as it crosses
/// the fabric (issue 16: alarms are published on the fault channel): this
/// switch's inference hands its own to the fabric, and the fabric hands
/// those of other switches to inference, which lists them as remote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmRecord {
    /// The switch whose inference raised it (its fabric identity; empty
    /// until the fabric fills it in).
    pub origin: String,
    /// The alarmed object, as that switch names it.
    pub object: ObjectId,
    /// Its effective state names, comma-separated.
    pub state: String,
    /// Its fault level.
    pub level: u8,
    /// Its root causes.
    pub root_causes: Vec<ObjectId>,
    /// Objects suppressed under it (at most [`AlarmRecord::MAX_LISTED`]).
    pub suppressed: Vec<ObjectId>,
    /// When it was raised (ms since the epoch, origin's clock).
    pub raised_ms: u64,
    /// When it cleared (0 while raised).
    pub cleared_ms: u64,
}

impl AlarmRecord {
    /// Most root causes or suppressed objects one record lists: an alarm
    /// over a huge subtree stays one small message.
    pub const MAX_LISTED: usize = 64;

    /// True while raised.
    pub fn raised(&self) -> bool {
        self.cleared_ms == 0
    }
}

/// A config center released a config version to devices (SPEC 6.2
/// "subscription"): the center announces it, the fabric carries it, and a
/// device that uses `key` and runs another MD5 asks the center at once.
/// The announcement only triggers that ask, so it carries no content and a
/// forged one costs a device one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReleased {
    /// `namespace/group/name`.
    pub key: String,
    /// The released version.
    pub version: u64,
    /// Its MD5 (hex).
    pub md5: String,
}

/// Object ids, in one place: producers build them and the inference task
/// parses them with the same rules.
pub mod ids {
    use super::ObjectId;

    /// The switch itself (or another fabric member).
    pub fn switch(name: &str) -> ObjectId {
        ObjectId(format!("switch:{name}"))
    }
    /// A physical port of this switch.
    pub fn port(ifname: &str) -> ObjectId {
        ObjectId(format!("port:{ifname}"))
    }
    /// A port of another fabric member.
    pub fn remote_port(member: &str, port: &str) -> ObjectId {
        ObjectId(format!("port:{member}/{port}"))
    }
    /// The member and port of a [`remote_port`] id; None for any other id.
    pub fn parse_remote_port(id: &ObjectId) -> Option<(&str, &str)> {
        id.0.strip_prefix("port:")?.split_once('/')
    }
    /// The LAN (L2) port a physical port realises.
    pub fn lan(ifname: &str) -> ObjectId {
        ObjectId(format!("lan:{ifname}"))
    }
    /// A bridge or bond (L2).
    pub fn aggregate(kind: &str, ifname: &str) -> ObjectId {
        ObjectId(format!("{kind}:{ifname}"))
    }
    /// An IPv4 interface (L3).
    pub fn ip(ifname: &str) -> ObjectId {
        ObjectId(format!("ip:{ifname}"))
    }
    /// An IPv6 interface (L3): the interface has an IPv6 address.
    pub fn ip6(ifname: &str) -> ObjectId {
        ObjectId(format!("ip6:{ifname}"))
    }
    /// A physical link from this switch's port `local` to `remote` (the
    /// far end: another member's port `MEMBER/IF`, or `mlag-peer`).
    pub fn link(local: &str, remote: &str) -> ObjectId {
        ObjectId(format!("link:{local}--{remote}"))
    }
    /// A link from this switch's port `local` to the MLAG peer (the peer
    /// link, or the MC-LAG backup path).
    pub fn peer_path(local: &str) -> ObjectId {
        link(local, "mlag-peer")
    }
    /// A VLAN (L2) of this switch: `vlan:OUTER`, or `vlan:OUTER.INNER`
    /// when double-tagged.
    pub fn vlan(outer: u16, inner: u16) -> ObjectId {
        if inner == 0 {
            ObjectId(format!("vlan:{outer}"))
        } else {
            ObjectId(format!("vlan:{outer}.{inner}"))
        }
    }
    /// A gateway (L3).
    pub fn gateway(ip: std::net::Ipv4Addr) -> ObjectId {
        ObjectId(format!("gw:{ip}"))
    }
    /// A neighbour (L3): an entry of the kernel's IPv4 neighbour table.
    pub fn neighbour(ip: std::net::Ipv4Addr) -> ObjectId {
        ObjectId(format!("neigh:{ip}"))
    }
    /// The MLAG interface of an MLAG id (L2): this switch's member port
    /// and its twin on the peer.
    pub fn mlag(mlag_id: u32) -> ObjectId {
        ObjectId(format!("mlag:{mlag_id}"))
    }
    /// The peer's member port with this MLAG id (the twin of ours).
    pub fn twin(mlag_id: u32) -> ObjectId {
        ObjectId(format!("twin:{mlag_id}"))
    }
    /// The MLAG peer switch (the twin ports belong to it), whatever its
    /// name: it is known before the peer has said it.
    pub fn peer_switch() -> ObjectId {
        ObjectId("switch:mlag-peer".to_string())
    }
}

/// Why a module's handle could not answer an operator request.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AskError {
    /// The module's task has stopped.
    #[error("the {0} task has stopped")]
    Gone(&'static str),
    /// The owner refused the request; the text says why (and names the
    /// object, field or peer involved).
    #[error("{0}")]
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_port_ids_round_trip() {
        let id = ids::remote_port("sw3", "p1");
        assert_eq!(id.as_str(), "port:sw3/p1");
        assert_eq!(ids::parse_remote_port(&id), Some(("sw3", "p1")));
        assert_eq!(ids::parse_remote_port(&ids::port("eth0")), None);
        assert_eq!(ids::parse_remote_port(&ids::lan("a/b")), None);
    }
}
