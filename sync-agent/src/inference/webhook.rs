//! Alarms posted to an Alertmanager-compatible receiver
//! (`[inference.alarms.webhook]`).
//!
//! The body is Alertmanager's `POST /api/v2/alerts` one: a JSON array of
//! alerts with `labels` (their identity: `alertname`, `switch`, `object`),
//! `annotations` (state, level, root causes, suppressed objects, as text),
//! `startsAt` and, for a cleared alarm, `endsAt`. An alert Alertmanager
//! does not hear of again within its `resolve_timeout` resolves itself, so
//! the raised ones are posted again every `repeat_s`.
//!
//! One task owns the alerts it has to keep repeating; the inference task
//! hands it [`Notice`]s over a bounded queue and never waits on it (a full
//! queue drops and counts). Its counters go out on a `watch`.

use std::{
    collections::BTreeMap,
    time::{Duration, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::{
    alarms::{AlarmView, Notice},
    config::WebhookConfig,
};

/// Notices waiting for the webhook task.
const QUEUE_DEPTH: usize = 1024;
/// `alertname` of every alert.
pub const ALERT_NAME: &str = "MlagSyncInferenceAlarm";

/// Counters of the webhook task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStats {
    /// Posts that the receiver accepted (2xx).
    pub posts: u64,
    /// Posts that failed (no answer, or not 2xx).
    pub failures: u64,
    /// Notices dropped because the webhook task's queue was full.
    pub dropped: u64,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Where the inference task hands notices to the webhook task.
#[derive(Debug)]
pub(super) struct Webhook {
    notices: mpsc::Sender<Notice>,
    stats: watch::Receiver<WebhookStats>,
    dropped: u64,
}

impl Webhook {
    /// Starts the webhook task for `config`; `switch` is the `switch` label.
    pub(super) fn spawn(config: &WebhookConfig, switch: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|err| anyhow::anyhow!("inference.alarms.webhook: {err}"))?;
        let (notices, rx) = mpsc::channel(QUEUE_DEPTH);
        let (stats_tx, stats) = watch::channel(WebhookStats::default());
        let poster = Poster {
            client,
            url: config.url.clone(),
            switch: switch.to_string(),
            repeat: (config.repeat_s > 0).then(|| Duration::from_secs(config.repeat_s)),
            raised: BTreeMap::new(),
            stats: WebhookStats::default(),
            stats_tx,
        };
        tokio::spawn(poster.run(rx));
        Ok(Self {
            notices,
            stats,
            dropped: 0,
        })
    }

    /// Hands notices over without waiting; a full queue drops and counts.
    pub(super) fn tell(&mut self, notices: Vec<Notice>) {
        for notice in notices {
            if self.notices.try_send(notice).is_err() {
                self.dropped += 1;
            }
        }
    }

    /// The webhook task's counters (with the drops counted here).
    pub(super) fn stats(&self) -> WebhookStats {
        let mut stats = self.stats.borrow().clone();
        stats.dropped = self.dropped;
        stats
    }
}

/// The webhook task's state.
struct Poster {
    client: reqwest::Client,
    url: String,
    switch: String,
    repeat: Option<Duration>,
    /// Raised alarms, posted again every `repeat`.
    raised: BTreeMap<String, AlarmView>,
    stats: WebhookStats,
    stats_tx: watch::Sender<WebhookStats>,
}

impl Poster {
    async fn run(mut self, mut notices: mpsc::Receiver<Notice>) {
        let mut repeat = tokio::time::interval(self.repeat.unwrap_or(Duration::from_secs(3600)));
        repeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        repeat.tick().await;
        loop {
            let batch = tokio::select! {
                notice = notices.recv() => {
                    let Some(notice) = notice else { break };
                    let mut batch = vec![notice];
                    // Whatever else is already waiting goes in the same post.
                    while let Ok(more) = notices.try_recv() {
                        batch.push(more);
                    }
                    batch
                }
                _ = repeat.tick(), if self.repeat.is_some() => {
                    if self.raised.is_empty() {
                        continue;
                    }
                    self.raised.values().cloned().map(Notice::Raised).collect()
                }
            };
            for notice in &batch {
                match notice {
                    Notice::Raised(view) => {
                        self.raised.insert(view.object.0.clone(), view.clone());
                    }
                    Notice::Cleared(view) => {
                        self.raised.remove(&view.object.0);
                    }
                }
            }
            let body = Value::Array(batch.iter().map(|n| alert(&self.switch, n)).collect());
            self.post(&body).await;
        }
    }

    async fn post(&mut self, body: &Value) {
        let outcome = match self.client.post(&self.url).json(body).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("{} answered {}", self.url, response.status())),
            Err(err) => Err(format!("{}: {err}", self.url)),
        };
        match outcome {
            Ok(()) => self.stats.posts += 1,
            Err(err) => {
                self.stats.failures += 1;
                if self.stats.failures == 1 {
                    tracing::warn!(
                        error = err,
                        "cannot post alarms to the webhook (logged once; see `show alarms`)"
                    );
                } else {
                    tracing::debug!(error = err, "cannot post alarms to the webhook");
                }
                self.stats.last_error = Some(err);
            }
        }
        self.stats_tx.send_replace(self.stats.clone());
    }
}

