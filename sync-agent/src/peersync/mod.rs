//! SPEC 2: peer sync of ARP replies over the peer link.
//!
//! One task (`task.rs`) owns the whole peer state: the session, the table
//! of entries sent (with the sequence numbers the peer acknowledged), what
//! was learnt from the peer, and the counters. Captured replies, member-port
//! changes, session I/O, liveness and operator queries all reach it as
//! events (`events.rs`); [`PeerSyncHandle`] is how the rest of the agent
//! asks it questions.
//!
//! Where things are:
//! - `hello.rs`: the hello message (identity, limits, RESUME) — a new hello
//!   TLV goes there; `sync_common::wire` holds the frame codec itself.
//! - `tx.rs`: batching, flush, acks, sending. `table.rs`: the send table.
//! - `learn.rs`: kernel learning of synced replies (BPF_PROG_RUN inject,
//!   "other host" and `arp_accept` rules, netlink fallback) behind the
//!   `Kernel` trait.
//! - `refresh.rs`: SPEC 2.5 re-probe when the peer comes back (every
//!   interface the kernel learns on above the member ports, paced).
//! - `aging.rs`: entries the kernel dropped are withdrawn from the peer;
//!   which interfaces the kernel learns on.
//! - `ports.rs`: member-port state told to the peer; a twin port up again
//!   re-probes its MLAG id.
//! - `session.rs`: the TCP transport and the session's lifecycle.
//! - `loopback.rs`: two tasks over a loopback session, for `mlag-bench`
//!   (heap allocations per synced entry).
//! - `report.rs`: `show peer` / `show arp` and their text.
//! - `config.rs`: the `[peer]` section.
//!
//! Receiving is kernel learning: each synced reply is handed to this
//! switch's own ARP receive path on its twin member port with `BPF_PROG_RUN`
//! live frames (the pass-only XDP program returns `XDP_PASS`), so the kernel
//! does everything it does on learning. Two kernel rules are handled on
//! purpose: the destination MAC is rewritten to the receiving interface's
//! MAC (a reply for another MAC is dropped as "other host"), and
//! `arp_accept=1` is set on the member ports (policy `peer.arp_accept`) so a
//! reply this switch did not ask for (class `own` on the peer) creates an
//! entry; the value each interface had before is put back at clean exit
//! ([`PeerSyncHandle::shutdown`]). Only if injection fails is the entry
//! written over netlink, and that is logged and counted.

mod aging;
pub mod config;
mod events;
pub mod hello;
mod latency;
mod learn;
mod local;
pub mod loopback;
mod nd;
mod ports;
mod refresh;
pub mod report;
mod session;
pub mod table;
mod task;
mod tx;

#[cfg(test)]
mod tests;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use self::latency::{LatencyReport, StageSummary};
pub use self::learn::LearntBy;
use self::{
    config::PeerConfig,
    events::{Event, Query},
    learn::{Kernel, NetKernel},
    report::{ArpReportEntry, PeerReport},
    task::{Inputs, Task},
};
use crate::{
    bus::{AskError, CaptureBatch, Info, Liveness, MemberPort, SessionEvent},
    liveness,
    mac::MacAddr,
    southbound::{
        inject::Injector,
        links,
        neighbours::{self, NeighbourChange},
    },
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
    pub mclag_address: Option<IpAddr>,
}

/// Depth of the operator-query channel (queries are rare and answered at once).
const QUERY_DEPTH: usize = 16;
/// Depth of the liveness report channel (the liveness task never waits on
/// it: see [`liveness::run`]).
const LIVENESS_DEPTH: usize = 64;

/// Handle to the running peer-sync task (cheap to clone). The task runs
/// until every handle is dropped.
#[derive(Clone)]
pub struct PeerSyncHandle {
    queries: mpsc::Sender<Query>,
    /// For `show arp`'s kernel column, read in the asker's context.
    kernel: Arc<dyn Kernel>,
}

impl std::fmt::Debug for PeerSyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSyncHandle")
            .field("queries", &self.queries)
            .finish_non_exhaustive()
    }
}

