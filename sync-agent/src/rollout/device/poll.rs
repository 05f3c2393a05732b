//! The device's side of the center's HTTP API: register, the long poll,
//! fetching a version and acknowledging (with a queue of acknowledgements
//! the center could not take yet). Every answer is read with a size bound.

use std::{error::Error as StdError, fmt, time::Duration};

use anyhow::Context as _;

use super::config::DeviceConfig;
use super::task::Task;
use crate::rollout::client;
use crate::rollout::wire::{
    self, Ack, Assignment, ConfigKey, ConfigRecord, Register, ServiceRegistration, WatchAnswer,
};

/// Deadline of a center request other than the long poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time given to a long poll beyond what was asked of the center.
const WATCH_SLACK: Duration = Duration::from_secs(15);
/// Deadline of a TCP connection to the center.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from the center (a config record with its content).
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// How much of an error answer's body is kept for the log.
const MAX_ERROR_BODY: usize = 1024;
/// An acknowledgement the center could not take (unreachable, 5xx) is tried
/// again before every poll, this many times at most.
const ACK_ATTEMPTS: u32 = 50;

/// The HTTP client the task talks to the center with (no proxy: the center
/// is on the management network), sending the device's token (`token_file`)
/// and trusting `ca_file` for HTTPS. The token file is read here, when the
/// device side starts (a replaced token takes effect with a restart).
pub(super) fn http_client(config: &DeviceConfig) -> anyhow::Result<reqwest::Client> {
    let token = config
        .token_file
        .as_deref()
        .map(client::read_token_file)
        .transpose()
        .context("rollout.device.token_file")?;
    client::client_builder(token.as_deref(), config.ca_file.as_deref())
        .context("rollout.device")?
        .connect_timeout(CONNECT_TIMEOUT)
        .no_proxy()
        .build()
        .context("building the HTTP client")
}

#[derive(Debug)]
pub(super) struct CenterError {
    /// "GET http://..." .
    what: String,
    /// The HTTP status, if the center answered.
    status: Option<reqwest::StatusCode>,
    detail: String,
}

impl CenterError {
    /// Worth sending again (transport error or 5xx), as opposed to a 4xx
    /// refusal.
    pub(super) fn retryable(&self) -> bool {
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

impl Task {
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Counts and logs a failed request; if the center did not answer (or
    /// answered 5xx) and the device knows several, moves to the next one.
    /// Returns true if that one has not been tried since a center last
    /// answered (so the caller need not wait before trying it).
    pub(super) fn center_error(&mut self, e: &CenterError) -> bool {
        self.counters.center_errors += 1;
        if e.status.is_none() {
            self.connected = false;
        }
        tracing::warn!(device = %self.config.device, "config center: {e}");
        let count = self.bases.len();
        if count < 2 || !e.retryable() {
            return false;
        }
        self.at = (self.at + 1) % count;
        self.base = self.bases[self.at].clone();
        let fresh = self.untried > 0;
        self.untried = self.untried.saturating_sub(1);
        tracing::warn!(
            device = %self.config.device,
            center = %self.config.center.0[self.at],
            "config center: failing over to the next center"
        );
        fresh
    }

    /// A center answered: every other one counts as untried again.
    pub(super) fn center_answered(&mut self) {
        self.untried = self.bases.len().saturating_sub(1);
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

    pub(super) async fn register(&mut self) -> Result<(), CenterError> {
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
            labels: self.config.labels.clone(),
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

    pub(super) async fn watch(&mut self) -> Result<WatchAnswer, CenterError> {
        let mut url = self.url(&["v1", "devices", &self.config.device, "watch"]);
        // Without long polling the center answers at once.
        let hold_ms = if self.config.long_poll {
            self.config.watch_timeout_ms
        } else {
            0
        };
        url.query_pairs_mut()
            .append_pair("have", &self.have())
            .append_pair("timeout_ms", &hold_ms.to_string());
        let request = self
            .client
            .get(url.clone())
            .timeout(Duration::from_millis(hold_ms) + WATCH_SLACK);
        self.call_json(format!("GET {url}"), request).await
    }

    pub(super) async fn fetch(
        &mut self,
        key: &ConfigKey,
        version: u64,
    ) -> Result<ConfigRecord, CenterError> {
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
    /// for [`Task::flush_acks`]. A 4xx refusal (e.g. 409: not assigned) is
    /// logged and dropped.
    pub(super) async fn ack(&mut self, assignment: &Assignment, ok: bool, reason: String) {
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

    pub(super) async fn flush_acks(&mut self) {
        let pending = std::mem::take(&mut self.pending_acks);
        for (ack, attempts) in pending {
            self.deliver(ack, attempts).await;
        }
    }
}
