//! Every input of the MC-LAG task and its handler: the peer session coming
//! up or being lost, the backup path's liveness, the member ports changing,
//! the operator's `show mclag`, and the supervisor's shutdown.

use std::net::IpAddr;

use tokio::sync::oneshot;

use super::{
    config::{LinkLocalMode, MismatchAction, SplitBrainAction},
    consistency::{self, PeerSettings},
    election::{self, Role},
    eui64,
    hold::HoldReason,
    port_ops::{ActorSystem, PortError, PortOps},
    report::{MclagPort, MclagReport},
    task::{Aligned, Task},
};

use crate::{
    bus::{Liveness, MemberPort, SessionEvent},
    liveness::LivenessReport,
    mac::MacAddr,
};

/// Everything the MC-LAG task reacts to.
#[derive(Debug)]
pub(super) enum Event {
    /// From peer sync: the session is up (the peer's hello) or lost.
    Session(SessionEvent),
    /// From the peer link's keepalive thread, directly (its watcher): the
    /// same judgement peer sync gets, without waiting for peer sync.
    PeerLink(Liveness),
    /// From the backup path's liveness task.
    Backup(LivenessReport),
    /// The member ports changed (dataplane).
    Ports(Vec<MemberPort>),
    /// `show mclag`.
    Query(oneshot::Sender<MclagReport>),
    /// `init_delay_s` has passed since start.
    InitDelayOver,
    /// Clean exit: restore every port, answer, stop.
    Shutdown(oneshot::Sender<()>),
}

impl<P: PortOps> Task<P> {
    /// Hands one event to its handler.
    pub(super) async fn process(&mut self, event: Event) {
        match event {
            Event::Session(SessionEvent::Up {
                mclag_address,
                ports,
                port_mtus,
                port_vlans,
                capabilities,
            }) => {
                self.peer_settings = Some(PeerSettings {
                    ports: ports.iter().copied().collect(),
                    mtus: port_mtus.into_iter().collect(),
                    vlans: port_vlans,
                    capabilities,
                });
                self.process_session_up(mclag_address, ports).await;
                self.check_consistency().await;
            }
            Event::Session(SessionEvent::Synced) => self.process_session_synced().await,
            Event::Session(SessionEvent::Lost) => self.process_session_lost().await,
            Event::PeerLink(Liveness::Down) => self.process_peer_link_down().await,
            // Up decides nothing: the peer's hello (Session Up) elects.
            Event::PeerLink(Liveness::Up { .. }) => {}
            Event::InitDelayOver => self.process_init_delay_over().await,
            Event::Backup(report) => self.process_backup(report).await,
            Event::Ports(ports) => self.process_ports(ports).await,
            Event::Query(reply) => self.process_query(reply).await,
            Event::Shutdown(done) => self.process_shutdown(done).await,
        }
    }

