//! The device side of config rollout (SPEC 6.2–6.4).
//!
//! A device runs a few services, each fed by one config of the center
//! (namespace/group/name) written to a file. One task, [`Device`], owns the
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

mod command;
mod store;
#[cfg(test)]
mod tests;

use crate::clock::now_ms;
use std::{
    collections::{HashMap, HashSet, VecDeque},
    error::Error as StdError,
    fmt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::wire::{
    self, Ack, Assignment, ConfigKey, ConfigRecord, Register, ServiceRegistration, WatchAnswer,
};
use store::{Backup, BackupStore};

/// Default long-poll duration asked of the center.
pub const DEFAULT_WATCH_TIMEOUT_MS: u64 = 30_000;
/// Default deadline of a health check.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 5_000;
/// Deadline of a reload command.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a center request other than the long poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time given to a long poll beyond what was asked of the center.
const WATCH_SLACK: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from the center (a config record with its content).
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// How much of an error answer's body is kept for the log.
const MAX_ERROR_BODY: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An acknowledgement the center could not take (unreachable, 5xx) is tried
/// again before every poll, this many times at most.
const ACK_ATTEMPTS: u32 = 50;
/// Bound on remembered failures (services the center named, known or not).
const MAX_FAILURES: usize = 4096;
/// A failed assignment offered again without having been withdrawn in
/// between is retried at once the first time, then after 1 s, 2 s, 4 s ...
/// up to this.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Lower-case hex MD5 of `data`, as the center computes it.
fn md5_hex(data: &[u8]) -> String {
    use ::md5::Digest as _;
    hex::encode(::md5::Md5::digest(data))
}

fn default_watch_timeout_ms() -> u64 {
    DEFAULT_WATCH_TIMEOUT_MS
}

fn default_health_timeout_ms() -> u64 {
    DEFAULT_HEALTH_TIMEOUT_MS
}

/// One service of the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique on the device; 1–64 of `[A-Za-z0-9._-]` (it names the backup
    /// file and goes into the poll's `have` list).
    pub name: String,
    /// The center config it uses. In a config file either
    /// `"namespace/group/name"` or `{namespace, group, name}`.
    #[serde(with = "key_text")]
    pub config: ConfigKey,
    /// The file the config is written to.
    pub path: PathBuf,
    /// Command (argv, no shell) run after the file changed; empty: none.
    #[serde(default)]
    pub reload: Vec<String>,
    /// Command (argv, no shell) whose exit status 0 means healthy; empty:
    /// none.
    #[serde(default)]
    pub health: Vec<String>,
    /// Deadline of the health check (0: the default, 5000).
    #[serde(default = "default_health_timeout_ms")]
    pub health_timeout_ms: u64,
    /// Services of this device updated before this one.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// The device side's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Base URL of the center, `http://host:port`.
    pub center: String,
    /// This device's name at the center.
    pub device: String,
    /// Directory of the local backup store.
    pub backup_dir: PathBuf,
    /// The device's services.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// How long the center may hold a poll (0: the default, 30000).
    #[serde(default = "default_watch_timeout_ms")]
    pub watch_timeout_ms: u64,
}

/// `ConfigKey` as `"ns/group/name"` text in config files (the structured
/// form is accepted too).
mod key_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use super::ConfigKey;

    pub fn serialize<S: Serializer>(key: &ConfigKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Parts {
            namespace: String,
            group: String,
            name: String,
        },
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ConfigKey, D::Error> {
        match Either::deserialize(d)? {
            Either::Text(text) => text.parse().map_err(D::Error::custom),
            Either::Parts {
                namespace,
                group,
                name,
            } => ConfigKey::new(namespace, group, name).map_err(D::Error::custom),
        }
    }
}

