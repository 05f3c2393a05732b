//! The config center's HTTP API (axum). Bodies are JSON; every error is a
//! status and an [`ApiError`] whose message names what is wrong.
//!
//! | method and path | body -> answer |
//! | --- | --- |
//! | `PUT /v1/configs/{ns}/{group}/{name}?batch_size=&pace_ms=` | [`PutConfig`] -> [`ConfigRecord`] |
//! | `GET /v1/configs/{ns}/{group}/{name}?version=N` | -> [`ConfigRecord`] |
//! | `DELETE /v1/configs/{ns}/{group}/{name}` | -> the last [`ConfigRecord`] (history kept in the audit) |
//! | `GET /v1/audit?after=SEQ&limit=N` | -> `[AuditEntry]`, oldest first |
//! | `GET /v1/configs?namespace=NS` | -> `[ConfigRecord]` |
//! | `GET /v1/stats` | -> refused requests by reason, long polls held |
//! | `GET /v1/configs/{ns}/{group}/{name}/history` | -> `[ConfigRecord]`, oldest first |
//! | `POST /v1/configs/{ns}/{group}/{name}/rollback?batch_size=&pace_ms=` | [`RollbackRequest`] -> [`ConfigRecord`] |
//! | `POST /v1/configs/{ns}/{group}/{name}/clone?batch_size=&pace_ms=` | [`CloneRequest`] -> [`ConfigRecord`] |
//! | `GET /v1/configs/{ns}/{group}/{name}/diff?from=A&to=B` | -> [`DiffAnswer`] |
//! | `GET /v1/devices` | -> `[DeviceInfo]` |
//! | `POST /v1/devices/{device}/register` | [`Register`] -> [`DeviceInfo`] |
//! | `GET /v1/devices/{device}/watch?have=svc:MD5,...&timeout_ms=` | -> [`WatchAnswer`](crate::rollout::wire::WatchAnswer) (long poll) |
//! | `POST /v1/devices/{device}/ack` | [`Ack`] -> `{}` |
//! | `GET /v1/rollouts` | -> `[Rollout]`, newest first |
//! | `GET /v1/rollouts/{id}` | -> [`Rollout`] |
//! | `POST /v1/rollouts/{id}/resume` (or `/continue`) | -> [`Rollout`] |
//! | `POST /v1/rollouts/{id}/abort` | -> [`Rollout`] |
//! | `POST /v1/rollouts/{id}/skip/{device}` | -> [`Rollout`] |
//! | `DELETE /v1/devices/{device}` | -> `{}` |
//! | `GET /v1/configs/{ns}/{group}/{name}/listeners` | -> `[Listener]` |
//!
//! `PUT`, `rollback` and `clone` also take `canary=DEV[,DEV|LABEL...]` and
//! `approve_each_batch=true`.
//!
//! With tokens configured (`[[rollout.center.tokens]]`, see [`super::auth`])
//! every request but an unknown path needs `Authorization: Bearer TOKEN`:
//! reads need `NS:read`, put/rollback/clone `NS:publish` (clone: in the
//! target namespace, and `read` in the source), rollout actions `NS:admin`
//! in the rollout's namespace, device removal `*:admin`, the device and
//! rollout lists and stats any operator token (lists show only readable
//! namespaces); register, watch and ack need the device's own token, which
//! may also read the configs of its registered services. 401: no, malformed
//! or unknown token; 403: the token lacks the role or is another device's.
//!
//! Statuses: 400 invalid input (content for its format, names, cycle,
//! malformed body or query), 404 unknown config/version/namespace/device/
//! rollout, 409 conflicting request (an ack of something not sent, resuming
//! a rollout that is not paused), 413 content over the size limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::auth::{Identity, Need, Role, Tokens};
use super::{Center, CenterError, DEFAULT_WATCH_TIMEOUT_MS, MAX_WATCH_TIMEOUT_MS, RolloutOptions};
use crate::rollout::wire::{
    Ack, ApiError, CloneRequest, ConfigKey, ConfigRecord, DeviceInfo, DiffAnswer, Listener,
    PutConfig, Register, RollbackRequest, Rollout, check_name,
};

/// An error answer: status and message.
#[derive(Debug)]
pub struct HttpError(pub StatusCode, pub String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<CenterError> for HttpError {
    fn from(e: CenterError) -> Self {
        let status = match &e {
            CenterError::NotFound(_) => StatusCode::NOT_FOUND,
            CenterError::Invalid(_) => StatusCode::BAD_REQUEST,
            CenterError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            CenterError::Conflict(_) => StatusCode::CONFLICT,
            CenterError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CenterError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status.is_server_error() {
            tracing::error!("config center: {e}");
        }
        HttpError(status, e.to_string())
    }
}

type Answer<T> = Result<Json<T>, HttpError>;

fn bad(msg: impl Into<String>) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, msg.into())
}

fn body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, HttpError> {
    let bytes =
        body.map_err(|e| HttpError(e.status(), format!("{what} body: {}", e.body_text())))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid {what} body: {e}")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, HttpError> {
    q.map(|Query(t)| t)
        .map_err(|e| bad(format!("invalid query: {}", e.body_text())))
}

