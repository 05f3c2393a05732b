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
//! supervisor wires: session events from peer sync, the peer link's
//! liveness straight from its keepalive thread, the member port list from
//! the dataplane, and (when a backup path is configured) the reports of a
//! [`crate::liveness`] thread it starts itself.
//!
//! The task runs on a thread of its own, with a one-thread runtime and a
//! netlink socket of its own, at SCHED_FIFO one below the keepalive
//! threads (`[peer] keepalive_rt_priority`). A takeover is a race against
//! the traffic the lost master leaves blackholed: from the keepalive
//! thread's judgement to the gratuitous ARP on the wire nothing waits for
//! the agent's main runtime, which a flood of sync traffic or a saturated
//! CPU may keep from running for tens of milliseconds. Its work per event
//! is bounded (a few netlink requests and frames per member port), so it
//! cannot hold a CPU; the keepalive threads, one priority above, preempt
//! it.
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
    bus::{AskError, Liveness, MemberPort, SessionEvent, VlanMap},
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
    /// The peer link's liveness, from its keepalive thread (peer sync's
    /// `liveness_watcher`).
    pub peer_link: watch::Receiver<Option<Liveness>>,
}

/// The MC-LAG thread's SCHED_FIFO priority for keepalive threads at
/// `keepalive`: one below them (they must preempt it), at least 1; 0
/// (normal scheduling) stays 0.
pub fn takeover_priority(keepalive: u8) -> u8 {
    match keepalive {
        0 => 0,
        p => p.saturating_sub(1).max(1),
    }
}

impl MclagHandle {
    /// Starts the task on its thread (see the module doc) and, when
    /// `config.backup` is set, the backup path's keepalive thread with
    /// `keepalive`'s timing and this agent's `boot_id`. `address` is this
    /// switch's election address; `ports` is the dataplane's member port
    /// list and `sessions` what peer sync reports about the peer session.
    /// The MAC and address changes go through a netlink socket of the
    /// thread's own (`netlink`, the agent's, only if that cannot be
    /// opened). The task runs until all of its inputs close; the error is
    /// the thread's that could not be started.
    pub fn spawn(
        config: MclagConfig,
        address: IpAddr,
        keepalive: crate::liveness::KeepaliveTiming,
        boot_id: u64,
        channels: MclagChannels,
        netlink: rtnetlink::Handle,
    ) -> std::io::Result<MclagHandle> {
        let MclagChannels {
            ports,
            sessions,
            shared_mac,
            vlans,
            peer_link,
        } = channels;
        let (queries, query_rx) = mpsc::channel(QUERY_DEPTH);
        let (shutdown, shutdown_rx) = mpsc::channel(1);
        let backup = task::spawn_backup_liveness(&config, keepalive, boot_id);
        let mut ports = ports;
        let initial = ports.borrow_and_update().clone();
        let inputs = Inputs {
            sessions,
            peer_link,
            ports,
            backup,
            queries: query_rx,
            shared_mac,
            shutdown: shutdown_rx,
        };
        let priority = takeover_priority(keepalive.rt_priority);
        std::thread::Builder::new()
            .name("mclag".into())
            .spawn(move || {
                let scheduling = crate::realtime::schedule_this_thread(priority);
                tracing::info!(%scheduling, "MC-LAG thread started");
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        tracing::error!(error = %err, "MC-LAG cannot start its runtime: no election, alignment or takeover on this switch");
                        return;
                    }
                };
                runtime.block_on(async move {
                    // Served on this thread: the takeover's address dump
                    // must not wait for the main runtime to run the shared
                    // connection's task.
                    let netlink = match rtnetlink::new_connection() {
                        Ok((connection, own, _)) => {
                            tokio::spawn(connection);
                            own
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "MC-LAG has no netlink socket of its own; using the agent's (a takeover may wait for the main runtime)");
                            netlink
                        }
                    };
                    let mut task = Task::new(config, address, initial, NetlinkPorts::new(netlink))
                        .with_vlans(vlans);
                    task.scheduling = scheduling.to_string();
                    task.run(inputs).await;
                });
            })?;
        Ok(MclagHandle { queries, shutdown })
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
