//! The peer-sync task: the one owner of the peer state, and its event loop.
//!
//! ```text
//!   supervisor ──captures (mpsc CaptureBatch)────────┐
//!   supervisor ──member ports (watch Vec<MemberPort>)─┤
//!   PeerSyncHandle ──queries (mpsc Query)─────────────┤
//!                                                     ▼
//!   liveness::run ──(mpsc LivenessReport)──────────▶ Task ──SessionEvent (try_send)──▶ MC-LAG
//!     (UDP keepalives)                                ▲  │
//!   session::connect | session::accept ──┐            │  │ frames (mpsc Bytes)
//!   session reader ──────────────────────┼─internal───┘  ▼
//!   refresh worker (paced re-probe) ─────┘ (mpsc Event)  session writer ──TCP──▶ peer
//!   agent's neighbour changes ──withdrawals (mpsc NeighbourEvent; ND via internal)──▶ Task  (kernel dropped an entry: withdraw)
//!   links::watch ──(mpsc LinkEvent)──▶ Task    (member port up again: port-state to the peer)
//!   Task ──(mpsc RefreshJob, try_send)──▶ refresh worker
//! ```
//!
//! The loop selects over its inputs, turns each into an [`Event`] and hands
//! it to [`Task::process`] (`events.rs`); handlers never wait on another
//! module, and never wait on the peer: frames go into the session writer's
//! queue with `try_send`, and a full queue means the peer stopped reading,
//! so the session is closed (`sessions_stalled`) and entries wait for the
//! next one (`tx.rs`). Captures are batched: with `flush_delay_us = 0` the pending
//! entries are flushed as soon as no input is waiting, otherwise on a timer.
//!
//! In the agent the task, its session's reader and writer and the capture
//! ring's reader all run on one thread (`crate::sync_thread`): the hops of
//! a synced reply between them (ring reader -> task -> writer, reader ->
//! task) are then calls into one scheduler, and wake no other thread.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use lru::LruCache;

use tokio::sync::{
    mpsc::{self, error::TrySendError},
    watch,
};

use super::{
    Identity,
    config::PeerConfig,
    events::{Event, Query},
    learn::{Kernel, Learnt, LearntBy},
    refresh::RefreshJob,
    report::Stats,
    session::Session,
    table::{EntryKey, SendTable},
};
use crate::{
    bus::{CaptureBatch, Info, LinkEvent, MemberPort, SessionEvent, ids},
    liveness::LivenessReport,
    log_limit::LogLimiter,
    mac::MacAddr,
    southbound::neighbours::NeighbourEvent,
};

/// Depth of the task's internal channel (session I/O, refresh results).
const INTERNAL_DEPTH: usize = 1024;