fn config_key(
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<ConfigKey, HttpError> {
    let Path((ns, group, name)) = path.map_err(|e| bad(e.body_text()))?;
    ConfigKey::new(ns, group, name).map_err(bad)
}

fn device_name(path: Result<Path<String>, PathRejection>) -> Result<String, HttpError> {
    let Path(device) = path.map_err(|e| bad(e.body_text()))?;
    check_name("device", &device).map_err(bad)?;
    Ok(device)
}

fn rollout_id(path: Result<Path<String>, PathRejection>) -> Result<u64, HttpError> {
    let Path(id) = path.map_err(|e| bad(e.body_text()))?;
    id.parse()
        .map_err(|_| bad(format!("rollout id {id:?} is not a number")))
}

/// Builds the API over `center`, open to every caller (no tokens).
pub fn router(center: Arc<Center>) -> Router {
    router_with_tokens(center, Arc::new(Tokens::default()))
}

/// Builds the API over `center`, checking callers against `tokens` (none:
/// open). The body limit leaves room for JSON escaping of the largest
/// content; the content limit itself is checked (413) by the store.
pub fn router_with_tokens(center: Arc<Center>, tokens: Arc<Tokens>) -> Router {
    let body_limit = center
        .max_config_bytes()
        .saturating_mul(6)
        .saturating_add(64 * 1024);
    let config = "/v1/configs/{ns}/{group}/{name}";
    Router::new()
        .route("/v1/configs", get(list_configs))
        .route(
            config,
            get(get_config).put(put_config).delete(delete_config),
        )
        .route("/v1/audit", get(audit))
        .route(&format!("{config}/history"), get(history))
        .route(&format!("{config}/rollback"), post(rollback))
        .route(&format!("{config}/clone"), post(clone_config))
        .route(&format!("{config}/diff"), get(diff))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/{device}/register", post(register))
        .route("/v1/devices/{device}/watch", get(watch))
        .route("/v1/devices/{device}/ack", post(ack))
        .route("/v1/rollouts", get(rollouts))
        .route("/v1/rollouts/{id}", get(rollout))
        .route("/v1/rollouts/{id}/resume", post(resume))
        .route("/v1/rollouts/{id}/continue", post(resume))
        .route("/v1/rollouts/{id}/abort", post(abort))
        .route("/v1/rollouts/{id}/skip/{device}", post(skip))
        .route("/v1/devices/{device}", axum::routing::delete(remove_device))
        .route(&format!("{config}/listeners"), get(listeners))
        .route("/v1/stats", get(stats))
        .fallback(|| async { HttpError(StatusCode::NOT_FOUND, "no such API path".into()) })
        .method_not_allowed_fallback(|| async {
            HttpError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this API path".into(),
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            center.clone(),
            count_refusals,
        ))
        .layer(axum::Extension(tokens))
        .with_state(center)
}

/// Counts every refused request by the reason its status stands for, so
/// an operator sees hostile or broken clients in `GET /v1/stats`.
async fn count_refusals(
    State(center): State<Arc<Center>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let status = response.status();
    center.count_request(status.as_u16());
    match status {
        // Counted where decided, by a finer reason (see `Caller`).
        StatusCode::UNAUTHORIZED => {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"mlag-sync config center\""),
            );
        }
        StatusCode::FORBIDDEN => {}
        s if s.is_client_error() || s.is_server_error() => center.count_refusal(refusal_reason(s)),
        _ => {}
    }
    response
}

/// Who sent a request: anyone (no tokens configured) or a verified token.
/// Extracting it refuses a request without a valid token (401, counted as
/// `unauthenticated` or `bad_token`).
#[derive(Clone, Debug)]
pub enum Caller {
    /// The center has no tokens: every request is allowed.
    Open,
    /// The verified token.
    Verified(Arc<Identity>),
}

impl axum::extract::FromRequestParts<Arc<Center>> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        center: &Arc<Center>,
    ) -> Result<Self, HttpError> {
        let Some(tokens) = parts
            .extensions
            .get::<Arc<Tokens>>()
            .filter(|t| !t.is_empty())
        else {
            return Ok(Caller::Open);
        };
        let header = parts.headers.get(axum::http::header::AUTHORIZATION);
        match tokens.verify(header.map(|h| h.as_bytes())) {
            Ok(identity) => Ok(Caller::Verified(identity)),
            Err(e) => {
                center.count_refusal(e.reason());
                Err(HttpError(StatusCode::UNAUTHORIZED, e.to_string()))
            }
        }
    }
}

impl Caller {
    /// Refuses (403, counted by reason) unless the caller may do `need`.
    fn check(&self, center: &Center, need: Need<'_>) -> Result<(), HttpError> {
        match self {
            Caller::Open => Ok(()),
            Caller::Verified(identity) => identity.allows(need).map_err(|denied| {
                center.count_refusal(denied.reason());
                HttpError(StatusCode::FORBIDDEN, denied.to_string())
            }),
        }
    }

    /// Whether the caller may read `namespace` (for filtering lists).
    fn reads(&self, namespace: &str) -> bool {
        match self {
            Caller::Open => true,
            Caller::Verified(identity) => identity.has(namespace, Role::Read),
        }
    }

    /// The verified token's name (None without tokens): who to record for
    /// writes that carry no author field (rollout actions, device removal).
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Open => None,
            Caller::Verified(identity) => Some(&identity.name),
        }
    }

    /// The author recorded for a write: the verified token's name; without
    /// tokens, whatever the client says.
    pub fn author(&self, claimed: String) -> String {
        match self {
            Caller::Open => claimed,
            Caller::Verified(identity) => identity.name.clone(),
        }
    }

    /// Reading a config: an operator needs `read` in its namespace; a
    /// device token may read only the keys of its registered services (it
    /// fetches what it was assigned).
    fn check_read(&self, center: &Center, key: &ConfigKey) -> Result<(), HttpError> {
        if let Caller::Verified(identity) = self
            && let Some(device) = identity.device()
        {
            if center.device_uses(device, key) {
                return Ok(());
            }
            center.count_refusal("forbidden");
            return Err(HttpError(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} is the device token of {device:?}, which has no registered service using {key}",
                    identity.name
                ),
            ));
        }
        self.check(center, Need::Role(&key.namespace, Role::Read))
    }
}

/// The counter a refused request's status goes under.
fn refusal_reason(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "other",
    }
}

/// `GET /v1/stats`: refused requests by reason and long polls held.
#[derive(serde::Serialize)]
struct Stats {
    refused: std::collections::BTreeMap<String, u64>,
    waiting_polls: usize,
    /// Whether this center runs the rollout engine's timed work (always
    /// true on redb; on etcd, the elected one of several centers).
    runs_engine: bool,
}