/// RFC 3339 time of `ms` since the epoch.
fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn states_text(view: &AlarmView) -> String {
    view.states
        .iter()
        .map(|s| format!("{}({})", s.name, s.level))
        .collect::<Vec<_>>()
        .join(",")
}

/// One alert of the `POST /api/v2/alerts` body.
pub fn alert(switch: &str, notice: &Notice) -> Value {
    let (view, ends) = match notice {
        Notice::Raised(view) => (view, None),
        Notice::Cleared(view) => (view, Some(view.cleared_ms)),
    };
    let roots = view
        .root_causes
        .iter()
        .map(|r| r.0.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let suppressed = view
        .suppressed
        .iter()
        .map(|s| s.object.0.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let state = states_text(view);
    let mut alert = json!({
        "labels": {
            "alertname": ALERT_NAME,
            "switch": switch,
            "object": view.object.0,
        },
        "annotations": {
            "summary": format!("{} is {state}; root cause {roots}", view.object),
            "state": state,
            "level": view.level.to_string(),
            "root_cause": roots,
            "suppressed": suppressed,
        },
        "startsAt": rfc3339(view.raised_ms),
    });
    if let Some(ends) = ends {
        // A clock that went backwards must not end an alert before it began.
        let ends = ends.max(view.raised_ms);
        alert["endsAt"] = Value::String(rfc3339(ends));
    }
    alert
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::{ObjectId, StateView, alarms::SuppressedView};

    fn view(cleared_ms: u64) -> AlarmView {
        AlarmView {
            object: ObjectId::from("twin:1"),
            states: vec![StateView {
                name: "down".into(),
                level: 3,
                lost_contact: false,
                source: "peer".into(),
            }],
            level: 3,
            root_causes: vec![ObjectId::from("twin:1")],
            raised_ms: 1_700_000_000_000,
            cleared_ms,
            suppressed: vec![SuppressedView {
                object: ObjectId::from("mlag:1"),
                states: Vec::new(),
                level: 1,
            }],
        }
    }

    #[test]
    fn a_raised_alarm_is_an_alert_without_end_and_a_cleared_one_ends() {
        let raised = alert("sw1", &Notice::Raised(view(0)));
        assert_eq!(
            raised,
            json!({
                "labels": {"alertname": ALERT_NAME, "switch": "sw1", "object": "twin:1"},
                "annotations": {
                    "summary": "twin:1 is down(3); root cause twin:1",
                    "state": "down(3)",
                    "level": "3",
                    "root_cause": "twin:1",
                    "suppressed": "mlag:1",
                },
                "startsAt": "2023-11-14T22:13:20.000Z",
            })
        );
        let cleared = alert("sw1", &Notice::Cleared(view(1_700_000_060_500)));
        assert_eq!(cleared["endsAt"], "2023-11-14T22:14:20.500Z");
        assert_eq!(cleared["labels"], raised["labels"]);
        // Never an end before the start.
        let odd = alert("sw1", &Notice::Cleared(view(5)));
        assert_eq!(odd["endsAt"], odd["startsAt"]);
    }
}
