//! What MC-LAG does to the member ports, behind one small trait: set a MAC,
//! move the IPv6 link-local address, bounce a port, set the bond's LACP
//! actor system, announce a takeover, read the link-local addresses. Every
//! change names exactly what it replaces, so the task can undo it (on exit,
//! or when this switch becomes master by election) and never touches an
//! address or setting it did not make.
//!
//! The handlers in `events.rs` decide *what* to do; [`PortOps`] does it. The
//! agent uses [`NetlinkPorts`] (netlink, sysfs and a packet socket); the
//! unit tests use a recording fake, so every decision can be checked from an
//! event sequence without root.

use std::{
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
};

use rtnetlink::Handle;

use super::announce;
use crate::{
    mac::MacAddr,
    southbound::{
        addresses::{self, AddressError},
        links::{self, LinkError},
    },
};

/// Why a port operation failed; the inner error names the interface.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// A link request (MAC, up/down) failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// An address request (dump, add, delete) failed.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// Writing sysfs or sending frames failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What became of a request to set the LACP actor system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorSystem {
    /// The bond (the port itself, or the bond above it) now uses the MAC;
    /// `previous` is what it had (None if unreadable), to restore it.
    Set {
        /// `ad_actor_system` before the write.
        previous: Option<MacAddr>,
    },
    /// No bond at or above the port (or a kernel without bonding): nothing
    /// to set.
    NoBond,
}

/// What a link-local readdress changed on the port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readdressed {
    /// The address removed (it was asked for and present).
    pub removed: Option<Ipv6Addr>,
    /// The address added (it was asked for and missing).
    pub added: Option<Ipv6Addr>,
}

impl Readdressed {
    /// What a readdress asking to remove `remove` and add `add` does to a
    /// port holding `current`: `remove` goes only if present, `add` comes
    /// only if missing, and nothing else is touched (an operator's own
    /// `fe80::` addresses stay).
    pub fn plan(current: &[IpAddr], remove: Option<Ipv6Addr>, add: Option<Ipv6Addr>) -> Self {
        let has = |ip: Ipv6Addr| current.contains(&IpAddr::V6(ip));
        Self {
            removed: remove.filter(|&ip| Some(ip) != add && has(ip)),
            added: add.filter(|&ip| !has(ip)),
        }
    }
}

/// Where the sysfs network class lives on the live system.
pub const SYSFS_NET: &str = "/sys/class/net";

/// The `ad_actor_system` file of the bond `port` belongs to, under
/// `sysfs_net` (normally [`SYSFS_NET`]): the port's own when the member port
/// is the bond (`<port>/bonding` exists), its master's when it is a bond
/// slave (`<port>/master/bonding`), None when neither.
pub fn actor_system_path(sysfs_net: &Path, port: &str) -> Option<PathBuf> {
    let dir = sysfs_net.join(port);
    [dir.join("bonding"), dir.join("master/bonding")]
        .into_iter()
        .find(|bonding| bonding.is_dir())
        .map(|bonding| bonding.join("ad_actor_system"))
}

/// Writes `mac` as the `ad_actor_system` of `port`'s bond under
/// `sysfs_net`; returns what was there before.
pub fn write_actor_system(
    sysfs_net: &Path,
    port: &str,
    mac: MacAddr,
) -> std::io::Result<ActorSystem> {
    let Some(path) = actor_system_path(sysfs_net, port) else {
        return Ok(ActorSystem::NoBond);
    };
    let previous = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| text.trim().parse().ok());
    std::fs::write(&path, mac.to_string()).map_err(|err| {
        std::io::Error::new(err.kind(), format!("writing {}: {err}", path.display()))
    })?;
    Ok(ActorSystem::Set { previous })
}