impl DeviceConfig {
    /// Checks the config: a usable center URL, a valid device name, valid and
    /// unique service names, distinct files, dependencies that exist and no
    /// dependency cycle.
    pub fn validate(&self) -> anyhow::Result<()> {
        center_url(&self.center)?;
        wire::check_name("device", &self.device).map_err(|e| anyhow!(e))?;
        if self.backup_dir.as_os_str().is_empty() {
            bail!("backup_dir is empty");
        }
        let mut names = HashSet::new();
        let mut paths = HashMap::new();
        for svc in &self.services {
            wire::check_name("service", &svc.name).map_err(|e| anyhow!(e))?;
            if !names.insert(svc.name.as_str()) {
                bail!("service {:?} is declared twice", svc.name);
            }
            svc.config
                .validate()
                .map_err(|e| anyhow!("service {:?}: {e}", svc.name))?;
            if svc.path.file_name().is_none() {
                bail!(
                    "service {:?}: path {:?} does not name a file",
                    svc.name,
                    svc.path
                );
            }
            if let Some(other) = paths.insert(svc.path.clone(), svc.name.as_str()) {
                bail!(
                    "services {other:?} and {:?} both write {}",
                    svc.name,
                    svc.path.display()
                );
            }
            for (what, argv) in [("reload", &svc.reload), ("health", &svc.health)] {
                if argv.first().is_some_and(|p| p.is_empty()) {
                    bail!(
                        "service {:?}: {what} command has an empty program",
                        svc.name
                    );
                }
            }
        }
        for svc in &self.services {
            for dep in &svc.depends_on {
                if dep == &svc.name {
                    bail!("service {:?} depends on itself", svc.name);
                }
                if !names.contains(dep.as_str()) {
                    bail!(
                        "service {:?} depends on {dep:?}, which is not a service of this device",
                        svc.name
                    );
                }
            }
        }
        if let Some(cycle) = find_cycle(&self.services) {
            bail!("service dependency cycle: {}", cycle.join(" -> "));
        }
        Ok(())
    }
}

/// A dependency cycle among `services` (names, first repeated at the end).
fn find_cycle(services: &[ServiceConfig]) -> Option<Vec<String>> {
    let deps: HashMap<&str, &[String]> = services
        .iter()
        .map(|s| (s.name.as_str(), s.depends_on.as_slice()))
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        node: &'a str,
        deps: &HashMap<&'a str, &'a [String]>,
        mark: &mut HashMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match mark.get(node).copied().unwrap_or(0) {
            2 => return None,
            1 => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        mark.insert(node, 1);
        path.push(node);
        for dep in deps.get(node).copied().unwrap_or_default() {
            if let Some(cycle) = visit(dep.as_str(), deps, mark, path) {
                return Some(cycle);
            }
        }
        path.pop();
        mark.insert(node, 2);
        None
    }
    for svc in services {
        if let Some(cycle) = visit(svc.name.as_str(), &deps, &mut mark, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// Indices of `services`, every service after the ones it depends on, else
/// in declaration order. The dependencies must exist and be acyclic.
fn dependency_order(services: &[ServiceConfig]) -> Vec<usize> {
    let index: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    fn visit(
        i: usize,
        services: &[ServiceConfig],
        index: &HashMap<&str, usize>,
        done: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        if done[i] {
            return;
        }
        done[i] = true;
        for dep in &services[i].depends_on {
            if let Some(&d) = index.get(dep.as_str()) {
                visit(d, services, index, done, order);
            }
        }
        order.push(i);
    }
    let mut done = vec![false; services.len()];
    let mut order = Vec::with_capacity(services.len());
    for i in 0..services.len() {
        visit(i, services, &index, &mut done, &mut order);
    }
    order
}

fn center_url(center: &str) -> anyhow::Result<reqwest::Url> {
    let url =
        reqwest::Url::parse(center).with_context(|| format!("center URL {center:?} is invalid"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        bail!("center URL {center:?} is not an http:// URL");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("center URL {center:?} must not have a query or fragment");
    }
    Ok(url)
}

/// What one service looks like to an operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceReport {
    pub name: String,
    /// `namespace/group/name`.
    pub key: String,
    pub path: String,
    /// Version in the backup store (the one applied last), if any.
    pub version: Option<u64>,
    /// Its MD5.
    pub md5: Option<String>,
    /// What happened last, in words.
    pub last_result: String,
    /// When the backup's version was applied (ms since the epoch).
    pub last_applied_ms: Option<u64>,
}

/// Counters of the device task.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Long polls answered.
    pub watches: u64,
    /// Assignments received.
    pub assignments: u64,
    /// Config versions fetched.
    pub fetched: u64,
    /// Assignments acknowledged without fetching: the MD5 equalled the
    /// backup's.
    pub skipped_same_md5: u64,
    /// Versions applied successfully.
    pub applied: u64,
    /// Assignments acknowledged as failed (apply failures, MD5 mismatches,
    /// unknown services).
    pub failed: u64,
    /// Service files put back from the backup store at start.
    pub restored_from_backup: u64,
    /// Center requests that failed (unreachable, timeouts, 4xx, 5xx).
    pub center_errors: u64,
}

/// The device's state for operators (`show rollout`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeviceReport {
    pub device: String,
    pub center: String,
    /// The last center request got an answer.
    pub connected: bool,
    pub services: Vec<ServiceReport>,
    pub counters: DeviceCounters,
}

/// Handle to the device task; cheap to clone.
#[derive(Clone)]
pub struct DeviceHandle {
    reports: watch::Receiver<DeviceReport>,
    stop: Arc<watch::Sender<bool>>,
}

impl DeviceHandle {
    /// The device's current state.
    pub async fn report(&self) -> DeviceReport {
        self.reports.borrow().clone()
    }

    /// A receiver that sees every report the task publishes (it errors once
    /// the task has stopped).
    pub fn subscribe(&self) -> watch::Receiver<DeviceReport> {
        self.reports.clone()
    }

    /// Stops the task at its next safe point (never in the middle of an
    /// apply) and waits until it has stopped.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let mut reports = self.reports.clone();
        while reports.changed().await.is_ok() {}
    }
}

