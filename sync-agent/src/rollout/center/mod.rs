//! The config center (SPEC 6.1 to 6.3), run by the server-role agent.
//!
//! - [`config`]: the `[rollout.center]` section,
//! - [`storage`]: the storage boundary: every piece of durable state goes
//!   through its traits; [`storage::redb_backend`] keeps it in one redb
//!   file (the default),
//! - [`store`]: configs, versions, history and audit over the storage
//!   (crash-safe: a change is in one write transaction),
//! - [`formats`]: content validation per format, MD5,
//! - [`planner`]: batches of a rollout (pure),
//! - [`engine`]: registered devices, releases and rollouts (timeouts,
//!   device expiry, canaries, approvals),
//! - [`rollout_store`]: the engine's state in the same store, so a
//!   restart (SIGKILL included) resumes every rollout where it was,
//! - [`service`]: [`Center`], the one owner of the state, which ties the
//!   store and the engine together and wakes long polls,
//! - [`http`]: the HTTP API over [`Center`],
//! - [`report`]: what `show rollout` prints of the center.
//!
//! [`CenterHandle::spawn`] opens the database, binds the listener and serves
//! the API until [`CenterHandle::shutdown`]; [`bind_with_shutdown`],
//! [`bind`] and [`serve`] are the same start-up for tests and tools that
//! drive the server future themselves.

pub mod auth;
pub mod config;
pub mod engine;
pub mod error;
pub mod formats;
pub mod http;
pub mod planner;
pub mod report;
pub mod rollout_store;
pub mod service;
#[cfg(test)]
mod shared_tests;
pub mod storage;
pub mod store;
pub mod tls;
pub mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

pub use self::config::{
    CenterConfig, DEFAULT_BATCH_SIZE, DEFAULT_DB_PATH, DEFAULT_ETCD_PREFIX, DEFAULT_LISTEN,
    StoreKind,
};
pub use self::error::{CenterError, CenterResult};
pub use self::planner::plan;
pub use self::report::{CenterReport, CenterStats};
pub use self::service::{Center, RolloutOptions};
pub use crate::rollout::wire::{DEFAULT_WATCH_TIMEOUT_MS, MAX_WATCH_TIMEOUT_MS};

/// Handle to the running config center; cheap to clone. Dropping every
/// clone stops the server as [`CenterHandle::shutdown`] does, without
/// waiting for it.
#[derive(Clone)]
pub struct CenterHandle {
    center: Arc<Center>,
    addr: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
    /// Its sender lives in the server task: `changed()` errors once the
    /// server has stopped.
    running: watch::Receiver<()>,
}

impl CenterHandle {
    /// Opens the database (creating it and its directory if missing), binds
    /// `config.listen` and serves the HTTP API on a task of its own.
    pub async fn spawn(config: CenterConfig) -> anyhow::Result<CenterHandle> {
        let scheme = scheme(&config);
        let tokens = config.tokens.len();
        let (stop, mut stopping) = watch::channel(false);
        let (addr, center, server) = bind_with_shutdown(config, async move {
            // A dropped sender (every handle gone) stops the server too.
            let _ = stopping.wait_for(|stop| *stop).await;
        })
        .await?;
        let store = center.store_description();
        tracing::info!(%addr, scheme, tokens, %store, "config center listening");
        let (alive, running) = watch::channel(());
        tokio::spawn(async move {
            match server.await {
                Ok(()) => tracing::info!("config center stopped"),
                Err(err) => tracing::error!("config center stopped: {err:#}"),
            }
            drop(alive);
        });
        Ok(CenterHandle {
            center,
            addr,
            stop: Arc::new(stop),
            running,
        })
    }

    /// The address the API listens on (the bound port if `listen` had 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The center's rollouts, newest first, as committed: it waits for the
    /// group commit running now (never for a long poll), and fails only when
    /// the center is shutting down.
    pub async fn report(&self) -> CenterResult<CenterReport> {
        Ok(CenterReport {
            rollouts: self.center.rollouts().await?,
        })
    }

    /// Requests answered and refused, and long polls held (for metrics).
    pub fn stats(&self) -> CenterStats {
        CenterStats {
            requests: self.center.requests(),
            refused: self.center.refusals(),
            waiting_polls: self.center.waiting_polls(),
            runs_engine: self.center.runs_engine(),
        }
    }

    /// Every config release from now on, for push over the fabric.
    pub fn subscribe_releases(
        &self,
    ) -> tokio::sync::broadcast::Receiver<crate::bus::ConfigReleased> {
        self.center.subscribe_releases()
    }

    /// Stops the server: waiting long polls are answered at once (with
    /// nothing), requests in progress finish; returns once it has stopped.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let mut running = self.running.clone();
        while running.changed().await.is_ok() {}
    }
}