    /// The peer's hello: elect, and as slave align the member ports.
    pub(super) async fn process_session_up(
        &mut self,
        peer_address: Option<IpAddr>,
        ports: Vec<(u32, MacAddr)>,
    ) {
        self.peer_lost = false;
        self.split_brain = false;
        self.peer_ports = ports.into_iter().collect();
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
                match role {
                    Role::Slave => self.align().await,
                    // Master by election (this switch was slave, or took
                    // over and the peer is back with a lower address): its
                    // ports are its own again. A takeover itself keeps the
                    // shared MACs (SPEC 3.4), so only the election restores.
                    Role::Master => self.restore("master by election").await,
                    Role::Undecided => {}
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "MC-LAG election impossible");
                self.error = Some(err.to_string());
                self.set_role(Role::Undecided, "election error");
            }
        }
    }

    /// The peer's bulk sync has been applied here: converged. Ends the init
    /// delay and, with the peer link back, the dual-active hold.
    pub(super) async fn process_session_synced(&mut self) {
        self.converged = true;
        self.init_delay_until = None;
        self.release(HoldReason::InitDelay, "the peer's bulk sync is applied")
            .await;
        if !self.peer_lost {
            self.release(
                HoldReason::SplitBrain,
                "the peer link is back and the pair has resynced",
            )
            .await;
        }
    }

    /// `init_delay_s` passed without a converged sync (a lone switch, or a
    /// peer that never finished): the ports come up anyway.
    pub(super) async fn process_init_delay_over(&mut self) {
        self.init_delay_until = None;
        self.release(
            HoldReason::InitDelay,
            "init delay over without a bulk sync from the peer",
        )
        .await;
    }

    /// The peer's liveness on the peer link is gone.
    pub(super) async fn process_session_lost(&mut self) {
        self.peer_lost = true;
        self.master_maybe_lost().await;
    }

    /// The peer link's keepalives stopped. Peer sync will say the same
    /// (Session Lost, which then changes nothing); acting on the keepalive
    /// thread's word saves the time peer sync's task takes to be run.
    pub(super) async fn process_peer_link_down(&mut self) {
        if !self.peer_lost {
            tracing::info!("peer link keepalives stopped: peer lost");
        }
        self.process_session_lost().await;
    }

    /// Liveness on the backup path changed. Rejected datagrams are the
    /// liveness task's business; only a change of liveness matters here.
    pub(super) async fn process_backup(&mut self, report: LivenessReport) {
        let LivenessReport::Changed(liveness) = report else {
            return;
        };
        let alive = matches!(liveness, Liveness::Up { .. });
        tracing::info!(alive, "backup path liveness");
        self.backup_alive = Some(alive);
        if !alive && self.peer_lost {
            self.master_maybe_lost().await;
        }
    }

    /// The dataplane's member ports changed: a slave aligns the new ones;
    /// a new port joins a hold in force.
    pub(super) async fn process_ports(&mut self, ports: Vec<MemberPort>) {
        self.ports = ports;
        if !self.holds.reasons.is_empty() {
            self.apply_holds().await;
        }
        if self.peer_settings.is_some() {
            self.check_consistency().await;
        }
        if self.role == Role::Slave && !self.peer_lost {
            self.align().await;
        }
    }

    /// `show mclag`.
    pub(super) async fn process_query(&mut self, reply: oneshot::Sender<MclagReport>) {
        let report = self.report().await;
        let _ = reply.send(report);
    }

    /// Clean exit: every member port gets back what alignment changed.
    pub(super) async fn process_shutdown(&mut self, done: oneshot::Sender<()>) {
        self.restore("agent shutting down").await;
        self.holds.reasons.clear();
        self.holds.inconsistent.clear();
        self.init_delay_until = None;
        self.apply_holds().await;
        let _ = done.send(());
    }

    fn set_role(&mut self, role: Role, why: &str) {
        if self.role != role {
            tracing::info!(from = ?self.role, to = ?role, why, "MC-LAG role change");
            self.role = role;
            self.role_changes += 1;
            self.last_role_change = Some(crate::clock::now_ms());
        }
    }

    /// SPEC 3.4: a slave whose master is gone takes over, unless the backup
    /// path says the master is alive (split brain).
    async fn master_maybe_lost(&mut self) {
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
            if self.config.on_split_brain == SplitBrainAction::ShutPorts {
                self.hold(
                    HoldReason::SplitBrain,
                    "dual active: the master alone serves the downstream bonds",
                )
                .await;
            }
            return;
        }
        self.set_role(Role::Master, "master lost: taking over");
        self.holds.inconsistent.clear();
        self.release(HoldReason::SplitBrain, "taking over as master")
            .await;
        self.announce().await;
    }

    /// Compares this switch's settings with the peer's last hello: new
    /// differences are logged and counted; on the slave with
    /// `on_mismatch = "shut-port"` the ports concerned are held down.
    async fn check_consistency(&mut self) {
        let Some(peer) = &self.peer_settings else {
            return;
        };
        let found = consistency::check(&self.ports, &self.own_settings, peer);
        for mismatch in found.iter().filter(|m| !self.mismatches.contains(m)) {
            self.mismatches_found += 1;
            tracing::warn!(
                field = mismatch.field,
                mlag_id = mismatch.mlag_id,
                port = mismatch.port,
                local = mismatch.local,
                peer = mismatch.peer,
                "MC-LAG consistency: this switch and its peer differ"
            );
        }
        if found.is_empty() && !self.mismatches.is_empty() {
            tracing::info!("MC-LAG consistency: the pair agrees again");
        }
        let shut = self.role == Role::Slave && self.config.on_mismatch == MismatchAction::ShutPort;
        self.holds.inconsistent = if shut {
            found.iter().filter_map(|m| m.port.clone()).collect()
        } else {
            Default::default()
        };
        self.mismatches = found;
        self.apply_holds().await;
    }

    /// SPEC 3.2 and 3.3: member ports take their twin's MAC; link-local
    /// addresses follow. What changes is remembered per port ([`Aligned`])
    /// so [`Self::restore`] can undo exactly that.
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
            // The first alignment sees the original MAC; a repeat (the
            // dataplane has not reported the new MAC yet) keeps that record.
            self.aligned
                .entry(port.name.clone())
                .or_insert_with(|| Aligned::new(ifindex, current));
            if let Err(err) = self.ops.set_mac(ifindex, &port.name, twin).await {
                tracing::error!(interface = port.name, error = %err, "cannot align the member port MAC");
                continue;
            }
            tracing::info!(interface = port.name, from = %current, to = %twin, "member port MAC aligned to the master's");
            if let Some(previous) = self.set_actor_system(&port.name, twin) {
                let record = self.record(&port.name);
                record.actor_system.get_or_insert(previous);
            }
            if let Err(err) = self
                .regenerate_link_local(ifindex, &port.name, current, twin)
                .await
            {
                tracing::error!(
                    interface = port.name,
                    "link-local regeneration failed: {:#}",
                    anyhow::Error::from(err)
                );
            }
        }
    }

    /// The alignment record of `port` (created by `align` before any change).
    fn record(&mut self, port: &str) -> &mut Aligned {
        self.aligned
            .get_mut(port)
            .expect("align records a port before changing it")
    }

    /// Sets the bond's `ad_actor_system`; returns what it was when it was
    /// set.
    fn set_actor_system(&mut self, port: &str, mac: MacAddr) -> Option<Option<MacAddr>> {
        match self.ops.set_actor_system(port, mac) {
            Ok(ActorSystem::Set { previous }) => {
                tracing::info!(interface = port, %mac, "bond ad_actor_system set");
                Some(previous)
            }
            Ok(ActorSystem::NoBond) => {
                if !self.bonding_note_logged {
                    self.bonding_note_logged = true;
                    tracing::info!(
                        interface = port,
                        "no bond at or above the member port (this kernel may lack bonding): ad_actor_system not set"
                    );
                }
                None
            }
            Err(err) => {
                tracing::error!(interface = port, error = %err, "cannot set ad_actor_system");
                None
            }
        }
    }

    /// SPEC 3.3 for one port moving from MAC `from` to `to`: only the EUI-64
    /// address of `from` goes and the one of `to` comes (readdress mode).
    async fn regenerate_link_local(
        &mut self,
        ifindex: u32,
        name: &str,
        from: MacAddr,
        to: MacAddr,
    ) -> Result<(), PortError> {
        match self.config.linklocal {
            LinkLocalMode::Bounce => {
                self.ops.bounce(ifindex, name).await?;
                self.record(name).bounced = true;
            }
            LinkLocalMode::Readdress => {
                let done = self
                    .ops
                    .readdress_link_local(
                        ifindex,
                        name,
                        Some(eui64::link_local(from)),
                        Some(eui64::link_local(to)),
                    )
                    .await?;
                let record = self.record(name);
                if let Some(removed) = done.removed {
                    if removed == eui64::link_local(record.original_mac) {
                        record.removed_link_local = Some(removed);
                    }
                    if record.added_link_local == Some(removed) {
                        // The twin's MAC changed: the address derived from
                        // the old one is gone again.
                        record.added_link_local = None;
                    }
                }
                if done.added.is_some() {
                    record.added_link_local = done.added;
                }
            }
        }
        Ok(())
    }

    /// Puts back what alignment changed on every port: the original MAC,
    /// the bond's `ad_actor_system`, and the link-local (the derived EUI-64
    /// address goes, the original one comes back; bounce mode bounces
    /// again). Each restored port is logged.
    async fn restore(&mut self, why: &str) {
        for (name, record) in std::mem::take(&mut self.aligned) {
            let ifindex = record.ifindex;
            if let Err(err) = self.ops.set_mac(ifindex, &name, record.original_mac).await {
                tracing::error!(interface = name, error = %err, "cannot restore the member port's original MAC");
                continue;
            }
            if let Some(port) = self.ports.iter_mut().find(|p| p.name == name) {
                port.mac = Some(record.original_mac);
            }
            if let Some(previous) = record.actor_system {
                // Unreadable before: the kernel's default (all zero: use the
                // bond's own MAC).
                let previous = previous.unwrap_or(MacAddr([0; 6]));
                if let Err(err) = self.ops.set_actor_system(&name, previous) {
                    tracing::error!(interface = name, error = %err, "cannot restore ad_actor_system");
                }
            }
            let link_local = if record.bounced {
                self.ops.bounce(ifindex, &name).await.map(|()| None)
            } else if record.added_link_local.is_some() || record.removed_link_local.is_some() {
                self.ops
                    .readdress_link_local(
                        ifindex,
                        &name,
                        record.added_link_local,
                        record.removed_link_local,
                    )
                    .await
                    .map(Some)
            } else {
                Ok(None)
            };
            if let Err(err) = link_local {
                tracing::error!(
                    interface = name,
                    "cannot restore the original link-local: {:#}",
                    anyhow::Error::from(err)
                );
            }
            tracing::info!(
                interface = name,
                why,
                mac = %record.original_mac,
                removed_link_local = ?record.added_link_local,
                restored_link_local = ?record.removed_link_local,
                bounced = record.bounced,
                actor_system = ?record.actor_system,
                "member port restored"
            );
        }
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
            match self.ops.announce(ifindex, &port.name, mac).await {
                Ok(frames) => {
                    self.announcements += frames;
                    tracing::info!(interface = port.name, frames, "takeover announced");
                }
                Err(err @ PortError::Address(_)) => {
                    tracing::error!(interface = port.name, error = %err, "cannot list addresses to announce");
                }
                Err(err) => {
                    tracing::error!(interface = port.name, error = %err, "cannot send the takeover announcement")
                }
            }
        }
    }

    async fn report(&mut self) -> MclagReport {
        let mut ports = Vec::new();
        for port in self.ports.clone() {
            let link_local = match port.ifindex {
                Some(ifindex) => self.ops.link_locals(ifindex).await.unwrap_or_default(),
                None => Vec::new(),
            };
            ports.push(MclagPort {
                original_mac: self
                    .aligned
                    .get(&port.name)
                    .map(|a| a.original_mac)
                    .or(port.mac),
                current_mac: port.mac,
                twin_mac: self.peer_ports.get(&port.mlag_id).copied(),
                link_local: link_local.iter().map(IpAddr::to_string).collect(),
                held_down: self.holds.down.contains_key(&port.name),
                name: port.name,
                mlag_id: port.mlag_id,
            });
        }
        let shared_mac = match self.role {
            Role::Slave | Role::Master if !self.aligned.is_empty() => {
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
            last_role_change_unix_ms: self.last_role_change,
            role_changes: self.role_changes,
            announcements_sent: self.announcements,
            holds: self.holds.reasons.iter().copied().collect(),
            init_delay_remaining_ms: self.init_delay_until.map(|until| {
                until
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_millis() as u64
            }),
            converged: self.converged,
            mismatches: self.mismatches.clone(),
            mismatches_found: self.mismatches_found,
            ports_taken_down: self.holds.taken_down,
            ports_brought_up: self.holds.brought_up,
            scheduling: self.scheduling.clone(),
        }
    }
}
