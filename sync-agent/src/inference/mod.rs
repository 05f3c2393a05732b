//! Dependency-based state inference (SPEC 5).
//!
//! The [`Model`] holds objects in four layers (physical: switches, ports,
//! links; L2: LAN ports, bonds, bridges, VLANs; L3: IP interfaces, gateways,
//! neighbours; services on top) and one-way dependencies between them:
//! *belongs-to* within a layer (a port belongs to its switch) and *maps-to*
//! from a lower layer up to a higher one (physical port -> LAN port -> IP
//! interface). A dependency that would close a cycle is rejected with the
//! path (SPEC 5.2).
//!
//! Incoming [`Info`] (source, message, object) is normalised by the
//! [`RuleTable`] into a [`State`] with a fault level (0 = normal, higher =
//! worse), into "clears", or into nothing (unknown information, reported to
//! the caller and recorded, but changing no state). Equivalent messages from
//! different sources map to the same state. Each object keeps one *actual*
//! state per source: the latest information from that source wins, and a
//! clearing message removes it (SPEC 5.3).
//!
//! The *logical* states of an object are inferred from the *effective*
//! states of the objects it depends on directly: every dependency's most
//! severe fault becomes a logical state with the same name and level, its
//! source being the dependency's id. Because a dependency's effective state
//! includes its own logical states, faults travel transitively up the chains
//! (SPEC 5.4). Lost contact is its own kind of state: level 0, shown, but
//! never a cause for inference; an object in lost contact still receives
//! logical states from its own dependencies.
//!
//! The *effective* state merges all actual and logical states, keeping only
//! the most severe level and, on a tie, every distinct state of that level
//! (the same state from several sources is shown once, its `source` listing
//! them all, comma-separated). When nothing is above level 0 the effective
//! state is `normal`, or `lost-contact` if a source reported lost contact
//! (SPEC 5.5).
//!
//! A dependency can be in its dependent's *redundancy group*, which passes
//! faults on according to the dependent's [`Redundancy`]: `all` (any
//! fault, as outside a group), `redundant` (down only when no parent is up)
//! or `at_least = N` (down only when fewer than N parents are up), and
//! `degraded` (a configurable level, 1 by default) in between. A parent in
//! lost contact is not counted as up. The MLAG interface of each MLAG id
//! (`mlag:<id>`) is `redundant` over the local member port and its twin on
//! the peer (`twin:<id>`), which is in lost contact until the peer's state
//! of it is known.
//!
//! A change is propagated incrementally: only objects reachable from the
//! changed one are visited, in topological (rank) order so that each is
//! recomputed once after all of its changed dependencies (diamonds
//! included), and expansion stops where an effective state did not change.
//! Every object keeps a bounded history of its effective state changes and
//! of the information it received (SPEC 5.6).
//!
//! Over the model, [`alarms`] raises root-cause alarms: an object whose
//! effective state reaches the configured level raises an alarm naming its
//! root causes (the deepest faulty objects down its chain), unless its
//! fault is only inferred from alarmed root causes: then it is suppressed
//! and listed under them. [`webhook`] posts alarms to an
//! Alertmanager-compatible receiver.
//!
//! The engine ([`model`], [`rules`], [`alarms`]) is pure: no I/O, no clock (times are
//! passed in), no async.
//!
//! Around it, one task (`task.rs`) owns the model: [`live`] builds it from
//! the live system over netlink (interfaces, bridges and bonds, IPv4 and
//! IPv6 interfaces, gateways, neighbours, the paths to the MLAG peer) plus
//! the objects declared in the config, and keeps it live: interfaces,
//! addresses (an IP interface joins with its first IPv4 address and leaves
//! with its last, taking the gateways and neighbours only it held; `ip6:IF`
//! likewise with IPv6, but kept while its port is down), routes (gateways),
//! the neighbour table, and the fabric's members with the ports their
//! heartbeats list ([`FabricMembers`], a `watch`). The handlers in `events.rs` turn those changes and
//! [`Info`] from other modules (the supervisor wires them) into information
//! for the model and answer the operator's `show states` / `show state` /
//! `show alarms`. Fabric membership arrives as [`Info`] from the source
//! `fabric-membership`: a member departed (or silent, which the server
//! announces as departed) puts its `switch:<member>` object and every
//! port of it in the model in lost contact (its own slot, so what the
//! ports said last stays), one alarm for it all; a member the fabric
//! forgets leaves the model with its alarms. This switch's alarms go
//! out to the fabric ([`InferenceHandle::subscribe_alarms`]), and other
//! members' come back ([`InferenceHandle::remote_alarm`]) to be listed in
//! `show alarms` by origin.

pub mod alarms;
pub mod config;
mod events;
pub mod live;
pub mod model;
pub mod report;
pub mod rules;
mod task;
pub mod webhook;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use self::{
    config::InferenceConfig,
    events::Query,
    task::{Task, Watches},
};
pub use self::{
    model::{
        Applied, Change, DEFAULT_DEGRADED_LEVEL, Dependency, GroupView, HistoryEntry, InfoEntry,
        Layer, Model, ModelError, ObjectView, Redundancy, StateView,
    },
    report::{AlarmsReport, ChainLink, InferenceStats, RemoteAlarm, StateReport, StatesReport},
    rules::{Rule, RuleTable, State},
};
pub use crate::bus::{AlarmRecord, FabricMembers, Info, ObjectId, ids};
use crate::{
    bus::{AskError, LinkEvent, NeighbourChange},
    southbound::{addresses, neighbours, routes},
};

