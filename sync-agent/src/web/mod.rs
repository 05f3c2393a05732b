//! The live web view (`[web]`): a read-only page on `listen` showing what
//! `show mclag` / `show peer` / `show arp` / `show nd`, `show fabric`,
//! `show states` / `show alarms` and `show rollout` say, drawn rather than
//! printed: the MLAG pair, the fabric and the faulty objects as graphs laid
//! out by `layout-rs` (SVG rendered here, so the page needs no script
//! library), the rollouts with their batches. Only the sections of modules
//! this agent runs appear.
//!
//! Owns nothing but its listener and the last view it rendered. Like
//! metrics, it asks the running modules' handles for the same reports the
//! control socket answers with (all at once, each with a deadline) and no
//! module knows it exists; the agent only hands it the handles.
//!
//! ```text
//!  browser ──GET / , /api/view──► http (axum) ──Ask──► task ──ask──► mclag, peer,
//!     ▲   (polls every refresh_ms)     ▲                 │           fabric, inference,
//!     └──────── HTML / JSON ◄──────────┴── Arc<View> ◄───┘           center, device
//!                                       (gathered at most once per MIN_AGE,
//!                                        shared by every waiting request)
//! ```

pub mod config;
pub mod graph;
pub mod render;
pub mod report;
mod task;

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::watch;

use self::config::WebConfig;
/// The handles the view asks (the agent's one set of module handles).
pub use crate::handles::ModuleHandles as Sources;

/// The running web view; dropping every clone stops it.
#[derive(Clone)]
pub struct WebHandle {
    addr: SocketAddr,
    _stop: Arc<watch::Sender<()>>,
}

impl WebHandle {
    /// Binds `config.listen` (a failure names the field and address) and
    /// serves the page on tasks of its own.
    pub async fn spawn(config: WebConfig, sources: Sources) -> anyhow::Result<WebHandle> {
        let (stop, stopped) = watch::channel(());
        let addr = task::start(config, sources, stopped).await?;
        tracing::info!(%addr, "web view listening (GET / in a browser)");
        Ok(WebHandle {
            addr,
            _stop: Arc::new(stop),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
