//! The member's MQTT connection (rumqttc): subscribes on every connect, moves
//! to the next server when the current one is unreachable for
//! `failover_after`, moves back to the primary when it answers again, and
//! carries unacknowledged publishes across brokers so nothing is lost.
//!
//! "The primary answers again" is an MQTT round trip, not a TCP connect: a
//! probe client connects (CONNACK) and publishes at QoS 1 on a topic
//! nobody subscribes to (PUBACK), so a listening socket whose broker
//! behind it is stuck does not pull the members back. Moving back ends the
//! session on the backup with a DISCONNECT, so the backup's broker does not
//! publish this member's last will (which would announce it departed).

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    Request, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};

use super::wire::MAX_MESSAGE;

/// One broker address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How to connect.
#[derive(Clone)]
pub struct LinkSettings {
    /// MQTT client id.
    pub client_id: String,
    /// Brokers in order of preference.
    pub endpoints: Vec<Endpoint>,
    /// CA certificate (PEM) when the broker speaks TLS.
    pub tls_ca: Option<Vec<u8>>,
    /// This switch's client certificate chain and key (PEM) for mutual
    /// TLS.
    pub tls_client: Option<(Vec<u8>, Vec<u8>)>,
    /// Last will (topic, payload).
    pub will: Option<(String, Vec<u8>)>,
    /// Unreachable this long: try the next broker.
    pub failover_after: Duration,
    /// While not on the first broker, check it this often.
    pub probe_every: Duration,
    /// Topic filters to subscribe to.
    pub subscriptions: Vec<String>,
}

/// What the link tells its owner.
#[derive(Debug)]
pub enum LinkEvent {
    /// Connected (or reconnected) to `endpoints[index]`.
    Connected {
        /// Index in the endpoint list.
        index: usize,
    },
    /// Lost the broker.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A message arrived.
    Publish {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
        /// Delivered as a retained message.
        retained: bool,
    },
}

/// A running link.
pub struct Link {
    /// Publish through this.
    pub client: AsyncClient,
    /// Events from the broker.
    pub events: mpsc::Receiver<LinkEvent>,
    /// Index of the endpoint in use.
    pub current: Arc<AtomicUsize>,
    /// The topic filters in force: a new list is subscribed at once (and
    /// filters dropped from it unsubscribed), and after every reconnect.
    pub subscriptions: watch::Sender<Vec<String>>,
}

fn options(settings: &LinkSettings, index: usize) -> MqttOptions {
    let endpoint = &settings.endpoints[index];
    let mut options = MqttOptions::new(&settings.client_id, &endpoint.host, endpoint.port);
    options
        .set_keep_alive(Duration::from_secs(2))
        .set_clean_session(true)
        .set_max_packet_size(MAX_MESSAGE + 4096, MAX_MESSAGE + 4096)
        .set_inflight(100);
    if let Some((topic, payload)) = &settings.will {
        options.set_last_will(LastWill::new(
            topic,
            payload.clone(),
            QoS::AtLeastOnce,
            false,
        ));
    }
    if let Some(ca) = &settings.tls_ca {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: ca.clone(),
            alpn: None,
            client_auth: settings.tls_client.clone(),
        }));
    }
    options
}

/// Publishes not yet acknowledged that a fresh session would drop; QoS 0
/// (heartbeats) is not worth carrying over.
fn carried_over(pending: &VecDeque<Request>) -> VecDeque<Request> {
    pending
        .iter()
        .filter_map(|r| match r {
            Request::Publish(p) if p.qos != QoS::AtMostOnce => {
                let mut p = p.clone();
                p.pkid = 0;
                p.dup = false;
                Some(Request::Publish(p))
            }
            _ => None,
        })
        .collect()
}