async fn stats(caller: Caller, State(center): State<Arc<Center>>) -> Answer<Stats> {
    caller.check(&center, Need::Operator)?;
    Ok(Json(Stats {
        refused: center.refusals(),
        waiting_polls: center.waiting_polls(),
        runs_engine: center.runs_engine(),
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RolloutQuery {
    batch_size: Option<usize>,
    pace_ms: Option<u64>,
    /// Comma-separated device names or labels.
    canary: Option<String>,
    approve_each_batch: Option<bool>,
}

impl From<RolloutQuery> for RolloutOptions {
    fn from(q: RolloutQuery) -> Self {
        RolloutOptions {
            batch_size: q.batch_size,
            pace_ms: q.pace_ms,
            canary: q
                .canary
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            approve_each_batch: q.approve_each_batch.unwrap_or(false),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: Option<u64>,
    to: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    have: Option<String>,
    timeout_ms: Option<u64>,
}

async fn put_config(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<RolloutQuery>, QueryRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<ConfigRecord> {
    let key = config_key(path)?;
    caller.check(&center, Need::Role(&key.namespace, Role::Publish))?;
    let opts = query(q)?.into();
    let mut put: PutConfig = body(raw, "PutConfig")?;
    put.author = caller.author(put.author);
    Ok(Json(center.put(key, put, opts).await?))
}

async fn delete_config(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Answer<ConfigRecord> {
    let key = config_key(path)?;
    caller.check(&center, Need::Role(&key.namespace, Role::Publish))?;
    Ok(Json(
        center
            .delete(key, caller.author("anonymous".into()))
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// Most audit entries in one answer.
const MAX_AUDIT_ENTRIES: usize = 10_000;

/// The audit log spans every namespace: admin everywhere reads it.
async fn audit(
    caller: Caller,
    State(center): State<Arc<Center>>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Answer<Vec<super::store::AuditEntry>> {
    caller.check(&center, Need::AdminEverywhere)?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(1000).min(MAX_AUDIT_ENTRIES);
    Ok(Json(center.audit(q.after.unwrap_or(0), limit).await?))
}

async fn get_config(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<VersionQuery>, QueryRejection>,
) -> Answer<ConfigRecord> {
    let key = config_key(path)?;
    caller.check_read(&center, &key)?;
    let version = query(q)?.version;
    Ok(Json(center.get(key, version).await?))
}

async fn list_configs(
    caller: Caller,
    State(center): State<Arc<Center>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Answer<Vec<ConfigRecord>> {
    let namespace = query(q)?.namespace;
    match &namespace {
        Some(ns) => caller.check(&center, Need::Role(ns, Role::Read))?,
        None => caller.check(&center, Need::Operator)?,
    }
    let mut list = center.list(namespace).await?;
    list.retain(|r| caller.reads(&r.key.namespace));
    Ok(Json(list))
}

async fn history(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Answer<Vec<ConfigRecord>> {
    let key = config_key(path)?;
    caller.check(&center, Need::Role(&key.namespace, Role::Read))?;
    Ok(Json(center.history(key).await?))
}

async fn rollback(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<RolloutQuery>, QueryRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<ConfigRecord> {
    let key = config_key(path)?;
    caller.check(&center, Need::Role(&key.namespace, Role::Publish))?;
    let opts = query(q)?.into();
    let mut request: RollbackRequest = body(raw, "rollback")?;
    request.author = caller.author(request.author);
    Ok(Json(center.rollback(key, request, opts).await?))
}

async fn clone_config(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<RolloutQuery>, QueryRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<ConfigRecord> {
    let key = config_key(path)?;
    caller.check(&center, Need::Role(&key.namespace, Role::Read))?;
    let opts = query(q)?.into();
    let mut request: CloneRequest = body(raw, "clone")?;
    caller.check(&center, Need::Role(&request.namespace, Role::Publish))?;
    request.author = caller.author(request.author);
    Ok(Json(center.clone_config(key, request, opts).await?))
}

async fn diff(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Answer<DiffAnswer> {
    let key = config_key(path)?;
    caller.check(&center, Need::Role(&key.namespace, Role::Read))?;
    let q = query(q)?;
    let diff = center.diff(key, q.from, q.to).await?;
    Ok(Json(DiffAnswer { diff }))
}

async fn devices(caller: Caller, State(center): State<Arc<Center>>) -> Answer<Vec<DeviceInfo>> {
    caller.check(&center, Need::Operator)?;
    Ok(Json(center.devices().await?))
}

async fn register(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<DeviceInfo> {
    let device = device_name(path)?;
    caller.check(&center, Need::Device(&device))?;
    let registration: Register = body(raw, "Register")?;
    Ok(Json(center.register(device, registration).await?))
}

/// `have=svc1:MD5,svc2:MD5` -> service -> MD5.
pub fn parse_have(have: &str) -> Result<HashMap<String, String>, String> {
    have.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once(':') {
            Some((service, md5)) if !service.is_empty() => {
                Ok((service.to_string(), md5.to_string()))
            }
            _ => Err(format!(
                "have entry {part:?} is not of the form service:MD5"
            )),
        })
        .collect()
}

async fn watch(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let device = device_name(path)?;
    caller.check(&center, Need::Device(&device))?;
    let q = query(q)?;
    let have = parse_have(q.have.as_deref().unwrap_or("")).map_err(bad)?;
    let timeout = q
        .timeout_ms
        .unwrap_or(DEFAULT_WATCH_TIMEOUT_MS)
        .min(MAX_WATCH_TIMEOUT_MS);
    // The body comes encoded (a `WatchAnswer` in JSON, as `Json` would
    // write it): one change answers every waiting device, and they share it.
    let body = center
        .watch_answer(&device, &have, Duration::from_millis(timeout))
        .await?;
    let json = axum::http::HeaderValue::from_static("application/json");
    Ok(([(axum::http::header::CONTENT_TYPE, json)], body).into_response())
}

async fn ack(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let device = device_name(path)?;
    caller.check(&center, Need::Device(&device))?;
    let ack: Ack = body(raw, "Ack")?;
    center.ack(&device, &ack).await?;
    Ok(Json(serde_json::json!({})))
}

async fn rollouts(caller: Caller, State(center): State<Arc<Center>>) -> Answer<Vec<Rollout>> {
    caller.check(&center, Need::Operator)?;
    let mut list = center.rollouts().await?;
    list.retain(|r| caller.reads(&r.key.namespace));
    Ok(Json(list))
}

/// Refuses unless the caller has `role` in the namespace of rollout `id`
/// (404 for an unknown rollout).
fn check_rollout(caller: &Caller, center: &Center, id: u64, role: Role) -> Result<(), HttpError> {
    if let Caller::Verified(_) = caller {
        let key = center.rollout_key(id)?;
        caller.check(center, Need::Role(&key.namespace, role))?;
    }
    Ok(())
}

async fn rollout(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<String>, PathRejection>,
) -> Answer<Rollout> {
    let id = rollout_id(path)?;
    check_rollout(&caller, &center, id, Role::Read)?;
    Ok(Json(center.rollout(id).await?))
}

async fn resume(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<String>, PathRejection>,
) -> Answer<Rollout> {
    let id = rollout_id(path)?;
    check_rollout(&caller, &center, id, Role::Admin)?;
    let rollout = center.resume(id, caller.author("anonymous".into())).await?;
    tracing::info!(by = caller.name().unwrap_or("-"), "rollout {id} resumed");
    Ok(Json(rollout))
}

async fn abort(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<String>, PathRejection>,
) -> Answer<Rollout> {
    let id = rollout_id(path)?;
    check_rollout(&caller, &center, id, Role::Admin)?;
    let rollout = center.abort(id, caller.author("anonymous".into())).await?;
    tracing::info!(by = caller.name().unwrap_or("-"), "rollout {id} aborted");
    Ok(Json(rollout))
}

async fn skip(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Answer<Rollout> {
    let Path((id, device)) = path.map_err(|e| bad(e.body_text()))?;
    let id = id
        .parse()
        .map_err(|_| bad(format!("rollout id {id:?} is not a number")))?;
    check_name("device", &device).map_err(bad)?;
    check_rollout(&caller, &center, id, Role::Admin)?;
    let rollout = center
        .skip(id, device.clone(), caller.author("anonymous".into()))
        .await?;
    tracing::info!(
        by = caller.name().unwrap_or("-"),
        "rollout {id}: {device} skipped"
    );
    Ok(Json(rollout))
}

async fn remove_device(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<String>, PathRejection>,
) -> Answer<serde_json::Value> {
    let device = device_name(path)?;
    caller.check(&center, Need::AdminEverywhere)?;
    center
        .remove_device(device.clone(), caller.author("anonymous".into()))
        .await?;
    tracing::info!(by = caller.name().unwrap_or("-"), "device {device} removed");
    Ok(Json(serde_json::json!({})))
}

async fn listeners(
    caller: Caller,
    State(center): State<Arc<Center>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Answer<Vec<Listener>> {
    let key = config_key(path)?;
    caller.check(&center, Need::Role(&key.namespace, Role::Read))?;
    Ok(Json(center.listeners(key).await?))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::rollout::center::{CenterConfig, bind_with_shutdown};
    use crate::rollout::wire::{RolloutState, StepState};

    struct TestCenter {
        base: String,
        http: reqwest::Client,
        center: Arc<Center>,
        _dir: tempfile::TempDir,
    }

    struct Stopper {
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl Stopper {
        async fn stop(mut self) {
            let _ = self.stop.send(());
            tokio::time::timeout(Duration::from_secs(5), &mut self.server)
                .await
                .expect("server stops within 5 s")
                .unwrap()
                .unwrap();
        }
    }

    impl TestCenter {
        async fn start(max_config_bytes: usize) -> (TestCenter, Stopper) {
            let dir = tempfile::tempdir().unwrap();
            let config = CenterConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                db_path: dir.path().join("center.redb"),
                batch_size: 10,
                pace_ms: 0,
                max_config_bytes,
                ..Default::default()
            };
            Self::start_config(dir, config, None).await
        }

        /// A center of `config` (HTTPS when it has TLS files; the client
        /// then trusts only `ca`).
        async fn start_config(
            dir: tempfile::TempDir,
            config: CenterConfig,
            ca: Option<&std::path::Path>,
        ) -> (TestCenter, Stopper) {
            let scheme = if config.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (addr, center, server) = bind_with_shutdown(config, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
            let host = if scheme == "https" {
                format!("localhost:{}", addr.port())
            } else {
                addr.to_string()
            };
            let center = TestCenter {
                base: format!("{scheme}://{host}"),
                http: crate::rollout::client::client_builder(None, ca)
                    .unwrap()
                    .no_proxy()
                    .build()
                    .unwrap(),
                center,
                _dir: dir,
            };
            let stopper = Stopper {
                stop,
                server: tokio::spawn(server),
            };
            (center, stopper)
        }

        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        /// Waits until the center holds `n` long polls: proof that they
        /// reached it and wait, without guessing how long that takes.
        async fn until_held(&self, n: usize) {
            tokio::time::timeout(Duration::from_secs(30), async {
                while self.center.waiting_polls() != n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} long polls held instead of {n}",
                    self.center.waiting_polls()
                )
            });
        }

        async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, serde_json::Value) {
            let response = request.send().await.unwrap();
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let value = response.json().await.unwrap();
            (status, value)
        }

        async fn put(
            &self,
            path: &str,
            body: serde_json::Value,
        ) -> (StatusCode, serde_json::Value) {
            self.send(self.http.put(self.url(path)).json(&body)).await
        }

        async fn post(
            &self,
            path: &str,
            body: serde_json::Value,
        ) -> (StatusCode, serde_json::Value) {
            self.send(self.http.post(self.url(path)).json(&body)).await
        }

        async fn get(&self, path: &str) -> (StatusCode, serde_json::Value) {
            self.send(self.http.get(self.url(path))).await
        }

        async fn http_delete(&self, path: &str) -> (StatusCode, serde_json::Value) {
            self.send(self.http.delete(self.url(path))).await
        }

        async fn watch(
            &self,
            device: &str,
            have: &str,
            timeout_ms: u64,
        ) -> (StatusCode, serde_json::Value) {
            // Service names and MD5s need no escaping in a query.
            let url = self.url(&format!(
                "/v1/devices/{device}/watch?have={have}&timeout_ms={timeout_ms}"
            ));
            self.send(self.http.get(url)).await
        }
    }

    /// A test CA, and a certificate for localhost and 127.0.0.1 signed by
    /// it: PEM files (ca, cert, key) in `dir`.
    pub(crate) fn test_pki(
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "mlag-sync test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let paths = (
            dir.join("ca.pem"),
            dir.join("center.pem"),
            dir.join("center.key"),
        );
        std::fs::write(&paths.0, ca_cert.pem()).unwrap();
        std::fs::write(&paths.1, leaf.pem()).unwrap();
        std::fs::write(&paths.2, key.serialize_pem()).unwrap();
        paths
    }

    fn error(v: &serde_json::Value) -> &str {
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {v}"))
    }

    #[tokio::test]
    async fn config_crud_over_http() {
        let (c, stopper) = TestCenter::start(64).await;
        let k = "/v1/configs/prod/web/app";
        let (s, v) = c
            .put(
                k,
                json!({"format": "json", "content": "{\"a\":1}", "author": "op"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["version"], 1);
        assert_eq!(v["md5"], super::super::formats::md5_hex("{\"a\":1}"));
        // Identical put: no new version.
        let (_, v) = c
            .put(
                k,
                json!({"format": "json", "content": "{\"a\":1}", "author": "op"}),
            )
            .await;
        assert_eq!(v["version"], 1);
        let (s, v) = c
            .put(k, json!({"format": "json", "content": "{\"a\":2}"}))
            .await;
        assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(2)));
        // Bad input: format, size, names, body, query.
        let (s, v) = c
            .put(k, json!({"format": "json", "content": "{\"a\":"}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(error(&v).contains("invalid json content"), "{v}");
        let (s, v) = c
            .put(k, json!({"format": "text", "content": "x".repeat(65)}))
            .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(error(&v).contains("over the limit of 64 bytes"), "{v}");
        let (s, v) = c
            .put(
                "/v1/configs/prod/we%20b/app",
                json!({"format": "text", "content": ""}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(error(&v).contains("group"), "{v}");
        let (s, v) = c.put(k, json!({"format": "xml", "content": ""})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(error(&v).contains("PutConfig"), "{v}");
        let (s, v) = c
            .put(k, json!({"format": "text", "content": "", "extra": 1}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, _) = c
            .put(
                &format!("{k}?batch_size=0"),
                json!({"format": "text", "content": "z"}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) = c
            .put(
                &format!("{k}?bogus=1"),
                json!({"format": "text", "content": "z"}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // Reads.
        let (s, v) = c.get(&format!("{k}?version=1")).await;
        assert_eq!(
            (s, v["content"].as_str()),
            (StatusCode::OK, Some("{\"a\":1}"))
        );
        let (s, v) = c.get(&format!("{k}?version=7")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(error(&v).contains("no version 7"), "{v}");
        let (s, v) = c.get("/v1/configs/nope/web/app").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(error(&v).contains("unknown namespace"), "{v}");
        let (_, v) = c.get(&format!("{k}/history")).await;
        assert_eq!(v.as_array().unwrap().len(), 2);
        // Rollback, clone, diff, list.
        let (s, v) = c
            .post(&format!("{k}/rollback"), json!({"version": 1}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            (v["version"].as_u64(), v["content"].as_str()),
            (Some(3), Some("{\"a\":1}"))
        );
        let (s, v) = c
            .post(
                &format!("{k}/clone"),
                json!({"namespace": "staging", "group": "web"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            v["key"],
            json!({"namespace": "staging", "group": "web", "name": "app"})
        );
        assert_eq!(v["version"], 1);
        let (_, v) = c.get(&format!("{k}/diff?from=2&to=3")).await;
        assert!(v["diff"].as_str().unwrap().contains("-{\"a\":2}"), "{v}");
        let (_, v) = c.get("/v1/configs").await;
        assert_eq!(v.as_array().unwrap().len(), 2);
        let (_, v) = c.get("/v1/configs?namespace=staging").await;
        assert_eq!(v.as_array().unwrap().len(), 1);
        let (s, _) = c.get("/v1/configs?namespace=ghost").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, v) = c.get("/v1/nothing").await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        // Deletion: gone from reads, its history kept in the audit log.
        let (s, v) = c.http_delete("/v1/configs/staging/web/app").await;
        assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(1)), "{v}");
        let (s, _) = c.get("/v1/configs/staging/web/app").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = c.http_delete("/v1/configs/staging/web/app").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, v) = c.get("/v1/audit").await;
        assert_eq!(s, StatusCode::OK);
        let actions: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["put", "put", "rollback", "clone", "delete"]);
        let deleted = &v[4];
        assert_eq!(deleted["key"], "staging/web/app");
        assert_eq!(deleted["removed"][0]["content"], "{\"a\":1}");
        let (_, v) = c.get("/v1/audit?after=4").await;
        assert_eq!(v.as_array().unwrap().len(), 1);
        stopper.stop().await;
    }

    fn register_body(services: &[(&str, &str, &[&str])]) -> serde_json::Value {
        let services: Vec<_> = services
            .iter()
            .map(|(name, key, deps)| {
                let k: ConfigKey = key.parse().unwrap();
                json!({"name": name, "config": k, "depends_on": deps})
            })
            .collect();
        json!({ "services": services })
    }

    #[tokio::test]
    async fn long_poll_answers_promptly_and_times_out_cleanly() {
        let (c, stopper) = TestCenter::start(1 << 20).await;
        let c = Arc::new(c);
        let (s, v) = c
            .post(
                "/v1/devices/d1/register",
                register_body(&[("web", "prod/web/app", &[])]),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        // Unknown device: 404. Cycle: 400.
        let (s, _) = c.watch("ghost", "", 100).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, v) = c
            .post(
                "/v1/devices/d2/register",
                register_body(&[("a", "prod/web/app", &["b"]), ("b", "prod/web/app", &["a"])]),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(error(&v).contains("cycle"), "{v}");

        // Nothing released yet: a clean, empty answer at the timeout, not
        // before.
        let start = Instant::now();
        let (s, v) = c.watch("d1", "", 300).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, json!({"assignments": []}));
        assert!(start.elapsed() >= Duration::from_millis(300));

        // A poll held by the center is answered by the PUT, with what the
        // PUT made (its timeout, 60 s, would answer with nothing).
        let poll = {
            let c = c.clone();
            tokio::spawn(async move { c.watch("d1", "", 60_000).await })
        };
        c.until_held(1).await;
        assert!(!poll.is_finished(), "nothing released: the poll is held");
        let (s, record) = c
            .put(
                "/v1/configs/prod/web/app",
                json!({"format": "text", "content": "v1"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, v) = poll.await.unwrap();
        assert_eq!(s, StatusCode::OK);
        assert_eq!(c.center.waiting_polls(), 0);
        let a = &v["assignments"][0];
        assert_eq!(a["service"], "web");
        assert_eq!(a["version"], 1);
        assert_eq!(a["md5"], record["md5"]);
        let rollout_id = a["rollout_id"].as_u64().unwrap();
        assert!(rollout_id > 0);

        // Having that MD5: nothing to answer, even before the ack.
        let have = format!("web:{}", record["md5"].as_str().unwrap());
        let (_, v) = c.watch("d1", &have, 100).await;
        assert_eq!(v, json!({"assignments": []}));
        let (s, v) = c.watch("d1", "web", 100).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

        let (s, _) = c
            .post(
                "/v1/devices/d1/ack",
                json!({"rollout_id": rollout_id, "service": "web", "version": 1, "ok": true}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (_, r) = c.get(&format!("/v1/rollouts/{rollout_id}")).await;
        assert_eq!(r["state"], "done");

        // A device registering later gets the current version at once.
        let (_, info) = c
            .post(
                "/v1/devices/d3/register",
                register_body(&[("web", "prod/web/app", &[])]),
            )
            .await;
        assert_eq!(info["released"][0]["rollout_id"], 0);
        let (_, v) = c.watch("d3", "", 60_000).await;
        assert_eq!(v["assignments"][0]["version"], 1, "answered, not held");

        // Shutdown ends held polls (long before their 60 s).
        let poll = {
            let c = c.clone();
            tokio::spawn(async move { c.watch("d1", &have, 60_000).await })
        };
        c.until_held(1).await;
        stopper.stop().await;
        let (s, v) = poll.await.unwrap();
        assert_eq!((s, v), (StatusCode::OK, json!({"assignments": []})));
    }

    /// Many devices long-poll while changes race in: every poll is answered
    /// by a change newer than what its device had (never empty, which is
    /// what the poll's timeout would give), and every device ends on the
    /// last version. Polls come back at random moments around the changes,
    /// so some arrive just before, during and after each one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_changes_answer_every_waiter_with_the_change() {
        const DEVICES: usize = 200;
        const LAST: u64 = 12;
        let (c, stopper) = TestCenter::start(1 << 20).await;
        let c = Arc::new(c);
        let k = "/v1/configs/prod/web/app";
        let (_, first) = c.put(k, json!({"format": "text", "content": "v1"})).await;
        for d in 0..DEVICES {
            let (s, v) = c
                .post(
                    &format!("/v1/devices/d{d}/register"),
                    register_body(&[("web", "prod/web/app", &[])]),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
        let mut waiters = tokio::task::JoinSet::new();
        for d in 0..DEVICES {
            let c = c.clone();
            let mut have = first["md5"].as_str().unwrap().to_string();
            waiters.spawn(async move {
                let mut version = 1;
                let mut answers = 0;
                while version < LAST {
                    let (s, v) = c
                        .watch(&format!("d{d}"), &format!("web:{have}"), 60_000)
                        .await;
                    assert_eq!(s, StatusCode::OK, "{v}");
                    let a = &v["assignments"][0];
                    let got = a["version"].as_u64().unwrap_or_else(|| {
                        panic!("d{d} at v{version}: answered without a change: {v}")
                    });
                    assert!(got > version, "d{d} had v{version}, answered v{got}");
                    version = got;
                    have = a["md5"].as_str().unwrap().to_string();
                    answers += 1;
                    // Come back at a random moment around the next change.
                    let pause = (d as u64 * 7919 + answers * 104_729) % 7;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                answers
            });
        }
        for v in 2..=LAST {
            // Half of the changes once every poll is held, half racing.
            if v % 2 == 0 {
                c.until_held(DEVICES).await;
            } else {
                tokio::time::sleep(Duration::from_millis(v % 5)).await;
            }
            let (s, r) = c
                .put(
                    &format!("{k}?batch_size={DEVICES}"),
                    json!({"format": "text", "content": format!("v{v}")}),
                )
                .await;
            assert_eq!((s, r["version"].as_u64()), (StatusCode::OK, Some(v)));
        }
        let all = tokio::time::timeout(Duration::from_secs(120), async {
            let mut answers = 0;
            while let Some(done) = waiters.join_next().await {
                answers += done.unwrap();
            }
            answers
        })
        .await
        .expect("every device reaches the last version (a lost wake-up hangs here)");
        // The held rounds answer every device once each.
        assert!(all >= DEVICES as u64 * (LAST - 1) / 2, "{all} answers");
        stopper.stop().await;
    }

    #[tokio::test]
    async fn acks_failures_pause_and_resume() {
        let (c, stopper) = TestCenter::start(1 << 20).await;
        for d in ["d1", "d2"] {
            let (s, v) = c
                .post(
                    &format!("/v1/devices/{d}/register"),
                    register_body(&[
                        ("proxy", "prod/web/app", &["db"]),
                        ("db", "prod/web/app", &[]),
                    ]),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!(v["services"][0]["name"], "db", "dependency order: {v}");
        }
        // Batches of one: d1/db, d1/proxy, d2/db, d2/proxy.
        let (s, _) = c
            .put(
                "/v1/configs/prod/web/app?batch_size=1",
                json!({"format": "properties", "content": "a=1\n"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (_, list) = c.get("/v1/rollouts").await;
        let r: Rollout = serde_json::from_value(list[0].clone()).unwrap();
        assert_eq!(r.batch_size, 1);
        assert_eq!(r.batches.len(), 4);
        let order: Vec<(String, String)> = r
            .batches
            .iter()
            .map(|b| (b[0].device.clone(), b[0].service.clone()))
            .collect();
        assert_eq!(
            order,
            [("d1", "db"), ("d1", "proxy"), ("d2", "db"), ("d2", "proxy")]
                .map(|(d, s)| (d.to_string(), s.to_string()))
        );

        // Acknowledging what was not sent: 409, nothing changes.
        for (device, body) in [
            (
                "d1",
                json!({"rollout_id": r.id, "service": "proxy", "version": 1, "ok": true}),
            ),
            (
                "d2",
                json!({"rollout_id": r.id, "service": "db", "version": 1, "ok": true}),
            ),
            (
                "d1",
                json!({"rollout_id": r.id, "service": "db", "version": 9, "ok": true}),
            ),
            (
                "d1",
                json!({"rollout_id": r.id + 5, "service": "db", "version": 1, "ok": true}),
            ),
            (
                "d1",
                json!({"rollout_id": 0, "service": "db", "version": 1, "ok": true}),
            ),
        ] {
            let (s, v) = c
                .post(&format!("/v1/devices/{device}/ack"), body.clone())
                .await;
            assert_eq!(s, StatusCode::CONFLICT, "{body} -> {v}");
            assert!(!error(&v).is_empty());
        }
        let (s, _) = c
            .post(
                "/v1/devices/nobody/ack",
                json!({"rollout_id": r.id, "service": "db", "version": 1, "ok": true}),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (_, now) = c.get(&format!("/v1/rollouts/{}", r.id)).await;
        let now: Rollout = serde_json::from_value(now).unwrap();
        assert_eq!(now.current_batch, 0);
        assert_eq!(now.batches[0][0].state, StepState::Assigned);

        // d1's db fails its health check: paused, next batch not released.
        let (s, _) = c
            .post(
                "/v1/devices/d1/ack",
                json!({"rollout_id": r.id, "service": "db", "version": 1, "ok": false, "reason": "health check exit 1"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (_, now) = c.get(&format!("/v1/rollouts/{}", r.id)).await;
        let now: Rollout = serde_json::from_value(now).unwrap();
        assert_eq!(now.state, RolloutState::Paused);
        assert!(
            now.paused_reason.contains("health check exit 1"),
            "{}",
            now.paused_reason
        );
        assert_eq!(now.batches[0][0].state, StepState::Failed);
        assert_eq!(now.batches[1][0].state, StepState::Pending);
        let (_, v) = c.watch("d1", "", 200).await;
        assert_eq!(
            v,
            json!({"assignments": []}),
            "nothing more is released to d1"
        );
        let (_, v) = c.watch("d2", "", 100).await;
        assert_eq!(v, json!({"assignments": []}));

        // Resuming retries the failed step; a running rollout cannot be resumed.
        let (s, v) = c
            .post(&format!("/v1/rollouts/{}/resume", r.id), json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["state"], "running");
        let (s, _) = c
            .post(&format!("/v1/rollouts/{}/resume", r.id), json!({}))
            .await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, _) = c.post("/v1/rollouts/999/resume", json!({})).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (_, v) = c.watch("d1", "", 1_000).await;
        assert_eq!(v["assignments"][0]["service"], "db");
        for (d, svc) in [("d1", "db"), ("d1", "proxy"), ("d2", "db"), ("d2", "proxy")] {
            let (s, v) = c
                .post(
                    &format!("/v1/devices/{d}/ack"),
                    json!({"rollout_id": r.id, "service": svc, "version": 1, "ok": true}),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{d}/{svc}: {v}");
        }
        let (_, v) = c.get(&format!("/v1/rollouts/{}", r.id)).await;
        assert_eq!(v["state"], "done");
        let (_, v) = c.get("/v1/devices").await;
        assert_eq!(v.as_array().unwrap().len(), 2);
        stopper.stop().await;
    }

    /// Roles over HTTPS: every refusal is a 401 or 403 with a reason and
    /// its counter, nothing refused is stored, and history names the token.
    #[tokio::test]
    async fn tokens_decide_who_may_do_what_over_https() {
        use crate::rollout::center::auth::{TokenConfig, hash_token, mint};
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = test_pki(dir.path());
        let secrets: Vec<(String, String)> = ["reader", "publisher", "admin", "sw1", "other-ns"]
            .iter()
            .map(|n| (n.to_string(), mint()))
            .collect();
        let token = |name: &str| {
            secrets
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
                .unwrap()
        };
        let entry = |name: &str, roles: &[&str], device: Option<&str>| TokenConfig {
            name: name.into(),
            sha256: hex::encode(hash_token(&token(name))),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            device: device.map(str::to_string),
        };
        let config = CenterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_path: dir.path().join("center.redb"),
            tls_cert: Some(cert),
            tls_key: Some(key),
            tokens: vec![
                entry("reader", &["prod:read"], None),
                entry("publisher", &["prod:publish"], None),
                entry("admin", &["*:admin"], None),
                entry("sw1", &[], Some("sw1")),
                entry("other-ns", &["staging:admin"], None),
            ],
            ..Default::default()
        };
        let (c, stopper) = TestCenter::start_config(dir, config, Some(&ca)).await;
        assert!(c.base.starts_with("https://localhost:"), "{}", c.base);
        let k = "/v1/configs/prod/web/app";
        let as_ = |who: &str, r: reqwest::RequestBuilder| r.bearer_auth(token(who));
        let put = |who: &str, content: &str| {
            as_(
                who,
                c.http
                    .put(c.url(k))
                    .json(&json!({"format": "text", "content": content, "author": "mallory"})),
            )
        };

        // No token, a malformed one, an unknown one: 401, counted apart.
        let (s, v) = c.get(k).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        assert!(error(&v).contains("Bearer"), "{v}");
        let (s, v) = c.send(c.http.get(c.url(k)).bearer_auth("guess")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(error(&v).contains("malformed"), "{v}");
        let (s, v) = c.send(c.http.get(c.url(k)).bearer_auth(mint())).await;
        assert_eq!((s, error(&v)), (StatusCode::UNAUTHORIZED, "unknown token"));
        let raw = c.http.get(c.url("/v1/stats")).send().await.unwrap();
        assert!(
            raw.headers()
                .get("www-authenticate")
                .is_some_and(|h| h.to_str().unwrap().starts_with("Bearer")),
            "{:?}",
            raw.headers()
        );

        // Read may read, not publish; publish may put; history names it.
        let (s, v) = c.send(put("reader", "v1")).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert!(error(&v).contains("lacks role prod:publish"), "{v}");
        let (s, v) = c.send(put("other-ns", "v1")).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        let (s, v) = c.send(put("publisher", "v1")).await;
        assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(1)), "{v}");
        assert_eq!(v["author"], "publisher", "the client's claim is ignored");
        let (s, v) = c.send(as_("reader", c.http.get(c.url(k)))).await;
        assert_eq!((s, v["content"].as_str()), (StatusCode::OK, Some("v1")));
        let (_, h) = c
            .send(as_("reader", c.http.get(c.url(&format!("{k}/history")))))
            .await;
        assert_eq!(h[0]["author"], "publisher", "{h}");
        let (_, v) = c
            .send(as_("other-ns", c.http.get(c.url("/v1/configs"))))
            .await;
        assert_eq!(v, json!([]), "the list shows only readable namespaces");
        // Clone needs publish where it lands.
        let clone = |who: &str| {
            as_(
                who,
                c.http
                    .post(c.url(&format!("{k}/clone")))
                    .json(&json!({"namespace": "staging", "group": "web"})),
            )
        };
        let (s, _) = c.send(clone("publisher")).await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        // The device token: itself only.
        let register = |who: &str, device: &str| {
            as_(
                who,
                c.http
                    .post(c.url(&format!("/v1/devices/{device}/register")))
                    .json(&register_body(&[("web", "prod/web/app", &[])])),
            )
        };
        let (s, v) = c.send(register("sw1", "sw2")).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert!(error(&v).contains("cannot act for device \"sw2\""), "{v}");
        let (s, _) = c.send(register("admin", "sw1")).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "operators do not act as devices");
        let (s, v) = c.send(register("sw1", "sw1")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let watch = c.url("/v1/devices/sw1/watch?timeout_ms=0");
        let (s, w) = c.send(as_("sw1", c.http.get(&watch))).await;
        assert_eq!(s, StatusCode::OK, "{w}");
        let a = &w["assignments"][0];
        assert_eq!(a["version"], 1, "{w}");
        let (s, v) = c
            .send(as_("sw1", c.http.get(c.url(&format!("{k}?version=1")))))
            .await;
        assert_eq!((s, v["content"].as_str()), (StatusCode::OK, Some("v1")));
        let (s, _) = c
            .send(as_("sw1", c.http.get(c.url("/v1/configs/prod/web/other"))))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "not a config of its services");
        let (s, _) = c
            .send(as_(
                "sw1",
                c.http.get(c.url("/v1/devices/sw2/watch?timeout_ms=0")),
            ))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let ack =
            json!({"rollout_id": a["rollout_id"], "service": "web", "version": 1, "ok": true});
        let (s, _) = c
            .send(as_(
                "sw1",
                c.http.post(c.url("/v1/devices/sw2/ack")).json(&ack),
            ))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = c.send(as_("sw1", c.http.get(c.url("/v1/stats")))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "a device token reads no stats");
        let (s, v) = c
            .send(as_(
                "sw1",
                c.http.post(c.url("/v1/devices/sw1/ack")).json(&ack),
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");

        // Rollout actions need admin in the rollout's namespace.
        let (s, v) = c.send(put("publisher", "v2")).await;
        assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
        let (_, list) = c
            .send(as_("reader", c.http.get(c.url("/v1/rollouts"))))
            .await;
        let id = list[0]["id"].as_u64().unwrap();
        let abort = format!("/v1/rollouts/{id}/abort");
        for who in ["publisher", "other-ns"] {
            let (s, _) = c.send(as_(who, c.http.post(c.url(&abort)))).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{who}");
        }
        let (s, v) = c.send(as_("admin", c.http.post(c.url(&abort)))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, _) = c
            .send(as_("other-ns", c.http.delete(c.url("/v1/devices/sw1"))))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "removal needs *:admin");
        let (s, _) = c
            .send(as_("admin", c.http.delete(c.url("/v1/devices/sw1"))))
            .await;
        assert_eq!(s, StatusCode::OK);
        // Deleting needs publish; the audit (every namespace) needs *:admin
        // and names the verified identity of each action.
        let (s, _) = c.send(as_("reader", c.http.delete(c.url(k)))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "delete needs publish");
        let (s, _) = c
            .send(as_("other-ns", c.http.get(c.url("/v1/audit"))))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "the audit needs *:admin");
        let (s, audit) = c.send(as_("admin", c.http.get(c.url("/v1/audit")))).await;
        assert_eq!(s, StatusCode::OK, "{audit}");
        let by = |action: &str| {
            audit
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["action"] == action)
                .map(|e| e["identity"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(by("put"), ["publisher", "publisher"], "{audit}");
        assert_eq!(by("abort"), ["admin"], "{audit}");
        assert_eq!(by("remove-device"), ["admin"], "{audit}");

        let (s, stats) = c.send(as_("reader", c.http.get(c.url("/v1/stats")))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            stats["refused"],
            json!({"unauthenticated": 2, "bad_token": 2, "forbidden": 11, "wrong_device": 3}),
            "{stats}"
        );
        // Nothing refused was stored.
        let (_, h) = c
            .send(as_("admin", c.http.get(c.url(&format!("{k}/history")))))
            .await;
        assert_eq!(h.as_array().unwrap().len(), 2, "{h}");
        let (s, _) = c
            .send(as_(
                "admin",
                c.http.get(c.url("/v1/configs/staging/web/app")),
            ))
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        stopper.stop().await;
    }

    /// A plain client does not trust the test CA's certificate: HTTPS is
    /// really checked, not just spoken.
    #[tokio::test]
    async fn an_https_center_is_not_trusted_without_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, cert, key) = test_pki(dir.path());
        let other = tempfile::tempdir().unwrap();
        let (other_ca, _, _) = test_pki(other.path());
        let config = CenterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_path: dir.path().join("center.redb"),
            tls_cert: Some(cert),
            tls_key: Some(key),
            ..Default::default()
        };
        let (c, stopper) = TestCenter::start_config(dir, config, Some(&other_ca)).await;
        let e = c.http.get(c.url("/v1/stats")).send().await.unwrap_err();
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            chain.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        assert!(chain.contains("certificate"), "{chain}");
        let plain = c.base.replace("https://", "http://");
        let answer = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{plain}/v1/stats"))
            .send()
            .await;
        assert!(
            answer.is_err() || !answer.unwrap().status().is_success(),
            "plain HTTP is not served on an HTTPS center"
        );
        stopper.stop().await;
    }

    /// Stopping an HTTPS center answers a held long poll at once, as the
    /// plain one does.
    #[tokio::test]
    async fn an_https_center_answers_held_polls_when_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = test_pki(dir.path());
        let config = CenterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_path: dir.path().join("center.redb"),
            tls_cert: Some(cert),
            tls_key: Some(key),
            ..Default::default()
        };
        let (c, stopper) = TestCenter::start_config(dir, config, Some(&ca)).await;
        let c = Arc::new(c);
        let (s, v) = c
            .post(
                "/v1/devices/d1/register",
                register_body(&[("web", "prod/web/app", &[])]),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let poll = {
            let c = c.clone();
            tokio::spawn(async move { c.watch("d1", "", 60_000).await })
        };
        c.until_held(1).await;
        stopper.stop().await;
        let (s, v) = tokio::time::timeout(Duration::from_secs(5), poll)
            .await
            .expect("answered at the stop, not at its 60 s timeout")
            .unwrap();
        assert_eq!((s, v), (StatusCode::OK, json!({"assignments": []})));
    }
}
