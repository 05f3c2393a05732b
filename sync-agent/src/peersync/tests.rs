//! The deterministic tier: the task's handlers driven by event sequences,
//! without root, a kernel or TCP. The session writer is a channel the test
//! reads, the kernel is [`FakeKernel`] (it records what would have been
//! done), and the results are compared as `PeerReport` / `ArpReportEntry`
//! values and as the frames written to the peer.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use sync_common::{
    arp::ArpAddresses,
    capture::Class,
    wire::{self, DecodeError, DriverHeader, Encoder, Frame, MessageType, SubType},
};
use tokio::sync::{mpsc, watch};

use super::{
    Identity,
    config::PeerConfig,
    events::{Event, Query},
    hello::Hello,
    learn::Kernel,
    report::{ArpReportEntry, PeerReport},
    task::{Inputs, Task},
};
use crate::{
    bus::{Captured, Liveness, MemberPort, SessionEvent},
    mac::MacAddr,
    southbound::neighbours::{Neighbour, NeighbourError, NeighbourEvent},
    southbound::neighbours6::Neighbour6,
};

// ---------------------------------------------------------------- fixtures

const OUR_BOOT: u64 = 100;
const PEER_BOOT: u64 = 200;
const PORT1_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa1]);
const PORT2_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa2]);
/// The peer switch's MAC: replies captured for it on the peer carry it.
const PEER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb1]);

/// What the fake kernel was asked to do, and what it answers.
#[derive(Default)]
struct KernelLog {
    injected: Vec<(u32, Vec<u8>)>,
    reachable: Vec<(u32, Ipv4Addr, MacAddr)>,
    arp_accept: Vec<String>,
    /// `arp_accept` of each interface as the fake kernel holds it (absent: 0).
    arp_accept_values: BTreeMap<String, u8>,
    /// Restores asked for, in order.
    arp_accept_restored: Vec<(String, u8)>,
    probed: Vec<Ipv4Addr>,
    /// When each probe went (pacing).
    probed_at: Vec<std::time::Instant>,
    /// Neighbour deletes asked for.
    deleted: Vec<(u32, Ipv4Addr)>,
    /// Controller (bridge/bond) of each interface.
    controllers: BTreeMap<u32, u32>,
    /// Answer to neighbour dumps.
    neighbours: Vec<Neighbour>,
    /// Interfaces `link` knows.
    links: BTreeMap<String, (u32, MacAddr)>,
    fail_inject: bool,
    /// ND: fallback writes, probes, deletes, `accept_untracked_na` values.
    reachable6: Vec<(u32, Ipv6Addr, MacAddr)>,
    neighbours6: Vec<Neighbour6>,
    probed6: Vec<Ipv6Addr>,
    deleted6: Vec<(u32, Ipv6Addr)>,
    untracked_na: BTreeMap<String, u8>,
}

/// A kernel that records instead of acting.
#[derive(Default)]
struct FakeKernel(Mutex<KernelLog>);

impl FakeKernel {
    fn log(&self) -> std::sync::MutexGuard<'_, KernelLog> {
        self.0.lock().unwrap()
    }
}

impl Kernel for FakeKernel {
    fn inject(&self, frame: &[u8], ifindex: u32) -> io::Result<()> {
        let mut log = self.log();
        if log.fail_inject {
            return Err(io::Error::other("BPF_PROG_RUN not supported"));
        }
        log.injected.push((ifindex, frame.to_vec()));
        Ok(())
    }

    fn inject_method(&self) -> &'static str {
        "fake"
    }

    fn set_reachable(
        &self,
        ifindex: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> BoxFuture<'_, Result<(), NeighbourError>> {
        self.log().reachable.push((ifindex, ip, mac));
        Box::pin(async { Ok(()) })
    }

    fn set_arp_accept(&self, interface: &str) -> Result<(), NeighbourError> {
        let mut log = self.log();
        log.arp_accept.push(interface.to_string());
        log.arp_accept_values.insert(interface.to_string(), 1);
        Ok(())
    }

    fn arp_accept(&self, interface: &str) -> Result<u8, NeighbourError> {
        Ok(self
            .log()
            .arp_accept_values
            .get(interface)
            .copied()
            .unwrap_or(0))
    }

    fn restore_arp_accept(&self, interface: &str, value: u8) -> Result<(), NeighbourError> {
        let mut log = self.log();
        log.arp_accept_restored.push((interface.to_string(), value));
        log.arp_accept_values.insert(interface.to_string(), value);
        Ok(())
    }

    fn link<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<(u32, MacAddr)>> {
        let link = self.log().links.get(name).copied();
        Box::pin(async move { link })
    }

    fn neighbours<'a>(
        &'a self,
        ifindexes: &'a [u32],
    ) -> BoxFuture<'a, Result<Vec<Neighbour>, NeighbourError>> {
        let list = self
            .log()
            .neighbours
            .iter()
            .filter(|n| ifindexes.contains(&n.ifindex))
            .cloned()
            .collect();
        Box::pin(async move { Ok(list) })
    }

    fn probe<'a>(&'a self, neighbour: &'a Neighbour) -> BoxFuture<'a, Result<(), NeighbourError>> {
        let mut log = self.log();
        log.probed.push(neighbour.ip);
        log.probed_at.push(std::time::Instant::now());
        Box::pin(async { Ok(()) })
    }

    fn delete(&self, ifindex: u32, ip: Ipv4Addr) -> BoxFuture<'_, Result<bool, NeighbourError>> {
        let mut log = self.log();
        log.deleted.push((ifindex, ip));
        let present = log
            .neighbours
            .iter()
            .any(|n| (n.ifindex, n.ip) == (ifindex, ip));
        log.neighbours
            .retain(|n| (n.ifindex, n.ip) != (ifindex, ip));
        Box::pin(async move { Ok(present) })
    }

    fn controller(&self, ifindex: u32) -> BoxFuture<'_, Option<u32>> {
        let controller = self.log().controllers.get(&ifindex).copied();
        Box::pin(async move { controller })
    }

    fn set_reachable6(
        &self,
        ifindex: u32,
        ip: Ipv6Addr,
        mac: MacAddr,
    ) -> BoxFuture<'_, Result<(), NeighbourError>> {
        self.log().reachable6.push((ifindex, ip, mac));
        Box::pin(async { Ok(()) })
    }

    fn neighbours6<'a>(
        &'a self,
        ifindexes: &'a [u32],
    ) -> BoxFuture<'a, Result<Vec<Neighbour6>, NeighbourError>> {
        let list: Vec<Neighbour6> = self
            .log()
            .neighbours6
            .iter()
            .filter(|n| ifindexes.contains(&n.ifindex))
            .cloned()
            .collect();
        Box::pin(async move { Ok(list) })
    }

    fn probe6<'a>(
        &'a self,
        neighbour: &'a Neighbour6,
    ) -> BoxFuture<'a, Result<(), NeighbourError>> {
        self.log().probed6.push(neighbour.ip);
        Box::pin(async { Ok(()) })
    }

    fn delete6(&self, ifindex: u32, ip: Ipv6Addr) -> BoxFuture<'_, Result<bool, NeighbourError>> {
        let mut log = self.log();
        log.deleted6.push((ifindex, ip));
        let present = log
            .neighbours6
            .iter()
            .any(|n| (n.ifindex, n.ip) == (ifindex, ip));
        log.neighbours6
            .retain(|n| (n.ifindex, n.ip) != (ifindex, ip));
        Box::pin(async move { Ok(present) })
    }

    fn untracked_na(&self, interface: &str) -> Result<u8, NeighbourError> {
        Ok(self.log().untracked_na.get(interface).copied().unwrap_or(0))
    }

    fn set_untracked_na(&self, interface: &str, value: u8) -> Result<(), NeighbourError> {
        self.log().untracked_na.insert(interface.to_string(), value);
        Ok(())
    }
}

fn config(extra: &str) -> PeerConfig {
    toml::from_str(&format!(
        "local_address = \"10.0.0.1\"\npeer_address = \"10.0.0.2\"\n{extra}"
    ))
    .expect("test config parses")
}

fn ports() -> Vec<MemberPort> {
    vec![
        MemberPort {
            name: "p1".into(),
            mlag_id: 1,
            ifindex: Some(11),
            mac: Some(PORT1_MAC),
            mtu: Some(1500),
        },
        MemberPort {
            name: "p2".into(),
            mlag_id: 2,
            ifindex: Some(12),
            mac: Some(PORT2_MAC),
            mtu: None,
        },
    ]
}

/// An untagged Ethernet/IPv4 ARP reply from `sender` to `dst`.
fn arp_reply(dst: MacAddr, sender_mac: MacAddr, sender_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&sender_mac.0);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f.extend_from_slice(&sender_mac.0);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&[10, 0, 9, 1]);
    f
}

fn host(last: u8) -> (MacAddr, Ipv4Addr) {
    (
        MacAddr([2, 0, 0, 0, 0xcc, last]),
        Ipv4Addr::new(10, 0, 9, last),
    )
}

/// A reply from host `last` captured on member port ifindex 11.
fn captured(last: u8) -> Captured {
    let (mac, ip) = host(last);
    let frame = arp_reply(PEER_MAC, mac, ip);
    Captured {
        timestamp_ns: 0,
        read_ns: 0,
        ifindex: 11,
        class: Class::Peer,
        outer_vlan: 0,
        inner_vlan: 0,
        vlan_count: 0,
        frame_len: frame.len() as u16,
        dst_mac: PEER_MAC,
        arp: ArpAddresses {
            opcode: 2,
            sender_mac: mac.0,
            sender_ip: ip.octets(),
            target_mac: PEER_MAC.0,
            target_ip: [10, 0, 9, 1],
        },
        nd: None,
        frame: frame.into(),
    }
}

fn peer_hello(boot_id: u64, resume: Option<(u64, u32)>) -> Vec<u8> {
    Hello {
        name: "b".into(),
        system_id: Some(PEER_MAC),
        capabilities: wire::capability::ARP_SYNC,
        boot_id,
        max_frame: Some(16 * 1024),
        ports: vec![(1, PEER_MAC)],
        port_mtus: vec![(1, 9000)],
        port_vlans: vec![(1, vec![(10, 0), (20, 7)])],
        mclag_address: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
        resume,
    }
    .encode()
}

fn driver(mlag_id: u32) -> DriverHeader {
    DriverHeader {
        mlag_id,
        outer_vlan: 0,
        inner_vlan: 0,
        vrf: 0,
        class: Class::Own as u8,
        vlan_count: 0,
    }
}

/// A sync frame from the peer.
fn sync_frame(seq: u32, entries: &[(DriverHeader, Vec<u8>)]) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut e = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, seq).unwrap();
    for (d, f) in entries {
        e.arp_entry(d, f).unwrap();
    }
    let len = e.finish();
    buf.truncate(len);
    buf
}

fn ack_frame(seq: Option<u32>) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let mut e = Encoder::new(&mut buf, MessageType::Ack, SubType::None, 0).unwrap();
    if let Some(seq) = seq {
        e.tlv(wire::tlv::ACK_SEQ, &[&seq.to_be_bytes()]).unwrap();
    }
    let len = e.finish();
    buf.truncate(len);
    buf
}

/// A frame as the peer would read it.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    Hello(Hello),
    /// Sequence number and the sender IPs of the entries.
    Sync(u32, Vec<Ipv4Addr>),
    /// A sync frame of deletes only: sequence number and their IPs.
    Deletes(u32, Vec<Ipv4Addr>),
    /// A port-state message: (MLAG id, up).
    PortState(Vec<(u32, bool)>),
    Ack(u32),
    /// The end of a bulk resync, with the number of the last frame before
    /// it. Left out of [`Harness::written`] and [`next_frame`]; see
    /// [`Harness::written_all`].
    SyncDone(u32),
}

