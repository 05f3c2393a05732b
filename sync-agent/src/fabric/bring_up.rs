//! Starting the fabric: this switch's addresses and role, the encryption
//! key, the embedded broker (servers using it), the broker endpoints and
//! the MQTT link with its last will, the saved fabric config and the
//! current port states. Everything that may fail at start fails here, with
//! the field or file named, before the task exists.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use rtnetlink::Handle;
use tokio::sync::mpsc;

use super::{
    broker,
    config::{BrokerChoice, FabricConfig},
    link::{self, Endpoint, LinkEvent as MqttEvent, LinkSettings},
    role::decide_role,
    seal,
    state::ConfigStore,
    task::{Setup, Task},
    wire::{Message, Role, Topics},
};
use crate::{
    bus,
    southbound::{addresses, links},
};

/// Builds the task and the link it listens to; the caller spawns
/// [`Task::run`].
pub(super) async fn start(
    config: FabricConfig,
    switch_name: &str,
    netlink: &Handle,
    infos: mpsc::Sender<bus::Info>,
) -> anyhow::Result<(Task, mpsc::Receiver<MqttEvent>, mpsc::Receiver<Vec<IpAddr>>)> {
    let identity = config
        .identity
        .clone()
        .unwrap_or_else(|| switch_name.to_string());
    let own = own_addresses(netlink).await?;
    let (role, rank, reason) = decide_role(&config.servers, &own, config.member);
    tracing::info!(identity, ?role, "fabric role: {reason}");
    let choice = config
        .broker_choice()
        .map_err(|e| anyhow::anyhow!("fabric.broker: {e}"))?;
    let mut brokers = Vec::new();
    let (endpoints, tls) = match &choice {
        BrokerChoice::Embedded | BrokerChoice::Mosquitto => {
            if let Some(rank) = rank {
                let listen = SocketAddr::new(config.servers[rank], config.port);
                let tls = config.tls.as_ref().filter(|t| t.cert_file.is_some());
                brokers.push((
                    listen,
                    broker::start_hosted(&choice, listen, tls, &log_sizing(&config))?,
                ));
                tracing::info!(%listen, tls = tls.is_some(), broker = config.broker, "server's MQTT broker started");
            }
            let endpoints = config
                .servers
                .iter()
                .map(|s| Endpoint {
                    host: s.to_string(),
                    port: config.port,
                })
                .collect();
            (endpoints, config.tls.is_some())
        }
        BrokerChoice::External { host, port, tls } => {
            if *tls && config.tls.is_none() {
                anyhow::bail!(
                    "fabric.broker {} is mqtts:// but [fabric.tls] gives no ca_file",
                    config.broker
                );
            }
            (
                vec![Endpoint {
                    host: host.clone(),
                    port: *port,
                }],
                *tls,
            )
        }
    };
    let tls_ca = match (&config.tls, tls) {
        (Some(t), true) => Some(
            std::fs::read(&t.ca_file)
                .map_err(|e| anyhow::anyhow!("fabric.tls.ca_file {}: {e}", t.ca_file.display()))?,
        ),
        _ => None,
    };
    let tls_client = match &config.tls {
        Some(super::config::TlsConfig {
            client_cert_file: Some(cert),
            client_key_file: Some(key),
            ..
        }) if tls => Some(client_certificate(cert, key)?),
        _ => None,
    };
    let mut codec = seal::codec_from_config(&config, &identity)?;
    let topics = Topics::new(&config.prefix);
    let will = (role != Role::Server).then(|| {
        let departed = Message::Departed {
            member: identity.clone(),
            reason: "connection lost (last will)".into(),
        };
        (topics.topic_for(&departed).0, codec.seal_will(&departed))
    });
    let mut suffix = [0u8; 3];
    crate::random::fill(&mut suffix);
    let heartbeat = config.heartbeat();
    let settings = LinkSettings {
        client_id: format!("{identity}-{}", hex::encode(suffix)),
        endpoints: endpoints.clone(),
        tls_ca,
        tls_client,
        will,
        failover_after: Duration::from_millis(config.failover_after_ms),
        // Servers look for the primary more often, so a backup stands
        // down before members moving back could look departed to it.
        probe_every: if rank.is_some() {
            heartbeat
        } else {
            Duration::from_millis(config.failover_after_ms)
        },
        subscriptions: topics.subscriptions(&identity, rank.is_some()),
    };
    // A returning primary first learns the members from the backup's
    // retained roster records, so it does not announce them again.
    let seed = if rank == Some(0) && endpoints.len() > 1 {
        link::fetch_retained_all(
            &settings,
            1,
            &topics.roster_filter(),
            Duration::from_millis(300),
            Duration::from_secs(3),
        )
        .await
    } else {
        Vec::new()
    };
    let link = link::spawn(settings);
    let store = match &config.state_file {
        Some(path) => ConfigStore::load(path)?,
        None => ConfigStore::default(),
    };
    let mut ports = HashMap::new();
    for l in links::all(netlink).await? {
        ports.insert(l.name.clone(), l.up && l.carrier);
    }
    let mut task = Task::new(Setup {
        config,
        identity,
        role,
        role_reason: reason,
        rank,
        own,
        endpoints,
        tls,
        codec,
        topics,
        client: link.client,
        current: link.current,
        subscriptions: link.subscriptions,
        store,
        ports,
        infos,
        brokers,
    });
    task.log_settings();
    if !seed.is_empty() {
        task.seed_from_backup(&seed);
    }
    Ok((task, link.events, follow_addresses(netlink.clone())))
}

