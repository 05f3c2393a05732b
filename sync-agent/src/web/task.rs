//! The HTTP side and the task that owns the last view.
//!
//! Requests do not ask the modules themselves: each hands the view task
//! an [`Ask`] on a bounded queue (full: 503) and waits for its answer. The
//! task gathers the reports and renders them at most once per [`MIN_AGE`],
//! answering every request waiting meanwhile with the same view, so a
//! page open in many browsers (or a client hammering the endpoint) costs
//! the modules one round of questions per [`MIN_AGE`]. The graph layout
//! runs on the blocking pool, never on the runtime's workers.
//!
//! Routes: `GET /` (the page), `GET /api/view` (its sections as JSON, what
//! the page polls), `GET /app.js`, `GET /style.css`. Any other path is 404,
//! any other method on these 405; both are counted.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    Sources,
    config::WebConfig,
    render,
    report::{Answer, Snapshot, ViewJson, WebStats},
};
use crate::{bus::AskError, rollout::report::RolloutReport};

/// A view younger than this is served again instead of asking the modules.
pub const MIN_AGE: Duration = Duration::from_millis(500);
/// How long a refresh waits for each module: a stuck one costs its own
/// section only.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests waiting for a view beyond these are refused (503).
const ASK_QUEUE: usize = 64;
/// How long a request waits for its view.
const VIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// What the page may load: its own script and style sheet (the drawn SVG
/// carries inline styles). No inline script runs, so even a report value
/// the escaping missed could not execute.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// A request for the current view.
type Ask = oneshot::Sender<Arc<ViewJson>>;

/// Counters the HTTP handlers bump; read when a view is rendered.
#[derive(Default)]
struct Counters {
    not_found: AtomicU64,
    bad_method: AtomicU64,
    busy: AtomicU64,
}

struct Shared {
    asks: mpsc::Sender<Ask>,
    counters: Arc<Counters>,
    refresh_ms: u64,
}

/// Binds `config.listen`, starts the view task and serves until
/// `stopped`'s sender is dropped.
pub(super) async fn start(
    config: WebConfig,
    sources: Sources,
    mut stopped: watch::Receiver<()>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("web.listen: cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (asks, asks_rx) = mpsc::channel(ASK_QUEUE);
    let counters = Arc::new(Counters::default());
    tokio::spawn(view_task(sources, asks_rx, counters.clone()));
    let app = app(Arc::new(Shared {
        asks,
        counters,
        refresh_ms: config.refresh_ms,
    }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // Every handle dropped: the agent is shutting down.
                while stopped.changed().await.is_ok() {}
            })
            .await;
        if let Err(err) = served {
            tracing::error!("web view server stopped: {err}");
        }
    });
    Ok(addr)
}

fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page).fallback(bad_method))
        .route("/api/view", get(view_json).fallback(bad_method))
        .route("/app.js", get(app_js).fallback(bad_method))
        .route("/style.css", get(style_css).fallback(bad_method))
        // Browsers ask for it on their own: not the operator's mistake.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(not_found)
        .with_state(shared)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Asks one module, within [`ASK_TIMEOUT`]; `None` if it is not running.
async fn ask<T>(question: Option<impl Future<Output = Result<T, AskError>>>) -> Option<Answer<T>> {
    crate::handles::ask(ASK_TIMEOUT, question).await
}