fn read(bytes: &[u8]) -> Written {
    let frame = Frame::decode(bytes, wire::MAX_FRAME_LEN).expect("we write valid frames");
    match frame.header.msg_type {
        MessageType::Hello => Written::Hello(Hello::decode(&frame).unwrap()),
        MessageType::Sync if frame.is_sync_done() => {
            assert_eq!(frame.arp_entries().count(), 0, "SYNC_DONE rides alone");
            Written::SyncDone(frame.header.seq)
        }
        MessageType::Sync if frame.arp_deletes().count() > 0 => {
            assert_eq!(frame.arp_entries().count(), 0, "tests read deletes alone");
            Written::Deletes(
                frame.header.seq,
                frame.arp_deletes().map(|d| Ipv4Addr::from(d.ip)).collect(),
            )
        }
        MessageType::Sync => Written::Sync(
            frame.header.seq,
            frame
                .arp_entries()
                .map(|e| Ipv4Addr::new(e.frame[28], e.frame[29], e.frame[30], e.frame[31]))
                .collect(),
        ),
        MessageType::Ack => Written::Ack(frame.u32_of(wire::tlv::ACK_SEQ).unwrap()),
        MessageType::Keepalive => panic!("keepalive on the session"),
        MessageType::PortState => Written::PortState(frame.port_states().collect()),
    }
}

/// A task with a fake kernel and a channel for a session writer.
struct Harness {
    task: Task,
    kernel: Arc<FakeKernel>,
    internal: mpsc::Receiver<Event>,
    wanted: watch::Receiver<u64>,
    sessions: mpsc::Receiver<SessionEvent>,
    wire: mpsc::Receiver<bytes::Bytes>,
    conn: u64,
}

impl Harness {
    fn new(extra_config: &str) -> Self {
        Self::with_session_queue(extra_config, 64)
    }

    fn with_session_queue(extra_config: &str, depth: usize) -> Self {
        Self::with_config(config(extra_config), depth)
    }

    /// The side that accepts (its address is the higher one).
    fn accepting(extra_config: &str) -> Self {
        let config = toml::from_str(&format!(
            "local_address = \"10.0.0.2\"\npeer_address = \"10.0.0.1\"\n{extra_config}"
        ))
        .expect("test config parses");
        let h = Self::with_config(config, 64);
        assert!(!h.task.we_connect);
        h
    }

    fn with_config(config: PeerConfig, depth: usize) -> Self {
        let kernel = Arc::new(FakeKernel::default());
        let identity = Identity {
            name: "a".into(),
            system_id: PORT1_MAC,
            boot_id: OUR_BOOT,
            mclag_address: None,
        };
        let (sessions_tx, sessions) = mpsc::channel(depth);
        let (task, internal, wanted) =
            Task::new(config, identity, ports(), kernel.clone(), Some(sessions_tx));
        let (_, wire) = mpsc::channel(1);
        Self {
            task,
            kernel,
            internal,
            wanted,
            sessions,
            wire,
            conn: 0,
        }
    }

    /// A new connection: returns our hello as the peer reads it.
    async fn connect(&mut self) -> Hello {
        self.connect_with_queue(1024).await
    }

    /// A new connection whose writer queue holds `depth` frames (the peer
    /// reads nothing the test does not read).
    async fn connect_with_queue(&mut self, depth: usize) -> Hello {
        let (writer, wire) = mpsc::channel(depth);
        self.wire = wire;
        self.conn = self.task.open_session(writer, Vec::new()).await;
        match self.written().as_slice() {
            [Written::Hello(hello)] => hello.clone(),
            other => panic!("expected our hello, got {other:?}"),
        }
    }

    /// A frame from the peer on the current connection.
    async fn inbound(&mut self, frame: Vec<u8>) {
        let conn = self.conn;
        self.task
            .process(Event::Inbound {
                conn,
                frame: frame.into(),
                read_at: std::time::Instant::now(),
            })
            .await;
    }

    /// Connect and receive the peer's hello; returns what we resent.
    async fn establish(&mut self, boot_id: u64, resume: Option<(u64, u32)>) -> Vec<Written> {
        self.connect().await;
        self.inbound(peer_hello(boot_id, resume)).await;
        self.written()
    }

    async fn capture(&mut self, last: u8) {
        self.task
            .process(Event::Captures(vec![captured(last)].into()))
            .await;
    }

    /// Frames written since the last call, without SYNC_DONE.
    fn written(&mut self) -> Vec<Written> {
        self.written_all()
            .into_iter()
            .filter(|w| !matches!(w, Written::SyncDone(_)))
            .collect()
    }

    /// Every frame written since the last call.
    fn written_all(&mut self) -> Vec<Written> {
        let mut out = Vec::new();
        while let Ok(bytes) = self.wire.try_recv() {
            out.push(read(&bytes));
        }
        out
    }

    fn report(&self) -> PeerReport {
        self.task.peer_report()
    }

    fn rejected(&self, reason: &str) -> u64 {
        self.report()
            .counters
            .rejected
            .get(reason)
            .copied()
            .unwrap_or(0)
    }

    /// The next internal event (a refresh result), processed.
    async fn next_internal(&mut self) {
        let event = tokio::time::timeout(Duration::from_secs(5), self.internal.recv())
            .await
            .expect("internal event in time")
            .expect("internal channel open");
        self.task.process(event).await;
    }

    async fn arp(&self) -> Vec<ArpReportEntry> {
        let mut entries = self
            .task
            .arp_report()
            .with_kernel_state(&*self.kernel)
            .await;
        for e in &mut entries {
            e.age_ms = 0;
        }
        entries
    }
}

fn ip(last: u8) -> Ipv4Addr {
    host(last).1
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn replies_captured_before_the_hello_go_out_with_it_and_mclag_hears_of_the_session() {
    let mut h = Harness::new("");
    let hello = h.connect().await;
    assert_eq!(hello.boot_id, OUR_BOOT);
    assert_eq!(hello.ports, vec![(1, PORT1_MAC), (2, PORT2_MAC)]);
    assert_eq!(hello.resume, None);
    assert_eq!(hello.max_frame, Some(16 * 1024));
    assert_eq!(h.report().state, "opening");

    h.capture(3).await;
    assert!(h.written().is_empty(), "nothing is sent before the hello");
    assert_eq!(h.report().counters.queued_while_down, 1);

    h.inbound(peer_hello(PEER_BOOT, None)).await;
    assert_eq!(h.written(), vec![Written::Sync(1, vec![ip(3)])]);
    match h.sessions.try_recv() {
        Ok(SessionEvent::Up {
            mclag_address,
            ports,
            port_mtus,
            port_vlans,
            capabilities,
        }) => {
            assert_eq!(port_mtus, [(1, 9000)], "the peer's MTUs reach MC-LAG");
            assert_eq!(
                port_vlans,
                [(1, vec![(10, 0), (20, 7)])].into(),
                "the peer's VLAN map reaches MC-LAG"
            );
            assert_eq!(capabilities, wire::capability::ARP_SYNC);
            assert_eq!(mclag_address, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))));
            assert_eq!(ports, vec![(1, PEER_MAC)]);
        }
        other => panic!("expected SessionEvent::Up, got {other:?}"),
    }
    let report = h.report();
    assert_eq!(report.state, "up");
    assert_eq!(report.peer_name.as_deref(), Some("b"));
    assert_eq!(report.peer_boot_id, Some(PEER_BOOT));
    assert_eq!(report.negotiated_version.as_deref(), Some("1.1"));
    assert_eq!(report.unacked, 1);
    assert_eq!(report.next_seq, 2);

    h.inbound(ack_frame(Some(1))).await;
    let report = h.report();
    assert_eq!((report.acked_seq, report.unacked), (1, 0));
    assert_eq!(report.counters.acks_received, 1);
    let (mac, _) = host(3);
    assert_eq!(
        h.arp().await,
        vec![ArpReportEntry {
            ip: "10.0.9.3".into(),
            mac,
            port: "p1".into(),
            mlag_id: 1,
            outer_vlan: 0,
            inner_vlan: 0,
            direction: "sent".into(),
            class: "peer".into(),
            age_ms: 0,
            how: "acked".into(),
            // Learnt here too (SPEC 1.2); the fake kernel holds no entry.
            kernel_state: Some("absent".into()),
            learnt_here: Some("kernel-arp".into()),
            confirmed: None,
        }]
    );
}

/// A burst is cut into frames of `batch_max_entries`: full batches go out
/// at once, the rest when the loop flushes (idle or timer).
#[tokio::test]
async fn a_burst_is_batched_up_to_batch_max_entries() {
    let mut h = Harness::new("batch_max_entries = 4");
    h.establish(PEER_BOOT, None).await;
    for last in 1..=10 {
        h.capture(last).await;
    }
    assert_eq!(
        h.written(),
        vec![
            Written::Sync(1, (1..=4).map(ip).collect()),
            Written::Sync(2, (5..=8).map(ip).collect()),
        ]
    );
    assert_eq!(h.report().pending, 2);
    assert!(h.task.flush_at.is_some(), "the rest waits for a flush");
    h.task.flush().await;
    assert_eq!(h.written(), vec![Written::Sync(3, vec![ip(9), ip(10)])]);
    let report = h.report();
    assert_eq!(
        (report.counters.frames_sent, report.counters.entries_sent),
        (3, 10)
    );
    assert_eq!((report.pending, report.unacked), (0, 10));
}

/// The next frame written other than SYNC_DONE.
async fn next_frame(wire: &mut mpsc::Receiver<bytes::Bytes>) -> Written {
    loop {
        let bytes = tokio::time::timeout(Duration::from_secs(5), wire.recv())
            .await
            .expect("a frame in time")
            .expect("writer open");
        match read(&bytes) {
            Written::SyncDone(_) => continue,
            frame => return frame,
        }
    }
}

/// The real event loop over channels: a lone capture goes out at once (no
/// delay configured), queries are answered, and the loop ends when its
/// handles are gone.
#[tokio::test]
async fn the_loop_sends_a_lone_capture_at_once() {
    let mut h = Harness::new("");
    h.establish(PEER_BOOT, None).await;
    let (captures_tx, captures) = mpsc::channel(64);
    let (queries_tx, queries) = mpsc::channel(4);
    let (ports_tx, ports_rx) = watch::channel(ports());
    let (_liveness_tx, liveness) = mpsc::channel(4);
    let (_neighbours_tx, neighbours) = mpsc::channel(4);
    let (_links_tx, links) = mpsc::channel(4);
    let Harness {
        task,
        internal,
        mut wire,
        ..
    } = h;
    let running = tokio::spawn(task.run(Inputs {
        queries,
        captures,
        ports: ports_rx,
        internal,
        liveness,
        neighbours,
        links,
    }));
    captures_tx.send(vec![captured(11)].into()).await.unwrap();
    assert_eq!(next_frame(&mut wire).await, Written::Sync(1, vec![ip(11)]));
    captures_tx.send(vec![captured(12)].into()).await.unwrap();
    assert_eq!(next_frame(&mut wire).await, Written::Sync(2, vec![ip(12)]));
    // One read of the ring buffer is one batch: its replies go out in one
    // frame, in ring order.
    captures_tx
        .send(vec![captured(13), captured(14), captured(15)].into())
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut wire).await,
        Written::Sync(3, vec![ip(13), ip(14), ip(15)])
    );

    let (tx, rx) = tokio::sync::oneshot::channel();
    queries_tx.send(Query::Peer(tx)).await.unwrap();
    let report = rx.await.unwrap();
    assert_eq!(report.counters.frames_sent, 3);
    assert_eq!(report.state, "up");

    // A dropped ports watch does not end the loop; dropped handles do.
    drop(ports_tx);
    drop(queries_tx);
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the loop ends when the handles are gone")
        .unwrap();
}