/// Everything the peer state is made of; only this task touches it.
pub(super) struct Task {
    pub(super) config: PeerConfig,
    pub(super) identity: Identity,
    /// The member ports, as the dataplane last told.
    pub(super) ports: Vec<MemberPort>,
    /// Sender of the internal channel, cloned into the session's and the
    /// refresh's child tasks.
    pub(super) internal: mpsc::Sender<Event>,
    /// This side connects (lower address) rather than accepts.
    pub(super) we_connect: bool,
    /// Bumped to ask `session::connect` for a new connection.
    pub(super) want_connection: watch::Sender<u64>,
    pub(super) session: Option<Session>,
    pub(super) next_conn: u64,
    /// Boot id of the peer while keepalives arrive.
    pub(super) peer_alive: Option<u64>,
    /// Boot id of the peer in the last established session.
    pub(super) last_peer_boot: Option<u64>,
    /// Sequence number of the next sync frame (never 0: 0 means "not sent").
    pub(super) next_seq: u32,
    /// Highest sync frame the peer acknowledged.
    pub(super) acked: u32,
    /// When the pending entries go out (None: nothing scheduled).
    pub(super) flush_at: Option<tokio::time::Instant>,
    /// Since when the session writer's queue has been too full to take
    /// another sync frame (flow control: a bulk resend waits for the peer
    /// to read; only a queue that does not drain for the dead interval is a
    /// stalled peer).
    pub(super) writer_blocked_since: Option<tokio::time::Instant>,
    pub(super) table: SendTable,
    /// The peer run whose sync frames were applied here, and up to which
    /// sequence number (told back in our hello as RESUME).
    pub(super) rx_from_boot: Option<u64>,
    pub(super) rx_applied: u32,
    /// Entries learnt from the peer, by the peer's key; an LRU bounded by
    /// `max_learnt` (O(1) eviction).
    pub(super) learned: LruCache<EntryKey, Learnt>,
    /// Interfaces the kernel learns on above the member ports, with their
    /// MLAG ids (`aging.rs`), and when they were looked up (None: stale).
    pub(super) learn_ifs: BTreeMap<u32, BTreeSet<u32>>,
    pub(super) learn_ifs_at: Option<std::time::Instant>,
    /// Where synced replies' time goes (`show peer`'s `latency`).
    pub(super) latency: super::latency::Latency,
    /// Neighbours this agent deleted on the peer's word, until the kernel
    /// reports the removal (not to be withdrawn back).
    pub(super) own_deletes: HashSet<(u32, Ipv4Addr)>,
    /// The refresh worker's queue (started with the first refresh).
    pub(super) refresh_jobs: Option<mpsc::Sender<RefreshJob>>,
    /// Last state (up with carrier) seen of each member port, by ifindex.
    pub(super) port_up: BTreeMap<u32, bool>,
    /// `peer`-class replies this switch also learnt itself (SPEC 1.2), by
    /// (ifindex, IP): how.
    pub(super) learnt_here: HashMap<(u32, Ipv4Addr), LearntBy>,
    /// VLAN interfaces looked up so far: name -> (ifindex, MAC).
    pub(super) vlan_targets: BTreeMap<String, (u32, MacAddr)>,
    /// `arp_accept` of each interface before this task set it, restored at
    /// clean exit.
    pub(super) arp_accept_original: BTreeMap<String, u8>,
    /// ND sync's tables and counters (`nd.rs`).
    pub(super) nd: super::nd::NdState,
    /// The flush's and the acks' buffers, reused frame after frame (`tx.rs`).
    pub(super) tx: super::tx::TxBuffers,
    pub(super) stats: Stats,
    /// One log line per reason per second, whatever the flood.
    pub(super) log: LogLimiter,
    pub(super) kernel: Arc<dyn Kernel>,
    /// Where the peer's MACs from its hello go (the dataplane's peer table).
    pub(super) peer_macs: Option<watch::Sender<BTreeSet<MacAddr>>>,
    /// Where session events go (MC-LAG), if anyone listens.
    pub(super) sessions: Option<mpsc::Sender<SessionEvent>>,
    /// Where what this side knows of the twin ports goes (inference).
    pub(super) infos: Option<mpsc::Sender<Info>>,
    /// How the peer link's keepalive thread is scheduled (`show peer`).
    pub(super) keepalive_scheduling: String,
}

/// The receiving ends the loop selects over (the supervisor's channels,
/// the handle's, and the task's own).
pub(super) struct Inputs {
    pub(super) queries: mpsc::Receiver<Query>,
    pub(super) captures: mpsc::Receiver<CaptureBatch>,
    pub(super) ports: watch::Receiver<Vec<MemberPort>>,
    pub(super) internal: mpsc::Receiver<Event>,
    pub(super) liveness: mpsc::Receiver<LivenessReport>,
    /// This switch's ARP table withdrawals, from the agent's one watcher of
    /// neighbour changes (`southbound::neighbours::watch`, `withdrawals`).
    pub(super) neighbours: mpsc::Receiver<NeighbourEvent>,
    /// Interface changes (`southbound::links::watch`), for member-port state.
    pub(super) links: mpsc::Receiver<LinkEvent>,
}

