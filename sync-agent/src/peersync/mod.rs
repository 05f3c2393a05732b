//! SPEC 2: peer sync of ARP replies over the peer link.
//!
//! One task owns the whole peer state: the session, the table of entries
//! sent (with the sequence numbers the peer acknowledged), what was learnt
//! from the peer, and the counters. Captured replies, session I/O, liveness
//! and operator queries all reach it as [`PeerEvent`]s.
//!
//! Receiving is kernel learning: each synced reply is handed to this
//! switch's own ARP receive path on its twin member port with `BPF_PROG_RUN`
//! live frames (the pass-only XDP program returns `XDP_PASS`), so the kernel
//! does everything it does on learning. Two kernel rules are handled on
//! purpose: the destination MAC is rewritten to the receiving interface's
//! MAC (a reply for another MAC is dropped as "other host"), and
//! `arp_accept=1` is set on the member ports (policy `peer.arp_accept`) so a
//! reply this switch did not ask for (class `own` on the peer) creates an
//! entry. Only if injection fails is the entry written over netlink, and
//! that is logged and counted.

pub mod config;
pub mod session;
pub mod table;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use rtnetlink::Handle;
use serde::{Deserialize, Serialize};
use sync_common::{
    arp::{self, Parsed},
    capture::Class,
    wire::{self, DecodeError, DriverHeader, Encoder, Frame, MessageType, SubType},
};
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot, watch},
};

use self::table::{EntryKey, SendTable};
use crate::{
    bus::Captured,
    bus::{Liveness, MemberPort, SessionEvent},
    control::protocol::Response,
    liveness::{self, LivenessReport},
    mac::MacAddr,
    peersync::config::{ArpAcceptPolicy, PeerConfig},
    southbound::testrun,
    southbound::{links, neighbours},
};

/// Who this agent is, as told in hellos.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Instance name.
    pub name: String,
    /// System id (a MAC of this switch).
    pub system_id: MacAddr,
    /// Random id of this agent run; a new one tells the peer we restarted.
    pub boot_id: u64,
    /// MC-LAG election address, when MC-LAG is configured.
    pub mclag_address: Option<std::net::IpAddr>,
}

/// Operator queries.
#[derive(Clone, Copy, Debug)]
pub enum PeerQuery {
    /// `show peer`.
    Peer,
    /// `show arp`.
    Arp,
}

/// Everything the peer-sync task reacts to.
#[derive(Debug)]
pub enum PeerEvent {
    /// A reply captured by the classifier.
    Captured(Captured),
    /// The member ports changed.
    Ports(Vec<MemberPort>),
    /// An operator query.
    Query(PeerQuery, oneshot::Sender<Response>),
    /// A TCP connection to or from the peer.
    Connected {
        /// The stream.
        stream: TcpStream,
    },
    /// A frame read on connection `conn` (header already checked).
    Inbound {
        /// Connection number.
        conn: u64,
        /// The whole frame.
        frame: Vec<u8>,
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
        /// For the log.
        detail: String,
    },
    /// Liveness change.
    Liveness(Liveness),
    /// A refresh of the neighbour table finished.
    RefreshDone {
        /// Entries moved to PROBE.
        probed: u64,
        /// Entries that could not be.
        failed: u64,
    },
}

/// Handle to the running peer-sync task.
#[derive(Clone)]
pub struct PeerSync {
    events: mpsc::Sender<PeerEvent>,
}

