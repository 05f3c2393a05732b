//! What MC-LAG does to the member ports, behind one small trait: set a MAC,
//! move the IPv6 link-local address, bounce a port, set the bond's LACP
//! actor system, announce a takeover, read the link-local addresses.
//!
//! The handlers in `events.rs` decide *what* to do; [`PortOps`] does it. The
//! agent uses [`NetlinkPorts`] (netlink, sysfs and a packet socket); the
//! unit tests use a recording fake, so every decision can be checked from an
//! event sequence without root.

use std::net::{IpAddr, Ipv6Addr};

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
    /// The bond above the port now uses the MAC.
    Set,
    /// No bond above the port (or a kernel without bonding): nothing to set.
    NoBond,
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

    /// Sets `ad_actor_system` of the bond above the port to `mac`.
    fn set_actor_system(&mut self, name: &str, mac: MacAddr) -> Result<ActorSystem, PortError>;

    /// Takes the port down and up so the kernel regenerates its link-local
    /// address.
    fn bounce(
        &mut self,
        ifindex: u32,
        name: &str,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Removes every link-local address of the port other than `wanted`,
    /// and adds `wanted` (/64) if it is missing.
    fn readdress_link_local(
        &mut self,
        ifindex: u32,
        name: &str,
        wanted: Ipv6Addr,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Sends a gratuitous ARP for every IPv4 address and an unsolicited
    /// neighbour advertisement for every IPv6 address of the port, from
    /// `mac`; returns the number of frames sent.
    fn announce(
        &mut self,
        ifindex: u32,
        name: &str,
        mac: MacAddr,
    ) -> impl Future<Output = Result<u64, PortError>> + Send;

    /// The port's IPv6 link-local addresses now.
    fn link_locals(
        &mut self,
        ifindex: u32,
    ) -> impl Future<Output = Result<Vec<IpAddr>, PortError>> + Send;
}

/// [`PortOps`] on the live system.
pub struct NetlinkPorts {
    netlink: Handle,
}

impl NetlinkPorts {
    /// Uses `netlink` for link and address requests.
    pub fn new(netlink: Handle) -> Self {
        Self { netlink }
    }
}

impl PortOps for NetlinkPorts {
    async fn set_mac(&mut self, ifindex: u32, name: &str, mac: MacAddr) -> Result<(), PortError> {
        Ok(links::set_mac(&self.netlink, ifindex, name, mac).await?)
    }

    fn set_actor_system(&mut self, name: &str, mac: MacAddr) -> Result<ActorSystem, PortError> {
        let bond = std::path::Path::new("/sys/class/net")
            .join(name)
            .join("master/bonding/ad_actor_system");
        if !bond.exists() {
            return Ok(ActorSystem::NoBond);
        }
        std::fs::write(&bond, mac.to_string())?;
        Ok(ActorSystem::Set)
    }

    async fn bounce(&mut self, ifindex: u32, name: &str) -> Result<(), PortError> {
        Ok(links::bounce(&self.netlink, ifindex, name).await?)
    }

    async fn readdress_link_local(
        &mut self,
        ifindex: u32,
        name: &str,
        wanted: Ipv6Addr,
    ) -> Result<(), PortError> {
        let wanted = IpAddr::V6(wanted);
        let current = addresses::list(&self.netlink, ifindex).await?;
        for stale in current
            .iter()
            .filter(|a| addresses::is_link_local(&a.ip) && a.ip != wanted)
        {
            addresses::remove(&self.netlink, ifindex, stale).await?;
            tracing::info!(interface = name, removed = %stale.ip, "stale link-local address removed");
        }
        if !current.iter().any(|a| a.ip == wanted) {
            addresses::add(&self.netlink, ifindex, wanted, 64).await?;
            tracing::info!(interface = name, added = %wanted, "link-local address regenerated");
        }
        Ok(())
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
        announce::send(ifindex, &frames)?;
        Ok(frames.len() as u64)
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