#[tokio::test]
async fn a_hello_that_resumes_our_run_gets_only_the_unacknowledged_entries() {
    let mut h = Harness::new("");
    h.establish(PEER_BOOT, None).await;
    for last in 1..=3 {
        h.capture(last).await;
        h.task.flush().await;
    }
    assert_eq!(
        h.written(),
        vec![
            Written::Sync(1, vec![ip(1)]),
            Written::Sync(2, vec![ip(2)]),
            Written::Sync(3, vec![ip(3)]),
        ]
    );
    h.inbound(ack_frame(Some(1))).await;

    let conn = h.conn;
    h.task
        .process(Event::Closed {
            conn,
            why: "read: connection reset".into(),
        })
        .await;
    assert_eq!(h.report().state, "down");
    assert_eq!(h.report().counters.sessions_lost, 1);

    // The peer applied up to frame 2 of our run: only frame 3's entry again.
    let resent = h.establish(PEER_BOOT, Some((OUR_BOOT, 2))).await;
    assert_eq!(resent, vec![Written::Sync(4, vec![ip(3)])]);
    let report = h.report();
    assert_eq!(report.acked_seq, 2);
    assert_eq!(report.counters.sessions_established, 2);
    // The same peer run: no neighbour refresh this time.
    assert_eq!(report.counters.refreshes, 1);

    // A RESUME naming another run of ours counts for nothing: all again.
    h.task
        .process(Event::Closed {
            conn: h.conn,
            why: "eof".into(),
        })
        .await;
    let resent = h.establish(PEER_BOOT, Some((OUR_BOOT + 1, 4))).await;
    assert_eq!(resent, vec![Written::Sync(5, vec![ip(1), ip(2), ip(3)])]);
}

#[tokio::test]
async fn a_synced_reply_is_injected_on_the_twin_port_to_its_mac_and_acked() {
    let mut h = Harness::new("");
    h.establish(PEER_BOOT, None).await;
    let (mac, host_ip) = host(7);
    let original = arp_reply(PEER_MAC, mac, host_ip);
    h.kernel.log().neighbours.push(Neighbour {
        ifindex: 11,
        ip: host_ip,
        mac: Some(mac),
        state: "REACHABLE",
    });
    h.inbound(sync_frame(9, &[(driver(1), original.clone())]))
        .await;

    let mut expected = original.clone();
    expected[..6].copy_from_slice(&PORT1_MAC.0);
    assert_eq!(h.kernel.log().injected, vec![(11, expected)]);
    assert_eq!(h.written(), vec![Written::Ack(9)]);
    let report = h.report();
    assert_eq!(report.counters.frames_received, 1);
    assert_eq!(report.counters.entries_received, 1);
    assert_eq!(report.counters.injected, 1);
    assert_eq!(report.learnt, 1);
    assert_eq!(
        h.arp().await,
        vec![ArpReportEntry {
            ip: host_ip.to_string(),
            mac,
            port: "p1".into(),
            mlag_id: 1,
            outer_vlan: 0,
            inner_vlan: 0,
            direction: "received".into(),
            class: "own".into(),
            age_ms: 0,
            how: "kernel-arp".into(),
            kernel_state: Some("REACHABLE".into()),
            learnt_here: None,
            confirmed: Some(true),
        }]
    );

    // Our next hello tells the peer what we applied of its run.
    let conn = h.conn;
    h.task
        .process(Event::Closed {
            conn,
            why: "eof".into(),
        })
        .await;
    assert_eq!(h.connect().await.resume, Some((PEER_BOOT, 9)));
}

#[tokio::test]
async fn when_injection_fails_the_entry_is_written_over_netlink_and_counted() {
    let mut h = Harness::new("");
    h.establish(PEER_BOOT, None).await;
    h.kernel.log().fail_inject = true;
    let (mac, host_ip) = host(8);
    h.inbound(sync_frame(
        1,
        &[(driver(2), arp_reply(PEER_MAC, mac, host_ip))],
    ))
    .await;
    assert_eq!(h.kernel.log().reachable, vec![(12, host_ip, mac)]);
    assert_eq!(h.report().counters.netlink_fallback, 1);
    // This switch's failure, not the peer's input.
    assert_eq!(h.report().counters.local_failures["inject_failed"], 1);
    assert_eq!(h.rejected("inject_failed"), 0);
    let arp = h.arp().await;
    assert_eq!(arp[0].how, "netlink-fallback");
    assert_eq!(arp[0].port, "p2");
    assert_eq!(arp[0].kernel_state.as_deref(), Some("absent"));
    assert_eq!(arp[0].confirmed, Some(false), "the kernel does not hold it");
}

#[tokio::test]
async fn a_peer_restart_brings_a_refresh_and_a_full_resend() {
    let mut h = Harness::new("");
    h.kernel.log().neighbours = vec![
        Neighbour {
            ifindex: 11,
            ip: ip(1),
            mac: Some(host(1).0),
            state: "STALE",
        },
        Neighbour {
            ifindex: 12,
            ip: ip(2),
            mac: Some(host(2).0),
            state: "REACHABLE",
        },
        Neighbour {
            ifindex: 11,
            ip: ip(3),
            mac: None,
            state: "FAILED",
        },
        // Not a member port: left alone.
        Neighbour {
            ifindex: 99,
            ip: ip(4),
            mac: Some(host(4).0),
            state: "REACHABLE",
        },
    ];
    h.task
        .process(Event::Liveness(Liveness::Up { boot_id: PEER_BOOT }))
        .await;
    assert_eq!(h.report().state, "connecting");
    assert!(h.wanted.has_changed().unwrap(), "a connection is asked for");
    h.wanted.mark_unchanged();

    h.establish(PEER_BOOT, None).await;
    h.next_internal().await; // the first peer run is new to us: refreshed too
    h.capture(1).await;
    h.capture(2).await;
    h.task.flush().await;
    h.inbound(ack_frame(Some(1))).await;
    assert_eq!(h.written(), vec![Written::Sync(1, vec![ip(1), ip(2)])]);
    h.kernel.log().probed.clear();

    // The peer agent restarts: its old connection ends with the old process
    // and keepalives carry another boot id (believed only once a hello says
    // so: see a_keepalive_boot_change_alone_neither_closes_nor_resyncs).
    let conn = h.conn;
    h.task
        .process(Event::Closed {
            conn,
            why: "eof".into(),
        })
        .await;
    h.task
        .process(Event::Liveness(Liveness::Up { boot_id: 300 }))
        .await;
    assert_eq!(h.report().state, "connecting");
    assert!(h.wanted.has_changed().unwrap());
    let resent = h.establish(300, None).await;
    assert_eq!(resent, vec![Written::Sync(2, vec![ip(1), ip(2)])]);
    h.next_internal().await;
    assert_eq!(h.kernel.log().probed, vec![ip(1), ip(2)]);
    let report = h.report();
    assert_eq!(report.counters.refreshes, 2);
    assert_eq!(report.counters.refresh_probes, 4);
    assert_eq!(report.counters.sessions_lost, 1);
    assert_eq!(report.peer_boot_id, Some(300));

    // Keepalives stop: the session goes and MC-LAG hears of it.
    h.task.process(Event::Liveness(Liveness::Down)).await;
    assert_eq!(h.report().state, "down");
    let mut events = Vec::new();
    while let Ok(event) = h.sessions.try_recv() {
        events.push(event);
    }
    assert!(matches!(
        events.as_slice(),
        [
            SessionEvent::Up { .. },
            SessionEvent::Up { .. },
            SessionEvent::Lost
        ]
    ));
}

#[tokio::test]
async fn bad_input_is_counted_under_its_reason_and_never_kills_the_session() {
    let mut h = Harness::new("");
    h.capture(1).await;
    h.task
        .process(Event::Captures(
            vec![Captured {
                ifindex: 77,
                ..captured(2)
            }]
            .into(),
        ))
        .await;
    assert_eq!(h.rejected("capture_on_unknown_port"), 1);

    h.connect().await;
    h.inbound(sync_frame(1, &[])).await;
    assert_eq!(h.rejected("before_hello"), 1);
    h.inbound(peer_hello(PEER_BOOT, None)).await;
    h.written();

    // An entry for an MLAG id no member port has: counted, frame still acked.
    let (mac, host_ip) = host(5);
    h.inbound(sync_frame(
        3,
        &[
            (driver(9), arp_reply(PEER_MAC, mac, host_ip)),
            (driver(1), arp_reply(PEER_MAC, mac, host_ip)),
        ],
    ))
    .await;
    assert_eq!(h.rejected("unknown_mlag_id"), 1);
    // One injection for the valid entry, after the one that learnt the
    // first capture here (SPEC 1.2).
    assert_eq!(h.kernel.log().injected.len(), 2);
    assert_eq!(h.written(), vec![Written::Ack(3)]);

    h.inbound(ack_frame(None)).await;
    assert_eq!(h.rejected("bad_tlv"), 1);
    h.inbound(peer_hello(PEER_BOOT, None)).await;
    assert_eq!(h.rejected("unexpected_hello"), 1);
    let mut truncated = sync_frame(4, &[(driver(1), arp_reply(PEER_MAC, mac, host_ip))]);
    truncated.truncate(30);
    h.inbound(truncated).await;
    assert_eq!(h.rejected("truncated"), 1);
    h.inbound(vec![0xde; 40]).await;
    assert_eq!(h.rejected("bad_magic"), 1);
    let conn = h.conn;
    h.task
        .process(Event::Malformed {
            conn,
            error: DecodeError::UnknownType(9),
            fatal: false,
        })
        .await;
    assert_eq!(h.rejected("unknown_type"), 1);
    h.task
        .process(Event::Rejected {
            reason: "keepalive_from_stranger",
            count: 1,
            detail: "from 10.9.9.9".into(),
        })
        .await;
    assert_eq!(h.rejected("keepalive_from_stranger"), 1);
    // Datagrams the keepalive thread counted together count each.
    h.task
        .process(Event::Rejected {
            reason: "keepalive_from_stranger",
            count: 40,
            detail: "from 10.9.9.9".into(),
        })
        .await;
    assert_eq!(h.rejected("keepalive_from_stranger"), 41);
    // Events of an old connection change nothing.
    h.task
        .process(Event::Closed {
            conn: conn + 10,
            why: "stale".into(),
        })
        .await;
    assert_eq!(h.report().state, "up", "none of that closed the session");

    // A header we cannot trust loses the framing: the session goes.
    h.task
        .process(Event::Malformed {
            conn,
            error: DecodeError::IncompatibleVersion { major: 2, minor: 0 },
            fatal: true,
        })
        .await;
    assert_eq!(h.rejected("bad_version"), 1);
    assert_eq!(h.report().state, "down");

    // A hello without a boot id is refused and closes the connection.
    h.connect().await;
    let mut buf = vec![0u8; 64];
    let mut e = Encoder::new(&mut buf, MessageType::Hello, SubType::None, 0).unwrap();
    e.tlv(wire::tlv::SYSTEM_NAME, &[b"b"]).unwrap();
    let len = e.finish();
    buf.truncate(len);
    h.inbound(buf).await;
    assert_eq!(h.rejected("bad_hello"), 1);
    assert_eq!(h.report().state, "down");
}

#[tokio::test]
async fn a_stuck_mclag_never_blocks_peer_sync() {
    let mut h = Harness::with_session_queue("", 1);
    h.task.process(Event::Liveness(Liveness::Down)).await; // fills the queue
    let resent = tokio::time::timeout(Duration::from_secs(5), h.establish(PEER_BOOT, None))
        .await
        .expect("the hello is handled without waiting on MC-LAG");
    assert!(resent.is_empty());
    assert_eq!(h.report().counters.session_events_dropped, 1);
    assert_eq!(h.report().state, "up");
}

