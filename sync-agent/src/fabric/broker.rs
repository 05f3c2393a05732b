//! The embedded MQTT broker (rumqttd) a server hosts by default (SPEC 4.1).

use std::{collections::HashMap, net::SocketAddr};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

use super::{config::TlsConfig as FabricTls, wire::MAX_MESSAGE};

/// Starts rumqttd listening on `listen`; its threads run for the life of the
/// process. Binding is checked first so a taken port is a clear error.
pub fn start(listen: SocketAddr, tls: Option<&FabricTls>) -> anyhow::Result<()> {
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
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("fabric".to_string(), server)])),
        ..Default::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(err) = broker.start() {
                tracing::error!("embedded MQTT broker stopped: {err}");
            }
        })?;
    Ok(())
}
