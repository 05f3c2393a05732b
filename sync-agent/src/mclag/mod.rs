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
//! One task owns all of it; peer sync reports session events to it.

pub mod announce;
pub mod config;
pub mod election;
pub mod eui64;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rtnetlink::Handle;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use self::election::Role;
use crate::{
    bus::{Liveness, MemberPort, SessionEvent},
    control::protocol::Response,
    liveness::LivenessReport,
    mac::MacAddr,
    mclag::config::{LinkLocalMode, MclagConfig},
    southbound::{addresses, links},
};

/// Everything the MC-LAG task reacts to.
#[derive(Debug)]
pub enum MclagEvent {
    /// From peer sync.
    Session(SessionEvent),
    /// Liveness on the backup path.
    Backup(Liveness),
    /// The member ports changed.
    Ports(Vec<MemberPort>),
    /// `show mclag`.
    Query(oneshot::Sender<Response>),
}

/// Handle to the MC-LAG task.
#[derive(Clone)]
pub struct Mclag {
    events: mpsc::Sender<MclagEvent>,
}

impl Mclag {
    /// Starts the task. `address` is this switch's election address; the
    /// returned sender is what peer sync reports session events to.
    pub fn spawn(
        config: MclagConfig,
        address: IpAddr,
        keepalive: (Duration, Duration),
        boot_id: u64,
        ports: Vec<MemberPort>,
        netlink: Handle,
    ) -> (Self, mpsc::Sender<SessionEvent>) {
        let (events, rx) = mpsc::channel(256);
        let (session_tx, mut session_rx) = mpsc::channel::<SessionEvent>(64);
        let forward = events.clone();
        tokio::spawn(async move {
            while let Some(event) = session_rx.recv().await {
                if forward.send(MclagEvent::Session(event)).await.is_err() {
                    return;
                }
            }
        });
        if let Some(backup) = &config.backup {
            let (tx, mut backup_rx) = mpsc::channel::<LivenessReport>(64);
            tokio::spawn(crate::liveness::run(
                SocketAddr::new(backup.local_address, backup.port),
                SocketAddr::new(backup.peer_address, backup.port),
                keepalive.0,
                keepalive.1,
                boot_id,
                tx,
            ));
            let forward = events.clone();
            tokio::spawn(async move {
                while let Some(event) = backup_rx.recv().await {
                    if let LivenessReport::Changed(l) = event
                        && forward.send(MclagEvent::Backup(l)).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
        let mut task = Task {
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
            netlink,
        };
        tokio::spawn(async move {
            let mut rx = rx;
            while let Some(event) = rx.recv().await {
                task.on_event(event).await;
            }
        });
        (Self { events }, session_tx)
    }

    /// Tells the task the member ports changed.
    pub async fn ports(&self, ports: Vec<MemberPort>) {
        let _ = self.events.send(MclagEvent::Ports(ports)).await;
    }

    /// `show mclag`.
    pub async fn query(&self) -> Response {
        let (tx, rx) = oneshot::channel();
        if self.events.send(MclagEvent::Query(tx)).await.is_err() {
            return Response::error("MC-LAG task has stopped");
        }
        rx.await
            .unwrap_or_else(|_| Response::error("MC-LAG task has stopped"))
    }
}

struct Task {
    config: MclagConfig,
    address: IpAddr,
    ports: Vec<MemberPort>,
    role: Role,
    error: Option<String>,
    peer_address: Option<IpAddr>,
    /// The peer's member port MACs by MLAG id, from its last hello.
    peer_ports: BTreeMap<u32, MacAddr>,
    peer_lost: bool,
    backup_alive: Option<bool>,
    split_brain: bool,
    /// MACs the member ports had before alignment, to restore them.
    original_macs: BTreeMap<String, MacAddr>,
    last_role_change: Option<SystemTime>,
    role_changes: u64,
    announcements: u64,
    bonding_note_logged: bool,
    netlink: Handle,
}

impl Task {
    async fn on_event(&mut self, event: MclagEvent) {
        match event {
            MclagEvent::Session(SessionEvent::Up {
                mclag_address,
                ports,
            }) => {
                self.peer_lost = false;
                self.split_brain = false;
                self.peer_ports = ports.into_iter().collect();
                self.on_peer_up(mclag_address).await;
            }
            MclagEvent::Session(SessionEvent::Lost) => {
                self.peer_lost = true;
                self.on_master_maybe_lost().await;
            }
            MclagEvent::Backup(liveness) => {
                let alive = matches!(liveness, Liveness::Up { .. });
                tracing::info!(alive, "backup path liveness");
                self.backup_alive = Some(alive);
                if !alive && self.peer_lost {
                    self.on_master_maybe_lost().await;
                }
            }
            MclagEvent::Ports(ports) => {
                self.ports = ports;
                if self.role == Role::Slave && !self.peer_lost {
                    self.align().await;
                }
            }
            MclagEvent::Query(reply) => {
                let report = self.report().await;
                let _ = reply.send(Response::ok(&report));
            }
        }
    }

    fn set_role(&mut self, role: Role, why: &str) {
        if self.role != role {
            tracing::info!(from = ?self.role, to = ?role, why, "MC-LAG role change");
            self.role = role;
            self.role_changes += 1;
            self.last_role_change = Some(SystemTime::now());
        }
    }

    async fn on_peer_up(&mut self, peer_address: Option<IpAddr>) {
        let Some(peer_address) = peer_address else {
            let message =
                "the peer sends no election address (no [mclag] section in its config)".to_string();
            tracing::error!("{message}");
            self.error = Some(message);
            return;
        };
        self.peer_address = Some(peer_address);
        match election::elect(self.address, peer_address) {
            Ok(role) => {
                self.error = None;
                // The same answer for the same addresses: repeated or delayed
                // hellos cannot make the role flap.
                self.set_role(role, "election by address");
                if role == Role::Slave {
                    self.align().await;
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "MC-LAG election impossible");
                self.error = Some(err.to_string());
                self.set_role(Role::Undecided, "election error");
            }
        }
    }

    async fn on_master_maybe_lost(&mut self) {
        if self.role != Role::Slave || !self.peer_lost {
            return;
        }
        if self.config.backup.is_some() && self.backup_alive == Some(true) {
            if !self.split_brain {
                self.split_brain = true;
                tracing::error!(
                    "split brain: the peer link is down but the peer is alive on the backup path; staying slave"
                );
            }
            return;
        }
        self.set_role(Role::Master, "master lost: taking over");
        self.announce().await;
    }

    /// SPEC 3.2 and 3.3: member ports take their twin's MAC; link-local
    /// addresses follow.
    async fn align(&mut self) {
        for port in self.ports.clone() {
            let (Some(ifindex), Some(current)) = (port.ifindex, port.mac) else {
                continue;
            };
            let Some(&twin) = self.peer_ports.get(&port.mlag_id) else {
                tracing::warn!(
                    interface = port.name,
                    mlag_id = port.mlag_id,
                    "the peer has no port with this MLAG id; MAC left alone"
                );
                continue;
            };
            if twin.is_zero() || twin == current {
                continue;
            }
            self.original_macs
                .entry(port.name.clone())
                .or_insert(current);
            if let Err(err) = links::set_mac(&self.netlink, ifindex, &port.name, twin).await {
                tracing::error!(interface = port.name, error = %err, "cannot align the member port MAC");
                continue;
            }
            tracing::info!(interface = port.name, from = %current, to = %twin, "member port MAC aligned to the master's");
            self.set_actor_system(&port.name, twin);
            if let Err(err) = self.regenerate_link_local(ifindex, &port.name, twin).await {
                tracing::error!(
                    interface = port.name,
                    "link-local regeneration failed: {err:#}"
                );
            }
        }
    }

    fn set_actor_system(&mut self, port: &str, mac: MacAddr) {
        let bond = std::path::Path::new("/sys/class/net")
            .join(port)
            .join("master/bonding/ad_actor_system");
        if bond.exists() {
            if let Err(err) = std::fs::write(&bond, mac.to_string()) {
                tracing::error!(interface = port, error = %err, "cannot set ad_actor_system");
            }
        } else if !self.bonding_note_logged {
            self.bonding_note_logged = true;
            tracing::info!(
                interface = port,
                "no bond above the member port (this kernel may lack bonding): ad_actor_system not set"
            );
        }
    }

    async fn regenerate_link_local(
        &self,
        ifindex: u32,
        name: &str,
        mac: MacAddr,
    ) -> anyhow::Result<()> {
        let wanted = IpAddr::V6(eui64::link_local(mac));
        match self.config.linklocal {
            LinkLocalMode::Bounce => {
                links::bounce(&self.netlink, ifindex, name).await?;
            }
            LinkLocalMode::Readdress => {
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
            }
        }
        Ok(())
    }

    /// SPEC 3.4: gratuitous ARP and unsolicited NA for every address of
    /// every member port.
    async fn announce(&mut self) {
        if !self.config.announce {
            return;
        }
        for port in self.ports.clone() {
            let (Some(ifindex), Some(mac)) = (port.ifindex, port.mac) else {
                continue;
            };
            let list = match addresses::list(&self.netlink, ifindex).await {
                Ok(list) => list,
                Err(err) => {
                    tracing::error!(interface = port.name, error = %err, "cannot list addresses to announce");
                    continue;
                }
            };
            let frames: Vec<Vec<u8>> = list
                .iter()
                .map(|a| match a.ip {
                    IpAddr::V4(v4) => announce::gratuitous_arp(mac, v4),
                    IpAddr::V6(v6) => announce::unsolicited_na(mac, v6),
                })
                .collect();
            match announce::send(ifindex, &frames) {
                Ok(()) => {
                    self.announcements += frames.len() as u64;
                    tracing::info!(
                        interface = port.name,
                        frames = frames.len(),
                        "takeover announced"
                    );
                }
                Err(err) => {
                    tracing::error!(interface = port.name, error = %err, "cannot send the takeover announcement")
                }
            }
        }
    }

    async fn report(&self) -> MclagReport {
        let mut ports = Vec::new();
        for port in &self.ports {
            let mut link_local = Vec::new();
            if let Some(ifindex) = port.ifindex {
                for a in addresses::list(&self.netlink, ifindex)
                    .await
                    .unwrap_or_default()
                {
                    if addresses::is_link_local(&a.ip) {
                        link_local.push(a.ip.to_string());
                    }
                }
            }
            ports.push(MclagPort {
                name: port.name.clone(),
                mlag_id: port.mlag_id,
                original_mac: self.original_macs.get(&port.name).copied().or(port.mac),
                current_mac: port.mac,
                twin_mac: self.peer_ports.get(&port.mlag_id).copied(),
                link_local,
            });
        }
        let shared_mac = match self.role {
            Role::Slave | Role::Master if !self.original_macs.is_empty() => {
                ports.first().and_then(|p| p.current_mac)
            }
            Role::Master => ports.first().and_then(|p| p.current_mac),
            Role::Slave => ports.first().and_then(|p| p.twin_mac),
            Role::Undecided => None,
        };
        MclagReport {
            role: self.role,
            own_address: self.address.to_string(),
            peer_address: self.peer_address.map(|a| a.to_string()),
            peer_alive: !self.peer_lost && self.peer_address.is_some(),
            backup_configured: self.config.backup.is_some(),
            backup_alive: self.backup_alive,
            split_brain: self.split_brain,
            error: self.error.clone(),
            shared_mac,
            ports,
            last_role_change_unix_ms: self
                .last_role_change
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64),
            role_changes: self.role_changes,
            announcements_sent: self.announcements,
        }
    }
}

/// `show mclag`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MclagReport {
    /// master | slave | undecided.
    pub role: Role,
    /// This switch's election address.
    pub own_address: String,
    /// The peer's, from its hello.
    pub peer_address: Option<String>,
    /// Whether the peer is alive on the peer link.
    pub peer_alive: bool,
    /// Whether a backup path is configured.
    pub backup_configured: bool,
    /// Liveness on the backup path.
    pub backup_alive: Option<bool>,
    /// Peer link down while the peer is alive on the backup path.
    pub split_brain: bool,
    /// Configuration problem preventing an election.
    pub error: Option<String>,
    /// The MAC both switches present on their MLAG ports.
    pub shared_mac: Option<MacAddr>,
    /// Member ports.
    pub ports: Vec<MclagPort>,
    /// Time of the last role change, Unix milliseconds.
    pub last_role_change_unix_ms: Option<u64>,
    /// Role changes since start.
    pub role_changes: u64,
    /// Gratuitous ARP / unsolicited NA frames sent.
    pub announcements_sent: u64,
}

/// One member port in `show mclag`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MclagPort {
    /// Interface name.
    pub name: String,
    /// MLAG id.
    pub mlag_id: u32,
    /// MAC before alignment (restorable).
    pub original_mac: Option<MacAddr>,
    /// MAC now.
    pub current_mac: Option<MacAddr>,
    /// The twin port's MAC on the peer.
    pub twin_mac: Option<MacAddr>,
    /// IPv6 link-local addresses now on the port.
    pub link_local: Vec<String>,
}
