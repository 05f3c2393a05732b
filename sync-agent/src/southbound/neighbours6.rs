//! IPv6 neighbours (the ND cache) over rtnetlink, for ND sync: dump,
//! probe, write (the fallback), delete, and the `accept_untracked_na`
//! switch. The IPv4 side is [`super::neighbours`], whose error type and
//! state names are shared.

use std::net::{IpAddr, Ipv6Addr};

use futures::TryStreamExt as _;
use rtnetlink::{Handle, IpVersion, packet_route::neighbour::NeighbourMessage};

use super::neighbours::NeighbourError;
use crate::mac::MacAddr;

/// One entry of the kernel's IPv6 neighbour cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour6 {
    /// Interface index.
    pub ifindex: u32,
    /// IPv6 address.
    pub ip: Ipv6Addr,
    /// Link-layer address, when resolved.
    pub mac: Option<MacAddr>,
    /// NUD state, as iproute2 names it.
    pub state: &'static str,
}

pub(super) fn from_message(message: &NeighbourMessage) -> Option<Neighbour6> {
    match super::neighbours::parts(message)? {
        (ifindex, IpAddr::V6(ip), mac, state) => Some(Neighbour6 {
            ifindex,
            ip,
            mac,
            state,
        }),
        _ => None,
    }
}

/// Every IPv6 neighbour on the given interfaces.
pub async fn dump(handle: &Handle, ifindexes: &[u32]) -> Result<Vec<Neighbour6>, NeighbourError> {
    let mut out = Vec::new();
    let mut replies = handle
        .neighbours()
        .get()
        .set_family(IpVersion::V6)
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
                    what: "IPv6 dump".into(),
                    source,
                });
            }
        }
    }
}

/// Deletes the entry for `ip` on `ifindex`; Ok(false) when it was not there.
pub async fn delete(handle: &Handle, ifindex: u32, ip: Ipv6Addr) -> Result<bool, NeighbourError> {
    super::neighbours::delete_entry(handle, ifindex, IpAddr::V6(ip)).await
}

/// Moves a resolved entry to PROBE: the kernel sends a fresh unicast
/// Neighbour Solicitation, and the advertisement refreshes it.
pub async fn probe(handle: &Handle, neighbour: &Neighbour6) -> Result<(), NeighbourError> {
    super::neighbours::probe_entry(
        handle,
        neighbour.ifindex,
        IpAddr::V6(neighbour.ip),
        neighbour.mac,
    )
    .await
}

/// Writes a REACHABLE entry directly (the fallback when injection fails).
pub async fn set_reachable(
    handle: &Handle,
    ifindex: u32,
    ip: Ipv6Addr,
    mac: MacAddr,
) -> Result<(), NeighbourError> {
    super::neighbours::set_reachable_entry(handle, ifindex, IpAddr::V6(ip), mac).await
}

fn sysctl_path(interface: &str, name: &str) -> String {
    format!("/proc/sys/net/ipv6/conf/{interface}/{name}")
}

/// `net.ipv6.conf.<interface>.accept_untracked_na` now.
pub fn accept_untracked_na(interface: &str) -> Result<u8, NeighbourError> {
    let path = sysctl_path(interface, "accept_untracked_na");
    std::fs::read_to_string(&path)
        .and_then(|text| {
            text.trim()
                .parse()
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
        })
        .map_err(|source| NeighbourError::SysctlRead { path, source })
}

/// Sets `net.ipv6.conf.<interface>.accept_untracked_na`.
pub fn set_accept_untracked_na(interface: &str, value: u8) -> Result<(), NeighbourError> {
    let path = sysctl_path(interface, "accept_untracked_na");
    std::fs::write(&path, format!("{value}\n"))
        .map_err(|source| NeighbourError::Sysctl { path, source })
}

/// A change to the kernel's IPv6 neighbour cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Neighbour6Event {
    /// Created or changed: its state now.
    Changed(Neighbour6),
    /// Removed (garbage-collected, flushed or deleted).
    Removed(Neighbour6),
}