impl PeerSync {
    /// Starts peer sync. `inject` is an owned fd of the pass-only XDP program.
    pub fn spawn(
        config: PeerConfig,
        identity: Identity,
        ports: Vec<MemberPort>,
        inject: OwnedFd,
        netlink: Handle,
        observer: Option<mpsc::Sender<SessionEvent>>,
    ) -> Self {
        let (events, rx) = mpsc::channel(1024);
        let local = SocketAddr::new(config.local_address, config.port);
        let peer = SocketAddr::new(config.peer_address, config.port);
        let (want_connection, wanted) = watch::channel(0u64);
        let we_connect = config.local_address < config.peer_address;
        if we_connect {
            tokio::spawn(session::connect(local, peer, wanted, events.clone()));
        } else {
            tokio::spawn(session::accept(local, peer, events.clone()));
        }
        let (liveness_tx, mut liveness_rx) = mpsc::channel(64);
        tokio::spawn(liveness::run(
            local,
            peer,
            Duration::from_millis(config.keepalive_interval_ms),
            Duration::from_millis(config.dead_interval_ms),
            identity.boot_id,
            liveness_tx,
        ));
        let forward = events.clone();
        tokio::spawn(async move {
            while let Some(report) = liveness_rx.recv().await {
                let event = match report {
                    LivenessReport::Changed(l) => PeerEvent::Liveness(l),
                    LivenessReport::Rejected { reason, detail } => {
                        PeerEvent::Rejected { reason, detail }
                    }
                };
                if forward.send(event).await.is_err() {
                    return;
                }
            }
        });
        let mut task = Task {
            table: SendTable::new(config.max_entries),
            config,
            identity,
            ports,
            events: events.clone(),
            we_connect,
            want_connection,
            session: None,
            next_conn: 1,
            peer_alive: None,
            last_peer_boot: None,
            next_seq: 1,
            acked: 0,
            flush_at: None,
            rx_from_boot: None,
            rx_applied: 0,
            learned: BTreeMap::new(),
            vlan_targets: BTreeMap::new(),
            stats: Stats::default(),
            log_gate: BTreeMap::new(),
            inject,
            netlink,
            observer,
        };
        task.apply_arp_accept();
        tokio::spawn(async move { task.run(rx).await });
        Self { events }
    }

    /// Hands a captured reply to peer sync (waits for room: backpressure).
    pub async fn captured(&self, captured: Captured) {
        let _ = self.events.send(PeerEvent::Captured(captured)).await;
    }

    /// Tells peer sync the member ports changed.
    pub async fn ports(&self, ports: Vec<MemberPort>) {
        let _ = self.events.send(PeerEvent::Ports(ports)).await;
    }

    /// Answers an operator query.
    pub async fn query(&self, query: PeerQuery) -> Response {
        let (tx, rx) = oneshot::channel();
        if self.events.send(PeerEvent::Query(query, tx)).await.is_err() {
            return Response::error("peer sync has stopped");
        }
        rx.await
            .unwrap_or_else(|_| Response::error("peer sync has stopped"))
    }
}

/// What we know of the peer from its hello.
#[derive(Clone, Debug)]
struct PeerInfo {
    name: String,
    system_id: Option<MacAddr>,
    boot_id: u64,
    /// The peer's own minor version.
    peer_minor: u8,
    /// The minor version in use: the lower of the two.
    minor: u8,
    capabilities: u32,
    max_frame: usize,
    hello_at: Instant,
}

struct Session {
    conn: u64,
    writer: mpsc::Sender<Vec<u8>>,
    tasks: [tokio::task::JoinHandle<()>; 2],
    peer: Option<PeerInfo>,
    opened: Instant,
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How an entry learnt from the peer reached the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LearntBy {
    /// The kernel's own ARP receive path (BPF_PROG_RUN live frame).
    KernelArp,
    /// A netlink neighbour update (fallback).
    NetlinkFallback,
}

#[derive(Clone, Debug)]
struct Learnt {
    mac: MacAddr,
    port: String,
    interface: String,
    mlag_id: u32,
    outer_vlan: u16,
    inner_vlan: u16,
    class: u8,
    by: LearntBy,
    at: Instant,
}

/// Counters of peer sync.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Sessions established.
    pub sessions_established: u64,
    /// Sessions lost.
    pub sessions_lost: u64,
    /// Sync frames sent.
    pub frames_sent: u64,
    /// Entries sent (resends included).
    pub entries_sent: u64,
    /// Sync frames received.
    pub frames_received: u64,
    /// Entries received.
    pub entries_received: u64,
    /// Acks received.
    pub acks_received: u64,
    /// Entries handed to the kernel's ARP path.
    pub injected: u64,
    /// Entries written over netlink because injection failed.
    pub netlink_fallback: u64,
    /// Neighbour refreshes (peer came back).
    pub refreshes: u64,
    /// Entries moved to PROBE by refreshes.
    pub refresh_probes: u64,
    /// Replies captured while no session was up (sent later).
    pub queued_while_down: u64,
    /// Inputs refused, by reason.
    pub rejected: BTreeMap<String, u64>,
}

