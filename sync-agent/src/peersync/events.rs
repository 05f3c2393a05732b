//! Every input of the peer-sync task ([`Event`]) and one handler per input.
//! The loop in `task.rs` only receives; what an input does is here.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Instant};

use crate::southbound::neighbours::Neighbour;

use sync_common::{
    capture::Class,
    wire::{self, DecodeError, DriverHeader, Frame, MessageType},
};
use tokio::{net::TcpStream, sync::oneshot};

use super::{
    hello::Hello,
    learn::{Kernel, Learnt},
    report::{ArpReportEntry, PeerReport},
    session::{self, PeerInfo},
    table::{EntryKey, seq_max},
    task::Task,
};
use crate::{
    bus::{CaptureBatch, Captured, LinkEvent, Liveness, MemberPort, SessionEvent},
    mac::MacAddr,
    southbound::neighbours::NeighbourEvent,
};

/// An operator query, with where the answer goes.
#[derive(Debug)]
pub(super) enum Query {
    /// `show peer`.
    Peer(oneshot::Sender<PeerReport>),
    /// `show arp`: the task's table; the kernel's state is added by the
    /// asker ([`ArpSnapshot::with_kernel_state`]), outside the loop.
    Arp(oneshot::Sender<ArpSnapshot>),
    /// `show nd`, the same way.
    Nd(oneshot::Sender<super::nd::NdSnapshot>),
    /// Clean exit: restore what this task changed, answer, stop (the loop
    /// in `task.rs` handles it).
    Shutdown(oneshot::Sender<()>),
}

/// `show arp` as the task knows it: its entries, and which received entry
/// is which kernel neighbour. The kernel's column is filled in by whoever
/// asked, so a slow netlink dump never holds up the loop.
#[derive(Debug)]
pub(super) struct ArpSnapshot {
    pub(super) entries: Vec<ArpReportEntry>,
    /// The interfaces to dump (member ports and VLAN targets).
    pub(super) ifindexes: Vec<u32>,
    /// Entries whose kernel state is read (received ones, and sent ones
    /// learnt here too): their index in `entries` and their neighbour.
    pub(super) received: Vec<(usize, u32, Ipv4Addr)>,
}

impl ArpSnapshot {
    /// The entries with `kernel_state` of the received ones read from the
    /// kernel now (`absent` when it holds none; left empty when the dump
    /// fails).
    pub(super) async fn with_kernel_state(mut self, kernel: &dyn Kernel) -> Vec<ArpReportEntry> {
        let Ok(list) = kernel.neighbours(&self.ifindexes).await else {
            return self.entries;
        };
        let held: BTreeMap<(u32, Ipv4Addr), &Neighbour> =
            list.iter().map(|n| ((n.ifindex, n.ip), n)).collect();
        for (i, ifindex, ip) in self.received {
            let held = held.get(&(ifindex, ip));
            let entry = &mut self.entries[i];
            entry.kernel_state = Some(held.map_or("absent", |n| n.state).to_string());
            if entry.direction == "received" {
                // "how" is only a claim until the kernel is seen holding
                // the entry, resolved, to the MAC that was learnt.
                entry.confirmed = Some(held.is_some_and(|n| {
                    n.mac == Some(entry.mac) && !matches!(n.state, "FAILED" | "INCOMPLETE" | "NONE")
                }));
            }
        }
        self.entries
    }
}

