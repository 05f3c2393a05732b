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

/// What the inference task hands the webhook task.
#[derive(Debug)]
enum Message {
    /// One change.
    Notice(Notice),
    /// Every raised alarm, after notices were dropped: whatever the webhook
    /// task holds and is not in it has cleared meanwhile.
    Resync(Vec<AlarmView>),
}

/// Where the inference task hands notices to the webhook task.
#[derive(Debug)]
pub(super) struct Webhook {
    messages: mpsc::Sender<Message>,
    stats: watch::Receiver<WebhookStats>,
    dropped: u64,
    /// Notices were dropped: the next chance, the raised alarms are sent
    /// whole, so no cleared alarm keeps being posted as raised.
    resync: bool,
}

impl Webhook {
    /// Starts the webhook task for `config`; `switch` is the `switch` label.
    pub(super) fn spawn(config: &WebhookConfig, switch: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|err| anyhow::anyhow!("inference.alarms.webhook: {err}"))?;
        let (messages, rx) = mpsc::channel(QUEUE_DEPTH);
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
            messages,
            stats,
            dropped: 0,
            resync: false,
        })
    }

    /// Hands notices over without waiting; a full queue drops and counts.
    /// `raised` gives every raised alarm, asked for only when earlier
    /// notices were dropped.
    pub(super) fn tell(&mut self, notices: Vec<Notice>, raised: impl FnOnce() -> Vec<AlarmView>) {
        if self.resync {
            if notices.is_empty() {
                return;
            }
            // The snapshot includes what these notices say.
            match self.messages.try_send(Message::Resync(raised())) {
                Ok(()) => self.resync = false,
                Err(_) => self.dropped += notices.len() as u64,
            }
            return;
        }
        for notice in notices {
            if self.messages.try_send(Message::Notice(notice)).is_err() {
                self.dropped += 1;
                self.resync = true;
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
    async fn run(mut self, mut messages: mpsc::Receiver<Message>) {
        let mut repeat = tokio::time::interval(self.repeat.unwrap_or(Duration::from_secs(3600)));
        repeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        repeat.tick().await;
        loop {
            let batch = tokio::select! {
                message = messages.recv() => {
                    let Some(message) = message else { break };
                    let mut batch = Vec::new();
                    self.take(message, &mut batch);
                    // Whatever else is already waiting goes in the same post.
                    while let Ok(more) = messages.try_recv() {
                        self.take(more, &mut batch);
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

    /// Adds what `message` means to `batch`: a notice as it is; a resync as
    /// every alarm held but no longer raised, cleared now, then every
    /// raised one.
    fn take(&mut self, message: Message, batch: &mut Vec<Notice>) {
        match message {
            Message::Notice(notice) => batch.push(notice),
            Message::Resync(raised) => {
                let now = crate::clock::now_ms();
                let still: std::collections::BTreeSet<&str> =
                    raised.iter().map(|v| v.object.as_str()).collect();
                for (object, view) in &self.raised {
                    if !still.contains(object.as_str()) {
                        let mut view = view.clone();
                        view.cleared_ms = now;
                        batch.push(Notice::Cleared(view));
                    }
                }
                batch.extend(raised.into_iter().map(Notice::Raised));
            }
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

    /// A local receiver: every body posted to it, in order.
    async fn receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
        use axum::{Json, Router, routing::post};
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().route(
            "/api/v2/alerts",
            post(move |Json(body): Json<Value>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(body);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v2/alerts", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, rx)
    }

    fn config(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.to_string(),
            repeat_s: 0,
            timeout_ms: 2000,
        }
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a post within 5 s")
            .expect("receiver running")
    }

    #[tokio::test]
    async fn notices_are_posted_and_after_drops_a_resync_ends_what_cleared_meanwhile() {
        let (url, mut bodies) = receiver().await;
        let mut webhook = Webhook::spawn(&config(&url), "sw1").unwrap();
        webhook.tell(vec![Notice::Raised(view(0))], Vec::new);
        let body = next(&mut bodies).await;
        assert_eq!(body.as_array().map(Vec::len), Some(1), "{body}");
        assert_eq!(body[0]["labels"]["object"], "twin:1");
        assert!(body[0].get("endsAt").is_none(), "{body}");

        // Notices were lost (as when the queue was full): the next notice
        // becomes a resync, which ends twin:1 (no longer raised) and
        // posts what is raised now.
        webhook.resync = true;
        let mut other = view(0);
        other.object = ObjectId::from("port:a");
        webhook.tell(vec![Notice::Raised(other.clone())], || vec![other.clone()]);
        let body = next(&mut bodies).await;
        let alerts = body.as_array().unwrap();
        assert_eq!(alerts.len(), 2, "{body}");
        let ended = alerts
            .iter()
            .find(|a| a["labels"]["object"] == "twin:1")
            .unwrap();
        assert!(ended["endsAt"].is_string(), "{body}");
        let raised = alerts
            .iter()
            .find(|a| a["labels"]["object"] == "port:a")
            .unwrap();
        assert!(raised.get("endsAt").is_none(), "{body}");
        assert!(!webhook.resync);
        let stats = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let stats = webhook.stats();
                if stats.posts == 2 {
                    return stats;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!((stats.failures, stats.dropped), (0, 0));
    }

    #[tokio::test]
    async fn a_receiver_that_does_not_answer_is_a_counted_failure_with_its_error() {
        // A port nothing listens on (bound, then closed).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v2/alerts", listener.local_addr().unwrap());
        drop(listener);
        let mut webhook = Webhook::spawn(&config(&url), "sw1").unwrap();
        webhook.tell(vec![Notice::Raised(view(0))], Vec::new);
        let stats = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let stats = webhook.stats();
                if stats.failures == 1 {
                    return stats;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(stats.posts, 0);
        assert!(
            stats
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(&url)),
            "{stats:?}"
        );
    }
}