/// This switch's addresses, re-read after every address change the kernel
/// announces (a burst is read once), so the role follows them live. When
/// the kernel's address events cannot be subscribed to, the role stays as
/// decided at start (logged).
fn follow_addresses(netlink: Handle) -> mpsc::Receiver<Vec<IpAddr>> {
    let (tx, rx) = mpsc::channel(4);
    match addresses::watch() {
        Ok(mut changes) => {
            tokio::spawn(async move {
                while changes.recv().await.is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while changes.try_recv().is_ok() {}
                    match own_addresses(&netlink).await {
                        Ok(own) => {
                            if tx.send(own).await.is_err() {
                                return;
                            }
                        }
                        Err(err) => tracing::warn!("cannot re-read this switch's addresses: {err}"),
                    }
                }
            });
        }
        Err(err) => tracing::warn!(
            "cannot follow address changes ({err}); the fabric role stays as decided at start"
        ),
    }
    rx
}

/// Every address on every interface here: the role depends on whether a
/// server address is among them.
async fn own_addresses(netlink: &Handle) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for l in links::all(netlink).await? {
        for a in addresses::list(netlink, l.index).await? {
            out.push(a.ip);
        }
    }
    Ok(out)
}

/// This switch's client certificate chain and key (PEM) for mutual TLS,
/// checked as the MQTT client's rustls will use them: a certificate it
/// refuses (an X.509 v1 certificate, a key of another certificate) would
/// otherwise only show as connections dropped during the handshake.
fn client_certificate(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("fabric.tls.client_cert_file {}", cert.display()))?;
    let key_pem = std::fs::read(key)
        .with_context(|| format!("fabric.tls.client_key_file {}", key.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("fabric.tls.client_cert_file {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "fabric.tls.client_cert_file {} holds no PEM certificate",
            cert.display()
        );
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("fabric.tls.client_key_file {}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, key_der)
        .with_context(|| {
            format!(
                "fabric.tls.client_cert_file {} with client_key_file {}: refused by rustls (an X.509 v3 certificate is needed, and the key must be its own)",
                cert.display(),
                key.display()
            )
        })?;
    Ok((cert_pem, key_pem))
}

/// The embedded broker's log sizing for this fabric: the roster lists
/// every member that may heartbeat or acknowledge.
pub(super) fn log_sizing(config: &FabricConfig) -> broker::LogSizing {
    broker::LogSizing {
        topics: Topics::new(&config.prefix),
        members: config.trust.roster.len(),
    }
}
