//! Two peer-sync tasks joined by a real TCP session on the loopback, for
//! `mlag-bench`: what the sync path costs in this process (heap
//! allocations per synced entry, counted by the bench's allocator), with
//! nothing else of the agent around it.
//!
//! Switch A's task gets captured replies as the ring's reader hands them
//! over; they go through its send table, flush, session writer and TCP
//! to B's session reader, B's task decodes each frame, hands every entry to
//! its kernel and acks it back to A. Everything on that way is the agent's
//! own code; only the kernel calls are not made: [`CountingKernel`] counts
//! each injection instead of running `BPF_PROG_RUN` (which builds its
//! arguments on the stack: no heap either way) and answers every other
//! call with nothing. The liveness reports the keepalive thread would
//! send are sent by [`Loopback::start`] itself, once.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use sync_common::{arp::ArpAddresses, capture::Class};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::{
    Identity,
    config::PeerConfig,
    events::Query,
    learn::Kernel,
    report::PeerReport,
    session,
    task::{Inputs, Task},
};
use crate::{
    bus::{CaptureBatch, Captured, Liveness, MemberPort},
    liveness::LivenessReport,
    mac::MacAddr,
    southbound::{
        neighbours::{Neighbour, NeighbourError},
        neighbours6::Neighbour6,
    },
};

/// A's member port (the reply is captured on it) and B's twin of it.
const A_PORT: (u32, MacAddr) = (11, MacAddr([2, 0, 0, 0, 0xa, 1]));
const B_PORT: (u32, MacAddr) = (21, MacAddr([2, 0, 0, 0, 0xb, 1]));
/// The switches' system ids (a reply to B's is class `peer` on A).
const A_SYSTEM: MacAddr = MacAddr([2, 0, 0, 0, 0xa, 0]);
const B_SYSTEM: MacAddr = MacAddr([2, 0, 0, 0, 0xb, 0]);

/// A kernel that counts injections and does nothing else.
#[derive(Default)]
pub struct CountingKernel {
    injected: AtomicU64,
    changed: Notify,
}

impl CountingKernel {
    /// Entries handed to this kernel so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Acquire)
    }

    /// Waits until at least `count` entries were handed over.
    pub async fn wait_for(&self, count: u64) {
        loop {
            let changed = self.changed.notified();
            if self.injected() >= count {
                return;
            }
            changed.await;
        }
    }
}

impl Kernel for CountingKernel {
    fn inject(&self, _frame: &[u8], _ifindex: u32) -> io::Result<()> {
        self.injected.fetch_add(1, Ordering::Release);
        self.changed.notify_waiters();
        Ok(())
    }

    fn inject_method(&self) -> &'static str {
        "counted (bench)"
    }

    fn set_reachable(
        &self,
        _: u32,
        _: Ipv4Addr,
        _: MacAddr,
    ) -> BoxFuture<'_, Result<(), NeighbourError>> {
        Box::pin(async { Ok(()) })
    }

    fn set_arp_accept(&self, _: &str) -> Result<(), NeighbourError> {
        Ok(())
    }

    fn arp_accept(&self, _: &str) -> Result<u8, NeighbourError> {
        Ok(1)
    }

    fn restore_arp_accept(&self, _: &str, _: u8) -> Result<(), NeighbourError> {
        Ok(())
    }

    fn link<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Option<(u32, MacAddr)>> {
        Box::pin(async { None })
    }

    fn neighbours<'a>(
        &'a self,
        _: &'a [u32],
    ) -> BoxFuture<'a, Result<Vec<Neighbour>, NeighbourError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn probe<'a>(&'a self, _: &'a Neighbour) -> BoxFuture<'a, Result<(), NeighbourError>> {
        Box::pin(async { Ok(()) })
    }

    fn delete(&self, _: u32, _: Ipv4Addr) -> BoxFuture<'_, Result<bool, NeighbourError>> {
        Box::pin(async { Ok(false) })
    }

    fn controller(&self, _: u32) -> BoxFuture<'_, Option<u32>> {
        Box::pin(async { None })
    }

    fn set_reachable6(
        &self,
        _: u32,
        _: Ipv6Addr,
        _: MacAddr,
    ) -> BoxFuture<'_, Result<(), NeighbourError>> {
        Box::pin(async { Ok(()) })
    }

    fn neighbours6<'a>(
        &'a self,
        _: &'a [u32],
    ) -> BoxFuture<'a, Result<Vec<Neighbour6>, NeighbourError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn probe6<'a>(&'a self, _: &'a Neighbour6) -> BoxFuture<'a, Result<(), NeighbourError>> {
        Box::pin(async { Ok(()) })
    }

    fn delete6(&self, _: u32, _: Ipv6Addr) -> BoxFuture<'_, Result<bool, NeighbourError>> {
        Box::pin(async { Ok(false) })
    }

    fn untracked_na(&self, _: &str) -> Result<u8, NeighbourError> {
        Ok(1)
    }

    fn set_untracked_na(&self, _: &str, _: u8) -> Result<(), NeighbourError> {
        Ok(())
    }
}

/// One side's channels, kept open while the pair runs (a closed query
/// channel ends the task).
struct Side {
    queries: mpsc::Sender<Query>,
    kernel: Arc<CountingKernel>,
    _liveness: mpsc::Sender<LivenessReport>,
    _ports: watch::Sender<Vec<MemberPort>>,
}