/// The channels the supervisor wires to peer sync.
pub struct PeerSyncChannels {
    /// The member ports with their MLAG ids (from the dataplane); the
    /// current value is used at once, changes as they come.
    pub ports: watch::Receiver<Vec<MemberPort>>,
    /// Replies the classifier captured, to sync, in the reader's batches.
    pub captures: mpsc::Receiver<CaptureBatch>,
    /// Where session events for MC-LAG go; sent with `try_send`, a full
    /// queue drops and counts (`session_events_dropped`).
    pub sessions: Option<mpsc::Sender<SessionEvent>>,
    /// Where the peer's MACs from its hello go (the dataplane's peer table).
    pub peer_macs: watch::Sender<BTreeSet<MacAddr>>,
    /// Where the twin ports' states go (inference's `twin:<mlag id>`
    /// objects): up when the session starts, each port-state message,
    /// unknown when the peer's liveness is lost. Sent with `try_send`; a
    /// full queue drops and counts (`infos_dropped`).
    pub infos: Option<mpsc::Sender<Info>>,
    /// Told every judgement of the peer link's keepalive thread the moment
    /// it is made, apart from this task (MC-LAG's takeover must not wait
    /// for peer sync to be scheduled; [`liveness`]).
    pub liveness_watcher: Option<watch::Sender<Option<Liveness>>>,
    /// The kernel's neighbour changes (the agent's one watcher); None: the
    /// watcher could not start, and entries the kernel drops are not
    /// withdrawn from the peer.
    pub neighbours: Option<broadcast::Receiver<NeighbourChange>>,
}

/// The kernel's neighbour changes peer sync acts on: entries removed or
/// turned FAILED ([`aging::withdraws`], [`nd::withdraws`]). IPv4 ones come
/// on the returned channel, IPv6 ones go to the task's `internal` input;
/// both are forwarded with backpressure by tasks on the current runtime.
/// The IPv6 side subscribes afresh: what it misses were changes from
/// before peer sync started, when nothing was synced yet.
fn withdrawals(
    changes: broadcast::Receiver<NeighbourChange>,
    internal: mpsc::Sender<Event>,
) -> mpsc::Receiver<neighbours::NeighbourEvent> {
    neighbours::forward_to(
        changes.resubscribe(),
        "peer sync (ND)",
        internal,
        |change| match change {
            NeighbourChange::V6(event) if nd::withdraws(&event) => Some(Event::Neighbour6(event)),
            _ => None,
        },
    );
    neighbours::forward(changes, "peer sync (ARP)", |change| match change {
        NeighbourChange::V4(event) if aging::withdraws(&event) => Some(event),
        _ => None,
    })
}