/// The side effects of MC-LAG on the member ports. `ifindex` and `name`
/// identify the same port (the name is for errors and logs).
pub trait PortOps: Send + 'static {
    /// Sets the port's MAC live (the link stays up).
    fn set_mac(
        &mut self,
        ifindex: u32,
        name: &str,
        mac: MacAddr,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Sets `ad_actor_system` of the port's bond (the port itself or the
    /// bond above it) to `mac`.
    fn set_actor_system(&mut self, name: &str, mac: MacAddr) -> Result<ActorSystem, PortError>;

    /// Takes the port down and up so the kernel regenerates its link-local
    /// address.
    fn bounce(
        &mut self,
        ifindex: u32,
        name: &str,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Removes the link-local address `remove` if the port has it and adds
    /// `add` (/64) if it is missing ([`Readdressed::plan`]); every other
    /// address stays. Returns what changed.
    fn readdress_link_local(
        &mut self,
        ifindex: u32,
        name: &str,
        remove: Option<Ipv6Addr>,
        add: Option<Ipv6Addr>,
    ) -> impl Future<Output = Result<Readdressed, PortError>> + Send;

    /// Sends a gratuitous ARP for every IPv4 address and an unsolicited
    /// neighbour advertisement for every IPv6 address of the port, from
    /// `mac`; returns the number of frames sent.
    fn announce(
        &mut self,
        ifindex: u32,
        name: &str,
        mac: MacAddr,
    ) -> impl Future<Output = Result<u64, PortError>> + Send;

    /// Takes the port administratively down (out of service) or up.
    fn set_in_service(
        &mut self,
        ifindex: u32,
        name: &str,
        up: bool,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// The port's IPv6 link-local addresses now.
    fn link_locals(
        &mut self,
        ifindex: u32,
    ) -> impl Future<Output = Result<Vec<IpAddr>, PortError>> + Send;
}

/// [`PortOps`] on the live system.
pub struct NetlinkPorts {
    netlink: Handle,
    /// For the takeover's announcements; opened at start so a takeover
    /// neither opens nor closes one (see [`announce::FrameSender`]). None:
    /// it could not be opened then, and is tried again at the takeover.
    frames: Option<announce::FrameSender>,
}

impl NetlinkPorts {
    /// Uses `netlink` for link and address requests.
    pub fn new(netlink: Handle) -> Self {
        let frames = announce::FrameSender::open()
            .inspect_err(|err| {
                tracing::warn!(error = %err, "no packet socket for takeover announcements yet; trying again at a takeover");
            })
            .ok();
        Self { netlink, frames }
    }
}

impl PortOps for NetlinkPorts {
    async fn set_mac(&mut self, ifindex: u32, name: &str, mac: MacAddr) -> Result<(), PortError> {
        Ok(links::set_mac(&self.netlink, ifindex, name, mac).await?)
    }

    fn set_actor_system(&mut self, name: &str, mac: MacAddr) -> Result<ActorSystem, PortError> {
        Ok(write_actor_system(Path::new(SYSFS_NET), name, mac)?)
    }

    async fn bounce(&mut self, ifindex: u32, name: &str) -> Result<(), PortError> {
        Ok(links::bounce(&self.netlink, ifindex, name).await?)
    }

    async fn readdress_link_local(
        &mut self,
        ifindex: u32,
        name: &str,
        remove: Option<Ipv6Addr>,
        add: Option<Ipv6Addr>,
    ) -> Result<Readdressed, PortError> {
        let current = addresses::list(&self.netlink, ifindex).await?;
        let ips: Vec<IpAddr> = current.iter().map(|a| a.ip).collect();
        let plan = Readdressed::plan(&ips, remove, add);
        if let Some(stale) = plan
            .removed
            .and_then(|ip| current.iter().find(|a| a.ip == IpAddr::V6(ip)))
        {
            addresses::remove(&self.netlink, ifindex, stale).await?;
            tracing::info!(interface = name, removed = %stale.ip, "EUI-64 link-local address removed");
        }
        if let Some(new) = plan.added {
            addresses::add(&self.netlink, ifindex, IpAddr::V6(new), 64).await?;
            tracing::info!(interface = name, added = %new, "EUI-64 link-local address added");
        }
        Ok(plan)
    }

    async fn announce(
        &mut self,
        ifindex: u32,
        _name: &str,
        mac: MacAddr,
    ) -> Result<u64, PortError> {
        let frames: Vec<Vec<u8>> = addresses::list(&self.netlink, ifindex)
            .await?
            .iter()
            .map(|a| match a.ip {
                IpAddr::V4(v4) => announce::gratuitous_arp(mac, v4),
                IpAddr::V6(v6) => announce::unsolicited_na(mac, v6),
            })
            .collect();
        let sender = match &mut self.frames {
            Some(sender) => sender,
            empty => empty.insert(announce::FrameSender::open()?),
        };
        sender.send(ifindex, &frames)?;
        Ok(frames.len() as u64)
    }

    async fn set_in_service(
        &mut self,
        ifindex: u32,
        name: &str,
        up: bool,
    ) -> Result<(), PortError> {
        Ok(links::set_up(&self.netlink, ifindex, name, up).await?)
    }

    async fn link_locals(&mut self, ifindex: u32) -> Result<Vec<IpAddr>, PortError> {
        Ok(addresses::list(&self.netlink, ifindex)
            .await?
            .into_iter()
            .map(|a| a.ip)
            .filter(addresses::is_link_local)
            .collect())
    }
}