struct Task {
    config: PeerConfig,
    identity: Identity,
    ports: Vec<MemberPort>,
    events: mpsc::Sender<PeerEvent>,
    we_connect: bool,
    want_connection: watch::Sender<u64>,
    session: Option<Session>,
    next_conn: u64,
    /// Boot id of the peer while keepalives arrive.
    peer_alive: Option<u64>,
    /// Boot id of the peer in the last established session.
    last_peer_boot: Option<u64>,
    next_seq: u32,
    acked: u32,
    flush_at: Option<tokio::time::Instant>,
    table: SendTable,
    rx_from_boot: Option<u64>,
    rx_applied: u32,
    learned: BTreeMap<(u32, Ipv4Addr), Learnt>,
    vlan_targets: BTreeMap<String, (u32, MacAddr)>,
    stats: Stats,
    log_gate: BTreeMap<&'static str, Instant>,
    inject: OwnedFd,
    netlink: Handle,
    observer: Option<mpsc::Sender<SessionEvent>>,
}

impl Task {
    async fn notify(&self, event: SessionEvent) {
        if let Some(observer) = &self.observer {
            let _ = observer.send(event).await;
        }
    }

    async fn run(&mut self, mut rx: mpsc::Receiver<PeerEvent>) {
        loop {
            // Batching without a timer: flush once nothing else is waiting.
            if self.flush_at.is_some() && self.config.flush_delay_us == 0 && rx.is_empty() {
                self.flush().await;
            }
            let flush_at = self.flush_at;
            let event = tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
                () = async { tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)).await }, if flush_at.is_some() => {
                    self.flush().await;
                    continue;
                }
            };
            self.on_event(event).await;
        }
    }

    async fn on_event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Captured(captured) => self.on_captured(captured).await,
            PeerEvent::Ports(ports) => {
                self.ports = ports;
                self.apply_arp_accept();
            }
            PeerEvent::Query(query, reply) => {
                let response = match query {
                    PeerQuery::Peer => Response::ok(&self.report()),
                    PeerQuery::Arp => Response::ok(&self.arp_report().await),
                };
                let _ = reply.send(response);
            }
            PeerEvent::Connected { stream } => self.on_connected(stream).await,
            PeerEvent::Inbound { conn, frame } => {
                if self.session.as_ref().is_some_and(|s| s.conn == conn) {
                    self.on_frame(&frame).await;
                }
            }
            PeerEvent::Malformed { conn, error, fatal } => {
                self.reject(error.reason(), &format!("from the peer session: {error}"));
                if session::is_version_mismatch(&error) {
                    tracing::error!(
                        "peer {} speaks an incompatible protocol version ({error}); closing the session",
                        self.config.peer_address
                    );
                }
                if fatal && self.session.as_ref().is_some_and(|s| s.conn == conn) {
                    self.close_session(&format!("{error}"));
                }
            }
            PeerEvent::Closed { conn, why } => {
                if self.session.as_ref().is_some_and(|s| s.conn == conn) {
                    self.close_session(&why);
                }
            }
            PeerEvent::Rejected { reason, detail } => self.reject(reason, &detail),
            PeerEvent::Liveness(Liveness::Up { boot_id }) => {
                let restarted = self.peer_alive.is_some_and(|old| old != boot_id);
                tracing::info!(peer = %self.config.peer_address, boot_id, restarted, "peer alive (keepalives)");
                self.peer_alive = Some(boot_id);
                if restarted {
                    self.close_session("peer agent restarted");
                }
                if self.session.is_none() {
                    self.request_connection();
                }
            }
            PeerEvent::Liveness(Liveness::Down) => {
                tracing::warn!(peer = %self.config.peer_address, dead_ms = self.config.dead_interval_ms, "peer lost: no keepalive");
                self.peer_alive = None;
                self.close_session("peer liveness lost");
                self.notify(SessionEvent::Lost).await;
            }
            PeerEvent::RefreshDone { probed, failed } => {
                self.stats.refresh_probes += probed;
                tracing::info!(
                    probed,
                    failed,
                    "neighbour refresh done: replies will be synced as they arrive"
                );
            }
        }
    }

    fn reject(&mut self, reason: &'static str, detail: &str) {
        *self.stats.rejected.entry(reason.to_string()).or_default() += 1;
        // At most one line per reason per second, whatever the flood.
        let now = Instant::now();
        let gate = self
            .log_gate
            .entry(reason)
            .or_insert(now - Duration::from_secs(2));
        if now.duration_since(*gate) >= Duration::from_secs(1) {
            *gate = now;
            let total = self.stats.rejected[reason];
            tracing::warn!(reason, total, "dropped peer-link input: {detail}");
        }
    }

    fn request_connection(&mut self) {
        if self.we_connect {
            self.want_connection
                .send_modify(|generation| *generation += 1);
        }
    }

    fn close_session(&mut self, why: &str) {
        if let Some(session) = self.session.take() {
            if session.peer.is_some() {
                self.stats.sessions_lost += 1;
                tracing::warn!(peer = %self.config.peer_address, why, up_s = session.opened.elapsed().as_secs(), "peer session closed");
            } else {
                tracing::info!(peer = %self.config.peer_address, why, "peer connection closed before its hello");
            }
        }
        if self.peer_alive.is_some() {
            self.request_connection();
        }
    }

    async fn on_connected(&mut self, stream: TcpStream) {
        if self.session.is_some() {
            self.reject(
                "duplicate_connection",
                "a second connection while a session exists",
            );
            return;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        let (writer, tasks) = session::start(
            conn,
            stream,
            self.config.max_frame_bytes,
            self.events.clone(),
        );
        self.session = Some(Session {
            conn,
            writer,
            tasks,
            peer: None,
            opened: Instant::now(),
        });
        let hello = self.hello();
        self.send(hello).await;
    }

    fn hello(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let Ok(mut e) = Encoder::new(&mut buf, MessageType::Hello, SubType::None, 0) else {
            return Vec::new();
        };
        let name = self.identity.name.as_bytes();
        let _ = e.tlv(wire::tlv::SYSTEM_NAME, &[&name[..name.len().min(64)]]);
        let _ = e.tlv(wire::tlv::SYSTEM_ID, &[&self.identity.system_id.0]);
        let _ = e.tlv(
            wire::tlv::CAPABILITIES,
            &[&wire::capability::ARP_SYNC.to_be_bytes()],
        );
        let _ = e.tlv(wire::tlv::BOOT_ID, &[&self.identity.boot_id.to_be_bytes()]);
        let _ = e.tlv(
            wire::tlv::MAX_FRAME,
            &[&(self.config.max_frame_bytes as u32).to_be_bytes()],
        );
        for port in &self.ports {
            let mac = port.mac.map_or([0; 6], |m| m.0);
            let _ = e.tlv(wire::tlv::PORT, &[&port.mlag_id.to_be_bytes(), &mac]);
        }
        match self.identity.mclag_address {
            Some(std::net::IpAddr::V4(v4)) => {
                let _ = e.tlv(wire::tlv::MCLAG_ADDRESS, &[&v4.octets()]);
            }
            Some(std::net::IpAddr::V6(v6)) => {
                let _ = e.tlv(wire::tlv::MCLAG_ADDRESS, &[&v6.octets()]);
            }
            None => {}
        }
        if let Some(boot) = self.rx_from_boot {
            let _ = e.tlv(
                wire::tlv::RESUME,
                &[&boot.to_be_bytes(), &self.rx_applied.to_be_bytes()],
            );
        }
        let len = e.finish();
        buf.truncate(len);
        buf
    }

    async fn send(&mut self, frame: Vec<u8>) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        if session.writer.send(frame).await.is_err() {
            self.close_session("writer stopped");
            return false;
        }
        true
    }

    async fn on_frame(&mut self, bytes: &[u8]) {
        let frame = match Frame::decode(bytes, self.config.max_frame_bytes) {
            Ok(frame) => frame,
            Err(error) => {
                // The framing is intact (the header was good): skip this one.
                self.reject(error.reason(), &format!("from the peer session: {error}"));
                return;
            }
        };
        let established = self.session.as_ref().is_some_and(|s| s.peer.is_some());
        match (frame.header.msg_type, established) {
            (MessageType::Hello, false) => self.on_hello(&frame).await,
            (MessageType::Hello, true) => {
                self.reject("unexpected_hello", "hello on an established session")
            }
            (_, false) => self.reject("before_hello", "frame before the peer's hello"),
            (MessageType::Sync, true) => self.on_sync(&frame).await,
            (MessageType::Ack, true) => match frame.u32_of(wire::tlv::ACK_SEQ) {
                Some(seq) => {
                    self.stats.acks_received += 1;
                    self.acked = self.acked.max(seq);
                }
                None => self.reject("bad_tlv", "ack without a sequence number"),
            },
            (MessageType::Keepalive, true) => {
                self.reject("unexpected_type", "keepalive on the session")
            }
        }
    }

    async fn on_hello(&mut self, frame: &Frame<'_>) {
        let Some(boot_id) = frame.u64_of(wire::tlv::BOOT_ID) else {
            self.reject("bad_hello", "hello without a boot id");
            self.close_session("hello without a boot id");
            return;
        };
        let name = frame
            .find(wire::tlv::SYSTEM_NAME)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let system_id = frame
            .find(wire::tlv::SYSTEM_ID)
            .map(|v| MacAddr([v[0], v[1], v[2], v[3], v[4], v[5]]));
        let capabilities = frame.u32_of(wire::tlv::CAPABILITIES).unwrap_or(0);
        let max_frame = frame
            .u32_of(wire::tlv::MAX_FRAME)
            .map_or(self.config.max_frame_bytes, |m| m as usize);
        if capabilities & wire::capability::ARP_SYNC == 0 {
            tracing::warn!(
                peer = name,
                "peer does not announce ARP sync; nothing will be synced to it"
            );
        }
        // The lower minor version is spoken; with VERSION_MINOR at 0 this
        // is always 0 today, which clippy points out.
        #[allow(clippy::absurd_extreme_comparisons, clippy::unnecessary_min_or_max)]
        let minor = frame.header.minor.min(wire::VERSION_MINOR);
        let resume = frame.find(wire::tlv::RESUME).and_then(|v| {
            let boot = u64::from_be_bytes(v[0..8].try_into().ok()?);
            let seq = u32::from_be_bytes(v[8..12].try_into().ok()?);
            (boot == self.identity.boot_id).then_some(seq)
        });
        let peer_restarted = self.last_peer_boot != Some(boot_id);
        match resume {
            Some(seq) => {
                self.acked = self.acked.max(seq);
                self.table.mark_unacked(seq);
            }
            None => self.table.mark_all(),
        }
        self.last_peer_boot = Some(boot_id);
        self.stats.sessions_established += 1;
        tracing::info!(
            peer = name,
            address = %self.config.peer_address,
            version = format!("{}.{}", frame.header.major, frame.header.minor),
            negotiated = format!("{}.{minor}", wire::VERSION_MAJOR),
            resend = self.table.pending(),
            peer_restarted,
            "peer session established"
        );
        if let Some(session) = &mut self.session {
            session.peer = Some(PeerInfo {
                name,
                system_id,
                boot_id,
                peer_minor: frame.header.minor,
                minor,
                capabilities,
                max_frame: max_frame.min(self.config.max_frame_bytes),
                hello_at: Instant::now(),
            });
        }
        let mclag_address = frame
            .find(wire::tlv::MCLAG_ADDRESS)
            .and_then(|v| match v.len() {
                4 => <[u8; 4]>::try_from(v).ok().map(std::net::IpAddr::from),
                16 => <[u8; 16]>::try_from(v).ok().map(std::net::IpAddr::from),
                _ => None,
            });
        let ports = frame
            .tlvs()
            .filter(|t| t.tlv_type == wire::tlv::PORT && t.value.len() == 10)
            .map(|t| {
                let id = u32::from_be_bytes([t.value[0], t.value[1], t.value[2], t.value[3]]);
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&t.value[4..10]);
                (id, MacAddr(mac))
            })
            .collect();
        self.notify(SessionEvent::Up {
            mclag_address,
            ports,
        })
        .await;
        if peer_restarted {
            self.refresh();
        }
        self.flush().await;
    }

    /// SPEC 2.5: re-probe every neighbour on the member ports; the replies,
    /// wherever they land, are synced as they come.
    fn refresh(&mut self) {
        self.stats.refreshes += 1;
        let ifindexes: Vec<u32> = self.ports.iter().filter_map(|p| p.ifindex).collect();
        let netlink = self.netlink.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let (mut probed, mut failed) = (0, 0);
            match neighbours::dump(&netlink, &ifindexes).await {
                Ok(list) => {
                    for n in list.iter().filter(|n| {
                        n.mac.is_some()
                            && matches!(n.state, "REACHABLE" | "STALE" | "DELAY" | "PROBE")
                    }) {
                        match neighbours::probe(&netlink, n).await {
                            Ok(()) => probed += 1,
                            Err(err) => {
                                failed += 1;
                                tracing::debug!(error = %err, "probe");
                            }
                        }
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "neighbour refresh: cannot read the ARP table")
                }
            }
            let _ = events.send(PeerEvent::RefreshDone { probed, failed }).await;
        });
    }

    async fn on_captured(&mut self, captured: Captured) {
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
        self.table.upsert(
            key,
            driver,
            captured.frame,
            MacAddr(captured.arp.sender_mac),
        );
        let established = self.session.as_ref().is_some_and(|s| s.peer.is_some());
        if !established {
            self.stats.queued_while_down += 1;
            return;
        }
        if self.table.pending() >= self.config.batch_max_entries {
            self.flush().await;
        } else if self.flush_at.is_none() {
            self.flush_at = Some(
                tokio::time::Instant::now() + Duration::from_micros(self.config.flush_delay_us),
            );
        }
    }

    /// Sends every pending entry, in frames of at most `batch_max_entries`
    /// entries and the negotiated frame size.
    async fn flush(&mut self) {
        self.flush_at = None;
        let Some(max_frame) = self
            .session
            .as_ref()
            .and_then(|s| s.peer.as_ref())
            .map(|p| p.max_frame)
        else {
            return;
        };
        while self.table.pending() > 0 {
            let seq = self.next_seq;
            let mut buf = vec![0u8; max_frame];
            let Ok(mut encoder) = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, seq)
            else {
                return;
            };
            let mut sent = Vec::new();
            while sent.len() < self.config.batch_max_entries {
                let Some((key, entry)) = self.table.next_dirty() else {
                    break;
                };
                match encoder.arp_entry(&entry.driver, &entry.frame) {
                    Ok(()) => {
                        sent.push(key);
                        // Take it off the dirty list now so next_dirty moves on.
                        self.table.discard_dirty(key);
                    }
                    Err(_) if !sent.is_empty() => break,
                    Err(_) => {
                        self.table.discard_dirty(key);
                        self.reject(
                            "entry_too_large",
                            "captured frame does not fit a sync frame",
                        );
                    }
                }
            }
            if sent.is_empty() {
                continue;
            }
            let len = encoder.finish();
            buf.truncate(len);
            if !self.send(buf).await {
                // Session lost: put them back; they go out on the next session.
                for key in sent {
                    self.table.mark_sent(key, 0);
                    self.table.mark_all_one(key);
                }
                return;
            }
            self.next_seq = self.next_seq.wrapping_add(1).max(1);
            self.stats.frames_sent += 1;
            self.stats.entries_sent += sent.len() as u64;
            for key in sent {
                self.table.mark_sent(key, seq);
            }
        }
    }

    async fn on_sync(&mut self, frame: &Frame<'_>) {
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
        for entry in frame.arp_entries() {
            self.stats.entries_received += 1;
            self.apply(&entry.driver, entry.frame).await;
        }
        let seq = frame.header.seq;
        self.rx_applied = self.rx_applied.max(seq);
        let mut buf = vec![0u8; 64];
        if let Ok(mut e) = Encoder::new(&mut buf, MessageType::Ack, SubType::None, 0) {
            let _ = e.tlv(wire::tlv::ACK_SEQ, &[&seq.to_be_bytes()]);
            let len = e.finish();
            buf.truncate(len);
            self.send(buf).await;
        }
    }

    /// Hands one synced reply to this switch's kernel on the twin port.
    async fn apply(&mut self, driver: &DriverHeader, original: &[u8]) {
        let Some(port) = self
            .ports
            .iter()
            .find(|p| p.mlag_id == driver.mlag_id)
            .cloned()
        else {
            self.reject(
                "unknown_mlag_id",
                &format!(
                    "entry for MLAG id {} which no member port has",
                    driver.mlag_id
                ),
            );
            return;
        };
        let Parsed::ArpReply(reply) = arp::parse(original) else {
            return;
        };
        let Some(addresses) = arp::addresses(original, reply.arp_offset as usize) else {
            return;
        };
        let mapped = self
            .config
            .vlan_interfaces
            .iter()
            .find(|v| {
                v.mlag_id == driver.mlag_id
                    && v.outer_vlan == reply.outer_vlan
                    && v.inner_vlan == reply.inner_vlan
            })
            .map(|v| v.interface.clone());
        let (interface, ifindex, mac, frame) = match mapped {
            Some(name) => {
                let Some((ifindex, mac)) = self.vlan_target(&name).await else {
                    self.reject(
                        "vlan_interface_missing",
                        &format!(
                            "interface {name} for MLAG id {} VLAN {}",
                            driver.mlag_id, reply.outer_vlan
                        ),
                    );
                    return;
                };
                // Handed to the VLAN's own interface: without its tags.
                let mut untagged = Vec::with_capacity(original.len());
                untagged.extend_from_slice(&original[..12]);
                untagged.extend_from_slice(&arp::ETHERTYPE_ARP.to_be_bytes());
                untagged.extend_from_slice(&original[reply.arp_offset as usize..]);
                (name, ifindex, mac, untagged)
            }
            None => {
                let (Some(ifindex), Some(mac)) = (port.ifindex, port.mac) else {
                    self.reject(
                        "twin_port_missing",
                        &format!("member port {} is not present", port.name),
                    );
                    return;
                };
                (port.name.clone(), ifindex, mac, original.to_vec())
            }
        };
        let mut frame = frame;
        frame[..6].copy_from_slice(&mac.0);
        let sender_ip = Ipv4Addr::from(addresses.sender_ip);
        let sender_mac = MacAddr(addresses.sender_mac);
        let by = match testrun::inject(self.inject.as_raw_fd(), &frame, ifindex) {
            Ok(()) => {
                self.stats.injected += 1;
                LearntBy::KernelArp
            }
            Err(err) => {
                self.stats.netlink_fallback += 1;
                self.reject("inject_failed", &format!("BPF_PROG_RUN live frame on {interface}: {err}; writing {sender_ip} over netlink instead"));
                if let Err(err) =
                    neighbours::set_reachable(&self.netlink, ifindex, sender_ip, sender_mac).await
                {
                    tracing::error!(error = %err, "netlink fallback failed too");
                    return;
                }
                LearntBy::NetlinkFallback
            }
        };
        self.learned.insert(
            (ifindex, sender_ip),
            Learnt {
                mac: sender_mac,
                port: port.name,
                interface,
                mlag_id: driver.mlag_id,
                outer_vlan: reply.outer_vlan,
                inner_vlan: reply.inner_vlan,
                class: driver.class,
                by,
                at: Instant::now(),
            },
        );
    }

    async fn vlan_target(&mut self, name: &str) -> Option<(u32, MacAddr)> {
        if let Some(target) = self.vlan_targets.get(name) {
            return Some(*target);
        }
        let link = links::by_name(&self.netlink, name).await.ok()??;
        let target = (link.index, link.mac?);
        self.vlan_targets.insert(name.to_string(), target);
        if self.config.arp_accept == ArpAcceptPolicy::Set
            && let Err(err) = neighbours::set_arp_accept(name, 1)
        {
            tracing::warn!(error = %err, "arp_accept");
        }
        Some(target)
    }

    fn apply_arp_accept(&self) {
        if self.config.arp_accept != ArpAcceptPolicy::Set {
            return;
        }
        for port in self.ports.iter().filter(|p| p.ifindex.is_some()) {
            if let Err(err) = neighbours::set_arp_accept(&port.name, 1) {
                tracing::warn!(interface = port.name, error = %err, "cannot set arp_accept; synced replies this switch did not ask for will not create entries");
            }
        }
    }

    fn report(&self) -> PeerReport {
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
            keepalive_interval_ms: self.config.keepalive_interval_ms,
            dead_interval_ms: self.config.dead_interval_ms,
            boot_id: self.identity.boot_id,
            entries: self.table.len() as u64,
            pending: self.table.pending() as u64,
            unacked: self.table.unacked(self.acked) as u64,
            acked_seq: self.acked,
            next_seq: self.next_seq,
            learnt: self.learned.len() as u64,
            evicted: self.table.evicted,
            counters: self.stats.clone(),
        }
    }

    async fn arp_report(&self) -> Vec<ArpReportEntry> {
        let mut ifindexes: Vec<u32> = self.ports.iter().filter_map(|p| p.ifindex).collect();
        ifindexes.extend(self.vlan_targets.values().map(|(i, _)| *i));
        let kernel: BTreeMap<(u32, Ipv4Addr), neighbours::Neighbour> =
            neighbours::dump(&self.netlink, &ifindexes)
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|n| ((n.ifindex, n.ip), n))
                .collect();
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
                    } else if e.seq > self.acked {
                        "sent"
                    } else {
                        "acked"
                    }
                    .into(),
                    kernel_state: None,
                }
            })
            .collect();
        out.extend(self.learned.iter().map(|((ifindex, ip), l)| {
            ArpReportEntry {
                ip: ip.to_string(),
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
                how: match l.by {
                    LearntBy::KernelArp => "kernel-arp",
                    LearntBy::NetlinkFallback => "netlink-fallback",
                }
                .into(),
                kernel_state: Some(
                    kernel
                        .get(&(*ifindex, *ip))
                        .map_or("absent", |n| n.state)
                        .to_string(),
                ),
            }
        }));
        out
    }
}

