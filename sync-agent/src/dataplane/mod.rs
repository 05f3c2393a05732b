//! SPEC 1: the XDP classifier on the member ports, seen from userspace.
//!
//! One task owns the loaded object ([`classifier::Classifier`]: programs,
//! attachments, MAC tables, policy, counters), the kernel's view of each
//! member port, and the recent captures. It keeps the classifier's maps in
//! step with the config and the ports (a port appears, changes MAC, goes
//! away), publishes the member ports to whoever needs them (peer sync,
//! MC-LAG) and forwards every captured reply to peer sync.
//!
//! ```text
//!  ring buffer ──capture::run──► batches of Captured ──► peer sync (captures)
//!                                       └──────────────► Task
//!  link events (broadcast) ────────────────►  │  ──► watch<Vec<MemberPort>>
//!  DataplaneHandle (status, counters, ...) ─► │
//! ```
//!
//! Files: [`classifier`] the loaded object; [`policy`] what its maps should
//! hold; [`capture`] the ring buffer reader, [`ring`] its batch access to
//! the ring; `task`/`events` the owner and its handlers; [`report`] what
//! operators see; [`config`] `[dataplane]`.

pub mod capture;
pub mod classifier;
pub mod config;
mod events;
pub mod policy;
pub mod report;
pub mod ring;
mod task;

use std::{collections::BTreeSet, path::PathBuf};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use self::classifier::{
    AttachedMode, CAPTURES_MAP, CLASSIFIER_PROGRAM, COUNT_ONLY_PROGRAM, COUNTERS_MAP, Classifier,
    DataplaneError, INJECT_PROGRAM, INJECT_REDIRECT_PROGRAM, INJECTING_MAP, KernelCounters,
    MAC_CLASS_MAP, MAC_FILTER_MAP, MacTables, PASS_PROGRAM, POLICY_MAP,
};
use self::{
    config::DataplaneConfig,
    events::Event,
    report::{CapturedList, CountersReport, StatusReport},
};
pub use crate::southbound::{inject::Injector, testrun};
use crate::{
    bus::{AskError, CaptureBatch, LinkEvent, MemberPort},
    mac::MacAddr,
};

/// Everything the dataplane task starts from.
pub struct DataplaneStart {
    /// The `[dataplane]` section.
    pub config: DataplaneConfig,
    /// The agent instance (for `status`).
    pub instance: String,
    /// The config file in use (for `status`).
    pub config_file: PathBuf,
    /// The MLAG id of each member port, in `member_ports` order.
    pub mlag_ids: Vec<(String, u32)>,
    /// Netlink, to look ports up.
    pub netlink: rtnetlink::Handle,
    /// Interface changes.
    pub links: broadcast::Receiver<LinkEvent>,
    /// Where captured replies go (peer sync), when it runs.
    pub captures_for_peer: Option<mpsc::Sender<CaptureBatch>>,
    /// The runtime the ring buffer's reader runs on: peer sync's
    /// ([`crate::sync_thread`]), so a capture reaches peer sync without
    /// leaving the thread; None: the caller's.
    pub capture_runtime: Option<tokio::runtime::Handle>,
    /// The peer's MACs from its hello (peer sync).
    pub peer_macs: watch::Receiver<BTreeSet<MacAddr>>,
    /// The MC-LAG shared MAC, once elected.
    pub shared_mac: watch::Receiver<Option<MacAddr>>,
}

/// What the dataplane hands to the modules started after it.
pub struct DataplaneStarted {
    /// The handle.
    pub handle: DataplaneHandle,
    /// The member ports, republished on every change.
    pub ports: watch::Receiver<Vec<MemberPort>>,
    /// Hands frames to the receive path (peer sync's kernel learning)
    /// without the classifier capturing them again, by the method chosen at
    /// start.
    pub inject: Injector,
}

/// Handle to the dataplane task.
#[derive(Clone)]
pub struct DataplaneHandle {
    events: mpsc::Sender<Event>,
}

const NAME: &str = "dataplane";

impl DataplaneHandle {
    /// Loads the object, attaches to every member port (a port that is
    /// missing or refuses is fatal here: the operator asked for it), fills
    /// the maps and starts the task and its capture reader.
    pub async fn spawn(start: DataplaneStart) -> anyhow::Result<DataplaneStarted> {
        task::Task::start(start).await
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> Result<T, AskError> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(make(tx))
            .await
            .map_err(|_| AskError::Gone(NAME))?;
        rx.await.map_err(|_| AskError::Gone(NAME))
    }

    /// `status`.
    pub async fn status(&self) -> Result<StatusReport, AskError> {
        self.ask(Event::Status).await
    }

    /// `show counters` (the agent's `bad_requests` is the control socket's
    /// to fill in).
    pub async fn counters(&self) -> Result<CountersReport, AskError> {
        self.ask(Event::Counters).await?.map_err(AskError::Refused)
    }

    /// `show captured`: at most `limit`, newest first.
    pub async fn captured(&self, limit: usize) -> Result<CapturedList, AskError> {
        self.ask(|reply| Event::Captured { limit, reply }).await
    }

    /// Applies a reloaded `[dataplane]` section (and MLAG ids) live.
    pub async fn reload(
        &self,
        config: DataplaneConfig,
        mlag_ids: Vec<(String, u32)>,
    ) -> Result<StatusReport, AskError> {
        self.ask(|reply| Event::Reload {
            config: Box::new(config),
            mlag_ids,
            reply,
        })
        .await?
        .map_err(AskError::Refused)
    }

    /// Detaches from every port; the task ends.
    pub async fn shutdown(&self) {
        let _ = self.ask(Event::Shutdown).await;
    }
}
