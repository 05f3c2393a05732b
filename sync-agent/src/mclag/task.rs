//! The MC-LAG task: the one owner of the pair's role, the peer's ports and
//! what was changed on the member ports.
//!
//! ```text
//!  peer sync ── mpsc<SessionEvent> ───────────┐
//!  dataplane ── watch<Vec<MemberPort>> ───────┤
//!  liveness::run (backup path, child task) ───┼──> Task::run ──> PortOps
//!     └── mpsc<LivenessReport> ───────────────┤     (select)     (netlink,
//!  MclagHandle::report ── mpsc<oneshot> ──────┘                   sysfs, raw)
//! ```
//!
//! The backup liveness task stops when the task drops its receiver.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{config::MclagConfig, election::Role, events::Event, port_ops::PortOps};
use crate::{
    bus::{MemberPort, SessionEvent},
    liveness::LivenessReport,
    mac::MacAddr,
};

/// Depth of the backup path's liveness reports (a few per dead interval).
const BACKUP_DEPTH: usize = 64;

/// The task's input channels, as wired by [`super::MclagHandle::spawn`].
pub(super) struct Inputs {
    /// Session events from peer sync.
    pub sessions: mpsc::Receiver<SessionEvent>,
    /// The member ports, from the dataplane.
    pub ports: watch::Receiver<Vec<MemberPort>>,
    /// The backup path's liveness, if one is configured.
    pub backup: Option<mpsc::Receiver<LivenessReport>>,
    /// Operator queries.
    pub queries: mpsc::Receiver<oneshot::Sender<super::MclagReport>>,
    /// Where the shared MAC goes (the dataplane's peer table).
    pub shared_mac: watch::Sender<Option<MacAddr>>,
}

/// Starts the backup path's liveness task when `config.backup` is set.
pub(super) fn spawn_backup_liveness(
    config: &MclagConfig,
    keepalive: (Duration, Duration),
    boot_id: u64,
) -> Option<mpsc::Receiver<LivenessReport>> {
    let backup = config.backup.as_ref()?;
    let (tx, rx) = mpsc::channel(BACKUP_DEPTH);
    tokio::spawn(crate::liveness::run(
        SocketAddr::new(backup.local_address, backup.port),
        SocketAddr::new(backup.peer_address, backup.port),
        keepalive.0,
        keepalive.1,
        boot_id,
        tx,
    ));
    Some(rx)
}

/// The MC-LAG state; only the handlers in `events.rs` change it.
pub(super) struct Task<P> {
    pub(super) config: MclagConfig,
    /// This switch's election address.
    pub(super) address: IpAddr,
    /// The member ports, as the dataplane last reported them.
    pub(super) ports: Vec<MemberPort>,
    pub(super) role: Role,
    /// Why no election is possible, for the report.
    pub(super) error: Option<String>,
    pub(super) peer_address: Option<IpAddr>,
    /// The peer's member port MACs by MLAG id, from its last hello.
    pub(super) peer_ports: BTreeMap<u32, MacAddr>,
    pub(super) peer_lost: bool,
    pub(super) backup_alive: Option<bool>,
    pub(super) split_brain: bool,
    /// MACs the member ports had before alignment, to restore them.
    pub(super) original_macs: BTreeMap<String, MacAddr>,
    /// When the role last changed, ms since the epoch.
    pub(super) last_role_change: Option<u64>,
    pub(super) role_changes: u64,
    pub(super) announcements: u64,
    /// The missing-bond note is logged once, not per port and hello.
    pub(super) bonding_note_logged: bool,
    /// Where the side effects go.
    pub(super) ops: P,
}

impl<P: PortOps> Task<P> {
    /// A task with no peer seen yet.
    pub(super) fn new(
        config: MclagConfig,
        address: IpAddr,
        ports: Vec<MemberPort>,
        ops: P,
    ) -> Self {
        Self {
            config,
            address,
            ports,
            role: Role::Undecided,
            error: None,
            peer_address: None,
            peer_ports: BTreeMap::new(),
            peer_lost: false,
            backup_alive: None,
            split_brain: false,
            original_macs: BTreeMap::new(),
            last_role_change: None,
            role_changes: 0,
            announcements: 0,
            bonding_note_logged: false,
            ops,
        }
    }

    /// The MAC both switches answer to once aligned: the master's port MAC
    /// (this switch's when master, the twin's when slave).
    pub(super) fn shared_mac(&self) -> Option<MacAddr> {
        let first = self.ports.first()?;
        match self.role {
            Role::Master => first.mac,
            Role::Slave => self.peer_ports.get(&first.mlag_id).copied(),
            Role::Undecided => None,
        }
    }

    /// Tells the dataplane the shared MAC when it changes: replies to it may
    /// answer either switch's request, so they are synced whatever
    /// `sync_own_replies` says (the dataplane puts it in the peer table).
    fn publish_shared_mac(&self, to: &watch::Sender<Option<MacAddr>>) {
        let mac = self.shared_mac();
        to.send_if_modified(|current| {
            let changed = *current != mac;
            *current = mac;
            changed
        });
    }

    /// The event loop: runs until every input has closed.
    pub(super) async fn run(mut self, mut inputs: Inputs) {
        loop {
            let event = tokio::select! {
                Some(event) = inputs.sessions.recv() => Event::Session(event),
                Ok(()) = inputs.ports.changed() => {
                    Event::Ports(inputs.ports.borrow_and_update().clone())
                }
                Some(report) = recv_backup(&mut inputs.backup) => Event::Backup(report),
                Some(reply) = inputs.queries.recv() => Event::Query(reply),
                else => break,
            };
            self.process(event).await;
            self.publish_shared_mac(&inputs.shared_mac);
        }
        tracing::debug!("MC-LAG task stopped: every input closed");
    }
}

/// The next backup liveness report; None at once without a backup path (a
/// select branch that is never taken).
async fn recv_backup(rx: &mut Option<mpsc::Receiver<LivenessReport>>) -> Option<LivenessReport> {
    match rx {
        Some(rx) => rx.recv().await,
        None => None,
    }
}