/// Everything the peer-sync task reacts to.
#[derive(Debug)]
pub(super) enum Event {
    /// Replies captured by the classifier: one read of the ring buffer,
    /// in order.
    Captures(CaptureBatch),
    /// This switch's kernel changed a neighbour entry.
    Neighbour(NeighbourEvent),
    /// This switch's kernel changed an IPv6 neighbour entry (ND sync).
    Neighbour6(crate::southbound::neighbours6::Neighbour6Event),
    /// An interface changed (member-port state for the peer).
    Link(LinkEvent),
    /// The member ports changed.
    Ports(Vec<MemberPort>),
    /// An operator query.
    Query(Query),
    /// A TCP connection to or from the peer.
    Connected {
        /// The stream.
        stream: TcpStream,
    },
    /// A frame read on connection `conn` (header already checked).
    Inbound {
        /// Connection number.
        conn: u64,
        /// The whole frame (sharing the reader's buffer).
        frame: bytes::Bytes,
        /// When it was read off the link (for `show peer`'s latency).
        read_at: Instant,
    },
    /// A frame on connection `conn` could not be decoded.
    Malformed {
        /// Connection number.
        conn: u64,
        /// What was wrong.
        error: DecodeError,
        /// Whether the connection must close (framing lost).
        fatal: bool,
    },
    /// Connection `conn` ended.
    Closed {
        /// Connection number.
        conn: u64,
        /// Why.
        why: String,
    },
    /// Input refused before it reached a session (keepalives, strangers).
    Rejected {
        /// Counter label.
        reason: &'static str,
        /// How many (keepalive datagrams may come counted together).
        count: u64,
        /// The last one, for the log.
        detail: String,
    },
    /// Liveness change (UDP keepalives).
    Liveness(Liveness),
    /// Connection `conn` has had `hello_timeout_ms` to say hello.
    HelloTimeout {
        /// Connection number.
        conn: u64,
    },
    /// A refresh of the neighbour table finished.
    RefreshDone {
        /// Entries moved to PROBE.
        probed: u64,
        /// Entries that could not be.
        failed: u64,
    },
}

impl Task {
    /// Hands one input to its handler.
    pub(super) async fn process(&mut self, event: Event) {
        match event {
            Event::Captures(batch) => {
                for captured in batch.iter() {
                    self.process_captured(captured.clone()).await;
                }
            }
            Event::Ports(ports) => self.process_ports(ports),
            Event::Query(query) => self.process_query(query).await,
            Event::Connected { stream } => self.process_connected(stream).await,
            Event::Inbound {
                conn,
                frame,
                read_at,
            } => self.process_inbound(conn, &frame, read_at).await,
            Event::Malformed { conn, error, fatal } => self.process_malformed(conn, error, fatal),
            Event::Closed { conn, why } => self.process_closed(conn, &why),
            Event::Rejected {
                reason,
                count,
                detail,
            } => self.reject_counted(reason, count, &detail),
            Event::Liveness(Liveness::Up { boot_id }) => self.process_liveness_up(boot_id),
            Event::Liveness(Liveness::Down) => self.process_liveness_down(),
            Event::RefreshDone { probed, failed } => self.process_refresh_done(probed, failed),
            Event::HelloTimeout { conn } => self.process_hello_timeout(conn),
            Event::Neighbour(event) => self.process_neighbour(event).await,
            Event::Neighbour6(event) => self.process_neighbour6(event).await,
            Event::Link(event) => self.process_link(event).await,
        }
    }

    /// A captured reply: into the send table, then sent now or soon.
    pub(super) async fn process_captured(&mut self, captured: Captured) {
        self.latency.captured(&captured);
        if captured.nd.is_some() {
            self.process_captured_nd(captured).await;
            return;
        }
        let Some(port) = self
            .ports
            .iter()
            .find(|p| p.ifindex == Some(captured.ifindex))
        else {
            self.reject(
                "capture_on_unknown_port",
                &format!("ifindex {}", captured.ifindex),
            );
            return;
        };
        let key = EntryKey {
            vrf: 0,
            mlag_id: port.mlag_id,
            ip: Ipv4Addr::from(captured.arp.sender_ip),
        };
        let driver = DriverHeader {
            mlag_id: port.mlag_id,
            outer_vlan: captured.outer_vlan,
            inner_vlan: captured.inner_vlan,
            vrf: 0,
            class: captured.class as u8,
            vlan_count: captured.vlan_count,
        };
        let port_mac = port.mac;
        if captured.class == Class::Peer
            && let Some(port_mac) = port_mac
        {
            self.learn_here(&captured, port_mac).await;
        }
        self.table.upsert(
            key,
            driver,
            &captured.frame,
            MacAddr(captured.arp.sender_mac),
        );
        if !self.established() {
            self.stats.queued_while_down += 1;
            return;
        }
        self.schedule_flush().await;
    }

