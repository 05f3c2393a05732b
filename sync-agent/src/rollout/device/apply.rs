//! Handling one assignment: skip it when the backup already has its MD5,
//! otherwise fetch, check, write atomically, reload, health-check and keep a
//! backup; on failure put the previous file back, reload again and
//! acknowledge the failure with the reason. Also the restore from the backup
//! store at start (SPEC 6.4), and the memory of failed assignments that
//! paces a center offering one again.

use std::time::{Duration, Instant};

use super::command;
use super::config::dependency_order;
use super::store::{self, Backup};
use super::task::{Task, blocking};
use crate::clock::now_ms;
use crate::rollout::wire::{Assignment, ConfigRecord, md5_hex};

/// Deadline of a reload command.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on remembered failures (services the center named, known or not).
const MAX_FAILURES: usize = 4096;
/// A failed assignment offered again without having been withdrawn in
/// between is retried at once the first time, then after 1 s, 2 s, 4 s ...
/// up to this.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// How processing one assignment went.
pub(super) enum Step {
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
pub(super) struct Failure {
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

impl Task {
    /// SPEC 6.4: puts back every service's file from the backup store if it
    /// is missing or differs, and reloads the service; dependencies first.
    pub(super) async fn restore_all(&mut self) {
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
    pub(super) fn note_withdrawals(&mut self, offered: &[Assignment]) {
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

    /// Handles one assignment of a poll answer, acknowledging it (or
    /// queueing the acknowledgement) unless the center failed midway.
    pub(super) async fn process(&mut self, a: Assignment) -> Step {
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
