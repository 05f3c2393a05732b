//! [`EtcdStorage`]: the center's state in an etcd cluster
//! (`store = "etcd"`), so it outlives any one machine.
//!
//! Keys under the configured prefix `P` (values JSON, as on redb):
//!
//! ```text
//! P current/ns/group/name                -> current version (decimal)
//! P history/ns/group/name/<version:020>  -> ConfigRecord
//! P audit/<seq:020>                      -> AuditEntry
//! P audit-last                           -> last audit sequence (decimal)
//! P rollout/devices/<device>             -> DeviceState
//! P rollout/rollouts/<id:020>            -> RolloutEntry
//! P rollout/meta                         -> EngineMeta
//! ```
//!
//! Numbers in keys are zero-padded so etcd's byte order is numeric order;
//! names never contain '/', so `history/n/g/a/` never matches `n/g/ab`.
//!
//! A transaction (read snapshot or write) reads at one revision: the first
//! read fixes it, every later read asks for it. A write transaction
//! records each key it read with the `mod_revision` it saw (0: absent) and
//! each range it scanned, buffers its writes (later reads in it see them),
//! and commits them in one etcd `Txn` whose compares require every key read
//! unchanged and no key of a scanned range modified since: if another
//! writer got there first nothing is written and the commit is refused
//! ([`CenterError::Conflict`]). A config's history is only changed
//! together with its `current/` key, which every such change reads, so a
//! deletion inside a scanned history range (which a range compare cannot
//! see) is caught by that key. The audit sequence is the guarded counter
//! `audit-last`. What the rollout engine saves is written blind: with one
//! center its engine is the only writer of those keys; with several, every
//! write transaction holds the cluster-wide write lock and first checks
//! `rollout/stamp` (below), so no engine writes from a stale view.
//!
//! etcd commits only once a quorum has the change in its log (fsynced), so
//! every commit is durable; [`CenterStorage::begin_write`]'s `durable` has
//! nothing to relax. A group commit is one `Txn`: etcd must allow as many
//! operations per transaction as a batch writes (`--max-txn-ops`, default
//! 128) and requests that large (`--max-request-bytes`, default 1.5 MiB).
//!
//! Several centers on one cluster ([`EtcdStorage::connect_shared`]):
//!
//! ```text
//! P rollout/stamp                        -> who last wrote the engine state
//! P writer-lock/...                      -> etcd lock: one group commit at a time
//! P engine-leader/...                    -> etcd election: who runs the engine
//! P seen/<member>                        -> devices a center heard from
//! ```
//!
//! Each center keeps a session: a lease (`etcd_lease_ttl_s`) kept alive
//! by a task. A write transaction first takes the cluster-wide write lock
//! with that lease and commits only while it still holds it (a compare in
//! the `Txn`), so the group commits of all centers form one order and the
//! center's in-memory engine, checked against `rollout/stamp` at the start
//! of each commit, is never stale when it decides. If a center dies
//! holding the lock, its lease expires and the lock with it. The same
//! lease campaigns in the election for the rollout engine. A watch on
//! `rollout/stamp` and `seen/` tells the center what the others changed
//! ([`ClusterEvent`]).
//!
//! How the cluster is reached (its URLs, TLS, an etcd user) is
//! [`EtcdAccess`]; both clients of a center (its requests and its session)
//! use it alike.
//!
//! The client is async (tonic); the storage traits block. The client lives
//! on a small runtime of its own, and each call blocks the caller (the
//! writer thread, a blocking thread, or the start-up) until that runtime
//! has the answer, so no async task of the center ever waits on etcd.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KvClient, LockOptions,
    PutOptions, Txn, TxnOp, WatchOptions,
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use super::etcd_access::EtcdAccess;
use super::{CenterStorage, Cluster, ClusterEvent, StorageRead, StorageTxn, Stored};
use crate::rollout::center::engine::{Changes, EngineMeta};
use crate::rollout::center::error::{CenterError, CenterResult};
use crate::rollout::center::store::AuditEntry;
use crate::rollout::wire::{ConfigKey, ConfigRecord};

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take (a commit waits for a quorum's fsync).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The center's state in etcd.
pub struct EtcdStorage {
    kv: KvClient,
    /// Runs the client; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    prefix: String,
    endpoints: String,
    /// How the cluster is reached (to explain its refusals).
    access: EtcdAccess,
    /// With several centers ([`EtcdStorage::connect_shared`]).
    session: Option<Session>,
}

/// A center's membership among the centers sharing the cluster.
struct Session {
    client: Client,
    member: String,
    /// The lease kept alive now (`None` while there is none: etcd
    /// unreachable, or being renewed).
    lease: watch::Receiver<Option<i64>>,
    leader: watch::Receiver<bool>,
    events: Mutex<Option<mpsc::UnboundedReceiver<ClusterEvent>>>,
    /// The lease's time to live.
    ttl: Duration,
}

/// How often a request that could not connect is sent (see
/// [`EtcdStorage::call`]).
const CONNECT_ATTEMPTS: u32 = 8;

/// Whether the request failed before it reached any member (a refused
/// connection), so sending it again cannot apply it twice.
fn not_sent(e: &etcd_client::Error) -> bool {
    format!("{e:?}").contains("ConnectError")
}

/// Whether an etcd error means the cluster could not be reached (503)
/// rather than a request it refused (500).
fn unreachable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        // gRPC codes CANCELLED (1), DEADLINE_EXCEEDED (4), UNAVAILABLE (14).
        E::GRpcStatus(status) => matches!(status.code() as i32, 1 | 4 | 14),
        _ => false,
    }
}

