//! IPv4 neighbours (the ARP table) over rtnetlink: dump, probe, write,
//! delete, the `arp_accept` switch, and the stream of the kernel's
//! neighbour changes of both families ([`watch`]), which the agent fans
//! out to the modules that follow them ([`forward`]).

use std::net::{IpAddr, Ipv4Addr};

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle, IpVersion, MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    },
};
use tokio::sync::{broadcast, mpsc};

use super::neighbours6::{self, Neighbour6Event};
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

/// A change to the kernel's IPv4 neighbour table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NeighbourEvent {
    /// Created or changed (RTM_NEWNEIGH): its state now.
    Changed(Neighbour),
    /// Removed (RTM_DELNEIGH): garbage-collected, flushed or deleted.
    Removed(Neighbour),
}

/// Depth of the channel [`watch`] delivers on.
pub const WATCH_DEPTH: usize = 4096;

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
    /// Opening the netlink socket failed.
    #[error("cannot open a netlink neighbour socket: {0}")]
    Socket(#[source] std::io::Error),
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

/// The parts of a neighbour message both address families share: its
/// interface, destination address, link-layer address and state name.
pub(super) fn parts(
    message: &NeighbourMessage,
) -> Option<(u32, IpAddr, Option<MacAddr>, &'static str)> {
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)) => {
                ip = Some(IpAddr::V4(*addr));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(addr)) => {
                ip = Some(IpAddr::V6(*addr));
            }
            NeighbourAttribute::LinkLocalAddress(bytes) if bytes.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(bytes);
                mac = Some(MacAddr(m));
            }
            _ => {}
        }
    }
    Some((
        message.header.ifindex,
        ip?,
        mac,
        state_name(message.header.state),
    ))
}

fn from_message(message: &NeighbourMessage) -> Option<Neighbour> {
    match parts(message)? {
        (ifindex, IpAddr::V4(ip), mac, state) => Some(Neighbour {
            ifindex,
            ip,
            mac,
            state,
        }),
        _ => None,
    }
}

/// A change to the kernel's neighbour table, of either family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NeighbourChange {
    /// An ARP table entry.
    V4(NeighbourEvent),
    /// An IPv6 neighbour cache entry.
    V6(Neighbour6Event),
}

/// Subscribes to the kernel's neighbour changes (the RTNLGRP_NEIGH
/// multicast group), both families on one socket: the kernel copies every
/// change to every subscribed socket, and each socket's messages are read
/// and parsed apart, so the agent keeps one ([`forward`] hands the changes
/// on). Events arrive on the returned channel until the receiver is dropped.
pub fn watch() -> Result<mpsc::Receiver<NeighbourChange>, NeighbourError> {
    let (connection, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh])
            .map_err(NeighbourError::Socket)?;
    tokio::spawn(connection);
    let (tx, rx) = mpsc::channel(WATCH_DEPTH);
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let (message, removed) = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => (m, false),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(m)) => (m, true),
                _ => continue,
            };
            let change = match message.header.family {
                AddressFamily::Inet => from_message(&message).map(|n| {
                    NeighbourChange::V4(if removed {
                        NeighbourEvent::Removed(n)
                    } else {
                        NeighbourEvent::Changed(n)
                    })
                }),
                AddressFamily::Inet6 => neighbours6::from_message(&message).map(|n| {
                    NeighbourChange::V6(if removed {
                        Neighbour6Event::Removed(n)
                    } else {
                        Neighbour6Event::Changed(n)
                    })
                }),
                _ => None,
            };
            let Some(change) = change else { continue };
            if tx.send(change).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Hands the changes `pick` keeps from the agent's fan-out of [`watch`] to
/// one module, in order and with backpressure, from a task on the current
/// runtime. A module that falls more than the fan-out's depth behind
/// misses the oldest changes: logged with their number, naming `module`.
pub fn forward<T: Send + 'static>(
    changes: broadcast::Receiver<NeighbourChange>,
    module: &'static str,
    pick: impl FnMut(NeighbourChange) -> Option<T> + Send + 'static,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel(WATCH_DEPTH);
    forward_to(changes, module, tx, pick);
    rx
}

/// [`forward`] into a channel the module already has (its own input).
pub fn forward_to<T: Send + 'static>(
    mut changes: broadcast::Receiver<NeighbourChange>,
    module: &'static str,
    tx: mpsc::Sender<T>,
    mut pick: impl FnMut(NeighbourChange) -> Option<T> + Send + 'static,
) {
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(change) => {
                    if let Some(kept) = pick(change)
                        && tx.send(kept).await.is_err()
                    {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        module,
                        missed,
                        "fell behind the kernel's neighbour changes: {missed} of them were not seen"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

/// Deletes the entry for `ip` on `ifindex`. Ok(false) when the kernel had
/// no such entry (already gone: nothing to do).
pub async fn delete(handle: &Handle, ifindex: u32, ip: Ipv4Addr) -> Result<bool, NeighbourError> {
    delete_entry(handle, ifindex, IpAddr::V4(ip)).await
}

/// Deletes the entry for `ip` (either family) on `ifindex`; Ok(false) when
/// it was not there.
pub(super) async fn delete_entry(
    handle: &Handle,
    ifindex: u32,
    ip: IpAddr,
) -> Result<bool, NeighbourError> {
    let mut message = NeighbourMessage::default();
    let (family, destination) = match ip {
        IpAddr::V4(v4) => (AddressFamily::Inet, NeighbourAddress::Inet(v4)),
        IpAddr::V6(v6) => (AddressFamily::Inet6, NeighbourAddress::Inet6(v6)),
    };
    message.header.family = family;
    message.header.ifindex = ifindex;
    message
        .attributes
        .push(NeighbourAttribute::Destination(destination));
    match handle.neighbours().del(message).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-libc::ENOENT) =>
        {
            Ok(false)
        }
        Err(source) => Err(NeighbourError::Request {
            what: format!("delete {ip} on ifindex {ifindex}"),
            source,
        }),
    }
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
    probe_entry(
        handle,
        neighbour.ifindex,
        IpAddr::V4(neighbour.ip),
        neighbour.mac,
    )
    .await
}

/// Moves the entry for `ip` (either family) to PROBE.
pub(super) async fn probe_entry(
    handle: &Handle,
    ifindex: u32,
    ip: IpAddr,
    mac: Option<MacAddr>,
) -> Result<(), NeighbourError> {
    let mut request = handle
        .neighbours()
        .add(ifindex, ip)
        .state(NeighbourState::Probe)
        .replace();
    if let Some(mac) = mac {
        request = request.link_local_address(&mac.0);
    }
    request
        .execute()
        .await
        .map_err(|source| NeighbourError::Request {
            what: format!("probe {ip}"),
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
    set_reachable_entry(handle, ifindex, IpAddr::V4(ip), mac).await
}

/// Writes a REACHABLE entry for `ip` (either family).
pub(super) async fn set_reachable_entry(
    handle: &Handle,
    ifindex: u32,
    ip: IpAddr,
    mac: MacAddr,
) -> Result<(), NeighbourError> {
    handle
        .neighbours()
        .add(ifindex, ip)
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