#[tokio::test]
async fn member_port_changes_set_arp_accept_per_policy() {
    let mut h = Harness::new("");
    let mut changed = ports();
    changed[1].ifindex = None; // p2 went away
    changed.push(MemberPort {
        name: "p3".into(),
        mlag_id: 3,
        ifindex: Some(13),
        mac: None,
        mtu: None,
    });
    h.task.process(Event::Ports(changed.clone())).await;
    assert_eq!(h.kernel.log().arp_accept, vec!["p1", "p3"]);
    h.task.process(Event::Ports(changed)).await;
    assert_eq!(
        h.kernel.log().arp_accept.len(),
        2,
        "an unchanged list is a no-op"
    );

    let mut h = Harness::new("arp_accept = \"leave\"");
    let mut changed = ports();
    changed.pop();
    h.task.process(Event::Ports(changed)).await;
    assert!(h.kernel.log().arp_accept.is_empty());
}

#[tokio::test]
async fn shutdown_puts_back_the_arp_accept_each_interface_had_and_ends_the_loop() {
    let h = Harness::new("");
    {
        let mut log = h.kernel.log();
        log.arp_accept_values.insert("p1".into(), 2);
        log.arp_accept_values.insert("p3".into(), 1);
    }
    let mut changed = ports();
    changed.push(MemberPort {
        name: "p3".into(),
        mlag_id: 3,
        ifindex: Some(13),
        mac: None,
        mtu: None,
    });
    let (queries_tx, queries) = mpsc::channel(4);
    let (_captures_tx, captures) = mpsc::channel(4);
    let (ports_tx, ports_rx) = watch::channel(ports());
    let (_liveness_tx, liveness) = mpsc::channel(4);
    let Harness {
        task,
        kernel,
        internal,
        ..
    } = h;
    let running = tokio::spawn(task.run(Inputs {
        queries,
        captures,
        ports: ports_rx,
        internal,
        liveness,
        neighbours: mpsc::channel(1).1,
        links: mpsc::channel(1).1,
    }));
    ports_tx.send(changed).unwrap();
    // A query answered after the ports change means the change was applied.
    let (tx, rx) = tokio::sync::oneshot::channel();
    queries_tx.send(Query::Peer(tx)).await.unwrap();
    rx.await.unwrap();
    assert_eq!(
        kernel.log().arp_accept,
        vec!["p1", "p2"],
        "p3 already accepts: nothing of ours to set or undo"
    );

    let (tx, rx) = tokio::sync::oneshot::channel();
    queries_tx.send(Query::Shutdown(tx)).await.unwrap();
    rx.await.expect("shutdown is answered");
    {
        let log = kernel.log();
        assert_eq!(
            log.arp_accept_restored,
            vec![("p1".to_string(), 2), ("p2".to_string(), 0)]
        );
        assert_eq!(log.arp_accept_values.get("p1"), Some(&2));
        assert_eq!(log.arp_accept_values.get("p2"), Some(&0));
        assert_eq!(log.arp_accept_values.get("p3"), Some(&1));
    }
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the loop ends at shutdown, though its handle is still held")
        .unwrap();
    drop(queries_tx);
}

#[tokio::test]
async fn a_tagged_reply_goes_untagged_to_its_vlan_interface() {
    let mut h =
        Harness::new("[[vlan_interfaces]]\nmlag_id = 1\nouter_vlan = 10\ninterface = \"p1.10\"\n");
    let svi_mac = MacAddr([2, 0, 0, 0, 0x10, 0xa1]);
    h.kernel.log().links.insert("p1.10".into(), (21, svi_mac));
    let ours = h.connect().await;
    assert_eq!(
        ours.port_vlans,
        [(1, vec![(10, 0)]), (2, vec![])],
        "our hello reports the VLAN interface map for the consistency check"
    );
    h.inbound(peer_hello(PEER_BOOT, None)).await;
    h.written();
    let (mac, host_ip) = host(6);
    let untagged = arp_reply(PEER_MAC, mac, host_ip);
    let mut tagged = untagged[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 10]);
    tagged.extend_from_slice(&untagged[12..]);
    let mut d = driver(1);
    d.outer_vlan = 10;
    d.vlan_count = 1;
    h.inbound(sync_frame(1, &[(d, tagged)])).await;

    let mut expected = untagged;
    expected[..6].copy_from_slice(&svi_mac.0);
    assert_eq!(h.kernel.log().injected, vec![(21, expected)]);
    assert_eq!(h.kernel.log().arp_accept, vec!["p1.10"]);
    let arp = h.arp().await;
    assert_eq!(arp[0].port, "p1 via p1.10");
    assert_eq!(arp[0].outer_vlan, 10);
}

// ------------------------------------------- a stuck peer never blocks us

/// A real TCP connection on loopback, as `session::accept`/`connect` hand
/// it over (the test keeps the other end).
async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (accepted.unwrap().0, client.unwrap())
}

/// The peer stops reading: the writer's queue fills. Sending never waits:
/// the rest of the batch is held back (flow control), and once the queue
/// has not drained for the dead interval, and at least a second (a slow
/// reader is not a stuck one), the session is declared stuck and
/// closed, the entries stay, a new connection is asked for, and the next
/// session gets every entry the peer did not acknowledge.
#[tokio::test]
async fn a_full_writer_queue_closes_the_stuck_session_and_keeps_the_entries() {
    let mut h = Harness::new("keepalive_interval_ms = 10\ndead_interval_ms = 20");
    h.task
        .process(Event::Liveness(Liveness::Up { boot_id: PEER_BOOT }))
        .await;
    h.wanted.mark_unchanged();
    // Room for one frame (the test took our hello off it); from now on the
    // peer reads nothing.
    h.connect_with_queue(1).await;
    h.inbound(peer_hello(PEER_BOOT, None)).await;
    h.next_internal().await; // the refresh of a peer run new to us
    // Nothing to resend: the end of the bulk sync goes out at once, with
    // no frame before it. The test reads it to free the queue's one slot.
    assert_eq!(h.written_all(), vec![Written::SyncDone(0)]);
    let stuck = async {
        h.capture(1).await;
        h.task.flush().await; // frame 1 fills the queue
        h.capture(2).await;
        h.task.flush().await; // frame 2 does not fit: held back
        assert_eq!(h.report().counters.sessions_stalled, 0, "not yet");
        tokio::time::sleep(Duration::from_millis(25)).await;
        h.task.flush().await; // the dead interval is over, the floor is not
        assert_eq!(
            h.report().counters.sessions_stalled,
            0,
            "not after the 20 ms dead interval alone"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
        h.task.flush().await; // still no room after a second
    };
    tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("a full writer queue never blocks the task");
    let report = h.report();
    assert_eq!(report.counters.sessions_stalled, 1);
    assert_eq!(
        report.state, "connecting",
        "closed; the peer is still alive"
    );
    assert!(
        h.wanted.has_changed().unwrap(),
        "a new connection is asked for"
    );
    assert_eq!((report.entries, report.pending, report.unacked), (2, 1, 1));
    assert_eq!(report.next_seq, 2, "the refused frame did not use a number");
    // What the stuck peer got before: frame 1 (never acked).
    assert_eq!(h.written(), vec![Written::Sync(1, vec![ip(1)])]);

    // The next session (same peer run, nothing applied from frame 1 on):
    // both entries go out again.
    let resent = h.establish(PEER_BOOT, Some((OUR_BOOT, 0))).await;
    assert_eq!(resent, vec![Written::Sync(2, vec![ip(1), ip(2)])]);
    assert_eq!(
        h.report().counters.refreshes,
        1,
        "no refresh: same peer run"
    );
}

/// Acks follow the same rule: a sync frame whose ack does not fit closes
/// the stuck session instead of waiting.
#[tokio::test]
async fn an_ack_into_a_full_writer_queue_closes_the_session_without_waiting() {
    let mut h = Harness::new("");
    h.connect_with_queue(1).await;
    h.inbound(peer_hello(PEER_BOOT, None)).await;
    h.capture(1).await;
    h.task.flush().await; // frame 1 fills the queue; the peer reads nothing
    let (mac, host_ip) = host(4);
    let frame = sync_frame(1, &[(driver(1), arp_reply(PEER_MAC, mac, host_ip))]);
    tokio::time::timeout(Duration::from_secs(5), h.inbound(frame))
        .await
        .expect("the ack never waits");
    let report = h.report();
    assert_eq!(report.counters.sessions_stalled, 1);
    assert_eq!(report.state, "down");
    // The capture was learnt here (SPEC 1.2), then the synced entry itself.
    assert_eq!(
        h.kernel.log().injected.len(),
        2,
        "the entry itself was learnt"
    );
}

/// A connection that never says hello holds the session slot only for
/// `hello_timeout_ms`; one that did is left alone by its timer.
#[tokio::test]
async fn a_connection_without_a_hello_is_closed_after_hello_timeout_ms() {
    let mut h = Harness::new("hello_timeout_ms = 100");
    h.task
        .process(Event::Liveness(Liveness::Up { boot_id: PEER_BOOT }))
        .await;
    h.wanted.mark_unchanged();
    h.connect().await;
    assert_eq!(h.report().state, "opening");
    h.next_internal().await; // the hello deadline
    let report = h.report();
    assert_eq!(report.counters.hello_timeouts, 1);
    assert_eq!(report.state, "connecting");
    assert!(
        h.wanted.has_changed().unwrap(),
        "a new connection is asked for"
    );
    h.wanted.mark_unchanged();

    // A connection that says hello in time is not touched by its deadline.
    h.establish(PEER_BOOT, None).await;
    h.next_internal().await; // the refresh
    h.next_internal().await; // the deadline, late: ignored
    let report = h.report();
    assert_eq!(report.state, "up");
    assert_eq!(report.counters.hello_timeouts, 1);
}

/// On the accepting side: a second connection from the peer is refused
/// while the session is healthy (heard recently, or quiet but vouched for
/// by keepalives of the same run), and replaces a stale one: no hello yet,
/// or silent for the dead interval while keepalives name another run.
#[tokio::test]
async fn a_stale_session_is_replaced_by_a_new_connection_and_a_healthy_one_is_not() {
    let mut h = Harness::accepting("");
    h.task
        .process(Event::Liveness(Liveness::Up { boot_id: PEER_BOOT }))
        .await;
    h.establish(PEER_BOOT, None).await;
    let (stream, _keep1) = tcp_pair().await;
    h.task.process(Event::Connected { stream }).await;
    assert_eq!(h.rejected("duplicate_connection"), 1);
    assert_eq!(h.report().state, "up");

    // Silent for longer than the dead interval, but the keepalives still
    // carry the session's boot id: an idle session, healthy.
    let silent = |h: &mut Harness| {
        let s = h.task.session.as_mut().unwrap();
        s.last_heard -= Duration::from_millis(h.task.config.dead_interval_ms + 1);
    };
    silent(&mut h);
    let (stream, _keep2) = tcp_pair().await;
    h.task.process(Event::Connected { stream }).await;
    assert_eq!(h.rejected("duplicate_connection"), 2);
    assert_eq!(h.report().counters.sessions_replaced, 0);

    // Keepalives of another run, and the session silent: stale, replaced.
    h.task
        .process(Event::Liveness(Liveness::Up { boot_id: 300 }))
        .await;
    assert_eq!(h.report().state, "up", "the keepalive alone closes nothing");
    let (stream, _keep3) = tcp_pair().await;
    h.task.process(Event::Connected { stream }).await;
    let report = h.report();
    assert_eq!(report.counters.sessions_replaced, 1);
    assert_eq!(report.counters.sessions_lost, 1);
    assert_eq!(
        report.state, "opening",
        "the new connection awaits its hello"
    );

    // A connection that never said hello is replaced at once.
    let (stream, _keep4) = tcp_pair().await;
    h.task.process(Event::Connected { stream }).await;
    let report = h.report();
    assert_eq!(report.counters.sessions_replaced, 2);
    assert_eq!(h.rejected("duplicate_connection"), 2);
}

/// A keepalive naming another boot id (UDP, forgeable) closes nothing and
/// resyncs nothing: it is counted and logged; only a hello can say the peer
/// restarted. Once the session is silent, a new connection is asked for.
#[tokio::test]
async fn a_keepalive_boot_change_alone_neither_closes_nor_resyncs() {
    let mut h = Harness::new("");
    h.task
        .process(Event::Liveness(Liveness::Up { boot_id: PEER_BOOT }))
        .await;
    h.establish(PEER_BOOT, None).await;
    h.next_internal().await; // refresh of the first peer run
    h.capture(1).await;
    h.task.flush().await;
    h.inbound(ack_frame(Some(1))).await;
    h.written();
    h.wanted.mark_unchanged();
    h.kernel.log().probed.clear();
    h.kernel.log().neighbours = vec![Neighbour {
        ifindex: 11,
        ip: ip(1),
        mac: Some(host(1).0),
        state: "REACHABLE",
    }];

    h.task
        .process(Event::Liveness(Liveness::Up { boot_id: 666 }))
        .await;
    let report = h.report();
    assert_eq!(report.counters.keepalive_boot_changed, 1);
    assert_eq!(report.state, "up");
    assert_eq!(report.peer_boot_id, Some(PEER_BOOT));
    assert_eq!(
        (report.pending, report.unacked),
        (0, 0),
        "nothing to resend"
    );
    assert_eq!(report.counters.refreshes, 1, "no re-probe");
    assert_eq!(report.counters.sessions_lost, 0);
    assert!(h.written().is_empty());
    assert!(
        !h.wanted.has_changed().unwrap(),
        "the session is heard from"
    );

    // The session falls silent while keepalives name the other run: a
    // connection is asked for (its hello will tell which run is real).
    h.task.session.as_mut().unwrap().last_heard -= Duration::from_secs(1);
    h.task
        .process(Event::Liveness(Liveness::Up { boot_id: PEER_BOOT }))
        .await;
    h.task
        .process(Event::Liveness(Liveness::Up { boot_id: 666 }))
        .await;
    assert_eq!(h.report().counters.keepalive_boot_changed, 3);
    assert!(h.wanted.has_changed().unwrap());
    assert!(h.task.session_is_stale());
    assert_eq!(h.report().counters.refreshes, 1);
    assert!(h.kernel.log().probed.is_empty());
}

/// Sequence numbers wrap from u32::MAX to 1 (0 means "not sent"): acks,
/// resend after RESUME and what we tell back in RESUME stay right across it.
#[tokio::test]
async fn sequence_numbers_stay_ordered_across_the_wrap() {
    let mut h = Harness::new("");
    h.establish(PEER_BOOT, None).await;
    h.task.next_seq = u32::MAX - 1;
    h.task.acked = u32::MAX - 2;
    for last in 1..=4 {
        h.capture(last).await;
        h.task.flush().await;
    }
    assert_eq!(
        h.written(),
        vec![
            Written::Sync(u32::MAX - 1, vec![ip(1)]),
            Written::Sync(u32::MAX, vec![ip(2)]),
            Written::Sync(1, vec![ip(3)]),
            Written::Sync(2, vec![ip(4)]),
        ]
    );
    h.inbound(ack_frame(Some(u32::MAX))).await;
    assert_eq!((h.report().acked_seq, h.report().unacked), (u32::MAX, 2));
    // A late, older ack does not move it back.
    h.inbound(ack_frame(Some(u32::MAX - 1))).await;
    assert_eq!(h.report().acked_seq, u32::MAX);
    h.inbound(ack_frame(Some(1))).await;
    assert_eq!((h.report().acked_seq, h.report().unacked), (1, 1));
    let arp = h.arp().await;
    let how: Vec<&str> = arp.iter().map(|e| e.how.as_str()).collect();
    assert_eq!(how, vec!["acked", "acked", "acked", "sent"]);

    // RESUME after the wrap: only frame 2's entry again.
    h.task
        .process(Event::Closed {
            conn: h.conn,
            why: "eof".into(),
        })
        .await;
    let resent = h.establish(PEER_BOOT, Some((OUR_BOOT, 1))).await;
    assert_eq!(resent, vec![Written::Sync(3, vec![ip(4)])]);

    // Frames received across the wrap: RESUME tells the newest.
    let (mac, host_ip) = host(9);
    for seq in [u32::MAX, 1] {
        h.inbound(sync_frame(
            seq,
            &[(driver(1), arp_reply(PEER_MAC, mac, host_ip))],
        ))
        .await;
    }
    h.task
        .process(Event::Closed {
            conn: h.conn,
            why: "eof".into(),
        })
        .await;
    assert_eq!(h.connect().await.resume, Some((PEER_BOOT, 1)));
}

#[test]
fn peer_report_text_is_unchanged() {
    let h = Harness::new("");
    let text = h.report().to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            "peer 10.0.0.2 (?), session down, no keepalives (this side connects)",
            "versions local 1.1 peer - negotiated -",
            "last hello - ms ago, up - s, keepalive 100 ms / dead 500 ms",
            "entries 0 pending 0 unacked 0 (acked seq 0, next 1), learnt from peer 0 (injected by fake)",
            "sent 0 frames / 0 entries, received 0 frames / 0 entries, acks 0",
            "injected 0 netlink fallback 0 refreshes 0 (0 probes) sessions up 0 lost 0",
        ]
    );
    assert!(text.ends_with('\n'));
}

