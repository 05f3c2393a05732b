//! The fabric task: the one owner of the MQTT link, the roster (on
//! servers), this switch's view of the fabric, the fabric config and the
//! recent faults. Its loop turns every input into an [`Event`] and hands it
//! to the handlers in `events.rs`.
//!
//! ```text
//!  link::spawn (rumqttc loop, failover) ---- mqtt: mpsc<MqttEvent> -------+
//!  supervisor (netlink watcher) ------------ links: broadcast<LinkEvent> -+
//!  FabricHandle (show / set) --------------- queries: mpsc<Query> --------+--> Task::run
//!  address follower (netlink ifaddr groups) - addresses: mpsc<Vec<IpAddr>> +
//!  heartbeat timer (interval from config) -- tick ------------------------+      |
//!                                                                                +--> client.try_publish (broker)
//!                                                                                +--> infos: mpsc<Info> (inference)
//! ```
//!
//! Handlers never wait: publishes go through `try_publish`, information for
//! inference through `try_send`; both count what they drop.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rumqttc::{AsyncClient, QoS};
use tokio::sync::{
    broadcast::{self, error::RecvError},
    mpsc, watch,
};

use super::{
    config::FabricConfig,
    events::{Event, Query},
    hlc::Hlc,
    link::{Endpoint, LinkEvent as MqttEvent},
    report::FaultReport,
    seal::Codec,
    state::{CappedMap, ConfigStore, FaultLedger, Outbox, RateLimiter, Roster},
    wire::{Heartbeat, Membership, Message, Role, ServerStatus, Topics},
};
use crate::{bus, clock::now_ms, log_limit::LogLimiter};

/// Config releases kept for a slow local device side; one further behind
/// is told it lagged and asks its center anyway.
const RELEASES_DEPTH: usize = 64;

/// Other members' alarms kept for a slow local inference; one further
/// behind is told it lagged.
const ALARMS_DEPTH: usize = 1024;

/// How many remote ports the fault de-duplication remembers.
pub(super) const FAULT_PORTS: usize = 65_536;

/// How many faults and announcements `show fabric` keeps.
pub(super) const RECENT: usize = 100;

/// A member as this switch knows it, from its heartbeats or a topology.
pub(super) struct ViewEntry {
    /// Its last heartbeat (or its entry in a topology snapshot).
    pub(super) heartbeat: Heartbeat,
    /// When its last heartbeat was heard here (None: only from a topology).
    pub(super) heard: Option<Instant>,
    /// Announced or declared as departed.
    pub(super) departed: bool,
    /// The last news of it: a heartbeat, a topology listing it, its
    /// departure. Pruning counts from here.
    pub(super) since: Instant,
}

/// How many servers' statuses are kept (two are configured; the rest is
/// room for a brief overlap of identities, not for invented names).
pub(super) const MAX_SERVERS: usize = 8;

/// A `fabric set` waiting for its answer.
pub(super) struct PendingSet {
    pub(super) change: super::wire::ConfigChange,
    /// Members expected to acknowledge.
    pub(super) waiting: std::collections::BTreeSet<String>,
    /// Acknowledgements so far.
    pub(super) acks: BTreeMap<String, String>,
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<super::report::SetReport, String>>,
}

/// What bring-up hands the task: everything decided or opened at start.
pub(super) struct Setup {
    pub(super) config: FabricConfig,
    pub(super) identity: String,
    pub(super) role: Role,
    pub(super) role_reason: String,
    pub(super) rank: Option<usize>,
    pub(super) own: Vec<IpAddr>,
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) tls: bool,
    pub(super) codec: Codec,
    pub(super) topics: Topics,
    pub(super) client: AsyncClient,
    pub(super) current: Arc<AtomicUsize>,
    pub(super) subscriptions: watch::Sender<Vec<String>>,
    pub(super) store: ConfigStore,
    pub(super) ports: HashMap<String, bool>,
    pub(super) infos: mpsc::Sender<bus::Info>,
    /// The embedded broker this switch started (servers hosting one), with
    /// its restart counter.
    pub(super) brokers: Vec<(std::net::SocketAddr, Arc<AtomicU64>)>,
}

