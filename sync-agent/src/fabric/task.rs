//! The fabric task: owns the MQTT link, the roster (on servers), the local
//! view of the fabric, the fabric config and the recent faults.

use crate::{clock::now_ms, log_limit::LogLimiter};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use rtnetlink::Handle;
use rumqttc::QoS;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{
    broker,
    config::{BrokerChoice, EncryptionMode, FabricConfig},
    decide_role,
    link::{self, Endpoint, LinkEvent as MqttEvent, LinkSettings},
    seal::{self, Codec},
    state::{ConfigStore, Outbox, Outcome, PendingChange, RateLimiter, Roster},
    wire::{
        ConfigAck, ConfigChange, Fault, Heartbeat, Membership, Message, Role, ServerStatus, Topics,
        Topology,
    },
};
use crate::{
    bus::Info,
    control::protocol::Response,
    southbound::{
        addresses,
        links::{self, LinkEvent},
    },
};

/// How many faults and announcements `show fabric` keeps.
const RECENT: usize = 100;

enum Command {
    Show(oneshot::Sender<FabricReport>),
    Set {
        key: String,
        value: String,
        reply: oneshot::Sender<Result<ConfigChange, String>>,
    },
    Link(LinkEvent),
}

/// Handle to the fabric task.
#[derive(Clone)]
pub struct Fabric {
    commands: mpsc::Sender<Command>,
}

/// One member as this switch sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberReport {
    /// Identity.
    pub identity: String,
    /// Role.
    pub role: Role,
    /// Model.
    pub model: String,
    /// Software version.
    pub version: String,
    /// Server IPs it is configured with.
    pub servers: Vec<IpAddr>,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Its uptime at its last heartbeat.
    pub uptime_s: u64,
    /// Milliseconds since its last heartbeat was heard (None: only known from the topology).
    pub last_heartbeat_ms_ago: Option<u64>,
    /// `up`, `silent` (no heartbeat lately) or `departed`.
    pub state: String,
}

/// A server as seen from its status messages.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerReport {
    /// Identity.
    pub server: String,
    /// 0 = primary.
    pub rank: usize,
    /// Announcing.
    pub active: bool,
    /// Since its last status.
    pub last_status_ms_ago: u64,
}

/// A fault as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultReport {
    /// The fault.
    #[serde(flatten)]
    pub fault: Fault,
    /// When it arrived here (ms since the epoch).
    pub received_ms: u64,
}

/// A setting in force.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SettingReport {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Who changed it.
    pub changed_by: String,
    /// When (ms since the epoch, the changer's clock).
    pub changed_at_ms: u64,
    /// The changer's change number.
    pub seq: u64,
    /// Acknowledgements: member -> outcome.
    pub acks: BTreeMap<String, String>,
}

/// `show fabric`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FabricReport {
    /// This member.
    pub identity: String,
    /// Its role.
    pub role: Role,
    /// Why that role.
    pub role_reason: String,
    /// Server rank (0 primary, 1 backup), servers only.
    pub rank: Option<usize>,
    /// Announcing now (servers only).
    pub active: Option<bool>,
    /// The broker in use.
    pub broker: String,
    /// Connected to it.
    pub connected: bool,
    /// `none` or `aead`.
    pub encryption: String,
    /// TLS to the broker.
    pub tls: bool,
    /// Members, this one included.
    pub members: Vec<MemberReport>,
    /// Servers heard.
    pub servers: Vec<ServerReport>,
    /// Join/departure announcements received, newest last.
    pub announcements: Vec<Membership>,
    /// Faults, newest last.
    pub faults: Vec<FaultReport>,
    /// The fabric config in force.
    pub config: Vec<SettingReport>,
    /// This member's changes still awaiting acknowledgement.
    pub pending_changes: Vec<PendingChange>,
    /// Counters: received, rejected by reason, sent, dropped.
    pub counters: BTreeMap<String, u64>,
}