/// SPEC 1.2: a `peer`-class reply is also handed to this switch's kernel,
/// on the port it arrived on, addressed to that port; `own` replies and
/// replies already addressed to the port (the MC-LAG shared MAC) are not.
#[tokio::test]
async fn a_peer_class_reply_is_learnt_here_too_on_its_port() {
    let mut h = Harness::new("");
    h.capture(1).await;
    let (mac, ip) = host(1);
    {
        let log = h.kernel.log();
        assert_eq!(log.injected.len(), 1);
        let (ifindex, frame) = &log.injected[0];
        assert_eq!(*ifindex, 11);
        assert_eq!(frame[..6], PORT1_MAC.0, "destination rewritten to the port");
        assert_eq!(frame[6..], arp_reply(PEER_MAC, mac, ip)[6..]);
    }
    assert_eq!(h.report().counters.learnt_here, 1);
    h.task
        .process(Event::Captures(
            vec![Captured {
                class: Class::Own,
                ..captured(2)
            }]
            .into(),
        ))
        .await;
    h.task
        .process(Event::Captures(
            vec![Captured {
                dst_mac: PORT1_MAC,
                ..captured(3)
            }]
            .into(),
        ))
        .await;
    assert_eq!(h.kernel.log().injected.len(), 1, "nothing more injected");
    assert_eq!(h.report().counters.learnt_here, 1);
}

/// The peer's MACs from its hello go to the dataplane's peer table.
#[tokio::test]
async fn the_peer_macs_from_its_hello_are_published() {
    let mut h = Harness::new("");
    let (tx, rx) = watch::channel(std::collections::BTreeSet::new());
    h.task.peer_macs = Some(tx);
    h.establish(PEER_BOOT, None).await;
    assert_eq!(*rx.borrow(), [PEER_MAC].into_iter().collect());
}

// ------------------------------------------------------- tables age (#12)

fn neighbour(ifindex: u32, last: u8, state: &'static str) -> Neighbour {
    Neighbour {
        ifindex,
        ip: ip(last),
        mac: Some(host(last).0),
        state,
    }
}

fn neighbour6(ifindex: u32, last: u16, state: &'static str) -> Neighbour6 {
    Neighbour6 {
        ifindex,
        ip: std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last),
        mac: None,
        state,
    }
}

/// What reaches the task from the agent's neighbour changes: only
/// removals and entries turned FAILED, each family on its channel, in
/// order; a new, confirmed or stale entry never wakes the sync thread.
#[tokio::test]
async fn only_withdrawals_reach_the_task_from_the_neighbour_changes() {
    use crate::southbound::{neighbours::NeighbourChange, neighbours6::Neighbour6Event};
    let (changes, first) = tokio::sync::broadcast::channel(16);
    let (internal, mut to_task6) = mpsc::channel(16);
    let mut to_task = super::withdrawals(first, internal);
    for change in [
        NeighbourChange::V4(NeighbourEvent::Changed(neighbour(11, 1, "REACHABLE"))),
        NeighbourChange::V6(Neighbour6Event::Changed(neighbour6(11, 1, "FAILED"))),
        NeighbourChange::V4(NeighbourEvent::Changed(neighbour(11, 2, "FAILED"))),
        NeighbourChange::V6(Neighbour6Event::Changed(neighbour6(11, 2, "REACHABLE"))),
        NeighbourChange::V4(NeighbourEvent::Changed(neighbour(11, 3, "STALE"))),
        NeighbourChange::V4(NeighbourEvent::Removed(neighbour(11, 4, "STALE"))),
        NeighbourChange::V6(Neighbour6Event::Removed(neighbour6(11, 3, "STALE"))),
        NeighbourChange::V4(NeighbourEvent::Changed(neighbour(11, 5, "DELAY"))),
    ] {
        changes.send(change).unwrap();
    }
    drop(changes);
    let mut passed = Vec::new();
    while let Some(change) = to_task.recv().await {
        passed.push(match change {
            NeighbourEvent::Changed(n) => ("changed", n.ip),
            NeighbourEvent::Removed(n) => ("removed", n.ip),
        });
    }
    assert_eq!(passed, vec![("changed", ip(2)), ("removed", ip(4))]);
    let mut passed6 = Vec::new();
    while let Some(event) = to_task6.recv().await {
        let super::events::Event::Neighbour6(change) = event else {
            panic!("only ND withdrawals go to the task's internal input");
        };
        passed6.push(match change {
            Neighbour6Event::Changed(n) => ("changed", n.ip.segments()[7]),
            Neighbour6Event::Removed(n) => ("removed", n.ip.segments()[7]),
        });
    }
    assert_eq!(passed6, vec![("changed", 1), ("removed", 3)]);
}

/// A sync frame of deletes from the peer: (MLAG id, host).
fn delete_frame(seq: u32, deletes: &[(u32, u8)]) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let mut e = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, seq).unwrap();
    for (mlag_id, last) in deletes {
        e.arp_delete(&wire::ArpDelete {
            mlag_id: *mlag_id,
            vrf: 0,
            ip: ip(*last).octets(),
        })
        .unwrap();
    }
    let len = e.finish();
    buf.truncate(len);
    buf
}

