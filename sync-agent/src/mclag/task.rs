//! The MC-LAG task: the one owner of the pair's role, the peer's ports and
//! what was changed on the member ports.
//!
//! ```text
//!  peer sync ── mpsc<SessionEvent> ───────────┐
//!  peer link keepalive thread ── watch ───────┤
//!  dataplane ── watch<Vec<MemberPort>> ───────┤
//!  liveness::run (backup path, child task) ───┼──> Task::run ──> PortOps
//!     └── mpsc<LivenessReport> ───────────────┤     (select)     (netlink,
//!  MclagHandle::report ── mpsc<oneshot> ──────┤                   sysfs, raw)
//!  MclagHandle::shutdown ── mpsc<oneshot> ────┘
//! ```
//!
//! The backup liveness task stops when the task drops its receiver. A
//! shutdown request undoes every alignment, answers, and ends the loop.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    config::MclagConfig,
    consistency::{Mismatch, OwnSettings, PeerSettings},
    election::Role,
    events::Event,
    hold::{HoldReason, Holds},
    port_ops::PortOps,
};
use crate::{
    bus::{Liveness, MemberPort, SessionEvent, VlanMap},
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
    /// The peer link's liveness, straight from its keepalive thread.
    pub peer_link: watch::Receiver<Option<Liveness>>,
    /// The backup path's liveness, if one is configured.
    pub backup: Option<mpsc::Receiver<LivenessReport>>,
    /// Operator queries.
    pub queries: mpsc::Receiver<oneshot::Sender<super::MclagReport>>,
    /// Where the shared MAC goes (the dataplane's peer table).
    pub shared_mac: watch::Sender<Option<MacAddr>>,
    /// The supervisor's shutdown request (answered once restored).
    pub shutdown: mpsc::Receiver<oneshot::Sender<()>>,
}

/// Starts the backup path's liveness task when `config.backup` is set.
pub(super) fn spawn_backup_liveness(
    config: &MclagConfig,
    timing: crate::liveness::KeepaliveTiming,
    boot_id: u64,
) -> Option<mpsc::Receiver<LivenessReport>> {
    let backup = config.backup.as_ref()?;
    let (tx, rx) = mpsc::channel(BACKUP_DEPTH);
    let keepalives = crate::liveness::Keepalives {
        local: SocketAddr::new(backup.local_address, backup.port),
        peer: SocketAddr::new(backup.peer_address, backup.port),
        boot_id,
        timing,
    };
    match crate::liveness::spawn(keepalives, tx, None) {
        Ok(scheduling) => {
            tracing::info!(local = %keepalives.local, %scheduling, "backup path keepalives started")
        }
        Err(err) => {
            // Without the thread the backup path reads as silent: the
            // split-brain check then never sees the peer alive on it.
            tracing::error!(local = %keepalives.local, error = %err, "cannot start the backup path's keepalive thread");
            return None;
        }
    }
    Some(rx)
}

/// What alignment changed on one member port: exactly what restoring puts
/// back, and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Aligned {
    /// The port (remembered so it is restored even after it left the
    /// dataplane's list).
    pub(super) ifindex: u32,
    /// The MAC the port had before alignment.
    pub(super) original_mac: MacAddr,
    /// The port's original EUI-64 link-local, if alignment removed it.
    pub(super) removed_link_local: Option<Ipv6Addr>,
    /// The EUI-64 link-local alignment added (of the twin's MAC), if the
    /// port did not have it already.
    pub(super) added_link_local: Option<Ipv6Addr>,
    /// The bond's `ad_actor_system` before alignment set it (outer None:
    /// never set; inner None: unreadable).
    pub(super) actor_system: Option<Option<MacAddr>>,
    /// Bounce mode: the kernel regenerated the link-local; restoring
    /// bounces again.
    pub(super) bounced: bool,
}