/// `show peer`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerReport {
    /// up | opening | connecting | down.
    pub state: String,
    /// This switch's peer-link address.
    pub local_address: String,
    /// The peer's address.
    pub peer_address: String,
    /// Whether this side connects or accepts.
    pub role: String,
    /// Protocol version of this agent.
    pub local_version: String,
    /// The peer's version (from its hello).
    pub peer_version: Option<String>,
    /// Version in use.
    pub negotiated_version: Option<String>,
    /// The peer's name.
    pub peer_name: Option<String>,
    /// The peer's system id.
    pub peer_system_id: Option<MacAddr>,
    /// The peer agent's boot id.
    pub peer_boot_id: Option<u64>,
    /// The peer's capability bits.
    pub peer_capabilities: Option<u32>,
    /// Milliseconds since the peer's hello.
    pub last_hello_ms_ago: Option<u64>,
    /// Seconds the session has been up.
    pub session_up_s: Option<u64>,
    /// Keepalives arriving.
    pub alive: bool,
    /// Keepalive interval.
    pub keepalive_interval_ms: u64,
    /// Dead interval.
    pub dead_interval_ms: u64,
    /// This agent's boot id.
    pub boot_id: u64,
    /// Entries in the send table.
    pub entries: u64,
    /// Entries waiting to be sent.
    pub pending: u64,
    /// Entries sent and not acknowledged.
    pub unacked: u64,
    /// Highest sync frame the peer acknowledged.
    pub acked_seq: u32,
    /// Sequence number of the next sync frame.
    pub next_seq: u32,
    /// Entries learnt from the peer.
    pub learnt: u64,
    /// Entries forgotten at the table bound.
    pub evicted: u64,
    /// Counters.
    pub counters: Stats,
}

/// One line of `show arp`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArpReportEntry {
    /// IPv4 address.
    pub ip: String,
    /// Its MAC.
    pub mac: MacAddr,
    /// Member port (and the interface used, if different).
    pub port: String,
    /// MLAG port id.
    pub mlag_id: u32,
    /// Outer VLAN.
    pub outer_vlan: u16,
    /// Inner VLAN.
    pub inner_vlan: u16,
    /// `sent` (captured here) or `received` (from the peer).
    pub direction: String,
    /// Class on the capturing switch.
    pub class: String,
    /// Milliseconds since captured or learnt.
    pub age_ms: u64,
    /// For sent: queued | sent | acked; for received: kernel-arp | netlink-fallback.
    pub how: String,
    /// For received: the kernel's NUD state now (read from the kernel).
    pub kernel_state: Option<String>,
}