/// The peer withdraws two entries: the one this switch learnt from the
/// peer is deleted from the kernel, the one it learnt on its own is not
/// touched; both are counted and the frame is acked. The kernel's report
/// of that removal is not withdrawn back to the peer.
#[tokio::test]
async fn a_withdraw_from_the_peer_deletes_only_the_entry_learnt_from_it() {
    let mut h = Harness::new("");
    h.establish(PEER_BOOT, None).await;
    let (mac7, ip7) = host(7);
    h.inbound(sync_frame(
        1,
        &[(driver(1), arp_reply(PEER_MAC, mac7, ip7))],
    ))
    .await;
    // The kernel holds 7 (learnt from the peer) and 8 (learnt by itself).
    h.kernel.log().neighbours = vec![neighbour(11, 7, "REACHABLE"), neighbour(11, 8, "REACHABLE")];
    // This switch also captured 7 itself: it is in the send table too.
    h.capture(7).await;
    h.task.flush().await;
    assert_eq!(
        h.written(),
        vec![Written::Ack(1), Written::Sync(1, vec![ip7])]
    );

    h.inbound(delete_frame(2, &[(1, 7), (1, 8)])).await;
    assert_eq!(
        h.kernel.log().deleted,
        vec![(11, ip7)],
        "only the learnt entry"
    );
    assert_eq!(h.written(), vec![Written::Ack(2)]);
    let report = h.report();
    assert_eq!(report.counters.deletes_received, 2);
    assert_eq!(report.counters.learnt_deleted, 1);
    assert_eq!(report.counters.deletes_not_learnt, 1);
    assert_eq!(report.learnt, 0, "dropped from the received table");
    assert_eq!(h.rejected("bad_tlv"), 0, "a delete is not hostile input");

    // Our kernel reports the removal we made: forgotten, not echoed.
    h.task
        .process(Event::Neighbour(NeighbourEvent::Removed(neighbour(
            11, 7, "NONE",
        ))))
        .await;
    h.task.flush().await;
    assert_eq!(h.written(), vec![]);
    let report = h.report();
    assert_eq!((report.entries, report.counters.withdrawn), (0, 0));
}

/// This switch's kernel drops an entry it synced (removed, or FAILED on
/// the bridge above the member port): the entry leaves the send table and
/// a delete goes to the peer. A state change that is not a loss, and a
/// loss on an interface unrelated to the member ports, withdraw nothing.
/// An unacknowledged delete is resent on the next session.
#[tokio::test]
async fn a_neighbour_the_kernel_dropped_is_withdrawn_from_the_peer() {
    let mut h = Harness::new("");
    h.kernel.log().controllers.insert(11, 30); // p1 is a port of bridge 30
    h.establish(PEER_BOOT, None).await;
    for last in 1..=3 {
        h.capture(last).await;
    }
    h.task.flush().await;
    h.inbound(ack_frame(Some(1))).await;
    assert_eq!(
        h.written(),
        vec![Written::Sync(1, vec![ip(1), ip(2), ip(3)])]
    );

    for event in [
        NeighbourEvent::Removed(neighbour(11, 1, "STALE")),
        NeighbourEvent::Changed(neighbour(30, 2, "FAILED")),
        NeighbourEvent::Changed(neighbour(11, 3, "STALE")),
        NeighbourEvent::Removed(neighbour(99, 3, "STALE")),
    ] {
        h.task.process(Event::Neighbour(event)).await;
        // One frame per event here, to see which frame the peer applied.
        h.task.flush().await;
    }
    assert_eq!(
        h.written(),
        vec![
            Written::Deletes(2, vec![ip(1)]),
            Written::Deletes(3, vec![ip(2)]),
        ]
    );
    let report = h.report();
    assert_eq!(report.counters.withdrawn, 2);
    assert_eq!(report.counters.deletes_sent, 2);
    assert_eq!(report.entries, 1);
    assert!(h.arp().await.iter().all(|e| e.ip == ip(3).to_string()));

    // The peer applied frame 2 only, then the session broke: the delete of
    // frame 3 goes again, and only that.
    h.task
        .process(Event::Closed {
            conn: h.conn,
            why: "eof".into(),
        })
        .await;
    let resent = h.establish(PEER_BOOT, Some((OUR_BOOT, 2))).await;
    assert_eq!(resent, vec![Written::Deletes(4, vec![ip(2)])]);
}

/// The received table is bounded by `max_learnt`: the least recently
/// learnt entry goes first (learning an entry again makes it recent), and
/// each eviction is counted.
#[tokio::test]
async fn the_received_table_forgets_the_least_recently_learnt_at_max_learnt() {
    let mut h = Harness::new("max_learnt = 16");
    h.establish(PEER_BOOT, None).await;
    let entry = |last: u8| {
        let (mac, host_ip) = host(last);
        (driver(1), arp_reply(PEER_MAC, mac, host_ip))
    };
    let first: Vec<_> = (1..=16).map(entry).collect();
    h.inbound(sync_frame(1, &first)).await;
    assert_eq!(
        (h.report().learnt, h.report().counters.learnt_evicted),
        (16, 0)
    );
    // 1 is learnt again (now the most recent); 17 and 18 push out 2 and 3.
    h.inbound(sync_frame(2, &[entry(1), entry(17), entry(18)]))
        .await;
    let report = h.report();
    assert_eq!((report.learnt, report.counters.learnt_evicted), (16, 2));
    let held: Vec<String> = h.arp().await.into_iter().map(|e| e.ip).collect();
    assert!(held.contains(&ip(1).to_string()));
    assert!(!held.contains(&ip(2).to_string()) && !held.contains(&ip(3).to_string()));
    assert!(held.contains(&ip(18).to_string()));
    // A delete for an evicted entry touches nothing.
    h.inbound(delete_frame(3, &[(1, 2)])).await;
    assert!(h.kernel.log().deleted.is_empty());
}

/// The re-probe covers every interface the kernel learns on above the
/// member ports (the ports, the configured VLAN interface, the bridge the
/// port is enslaved to and the bond above that), not unrelated ones, and
/// the probes go at the configured rate, not in a burst.
#[tokio::test]
async fn refresh_probes_every_interface_above_the_ports_at_the_configured_pace() {
    let mut h = Harness::new(
        "refresh_probes_per_s = 100\n[[vlan_interfaces]]\nmlag_id = 1\nouter_vlan = 10\ninterface = \"p1.10\"\n",
    );
    {
        let mut k = h.kernel.log();
        k.links
            .insert("p1.10".into(), (21, MacAddr([2, 0, 0, 0, 0x10, 0xa1])));
        k.controllers.insert(11, 30); // p1 -> bond 30
        k.controllers.insert(30, 31); // bond 30 -> bridge 31
        k.neighbours = vec![
            neighbour(11, 1, "REACHABLE"),
            neighbour(21, 2, "STALE"),
            neighbour(30, 3, "DELAY"),
            neighbour(31, 4, "REACHABLE"),
            neighbour(12, 5, "PROBE"),
            neighbour(99, 6, "REACHABLE"), // not above a member port
            neighbour(31, 7, "FAILED"),    // nothing to refresh
        ];
    }
    h.establish(PEER_BOOT, None).await;
    h.next_internal().await;
    let (probed, at) = {
        let k = h.kernel.log();
        (k.probed.clone(), k.probed_at.clone())
    };
    let mut probed_sorted = probed.clone();
    probed_sorted.sort();
    assert_eq!(probed_sorted, (1..=5).map(ip).collect::<Vec<_>>());
    let report = h.report();
    assert_eq!(report.counters.refresh_probes, 5);
    assert_eq!(report.counters.refresh_interfaces, 5, "11, 12, 21, 30, 31");
    // 100/s: five probes span four 10 ms intervals (the timer wheel has
    // 1 ms ticks, hence the slack); a burst would take well under 1 ms.
    let span = *at.last().unwrap() - at[0];
    assert!(span >= Duration::from_millis(36), "5 probes in {span:?}");
}

/// One MLAG id's refresh probes only the interfaces above that port.
#[tokio::test]
async fn a_refresh_of_one_mlag_id_probes_only_its_interfaces() {
    let mut h = Harness::new("");
    {
        let mut k = h.kernel.log();
        k.controllers.insert(12, 32);
        k.neighbours = vec![
            neighbour(11, 1, "REACHABLE"),
            neighbour(12, 2, "REACHABLE"),
            neighbour(32, 3, "STALE"),
        ];
    }
    h.task.refresh(Some(2)).await;
    h.next_internal().await;
    let mut probed = h.kernel.log().probed.clone();
    probed.sort();
    assert_eq!(probed, vec![ip(2), ip(3)]);
}

fn link(index: u32, up: bool, carrier: bool) -> crate::bus::LinkEvent {
    crate::bus::LinkEvent::Changed(crate::bus::Link {
        name: format!("if{index}"),
        index,
        mac: None,
        up,
        carrier,
        controller: None,
        mtu: None,
    })
}

/// A member port that loses and regains carrier is told to a 1.1 peer
/// (a port not seen yet counts as up, so a first "up" is no news; other
/// interfaces are not told); a 1.0 peer, which does not know the message,
/// is told nothing.
#[tokio::test]
async fn a_member_port_back_up_is_told_to_a_peer_that_speaks_1_1() {
    let mut h = Harness::new("");
    h.establish(PEER_BOOT, None).await;
    for event in [
        link(11, true, true),
        link(99, true, false),
        link(11, true, false),
        link(11, true, true),
    ] {
        h.task.process(Event::Link(event)).await;
    }
    assert_eq!(
        h.written(),
        vec![
            Written::PortState(vec![(1, false)]),
            Written::PortState(vec![(1, true)])
        ]
    );
    assert_eq!(h.report().counters.port_states_sent, 2);

    let mut h = Harness::new("");
    h.connect().await;
    let mut hello = peer_hello(PEER_BOOT, None);
    hello[3] = 0; // a 1.0 peer
    h.inbound(hello).await;
    h.written();
    for event in [
        link(12, true, true),
        link(12, false, true),
        link(12, true, true),
    ] {
        h.task.process(Event::Link(event)).await;
    }
    assert_eq!(h.written(), vec![]);
}

/// The peer says its twin of MLAG id 2 is up again: this switch re-probes
/// the neighbours above its own port of that id, and only those.
#[tokio::test]
async fn the_peer_twin_port_up_again_refreshes_that_mlag_id() {
    let mut h = Harness::new("");
    h.kernel.log().neighbours = vec![neighbour(11, 1, "REACHABLE"), neighbour(12, 2, "STALE")];
    h.establish(PEER_BOOT, None).await;
    h.next_internal().await; // the refresh for a new peer run
    h.kernel.log().probed.clear();
    let mut buf = vec![0u8; 64];
    let mut e = Encoder::new(&mut buf, MessageType::PortState, SubType::None, 0).unwrap();
    e.port_state(2, true).unwrap();
    e.port_state(9, true).unwrap();
    let len = e.finish();
    buf.truncate(len);
    h.inbound(buf).await;
    h.next_internal().await;
    assert_eq!(h.kernel.log().probed, vec![ip(2)]);
    let report = h.report();
    assert_eq!(report.counters.port_up_refreshes, 1);
    assert_eq!(report.counters.refreshes, 2);
    assert_eq!(h.rejected("unknown_mlag_id"), 1);
}

/// Inference hears of the twin ports: up with the peer's hello (its ports),
/// then each port-state message, unknown when the peer's liveness is lost.
#[tokio::test]
async fn the_twin_ports_states_reach_inference() {
    let mut h = Harness::new("");
    let (infos_tx, mut infos) = mpsc::channel(16);
    h.task.infos = Some(infos_tx);
    let mut heard = move || {
        let mut out = Vec::new();
        while let Ok(info) = infos.try_recv() {
            out.push(format!(
                "{} {} {}",
                info.source,
                info.message,
                info.object.as_str()
            ));
        }
        out
    };
    h.establish(PEER_BOOT, None).await;
    assert_eq!(
        heard(),
        ["peer liveness-ok switch:mlag-peer", "peer twin-up twin:1"],
        "the peer's hello lists port 1"
    );
    let mut buf = vec![0u8; 64];
    let mut e = Encoder::new(&mut buf, MessageType::PortState, SubType::None, 0).unwrap();
    e.port_state(1, false).unwrap();
    let len = e.finish();
    buf.truncate(len);
    h.inbound(buf).await;
    assert_eq!(heard(), ["peer twin-down twin:1"]);
    h.task.process(Event::Liveness(Liveness::Down)).await;
    assert_eq!(
        heard(),
        [
            "peer liveness-lost switch:mlag-peer",
            "peer twin-unknown twin:1",
            "peer twin-unknown twin:2"
        ],
        "the peer switch and every MLAG id of ours"
    );
    // A session that dies (the peer agent killed) is lost contact too.
    h.establish(PEER_BOOT, None).await;
    heard();
    h.task.close_session("connection closed");
    assert_eq!(
        heard(),
        [
            "peer liveness-lost switch:mlag-peer",
            "peer twin-unknown twin:1",
            "peer twin-unknown twin:2"
        ]
    );
}