/// A failed center request.
#[derive(Debug)]
struct CenterError {
    /// "GET http://..." .
    what: String,
    /// The HTTP status, if the center answered.
    status: Option<reqwest::StatusCode>,
    detail: String,
}

impl CenterError {
    /// Worth sending again (transport error or 5xx), as opposed to a 4xx
    /// refusal.
    fn retryable(&self) -> bool {
        self.status.is_none_or(|s| !s.is_client_error())
    }
}

impl fmt::Display for CenterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{}: {status}: {}", self.what, self.detail),
            None => write!(f, "{}: {}", self.what, self.detail),
        }
    }
}

/// An error with its sources, on one line.
fn error_chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

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
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        let quarter = (base.as_millis() as u64 / 4).max(1);
        base + Duration::from_millis(nanos % quarter)
    }
}

/// Waits until a stop is requested (forever if it can no longer be).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("file task failed: {e}"))?
}

struct Service {
    config: ServiceConfig,
    /// What the backup store holds for it.
    backup: Option<Backup>,
    last_result: String,
}

/// How processing one assignment went.
enum Step {
    /// Applied, skipped or refused, and acknowledged (or queued to be).
    Answered { ok: bool },
    /// Acknowledged as already there (same MD5 as the backup): nothing done.
    Skipped,
    /// Failed earlier and offered again too soon: not redone.
    Repeat,
    /// The center failed us midway (fetch); nothing was changed.
    CenterTrouble,
}

/// A failed or refused assignment.
struct Failure {
    rollout_id: u64,
    /// Lower case.
    md5: String,
    /// Times it failed in a row without being withdrawn in between.
    attempts: u32,
    /// When it last failed.
    at: Instant,
    /// A poll answer came without it since.
    withdrawn: bool,
}

/// The device task's state. Only the task touches it; see [`Device::spawn`].
pub struct Device {
    config: DeviceConfig,
    base: reqwest::Url,
    client: reqwest::Client,
    store: BackupStore,
    services: Vec<Service>,
    index: HashMap<String, usize>,
    counters: DeviceCounters,
    connected: bool,
    /// The last failed (or refused) assignment of each service named by the
    /// center; see [`Device::retry_now`].
    failures: HashMap<String, Failure>,
    /// Acknowledgements still to deliver, with the attempts made.
    pending_acks: VecDeque<(Ack, u32)>,
    reports: watch::Sender<DeviceReport>,
    stop: watch::Receiver<bool>,
}