/// A center that could not start on its cluster: unreachable (503 kind,
/// named as such) or refused (credentials, permissions, TLS), with why.
fn connect_failed(access: &EtcdAccess, what: &str, e: &etcd_client::Error) -> CenterError {
    let why = format!("etcd {}: {what}: {}", access.named(), access.explain(e));
    if unreachable(e) {
        CenterError::Unavailable(format!("{why} (no etcd member answers)"))
    } else {
        CenterError::Internal(why)
    }
}

/// The exclusive end of the range of keys starting with `prefix` (which
/// ends with '/': the next byte is '0').
fn prefix_end(prefix: &str) -> String {
    debug_assert!(prefix.ends_with('/'));
    format!("{}0", &prefix[..prefix.len() - 1])
}

/// A value and the `mod_revision` it was read at.
type Versioned = (String, i64);

fn decode<T: DeserializeOwned>(what: &str, json: &str) -> CenterResult<T> {
    serde_json::from_str(json)
        .map_err(|e| CenterError::Internal(format!("etcd store: corrupt {what}: {e}")))
}

fn decode_number(what: &str, text: &str) -> CenterResult<u64> {
    text.parse()
        .map_err(|e| CenterError::Internal(format!("etcd store: corrupt {what} {text:?}: {e}")))
}

