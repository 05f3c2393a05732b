//! The device task: [`Task`] owns the device's state and does, strictly one
//! thing at a time, what the module doc lists (restore, register, long-poll,
//! apply). Talking to the center is in [`super::poll`], handling one
//! assignment in [`super::apply`].
//!
//! ```text
//!   DeviceHandle --stop (watch<bool>)--> Task --reports (watch<DeviceReport>)--> DeviceHandle
//!                                         |
//!                                         +-- HTTP --> config center (register, watch, fetch, ack)
//!                                         +-- files, reload/health commands, backup store
//! ```

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use anyhow::anyhow;
use tokio::sync::{mpsc, watch};

use super::apply::{Failure, Step};
use super::config::{
    DEFAULT_HEALTH_TIMEOUT_MS, DEFAULT_WATCH_TIMEOUT_MS, DeviceConfig, ServiceConfig, center_url,
};
use super::poll;
use super::report::{DeviceCounters, DeviceReport, ServiceReport};
use super::store::{Backup, BackupStore};
use crate::{bus, rollout::wire::Ack};

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Delays between attempts to reach the center.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The next delay, doubling up to [`BACKOFF_MAX`], with up to 25% jitter
    /// so that many devices do not come back in step.
    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let quarter = (base.as_millis() as u64 / 4).max(1);
        base + Duration::from_millis(crate::random::nonzero_u64() % quarter)
    }
}

/// Waits until a stop is requested (forever if it can no longer be).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs blocking file work on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("file task failed: {e}"))?
}

/// One service as the task keeps it.
pub(super) struct Service {
    pub(super) config: ServiceConfig,
    /// What the backup store holds for it.
    pub(super) backup: Option<Backup>,
    /// What happened last, in words (for the report).
    pub(super) last_result: String,
}

/// The device task's state. Only the task touches it; see
/// [`super::DeviceHandle::spawn`].
pub(super) struct Task {
    pub(super) config: DeviceConfig,
    /// The base URL of the center in use (`bases[at]`).
    pub(super) base: reqwest::Url,
    /// Every center's base URL, in configuration order.
    pub(super) bases: Vec<reqwest::Url>,
    pub(super) at: usize,
    /// Centers not tried since one last answered (see
    /// [`Task::center_error`]).
    pub(super) untried: usize,
    pub(super) client: reqwest::Client,
    pub(super) store: BackupStore,
    /// In configuration order.
    pub(super) services: Vec<Service>,
    /// Service name -> index in `services`.
    pub(super) index: HashMap<String, usize>,
    pub(super) counters: DeviceCounters,
    /// The last center request got an answer.
    pub(super) connected: bool,
    /// The last failed (or refused) assignment of each service named by the
    /// center; see [`Task::retry_now`].
    pub(super) failures: HashMap<String, Failure>,
    /// Acknowledgements still to deliver, with the attempts made.
    pub(super) pending_acks: VecDeque<(Ack, u32)>,
    /// Where snapshots for operators go, after every change.
    pub(super) reports: watch::Sender<DeviceReport>,
    pub(super) stop: watch::Receiver<bool>,
    /// Releases pushed over the fabric (see [`Task::wait_for_push`]).
    pub(super) pushed: mpsc::Receiver<bus::ConfigReleased>,
}