/// The fabric's state; only the task's loop touches it.
pub(super) struct Task {
    pub(super) config: FabricConfig,
    pub(super) identity: String,
    pub(super) role: Role,
    pub(super) role_reason: String,
    /// Servers: 0 primary, 1 backup.
    pub(super) rank: Option<usize>,
    pub(super) started: Instant,
    pub(super) own: Vec<IpAddr>,
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) tls: bool,
    pub(super) codec: Codec,
    pub(super) topics: Topics,
    pub(super) client: AsyncClient,
    /// Index in `endpoints` of the broker in use (the link updates it).
    pub(super) current: Arc<AtomicUsize>,
    /// The link's topic filters; they follow the role.
    pub(super) subscriptions: watch::Sender<Vec<String>>,
    pub(super) connected: bool,
    /// Servers: the members as heard from heartbeats.
    pub(super) roster: Roster,
    /// Servers: announcing now.
    pub(super) active: bool,
    /// Backup: when the primary's status was last heard.
    pub(super) last_primary: Option<Instant>,
    /// Active server: each member's roster record as retained at the
    /// broker by this server (its heartbeat without the uptime), so only
    /// records that changed are written again.
    pub(super) published_roster: CappedMap<String, Heartbeat>,
    /// Active server: when the roster buckets that changed since the last
    /// write are due (see `server::ROSTER_COALESCE`); None when none is.
    pub(super) roster_flush_at: Option<tokio::time::Instant>,
    /// Active server: buckets another server wrote (or a departure another
    /// server announced) in disagreement with this roster, to be written
    /// again at the next tick.
    pub(super) roster_overwritten: BTreeSet<u16>,
    /// Every other member this switch knows of.
    pub(super) view: CappedMap<String, ViewEntry>,
    pub(super) servers: CappedMap<String, (ServerStatus, Instant)>,
    pub(super) announcements: VecDeque<Membership>,
    pub(super) store: ConfigStore,
    /// This switch's changes awaiting acknowledgement.
    pub(super) outbox: Outbox,
    /// `fabric set` requests not answered yet.
    pub(super) pending_sets: Vec<PendingSet>,
    pub(super) next_seq: u64,
    pub(super) faults: VecDeque<FaultReport>,
    /// This run's boot id: with `fault_seq`, what identifies our faults.
    pub(super) boot: u64,
    /// This switch's last fault number.
    pub(super) fault_seq: u64,
    /// The last fault heard per remote port (de-duplication).
    pub(super) fault_ledger: FaultLedger,
    /// Local ports: operationally up or not.
    pub(super) ports: HashMap<String, bool>,
    pub(super) counters: BTreeMap<String, u64>,
    /// Messages refused, by kind (also in `counters`): kept apart so
    /// metrics can tell a refusal from any other count.
    pub(super) rejected: BTreeMap<&'static str, u64>,
    /// The store holds acks not yet in the state file (saved at the next
    /// tick; see `heard_ack`).
    pub(super) store_unsaved: bool,
    pub(super) logs: LogLimiter,
    pub(super) heartbeats: RateLimiter,
    /// Times fabric config changes (last writer wins by it).
    pub(super) hlc: Hlc,
    /// Faults accepted per member and second.
    pub(super) fault_rate: RateLimiter,
    /// Faults heard from other members go to state inference through this.
    pub(super) infos: mpsc::Sender<bus::Info>,
    /// Config releases heard from a center's agent, for the local device
    /// side (see `config_push.rs`).
    pub(super) releases_heard: broadcast::Sender<bus::ConfigReleased>,
    /// Other members' alarms, for the local inference.
    pub(super) alarms_heard: broadcast::Sender<bus::AlarmRecord>,
    /// This switch's raised alarms, republished on a reconnect.
    pub(super) own_alarms: super::alarms::OwnAlarms,
    /// The view's members with their ports, for state inference (kept in
    /// step with `view` by `member.rs`).
    pub(super) members_out: watch::Sender<bus::FabricMembers>,
    /// The embedded brokers this switch started (at bring-up, or when a
    /// server address was added here), with their restart counters.
    pub(super) brokers: Vec<(std::net::SocketAddr, Arc<AtomicU64>)>,
    /// When the current role began (a server's settle time counts from it).
    pub(super) role_since: Instant,
}