impl Fabric {
    /// Decides the role, starts the broker (servers) and the task.
    pub async fn spawn(
        config: FabricConfig,
        instance: &str,
        netlink: Handle,
        inference: Option<tokio::sync::mpsc::Sender<Info>>,
    ) -> anyhow::Result<Self> {
        let identity = config
            .identity
            .clone()
            .unwrap_or_else(|| instance.to_string());
        let own = own_addresses(&netlink).await?;
        let (role, rank, reason) = decide_role(&config.servers, &own, config.member);
        tracing::info!(identity, ?role, "fabric role: {reason}");
        let key = match config.encryption.mode {
            EncryptionMode::None => None,
            EncryptionMode::Aead => {
                let path = config
                    .encryption
                    .key_file
                    .as_ref()
                    .expect("validated: aead has a key file");
                Some((config.encryption.key_id, seal::read_key(path)?))
            }
        };
        let choice = config
            .broker_choice()
            .map_err(|e| anyhow::anyhow!("fabric.broker: {e}"))?;
        let (endpoints, tls) = match &choice {
            BrokerChoice::Embedded => {
                if let Some(rank) = rank {
                    let listen = SocketAddr::new(config.servers[rank], config.port);
                    let tls = config.tls.as_ref().filter(|t| t.cert_file.is_some());
                    broker::start(listen, tls)?;
                    tracing::info!(%listen, tls = tls.is_some(), "embedded MQTT broker started");
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
        let tls_ca =
            match (&config.tls, tls) {
                (Some(t), true) => Some(std::fs::read(&t.ca_file).map_err(|e| {
                    anyhow::anyhow!("fabric.tls.ca_file {}: {e}", t.ca_file.display())
                })?),
                _ => None,
            };
        let mut codec = Codec::new(&identity, key);
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
            will,
            failover_after: Duration::from_millis(config.failover_after_ms),
            // Servers look for the primary more often, so a backup stands
            // down before members moving back could look departed to it.
            probe_every: if rank.is_some() {
                heartbeat
            } else {
                Duration::from_millis(config.failover_after_ms)
            },
            subscriptions: topics.subscriptions().to_vec(),
        };
        // A returning primary first learns the members from the backup's
        // retained topology, so it does not announce them again.
        let seed = if rank == Some(0) && endpoints.len() > 1 {
            let topic = topics
                .topic_for(&Message::Topology(Topology {
                    server: String::new(),
                    epoch: 0,
                    members: Vec::new(),
                }))
                .0;
            link::fetch_retained(&settings, 1, &topic, Duration::from_secs(2)).await
        } else {
            None
        };
        let link = link::spawn(settings);
        let store = match &config.state_file {
            Some(path) => ConfigStore::load(path)?,
            None => ConfigStore::default(),
        };
        let mut ports = HashMap::new();
        for l in links::all(&netlink).await? {
            ports.insert(l.name.clone(), l.up && l.carrier);
        }
        let (commands, rx) = mpsc::channel(256);
        let mut task = Task {
            heartbeats: RateLimiter::new(config.max_heartbeats_per_s),
            config,
            identity,
            role,
            role_reason: reason,
            rank,
            started: Instant::now(),
            own,
            endpoints,
            tls,
            codec,
            topics,
            client: link.client,
            current: link.current,
            connected: false,
            roster: Roster::default(),
            active: false,
            last_primary: None,
            last_topology_publish: None,
            published_epoch: None,
            view: BTreeMap::new(),
            servers: BTreeMap::new(),
            announcements: VecDeque::new(),
            store,
            outbox: Outbox::default(),
            next_seq: now_ms(),
            faults: VecDeque::new(),
            fault_seq: 0,
            last_fault_seq: HashMap::new(),
            ports,
            counters: BTreeMap::new(),
            logs: LogLimiter::new(Duration::from_secs(5)),
            inference,
        };
        task.log_settings();
        if let Some(bytes) = seed {
            match task.codec.open(&bytes, true) {
                Ok(opened) => {
                    if let Message::Topology(topology) = opened.message {
                        tracing::info!(
                            members = topology.members.len(),
                            from = topology.server,
                            "seeded the roster from the backup's topology"
                        );
                        task.roster.seed(&topology);
                        task.on_topology(topology);
                    }
                }
                Err(err) => tracing::warn!("backup's retained topology refused: {err}"),
            }
        }
        tokio::spawn(task.run(link.events, rx));
        Ok(Self { commands })
    }

    /// `show fabric`.
    pub async fn show(&self) -> Response {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Show(tx)).await.is_err() {
            return Response::error("the fabric task has stopped");
        }
        match rx.await {
            Ok(report) => Response::ok(&report),
            Err(_) => Response::error("the fabric task has stopped"),
        }
    }

    /// `fabric set KEY VALUE`.
    pub async fn set(&self, key: String, value: String) -> Response {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Set { key, value, reply })
            .await
            .is_err()
        {
            return Response::error("the fabric task has stopped");
        }
        match rx.await {
            Ok(Ok(change)) => Response::ok(&change),
            Ok(Err(why)) => Response::error(why),
            Err(_) => Response::error("the fabric task has stopped"),
        }
    }