impl EtcdStorage {
    /// Connects to the cluster at `endpoints` (client URLs), keeping every
    /// key under `prefix` (ends with '/'), and reads once so that an
    /// unreachable cluster fails here, named.
    pub fn connect(access: &EtcdAccess, prefix: &str) -> CenterResult<EtcdStorage> {
        let named = access.named();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("center-etcd")
            .enable_all()
            .build()
            .map_err(|e| CenterError::internal("etcd store: starting its runtime", e))?;
        let options = access.options(
            ConnectOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT),
        );
        let urls = access.endpoints().to_vec();
        let connected = block_on(&runtime, async move {
            Client::connect(urls, Some(options)).await
        });
        let client = match connected {
            Ok(Ok(client)) => client,
            failed => {
                // Connecting authenticates (a refused user fails here);
                // the runtime may not be dropped where this is called
                // from an async context (the center's start).
                runtime.shutdown_background();
                return Err(match failed {
                    Ok(Err(e)) => connect_failed(access, "connecting", &e),
                    Err(e) => e,
                    Ok(Ok(_)) => unreachable!("matched above"),
                });
            }
        };
        let storage = EtcdStorage {
            kv: client.kv_client(),
            runtime: Some(runtime),
            prefix: prefix.to_string(),
            endpoints: named,
            access: access.clone(),
            session: None,
        };
        // The first read tells apart an unreachable cluster, a refused
        // user and a failed TLS handshake, each named.
        let kv = storage.kv.clone();
        let first = storage.key("audit-last");
        storage
            .call_raw(move || {
                let (mut kv, first) = (kv.clone(), first.clone());
                async move { kv.get(first, None).await }
            })?
            .map_err(|e| connect_failed(access, "first read", &e))?;
        Ok(storage)
    }

    /// [`EtcdStorage::connect`] for a center that shares the cluster with
    /// others: it keeps a session lease of `ttl_s` seconds, takes the
    /// cluster-wide write lock for each write transaction, campaigns for
    /// the rollout engine and watches what the others change (see the
    /// module doc). Waits (up to the lease's TTL) for its first lease.
    pub fn connect_shared(
        access: &EtcdAccess,
        prefix: &str,
        ttl_s: u64,
    ) -> CenterResult<EtcdStorage> {
        let mut storage = EtcdStorage::connect(access, prefix)?;
        let runtime = storage
            .runtime
            .as_ref()
            .ok_or_else(|| CenterError::Internal("etcd store: closed".into()))?;
        let options = access.options(
            ConnectOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT)
                .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2)),
        );
        let urls = access.endpoints().to_vec();
        let client = block_on(runtime, async move {
            Client::connect(urls, Some(options)).await
        })?
        .map_err(|e| connect_failed(access, "connecting", &e))?;
        let member = format!(
            "{}-{}-{:x}",
            hostname(),
            std::process::id(),
            crate::clock::now_ms() & 0xffff_ffff
        );
        let (lease_tx, lease) = watch::channel(None);
        let (leader_tx, leader) = watch::channel(false);
        let (events_tx, events) = mpsc::unbounded_channel();
        runtime.spawn(keep_session(
            client.clone(),
            ttl_s.max(2),
            storage.key("engine-leader"),
            member.clone(),
            lease_tx,
            leader_tx,
        ));
        runtime.spawn(watch_changes(
            client.clone(),
            storage.prefix.clone(),
            member.clone(),
            events_tx,
        ));
        storage.session = Some(Session {
            client,
            member,
            lease,
            leader,
            events: Mutex::new(Some(events)),
            ttl: Duration::from_secs(ttl_s.max(2)),
        });
        storage.lease()?;
        Ok(storage)
    }

    /// The session's lease now, waiting up to the lease's TTL for one (a
    /// session being renewed; longer means etcd is out of reach).
    fn lease(&self) -> CenterResult<i64> {
        let Some(session) = &self.session else {
            return Err(CenterError::Internal("etcd store: no session".into()));
        };
        let mut lease = session.lease.clone();
        let ttl = session.ttl;
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| CenterError::Internal("etcd store: closed".into()))?;
        let waited = block_on(runtime, async move {
            tokio::time::timeout(ttl, lease.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(|r| r.ok().and_then(|id| *id))
        })?;
        waited.ok_or_else(|| {
            CenterError::Unavailable(format!(
                "etcd {}: no session lease (is a quorum of the cluster up?)",
                self.endpoints
            ))
        })
    }

    /// Takes the cluster-wide write lock with the session's lease; returns
    /// the lock's key (held until unlocked or the lease ends).
    fn lock(&self) -> CenterResult<Vec<u8>> {
        let lease = self.lease()?;
        let Some(session) = &self.session else {
            return Err(CenterError::Internal("etcd store: no session".into()));
        };
        let locks = session.client.lock_client();
        let name = self.key("writer-lock");
        let locked = self.call("taking the write lock", move || {
            let (mut locks, name) = (locks.clone(), name.clone());
            async move {
                locks
                    .lock(name, Some(LockOptions::new().with_lease(lease)))
                    .await
            }
        })?;
        Ok(locked.key().to_vec())
    }

    fn unlock(&self, key: Vec<u8>) {
        let Some(session) = &self.session else {
            return;
        };
        let locks = session.client.lock_client();
        if let Err(e) = self.call("releasing the write lock", move || {
            let (mut locks, key) = (locks.clone(), key.clone());
            async move { locks.unlock(key).await }
        }) {
            // It ends with the lease at the latest.
            tracing::warn!("config center: {e}");
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn current_key(&self, key: &ConfigKey) -> String {
        self.key(&format!("current/{key}"))
    }

    fn history_prefix(&self, key: &ConfigKey) -> String {
        self.key(&format!("history/{key}/"))
    }

    fn history_key(&self, key: &ConfigKey, version: u64) -> String {
        format!("{}{version:020}", self.history_prefix(key))
    }

    fn audit_key(&self, seq: u64) -> String {
        self.key(&format!("audit/{seq:020}"))
    }

    /// Runs the request `make` builds on the client's runtime and waits for
    /// it. A request that could not even connect (the member the client
    /// picked is down; it keeps picking it for a while) never left, so it
    /// is sent again, a few times, to reach a member that is up.
    fn call<T: Send + 'static, F>(
        &self,
        what: &str,
        make: impl Fn() -> F + Send + 'static,
    ) -> CenterResult<T>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        self.call_raw(make)?.map_err(|e| {
            let why = format!(
                "etcd {}: {what}: {}",
                self.endpoints,
                self.access.explain(&e)
            );
            if unreachable(&e) {
                CenterError::Unavailable(format!("{why} (no etcd member answers)"))
            } else {
                CenterError::Internal(why)
            }
        })
    }

    /// [`EtcdStorage::call`] with etcd's error as it is.
    fn call_raw<T: Send + 'static, F>(
        &self,
        make: impl Fn() -> F + Send + 'static,
    ) -> CenterResult<Result<T, etcd_client::Error>>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| CenterError::Internal("etcd store: closed".into()))?;
        let call = async move {
            let mut attempt = 0;
            loop {
                match make().await {
                    Err(e) if attempt < CONNECT_ATTEMPTS && not_sent(&e) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                    }
                    done => return done,
                }
            }
        };
        block_on(runtime, call)
    }

    /// `key`'s value and mod_revision at `revision` (0: the newest), and
    /// the revision read.
    fn get(&self, key: &str, revision: i64) -> CenterResult<(Option<Versioned>, i64)> {
        let kv = self.kv.clone();
        let (k, options) = (key.to_string(), GetOptions::new().with_revision(revision));
        let answer = self.call("read", move || {
            let (mut kv, k, options) = (kv.clone(), k.clone(), options.clone());
            async move { kv.get(k, Some(options)).await }
        })?;
        let read_at = answer.header().map_or(0, |h| h.revision());
        let found = match answer.kvs().first() {
            Some(kv) => Some((
                kv.value_str()
                    .map_err(|e| CenterError::internal(&format!("etcd store: {key}"), e))?
                    .to_string(),
                kv.mod_revision(),
            )),
            None => None,
        };
        Ok((found, if revision == 0 { read_at } else { revision }))
    }

    /// Keys and values in `[start, end)` at `revision` (0: the newest), in
    /// key order, at most `limit` (0: all), and the revision read.
    fn range(
        &self,
        start: &str,
        end: &str,
        revision: i64,
        limit: usize,
    ) -> CenterResult<(Vec<(String, String)>, i64)> {
        let kv = self.kv.clone();
        let options = GetOptions::new()
            .with_range(end)
            .with_revision(revision)
            .with_limit(limit as i64);
        let k = start.to_string();
        let answer = self.call("scan", move || {
            let (mut kv, k, options) = (kv.clone(), k.clone(), options.clone());
            async move { kv.get(k, Some(options)).await }
        })?;
        let read_at = answer.header().map_or(0, |h| h.revision());
        let rows = answer
            .kvs()
            .iter()
            .map(|kv| match (kv.key_str(), kv.value_str()) {
                (Ok(k), Ok(v)) => Ok((k.to_string(), v.to_string())),
                _ => Err(CenterError::Internal(format!(
                    "etcd store: a key or value under {start} is not UTF-8"
                ))),
            })
            .collect::<CenterResult<_>>()?;
        Ok((rows, if revision == 0 { read_at } else { revision }))
    }
}

