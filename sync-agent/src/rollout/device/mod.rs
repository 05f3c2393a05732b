//! The device side of config rollout (SPEC 6.2–6.4).
//!
//! A device runs a few services, each fed by one config of the center
//! (namespace/group/name) written to a file. One task (`task.rs`) owns the
//! device's state and does, strictly one thing at a time:
//!
//! 1. at start, before talking to the center, puts every service's file back
//!    from the local backup store if it is missing or differs (a restart, a
//!    wiped config directory) and reloads the service;
//! 2. registers the device's services with the center (retrying with backoff
//!    while the center is unreachable);
//! 3. long-polls the center with the MD5 of what it has, and for every
//!    assignment, in the order given (the dependency order): acknowledges
//!    without fetching when the MD5 equals the backup's, otherwise fetches the
//!    version, checks its MD5, writes it atomically, reloads, health-checks,
//!    and on success keeps it in the backup store and acknowledges; on failure
//!    puts the previous file back, reloads again and acknowledges the failure
//!    with the reason.
//!
//! Operators read the state through [`DeviceHandle::report`], a snapshot the
//! task publishes after every change, so a report never waits for a long poll
//! or a health check.
//!
//! - [`config`]: `[rollout.device]` and its validation,
//! - `task.rs`: the task's state and loop,
//! - `poll.rs`: register, long poll, fetch and acknowledgements over HTTP,
//! - `apply.rs`: one assignment (write, reload, health, restore, ack) and the
//!   restore at start,
//! - `command.rs`: reload and health commands with deadlines,
//! - `store.rs`: atomic file writes and the local backup store,
//! - [`report`]: what `show rollout` prints of the device.

mod apply;
mod command;
pub mod config;
mod poll;
pub mod report;
mod store;
mod task;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

pub use self::apply::RELOAD_TIMEOUT;
pub use self::config::{
    DEFAULT_HEALTH_TIMEOUT_MS, DEFAULT_RECHECK_S, DEFAULT_WATCH_TIMEOUT_MS, DeviceConfig,
    DeviceConfigError, ServiceConfig,
};
pub use self::report::{DeviceCounters, DeviceReport, ServiceReport};
use self::task::Task;

/// Handle to the device task; cheap to clone.
#[derive(Clone)]
pub struct DeviceHandle {
    reports: watch::Receiver<DeviceReport>,
    stop: Arc<watch::Sender<bool>>,
    releases: mpsc::Sender<crate::bus::ConfigReleased>,
}

/// Pushed releases waiting for the task; more are dropped (one is enough
/// to make it ask the center, and it asks about every service at once).
const RELEASES_QUEUE: usize = 16;

impl DeviceHandle {
    /// Validates `config`, opens the backup store and starts the device task.
    /// The task restores services from the backup store before it contacts
    /// the center. Nothing is started if the config is invalid.
    pub async fn spawn(config: DeviceConfig) -> anyhow::Result<DeviceHandle> {
        let (stop, stopping) = watch::channel(false);
        let (releases, pushed) = mpsc::channel(RELEASES_QUEUE);
        let task = Task::new(config, stopping, pushed).await?;
        let handle = DeviceHandle {
            reports: task.reports(),
            stop: Arc::new(stop),
            releases,
        };
        tokio::spawn(task.run());
        Ok(handle)
    }

    /// The device's current state: the last snapshot the task published
    /// (so it never waits for a long poll or a health check, and still
    /// answers after the task stopped).
    pub async fn report(&self) -> DeviceReport {
        self.reports.borrow().clone()
    }

    /// A receiver that sees every report the task publishes (it errors once
    /// the task has stopped).
    pub fn subscribe(&self) -> watch::Receiver<DeviceReport> {
        self.reports.clone()
    }

    /// A config release pushed over the fabric (SPEC 6.2): if it concerns
    /// one of this device's services and differs from what it runs, the
    /// task asks the center now instead of at its next poll. Never waits.
    pub fn release_pushed(&self, release: crate::bus::ConfigReleased) {
        let _ = self.releases.try_send(release);
    }

    /// Stops the task at its next safe point (never in the middle of an
    /// apply) and waits until it has stopped.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let mut reports = self.reports.clone();
        while reports.changed().await.is_ok() {}
    }
}