impl Task {
    /// The task as bring-up left it: not connected, not announcing,
    /// knowing no other member yet.
    pub(super) fn new(setup: Setup) -> Self {
        let Setup {
            config,
            identity,
            role,
            role_reason,
            rank,
            own,
            endpoints,
            tls,
            codec,
            topics,
            client,
            current,
            subscriptions,
            store,
            ports,
            infos,
            brokers,
        } = setup;
        Self {
            heartbeats: RateLimiter::with_capacity(config.max_heartbeats_per_s, config.max_members),
            fault_rate: RateLimiter::with_capacity(config.max_faults_per_s, config.max_members),
            roster: Roster::new(config.max_members),
            view: CappedMap::new(config.max_members),
            servers: CappedMap::new(MAX_SERVERS),
            published_roster: CappedMap::new(config.max_members),
            roster_flush_at: None,
            roster_overwritten: BTreeSet::new(),
            hlc: Hlc::new(config.trust.max_skew_ms),
            config,
            identity,
            role,
            role_reason,
            rank,
            started: Instant::now(),
            own,
            endpoints,
            tls,
            codec,
            topics,
            client,
            current,
            subscriptions,
            connected: false,
            active: false,
            last_primary: None,
            announcements: VecDeque::new(),
            store,
            outbox: Outbox::default(),
            pending_sets: Vec::new(),
            next_seq: now_ms(),
            faults: VecDeque::new(),
            boot: crate::random::boot_id(),
            fault_seq: 0,
            fault_ledger: FaultLedger::new(FAULT_PORTS),
            ports,
            counters: BTreeMap::new(),
            rejected: BTreeMap::new(),
            store_unsaved: false,
            logs: LogLimiter::new(Duration::from_secs(5)),
            infos,
            releases_heard: broadcast::channel(RELEASES_DEPTH).0,
            alarms_heard: broadcast::channel(ALARMS_DEPTH).0,
            own_alarms: Default::default(),
            members_out: watch::channel(bus::FabricMembers::new()).0,
            brokers,
            role_since: Instant::now(),
        }
    }

    /// The event loop. It runs as long as the agent: the heartbeat timer
    /// never ends, and a closed input only disables its branch.
    pub(super) async fn run(
        mut self,
        mut mqtt: mpsc::Receiver<MqttEvent>,
        mut queries: mpsc::Receiver<Query>,
        mut links: broadcast::Receiver<bus::LinkEvent>,
        mut addresses: mpsc::Receiver<Vec<IpAddr>>,
    ) {
        let mut interval = self.heartbeat_interval();
        let mut tick = heartbeat_timer(interval);
        let mut links_open = true;
        loop {
            let roster_flush_at = self.roster_flush_at;
            let event = tokio::select! {
                Some(event) = mqtt.recv() => Event::Mqtt(event),
                Some(query) = queries.recv() => Event::Query(query),
                received = links.recv(), if links_open => match received {
                    Ok(event) => Event::Link(event),
                    Err(RecvError::Lagged(missed)) => Event::LinksLagged(missed),
                    Err(RecvError::Closed) => {
                        links_open = false;
                        continue;
                    }
                },
                Some(own) = addresses.recv() => Event::Addresses(own),
                _ = tick.tick() => Event::Tick,
                () = sleep_until_some(roster_flush_at), if roster_flush_at.is_some() => {
                    Event::RosterDue
                }
            };
            let ticked = matches!(event, Event::Tick);
            self.process(event);
            // A fabric config change may have moved the interval; the timer
            // follows at the next tick.
            if ticked && self.heartbeat_interval() != interval {
                interval = self.heartbeat_interval();
                tracing::info!(?interval, "heartbeat interval changed by fabric config");
                tick = heartbeat_timer(interval);
            }
        }
    }

    /// Adds one to a counter of `show fabric`.
    pub(super) fn count(&mut self, name: &str) {
        self.count_by(name, 1);
    }

    /// Adds `n` to a counter of `show fabric`.
    pub(super) fn count_by(&mut self, name: &str, n: u64) {
        *self.counters.entry(name.to_string()).or_default() += n;
    }

    /// Sends heartbeats and acknowledges changes (every role but a plain
    /// server).
    pub(super) fn is_member(&self) -> bool {
        self.role != Role::Server
    }

