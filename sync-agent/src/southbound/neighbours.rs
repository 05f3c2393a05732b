//! IPv4 neighbours (the ARP table) over rtnetlink, and the `arp_accept`
//! switch.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, IpVersion,
    packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
    },
};

use crate::mac::MacAddr;

/// One entry of the kernel's ARP table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// Interface index.
    pub ifindex: u32,
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// Link-layer address, when resolved.
    pub mac: Option<MacAddr>,
    /// NUD state, as iproute2 names it (REACHABLE, STALE, …).
    pub state: &'static str,
}

/// Errors of neighbour requests.
#[derive(Debug, thiserror::Error)]
pub enum NeighbourError {
    /// The kernel refused or failed a request.
    #[error("netlink neighbour request for {what}: {source}")]
    Request {
        /// What was asked.
        what: String,
        /// The error.
        source: rtnetlink::Error,
    },
    /// Writing a sysctl failed.
    #[error("cannot set {path}: {source}")]
    Sysctl {
        /// The sysctl file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Reading a sysctl failed (or it held no number).
    #[error("cannot read {path}: {source}")]
    SysctlRead {
        /// The sysctl file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

fn state_name(state: NeighbourState) -> &'static str {
    match state {
        NeighbourState::Incomplete => "INCOMPLETE",
        NeighbourState::Reachable => "REACHABLE",
        NeighbourState::Stale => "STALE",
        NeighbourState::Delay => "DELAY",
        NeighbourState::Probe => "PROBE",
        NeighbourState::Failed => "FAILED",
        NeighbourState::Noarp => "NOARP",
        NeighbourState::Permanent => "PERMANENT",
        _ => "NONE",
    }
}

fn from_message(message: &NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)) => ip = Some(*addr),
            NeighbourAttribute::LinkLocalAddress(bytes) if bytes.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(bytes);
                mac = Some(MacAddr(m));
            }
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: message.header.ifindex,
        ip: ip?,
        mac,
        state: state_name(message.header.state),
    })
}

/// Every IPv4 neighbour on the given interfaces.
pub async fn dump(handle: &Handle, ifindexes: &[u32]) -> Result<Vec<Neighbour>, NeighbourError> {
    let mut out = Vec::new();
    let mut replies = handle
        .neighbours()
        .get()
        .set_family(IpVersion::V4)
        .execute();
    loop {
        match replies.try_next().await {
            Ok(Some(message)) => {
                if let Some(n) = from_message(&message).filter(|n| ifindexes.contains(&n.ifindex)) {
                    out.push(n);
                }
            }
            Ok(None) => return Ok(out),
            Err(source) => {
                return Err(NeighbourError::Request {
                    what: "dump".into(),
                    source,
                });
            }
        }
    }
}

/// Moves a resolved entry to PROBE: the kernel sends a fresh unicast ARP
/// request for it, and the reply refreshes it (SPEC 2.5).
pub async fn probe(handle: &Handle, neighbour: &Neighbour) -> Result<(), NeighbourError> {
    let mut request = handle
        .neighbours()
        .add(neighbour.ifindex, IpAddr::V4(neighbour.ip))
        .state(NeighbourState::Probe)
        .replace();
    if let Some(mac) = neighbour.mac {
        request = request.link_local_address(&mac.0);
    }
    request
        .execute()
        .await
        .map_err(|source| NeighbourError::Request {
            what: format!("probe {}", neighbour.ip),
            source,
        })
}

/// Writes a REACHABLE entry directly (the fallback when the kernel's own ARP
/// path cannot be used).
pub async fn set_reachable(
    handle: &Handle,
    ifindex: u32,
    ip: Ipv4Addr,
    mac: MacAddr,
) -> Result<(), NeighbourError> {
    handle
        .neighbours()
        .add(ifindex, IpAddr::V4(ip))
        .state(NeighbourState::Reachable)
        .link_local_address(&mac.0)
        .replace()
        .execute()
        .await
        .map_err(|source| NeighbourError::Request {
            what: format!("set {ip} reachable"),
            source,
        })
}

/// `net.ipv4.conf.<interface>.arp_accept` now (in the agent's namespace).
pub fn arp_accept(interface: &str) -> Result<u8, NeighbourError> {
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/arp_accept");
    std::fs::read_to_string(&path)
        .and_then(|text| {
            text.trim()
                .parse()
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
        })
        .map_err(|source| NeighbourError::SysctlRead { path, source })
}

/// Sets `net.ipv4.conf.<interface>.arp_accept` (in the agent's namespace).
pub fn set_arp_accept(interface: &str, value: u8) -> Result<(), NeighbourError> {
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/arp_accept");
    std::fs::write(&path, format!("{value}\n"))
        .map_err(|source| NeighbourError::Sysctl { path, source })
}
