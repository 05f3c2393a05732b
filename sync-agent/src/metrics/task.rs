//! The HTTP side: one axum route, `GET /metrics`, which gathers the
//! modules' reports ([`gather`]) and answers them in the format the client
//! asked for (OpenMetrics for Prometheus, the classic text format
//! otherwise).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, header},
    response::IntoResponse,
    routing::get,
};
use tokio::sync::watch;

use super::{
    Sources,
    report::{Answer, Scrape},
};
use crate::bus::AskError;

/// How long a scrape waits for each module: well under Prometheus' default
/// scrape timeout (10 s), so a stuck module costs its own metrics only.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `listen` and serves until `stopped`'s sender is dropped.
pub(super) async fn start(
    listen: SocketAddr,
    sources: Sources,
    mut stopped: watch::Receiver<()>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics.listen: cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::new(sources));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // Every handle dropped: the agent is shutting down.
                while stopped.changed().await.is_ok() {}
            })
            .await;
        if let Err(err) = served {
            tracing::error!("metrics server stopped: {err}");
        }
    });
    Ok(addr)
}

async fn metrics(State(sources): State<Arc<Sources>>, headers: HeaderMap) -> impl IntoResponse {
    let scrape = gather(&sources).await;
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = if wants_openmetrics {
        (OPENMETRICS, scrape.openmetrics())
    } else {
        (PROMETHEUS_TEXT, scrape.prometheus_text())
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
}

/// Asks one module, within [`ASK_TIMEOUT`]; `None` if it is not running.
async fn ask<T>(question: Option<impl Future<Output = Result<T, AskError>>>) -> Option<Answer<T>> {
    crate::handles::ask(ASK_TIMEOUT, question).await
}

/// Every running module's report, asked all at once.
pub(super) async fn gather(sources: &Sources) -> Scrape {
    let s = sources;
    let device = s
        .device
        .as_ref()
        .map(|d| async move { Ok::<_, AskError>(d.report().await) });
    let (counters, status, peer, mclag, states, fabric, device) = tokio::join!(
        ask(s.dataplane.as_ref().map(|d| d.counters())),
        ask(s.dataplane.as_ref().map(|d| d.status())),
        ask(s.peer.as_ref().map(|p| p.peer())),
        ask(s.mclag.as_ref().map(|m| m.report())),
        ask(Some(s.inference.states(false))),
        ask(s.fabric.as_ref().map(|f| f.report())),
        ask(device),
    );
    let center = match &s.center {
        // A center shutting down has no rollouts to show.
        Some(c) => Some((c.report().await.unwrap_or_default(), c.stats())),
        None => None,
    };
    Scrape {
        instance: s.instance.clone(),
        uptime_s: s.started.elapsed().as_secs_f64(),
        counters,
        status,
        peer,
        mclag,
        states,
        fabric,
        center,
        device,
    }
}