impl Side {
    async fn report(&self) -> Option<PeerReport> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(Query::Peer(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// Switch A (captures, sends) and switch B (receives, injects), both
/// running on the caller's runtime.
pub struct Loopback {
    captures: mpsc::Sender<CaptureBatch>,
    a: Side,
    b: Side,
}

impl Loopback {
    /// Starts A on 127.0.0.1 and B on 127.0.0.2 (a free port), with
    /// `batch_max_entries` per sync frame, and waits for the session.
    pub async fn start(batch_max_entries: usize) -> anyhow::Result<Self> {
        let a_address = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let b_address = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let port = std::net::TcpListener::bind(SocketAddr::new(b_address, 0))?
            .local_addr()?
            .port();
        let (captures, captures_rx) = mpsc::channel(64);
        let a = spawn_side(
            "a",
            A_SYSTEM,
            (a_address, b_address, port),
            A_PORT,
            batch_max_entries,
            Some(captures_rx),
        )?;
        let b = spawn_side(
            "b",
            B_SYSTEM,
            (b_address, a_address, port),
            B_PORT,
            batch_max_entries,
            None,
        )?;
        let pair = Self { captures, a, b };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let up = |r: Option<PeerReport>| r.is_some_and(|r| r.state == "up");
            if up(pair.a.report().await) && up(pair.b.report().await) {
                return Ok(pair);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the loopback peer session did not come up in 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A captured `peer`-class reply from host `host` on A's member port,
    /// as the ring's reader hands it over.
    pub fn reply(host: u16) -> Captured {
        let sender_mac = [2, 0, 0, 0xcc, (host >> 8) as u8, host as u8];
        let sender_ip = [10, 9, (host >> 8) as u8, host as u8];
        let target_ip = [10, 9, 255, 1];
        let mut frame = crate::bus::CapturedFrame::new();
        frame.extend_from_slice(&B_SYSTEM.0);
        frame.extend_from_slice(&sender_mac);
        frame.extend_from_slice(&sync_common::arp::ETHERTYPE_ARP.to_be_bytes());
        frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
        frame.extend_from_slice(&sender_mac);
        frame.extend_from_slice(&sender_ip);
        frame.extend_from_slice(&B_SYSTEM.0);
        frame.extend_from_slice(&target_ip);
        Captured {
            timestamp_ns: 0,
            read_ns: 0,
            ifindex: A_PORT.0,
            class: Class::Peer,
            outer_vlan: 0,
            inner_vlan: 0,
            vlan_count: 0,
            frame_len: frame.len() as u16,
            dst_mac: B_SYSTEM,
            arp: ArpAddresses {
                opcode: 2,
                sender_mac,
                sender_ip,
                target_mac: B_SYSTEM.0,
                target_ip,
            },
            nd: None,
            frame,
        }
    }

    /// Hands `batch` to A as the ring's reader does and waits until B's
    /// kernel got every entry of it.
    pub async fn sync(&self, batch: CaptureBatch) -> anyhow::Result<()> {
        let target = self.b.kernel.injected() + batch.len() as u64;
        self.captures
            .send(batch)
            .await
            .map_err(|_| anyhow::anyhow!("switch A's peer sync stopped"))?;
        tokio::time::timeout(Duration::from_secs(10), self.b.kernel.wait_for(target))
            .await
            .map_err(|_| anyhow::anyhow!("switch B did not get the entries in 10 s"))
    }

    /// `show peer` of A and of B.
    pub async fn reports(&self) -> anyhow::Result<(PeerReport, PeerReport)> {
        match (self.a.report().await, self.b.report().await) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => anyhow::bail!("a loopback peer-sync task stopped"),
        }
    }
}

/// One switch's task with its session's connect or accept, told at once
/// that the other is alive.
fn spawn_side(
    name: &str,
    system_id: MacAddr,
    (local, peer, port): (IpAddr, IpAddr, u16),
    (ifindex, mac): (u32, MacAddr),
    batch_max_entries: usize,
    captures: Option<mpsc::Receiver<CaptureBatch>>,
) -> anyhow::Result<Side> {
    let config: PeerConfig = toml::from_str(&format!(
        "local_address = \"{local}\"\npeer_address = \"{peer}\"\nport = {port}\n\
         arp_accept = \"leave\"\nbatch_max_entries = {batch_max_entries}\n"
    ))?;
    let boot_id = u64::from(name.as_bytes()[0]);
    let identity = Identity {
        name: name.into(),
        system_id,
        boot_id,
        mclag_address: None,
    };
    let member = MemberPort {
        name: format!("{name}1"),
        mlag_id: 1,
        ifindex: Some(ifindex),
        mac: Some(mac),
        mtu: None,
    };
    let kernel = Arc::new(CountingKernel::default());
    let (task, internal, wanted) =
        Task::new(config, identity, vec![member.clone()], kernel.clone(), None);
    let (local, peer) = (SocketAddr::new(local, port), SocketAddr::new(peer, port));
    if task.we_connect {
        tokio::spawn(session::connect(local, peer, wanted, task.internal.clone()));
    } else {
        tokio::spawn(session::accept(local, peer, task.internal.clone()));
    }
    let (queries, queries_rx) = mpsc::channel(4);
    let (liveness, liveness_rx) = mpsc::channel(4);
    // The other side's boot id: each side's is the first byte of its name.
    let other = if name == "a" { b'b' } else { b'a' };
    liveness.try_send(LivenessReport::Changed(Liveness::Up {
        boot_id: u64::from(other),
    }))?;
    let (ports, ports_rx) = watch::channel(vec![member]);
    let captures = captures.unwrap_or_else(|| mpsc::channel(1).1);
    tokio::spawn(task.run(Inputs {
        queries: queries_rx,
        captures,
        ports: ports_rx,
        internal,
        liveness: liveness_rx,
        neighbours: mpsc::channel(1).1,
        links: mpsc::channel(1).1,
    }));
    Ok(Side {
        queries,
        kernel,
        _liveness: liveness,
        _ports: ports,
    })
}