    /// An interface changed (faults come from here).
    pub async fn link(&self, event: LinkEvent) {
        let _ = self.commands.send(Command::Link(event)).await;
    }
}

async fn own_addresses(netlink: &Handle) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for l in links::all(netlink).await? {
        for a in addresses::list(netlink, l.index).await? {
            out.push(a.ip);
        }
    }
    Ok(out)
}

struct ViewEntry {
    heartbeat: Heartbeat,
    heard: Option<Instant>,
    departed: bool,
}

struct Task {
    config: FabricConfig,
    identity: String,
    role: Role,
    role_reason: String,
    rank: Option<usize>,
    started: Instant,
    own: Vec<IpAddr>,
    endpoints: Vec<Endpoint>,
    tls: bool,
    codec: Codec,
    topics: Topics,
    client: rumqttc::AsyncClient,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    connected: bool,
    /// Servers: the members as heard from heartbeats.
    roster: Roster,
    /// Servers: announcing now.
    active: bool,
    /// Backup: when the primary's status was last heard.
    last_primary: Option<Instant>,
    last_topology_publish: Option<Instant>,
    published_epoch: Option<u64>,
    view: BTreeMap<String, ViewEntry>,
    servers: BTreeMap<String, (ServerStatus, Instant)>,
    announcements: VecDeque<Membership>,
    store: ConfigStore,
    outbox: Outbox,
    next_seq: u64,
    faults: VecDeque<FaultReport>,
    fault_seq: u64,
    last_fault_seq: HashMap<String, u64>,
    ports: HashMap<String, bool>,
    counters: BTreeMap<String, u64>,
    logs: LogLimiter,
    heartbeats: RateLimiter,
    inference: Option<tokio::sync::mpsc::Sender<Info>>,
}

impl Task {
    fn count(&mut self, name: &str) {
        *self.counters.entry(name.to_string()).or_default() += 1;
    }

    fn is_member(&self) -> bool {
        self.role != Role::Server
    }