impl Device {
    /// Validates `config`, opens the backup store and starts the device task.
    /// The task restores services from the backup store before it contacts
    /// the center.
    pub async fn spawn(config: DeviceConfig) -> anyhow::Result<DeviceHandle> {
        let mut config = config;
        config.validate()?;
        if config.watch_timeout_ms == 0 {
            config.watch_timeout_ms = DEFAULT_WATCH_TIMEOUT_MS;
        }
        for svc in &mut config.services {
            if svc.health_timeout_ms == 0 {
                svc.health_timeout_ms = DEFAULT_HEALTH_TIMEOUT_MS;
            }
        }
        let base = center_url(&config.center)?;
        let dir = config.backup_dir.clone();
        let store = blocking(move || BackupStore::open(&dir)).await?;
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
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
        let (stop_tx, stop_rx) = watch::channel(false);
        let device = Device {
            config,
            base,
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
            stop: stop_rx,
        };
        device.reports.send_replace(device.snapshot());
        let handle = DeviceHandle {
            reports: device.reports.subscribe(),
            stop: Arc::new(stop_tx),
        };
        tokio::spawn(device.run());
        Ok(handle)
    }

    fn snapshot(&self) -> DeviceReport {
        DeviceReport {
            device: self.config.device.clone(),
            center: self.config.center.clone(),
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

    fn publish(&self) {
        self.reports.send_replace(self.snapshot());
    }

    fn stop_requested(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps `d`; true if a stop was requested meanwhile.
    async fn pause(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = tokio::time::sleep(d) => false,
            () = stopped(&mut stop) => true,
        }
    }

    async fn run(mut self) {
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
                        tracing::info!(
                            device = %self.config.device,
                            center = %self.config.center,
                            services = self.services.len(),
                            "registered with the config center"
                        );
                        self.publish();
                        break;
                    }
                    Err(e) => {
                        self.center_error(&e);
                        self.publish();
                        if self.pause(backoff.next()).await {
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
                let started = Instant::now();
                let mut stop = self.stop.clone();
                let result = tokio::select! {
                    r = self.watch() => r,
                    () = stopped(&mut stop) => return,
                };
                let answer = match result {
                    Ok(answer) => answer,
                    Err(e) => {
                        self.center_error(&e);
                        self.publish();
                        if self.pause(backoff.next()).await {
                            return;
                        }
                        continue 'register;
                    }
                };
                backoff.reset();
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

    /// SPEC 6.4: puts back every service's file from the backup store if it
    /// is missing or differs, and reloads the service; dependencies first.
    async fn restore_all(&mut self) {
        for idx in dependency_order(&self.config.services) {
            let name = self.services[idx].config.name.clone();
            let loaded = {
                let backups = self.store.clone();
                let name = name.clone();
                blocking(move || backups.load(&name)).await
            };
            let backup = match loaded {
                Ok(Some(backup)) => backup,
                Ok(None) => {
                    self.services[idx].last_result = "no backup yet".into();
                    continue;
                }
                Err(e) => {
                    tracing::warn!(service = %name, error = %format!("{e:#}"), "ignoring an unreadable backup; the center will send the config again");
                    self.services[idx].last_result = format!("backup unreadable: {e:#}");
                    continue;
                }
            };
            let version = backup.current.version;
            let path = self.services[idx].config.path.clone();
            let content = backup.current.content.clone();
            self.services[idx].backup = Some(backup);
            let restored = blocking(move || {
                let on_disk = store::read_optional(&path).ok().flatten();
                if on_disk.as_deref() == Some(content.as_bytes()) {
                    return Ok(false);
                }
                store::write_atomic(&path, content.as_bytes())?;
                Ok(true)
            })
            .await;
            let svc = &self.services[idx].config;
            match restored {
                Ok(false) => {
                    self.services[idx].last_result = format!("v{version} in place (backup)");
                }
                Ok(true) => {
                    self.counters.restored_from_backup += 1;
                    tracing::info!(service = %name, version, path = %svc.path.display(), "restored the config file from the local backup");
                    let mut result = format!("restored v{version} from backup");
                    if let Err(e) = self.reload(idx, version, "restore").await {
                        tracing::warn!(service = %name, "reload after restoring from backup failed: {e}");
                        result.push_str(&format!("; reload failed: {e}"));
                    }
                    self.services[idx].last_result = result;
                }
                Err(e) => {
                    tracing::error!(service = %name, path = %svc.path.display(), "restoring from the local backup failed: {e:#}");
                    self.services[idx].last_result = format!("restore from backup failed: {e:#}");
                }
            }
        }
    }

    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn center_error(&mut self, e: &CenterError) {
        self.counters.center_errors += 1;
        if e.status.is_none() {
            self.connected = false;
        }
        tracing::warn!(device = %self.config.device, "config center: {e}");
    }

    /// Sends `request`, returns the body of a 2xx answer (bounded), or the
    /// status and start of the body of any other.
    async fn call(
        &mut self,
        what: String,
        request: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, CenterError> {
        let fail = |status, detail| CenterError {
            what: what.clone(),
            status,
            detail,
        };
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.connected = false;
                return Err(fail(None, error_chain(&e)));
            }
        };
        self.connected = true;
        let status = response.status();
        let limit = if status.is_success() {
            MAX_ANSWER_BYTES
        } else {
            MAX_ERROR_BODY
        };
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        truncated = true;
                        body.extend_from_slice(&chunk[..limit - body.len()]);
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(fail(Some(status), error_chain(&e))),
            }
        }
        if status.is_success() {
            if truncated {
                return Err(fail(
                    Some(status),
                    format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
                ));
            }
            return Ok(body);
        }
        let mut text = String::from_utf8_lossy(&body).trim().to_string();
        if let Ok(api) = serde_json::from_slice::<wire::ApiError>(&body) {
            text = api.error;
        }
        if truncated {
            text.push_str(" ...");
        }
        Err(fail(Some(status), text))
    }

    async fn call_json<T: serde::de::DeserializeOwned>(
        &mut self,
        what: String,
        request: reqwest::RequestBuilder,
    ) -> Result<T, CenterError> {
        let body = self.call(what.clone(), request).await?;
        serde_json::from_slice(&body).map_err(|e| CenterError {
            what,
            status: Some(reqwest::StatusCode::OK),
            detail: format!("unexpected answer: {e}"),
        })
    }

    async fn register(&mut self) -> Result<(), CenterError> {
        let body = Register {
            services: self
                .services
                .iter()
                .map(|s| ServiceRegistration {
                    name: s.config.name.clone(),
                    config: s.config.config.clone(),
                    depends_on: s.config.depends_on.clone(),
                })
                .collect(),
        };
        let url = self.url(&["v1", "devices", &self.config.device, "register"]);
        let request = self
            .client
            .post(url.clone())
            .timeout(REQUEST_TIMEOUT)
            .json(&body);
        self.call(format!("POST {url}"), request).await.map(drop)
    }

    /// The `have` list: `service:md5` for every service with a backup.
    fn have(&self) -> String {
        self.services
            .iter()
            .filter_map(|s| {
                s.backup
                    .as_ref()
                    .map(|b| format!("{}:{}", s.config.name, b.current.md5))
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn watch(&mut self) -> Result<WatchAnswer, CenterError> {
        let mut url = self.url(&["v1", "devices", &self.config.device, "watch"]);
        url.query_pairs_mut()
            .append_pair("have", &self.have())
            .append_pair("timeout_ms", &self.config.watch_timeout_ms.to_string());
        let request = self
            .client
            .get(url.clone())
            .timeout(Duration::from_millis(self.config.watch_timeout_ms) + WATCH_SLACK);
        self.call_json(format!("GET {url}"), request).await
    }

    async fn fetch(&mut self, key: &ConfigKey, version: u64) -> Result<ConfigRecord, CenterError> {
        let mut url = self.url(&["v1", "configs", &key.namespace, &key.group, &key.name]);
        url.query_pairs_mut()
            .append_pair("version", &version.to_string());
        let request = self.client.get(url.clone()).timeout(REQUEST_TIMEOUT);
        self.call_json(format!("GET {url}"), request).await
    }

    async fn send_ack(&mut self, ack: &Ack) -> Result<(), CenterError> {
        let url = self.url(&["v1", "devices", &self.config.device, "ack"]);
        let request = self
            .client
            .post(url.clone())
            .timeout(REQUEST_TIMEOUT)
            .json(ack);
        self.call(format!("POST {url}"), request).await.map(drop)
    }

    /// Acknowledges `assignment`; if the center cannot take it now, queues it
    /// for [`Device::flush_acks`]. A 4xx refusal (e.g. 409: not assigned) is
    /// logged and dropped.
    async fn ack(&mut self, assignment: &Assignment, ok: bool, reason: String) {
        let ack = Ack {
            rollout_id: assignment.rollout_id,
            service: assignment.service.clone(),
            version: assignment.version,
            ok,
            reason,
        };
        self.deliver(ack, 0).await;
    }

    async fn deliver(&mut self, ack: Ack, attempts: u32) {
        match self.send_ack(&ack).await {
            Ok(()) => {}
            Err(e) => {
                self.center_error(&e);
                if e.retryable() && attempts + 1 < ACK_ATTEMPTS {
                    self.pending_acks.push_back((ack, attempts + 1));
                } else {
                    tracing::warn!(
                        service = %ack.service,
                        rollout = ack.rollout_id,
                        version = ack.version,
                        "acknowledgement dropped: {e}"
                    );
                }
            }
        }
    }

    async fn flush_acks(&mut self) {
        let pending = std::mem::take(&mut self.pending_acks);
        for (ack, attempts) in pending {
            self.deliver(ack, attempts).await;
        }
    }

    /// Remembers that `assignment` failed.
    fn remember_failure(&mut self, assignment: &Assignment) {
        let md5 = assignment.md5.to_ascii_lowercase();
        if self.failures.len() >= MAX_FAILURES && !self.failures.contains_key(&assignment.service) {
            self.failures.clear();
        }
        let attempts = match self.failures.get(&assignment.service) {
            Some(f) if f.rollout_id == assignment.rollout_id && f.md5 == md5 && !f.withdrawn => {
                f.attempts + 1
            }
            _ => 1,
        };
        self.failures.insert(
            assignment.service.clone(),
            Failure {
                rollout_id: assignment.rollout_id,
                md5,
                attempts,
                at: Instant::now(),
                withdrawn: false,
            },
        );
    }

    /// Marks the failures the center no longer offers as withdrawn: if it
    /// offers one again later, that is a deliberate retry (a resumed
    /// rollout).
    fn note_withdrawals(&mut self, offered: &[Assignment]) {
        for (service, f) in &mut self.failures {
            let still = offered.iter().any(|a| {
                &a.service == service
                    && a.rollout_id == f.rollout_id
                    && a.md5.eq_ignore_ascii_case(&f.md5)
            });
            if !still {
                f.withdrawn = true;
            }
        }
    }

    /// Whether an assignment that failed before may be tried again now. The
    /// center withdraws a failed assignment once it has the failure; offering
    /// it again afterwards means retry. A center that keeps offering it is
    /// answered at a decreasing pace instead of the config being applied and
    /// rolled back in a loop; nothing is retried while its failure is still
    /// waiting to be delivered.
    fn retry_now(&self, a: &Assignment, md5: &str) -> bool {
        let Some(f) = self.failures.get(&a.service) else {
            return true;
        };
        if f.rollout_id != a.rollout_id || f.md5 != md5 {
            return true;
        }
        let undelivered = self
            .pending_acks
            .iter()
            .any(|(k, _)| k.service == a.service && k.rollout_id == a.rollout_id);
        if undelivered {
            return false;
        }
        if f.withdrawn {
            return true;
        }
        let delay = match f.attempts {
            0 | 1 => Duration::ZERO,
            n => Duration::from_secs(1u64 << (n - 2).min(6)).min(RETRY_MAX),
        };
        f.at.elapsed() >= delay
    }

    /// Refuses `assignment` with `reason` without touching anything.
    async fn refuse(&mut self, assignment: &Assignment, reason: String) -> Step {
        tracing::warn!(
            service = %assignment.service,
            rollout = assignment.rollout_id,
            version = assignment.version,
            "refusing assignment: {reason}"
        );
        self.counters.failed += 1;
        if let Some(&idx) = self.index.get(&assignment.service) {
            self.services[idx].last_result = format!("failed v{}: {reason}", assignment.version);
        }
        self.remember_failure(assignment);
        self.ack(assignment, false, reason).await;
        Step::Answered { ok: false }
    }

    async fn process(&mut self, a: Assignment) -> Step {
        let md5 = a.md5.to_ascii_lowercase();
        if !self.retry_now(&a, &md5) {
            tracing::debug!(service = %a.service, rollout = a.rollout_id, "failed assignment offered again: not yet");
            return Step::Repeat;
        }
        let Some(&idx) = self.index.get(&a.service) else {
            return self.refuse(&a, "unknown service".into()).await;
        };
        let expected = &self.services[idx].config.config;
        if &a.key != expected {
            let reason = format!(
                "config mismatch: assigned {}, the service uses {expected}",
                a.key
            );
            return self.refuse(&a, reason).await;
        }
        if let Some(backup) = &self.services[idx].backup
            && backup.current.md5.eq_ignore_ascii_case(&md5)
        {
            self.counters.skipped_same_md5 += 1;
            self.services[idx].last_result = format!(
                "v{} has the MD5 of v{} (backup): not fetched",
                a.version, backup.current.version
            );
            tracing::info!(service = %a.service, version = a.version, "same MD5 as the backup: acknowledging without fetching");
            self.failures.remove(&a.service);
            self.ack(&a, true, String::new()).await;
            return Step::Skipped;
        }
        let record = match self.fetch(&a.key, a.version).await {
            Ok(record) => record,
            Err(e) => {
                // Nothing touched; the assignment comes back with the next
                // poll.
                self.center_error(&e);
                self.services[idx].last_result =
                    format!("fetching v{} failed (will retry): {e}", a.version);
                return Step::CenterTrouble;
            }
        };
        self.counters.fetched += 1;
        let actual = md5_hex(record.content.as_bytes());
        if actual != md5 {
            return self
                .refuse(
                    &a,
                    format!(
                        "md5 mismatch: assigned {md5}, fetched v{} has {actual}",
                        record.version
                    ),
                )
                .await;
        }
        if record.key != a.key {
            let reason = format!("fetched record is {}, not {}", record.key, a.key);
            return self.refuse(&a, reason).await;
        }
        let version = a.version;
        match self.apply(idx, record).await {
            Ok(()) => {
                self.counters.applied += 1;
                self.services[idx].last_result = format!("applied v{version}");
                tracing::info!(service = %a.service, version, rollout = a.rollout_id, "config applied");
                self.failures.remove(&a.service);
                self.ack(&a, true, String::new()).await;
                Step::Answered { ok: true }
            }
            Err(reason) => {
                tracing::warn!(service = %a.service, version, rollout = a.rollout_id, "config not applied: {reason}");
                self.counters.failed += 1;
                self.services[idx].last_result = format!("failed v{version}: {reason}");
                self.remember_failure(&a);
                self.ack(&a, false, reason).await;
                Step::Answered { ok: false }
            }
        }
    }

    /// Runs the service's reload command, if it has one.
    async fn reload(&self, idx: usize, version: u64, phase: &str) -> Result<(), String> {
        let svc = &self.services[idx].config;
        if svc.reload.is_empty() {
            return Ok(());
        }
        self.run_command(idx, &svc.reload, RELOAD_TIMEOUT, version, phase)
            .await
    }

    async fn health(&self, idx: usize, version: u64) -> Result<(), String> {
        let svc = &self.services[idx].config;
        if svc.health.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_millis(svc.health_timeout_ms);
        self.run_command(idx, &svc.health, timeout, version, "health")
            .await
    }

    async fn run_command(
        &self,
        idx: usize,
        argv: &[String],
        timeout: Duration,
        version: u64,
        phase: &str,
    ) -> Result<(), String> {
        let svc = &self.services[idx].config;
        let path = svc.path.display().to_string();
        let version = version.to_string();
        let envs = [
            ("SYNC_SERVICE", svc.name.as_str()),
            ("SYNC_CONFIG_PATH", path.as_str()),
            ("SYNC_CONFIG_VERSION", version.as_str()),
            ("SYNC_PHASE", phase),
        ];
        match command::run(argv, &envs, timeout).await {
            Ok(outcome) if outcome.success() => {
                tracing::debug!(service = %svc.name, phase, "command succeeded: {outcome}");
                Ok(())
            }
            Ok(outcome) => Err(outcome.to_string()),
            Err(e) => Err(format!("could not run {:?}: {e:#}", argv[0])),
        }
    }

    /// Writes `record` to the service's file, reloads, health-checks and
    /// saves the backup; on any failure puts the previous file back (or
    /// removes it if there was none), reloads again and says why.
    async fn apply(&mut self, idx: usize, record: ConfigRecord) -> Result<(), String> {
        let path = self.services[idx].config.path.clone();
        let version = record.version;
        let previous = {
            let path = path.clone();
            blocking(move || Ok(store::read_optional(&path)?)).await
        }
        .map_err(|e| format!("reading {}: {e:#}", path.display()))?;

        let written = {
            let path = path.clone();
            let content = record.content.clone();
            let previous = previous.clone();
            blocking(
                move || match store::write_atomic(&path, content.as_bytes()) {
                    Ok(()) => Ok(Ok(())),
                    Err(e) => {
                        // The rename may have happened before a later step
                        // failed: make sure the old file is what is left.
                        let now = store::read_optional(&path).ok().flatten();
                        if now != previous {
                            store::restore_previous(&path, previous.as_deref())?;
                        }
                        Ok(Err(format!("writing {}: {e:#}", path.display())))
                    }
                },
            )
            .await
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(reason),
            Err(e) => {
                return Err(format!(
                    "writing {} failed and so did putting the old file back: {e:#}",
                    path.display()
                ));
            }
        }

        let mut failure = match self.reload(idx, version, "apply").await {
            Err(e) => Some(format!("reload failed: {e}")),
            Ok(()) => match self.health(idx, version).await {
                Err(e) => Some(format!("health check failed: {e}")),
                Ok(()) => None,
            },
        };
        if failure.is_none() {
            let backup = Backup {
                service: self.services[idx].config.name.clone(),
                previous: self.services[idx]
                    .backup
                    .as_ref()
                    .map(|b| b.current.clone()),
                current: record,
                applied_ms: now_ms(),
            };
            let backups = self.store.clone();
            let saved = backup.clone();
            match blocking(move || backups.save(&saved)).await {
                Ok(()) => {
                    self.services[idx].backup = Some(backup);
                    return Ok(());
                }
                Err(e) => failure = Some(format!("saving the local backup: {e:#}")),
            }
        }
        let mut reason = failure.unwrap_or_default();

        let restored = {
            let path = path.clone();
            let previous = previous.clone();
            blocking(move || store::restore_previous(&path, previous.as_deref())).await
        };
        match (restored, previous.is_some()) {
            (Ok(()), true) => reason.push_str("; previous file restored"),
            (Ok(()), false) => reason.push_str("; new file removed (there was none before)"),
            (Err(e), _) => {
                tracing::error!(path = %path.display(), "putting the previous file back failed: {e:#}");
                reason.push_str(&format!("; putting the previous file back failed: {e:#}"));
            }
        }
        let old_version = self.services[idx]
            .backup
            .as_ref()
            .map_or(0, |b| b.current.version);
        if let Err(e) = self.reload(idx, old_version, "rollback").await {
            reason.push_str(&format!("; reload after restoring failed: {e}"));
        }
        Err(reason)
    }
}