    /// The heartbeat interval in force: the fabric config's, else ours.
    pub(super) fn heartbeat_interval(&self) -> Duration {
        let ms = self
            .store
            .get("heartbeat_interval_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.config.heartbeat_interval_ms);
        Duration::from_millis(ms)
    }

    /// The silence after which a member counts as departed: the fabric
    /// config's, else ours.
    pub(super) fn dead_after(&self) -> Duration {
        let ms = self
            .store
            .get("dead_after_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.config.dead_after_ms);
        Duration::from_millis(ms)
    }

    /// Logs the settings in force; the timers read them live
    /// (`heartbeat_interval`, `dead_after`), so nothing else needs applying.
    pub(super) fn log_settings(&mut self) {
        tracing::debug!(
            heartbeat = ?self.heartbeat_interval(),
            dead_after = ?self.dead_after(),
            "fabric settings in force"
        );
    }

    /// The broker in use, for `show fabric`.
    pub(super) fn broker(&self) -> String {
        self.endpoints[self.current.load(Ordering::Relaxed)].to_string()
    }

    /// Seals and publishes without waiting; a full client queue drops the
    /// message (counted, logged at most every few seconds).
    pub(super) fn publish(&mut self, message: &Message) {
        let (topic, retain) = self.topics.topic_for(message);
        let qos = if matches!(message, Message::Heartbeat(_) | Message::Server(_)) {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let bytes = self.codec.seal(message);
        match self.client.try_publish(topic, qos, retain, bytes) {
            Ok(()) => self.count("sent"),
            Err(err) => {
                self.count("send_dropped");
                if let Some(n) = self.logs.admit("send") {
                    tracing::warn!(suppressed = n, "fabric publish dropped: {err}");
                }
            }
        }
    }

    /// Counts a refused message under `counter` and logs why (rate-limited
    /// per counter).
    pub(super) fn reject(&mut self, topic: &str, why: &str, counter: &'static str) {
        self.count(counter);
        *self.rejected.entry(counter).or_default() += 1;
        if let Some(suppressed) = self.logs.admit(counter) {
            tracing::warn!(topic, suppressed, "fabric message dropped: {why}");
        }
    }

    /// Writes the fabric config to the state file, if there is one.
    pub(super) fn save_store(&mut self) {
        self.store_unsaved = false;
        if let Some(path) = self.config.state_file.clone()
            && let Err(err) = self.store.save(&path)
        {
            self.count("state_file_errors");
            if let Some(n) = self.logs.admit("state_file") {
                tracing::error!(file = %path.display(), suppressed = n, "cannot save the fabric config: {err}");
            }
        }
    }
}

/// The heartbeat timer: a late tick delays the next rather than bursting.
/// Sleeps until `at` (forever when None; the branch is disabled then).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn heartbeat_timer(interval: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// A fixed key pair per name, for handler tests.
#[cfg(test)]
pub(super) fn test_identity(name: &str) -> super::identity::Identity {
    let mut secret = [7u8; 32];
    for (i, b) in name.bytes().enumerate() {
        secret[i % 32] ^= b;
    }
    super::identity::Identity::from_secret(name, secret)
}

/// The roster of handler tests: members sw1-sw3, server srv.
#[cfg(test)]
pub(super) fn test_roster() -> super::identity::Roster {
    let ids: Vec<_> = ["sw1", "sw2", "sw3", "srv"]
        .into_iter()
        .map(String::from)
        .chain((0..10).map(|n| format!("sim{n}")))
        .map(|name| test_identity(&name))
        .collect();
    super::identity::Roster::generated(&ids, &["srv"])
}

/// A task for handler tests: a member (`sw1`, role client) with port `p1`
/// up, not connected to any broker. Its MQTT client only queues (the
/// returned event loop is never polled), so publishes count as sent.
#[cfg(test)]
pub(super) fn test_task(infos: mpsc::Sender<bus::Info>) -> (Task, rumqttc::EventLoop) {
    test_task_with(infos, "")
}

/// As [`test_task`], with `extra` lines in its `[fabric]` section.
#[cfg(test)]
pub(super) fn test_task_with(
    infos: mpsc::Sender<bus::Info>,
    extra: &str,
) -> (Task, rumqttc::EventLoop) {
    let config: FabricConfig =
        toml::from_str(&format!("servers = [\"10.0.0.1\"]\n{extra}")).expect("fabric config");
    let (client, eventloop) =
        AsyncClient::new(rumqttc::MqttOptions::new("sw1-test", "127.0.0.1", 1883), 64);
    let task = Task::new(Setup {
        topics: Topics::new(&config.prefix),
        config,
        identity: "sw1".into(),
        role: Role::Client,
        role_reason: "test".into(),
        rank: None,
        own: Vec::new(),
        endpoints: vec![Endpoint {
            host: "10.0.0.1".into(),
            port: 1883,
        }],
        tls: false,
        codec: Codec::new(test_identity("sw1"), test_roster(), None),
        client,
        current: Arc::new(AtomicUsize::new(0)),
        subscriptions: watch::channel(Vec::new()).0,
        store: ConfigStore::default(),
        ports: HashMap::from([("p1".to_string(), true)]),
        infos,
        brokers: Vec::new(),
    });
    (task, eventloop)
}