    /// The member ports changed (the watch may repeat a list: only a real
    /// change is applied).
    pub(super) fn process_ports(&mut self, ports: Vec<MemberPort>) {
        if ports == self.ports {
            return;
        }
        self.ports = ports;
        self.learn_ifs_at = None;
        self.apply_arp_accept();
        self.apply_untracked_na();
    }

    /// A TCP connection to or from the peer.
    pub(super) async fn process_connected(&mut self, stream: TcpStream) {
        self.open_connection(stream).await;
    }

    /// A frame of connection `conn`, header already checked.
    pub(super) async fn process_inbound(&mut self, conn: u64, bytes: &[u8], read_at: Instant) {
        let Some(session) = self.session.as_mut().filter(|s| s.conn == conn) else {
            return;
        };
        session.last_heard = Instant::now();
        let frame = match Frame::decode(bytes, self.config.max_frame_bytes) {
            Ok(frame) => frame,
            Err(error) => {
                // The framing is intact (the header was good): skip this one.
                self.reject(error.reason(), &format!("from the peer session: {error}"));
                return;
            }
        };
        match (frame.header.msg_type, self.established()) {
            (MessageType::Hello, false) => self.process_hello(&frame).await,
            (MessageType::Hello, true) => {
                self.reject("unexpected_hello", "hello on an established session")
            }
            (_, false) => self.reject("before_hello", "frame before the peer's hello"),
            (MessageType::Sync, true) => self.process_sync(&frame, read_at).await,
            (MessageType::Ack, true) => match frame.u32_of(wire::tlv::ACK_SEQ) {
                Some(seq) => self.note_ack(seq),
                None => self.reject("bad_tlv", "ack without a sequence number"),
            },
            (MessageType::Keepalive, true) => {
                self.reject("unexpected_type", "keepalive on the session")
            }
            (MessageType::PortState, true) => self.process_port_state(&frame).await,
        }
    }

    /// The peer's hello: the session is established. What the peer has not
    /// acknowledged (all of it, if it does not resume our run) is resent,
    /// and a peer that restarted gets a neighbour refresh (SPEC 2.5).
    async fn process_hello(&mut self, frame: &Frame<'_>) {
        let hello = match Hello::decode(frame) {
            Ok(hello) => hello,
            Err(err) => {
                self.reject("bad_hello", &err.to_string());
                self.close_session(&err.to_string());
                return;
            }
        };
        if hello.capabilities & wire::capability::ARP_SYNC == 0 {
            tracing::warn!(
                peer = hello.name,
                "peer does not announce ARP sync; nothing will be synced to it"
            );
        }
        // The lower minor version is spoken. A 1.0 peer skips the ARP
        // deletes of 1.1 (optional TLVs), so they are sent to it anyway.
        let minor = frame.header.minor.min(wire::VERSION_MINOR);
        let resume = hello
            .resume
            .and_then(|(boot, seq)| (boot == self.identity.boot_id).then_some(seq));
        let peer_restarted = self.last_peer_boot != Some(hello.boot_id);
        match resume {
            Some(seq) => {
                self.acked = seq_max(self.acked, seq);
                self.table.mark_unacked(seq);
                self.nd.table.mark_unacked(seq);
            }
            None => {
                self.table.mark_all();
                self.nd.table.mark_all();
            }
        }
        self.last_peer_boot = Some(hello.boot_id);
        self.stats.sessions_established += 1;
        tracing::info!(
            peer = hello.name,
            address = %self.config.peer_address,
            version = format!("{}.{}", frame.header.major, frame.header.minor),
            negotiated = format!("{}.{minor}", wire::VERSION_MAJOR),
            resend = self.table.pending(),
            peer_restarted,
            "peer session established"
        );
        let max_frame = hello
            .max_frame
            .map_or(self.config.max_frame_bytes, |m| m as usize);
        if let Some(session) = &mut self.session {
            session.peer = Some(PeerInfo {
                name: hello.name,
                system_id: hello.system_id,
                boot_id: hello.boot_id,
                peer_minor: frame.header.minor,
                minor,
                capabilities: hello.capabilities,
                max_frame: max_frame.min(self.config.max_frame_bytes),
                hello_at: Instant::now(),
            });
        }
        self.publish_peer_macs(hello.system_id, &hello.ports);
        // The peer tells port states only when they change: at session
        // start its ports are taken as up (a twin already down shows up
        // until it changes).
        self.tell_peer("liveness-ok");
        for (mlag_id, _) in &hello.ports {
            self.tell_twin(*mlag_id, "twin-up");
        }
        self.notify(SessionEvent::Up {
            mclag_address: hello.mclag_address,
            ports: hello.ports,
            port_mtus: hello.port_mtus,
            port_vlans: hello.port_vlans.into_iter().collect(),
            capabilities: hello.capabilities,
        });
        if peer_restarted {
            self.refresh(None).await;
        }
        self.flush().await;
    }