/// Runs `work` on `runtime` and blocks this thread until it is done (from
/// any thread but the runtime's own).
fn block_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl Future<Output = T> + Send + 'static,
) -> CenterResult<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv()
        .map_err(|_| CenterError::Internal("etcd store: its runtime stopped".into()))
}

impl Drop for EtcdStorage {
    fn drop(&mut self) {
        // A center that stops hands the engine and the lock over at once
        // rather than after the lease's TTL (best effort, briefly).
        if let (Some(session), Some(runtime)) = (&self.session, &self.runtime)
            && let Some(lease) = *session.lease.borrow()
        {
            let mut leases = session.client.lease_client();
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            runtime.spawn(async move {
                let revoked =
                    tokio::time::timeout(Duration::from_secs(1), leases.revoke(lease)).await;
                let _ = tx.send(revoked);
            });
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
        // Dropping a runtime blocks, which panics inside an async context
        // (a center dropped by a task): let it stop in the background.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "center".into())
}

/// The etcd lease a center takes for a take-over bound of `ttl_s`
/// (`etcd_lease_ttl_s`): one second shorter. etcd lets a lease expire one
/// granted TTL after its last keep-alive and revokes expired leases on a
/// 0.5 s tick, so a dead center's lease goes up to half a second after
/// its TTL; with a second less granted, another center takes the engine
/// over within the configured time (the bench measures it).
pub(crate) fn granted_lease_s(ttl_s: u64) -> u64 {
    ttl_s.saturating_sub(1).max(2)
}

/// Keeps the session: a lease kept alive, and a campaign for the engine
/// with it. The lease is published while it is believed alive; leadership
/// is given up once no keep-alive has been answered for two thirds of the
/// TTL (before the cluster can let it expire and elect another), and the
/// session starts again with a new lease.
async fn keep_session(
    client: Client,
    ttl_s: u64,
    election: String,
    member: String,
    lease_tx: watch::Sender<Option<i64>>,
    leader_tx: watch::Sender<bool>,
) {
    let granted_s = granted_lease_s(ttl_s);
    let ttl = Duration::from_secs(granted_s);
    let every = (ttl / 3).min(Duration::from_millis(500));
    loop {
        if lease_tx.is_closed() {
            return;
        }
        let mut leases = client.lease_client();
        let granted = match leases.grant(granted_s as i64, None).await {
            Ok(granted) => granted.id(),
            Err(e) => {
                tracing::warn!("config center: etcd session lease: {e}");
                tokio::time::sleep(every).await;
                continue;
            }
        };
        let (mut keeper, mut answers) = match leases.keep_alive(granted).await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!("config center: etcd session keep-alive: {e}");
                tokio::time::sleep(every).await;
                continue;
            }
        };
        lease_tx.send_replace(Some(granted));
        let mut elections = client.election_client();
        let (name, value) = (election.clone(), member.clone());
        let campaign = elections.campaign(name, value, granted);
        tokio::pin!(campaign);
        let mut campaigning = true;
        let mut answered = Instant::now();
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                won = &mut campaign, if campaigning => {
                    campaigning = false;
                    match won {
                        Ok(_) => {
                            tracing::info!("config center: {member} runs the rollout engine (etcd election)");
                            leader_tx.send_replace(true);
                        }
                        Err(e) => {
                            tracing::warn!("config center: etcd election: {e}");
                            break;
                        }
                    }
                }
                _ = tick.tick() => {
                    if answered.elapsed() > ttl * 2 / 3 || keeper.keep_alive().await.is_err() {
                        tracing::warn!("config center: etcd session lease not renewed; giving up the engine");
                        break;
                    }
                }
                answer = answers.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => answered = Instant::now(),
                    _ => {
                        tracing::warn!("config center: etcd session lease lost");
                        break;
                    }
                },
            }
        }
        if leader_tx.send_replace(false) {
            tracing::warn!("config center: {member} no longer runs the rollout engine");
        }
        lease_tx.send_replace(None);
        tokio::time::sleep(every).await;
    }
}