/// Flow control: a resend far bigger than the writer's queue is held back
/// while the queue is full and goes out as the peer reads: no stall, nothing
/// lost (what a 100,000-entry resync after a peer restart needs).
#[tokio::test]
async fn a_burst_bigger_than_the_writer_queue_goes_out_as_the_peer_reads() {
    let mut h = Harness::new("batch_max_entries = 4");
    h.connect_with_queue(8).await;
    h.inbound(peer_hello(PEER_BOOT, None)).await;
    let mut synced = Vec::new();
    let mut take = |written: Vec<Written>| {
        for w in written {
            if let Written::Sync(_, ips) = w {
                synced.extend(ips);
            }
        }
    };
    for last in 1..=100 {
        h.capture(last).await;
        if last % 10 == 0 {
            take(h.written()); // the peer reads now and then
        }
    }
    for _ in 0..100 {
        if h.report().pending == 0 {
            break;
        }
        take(h.written());
        h.task.flush().await;
    }
    take(h.written());
    let report = h.report();
    assert_eq!(report.counters.sessions_stalled, 0);
    assert_eq!(report.state, "up");
    assert_eq!(synced.len(), 100, "every entry went out exactly once");
}

/// The bulk resync of a new session ends with SYNC_DONE naming the last
/// frame of it; it takes no number of its own and goes once per session.
#[tokio::test]
async fn the_end_of_the_bulk_sync_follows_the_resend_once_per_session() {
    let mut h = Harness::new("");
    h.task
        .process(Event::Liveness(Liveness::Up { boot_id: PEER_BOOT }))
        .await;
    h.capture(1).await;
    h.capture(2).await;
    h.connect().await;
    h.inbound(peer_hello(PEER_BOOT, None)).await;
    assert_eq!(
        h.written_all(),
        vec![Written::Sync(1, vec![ip(1), ip(2)]), Written::SyncDone(1)]
    );
    h.capture(3).await;
    h.task.flush().await;
    assert_eq!(
        h.written_all(),
        vec![Written::Sync(2, vec![ip(3)])],
        "once per session, and no number used"
    );
}

/// The peer's SYNC_DONE tells MC-LAG this switch has converged; it is not
/// acknowledged (it repeats a number already acknowledged).
#[tokio::test]
async fn the_peers_sync_done_tells_mclag_and_is_not_acked() {
    let mut h = Harness::new("");
    h.establish(PEER_BOOT, None).await;
    while h.sessions.try_recv().is_ok() {}
    let mut buf = vec![0u8; 64];
    let mut e = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, 0).unwrap();
    e.sync_done().unwrap();
    let len = e.finish();
    buf.truncate(len);
    h.inbound(buf).await;
    assert!(matches!(h.sessions.try_recv(), Ok(SessionEvent::Synced)));
    assert!(h.written_all().is_empty(), "no ack for it");
    assert_eq!(h.report().counters.peer_syncs_done, 1);
}

// ---------------------------------------------------------------- ND sync

/// A solicited NA from host `last` (fd00::last, its MAC) to `dst`
/// (IPv6 fd00::1), with the target link-layer option; valid checksum.
fn na_frame(dst: MacAddr, last: u8) -> Vec<u8> {
    let (mac, _) = host(last);
    let src = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(last)).octets();
    let to = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets();
    let mut icmp = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    icmp.extend_from_slice(&src);
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac.0);
    let sum = sync_common::nd::icmpv6_checksum(&src, &to, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&to);
    f.extend_from_slice(&icmp);
    f
}

fn nd_sync_frame(seq: u32, entries: &[(DriverHeader, Vec<u8>)]) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut e = Encoder::new(&mut buf, MessageType::Sync, SubType::Nd, seq).unwrap();
    for (d, f) in entries {
        e.nd_entry(d, f).unwrap();
    }
    let len = e.finish();
    buf.truncate(len);
    buf
}

/// The checksum of the ICMPv6 message of an injected (untagged) NA.
fn na_checksum_ok(frame: &[u8]) -> bool {
    let src: [u8; 16] = frame[22..38].try_into().unwrap();
    let dst: [u8; 16] = frame[38..54].try_into().unwrap();
    sync_common::nd::icmpv6_checksum(&src, &dst, &frame[54..]) == 0
}

#[tokio::test]
async fn synced_nas_are_injected_addressed_as_the_kernel_takes_them() {
    let mut h = Harness::new("");
    h.establish(PEER_BOOT, None).await;
    let own = driver(1);
    let peer = DriverHeader {
        class: Class::Peer as u8,
        ..driver(1)
    };
    h.inbound(nd_sync_frame(
        1,
        &[
            (own, na_frame(PEER_MAC, 20)),
            (peer, na_frame(PORT1_MAC, 21)),
        ],
    ))
    .await;
    let injected = h.kernel.log().injected.clone();
    assert_eq!(injected.len(), 2);
    // Class own on the peer: for the peer's address, so readdressed to all
    // nodes, unsolicited, checksum fixed.
    let (ifindex, all_nodes) = &injected[0];
    assert_eq!(*ifindex, 11);
    assert_eq!(all_nodes[..6], sync_common::nd::ALL_NODES_MAC);
    assert_eq!(all_nodes[38..54], sync_common::nd::ALL_NODES);
    assert_eq!(all_nodes[58] & sync_common::nd::FLAG_SOLICITED, 0);
    assert!(na_checksum_ok(all_nodes));
    // Class peer: it answered this switch: only the Ethernet destination
    // becomes the port's MAC; still solicited.
    let (_, unicast) = &injected[1];
    assert_eq!(unicast[..6], PORT1_MAC.0);
    assert_eq!(unicast[6..], na_frame(PORT1_MAC, 21)[6..]);
    let report = h.report();
    assert_eq!(report.counters.nd.injected, 2);
    assert_eq!(report.counters.nd.entries_received, 2);
    let nd = h.task.nd_report().entries;
    let hows: Vec<&str> = nd.iter().map(|e| e.how.as_str()).collect();
    assert!(hows.contains(&"kernel-nd-all-nodes"), "{hows:?}");
    assert!(hows.contains(&"kernel-nd"), "{hows:?}");
    assert_eq!(h.written(), vec![Written::Ack(1)]);
}

#[tokio::test]
async fn nas_wait_for_a_peer_that_announces_nd_sync() {
    let mut h = Harness::new("");
    h.establish(PEER_BOOT, None).await;
    let frame = na_frame(PEER_MAC, 30);
    let nd = match sync_common::nd::parse(&frame[..]) {
        sync_common::nd::Parsed::Advert(a) => sync_common::nd::addresses(&frame[..], &a),
        other => panic!("{other:?}"),
    };
    h.task
        .process(Event::Captures(
            vec![Captured {
                arp: ArpAddresses::default(),
                nd,
                frame: frame.into(),
                ..captured(2)
            }]
            .into(),
        ))
        .await;
    h.task.flush().await;
    // The peer's hello says ARP only: nothing of ND goes out, it is held.
    assert!(h.written().is_empty());
    assert_eq!(h.report().counters.nd.held_peer_without_nd, 1);
    assert_eq!(h.report().counters.nd.captured, 1);
    // Class peer: this switch learnt it too (readdressed to all nodes).
    let injected = h.kernel.log().injected.clone();
    assert_eq!(injected.len(), 1);
    assert_eq!(injected[0].1[..6], sync_common::nd::ALL_NODES_MAC);
}

/// Linux answers a unicast solicitation (a refresh probe) without the
/// target link-layer option; the capturing switch adds it from the
/// Ethernet source, so the peer's kernel learns the MAC.
#[tokio::test]
async fn an_na_without_its_link_layer_option_is_synced_with_one_added() {
    let mut h = Harness::new("");
    let mut peer_hello_nd = Frame::decode(&peer_hello(PEER_BOOT, None), 1 << 16)
        .map(|f| Hello::decode(&f).unwrap())
        .unwrap();
    peer_hello_nd.capabilities = wire::capability::ALL;
    h.connect().await;
    h.inbound(peer_hello_nd.encode()).await;
    h.written();
    // The NA of `na_frame` without its 8-byte option.
    let mut frame = na_frame(PORT1_MAC, 40);
    frame.truncate(frame.len() - 8);
    frame[18..20].copy_from_slice(&24u16.to_be_bytes());
    let src: [u8; 16] = frame[22..38].try_into().unwrap();
    let dst: [u8; 16] = frame[38..54].try_into().unwrap();
    frame[56..58].copy_from_slice(&[0, 0]);
    let sum = sync_common::nd::icmpv6_checksum(&src, &dst, &frame[54..]);
    frame[56..58].copy_from_slice(&sum.to_be_bytes());
    let nd = match sync_common::nd::parse(&frame[..]) {
        sync_common::nd::Parsed::Advert(a) => sync_common::nd::addresses(&frame[..], &a),
        other => panic!("{other:?}"),
    };
    assert_eq!(nd.unwrap().target_mac, None);
    h.task
        .process(Event::Captures(
            vec![Captured {
                class: Class::Own,
                dst_mac: PORT1_MAC,
                arp: ArpAddresses::default(),
                nd,
                frame: frame.into(),
                ..captured(2)
            }]
            .into(),
        ))
        .await;
    h.task.flush().await;
    let sent: Vec<bytes::Bytes> = std::iter::from_fn(|| h.wire.try_recv().ok())
        .filter(|bytes| {
            Frame::decode(bytes, wire::MAX_FRAME_LEN)
                .is_ok_and(|f| f.header.sub_type == SubType::Nd)
        })
        .collect();
    assert_eq!(sent.len(), 1, "one ND frame");
    let decoded = Frame::decode(&sent[0], wire::MAX_FRAME_LEN).unwrap();
    let entry = decoded.nd_entries().next().expect("one ND entry");
    let sync_common::nd::Parsed::Advert(advert) = sync_common::nd::parse(entry.frame) else {
        panic!("not an NA")
    };
    let addresses = sync_common::nd::addresses(entry.frame, &advert).unwrap();
    assert_eq!(addresses.target_mac, Some(host(40).0.0));
    assert!(na_checksum_ok(entry.frame));
    assert_eq!(h.report().counters.nd.lladdr_from_source, 1);
}

#[tokio::test]
async fn every_stage_of_a_synced_reply_is_timed() {
    let mut h = Harness::new("");
    h.establish(PEER_BOOT, None).await;
    // Captured 3 ms ago by the kernel's clock, taken off the ring 2 ms
    // later, sent at once.
    let mut reply = captured(5);
    reply.timestamp_ns = crate::clock::monotonic_ns() - 3_000_000;
    reply.read_ns = reply.timestamp_ns + 2_000_000;
    h.task.process(Event::Captures(vec![reply].into())).await;
    h.task.flush().await;
    assert_eq!(h.written(), vec![Written::Sync(1, vec![ip(5)])]);
    // A reply the peer synced to us.
    let (mac, host_ip) = host(8);
    h.inbound(sync_frame(
        4,
        &[(driver(1), arp_reply(PEER_MAC, mac, host_ip))],
    ))
    .await;

    let latency = h.report().latency;
    assert_eq!(latency.capture_to_queue.count, 1);
    assert!(
        (3_000..60_000).contains(&latency.capture_to_queue.p50_us),
        "{latency:?}"
    );
    // Its parts: the wakeup (2 ms), then the hand-over (the rest).
    assert_eq!(latency.capture_to_read.count, 1);
    assert!(
        (1_900..2_100).contains(&latency.capture_to_read.p50_us),
        "{latency:?}"
    );
    assert_eq!(latency.read_to_queue.count, 1);
    assert!(
        (900..58_000).contains(&latency.read_to_queue.p50_us),
        "{latency:?}"
    );
    assert_eq!(latency.queue_to_send.count, 1);
    assert_eq!(latency.receive_to_inject.count, 1);
    assert_eq!(latency.read_to_task.count, 1);
    assert_eq!(latency.inject.count, 1, "one entry handed to the kernel");
    // A record without a kernel timestamp is not timed.
    h.capture(6).await;
    assert_eq!(h.report().latency.capture_to_queue.count, 1);
}

