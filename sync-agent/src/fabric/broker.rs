//! The embedded MQTT broker (rumqttd) a server hosts by default (SPEC 4.1).
//!
//! Supervised: when the broker's servers stop (a listener error, a panic in
//! a connection thread) a fresh broker is started on the same address after
//! a pause that doubles up to [`MAX_BACKOFF`], and each restart is counted
//! (`broker_restarts` in `show fabric`). While it is down, members move to
//! the other server as for any unreachable broker (`failover_after_ms`) and
//! come back once it completes an MQTT round trip again.
//!
//! Memory: rumqttd keeps, per subscription filter, a log of recent
//! publishes in segments, full or not of delivered messages, for the life
//! of the broker. [`router_config`] sizes the busiest (the servers'
//! heartbeat filter) from the roster to a few heartbeats per member, and
//! leaves the others room for bursts.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rumqttd::{
    Broker, Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings, TlsConfig,
};

use super::{
    config::{BrokerChoice, TlsConfig as FabricTls},
    wire::{MAX_MESSAGE, Topics},
};

/// Starts the broker a server hosts under `choice` on `listen`: rumqttd in
/// this process, or a mosquitto child ([`super::mosquitto`]). Returns its
/// restart counter.
pub fn start_hosted(
    choice: &BrokerChoice,
    listen: SocketAddr,
    tls: Option<&FabricTls>,
    logs: &LogSizing,
) -> anyhow::Result<Arc<AtomicU64>> {
    match choice {
        BrokerChoice::Mosquitto => super::mosquitto::start(listen, tls),
        _ => start(listen, tls, logs),
    }
}

/// What the embedded broker sizes its per-filter logs from.
#[derive(Clone, Debug)]
pub struct LogSizing {
    /// The fabric's topics (its heartbeat and ack filters).
    pub topics: Topics,
    /// Members that may heartbeat and acknowledge: the roster's size.
    pub members: usize,
}

/// Segments per filter log. rumqttd drops the oldest segment when the
/// newest fills, so a log holds between 3/4 and all of its bytes.
const SEGMENTS: usize = 4;

/// The log of every filter but the heartbeats', in bytes as rumqttd counts
/// them (topic and payload). These filters carry what a member must not
/// miss (changes, acks, faults, settings, roster records), and a QoS 1
/// subscriber that falls further behind than the log skips to its oldest
/// message (rumqttd's `CommitLog::readv` jumps to the head): the
/// benchmark's burst of 20,000 QoS 1 messages to one subscriber lost
/// messages with 4 MiB. Quiet filters never fill theirs, so this costs
/// memory only where traffic is heavy.
const DEFAULT_LOG_BYTES: usize = 16 * 1024 * 1024;

/// Heartbeat bytes kept per roster member in the log of the heartbeat
/// filter: about four heartbeats of a switch listing 48 ports (one is ~1
/// KiB), more of a smaller one. The log is the busiest by far (every
/// member every interval) and needs to hold little: a server wants each
/// member's latest heartbeat, which stays in the log, and a server that
/// lags further skips older heartbeats, whose loss `dead_after_ms` (3.5
/// intervals by default) already tolerates. Departures share the topic; a
/// lost one is a member found silent `dead_after_ms` later. With the old 16
/// MiB this log held ~50 s of a thousand members' heartbeats, and every
/// logged heartbeat also pinned the ~8 KiB read buffer of the connection
/// it came in on.
const HEARTBEAT_LOG_BYTES_PER_MEMBER: usize = 4 * 1024;

/// Ack bytes kept per roster member in the log of each origin's ack
/// filter: about four changes' acks (one is ~250 bytes). A logged message
/// pins the whole read buffer it arrived in (~8 KiB: rumqttd slices
/// payloads out of the connection's buffer), and a member's acks to
/// changes minutes apart each pin a different buffer, so the old 16 MiB
/// (~65,000 acks) could come to hundreds of MiB at a thousand members. An
/// ack a lagging origin skips costs only time: the change is sent again
/// every `resend_ms` to whoever has not acknowledged it, and a member
/// acknowledges a change it already has.
const ACK_LOG_BYTES_PER_MEMBER: usize = 1024;

/// The smallest segment of a log sized from the roster: room for bursts of
/// a small fabric.
const MIN_SEGMENT_BYTES: usize = 16 * 1024;