/// Watches `rollout/stamp` and `seen/` under `prefix` and reports what
/// other centers change; re-established (with a `Changed(None)`, as
/// something may have been missed) whenever it breaks.
async fn watch_changes(
    client: Client,
    prefix: String,
    member: String,
    events: mpsc::UnboundedSender<ClusterEvent>,
) {
    let stamp = format!("{prefix}rollout/stamp");
    let seen = format!("{prefix}seen/");
    let own = format!("{seen}{member}");
    loop {
        if events.is_closed() {
            return;
        }
        let mut watches = client.watch_client();
        let mut stream = match watches.watch(stamp.clone(), None).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!("config center: etcd watch: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Err(e) = stream
            .watch(seen.clone(), Some(WatchOptions::new().with_prefix()))
            .await
        {
            tracing::debug!("config center: etcd watch: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        if events.send(ClusterEvent::Changed(None)).is_err() {
            return;
        }
        loop {
            let answer = match stream.message().await {
                Ok(Some(answer)) => answer,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("config center: etcd watch broke: {e}");
                    break;
                }
            };
            if answer.canceled() {
                break;
            }
            for event in answer.events() {
                let Some(kv) = event.kv() else { continue };
                let (Ok(key), Ok(value)) = (kv.key_str(), kv.value_str()) else {
                    continue;
                };
                let sent = if key == stamp {
                    events.send(ClusterEvent::Changed(
                        (event.event_type() == EventType::Put).then(|| value.to_string()),
                    ))
                } else if key != own && event.event_type() == EventType::Put {
                    match serde_json::from_str::<Vec<(String, u64)>>(value) {
                        Ok(devices) => events.send(ClusterEvent::Seen(devices)),
                        Err(_) => Ok(()),
                    }
                } else {
                    Ok(())
                };
                if sent.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Cluster for EtcdStorage {
    fn member(&self) -> &str {
        self.session.as_ref().map_or("", |s| s.member.as_str())
    }

    fn leader(&self) -> watch::Receiver<bool> {
        match &self.session {
            Some(session) => session.leader.clone(),
            None => watch::channel(false).1,
        }
    }

    fn connected(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.lease.borrow().is_some())
    }

    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<ClusterEvent>> {
        self.session
            .as_ref()?
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn publish_seen(&self, seen: Vec<(String, u64)>) {
        let (Some(session), Some(runtime)) = (&self.session, &self.runtime) else {
            return;
        };
        let Some(lease) = *session.lease.borrow() else {
            return;
        };
        let key = self.key(&format!("seen/{}", session.member));
        let value = serde_json::to_string(&seen).expect("names and numbers serialize");
        let mut kv = self.kv.clone();
        // Not waited for: a lost one is made up by the next.
        runtime.spawn(async move {
            let put = kv
                .put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await;
            if let Err(e) = put {
                tracing::debug!("config center: publishing devices seen: {e}");
            }
        });
    }
}

impl CenterStorage for EtcdStorage {
    fn describe(&self) -> String {
        format!("etcd {} prefix {}", self.endpoints, self.prefix)
    }

    fn begin_read(&self) -> CenterResult<Box<dyn StorageRead + '_>> {
        Ok(Box::new(EtcdTxn::new(self)))
    }

    fn begin_write(&self, _durable: bool) -> CenterResult<Box<dyn StorageTxn + '_>> {
        let mut txn = EtcdTxn::new(self);
        if self.session.is_some() {
            txn.lock = Some(self.lock()?);
        }
        Ok(Box::new(txn))
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        self.session.as_ref().map(|_| self as &dyn Cluster)
    }
}

/// A read snapshot or a write transaction (one type: a snapshot is a
/// transaction that never commits).
struct EtcdTxn<'a> {
    storage: &'a EtcdStorage,
    /// The revision every read asks for; 0 until the first read fixes it.
    revision: i64,
    /// Keys read from etcd, with the mod_revision seen (0: absent).
    reads: BTreeMap<String, i64>,
    /// Ranges scanned, start -> end.
    scanned: BTreeMap<String, String>,
    /// Buffered writes: `None` deletes.
    writes: BTreeMap<String, Option<String>>,
    /// The cluster-wide write lock's key, while held (several centers).
    lock: Option<Vec<u8>>,
}

impl Drop for EtcdTxn<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.lock.take() {
            self.storage.unlock(key);
        }
    }
}

impl<'a> EtcdTxn<'a> {
    fn new(storage: &'a EtcdStorage) -> Self {
        EtcdTxn {
            storage,
            revision: 0,
            reads: BTreeMap::new(),
            scanned: BTreeMap::new(),
            writes: BTreeMap::new(),
            lock: None,
        }
    }

    /// `key`'s value as this transaction sees it.
    fn get(&mut self, key: &str) -> CenterResult<Option<String>> {
        if let Some(written) = self.writes.get(key) {
            return Ok(written.clone());
        }
        let (found, revision) = self.storage.get(key, self.revision)?;
        self.revision = revision;
        self.reads
            .insert(key.to_string(), found.as_ref().map_or(0, |(_, rev)| *rev));
        Ok(found.map(|(value, _)| value))
    }

    /// Keys (and values) starting with `prefix` as this transaction sees
    /// them, in key order, at most `limit` (0: all). With a limit, the
    /// buffered writes may only add keys after those stored (true of the
    /// audit log, the one limited scan), else the result may be short.
    fn scan(&mut self, prefix: &str, limit: usize) -> CenterResult<Vec<(String, String)>> {
        self.scan_range(prefix, &prefix_end(prefix), limit)
    }

