//! Fabric sync over MQTT (SPEC 4): roles from the server list, heartbeats and
//! topology, fabric-wide config, faults, body encryption, primary/backup.
//!
//! One task (`task.rs`) owns all fabric state: the MQTT link, the roster (on
//! servers), this switch's view of the fabric, the fabric config and the
//! recent faults. The supervisor talks to it only through [`FabricHandle`]:
//! it passes the link-event broadcast in (local port changes become faults
//! published to the fabric) and an [`bus::Info`] sender out (faults heard
//! from other members go to state inference as `port:<member>/<port>`).
//! Nothing here imports another SPEC module.
//!
//! Files, one role each: [`role`] decides the role, `bring_up` starts the
//! broker and the link, `task` runs the loop, `events` handles each input,
//! `server` does the server's duties, `member` the member's, [`report`]
//! holds `show fabric`. The protocol pieces: [`wire`] (messages and topics),
//! [`identity`] (key pairs and the roster), [`seal`] (signing, encryption
//! and replay checks), [`link`] (the MQTT client
//! with failover), [`broker`] (the embedded broker), [`state`] (bookkeeping
//! free of I/O), [`config`] (the `[fabric]` section).

mod alarms;
mod bring_up;
pub mod broker;
pub mod config;
mod config_push;
mod events;
mod faults;
pub mod hlc;
pub mod identity;
pub mod link;
mod member;
pub mod mosquitto;
pub mod replay;
pub mod report;
pub mod role;
pub mod seal;
mod server;
pub mod state;
mod task;
pub mod wire;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::bus::{self, AskError};
use config::FabricConfig;
use events::Query;
pub use report::{FabricReport, FaultReport, MemberReport, ServerReport, SetReport, SettingReport};
pub use role::decide_role;

/// What [`AskError::Gone`] names when the task has stopped.
const NAME: &str = "fabric";

/// Handle to the fabric task: cheap to clone; every clone asks the same
/// task.
#[derive(Clone)]
pub struct FabricHandle {
    queries: mpsc::Sender<Query>,
    releases_heard: broadcast::Sender<bus::ConfigReleased>,
    alarms_heard: broadcast::Sender<bus::AlarmRecord>,
    members: watch::Receiver<bus::FabricMembers>,
}

impl FabricHandle {
    /// Decides the role, starts the embedded broker (servers), connects to
    /// the broker and starts the task.
    ///
    /// `switch_name` is the identity unless `fabric.identity` says
    /// otherwise. `links` carries local interface changes (the task turns
    /// port up/down into faults for the fabric); `infos` receives faults
    /// heard from other members, for state inference. Sends on `infos`
    /// never wait: when it is full the fault is dropped and counted
    /// (`inference_dropped` in `show fabric`).
    pub async fn spawn(
        config: FabricConfig,
        switch_name: &str,
        netlink: rtnetlink::Handle,
        links: broadcast::Receiver<bus::LinkEvent>,
        infos: mpsc::Sender<bus::Info>,
    ) -> anyhow::Result<FabricHandle> {
        let (queries, rx) = mpsc::channel(256);
        let (task, mqtt, addresses) = bring_up::start(config, switch_name, &netlink, infos).await?;
        let releases_heard = task.releases_heard.clone();
        let alarms_heard = task.alarms_heard.clone();
        let members = task.members_out.subscribe();
        tokio::spawn(task.run(mqtt, rx, links, addresses));
        Ok(Self {
            queries,
            releases_heard,
            alarms_heard,
            members,
        })
    }

    /// `show fabric`: role, broker, members, servers, announcements,
    /// faults, the fabric config and counters.
    pub async fn report(&self) -> Result<FabricReport, AskError> {
        let (reply, rx) = oneshot::channel();
        self.queries
            .send(Query::Report(reply))
            .await
            .map_err(|_| AskError::Gone(NAME))?;
        rx.await.map_err(|_| AskError::Gone(NAME))
    }

    /// Announces a release of the local config center to the fabric (SPEC
    /// 6.2 push). Never waits: when the task's queue is full the
    /// announcement is dropped (devices still long-poll).
    pub fn announce_release(&self, release: bus::ConfigReleased) -> Result<(), AskError> {
        match self.queries.try_send(Query::AnnounceRelease(release)) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AskError::Gone(NAME)),
        }
    }

    /// Config releases announced by other switches' centers, from now on.
    pub fn subscribe_releases(&self) -> broadcast::Receiver<bus::ConfigReleased> {
        self.releases_heard.subscribe()
    }

    /// Publishes an alarm of the local state inference on the fault
    /// channel. Never waits: when the task's queue is full the record is
    /// dropped (a raised alarm is published again on the next change or
    /// reconnect).
    pub fn publish_alarm(&self, alarm: bus::AlarmRecord) -> Result<(), AskError> {
        match self.queries.try_send(Query::PublishAlarm(alarm)) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AskError::Gone(NAME)),
        }
    }

    /// Alarms raised or cleared by other members' inference, from now on.
    pub fn subscribe_alarms(&self) -> broadcast::Receiver<bus::AlarmRecord> {
        self.alarms_heard.subscribe()
    }

    /// The other members this switch knows, with their ports, as the
    /// view changes (for state inference).
    pub fn members(&self) -> watch::Receiver<bus::FabricMembers> {
        self.members.clone()
    }

    /// `fabric set KEY VALUE`: applies a fabric-wide setting here,
    /// publishes it to every member and answers once they all acknowledged
    /// (`applied`), a newer change won (`superseded`) or `set_timeout_ms`
    /// passed (`timed out`), with who acknowledged. Refused (with the
    /// reason) for an unknown key, a bad value or a change the config store
    /// rejects.
    pub async fn set(&self, key: String, value: String) -> Result<SetReport, AskError> {
        let (reply, rx) = oneshot::channel();
        self.queries
            .send(Query::Set { key, value, reply })
            .await
            .map_err(|_| AskError::Gone(NAME))?;
        rx.await
            .map_err(|_| AskError::Gone(NAME))?
            .map_err(AskError::Refused)
    }
}