/// rumqttd's router settings: the heartbeat and ack filters' logs sized
/// from the roster, the others [`DEFAULT_LOG_BYTES`].
pub fn router_config(logs: &LogSizing) -> RouterConfig {
    let segment = |per_member: usize| SegmentConfig {
        max_segment_size: (logs.members.max(1) * per_member / SEGMENTS).max(MIN_SEGMENT_BYTES),
        max_segment_count: SEGMENTS,
    };
    RouterConfig {
        max_connections: 10_000,
        max_outgoing_packet_count: 1000,
        max_segment_size: DEFAULT_LOG_BYTES / SEGMENTS,
        max_segment_count: SEGMENTS,
        // rumqttd matches each new filter against these keys as if the
        // filter were a topic: only the heartbeat filter itself (or a
        // narrower one) gets its log, never `<prefix>/DEV_INFO_MSG/#`; every
        // origin's `<prefix>/DEV_CONF_MSG/ack/<origin>/#` gets the ack log.
        custom_segment: Some(HashMap::from([
            (
                logs.topics.member_filter(),
                segment(HEARTBEAT_LOG_BYTES_PER_MEMBER),
            ),
            (
                logs.topics.every_ack_filter(),
                segment(ACK_LOG_BYTES_PER_MEMBER),
            ),
        ])),
        ..Default::default()
    }
}