impl Inputs {
    /// No input is waiting (the moment to flush a batch without a timer).
    fn idle(&self) -> bool {
        self.captures.is_empty()
            && self.internal.is_empty()
            && self.liveness.is_empty()
            && self.queries.is_empty()
            && self.neighbours.is_empty()
            && self.links.is_empty()
    }
}

impl Task {
    /// A task with empty state. Returns the receiving end of its internal
    /// channel and the receiver `session::connect` watches for wanted
    /// connections.
    pub(super) fn new(
        config: PeerConfig,
        identity: Identity,
        ports: Vec<MemberPort>,
        kernel: Arc<dyn Kernel>,
        sessions: Option<mpsc::Sender<SessionEvent>>,
    ) -> (Self, mpsc::Receiver<Event>, watch::Receiver<u64>) {
        let (internal, internal_rx) = mpsc::channel(INTERNAL_DEPTH);
        let (want_connection, wanted) = watch::channel(0u64);
        let task = Self {
            table: SendTable::new(config.max_entries),
            nd: super::nd::NdState::new(config.max_entries),
            tx: Default::default(),
            we_connect: config.local_address < config.peer_address,
            config,
            identity,
            ports,
            internal,
            want_connection,
            session: None,
            next_conn: 1,
            peer_alive: None,
            last_peer_boot: None,
            next_seq: 1,
            acked: 0,
            flush_at: None,
            writer_blocked_since: None,
            rx_from_boot: None,
            rx_applied: 0,
            learned: LruCache::unbounded(),
            learn_ifs: BTreeMap::new(),
            learn_ifs_at: None,
            latency: Default::default(),
            own_deletes: HashSet::new(),
            refresh_jobs: None,
            port_up: BTreeMap::new(),
            learnt_here: HashMap::new(),
            peer_macs: None,
            vlan_targets: BTreeMap::new(),
            arp_accept_original: BTreeMap::new(),
            stats: Stats::default(),
            log: LogLimiter::new(Duration::from_secs(1)),
            kernel,
            sessions,
            infos: None,
            keepalive_scheduling: String::new(),
        };
        (task, internal_rx, wanted)
    }

