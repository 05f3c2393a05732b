//! SPEC 3: MC-LAG pair identity. The two agents elect a master by their
//! election addresses (exchanged in the peer session's hello); the slave
//! moves each member port to its twin's MAC so the downstream device sees one
//! partner, and regenerates the ports' IPv6 link-local addresses, which Linux
//! does not do on a MAC change. When the master is lost (peer liveness gone
//! and, if configured, the backup path silent too) the slave takes over: it
//! keeps the shared MACs and announces itself with gratuitous ARP and
//! unsolicited neighbour advertisements. A peer that is alive on the backup
//! path while the peer link is down is a split brain: reported, and the slave
//! does not claim master.
//!
//! One task (`task.rs`) owns all of it. Its inputs are channels the
//! supervisor wires: session events from peer sync, the member port list from
//! the dataplane, and (when a backup path is configured) the reports of a
//! [`crate::liveness`] task it starts itself.
//!
//! It leaves nothing behind: what alignment changed (MAC, the EUI-64
//! link-local it derived, the bond's `ad_actor_system`) is remembered per
//! port and put back on clean exit ([`MclagHandle::shutdown`]) and when this
//! switch becomes master by election. A takeover (SPEC 3.4) keeps the shared
//! MACs on purpose: the downstream device must see no change. Only the
//! EUI-64 addresses it derived are touched; an operator's own `fe80::`
//! addresses stay. (`arp_accept` on the member ports is peer sync's, which
//! restores it itself.) Everything it does to the
//! system goes through [`port_ops::PortOps`], so the handlers can be driven
//! by event sequences in tests without root.

pub mod announce;
pub mod config;
pub mod consistency;
pub mod election;
pub mod eui64;
mod events;
pub mod hold;
pub mod port_ops;
pub mod report;
mod task;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use tokio::sync::{mpsc, oneshot, watch};

pub use self::report::{MclagPort, MclagReport};
use self::{
    config::MclagConfig,
    port_ops::NetlinkPorts,
    task::{Inputs, Task},
};
use crate::{
    bus::{AskError, MemberPort, SessionEvent, VlanMap},
    mac::MacAddr,
};

/// Depth of the operator query channel; queries are rare and answered at once.
const QUERY_DEPTH: usize = 16;

/// Handle to the MC-LAG task: cheap to clone; asks it for its report.
#[derive(Clone, Debug)]
pub struct MclagHandle {
    queries: mpsc::Sender<oneshot::Sender<MclagReport>>,
    shutdown: mpsc::Sender<oneshot::Sender<()>>,
}

/// The channels the supervisor wires to MC-LAG.
pub struct MclagChannels {
    /// The member ports (from the dataplane).
    pub ports: watch::Receiver<Vec<MemberPort>>,
    /// What peer sync says about the peer session.
    pub sessions: mpsc::Receiver<SessionEvent>,
    /// Where the shared MAC goes (the dataplane's peer table).
    pub shared_mac: watch::Sender<Option<MacAddr>>,
    /// This switch's VLAN interface map (`[peer].vlan_interfaces`),
    /// compared with the peer's.
    pub vlans: VlanMap,
}

impl MclagHandle {
    /// Starts the task (and, when `config.backup` is set, the backup path's
    /// keepalive thread with `keepalive`'s timing and this
    /// agent's `boot_id`). `address` is this switch's election address;
    /// `ports` is the dataplane's member port list and `sessions` what peer
    /// sync reports about the peer session; `netlink` carries out the MAC
    /// and address changes. The task runs until all of its inputs close.
    pub fn spawn(
        config: MclagConfig,
        address: IpAddr,
        keepalive: crate::liveness::KeepaliveTiming,
        boot_id: u64,
        channels: MclagChannels,
        netlink: rtnetlink::Handle,
    ) -> MclagHandle {
        let MclagChannels {
            ports,
            sessions,
            shared_mac,
            vlans,
        } = channels;
        let (queries, query_rx) = mpsc::channel(QUERY_DEPTH);
        let (shutdown, shutdown_rx) = mpsc::channel(1);
        let backup = task::spawn_backup_liveness(&config, keepalive, boot_id);
        let mut ports = ports;
        let initial = ports.borrow_and_update().clone();
        let task =
            Task::new(config, address, initial, NetlinkPorts::new(netlink)).with_vlans(vlans);
        tokio::spawn(task.run(Inputs {
            sessions,
            ports,
            backup,
            queries: query_rx,
            shared_mac,
            shutdown: shutdown_rx,
        }));
        MclagHandle { queries, shutdown }
    }

    /// Clean exit: the task puts back what alignment changed on every
    /// member port (original MAC, original EUI-64 link-local, the bond's
    /// `ad_actor_system`), logs it, and stops. Returns once done, or at
    /// once if the task is already gone. Call it before the dataplane
    /// detaches.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shutdown.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// `show mclag`: role, peer, backup path, member ports.
    pub async fn report(&self) -> Result<MclagReport, AskError> {
        let (tx, rx) = oneshot::channel();
        self.queries
            .send(tx)
            .await
            .map_err(|_| AskError::Gone("MC-LAG"))?;
        rx.await.map_err(|_| AskError::Gone("MC-LAG"))
    }
}
