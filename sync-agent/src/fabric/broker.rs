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
//! publishes in segments; the segments are sized here so that the busiest
//! filter (every heartbeat of the fabric) holds tens of seconds of traffic
//! at a thousand members, not gigabytes.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

use super::{
    config::{BrokerChoice, TlsConfig as FabricTls},
    wire::MAX_MESSAGE,
};

/// Starts the broker a server hosts under `choice` on `listen`: rumqttd in
/// this process, or a mosquitto child ([`super::mosquitto`]). Returns its
/// restart counter.
pub fn start_hosted(
    choice: &BrokerChoice,
    listen: SocketAddr,
    tls: Option<&FabricTls>,
) -> anyhow::Result<Arc<AtomicU64>> {
    match choice {
        BrokerChoice::Mosquitto => super::mosquitto::start(listen, tls),
        _ => start(listen, tls),
    }
}

/// The longest pause between two restarts of the broker.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Starts rumqttd listening on `listen`, supervised, for the life of the
/// process. Binding is checked first so a taken port is a clear error. The
/// returned counter counts restarts.
pub fn start(listen: SocketAddr, tls: Option<&FabricTls>) -> anyhow::Result<Arc<AtomicU64>> {
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
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 1000,
            max_segment_size: 4 * 1024 * 1024,
            max_segment_count: 4,
            ..Default::default()
        },
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