    /// The event loop; ends when every [`super::PeerSyncHandle`] is dropped,
    /// or at a shutdown request (after restoring `arp_accept`).
    pub(super) async fn run(mut self, mut inputs: Inputs) {
        let (mut captures_open, mut ports_open, mut liveness_open) = (true, true, true);
        let (mut neighbours_open, mut links_open) = (true, true);
        loop {
            // Batching without a timer: flush once nothing else is waiting.
            if self.flush_at.is_some()
                && self.config.flush_delay_us == 0
                && self.writer_blocked_since.is_none()
                && inputs.idle()
            {
                self.flush().await;
            }
            let flush_at = self.flush_at;
            let event = tokio::select! {
                query = inputs.queries.recv() => match query {
                    Some(Query::Shutdown(done)) => {
                        self.restore_arp_accept();
                        self.restore_untracked_na();
                        let _ = done.send(());
                        return;
                    }
                    Some(query) => Event::Query(query),
                    None => return,
                },
                batch = inputs.captures.recv(), if captures_open => match batch {
                    Some(batch) => Event::Captures(batch),
                    None => {
                        captures_open = false;
                        continue;
                    }
                },
                changed = inputs.ports.changed(), if ports_open => match changed {
                    Ok(()) => Event::Ports(inputs.ports.borrow_and_update().clone()),
                    Err(_) => {
                        ports_open = false;
                        continue;
                    }
                },
                // Never closes: the task holds a sender itself.
                Some(event) = inputs.internal.recv() => event,
                event = inputs.neighbours.recv(), if neighbours_open => match event {
                    Some(event) => Event::Neighbour(event),
                    None => {
                        neighbours_open = false;
                        continue;
                    }
                },
                event = inputs.links.recv(), if links_open => match event {
                    Some(event) => Event::Link(event),
                    None => {
                        links_open = false;
                        continue;
                    }
                },
                report = inputs.liveness.recv(), if liveness_open => match report {
                    Some(report) => Event::from(report),
                    None => {
                        liveness_open = false;
                        continue;
                    }
                },
                () = async { tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)).await }, if flush_at.is_some() => {
                    self.flush().await;
                    continue;
                }
            };
            self.process(event).await;
        }
    }

    /// Counts refused input under `reason` and logs it, rate-limited.
    pub(super) fn reject(&mut self, reason: &'static str, detail: &str) {
        self.reject_counted(reason, 1, detail);
    }

    /// Counts `count` inputs refused for `reason` (the last described by
    /// `detail`) and logs it, rate-limited.
    pub(super) fn reject_counted(&mut self, reason: &'static str, count: u64, detail: &str) {
        let total = {
            let total = self.stats.rejected.entry(reason.to_string()).or_default();
            *total += count;
            *total
        };
        if self.log.admit(reason).is_some() {
            tracing::warn!(reason, total, "dropped peer-link input: {detail}");
        }
    }

    /// Counts a failure of this switch (not the peer's input) under
    /// `reason` and logs it, rate-limited.
    pub(super) fn local_failure(&mut self, reason: &'static str, detail: &str) {
        let total = {
            let count = self
                .stats
                .local_failures
                .entry(reason.to_string())
                .or_default();
            *count += 1;
            *count
        };
        if self.log.admit(reason).is_some() {
            tracing::warn!(reason, total, "local failure: {detail}");
        }
    }

    /// Tells inference the state of the peer's port with `mlag_id`
    /// (`twin-up`, `twin-down`, `twin-unknown`); a full queue drops and
    /// counts (`infos_dropped`).
    pub(super) fn tell_twin(&mut self, mlag_id: u32, message: &str) {
        let Some(infos) = &self.infos else {
            return;
        };
        if infos
            .try_send(Info::new("peer", message, ids::twin(mlag_id)))
            .is_err()
        {
            self.stats.infos_dropped += 1;
        }
    }

    /// Tells inference the peer switch is in contact (`liveness-ok`) or
    /// not (`liveness-lost`); a full queue drops and counts.
    pub(super) fn tell_peer(&mut self, message: &str) {
        let Some(infos) = &self.infos else {
            return;
        };
        if infos
            .try_send(Info::new("peer", message, ids::peer_switch()))
            .is_err()
        {
            self.stats.infos_dropped += 1;
        }
    }

    /// Contact with the peer is lost (its session died or its keepalives
    /// stopped): the peer switch and every twin port go lost contact.
    pub(super) fn tell_peer_lost(&mut self) {
        self.tell_peer("liveness-lost");
        let ids: Vec<u32> = self.ports.iter().map(|p| p.mlag_id).collect();
        for mlag_id in ids {
            self.tell_twin(mlag_id, "twin-unknown");
        }
    }

    /// Tells MC-LAG about the session without ever waiting on it: a full
    /// queue drops the event and counts it (`session_events_dropped`), so a
    /// stalled MC-LAG task cannot stall captures, acks and keepalive
    /// handling here. Its queue is short-lived (MC-LAG drains it at once)
    /// and events are rare (one per session change), so a drop means
    /// MC-LAG is stuck, which its own report shows.
    pub(super) fn notify(&mut self, event: SessionEvent) {
        let Some(sessions) = &self.sessions else {
            return;
        };
        match sessions.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                self.stats.session_events_dropped += 1;
                if self.log.admit("session_event_dropped").is_some() {
                    tracing::warn!(
                        ?event,
                        total = self.stats.session_events_dropped,
                        "MC-LAG is not taking session events; dropped one"
                    );
                }
            }
            // MC-LAG has stopped: nobody to tell.
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

impl From<LivenessReport> for Event {
    fn from(report: LivenessReport) -> Self {
        match report {
            LivenessReport::Changed(liveness) => Event::Liveness(liveness),
            LivenessReport::Rejected {
                reason,
                count,
                detail,
            } => Event::Rejected {
                reason,
                count,
                detail,
            },
        }
    }
}