/// Depth of the operator query channel; queries are rare and answered at once.
const QUERY_DEPTH: usize = 16;
/// Depth of the queue of other members' alarms; beyond, they are dropped
/// (counted in `show alarms`) and the next record of the same alarm
/// catches up.
const REMOTE_ALARMS_DEPTH: usize = 1024;
/// Depth of the broadcast of this switch's alarms (to the fabric).
const ALARMS_OUT_DEPTH: usize = 1024;

/// Handle to the inference task: cheap to clone; asks it for object states.
#[derive(Clone, Debug)]
pub struct InferenceHandle {
    queries: mpsc::Sender<Query>,
    remote_alarms: mpsc::Sender<AlarmRecord>,
    /// Other members' alarms dropped on a full queue (the task shows it).
    remote_dropped: Arc<AtomicU64>,
    alarms_out: broadcast::Sender<AlarmRecord>,
}

impl InferenceHandle {
    /// Builds the model from the live system (over `netlink`) and the
    /// objects of `config`, takes the interfaces' current state as the first
    /// information, and starts the task. `switch_name` names this switch's
    /// object (`switch:<name>`). The task then follows `links` (it re-reads
    /// the interfaces when it lagged behind), address changes (an
    /// interface that gets an IPv4 address joins as an IP interface) and
    /// the IPv4 half of the agent's `neighbours` changes (None: the
    /// neighbours read at start stay as they were),
    /// applies every [`Info`] arriving on `infos`, and follows the fabric's
    /// `members` (their switches and ports join the model, a member the
    /// fabric forgot leaves it); it runs until all of its inputs close.
    ///
    /// Fails when the live system cannot be read or a declared object or
    /// dependency is refused (the message names `inference.objects`).
    pub async fn spawn(
        config: InferenceConfig,
        switch_name: &str,
        netlink: rtnetlink::Handle,
        links: broadcast::Receiver<LinkEvent>,
        neighbours: Option<broadcast::Receiver<NeighbourChange>>,
        infos: mpsc::Receiver<Info>,
        members: Option<watch::Receiver<FabricMembers>>,
    ) -> anyhow::Result<InferenceHandle> {
        let (queries, query_rx) = mpsc::channel(QUERY_DEPTH);
        let (remote_alarms, remote_rx) = mpsc::channel(REMOTE_ALARMS_DEPTH);
        let task = Task::build(config, switch_name, netlink).await?;
        let alarms_out = task.alarms_out.clone();
        let remote_dropped = task.remote_dropped.clone();
        // Addresses, routes and neighbours that change after start change
        // the model; without a watcher it keeps what it read at start.
        let addresses = addresses::watch()
            .inspect_err(|err| tracing::warn!(error = %err, "cannot watch address changes: IP interfaces that appear or go later are not followed"))
            .ok();
        let routes = routes::watch()
            .inspect_err(|err| tracing::warn!(error = %err, "cannot watch route changes: gateways that appear or go later are not followed"))
            .ok();
        let neighbours = neighbours.map(|changes| {
            neighbours::forward(changes, "state model", |change| match change {
                NeighbourChange::V4(event) => Some(event),
                NeighbourChange::V6(_) => None,
            })
        });
        let watches = Watches {
            addresses,
            routes,
            neighbours,
            remote_alarms: Some(remote_rx),
            members,
        };
        tokio::spawn(task.run(links, infos, query_rx, watches));
        Ok(InferenceHandle {
            queries,
            remote_alarms,
            remote_dropped,
            alarms_out,
        })
    }

    /// `show states`: every object (only faulty ones or those in lost
    /// contact with `faulty`), without histories, and the counters.
    pub async fn states(&self, faulty: bool) -> Result<StatesReport, AskError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Query::States { faulty, reply }).await?;
        rx.await.map_err(|_| AskError::Gone("inference"))
    }

    /// `show alarms`: raised alarms with their root causes and what is
    /// suppressed under them, recently cleared ones, counters.
    pub async fn alarms(&self) -> Result<AlarmsReport, AskError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Query::Alarms { reply }).await?;
        rx.await.map_err(|_| AskError::Gone("inference"))
    }

    /// `show state OBJECT`: one object with its histories and dependency
    /// chains; refused for an object not in the model.
    pub async fn state(&self, object: String) -> Result<StateReport, AskError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Query::State { object, reply }).await?;
        rx.await
            .map_err(|_| AskError::Gone("inference"))?
            .map_err(AskError::Refused)
    }

    /// This switch's alarms as they are raised, change and clear, from
    /// now on (what the fabric publishes).
    pub fn subscribe_alarms(&self) -> broadcast::Receiver<AlarmRecord> {
        self.alarms_out.subscribe()
    }

    /// An alarm of another fabric member, listed in `show alarms` under
    /// its origin. Never waits: a full queue drops it (counted).
    pub fn remote_alarm(&self, alarm: AlarmRecord) -> Result<(), AskError> {
        match self.remote_alarms.try_send(alarm) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.remote_dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AskError::Gone("inference")),
        }
    }

    async fn ask(&self, query: Query) -> Result<(), AskError> {
        self.queries
            .send(query)
            .await
            .map_err(|_| AskError::Gone("inference"))
    }
}