    fn scan_range(
        &mut self,
        start: &str,
        end: &str,
        limit: usize,
    ) -> CenterResult<Vec<(String, String)>> {
        let (rows, revision) = self.storage.range(start, end, self.revision, limit)?;
        self.revision = revision;
        self.scanned.insert(start.to_string(), end.to_string());
        let mut seen: BTreeMap<String, String> = rows.into_iter().collect();
        for (key, value) in self.writes.range(start.to_string()..end.to_string()) {
            match value {
                Some(value) => seen.insert(key.clone(), value.clone()),
                None => seen.remove(key),
            };
        }
        let mut out: Vec<_> = seen.into_iter().collect();
        if limit > 0 {
            out.truncate(limit);
        }
        Ok(out)
    }

    fn put(&mut self, key: String, value: String) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: String) {
        self.writes.insert(key, None);
    }
}

impl StorageRead for EtcdTxn<'_> {
    fn current_version(&mut self, key: &ConfigKey) -> CenterResult<Option<u64>> {
        let name = self.storage.current_key(key);
        self.get(&name)?
            .map(|v| decode_number(&name, &v))
            .transpose()
    }

    fn version(&mut self, key: &ConfigKey, version: u64) -> CenterResult<Option<ConfigRecord>> {
        let name = self.storage.history_key(key, version);
        self.get(&name)?.map(|v| decode(&name, &v)).transpose()
    }

    fn versions(&mut self, key: &ConfigKey) -> CenterResult<Vec<ConfigRecord>> {
        // The guard of the history (see the module doc).
        self.get(&self.storage.current_key(key))?;
        let prefix = self.storage.history_prefix(key);
        self.scan(&prefix, 0)?
            .iter()
            .map(|(name, json)| decode(name, json))
            .collect()
    }

    fn namespace_in_use(&mut self, namespace: &str) -> CenterResult<bool> {
        let prefix = self.storage.key(&format!("current/{namespace}/"));
        Ok(!self.scan(&prefix, 0)?.is_empty())
    }

    fn current_records(&mut self, namespace: Option<&str>) -> CenterResult<Vec<ConfigRecord>> {
        let root = self.storage.key("current/");
        let prefix = match namespace {
            Some(ns) => format!("{root}{ns}/"),
            None => root.clone(),
        };
        let mut out = Vec::new();
        for (name, version) in self.scan(&prefix, 0)? {
            let key: ConfigKey = name[root.len()..].parse().map_err(|e| {
                CenterError::Internal(format!("etcd store: corrupt key {name}: {e}"))
            })?;
            let version = decode_number(&name, &version)?;
            let record = self.version(&key, version)?.ok_or_else(|| {
                CenterError::Internal(format!(
                    "etcd store: {key} version {version} is current but has no history row"
                ))
            })?;
            out.push(record);
        }
        Ok(out)
    }

    fn audit(&mut self, after: u64, limit: usize) -> CenterResult<Vec<AuditEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = self.storage.audit_key(after.saturating_add(1));
        let end = prefix_end(&self.storage.key("audit/"));
        self.scan_range(&start, &end, limit)?
            .iter()
            .map(|(name, json)| decode(name, json))
            .collect()
    }

    fn rollout_state(&mut self) -> CenterResult<Stored> {
        let devices_prefix = self.storage.key("rollout/devices/");
        let mut devices = Vec::new();
        for (name, json) in self.scan(&devices_prefix, 0)? {
            let device = name[devices_prefix.len()..].to_string();
            devices.push((device, decode(&name, &json)?));
        }
        let mut rollouts = Vec::new();
        for (name, json) in self.scan(&self.storage.key("rollout/rollouts/"), 0)? {
            rollouts.push(decode(&name, &json)?);
        }
        let meta_key = self.storage.key("rollout/meta");
        let meta = match self.get(&meta_key)? {
            Some(json) => decode(&meta_key, &json)?,
            None => EngineMeta::default(),
        };
        Ok((devices, rollouts, meta))
    }

    fn engine_stamp(&mut self) -> CenterResult<Option<String>> {
        let key = self.storage.key("rollout/stamp");
        self.get(&key)
    }
}