/// Starts the link task.
pub fn spawn(settings: LinkSettings) -> Link {
    assert!(
        !settings.endpoints.is_empty(),
        "a link needs at least one broker"
    );
    let (client, mut eventloop) = AsyncClient::new(options(&settings, 0), 4096);
    eventloop.network_options.set_connection_timeout(2);
    let (events_tx, events) = mpsc::channel(4096);
    let current = Arc::new(AtomicUsize::new(0));
    let (back_tx, back_rx) = mpsc::channel(1);
    let (subscriptions, filters) = watch::channel(settings.subscriptions.clone());
    if settings.endpoints.len() > 1 {
        tokio::spawn(probe_primary(settings.clone(), current.clone(), back_tx));
    }
    tokio::spawn(run(
        settings,
        client.clone(),
        eventloop,
        events_tx,
        current.clone(),
        back_rx,
        filters,
    ));
    Link {
        client,
        events,
        current,
        subscriptions,
    }
}

async fn probe_primary(settings: LinkSettings, current: Arc<AtomicUsize>, back: mpsc::Sender<()>) {
    let primary = &settings.endpoints[0];
    let mut tick = tokio::time::interval(settings.probe_every);
    loop {
        tick.tick().await;
        if current.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let answers = answers_mqtt(&settings, 0, Duration::from_millis(1000)).await;
        tracing::debug!(primary = %primary, answers, "primary probed");
        if answers && back.send(()).await.is_err() {
            return;
        }
    }
}

/// True when the broker `endpoints[index]` completes an MQTT round trip
/// within `timeout`: CONNACK accepted, then PUBACK for a QoS 1 publish on a
/// probe topic. The probe leaves with a DISCONNECT and has no last will.
pub async fn answers_mqtt(settings: &LinkSettings, index: usize, timeout: Duration) -> bool {
    let mut settings = settings.clone();
    settings.will = None;
    settings.client_id = format!("{}-probe", settings.client_id);
    let topic = format!("mlag-sync-probe/{}", settings.client_id);
    let (client, mut eventloop) = AsyncClient::new(options(&settings, index), 8);
    eventloop
        .network_options
        .set_connection_timeout(timeout.as_secs().max(1));
    let answered = tokio::time::timeout(timeout, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        return false;
                    }
                    if client
                        .try_publish(topic.as_str(), QoS::AtLeastOnce, false, b"probe".to_vec())
                        .is_err()
                    {
                        return false;
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    if answered && client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    answered
}

/// Ends the session on the current broker with a DISCONNECT (so it does
/// not publish our last will), best effort and briefly.
async fn say_goodbye(eventloop: &mut EventLoop) {
    if let Some(network) = eventloop.network.as_mut() {
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            network.write(Packet::Disconnect).await?;
            network.flush().await
        })
        .await;
    }
}

