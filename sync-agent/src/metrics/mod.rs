//! Prometheus metrics (`[metrics]`): `GET /metrics` on `listen`.
//!
//! Owns nothing but its listener. At each scrape it asks every running
//! module's handle for the report `show …` prints (all at once, each with
//! a deadline, so a slow module costs one scrape its metrics and marks it
//! `mlag_sync_module_up 0`, never hangs it), and turns the answers into a
//! fresh registry ([`report`]). No module holds metrics of its own and none
//! knows this one exists; the agent only hands it the handles.
//!
//! ```text
//!  Prometheus ──GET /metrics──► task (axum) ──ask──► dataplane, peer, mclag,
//!       ▲                          │                 inference, fabric,
//!       └── text ◄── report::Scrape ◄── reports ──── center, device
//! ```

pub mod config;
pub mod report;
mod task;

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::watch;

use self::config::MetricsConfig;
/// The handles a scrape asks (the agent's one set of module handles).
pub use crate::handles::ModuleHandles as Sources;

/// The running metrics endpoint; dropping every clone stops it.
#[derive(Clone)]
pub struct MetricsHandle {
    addr: SocketAddr,
    _stop: Arc<watch::Sender<()>>,
}

impl MetricsHandle {
    /// Binds `config.listen` (a failure names the address) and serves
    /// `/metrics` on a task of its own.
    pub async fn spawn(config: MetricsConfig, sources: Sources) -> anyhow::Result<MetricsHandle> {
        let (stop, stopped) = watch::channel(());
        let addr = task::start(config.listen, sources, stopped).await?;
        tracing::info!(%addr, "metrics listening (GET /metrics)");
        Ok(MetricsHandle {
            addr,
            _stop: Arc::new(stop),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