impl StorageTxn for EtcdTxn<'_> {
    fn write_version(&mut self, record: &ConfigRecord) -> CenterResult<()> {
        let json = serde_json::to_string(record).expect("a ConfigRecord always serializes");
        self.put(self.storage.history_key(&record.key, record.version), json);
        self.put(
            self.storage.current_key(&record.key),
            record.version.to_string(),
        );
        Ok(())
    }

    fn remove_versions_before(&mut self, key: &ConfigKey, oldest_kept: u64) -> CenterResult<()> {
        self.get(&self.storage.current_key(key))?;
        let start = self.storage.history_prefix(key);
        let end = self.storage.history_key(key, oldest_kept);
        for (name, _) in self.scan_range(&start, &end, 0)? {
            self.delete(name);
        }
        Ok(())
    }

    fn remove_config(&mut self, key: &ConfigKey) -> CenterResult<()> {
        let current = self.storage.current_key(key);
        self.get(&current)?;
        for (name, _) in self.scan(&self.storage.history_prefix(key), 0)? {
            self.delete(name);
        }
        self.delete(current);
        Ok(())
    }

    fn append_audit(&mut self, mut entry: AuditEntry) -> CenterResult<u64> {
        let last_key = self.storage.key("audit-last");
        let last = match self.get(&last_key)? {
            Some(text) => decode_number(&last_key, &text)?,
            None => 0,
        };
        entry.seq = last + 1;
        let json = serde_json::to_string(&entry).expect("an AuditEntry always serializes");
        self.put(self.storage.audit_key(entry.seq), json);
        self.put(last_key, entry.seq.to_string());
        Ok(entry.seq)
    }

    fn save_rollout(&mut self, changes: &Changes) -> CenterResult<()> {
        for (name, state) in &changes.devices {
            let key = self.storage.key(&format!("rollout/devices/{name}"));
            match state {
                Some(json) => self.put(key, json.clone()),
                None => self.delete(key),
            }
        }
        for (id, entry) in &changes.rollouts {
            let key = self.storage.key(&format!("rollout/rollouts/{id:020}"));
            match entry {
                Some(json) => self.put(key, json.clone()),
                None => self.delete(key),
            }
        }
        if let Some(meta) = &changes.meta {
            self.put(self.storage.key("rollout/meta"), meta.clone());
        }
        Ok(())
    }

    fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    fn set_engine_stamp(&mut self, stamp: &str) -> CenterResult<()> {
        self.put(self.storage.key("rollout/stamp"), stamp.to_string());
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> CenterResult<()> {
        let storage = self.storage;
        let revision = self.revision;
        let reads = std::mem::take(&mut self.reads);
        let scanned = std::mem::take(&mut self.scanned);
        let writes = std::mem::take(&mut self.writes);
        if writes.is_empty() {
            return Ok(());
        }
        let mut compares: Vec<Compare> = reads
            .into_iter()
            .map(|(key, seen)| Compare::mod_revision(key, CompareOp::Equal, seen))
            .collect();
        // Only while this center still holds the write lock (its lease
        // may have ended while it was cut off).
        if let Some(lock) = &self.lock {
            compares.push(Compare::create_revision(
                lock.clone(),
                CompareOp::Greater,
                0,
            ));
        }
        compares.extend(scanned.into_iter().map(|(start, end)| {
            Compare::mod_revision(start, CompareOp::Less, revision + 1).with_range(end)
        }));
        let (count, bytes) = (
            writes.len(),
            writes
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len))
                .sum::<usize>(),
        );
        let ops: Vec<TxnOp> = writes
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => TxnOp::put(key, value, None),
                None => TxnOp::delete(key, None),
            })
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let kv = storage.kv.clone();
        let answer = storage
            .call(
                &format!(
                    "commit ({count} writes, {bytes} bytes; etcd must allow that many in one transaction: --max-txn-ops, --max-request-bytes)"
                ),
                move || {
                    let (mut kv, txn) = (kv.clone(), txn.clone());
                    async move { kv.txn(txn).await }
                },
            )?;
        if answer.succeeded() {
            Ok(())
        } else {
            Err(CenterError::Conflict(format!(
                "etcd {}: the store changed under this change (another writer committed first); nothing was written, try again",
                storage.endpoints
            )))
        }
    }

    fn abort(self: Box<Self>) {}
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::rollout::center::storage::conformance::conformance_tests;

    /// A single-member etcd from the Debian package `etcd-server`, in a
    /// temp dir on free loopback ports; killed on drop.
    pub(crate) struct Etcd {
        child: Child,
        pub(crate) url: String,
        dir: tempfile::TempDir,
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl Etcd {
        pub(crate) fn start() -> Etcd {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("http://127.0.0.1:{}", free_port());
            let peer = format!("http://127.0.0.1:{}", free_port());
            let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
            let child = Command::new("etcd")
                .arg("--name=test")
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=test={peer}"))
                // A group commit of many changes is one transaction.
                .arg("--max-txn-ops=100000")
                .arg("--max-request-bytes=33554432")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("starting etcd (Debian package etcd-server; `cargo xtask setup` installs it): {e}")
                });
            let mut etcd = Etcd { child, url, dir };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(storage) = EtcdStorage::connect(
                    &EtcdAccess::plain(std::slice::from_ref(&etcd.url)),
                    "/probe/",
                ) {
                    drop(storage);
                    return etcd;
                }
                if let Ok(Some(status)) = etcd.child.try_wait() {
                    panic!("etcd exited ({status}): {}", etcd.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd at {} not ready in 30 s: {}",
                    etcd.url,
                    etcd.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn fresh() -> (Etcd, Arc<dyn CenterStorage>) {
        let etcd = Etcd::start();
        let storage = EtcdStorage::connect(
            &EtcdAccess::plain(std::slice::from_ref(&etcd.url)),
            "/test/center/",
        )
        .unwrap();
        (etcd, Arc::new(storage))
    }

    conformance_tests!(fresh());

    /// The optimistic guard: a transaction whose reads another writer
    /// changed before its commit writes nothing and says so.
    #[test]
    fn a_transaction_whose_reads_changed_meanwhile_commits_nothing() {
        let (_etcd, storage) = fresh();
        let key: ConfigKey = "n/g/k".parse().unwrap();
        let record = |version: u64, content: &str| ConfigRecord {
            key: key.clone(),
            format: crate::rollout::wire::Format::Text,
            content: content.into(),
            description: String::new(),
            version,
            md5: crate::rollout::wire::md5_hex(content),
            updated_ms: 1,
            author: "a".into(),
        };
        let mut slow = storage.begin_write(true).unwrap();
        assert_eq!(slow.current_version(&key).unwrap(), None);
        let mut fast = storage.begin_write(true).unwrap();
        assert_eq!(fast.current_version(&key).unwrap(), None);
        fast.write_version(&record(1, "fast")).unwrap();
        fast.commit().unwrap();
        slow.write_version(&record(1, "slow")).unwrap();
        slow.append_audit(AuditEntry {
            seq: 0,
            time_ms: 1,
            identity: "slow".into(),
            action: "put".into(),
            key: key.to_string(),
            version: 1,
            md5: String::new(),
            rollout: None,
            device: None,
            removed: Vec::new(),
        })
        .unwrap();
        let e = slow.commit().unwrap_err();
        assert!(
            matches!(&e, CenterError::Conflict(m) if m.contains("another writer committed first")),
            "{e}"
        );
        let mut reads = storage.begin_read().unwrap();
        assert_eq!(reads.version(&key, 1).unwrap().unwrap().content, "fast");
        assert!(reads.audit(0, 10).unwrap().is_empty(), "nothing of slow");
    }

    /// The whole center on etcd: configs, devices and a rollout paused for
    /// approval are where they were after the center is reopened.
    #[tokio::test]
    async fn a_center_on_etcd_keeps_configs_devices_and_rollouts_across_a_reopen() {
        use crate::rollout::center::{Center, CenterConfig, RolloutOptions, StoreKind};
        use crate::rollout::wire::{
            Ack, Format, PutConfig, Register, RolloutState, ServiceRegistration,
        };
        let etcd = Etcd::start();
        let config = CenterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            db_path: etcd.dir.path().join("unused.redb"),
            store: StoreKind::Etcd,
            etcd_endpoints: vec![etcd.url.clone()],
            etcd_prefix: Some("/centers/a/".into()),
            ..Default::default()
        };
        let key: ConfigKey = "n/g/k".parse().unwrap();
        let center = Center::open(&config).unwrap();
        assert!(center.store_description().starts_with("etcd "));
        for d in ["d1", "d2"] {
            let services = vec![ServiceRegistration {
                name: "s".into(),
                config: key.clone(),
                depends_on: vec![],
            }];
            let registration = Register {
                services,
                ..Default::default()
            };
            center.register(d.into(), registration).await.unwrap();
        }
        let put = |content: &str| PutConfig {
            format: Format::Text,
            content: content.into(),
            description: String::new(),
            author: "alice".into(),
        };
        center
            .put(key.clone(), put("one"), RolloutOptions::default())
            .await
            .unwrap();
        let approve = RolloutOptions {
            batch_size: Some(1),
            approve_each_batch: true,
            ..Default::default()
        };
        let record = center.put(key.clone(), put("two"), approve).await.unwrap();
        assert_eq!(record.version, 2);
        let id = center.rollouts().await.unwrap()[0].id;
        let first = center.rollout(id).await.unwrap().batches[0][0]
            .device
            .clone();
        let ack = Ack {
            rollout_id: id,
            service: "s".into(),
            version: 2,
            ok: true,
            reason: String::new(),
        };
        center.ack(&first, &ack).await.unwrap();
        let paused = center.rollout(id).await.unwrap();
        assert_eq!(paused.state, RolloutState::Paused, "{paused:?}");
        let before = (
            center.rollouts().await.unwrap(),
            center.history(key.clone()).await.unwrap(),
            center.audit(0, 100).await.unwrap(),
        );
        assert!(!center.store_description().contains("redb"));
        drop(center);
        assert!(!config.db_path.exists(), "nothing went to redb");

        let center = Center::open(&config).unwrap();
        let after = (
            center.rollouts().await.unwrap(),
            center.history(key.clone()).await.unwrap(),
            center.audit(0, 100).await.unwrap(),
        );
        assert_eq!(after, before);
        assert_eq!(after.2.len(), 2, "two puts audited");
        assert_eq!(center.devices().await.unwrap().len(), 2);
        // The other device is not given version 2 while the rollout waits
        // for approval, after the reopen as before it.
        let other = if first == "d1" { "d2" } else { "d1" };
        let have = HashMap::from([("s".to_string(), crate::rollout::wire::md5_hex("one"))]);
        let got = center
            .watch(other, &have, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(got.is_empty(), "{got:?}");
        center.resume(id, "bob".into()).await.unwrap();
        let got = center
            .watch(other, &have, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "released after the approval");
        assert_eq!(got[0].version, 2);
    }
}