fn scheme(config: &CenterConfig) -> &'static str {
    if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    }
}

/// How long an HTTPS center waits for requests in progress when it stops.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the center, binds its listener and returns the bound address, the
/// center and the server future, which serves until `shutdown` completes.
/// Refuses a center reachable beyond loopback without tokens and TLS
/// (unless `insecure`), and faulty tokens or TLS files.
pub async fn bind_with_shutdown(
    config: CenterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    SocketAddr,
    Arc<Center>,
    impl Future<Output = anyhow::Result<()>> + Send + 'static,
)> {
    let mut problems = crate::validate::Problems::default();
    let tokens = auth::Tokens::from_config(&config.tokens, &mut problems);
    if let Some(exposed) = config.exposure_problem() {
        problems.add("rollout.center.listen", exposed);
    }
    let problems = problems.into_vec();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::bail!("config center: {}", list.join("; "));
    }
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("config center: give both tls_cert and tls_key, or neither"),
    };
    let missing = config.missing_protection();
    if !missing.is_empty() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "INSECURE config center: listening beyond loopback without {} (insecure = true); anyone who reaches it can change every device",
            missing.join(" and ")
        );
    }
    let center = Center::open(&config).with_context(|| match config.store {
        StoreKind::Redb => format!("opening config center at {}", config.db_path.display()),
        StoreKind::Etcd => format!(
            "opening config center on etcd {} (prefix {})",
            config.etcd_endpoints.join(","),
            config.etcd_prefix()
        ),
    })?;
    let listener = listen(config.listen)
        .with_context(|| format!("binding config center to {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("config center local address")?;
    center.start();
    let app = http::router_with_tokens(center.clone(), Arc::new(tokens));
    let stopper = center.clone();
    let server = async move {
        match tls {
            None => axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    shutdown.await;
                    stopper.begin_shutdown();
                })
                .await
                .context("config center server"),
            Some(tls) => {
                let handle = axum_server::Handle::new();
                let serving = axum_server::from_tcp_rustls(
                    listener.into_std().context("config center listener")?,
                    axum_server::tls_rustls::RustlsConfig::from_config(tls),
                )
                .context("config center listener")?
                .handle(handle.clone())
                .serve(app.into_make_service());
                let stopping = async move {
                    shutdown.await;
                    // Long polls are answered first, so connections drain.
                    stopper.begin_shutdown();
                    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    served = serving => served.context("config center server (HTTPS)"),
                    () = stopping => unreachable!("pending"),
                }
            }
        }
    };
    Ok((addr, center, server))
}

/// Depth of the accept queue. A fleet's long polls connect at once (after a
/// center restart, say); a shallow queue drops SYNs, which the kernel
/// retries only after 1, 3, 7... seconds, so a device would hear of a
/// change that late. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Opens the center and binds its listener (`listen` may use port 0);
/// returns the bound address and the server future (serves until dropped).
pub async fn bind(
    config: CenterConfig,
) -> anyhow::Result<(
    SocketAddr,
    impl Future<Output = anyhow::Result<()>> + Send + 'static,
)> {
    let (addr, _center, server) = bind_with_shutdown(config, std::future::pending()).await?;
    Ok((addr, server))
}

/// Runs the config center until `shutdown` completes.
pub async fn serve(
    config: CenterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let scheme = scheme(&config);
    let (addr, center, server) = bind_with_shutdown(config, shutdown).await?;
    tracing::info!(
        "config center listening on {scheme}://{addr} (store {})",
        center.store_description()
    );
    drop(center);
    server.await?;
    tracing::info!("config center stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn shutdown_answers_a_waiting_long_poll_and_stops_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let center = CenterHandle::spawn(CenterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_path: dir.path().join("c.redb"),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_ne!(center.addr().port(), 0);
        assert!(center.report().await.unwrap().rollouts.is_empty());

        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let base = format!("http://{}/v1/devices/d1", center.addr());
        let registered = client
            .post(format!("{base}/register"))
            .json(&serde_json::json!({"services": []}))
            .send()
            .await
            .unwrap();
        assert!(registered.status().is_success());
        let poll = tokio::spawn(async move {
            let answer = client
                .get(format!("{base}/watch?timeout_ms=60000"))
                .send()
                .await?;
            Ok::<_, reqwest::Error>((answer.status(), answer.text().await?))
        });
        // Let the poll reach the center and start waiting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!poll.is_finished(), "nothing to assign: the poll waits");

        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), center.shutdown())
            .await
            .expect("shutdown finished");
        let (status, body) = poll.await.unwrap().unwrap();
        assert!(status.is_success(), "{status}: {body}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let refused = tokio::net::TcpStream::connect(center.addr()).await;
        assert!(refused.is_err(), "still listening after shutdown");
    }
}