    fn heartbeat_interval(&self) -> Duration {
        let ms = self
            .store
            .get("heartbeat_interval_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.config.heartbeat_interval_ms);
        Duration::from_millis(ms)
    }

    fn dead_after(&self) -> Duration {
        let ms = self
            .store
            .get("dead_after_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.config.dead_after_ms);
        Duration::from_millis(ms)
    }

    /// Logs the settings in force; the timers read them live
    /// (`heartbeat_interval`, `dead_after`), so nothing else needs applying.
    fn log_settings(&mut self) {
        tracing::debug!(
            heartbeat = ?self.heartbeat_interval(),
            dead_after = ?self.dead_after(),
            "fabric settings in force"
        );
    }

    async fn run(
        mut self,
        mut mqtt: mpsc::Receiver<MqttEvent>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut interval = self.heartbeat_interval();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(event) = mqtt.recv() => self.on_mqtt(event).await,
                Some(command) = commands.recv() => self.on_command(command).await,
                _ = tick.tick() => {
                    self.on_tick();
                    if self.heartbeat_interval() != interval {
                        interval = self.heartbeat_interval();
                        tracing::info!(?interval, "heartbeat interval changed by fabric config");
                        tick = tokio::time::interval(interval);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                }
                else => return,
            }
        }
    }

    fn publish(&mut self, message: &Message) {
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

    fn own_heartbeat(&self) -> Heartbeat {
        Heartbeat {
            member: self.identity.clone(),
            role: self.role,
            model: self.config.model.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            servers: self.config.servers.clone(),
            addresses: self.own.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            interval_ms: self.heartbeat_interval().as_millis() as u64,
        }
    }

    fn on_tick(&mut self) {
        if self.connected && self.is_member() {
            let hb = self.own_heartbeat();
            self.publish(&Message::Heartbeat(hb.clone()));
            if self.rank.is_some() {
                self.roster.heartbeat(hb, now_ms());
            }
        }
        if self.rank.is_some() {
            self.server_duties();
        }
        for change in self
            .outbox
            .due(Duration::from_millis(self.config.resend_ms))
        {
            tracing::info!(
                key = change.key,
                seq = change.seq,
                "config change not acknowledged by all; sending again"
            );
            self.count("changes_resent");
            self.publish(&Message::Change(change));
        }
    }

    fn should_be_active(&self) -> bool {
        let settle = self.dead_after() + self.heartbeat_interval();
        let takeover = Duration::from_millis(self.config.takeover_after_ms);
        match self.rank {
            Some(0) => self.started.elapsed() >= settle,
            Some(_) => match self.last_primary {
                Some(heard) => heard.elapsed() > takeover,
                None => self.started.elapsed() > takeover,
            },
            None => false,
        }
    }

    fn server_duties(&mut self) {
        let rank = self.rank.expect("server");
        let wanted = self.should_be_active();
        if wanted != self.active {
            self.active = wanted;
            if wanted {
                tracing::warn!(rank, "this server takes over announcing the fabric");
                self.count("takeovers");
                self.roster.grace();
                self.published_epoch = None;
            } else {
                tracing::warn!(rank, "the primary server is back; standing down");
            }
        }
        let expired = self.roster.expire(self.dead_after());
        if !self.connected {
            return;
        }
        if rank == 0 || self.active {
            self.publish(&Message::Server(ServerStatus {
                server: self.identity.clone(),
                rank,
                active: self.active,
            }));
        }
        if !self.active {
            return;
        }
        for member in expired {
            let reason = format!("no heartbeat for {} ms", self.dead_after().as_millis());
            self.announce(&member, false, &reason);
        }
        let stale = self
            .last_topology_publish
            .is_none_or(|t| t.elapsed() > Duration::from_secs(5));
        if self.published_epoch != Some(self.roster.epoch()) || stale {
            self.publish_snapshots();
        }
    }

    fn publish_snapshots(&mut self) {
        let topology = self.roster.snapshot(&self.identity);
        self.published_epoch = Some(topology.epoch);
        self.last_topology_publish = Some(Instant::now());
        self.publish(&Message::Topology(topology));
        self.publish(&Message::ConfigState(self.store.state()));
    }

    fn announce(&mut self, member: &str, joined: bool, reason: &str) {
        tracing::info!(member, joined, reason, "announcing membership change");
        let m = Membership {
            server: self.identity.clone(),
            member: member.to_string(),
            joined,
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        self.record_announcement(m.clone());
        self.publish(&Message::Membership(m));
    }

    fn record_announcement(&mut self, m: Membership) {
        if !m.joined {
            if let Some(entry) = self.view.get_mut(&m.member) {
                entry.departed = true;
            }
            self.outbox.forget(&m.member);
        }
        if self.announcements.len() >= RECENT {
            self.announcements.pop_front();
        }
        self.announcements.push_back(m);
    }

    async fn on_mqtt(&mut self, event: MqttEvent) {
        match event {
            MqttEvent::Connected { .. } => {
                self.connected = true;
                self.count("connects");
                if self.rank.is_some() && self.active {
                    self.publish_snapshots();
                }
            }
            MqttEvent::Disconnected { .. } => {
                self.connected = false;
                self.count("disconnects");
            }
            MqttEvent::Publish {
                topic,
                payload,
                retained,
            } => self.on_publish(&topic, &payload, retained).await,
        }
    }

    fn reject(&mut self, topic: &str, why: &str, counter: &'static str) {
        self.count(counter);
        if let Some(suppressed) = self.logs.admit(counter) {
            tracing::warn!(topic, suppressed, "fabric message dropped: {why}");
        }
    }

    async fn on_publish(&mut self, topic: &str, payload: &[u8], retained: bool) {
        if payload.is_empty() || self.topics.channel_of(topic).is_none() {
            return;
        }
        self.count("received");
        let opened = match self.codec.open(payload, retained) {
            Ok(opened) => opened,
            Err(rejection) => {
                self.reject(topic, &rejection.to_string(), rejection.counter());
                return;
            }
        };
        if opened.sender == self.identity {
            return;
        }
        match opened.message {
            Message::Heartbeat(hb) => {
                if !self.heartbeats.allow(&hb.member) {
                    self.reject(
                        topic,
                        &format!("heartbeat flood from {}", hb.member),
                        "heartbeat_flood",
                    );
                    return;
                }
                self.view.insert(
                    hb.member.clone(),
                    ViewEntry {
                        heartbeat: hb.clone(),
                        heard: Some(Instant::now()),
                        departed: false,
                    },
                );
                if self.rank.is_some() {
                    let member = hb.member.clone();
                    let new = self.roster.heartbeat(hb, now_ms());
                    if new && self.active && self.connected {
                        self.announce(&member, true, "first heartbeat");
                    }
                }
            }
            Message::Departed { member, reason } => {
                if let Some(entry) = self.view.get_mut(&member) {
                    entry.departed = true;
                }
                if self.rank.is_some() && self.roster.depart(&member) && self.active {
                    self.announce(&member, false, &reason);
                }
                self.outbox.forget(&member);
            }
            Message::Server(status) => {
                if status.rank == 0 && self.rank == Some(1) {
                    self.last_primary = Some(Instant::now());
                }
                self.servers
                    .insert(status.server.clone(), (status, Instant::now()));
            }
            Message::Topology(topology) => self.on_topology(topology),
            Message::Membership(m) => self.record_announcement(m),
            Message::Change(change) => self.on_change(change).await,
            Message::Ack(ack) => {
                self.store
                    .ack(&ack.member, &ack.origin, ack.seq, &ack.outcome);
                if ack.origin == self.identity {
                    self.outbox.answered(ack.seq, &ack.member);
                }
                self.save_store();
            }
            Message::ConfigState(state) => {
                let mut applied = false;
                for change in state.entries.values() {
                    if self.store.apply(change) == Outcome::Applied {
                        tracing::info!(
                            key = change.key,
                            value = change.value,
                            by = change.origin,
                            "fabric setting taken from the server's snapshot"
                        );
                        applied = true;
                    }
                }
                if applied {
                    self.log_settings();
                    self.save_store();
                }
            }
            Message::Fault(fault) => self.on_fault(fault).await,
        }
    }

    fn on_topology(&mut self, topology: Topology) {
        if self.rank.is_some() && !self.active {
            // A server not (yet) announcing adopts the other's members so it
            // does not announce them again when it takes over.
            self.roster.seed(&topology);
        }
        for entry in topology.members {
            let name = entry.heartbeat.member.clone();
            if name == self.identity {
                continue;
            }
            self.view.entry(name).or_insert(ViewEntry {
                heartbeat: entry.heartbeat,
                heard: None,
                departed: false,
            });
        }
    }

    async fn on_change(&mut self, change: ConfigChange) {
        let outcome = self.store.apply(&change);
        match &outcome {
            Outcome::Applied => {
                tracing::info!(
                    key = change.key,
                    value = change.value,
                    by = change.origin,
                    "fabric setting applied"
                );
                self.count("changes_applied");
                self.log_settings();
            }
            Outcome::Rejected(why) => self.reject(
                "change",
                &format!(
                    "change {} from {} refused: {why}",
                    change.key, change.origin
                ),
                "changes_rejected",
            ),
            Outcome::AlreadyApplied | Outcome::Superseded => self.count("changes_duplicate"),
        }
        if self.is_member() {
            let text = outcome.ack_text();
            self.store
                .ack(&self.identity.clone(), &change.origin, change.seq, &text);
            self.publish(&Message::Ack(ConfigAck {
                member: self.identity.clone(),
                origin: change.origin.clone(),
                seq: change.seq,
                outcome: text,
            }));
        }
        self.save_store();
        if self.active && outcome == Outcome::Applied {
            self.publish(&Message::ConfigState(self.store.state()));
        }
    }

    async fn on_fault(&mut self, fault: Fault) {
        let last = self.last_fault_seq.entry(fault.member.clone()).or_insert(0);
        if fault.seq <= *last {
            self.count("faults_duplicate");
            return;
        }
        *last = fault.seq;
        tracing::info!(
            member = fault.member,
            port = fault.port,
            kind = fault.kind,
            "fabric fault"
        );
        self.count("faults_received");
        if let Some(inference) = &self.inference {
            let object = format!("port:{}/{}", fault.member, fault.port);
            let _ = inference
                .send(Info::new("fabric", &fault.kind, object.as_str()))
                .await;
        }
        self.record_fault(fault);
    }

    fn record_fault(&mut self, fault: Fault) {
        if self.faults.len() >= RECENT {
            self.faults.pop_front();
        }
        self.faults.push_back(FaultReport {
            fault,
            received_ms: now_ms(),
        });
    }

    fn save_store(&mut self) {
        if let Some(path) = self.config.state_file.clone()
            && let Err(err) = self.store.save(&path)
        {
            self.count("state_file_errors");
            if let Some(n) = self.logs.admit("state_file") {
                tracing::error!(file = %path.display(), suppressed = n, "cannot save the fabric config: {err}");
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Show(reply) => {
                let _ = reply.send(self.report());
            }
            Command::Set { key, value, reply } => {
                let _ = reply.send(self.set(key, value));
            }
            Command::Link(event) => self.on_link(event),
        }
    }

    fn set(&mut self, key: String, value: String) -> Result<ConfigChange, String> {
        super::state::validate_setting(&key, &value)?;
        self.next_seq = self.next_seq.max(now_ms()) + 1;
        let change = ConfigChange {
            origin: self.identity.clone(),
            seq: self.next_seq,
            key,
            value,
            at_ms: now_ms(),
        };
        if let Outcome::Rejected(why) = self.store.apply(&change) {
            return Err(why);
        }
        let me = self.identity.clone();
        self.store.ack(&me, &me, change.seq, "applied");
        self.log_settings();
        self.save_store();
        let waiting: BTreeSet<String> = self
            .view
            .iter()
            .filter(|(_, e)| !e.departed && e.heartbeat.role != Role::Server)
            .map(|(n, _)| n.clone())
            .collect();
        tracing::info!(
            key = change.key,
            value = change.value,
            members = waiting.len(),
            "publishing fabric config change"
        );
        if !waiting.is_empty() {
            self.outbox.add(change.clone(), waiting);
        }
        self.publish(&Message::Change(change.clone()));
        if self.active {
            self.publish(&Message::ConfigState(self.store.state()));
        }
        Ok(change)
    }

    fn on_link(&mut self, event: LinkEvent) {
        let (name, operational) = match event {
            LinkEvent::Changed(link) => {
                let up = link.up && link.carrier;
                (link.name, Some(up))
            }
            LinkEvent::Removed {
                name: Some(name), ..
            } => (name, None),
            LinkEvent::Removed { name: None, .. } => return,
        };
        if name == "lo" {
            return;
        }
        let before = match operational {
            Some(up) => self.ports.insert(name.clone(), up),
            None => self.ports.remove(&name),
        };
        let kind = match (before, operational) {
            (Some(true), Some(false) | None) => "port-down",
            (Some(false), Some(true)) => "port-up",
            _ => return,
        };
        self.fault_seq += 1;
        let fault = Fault {
            member: self.identity.clone(),
            seq: self.fault_seq,
            port: name,
            kind: kind.into(),
            at_ms: now_ms(),
        };
        tracing::info!(port = fault.port, kind, "publishing fault");
        self.publish(&Message::Fault(fault.clone()));
        self.record_fault(fault);
    }

    fn report(&self) -> FabricReport {
        let dead_after = self.dead_after();
        let mut members: Vec<MemberReport> = self
            .view
            .iter()
            .map(|(name, e)| {
                let state = if e.departed {
                    "departed"
                } else if e.heard.is_some_and(|t| t.elapsed() <= dead_after) || e.heard.is_none() {
                    "up"
                } else {
                    "silent"
                };
                member_report(
                    name,
                    &e.heartbeat,
                    e.heard.map(|t| t.elapsed().as_millis() as u64),
                    state,
                )
            })
            .collect();
        if self.is_member() {
            members.push(member_report(
                &self.identity,
                &self.own_heartbeat(),
                Some(0),
                "up",
            ));
            members.sort_by(|a, b| a.identity.cmp(&b.identity));
        }
        FabricReport {
            identity: self.identity.clone(),
            role: self.role,
            role_reason: self.role_reason.clone(),
            rank: self.rank,
            active: self.rank.map(|_| self.active),
            broker: self.endpoints[self.current.load(std::sync::atomic::Ordering::Relaxed)]
                .to_string(),
            connected: self.connected,
            encryption: match self.config.encryption.mode {
                EncryptionMode::None => "none".into(),
                EncryptionMode::Aead => "aead".into(),
            },
            tls: self.tls,
            members,
            servers: self
                .servers
                .values()
                .map(|(s, at)| ServerReport {
                    server: s.server.clone(),
                    rank: s.rank,
                    active: s.active,
                    last_status_ms_ago: at.elapsed().as_millis() as u64,
                })
                .collect(),
            announcements: self.announcements.iter().cloned().collect(),
            faults: self.faults.iter().cloned().collect(),
            config: self
                .store
                .entries
                .iter()
                .map(|(key, e)| SettingReport {
                    key: key.clone(),
                    value: e.change.value.clone(),
                    changed_by: e.change.origin.clone(),
                    changed_at_ms: e.change.at_ms,
                    seq: e.change.seq,
                    acks: e.acks.clone(),
                })
                .collect(),
            pending_changes: self.outbox.pending(),
            counters: self.counters.clone(),
        }
    }
}

fn member_report(name: &str, hb: &Heartbeat, ago: Option<u64>, state: &str) -> MemberReport {
    MemberReport {
        identity: name.to_string(),
        role: hb.role,
        model: hb.model.clone(),
        version: hb.version.clone(),
        servers: hb.servers.clone(),
        addresses: hb.addresses.clone(),
        uptime_s: hb.uptime_s,
        last_heartbeat_ms_ago: ago,
        state: state.into(),
    }
}