// ------------------------------------- the session's reader and writer

/// A stream that hands over `chunks` one read at a time (a read never
/// spans two chunks, and takes a chunk's start when the buffer is short),
/// then end of file; counts the reads that returned data.
struct Chunks {
    chunks: std::collections::VecDeque<Vec<u8>>,
    reads: usize,
}

impl Chunks {
    fn new(chunks: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Self {
            chunks: chunks.into_iter().collect(),
            reads: 0,
        }
    }

    /// `bytes` cut every `size` bytes.
    fn every(bytes: &[u8], size: usize) -> Self {
        Self::new(bytes.chunks(size).map(<[u8]>::to_vec))
    }
}

impl tokio::io::AsyncRead for Chunks {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if let Some(mut chunk) = self.chunks.pop_front() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                self.chunks.push_front(chunk.split_off(n));
            }
            self.reads += 1;
        }
        std::task::Poll::Ready(Ok(()))
    }
}

/// What the session reader told the task.
#[derive(Debug, PartialEq, Eq)]
enum ReadEvent {
    Frame(Vec<u8>),
    Malformed(DecodeError, bool),
}

/// Runs the session reader over `stream` (conn 7) until it ends: the
/// events in order, and why it ended.
async fn read_all(stream: &mut Chunks, max_frame: usize) -> (Vec<ReadEvent>, Option<String>) {
    let (events, mut rx) = mpsc::channel(4096);
    let why = super::session::read_frames(stream, 7, max_frame, &events).await;
    drop(events);
    let mut out = Vec::new();
    while let Some(event) = rx.recv().await {
        out.push(match event {
            Event::Inbound { conn: 7, frame, .. } => ReadEvent::Frame(frame.to_vec()),
            Event::Malformed {
                conn: 7,
                error,
                fatal,
            } => ReadEvent::Malformed(error, fatal),
            other => panic!("unexpected {other:?}"),
        });
    }
    (out, why)
}

/// A valid frame of exactly `len` bytes (a sync frame with one optional
/// TLV of padding).
fn frame_of(len: usize, seq: u32) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut e = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, seq).unwrap();
    let pad = len - wire::HEADER_LEN - wire::TLV_HEADER_LEN;
    e.tlv(0x0fff, &[&vec![seq as u8; pad]]).unwrap();
    assert_eq!(e.finish(), len);
    buf
}

fn frames(list: &[Vec<u8>]) -> Vec<ReadEvent> {
    list.iter().cloned().map(ReadEvent::Frame).collect()
}

#[tokio::test]
async fn the_reader_reassembles_frames_split_across_reads() {
    let sent = vec![ack_frame(Some(1)), frame_of(300, 2), ack_frame(Some(3))];
    let stream = sent.concat();
    for size in [1, 5, 16, 17, 299] {
        let (events, why) = read_all(&mut Chunks::every(&stream, size), 16 * 1024).await;
        assert_eq!(events, frames(&sent), "cut every {size} bytes");
        assert_eq!(why.as_deref(), Some("read: early eof"));
    }
}

#[tokio::test]
async fn the_reader_takes_many_frames_from_one_read() {
    let sent: Vec<Vec<u8>> = (1..=50).map(|seq| ack_frame(Some(seq))).collect();
    let mut stream = Chunks::new([sent.concat()]);
    let (events, why) = read_all(&mut stream, 16 * 1024).await;
    assert_eq!(events, frames(&sent));
    assert_eq!(why.as_deref(), Some("read: early eof"));
    assert_eq!(
        stream.reads, 1,
        "fifty frames, one read call that returned data"
    );
}

#[tokio::test]
async fn a_frame_of_exactly_max_frame_is_read_and_one_byte_more_closes_the_session() {
    let max_frame = 512;
    let fits = frame_of(max_frame, 1);
    let (events, _) = read_all(&mut Chunks::every(&fits, 100), max_frame).await;
    assert_eq!(events, frames(&[fits]));

    let too_long = frame_of(max_frame + 1, 2);
    let after = ack_frame(Some(3));
    let mut stream = Chunks::new([too_long, after]);
    let (events, why) = read_all(&mut stream, max_frame).await;
    assert_eq!(
        events,
        vec![ReadEvent::Malformed(
            DecodeError::BadLength(max_frame as u32 + 1),
            true
        )]
    );
    assert_eq!(
        why.as_deref(),
        Some("unusable frame header: bad length field 513"),
        "and nothing after it is read as a frame"
    );
}

#[tokio::test]
async fn a_header_that_is_not_ours_closes_the_session_at_once() {
    let mut bad = ack_frame(Some(1));
    bad[0] = b'X';
    // Only the header has arrived: the verdict does not wait for the body.
    let (events, why) = read_all(&mut Chunks::new([bad[..16].to_vec()]), 16 * 1024).await;
    assert_eq!(
        events,
        vec![ReadEvent::Malformed(
            DecodeError::BadMagic([b'X', b'S']),
            true
        )]
    );
    assert!(
        why.as_deref()
            .is_some_and(|w| w.starts_with("unusable frame header")),
        "{why:?}"
    );
}

#[tokio::test]
async fn an_unknown_frame_type_is_skipped_and_the_stream_stays_framed() {
    let mut unknown = frame_of(200, 1);
    unknown[4] = 0x7f;
    let after = vec![ack_frame(Some(2)), frame_of(90, 3)];
    let stream = [unknown, after.concat()].concat();
    for size in [7, 64, stream.len()] {
        let (events, why) = read_all(&mut Chunks::every(&stream, size), 16 * 1024).await;
        let mut expected = vec![ReadEvent::Malformed(DecodeError::UnknownType(0x7f), false)];
        expected.extend(frames(&after));
        assert_eq!(events, expected, "cut every {size} bytes");
        assert_eq!(why.as_deref(), Some("read: early eof"));
    }
}

#[tokio::test]
async fn the_end_of_the_stream_inside_a_frame_closes_without_a_frame() {
    let frame = frame_of(300, 1);
    for cut in [3, 16, 299] {
        let (events, why) = read_all(&mut Chunks::new([frame[..cut].to_vec()]), 16 * 1024).await;
        assert_eq!(events, vec![], "{cut} bytes of a frame");
        assert_eq!(why.as_deref(), Some("read: early eof"));
    }
    // A skipped frame cut short is not reported as skipped either.
    let mut unknown = frame_of(300, 2);
    unknown[4] = 0x7f;
    let (events, why) = read_all(&mut Chunks::new([unknown[..100].to_vec()]), 16 * 1024).await;
    assert_eq!((events, why.as_deref()), (vec![], Some("read: early eof")));
}

/// Frames the task drops as it goes (the steady state): the reader's
/// buffer is taken back and reused many times over, with frames cut at
/// every place across it; every frame arrives whole and in order.
#[tokio::test]
async fn frames_stay_whole_while_the_reader_reuses_its_buffer() {
    let sent: Vec<Vec<u8>> = (0..600u32)
        .map(|i| frame_of(20 + (i as usize * 37) % 1500, i))
        .collect();
    let mut stream = Chunks::every(&sent.concat(), 777);
    let (events, mut rx) = mpsc::channel(1);
    let reader = super::session::read_frames(&mut stream, 7, 16 * 1024, &events);
    let check = async {
        for (i, expected) in sent.iter().enumerate() {
            match rx.recv().await {
                Some(Event::Inbound { frame, .. }) => {
                    assert_eq!(&frame[..], &expected[..], "frame {i}")
                }
                other => panic!("frame {i}: {other:?}"),
            }
        }
    };
    let (why, ()) = tokio::join!(reader, check);
    assert_eq!(why.as_deref(), Some("read: early eof"));
}

/// A socket that takes at most `per_write` bytes a call (across the
/// slices of a vectored write) and keeps what it took.
#[derive(Default)]
struct SlowSocket {
    taken: Vec<u8>,
    per_write: usize,
    writes: usize,
    shut_down: bool,
}

impl tokio::io::AsyncWrite for SlowSocket {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let n = buf.len().min(self.per_write);
        self.taken.extend_from_slice(&buf[..n]);
        self.writes += 1;
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        let mut n = 0;
        for slice in slices {
            let take = slice.len().min(self.per_write - n);
            self.taken.extend_from_slice(&slice[..take]);
            n += take;
        }
        self.writes += 1;
        std::task::Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.shut_down = true;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Queued frames go out together, in order, and a frame the socket took
/// only part of goes on from where it stopped.
#[tokio::test]
async fn the_writer_sends_queued_frames_together_and_resumes_partial_writes() {
    let sent: Vec<Vec<u8>> = (0..100u32).map(|i| frame_of(20 + i as usize, i)).collect();
    let total: usize = sent.iter().map(Vec::len).sum();
    for per_write in [7, 1000, usize::MAX / 2] {
        let (tx, rx) = mpsc::channel(256);
        for frame in &sent {
            tx.try_send(bytes::Bytes::from(frame.clone())).unwrap();
        }
        drop(tx);
        let mut socket = SlowSocket {
            per_write,
            ..Default::default()
        };
        super::session::write_frames(&mut socket, rx).await.unwrap();
        assert!(socket.taken == sent.concat(), "{per_write} bytes a write");
        assert!(socket.shut_down);
        // Whole batches of queued frames per call when the socket takes them.
        let fewest = total.div_ceil(per_write).max(sent.len().div_ceil(64));
        assert_eq!(socket.writes, fewest, "{per_write} bytes a write");
    }
}

/// An entry learnt again is updated in place (new names, new way in) and
/// becomes the most recently learnt; only a new key can push one out.
#[test]
fn an_entry_learnt_again_is_updated_in_place_with_its_new_names() {
    use super::learn::{Learnt, LearntBy, remember};
    let mut table = lru::LruCache::unbounded();
    let learnt = |by| Learnt {
        ifindex: 11,
        mac: PEER_MAC,
        port: String::new(),
        interface: String::new(),
        mlag_id: 1,
        outer_vlan: 0,
        inner_vlan: 0,
        class: 0,
        by,
        at: std::time::Instant::now(),
    };
    assert!(!remember(
        &mut table,
        1u32,
        learnt(LearntBy::KernelArp),
        ("p1", "p1"),
        2
    ));
    assert!(!remember(
        &mut table,
        2,
        learnt(LearntBy::KernelArp),
        ("p1", "p1"),
        2
    ));
    // 1 again, now by way of a VLAN interface and the fallback.
    let again = learnt(LearntBy::NetlinkFallback);
    assert!(!remember(&mut table, 1, again, ("p1", "vlan10"), 2));
    assert_eq!(table.len(), 2);
    let one = table.peek(&1).unwrap();
    assert_eq!(
        (one.port.as_str(), one.interface.as_str(), one.by),
        ("p1", "vlan10", LearntBy::NetlinkFallback)
    );
    assert!(
        remember(&mut table, 3, learnt(LearntBy::KernelArp), ("p1", "p1"), 2),
        "a new key at the bound pushes one out"
    );
    assert!(
        table.contains(&1) && !table.contains(&2),
        "2, the least recently learnt"
    );
}