impl Task {
    /// Validates `config`, opens the backup store and builds the task, which
    /// stops at its next safe point once `stop` holds true. Nothing runs
    /// until [`Task::run`].
    pub(super) async fn new(
        mut config: DeviceConfig,
        stop: watch::Receiver<bool>,
        pushed: mpsc::Receiver<bus::ConfigReleased>,
    ) -> anyhow::Result<Task> {
        config.validate()?;
        if config.watch_timeout_ms == 0 {
            config.watch_timeout_ms = DEFAULT_WATCH_TIMEOUT_MS;
        }
        for svc in &mut config.services {
            if svc.health_timeout_ms == 0 {
                svc.health_timeout_ms = DEFAULT_HEALTH_TIMEOUT_MS;
            }
        }
        let bases = config
            .center
            .0
            .iter()
            .map(|c| center_url(c))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let base = bases
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("rollout.device.center: no center URL"))?;
        let untried = bases.len() - 1;
        let dir = config.backup_dir.clone();
        let store = blocking(move || BackupStore::open(&dir)).await?;
        let client = poll::http_client(&config)?;
        let services: Vec<Service> = config
            .services
            .iter()
            .map(|c| Service {
                config: c.clone(),
                backup: None,
                last_result: "starting".into(),
            })
            .collect();
        let index = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.config.name.clone(), i))
            .collect();
        let task = Task {
            config,
            base,
            bases,
            at: 0,
            untried,
            client,
            store,
            services,
            index,
            counters: DeviceCounters::default(),
            connected: false,
            failures: HashMap::new(),
            pending_acks: VecDeque::new(),
            reports: watch::Sender::new(DeviceReport {
                device: String::new(),
                center: String::new(),
                connected: false,
                services: Vec::new(),
                counters: DeviceCounters::default(),
            }),
            stop,
            pushed,
        };
        task.publish();
        Ok(task)
    }

    /// A receiver of every report the task publishes; it errors once the
    /// task has stopped.
    pub(super) fn reports(&self) -> watch::Receiver<DeviceReport> {
        self.reports.subscribe()
    }

    pub(super) fn snapshot(&self) -> DeviceReport {
        DeviceReport {
            device: self.config.device.clone(),
            center: self.config.center.0[self.at].clone(),
            connected: self.connected,
            services: self
                .services
                .iter()
                .map(|s| ServiceReport {
                    name: s.config.name.clone(),
                    key: s.config.config.to_string(),
                    path: s.config.path.display().to_string(),
                    version: s.backup.as_ref().map(|b| b.current.version),
                    md5: s.backup.as_ref().map(|b| b.current.md5.clone()),
                    last_result: s.last_result.clone(),
                    last_applied_ms: s.backup.as_ref().map(|b| b.applied_ms),
                })
                .collect(),
            counters: self.counters.clone(),
        }
    }

    /// Publishes a fresh snapshot for [`super::DeviceHandle::report`].
    pub(super) fn publish(&self) {
        self.reports.send_replace(self.snapshot());
    }

    pub(super) fn stop_requested(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps `d`; true if a stop was requested meanwhile.
    pub(super) async fn pause(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = tokio::time::sleep(d) => false,
            () = stopped(&mut stop) => true,
        }
    }

    /// Without long polling: waits for a pushed release that concerns this
    /// device (a service uses its key and runs another MD5), or
    /// `recheck_s`; true if a stop was requested meanwhile.
    async fn wait_for_push(&mut self) -> bool {
        let recheck = tokio::time::sleep(Duration::from_secs(self.config.recheck_s));
        tokio::pin!(recheck);
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                () = &mut recheck => return false,
                () = stopped(&mut stop) => return true,
                pushed = self.pushed.recv() => match pushed {
                    Some(release) if self.concerns(&release) => {
                        self.counters.pushes += 1;
                        return false;
                    }
                    Some(_) => {}
                    // No fabric feeds this device: only the recheck is left.
                    None => {
                        tokio::select! {
                            () = &mut recheck => return false,
                            () = stopped(&mut stop) => return true,
                        }
                    }
                },
            }
        }
    }

    /// A pushed release is for one of our services and differs from what
    /// that service runs.
    fn concerns(&self, release: &bus::ConfigReleased) -> bool {
        self.services.iter().any(|s| {
            s.config.config.to_string() == release.key
                && s.backup
                    .as_ref()
                    .is_none_or(|b| b.current.md5 != release.md5)
        })
    }

    /// Restores from the backup store, then registers and long-polls until
    /// stopped: see the module doc.
    pub(super) async fn run(mut self) {
        self.restore_all().await;
        self.publish();
        let mut backoff = Backoff::new();
        'register: loop {
            // (Again after any failed poll: the center may have restarted.)
            loop {
                let mut stop = self.stop.clone();
                let result = tokio::select! {
                    r = self.register() => r,
                    () = stopped(&mut stop) => return,
                };
                match result {
                    Ok(()) => {
                        self.center_answered();
                        tracing::info!(
                            device = %self.config.device,
                            center = %self.config.center.0[self.at],
                            services = self.services.len(),
                            "registered with the config center"
                        );
                        self.publish();
                        break;
                    }
                    Err(e) => {
                        let fresh = self.center_error(&e);
                        self.publish();
                        // Another center not tried yet: at once.
                        if !fresh && self.pause(backoff.next()).await {
                            return;
                        }
                    }
                }
            }
            loop {
                self.flush_acks().await;
                if self.stop_requested() {
                    return;
                }
                // The poll about to start answers every push so far.
                while self.pushed.try_recv().is_ok() {}
                let started = Instant::now();
                let mut stop = self.stop.clone();
                let result = tokio::select! {
                    r = self.watch() => r,
                    () = stopped(&mut stop) => return,
                };
                let answer = match result {
                    Ok(answer) => answer,
                    Err(e) => {
                        let fresh = self.center_error(&e);
                        self.publish();
                        if !fresh && self.pause(backoff.next()).await {
                            return;
                        }
                        continue 'register;
                    }
                };
                backoff.reset();
                self.center_answered();
                self.counters.watches += 1;
                self.counters.assignments += answer.assignments.len() as u64;
                self.note_withdrawals(&answer.assignments);
                self.publish();
                let mut fresh = false;
                for assignment in answer.assignments {
                    let step = self.process(assignment).await;
                    self.publish();
                    match step {
                        Step::Repeat | Step::Skipped => {}
                        Step::Answered { ok } => {
                            fresh = true;
                            // Later assignments may depend on this one: let
                            // the center decide again, knowing the failure.
                            if !ok {
                                break;
                            }
                        }
                        Step::CenterTrouble => {
                            fresh = true;
                            if self.pause(backoff.next()).await {
                                return;
                            }
                            break;
                        }
                    }
                    if self.stop_requested() {
                        return;
                    }
                }
                if !self.config.long_poll {
                    if self.wait_for_push().await {
                        return;
                    }
                    continue;
                }
                // A center that answers at once with nothing new (say, keeps
                // handing out an assignment this device already refused)
                // must not make it spin.
                let quiet = Duration::from_millis(self.config.watch_timeout_ms)
                    .clamp(Duration::from_millis(100), Duration::from_secs(5));
                let elapsed = started.elapsed();
                if !fresh && elapsed < quiet && self.pause(quiet - elapsed).await {
                    return;
                }
            }
        }
    }
}