async fn run(
    settings: LinkSettings,
    client: AsyncClient,
    mut eventloop: EventLoop,
    events: mpsc::Sender<LinkEvent>,
    current: Arc<AtomicUsize>,
    mut back: mpsc::Receiver<()>,
    mut filters: watch::Receiver<Vec<String>>,
) {
    let mut subscribed = filters.borrow_and_update().clone();
    let mut index = 0usize;
    let mut connected = false;
    let mut failing_since: Option<Instant> = None;
    loop {
        let saved = eventloop
            .network
            .is_none()
            .then(|| carried_over(&eventloop.pending));
        tokio::select! {
            polled = eventloop.poll() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !ack.session_present
                        && let Some(saved) = saved
                    {
                        eventloop.pending = saved;
                    }
                    connected = true;
                    failing_since = None;
                    subscribed = filters.borrow_and_update().clone();
                    for filter in &subscribed {
                        if let Err(err) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                            tracing::error!(filter, "fabric subscribe failed: {err}");
                        }
                    }
                    tracing::info!(broker = %settings.endpoints[index], "fabric broker connected");
                    if events.send(LinkEvent::Connected { index }).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let event = LinkEvent::Publish {
                        topic: publish.topic,
                        payload: publish.payload.to_vec(),
                        retained: publish.retain,
                    };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    if connected {
                        connected = false;
                        tracing::warn!(broker = %settings.endpoints[index], "fabric broker lost: {err}");
                        if events.send(LinkEvent::Disconnected { reason: err.to_string() }).await.is_err() {
                            return;
                        }
                    } else if failing_since.is_none() {
                        // Once per streak of failures: a broker that never
                        // lets this switch in (refused TLS, wrong port) is
                        // otherwise silent.
                        tracing::warn!(broker = %settings.endpoints[index], "fabric broker unreachable: {err}");
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if settings.endpoints.len() > 1 && since.elapsed() >= settings.failover_after {
                        let from = index;
                        index = (index + 1) % settings.endpoints.len();
                        tracing::warn!(
                            from = %settings.endpoints[from],
                            to = %settings.endpoints[index],
                            "fabric broker unreachable for {:?}; moving to the next server",
                            settings.failover_after
                        );
                        eventloop.mqtt_options = options(&settings, index);
                        current.store(index, Ordering::Relaxed);
                        failing_since = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Ok(()) = filters.changed() => {
                let wanted = filters.borrow_and_update().clone();
                // Not connected: the next CONNACK subscribes the new list.
                if connected {
                    for filter in wanted.iter().filter(|f| !subscribed.contains(f)) {
                        if let Err(err) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                            tracing::error!(filter, "fabric subscribe failed: {err}");
                        }
                    }
                    for filter in subscribed.iter().filter(|f| !wanted.contains(f)) {
                        if let Err(err) = client.try_unsubscribe(filter) {
                            tracing::error!(filter, "fabric unsubscribe failed: {err}");
                        }
                    }
                }
                subscribed = wanted;
            }
            Some(()) = back.recv(), if index != 0 => {
                tracing::info!(primary = %settings.endpoints[0], "primary broker answers again; moving back");
                if connected {
                    say_goodbye(&mut eventloop).await;
                }
                eventloop.clean();
                index = 0;
                eventloop.mqtt_options = options(&settings, 0);
                current.store(0, Ordering::Relaxed);
                if connected {
                    connected = false;
                    if events.send(LinkEvent::Disconnected { reason: "moving back to the primary".into() }).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads every retained message under `filter` from a broker: how a
/// returning primary learns the backup's roster records before it
/// announces anything. Collection ends once the broker has been quiet for
/// `quiet` after the subscription was acknowledged, or at `timeout`.
pub async fn fetch_retained_all(
    settings: &LinkSettings,
    index: usize,
    filter: &str,
    quiet: Duration,
    timeout: Duration,
) -> Vec<Vec<u8>> {
    let mut settings = settings.clone();
    settings.will = None;
    settings.client_id = format!("{}-seed", settings.client_id);
    let (client, mut eventloop) = AsyncClient::new(options(&settings, index), 64);
    eventloop.network_options.set_connection_timeout(1);
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        let mut subscribed = false;
        loop {
            let polled = if subscribed {
                match tokio::time::timeout(quiet, eventloop.poll()).await {
                    Ok(polled) => polled,
                    Err(_) => return,
                }
            } else {
                eventloop.poll().await
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if client.try_subscribe(filter, QoS::AtLeastOnce).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => subscribed = true,
                Ok(Event::Incoming(Packet::Publish(p))) if p.retain && !p.payload.is_empty() => {
                    out.push(p.payload.to_vec());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    let _ = client.try_disconnect();
    out
}

/// Reads one retained message from a broker: how a returning primary learns
/// the backup's topology before it announces anything. None when the broker
/// does not answer or holds nothing within `timeout`.
pub async fn fetch_retained(
    settings: &LinkSettings,
    index: usize,
    topic: &str,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let mut settings = settings.clone();
    settings.will = None;
    settings.client_id = format!("{}-seed", settings.client_id);
    let (client, mut eventloop) = AsyncClient::new(options(&settings, index), 16);
    eventloop.network_options.set_connection_timeout(1);
    let fetched = tokio::time::timeout(timeout, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.try_subscribe(topic, QoS::AtLeastOnce).ok()?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                    return Some(p.payload.to_vec());
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let _ = client.try_disconnect();
    fetched
}