    /// A sync frame: each entry to the kernel, then the ack.
    async fn process_sync(&mut self, frame: &Frame<'_>, read_at: Instant) {
        let Some(peer_boot) = self
            .session
            .as_ref()
            .and_then(|s| s.peer.as_ref())
            .map(|p| p.boot_id)
        else {
            return;
        };
        if self.rx_from_boot != Some(peer_boot) {
            self.rx_from_boot = Some(peer_boot);
            self.rx_applied = 0;
        }
        self.stats.frames_received += 1;
        self.latency.read_to_task.record(read_at.elapsed());
        for entry in frame.arp_entries() {
            self.stats.entries_received += 1;
            let start = Instant::now();
            self.learn(&entry.driver, entry.frame).await;
            self.latency.inject.record(start.elapsed());
            self.latency.receive_to_inject.record(read_at.elapsed());
        }
        for delete in frame.arp_deletes() {
            self.unlearn(&delete).await;
        }
        for entry in frame.nd_entries() {
            self.stats.entries_received += 1;
            self.learn_nd(&entry.driver, entry.frame).await;
            self.latency.receive_to_inject.record(read_at.elapsed());
        }
        for delete in frame.nd_deletes() {
            self.unlearn_nd(&delete).await;
        }
        let seq = frame.header.seq;
        if frame.is_sync_done() && frame.arp_entries().next().is_none() {
            // It repeats the number of the peer's last frame, already
            // applied and acknowledged.
            self.stats.peer_syncs_done += 1;
            tracing::info!(peer = %self.config.peer_address, "peer's bulk sync complete: converged");
            self.notify(SessionEvent::Synced);
            return;
        }
        self.rx_applied = seq_max(self.rx_applied, seq);
        self.send_ack(seq).await;
        if frame.is_sync_done() {
            self.stats.peer_syncs_done += 1;
            tracing::info!(peer = %self.config.peer_address, "peer's bulk sync complete: converged");
            self.notify(SessionEvent::Synced);
        }
    }

    /// A frame that could not be decoded; `fatal` when the stream's framing
    /// is lost and the connection must go.
    pub(super) fn process_malformed(&mut self, conn: u64, error: DecodeError, fatal: bool) {
        self.reject(error.reason(), &format!("from the peer session: {error}"));
        if session::is_version_mismatch(&error) {
            tracing::error!(
                "peer {} speaks an incompatible protocol version ({error}); closing the session",
                self.config.peer_address
            );
        }
        if fatal && self.is_current(conn) {
            self.close_session(&format!("{error}"));
        }
    }

    /// Connection `conn` ended.
    pub(super) fn process_closed(&mut self, conn: u64, why: &str) {
        if self.is_current(conn) {
            self.close_session(why);
        }
    }