impl Aligned {
    /// Nothing changed yet on `ifindex`, which has `original_mac`.
    pub(super) fn new(ifindex: u32, original_mac: MacAddr) -> Self {
        Self {
            ifindex,
            original_mac,
            removed_link_local: None,
            added_link_local: None,
            actor_system: None,
            bounced: false,
        }
    }
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
    /// What alignment changed, per member port name, to undo it.
    pub(super) aligned: BTreeMap<String, Aligned>,
    /// When the role last changed, ms since the epoch.
    pub(super) last_role_change: Option<u64>,
    pub(super) role_changes: u64,
    pub(super) announcements: u64,
    /// The missing-bond note is logged once, not per port and hello.
    pub(super) bonding_note_logged: bool,
    /// Member ports held out of service, and why (`hold.rs`).
    pub(super) holds: Holds,
    /// When the init delay ends, while it holds.
    pub(super) init_delay_until: Option<tokio::time::Instant>,
    /// A bulk sync from the peer has been applied since start.
    pub(super) converged: bool,
    /// The peer's settings from its last hello, for the consistency check
    /// (None before the first).
    pub(super) peer_settings: Option<PeerSettings>,
    /// This switch's settings compared with the peer's beyond its ports.
    pub(super) own_settings: OwnSettings,
    /// What the last consistency check found.
    pub(super) mismatches: Vec<Mismatch>,
    /// Mismatches found since start (each counted once while it lasts).
    pub(super) mismatches_found: u64,
    /// How the task's thread is scheduled (`show mclag`).
    pub(super) scheduling: String,
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
            aligned: BTreeMap::new(),
            last_role_change: None,
            role_changes: 0,
            announcements: 0,
            bonding_note_logged: false,
            holds: Holds::default(),
            init_delay_until: None,
            converged: false,
            peer_settings: None,
            own_settings: OwnSettings {
                capabilities: sync_common::wire::capability::ALL,
                vlans: Default::default(),
            },
            mismatches: Vec::new(),
            mismatches_found: 0,
            scheduling: String::new(),
            ops,
        }
    }

    /// Sets the VLAN interface map compared with the peer's.
    pub(super) fn with_vlans(mut self, vlans: VlanMap) -> Self {
        self.own_settings.vlans = vlans;
        self
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

    /// The event loop: runs until every input has closed. It starts with
    /// the init-delay hold (if configured).
    pub(super) async fn run(mut self, mut inputs: Inputs) {
        self.start_init_delay().await;
        loop {
            let init_delay = self.init_delay_until;
            let event = tokio::select! {
                () = sleep_until(init_delay) => Event::InitDelayOver,
                Some(event) = inputs.sessions.recv() => Event::Session(event),
                Ok(()) = inputs.ports.changed() => {
                    Event::Ports(inputs.ports.borrow_and_update().clone())
                }
                Ok(()) = inputs.peer_link.changed() => {
                    match *inputs.peer_link.borrow_and_update() {
                        Some(state) => Event::PeerLink(state),
                        None => continue,
                    }
                }
                Some(report) = recv_backup(&mut inputs.backup) => Event::Backup(report),
                Some(reply) = inputs.queries.recv() => Event::Query(reply),
                Some(done) = inputs.shutdown.recv() => Event::Shutdown(done),
                else => break,
            };
            let stop = matches!(event, Event::Shutdown(_));
            self.process(event).await;
            self.publish_shared_mac(&inputs.shared_mac);
            if stop {
                tracing::info!("MC-LAG task stopped: shutdown");
                return;
            }
        }
        tracing::debug!("MC-LAG task stopped: every input closed");
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl<P: PortOps> Task<P> {
    /// Holds the member ports for `init_delay_s` or until converged.
    pub(super) async fn start_init_delay(&mut self) {
        if self.config.init_delay_s == 0 {
            return;
        }
        self.init_delay_until =
            Some(tokio::time::Instant::now() + Duration::from_secs(self.config.init_delay_s));
        let why = format!(
            "starting: until the peer's bulk sync is applied or {} s have passed",
            self.config.init_delay_s
        );
        self.hold(HoldReason::InitDelay, &why).await;
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