impl PeerSyncHandle {
    /// Starts peer sync: the session (this side connects when its address is
    /// the lower one, otherwise it accepts), the UDP keepalives
    /// ([`liveness::run`]) and the task.
    /// `inject` hands synced replies to the receive path (kernel learning).
    /// `runtime` is where the task and its session's reader and writer
    /// run: the sync thread ([`crate::sync_thread`]), which the capture
    /// ring's reader shares, so a capture goes out and a synced reply goes
    /// in without a hop between threads; None: the caller's. The kernel
    /// watchers run on the caller's runtime either way.
    pub fn spawn(
        config: PeerConfig,
        identity: Identity,
        inject: Injector,
        netlink: rtnetlink::Handle,
        channels: PeerSyncChannels,
        runtime: Option<&tokio::runtime::Handle>,
    ) -> Self {
        // The kernel's neighbour and link changes are followed here, on the
        // caller's runtime, not on the sync thread: every change the kernel
        // makes (most of them entries never synced, and on the capturing
        // switch the very reply just captured, which its kernel learns too)
        // would otherwise queue its netlink reads and parsing on the sync
        // thread ahead of the capture that woke it. Only what peer sync
        // acts on is passed on to it.
        let here = tokio::runtime::Handle::current();
        let PeerSyncChannels {
            mut ports,
            captures,
            sessions,
            peer_macs,
            infos,
            liveness_watcher,
            neighbours: neighbour_changes,
        } = channels;
        let links = links::watch().unwrap_or_else(|err| {
            tracing::error!(error = %err, "cannot follow interface changes: the peer will not hear when a member port comes back");
            mpsc::channel(1).1
        });
        // Every `tokio::spawn` below, and those of the tasks it starts,
        // lands on `runtime`.
        let _on_runtime = runtime.map(tokio::runtime::Handle::enter);
        let initial = ports.borrow_and_update().clone();
        let local = SocketAddr::new(config.local_address, config.port);
        let peer = SocketAddr::new(config.peer_address, config.port);
        let timing = config.keepalive_timing();
        let boot_id = identity.boot_id;
        let kernel: Arc<dyn Kernel> = Arc::new(NetKernel { inject, netlink });
        let (mut task, internal, wanted) =
            Task::new(config, identity, initial, kernel.clone(), sessions);
        task.peer_macs = Some(peer_macs);
        task.infos = infos;
        if task.we_connect {
            tokio::spawn(session::connect(local, peer, wanted, task.internal.clone()));
        } else {
            tokio::spawn(session::accept(local, peer, task.internal.clone()));
        }
        let (liveness_tx, liveness) = mpsc::channel(LIVENESS_DEPTH);
        let keepalives = liveness::Keepalives {
            local,
            peer,
            boot_id,
            timing,
        };
        task.keepalive_scheduling = match liveness::spawn(keepalives, liveness_tx, liveness_watcher)
        {
            Ok(scheduling) => {
                tracing::info!(%local, %scheduling, "peer link keepalives started");
                scheduling.to_string()
            }
            Err(err) => {
                // The peer then reads as silent here, and this switch as
                // silent there: said loudly, shown in `show peer`.
                tracing::error!(%local, error = %err, "cannot start the peer link's keepalive thread");
                format!("not running: {err}")
            }
        };
        let neighbours = match neighbour_changes {
            Some(changes) => {
                let _here = here.enter();
                withdrawals(changes, task.internal.clone())
            }
            // The agent said why, once.
            None => mpsc::channel(1).1,
        };
        let (queries, queries_rx) = mpsc::channel(QUERY_DEPTH);
        task.apply_arp_accept();
        task.apply_untracked_na();
        tokio::spawn(task.run(Inputs {
            queries: queries_rx,
            captures,
            ports,
            internal,
            liveness,
            neighbours,
            links,
        }));
        Self { queries, kernel }
    }

    /// `show peer`.
    pub async fn peer(&self) -> Result<PeerReport, AskError> {
        self.ask(Query::Peer).await
    }

    /// `show arp`: entries sent and entries learnt from the peer. The task
    /// answers from its own tables; the kernel's neighbour dump for the
    /// `kernel_state` column runs here, in the asker's context, so a slow
    /// kernel never stalls the peer-sync loop.
    pub async fn arp(&self) -> Result<Vec<ArpReportEntry>, AskError> {
        let snapshot = self.ask(Query::Arp).await?;
        Ok(snapshot.with_kernel_state(&*self.kernel).await)
    }

    /// `show nd`: ND entries sent and learnt from the peer, with the
    /// kernel's state read in the asker's context.
    pub async fn nd(&self) -> Result<Vec<ArpReportEntry>, AskError> {
        let snapshot = self.ask(Query::Nd).await?;
        Ok(snapshot.with_kernel_state(&*self.kernel).await)
    }

    /// Clean exit: the task puts back every `arp_accept` it changed (the
    /// value each interface had before) and stops. Returns once done, or at
    /// once if the task is gone.
    pub async fn shutdown(&self) {
        let _ = self.ask(Query::Shutdown).await;
    }

    async fn ask<T>(&self, query: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, AskError> {
        let gone = || AskError::Gone("peer sync");
        let (tx, rx) = oneshot::channel();
        self.queries.send(query(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}