/// Every running module's report, asked all at once.
async fn gather(s: &Sources) -> Snapshot {
    let (mclag, peer, arp, nd, fabric, faulty, alarms) = tokio::join!(
        ask(s.mclag.as_ref().map(|m| m.report())),
        ask(s.peer.as_ref().map(|p| p.peer())),
        ask(s.peer.as_ref().map(|p| p.arp())),
        ask(s.peer.as_ref().map(|p| p.nd())),
        ask(s.fabric.as_ref().map(|f| f.report())),
        ask(Some(s.inference.states(true))),
        ask(Some(s.inference.alarms())),
    );
    let device = match &s.device {
        Some(device) => tokio::time::timeout(ASK_TIMEOUT, device.report())
            .await
            .ok(),
        None => None,
    };
    let center = match &s.center {
        // Committed state: waits at most for the group commit running now.
        Some(center) => tokio::time::timeout(ASK_TIMEOUT, center.report())
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    let rollout =
        (s.center.is_some() || s.device.is_some()).then_some(RolloutReport { center, device });
    Snapshot {
        instance: s.instance.clone(),
        roles: s.roles.clone(),
        taken_unix_ms: unix_ms(),
        mclag,
        peer,
        arp,
        nd,
        fabric,
        faulty,
        alarms,
        rollout,
    }
}

/// Owns the last view; answers every waiting request from one gathering.
async fn view_task(sources: Sources, mut asks: mpsc::Receiver<Ask>, counters: Arc<Counters>) {
    let mut last: Option<(Instant, Arc<ViewJson>)> = None;
    let mut stats = WebStats::default();
    while let Some(first) = asks.recv().await {
        let view = match &last {
            Some((at, view)) if at.elapsed() < MIN_AGE => {
                stats.shared += 1;
                view.clone()
            }
            _ => {
                let snapshot = gather(&sources).await;
                stats.gathered += 1;
                let (sections, failures) = tokio::task::spawn_blocking(move || {
                    let mut failures = 0;
                    let sections = render::sections(&snapshot, &mut failures);
                    (sections, failures)
                })
                .await
                .unwrap_or_else(|err| {
                    tracing::error!("web view: rendering failed: {err}");
                    (Vec::new(), 1)
                });
                stats.graph_failures += failures;
                stats.not_found = counters.not_found.load(Ordering::Relaxed);
                stats.bad_method = counters.bad_method.load(Ordering::Relaxed);
                stats.busy = counters.busy.load(Ordering::Relaxed);
                let view = Arc::new(ViewJson {
                    instance: sources.instance.clone(),
                    roles: sources.roles.clone(),
                    taken_unix_ms: unix_ms(),
                    sections,
                    stats,
                });
                last = Some((Instant::now(), view.clone()));
                view
            }
        };
        let _ = first.send(view.clone());
        // Whoever asked while this view was being made gets it too.
        while let Ok(next) = asks.try_recv() {
            stats.shared += 1;
            let _ = next.send(view.clone());
        }
    }
}

/// The current view, or the status to answer with.
async fn current(shared: &Shared) -> Result<Arc<ViewJson>, Response> {
    let (tx, rx) = oneshot::channel();
    if shared.asks.try_send(tx).is_err() {
        shared.counters.busy.fetch_add(1, Ordering::Relaxed);
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests waiting for the view; retry shortly\n",
        )
            .into_response());
    }
    match tokio::time::timeout(VIEW_TIMEOUT, rx).await {
        Ok(Ok(view)) => Ok(view),
        _ => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the view could not be gathered in time\n",
        )
            .into_response()),
    }
}

fn with_headers(mut response: Response, content_type: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn page(State(shared): State<Arc<Shared>>) -> Response {
    match current(&shared).await {
        Ok(view) => with_headers(
            Html(render::page(&view, shared.refresh_ms)).into_response(),
            "text/html; charset=utf-8",
        ),
        Err(response) => response,
    }
}

async fn view_json(State(shared): State<Arc<Shared>>) -> Response {
    match current(&shared).await {
        Ok(view) => with_headers(Json(view.as_ref()).into_response(), "application/json"),
        Err(response) => response,
    }
}

async fn app_js() -> Response {
    with_headers(
        render::APP_JS.into_response(),
        "text/javascript; charset=utf-8",
    )
}

async fn style_css() -> Response {
    with_headers(render::STYLE_CSS.into_response(), "text/css; charset=utf-8")
}

async fn not_found(State(shared): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    shared.counters.not_found.fetch_add(1, Ordering::Relaxed);
    let path = uri.path();
    // The path is echoed as plain text, never as HTML.
    let shown: String = path.chars().take(200).collect();
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("no page {shown:?}: the web view serves /, /api/view, /app.js and /style.css\n"),
    )
        .into_response()
}

async fn bad_method(State(shared): State<Arc<Shared>>, method: axum::http::Method) -> Response {
    shared.counters.bad_method.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [
            (header::ALLOW, "GET, HEAD"),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        ],
        format!("{method} is not allowed: the web view is read-only (GET)\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