    /// Keepalives arrive from the peer run `boot_id`.
    ///
    /// A new boot id is not believed on its own: keepalives are UDP and only
    /// their source address is checked, so anyone on the link can forge one.
    /// Only the session's hello (TCP, from the peer's address) says that the
    /// peer restarted (then `process_hello` refreshes and resends). So a
    /// boot change is logged and counted (`keepalive_boot_changed`), the
    /// session is kept, and a (re)connection is asked for: a real restart
    /// closes the old connection (the old process is gone) or leaves it
    /// silent, and a silent session whose run the keepalives no longer vouch
    /// for is replaced by the new connection (`session_is_stale`).
    pub(super) fn process_liveness_up(&mut self, boot_id: u64) {
        let session_boot = self
            .session
            .as_ref()
            .and_then(|s| s.peer.as_ref())
            .map(|p| p.boot_id);
        let changed = self.peer_alive.is_some_and(|old| old != boot_id)
            || session_boot.is_some_and(|b| b != boot_id);
        self.peer_alive = Some(boot_id);
        if changed {
            self.stats.keepalive_boot_changed += 1;
            if self.log.admit("keepalive_boot_changed").is_some() {
                tracing::warn!(
                    peer = %self.config.peer_address,
                    boot_id,
                    ?session_boot,
                    total = self.stats.keepalive_boot_changed,
                    "keepalives name another peer run; not believed until a hello says so"
                );
            }
        } else {
            tracing::info!(peer = %self.config.peer_address, boot_id, "peer alive (keepalives)");
        }
        if self.session.is_none() || self.session_is_stale() {
            self.request_connection();
        }
    }

    /// No keepalive for the dead interval: the session goes, MC-LAG is told.
    pub(super) fn process_liveness_down(&mut self) {
        tracing::warn!(peer = %self.config.peer_address, dead_ms = self.config.dead_interval_ms, "peer lost: no keepalive");
        self.peer_alive = None;
        let established = self.session.as_ref().is_some_and(|s| s.peer.is_some());
        // Closing an established session tells inference itself.
        self.close_session("peer liveness lost");
        if !established {
            self.tell_peer_lost();
        }
        self.notify(SessionEvent::Lost);
    }

    /// A neighbour refresh finished.
    pub(super) fn process_refresh_done(&mut self, probed: u64, failed: u64) {
        self.stats.refreshes_done += 1;
        self.stats.refresh_probes += probed;
        self.stats.refresh_failed += failed;
        tracing::info!(
            probed,
            failed,
            "neighbour refresh done: replies will be synced as they arrive"
        );
    }

    /// An operator query (the asker may have gone: then nobody hears).
    pub(super) async fn process_query(&mut self, query: Query) {
        match query {
            Query::Peer(reply) => {
                let _ = reply.send(self.peer_report());
            }
            Query::Arp(reply) => {
                let _ = reply.send(self.arp_report());
            }
            Query::Nd(reply) => {
                let _ = reply.send(self.nd_report());
            }
            // Handled by the loop, which stops after it; here only when a
            // test drives the handler directly.
            Query::Shutdown(done) => {
                self.restore_arp_accept();
                self.restore_untracked_na();
                let _ = done.send(());
            }
        }
    }

    /// `show peer`.
    pub(super) fn peer_report(&self) -> PeerReport {
        let session = self.session.as_ref();
        let peer = session.and_then(|s| s.peer.as_ref());
        PeerReport {
            state: match (session, peer) {
                (Some(_), Some(_)) => "up",
                (Some(_), None) => "opening",
                (None, _) if self.peer_alive.is_some() => "connecting",
                (None, _) => "down",
            }
            .into(),
            local_address: self.config.local_address.to_string(),
            peer_address: self.config.peer_address.to_string(),
            role: if self.we_connect {
                "connects"
            } else {
                "accepts"
            }
            .into(),
            local_version: format!("{}.{}", wire::VERSION_MAJOR, wire::VERSION_MINOR),
            peer_version: peer.map(|p| format!("{}.{}", wire::VERSION_MAJOR, p.peer_minor)),
            negotiated_version: peer.map(|p| format!("{}.{}", wire::VERSION_MAJOR, p.minor)),
            peer_name: peer.map(|p| p.name.clone()),
            peer_system_id: peer.and_then(|p| p.system_id),
            peer_boot_id: peer.map(|p| p.boot_id),
            peer_capabilities: peer.map(|p| p.capabilities),
            last_hello_ms_ago: peer.map(|p| p.hello_at.elapsed().as_millis() as u64),
            session_up_s: peer.and(session).map(|s| s.opened.elapsed().as_secs()),
            alive: self.peer_alive.is_some(),
            inject_method: self.kernel.inject_method().into(),
            keepalive_interval_ms: self.config.keepalive_interval_ms,
            dead_interval_ms: self.config.dead_interval_ms,
            keepalive_scheduling: self.keepalive_scheduling.clone(),
            boot_id: self.identity.boot_id,
            entries: self.table.len() as u64,
            pending: self.table.pending() as u64,
            unacked: self.table.unacked(self.acked) as u64,
            acked_seq: self.acked,
            next_seq: self.next_seq,
            learnt: self.learned.len() as u64,
            evicted: self.table.evicted,
            latency: self.latency.report(),
            counters: super::report::Stats {
                nd: self.nd.stats.clone(),
                ..self.stats.clone()
            },
        }
    }