/// The longest pause between two restarts of the broker.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Starts rumqttd listening on `listen`, supervised, for the life of the
/// process. Binding is checked first so a taken port is a clear error. The
/// returned counter counts restarts.
pub fn start(
    listen: SocketAddr,
    tls: Option<&FabricTls>,
    logs: &LogSizing,
) -> anyhow::Result<Arc<AtomicU64>> {
    drop(
        std::net::TcpListener::bind(listen)
            .map_err(|e| anyhow::anyhow!("embedded MQTT broker cannot listen on {listen}: {e}"))?,
    );
    let tls = match tls {
        Some(FabricTls {
            cert_file: Some(cert),
            key_file: Some(key),
            ..
        }) => Some(TlsConfig::Rustls {
            capath: None,
            certpath: cert.display().to_string(),
            keypath: key.display().to_string(),
        }),
        _ => None,
    };
    if let Some(tls) = &tls
        && !tls.validate_paths()
    {
        anyhow::bail!("fabric.tls: the broker's cert_file or key_file does not exist");
    }
    let server = ServerSettings {
        name: format!("fabric-{listen}"),
        listen,
        tls,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: MAX_MESSAGE + 4096,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: router_config(logs),
        v4: Some(HashMap::from([("fabric".to_string(), server)])),
        ..Default::default()
    };
    let restarts = Arc::new(AtomicU64::new(0));
    let counter = restarts.clone();
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(250);
            loop {
                let mut broker = Broker::new(config.clone());
                let started = std::time::Instant::now();
                match broker.start() {
                    Ok(()) => tracing::error!(%listen, "embedded MQTT broker stopped; restarting"),
                    Err(err) => {
                        tracing::error!(%listen, "embedded MQTT broker failed: {err}; restarting")
                    }
                }
                if started.elapsed() > MAX_BACKOFF * 6 {
                    backoff = Duration::from_millis(250);
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })?;
    Ok(restarts)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    use super::*;

    fn sizing(members: usize) -> LogSizing {
        LogSizing {
            topics: Topics::new("fab"),
            members,
        }
    }

    /// The filter's (segment size, count), as rumqttd's `Data::new` picks
    /// it.
    fn log_of(config: &RouterConfig, filter: &str) -> (usize, usize) {
        let mut picked = (config.max_segment_size, config.max_segment_count);
        for (key, custom) in config.custom_segment.iter().flatten() {
            if rumqttd::protocol::matches(filter, key) {
                picked = (custom.max_segment_size, custom.max_segment_count);
            }
        }
        picked
    }

    #[test]
    fn only_the_heartbeat_and_ack_filters_get_small_logs_sized_from_the_roster() {
        let config = router_config(&sizing(1000));
        let topics = Topics::new("fab");
        assert_eq!(
            log_of(&config, "fab/DEV_INFO_MSG/member/#"),
            (1000 * 1024, 4)
        );
        assert_eq!(
            log_of(&config, "fab/DEV_CONF_MSG/ack/sw1/#"),
            (1000 * 256, 4)
        );
        for filter in topics.subscriptions("sw1", true) {
            if filter != topics.member_filter() && filter != topics.ack_filter("sw1") {
                assert_eq!(log_of(&config, &filter), (4 * 1024 * 1024, 4), "{filter}");
            }
        }
        // Not a server's old catch-all, nor another prefix's heartbeats.
        assert_eq!(log_of(&config, "fab/DEV_INFO_MSG/#"), (4 * 1024 * 1024, 4));
        assert_eq!(
            log_of(&config, "other/DEV_INFO_MSG/member/#"),
            (4 * 1024 * 1024, 4)
        );
        // A small fabric still gets a usable segment (rumqttd refuses < 1 KiB).
        assert_eq!(
            log_of(&router_config(&sizing(0)), "fab/DEV_INFO_MSG/member/#").0,
            MIN_SEGMENT_BYTES
        );
    }

    /// A subscriber that stops reading while a flood of heartbeats passes
    /// (a server stalled for a while) skips the heartbeats that fell out of
    /// the small log, but still gets every member's latest heartbeat and
    /// every config change published meanwhile: those have their own log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_subscriber_skips_old_heartbeats_but_not_changes() {
        const MEMBERS: usize = 4;
        const HEARTBEATS: usize = 20_000; // each member's, ~6 MB each
        const CHANGES: usize = 20;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        start(listen, None, &sizing(MEMBERS)).unwrap();
        let options = |id: &str| {
            let mut o = MqttOptions::new(id, "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(60))
                .set_max_packet_size(1 << 20, 1 << 20);
            o
        };
        let connect = |id: &'static str| async move {
            for _ in 0..100 {
                let (client, mut events) = AsyncClient::new(options(id), 1000);
                if let Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) =
                    tokio::time::timeout(Duration::from_secs(2), events.poll()).await
                {
                    return (client, events);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("broker on {port} not answering");
        };
        // The stalled subscriber: subscribed, then not polled.
        let (server, mut server_events) = connect("server").await;
        let topics = Topics::new("fab");
        server
            .subscribe(topics.member_filter(), QoS::AtLeastOnce)
            .await
            .unwrap();
        server
            .subscribe("fab/DEV_CONF_MSG/change/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut acked = 0;
        while acked < 2 {
            if let Event::Incoming(Packet::SubAck(_)) = server_events.poll().await.unwrap() {
                acked += 1;
            }
        }
        let (publisher, mut publisher_events) = connect("publisher").await;
        let drive = tokio::spawn(async move {
            let mut pubacks = 0;
            while pubacks < CHANGES {
                if let Event::Incoming(Packet::PubAck(_)) = publisher_events.poll().await.unwrap() {
                    pubacks += 1;
                }
            }
            // Keep the connection serving until the test ends.
            loop {
                if publisher_events.poll().await.is_err() {
                    return;
                }
            }
        });
        let body = vec![b'x'; 300];
        for n in 0..HEARTBEATS {
            for m in 0..MEMBERS {
                let mut payload = format!("{m} {n} ").into_bytes();
                payload.extend_from_slice(&body);
                publisher
                    .publish(
                        format!("fab/DEV_INFO_MSG/member/m{m}"),
                        QoS::AtMostOnce,
                        false,
                        payload,
                    )
                    .await
                    .unwrap();
            }
            if n % (HEARTBEATS / CHANGES) == 0 {
                publisher
                    .publish(
                        "fab/DEV_CONF_MSG/change/origin",
                        QoS::AtLeastOnce,
                        false,
                        format!("change {n}"),
                    )
                    .await
                    .unwrap();
            }
        }
        // Now the server reads again.
        let mut latest = HashMap::new();
        let mut heartbeats = 0;
        let mut changes = 0;
        let done = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match server_events
                    .poll()
                    .await
                    .expect("the stalled server stays connected")
                {
                    Event::Incoming(Packet::Publish(p))
                        if p.topic.starts_with("fab/DEV_CONF_MSG") =>
                    {
                        changes += 1;
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        heartbeats += 1;
                        let text = String::from_utf8_lossy(&p.payload);
                        let mut words = text.split(' ');
                        let m: usize = words.next().unwrap().parse().unwrap();
                        let n: usize = words.next().unwrap().parse().unwrap();
                        latest.insert(m, n);
                    }
                    _ => {}
                }
                if changes == CHANGES
                    && (0..MEMBERS).all(|m| latest.get(&m) == Some(&(HEARTBEATS - 1)))
                {
                    return;
                }
            }
        })
        .await;
        drive.abort();
        assert!(
            done.is_ok(),
            "changes {changes} of {CHANGES}, latest heartbeats {latest:?}"
        );
        assert!(
            heartbeats < MEMBERS * HEARTBEATS,
            "all {heartbeats} heartbeats delivered: the log did not bound the lag"
        );
    }
}