    /// `show arp`: entries sent (with their ack state) and entries learnt;
    /// the kernel's NUD state of the learnt ones is read by the asker
    /// ([`ArpSnapshot::with_kernel_state`]), never inside the loop.
    pub(super) fn arp_report(&self) -> ArpSnapshot {
        let mut ifindexes: Vec<u32> = self.ports.iter().filter_map(|p| p.ifindex).collect();
        ifindexes.extend(self.vlan_targets.values().map(|(i, _)| *i));
        let class_name = |c: u8| Class::from_u8(c).map_or("?", Class::name).to_string();
        let mut out: Vec<ArpReportEntry> = self
            .table
            .iter()
            .map(|(key, e)| {
                let port = self.ports.iter().find(|p| p.mlag_id == key.mlag_id);
                ArpReportEntry {
                    ip: key.ip.to_string(),
                    mac: e.mac,
                    port: port.map_or_else(|| format!("mlag {}", key.mlag_id), |p| p.name.clone()),
                    mlag_id: key.mlag_id,
                    outer_vlan: e.driver.outer_vlan,
                    inner_vlan: e.driver.inner_vlan,
                    direction: "sent".into(),
                    class: class_name(e.driver.class),
                    age_ms: e.updated.elapsed().as_millis() as u64,
                    how: if e.seq == 0 {
                        "queued"
                    } else if !self.is_acked(e.seq) {
                        "sent"
                    } else {
                        "acked"
                    }
                    .into(),
                    kernel_state: None,
                    learnt_here: None,
                    confirmed: None,
                }
            })
            .collect();
        out.sort_by_key(|e| (e.mlag_id, e.ip.parse::<Ipv4Addr>().ok()));
        let mut learnt: Vec<(&EntryKey, &Learnt)> = self.learned.iter().collect();
        learnt.sort_by_key(|(key, l)| (l.ifindex, key.ip));
        let mut received = Vec::with_capacity(learnt.len());
        for (key, l) in learnt {
            received.push((out.len(), l.ifindex, key.ip));
            out.push(ArpReportEntry {
                ip: key.ip.to_string(),
                mac: l.mac,
                port: if l.interface == l.port {
                    l.port.clone()
                } else {
                    format!("{} via {}", l.port, l.interface)
                },
                mlag_id: l.mlag_id,
                outer_vlan: l.outer_vlan,
                inner_vlan: l.inner_vlan,
                direction: "received".into(),
                class: class_name(l.class),
                age_ms: l.at.elapsed().as_millis() as u64,
                how: l.by.name().into(),
                kernel_state: None,
                learnt_here: None,
                confirmed: None,
            });
        }
        // Sent entries this switch learnt too (SPEC 1.2): say how; the
        // asker reads what the kernel holds for them as for received ones.
        for (i, entry) in out.iter_mut().enumerate() {
            if entry.direction != "sent" {
                continue;
            }
            let Some(ifindex) = self
                .ports
                .iter()
                .find(|p| p.mlag_id == entry.mlag_id)
                .and_then(|p| p.ifindex)
            else {
                continue;
            };
            let Ok(ip) = entry.ip.parse::<Ipv4Addr>() else {
                continue;
            };
            if let Some(by) = self.learnt_here.get(&(ifindex, ip)) {
                entry.learnt_here = Some(by.name().into());
                received.push((i, ifindex, ip));
            }
        }
        ArpSnapshot {
            entries: out,
            ifindexes,
            received,
        }
    }
}
