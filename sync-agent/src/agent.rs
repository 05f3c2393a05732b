//! The agent task: owns the dataplane, the member ports' state and the recent
//! captures, and reacts to one event at a time — a captured reply, a control
//! request, an interface change, a signal. Other tasks (ring buffer reader,
//! control socket, netlink watcher) only talk to it through channels.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use anyhow::{Context as _, bail};
use rtnetlink::Handle;
use sync_common::{arp, counters, policy};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    bus::MemberPort,
    config::Config,
    control::{
        protocol::{
            AgentCounters, CapturedEntry, CountersReport, PortStatus, Request, Response,
            StatusReport,
        },
        server::ControlSocket,
    },
    dataplane::{
        CLASSIFIER_PROGRAM, Dataplane, MacTables, PASS_PROGRAM,
        capture::{self, CaptureStats, Captured},
    },
    inference::task::{Inference, StateQuery},
    mac::MacAddr,
    mclag::Mclag,
    peersync::{Identity, PeerQuery, PeerSync},
    rollout::{center::CenterHandle, device::DeviceHandle, report::RolloutReport},
    southbound::links::{self, Link, LinkEvent},
};

/// Refuses to go on unless running as root: loading and attaching XDP
/// programs needs CAP_BPF and CAP_NET_ADMIN.
pub fn ensure_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "{what} needs root (CAP_BPF and CAP_NET_ADMIN to load and attach XDP programs); running as uid {euid}"
        );
    }
    Ok(())
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config_path: &Path, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    ensure_root("sync-agent run")?;
    let socket_path = socket.unwrap_or_else(|| crate::control::socket_path_for(&config.instance));
    let control = ControlSocket::bind(&socket_path).await?;

    let netlink = links::connect()?;
    // Subscribe before the first look-up so no change falls between them.
    let mut link_events = links::watch()?;
    let ports = resolve_ports(&netlink, &config).await?;

    let (mut dataplane, ring, logger) = Dataplane::load(config.dataplane.ebpf_log)?;
    let inject_fd = match &config.peer {
        Some(_) => Some(dataplane.program_owned_fd(PASS_PROGRAM)?),
        None => None,
    };
    let capture_stats = Arc::new(CaptureStats::default());
    let bad_requests = Arc::new(AtomicU64::new(0));
    let mut agent = Agent {
        config_path: config_path.to_path_buf(),
        recent: VecDeque::with_capacity(config.dataplane.recent_captures),
        config,
        started: Instant::now(),
        dataplane,
        links: ports,
        port_problems: BTreeMap::new(),
        replies_received: 0,
        capture_stats: capture_stats.clone(),
        bad_requests: bad_requests.clone(),
        netlink,
        peer: None,
        mclag: None,
        inference: None,
        center: None,
        device: None,
        fabric: None,
        peer_ports: Vec::new(),
    };
    if let Some(center) = agent.config.rollout.center.clone() {
        agent.center = Some(CenterHandle::spawn(center).await?);
    }
    if let Some(device) = agent.config.rollout.device.clone() {
        tracing::info!(
            center = device.center,
            device = device.device,
            services = device.services.len(),
            "rollout device starting"
        );
        agent.device = Some(DeviceHandle::spawn(device).await?);
    }
    let switch_name = agent.config.instance.clone();
    agent.inference = Some(
        Inference::spawn(
            agent.config.inference.clone(),
            &switch_name,
            agent.netlink.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("state model: {e:#}"))?,
    );
    if let Some(fabric) = agent.config.fabric.clone() {
        agent.fabric = Some(
            crate::fabric::Fabric::spawn(
                fabric,
                &switch_name,
                agent.netlink.clone(),
                agent.inference.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("fabric: {e:#}"))?,
        );
    }
    agent.apply_policy()?;
    agent.attach_all(true)?;
    agent.refresh_tables()?;
    if let (Some(peer_config), Some(inject_fd)) = (agent.config.peer.clone(), inject_fd) {
        let ports = agent.local_ports();
        let mclag_address = agent
            .config
            .mclag
            .as_ref()
            .map(|m| m.address.unwrap_or(peer_config.local_address));
        let identity = Identity {
            name: agent.config.instance.clone(),
            system_id: ports.iter().find_map(|p| p.mac).unwrap_or(MacAddr([0; 6])),
            boot_id: crate::random::boot_id(),
            mclag_address,
        };
        let observer = match (agent.config.mclag.clone(), mclag_address) {
            (Some(mclag_config), Some(address)) => {
                let keepalive = (
                    std::time::Duration::from_millis(peer_config.keepalive_interval_ms),
                    std::time::Duration::from_millis(peer_config.dead_interval_ms),
                );
                tracing::info!(%address, "MC-LAG starting");
                let (mclag, observer) = Mclag::spawn(
                    mclag_config,
                    address,
                    keepalive,
                    identity.boot_id,
                    ports.clone(),
                    agent.netlink.clone(),
                );
                agent.mclag = Some(mclag);
                Some(observer)
            }
            _ => None,
        };
        tracing::info!(local = %peer_config.local_address, peer = %peer_config.peer_address, port = peer_config.port, boot_id = identity.boot_id, "peer sync starting");
        agent.peer_ports = ports.clone();
        agent.peer = Some(PeerSync::spawn(
            peer_config,
            identity,
            ports,
            inject_fd,
            agent.netlink.clone(),
            observer,
        ));
    }

    let (capture_tx, mut capture_rx) = mpsc::channel(agent.config.dataplane.capture_queue);
    tokio::spawn(async move {
        if let Err(err) = capture::run(ring, capture_tx, capture_stats).await {
            tracing::error!(error = %err, "capture reader stopped");
        }
    });
    if let Some(logger) = logger {
        tokio::spawn(drain_kernel_log(logger));
    }
    let (pending_tx, mut pending_rx) = mpsc::channel(64);
    tokio::spawn(control.serve(pending_tx, bad_requests));

    tracing::info!(
        instance = agent.config.instance,
        ports = ?agent.dataplane.ports().keys().collect::<Vec<_>>(),
        socket = %socket_path.display(),
        "agent running"
    );
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            Some(captured) = capture_rx.recv() => agent.on_capture(captured).await,
            Some(pending) = pending_rx.recv() => {
                let response = agent.on_request(pending.request).await;
                let _ = pending.reply.send(response);
            }
            Some(event) = link_events.recv() => {
                if let Some(inference) = &agent.inference {
                    inference.link(event.clone()).await;
                }
                if let Some(fabric) = &agent.fabric {
                    fabric.link(event.clone()).await;
                }
                agent.on_link(event);
                agent.update_peer_ports().await;
            }
            _ = sighup.recv() => {
                if let Err(err) = agent.reload().await {
                    tracing::error!("reload refused: {err:#}");
                }
                agent.update_peer_ports().await;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("shutting down: detaching from every port");
    let stop_center = async {
        if let Some(center) = &agent.center {
            center.shutdown().await;
        }
    };
    let stop_device = async {
        if let Some(device) = &agent.device {
            device.shutdown().await;
        }
    };
    tokio::join!(stop_center, stop_device);
    agent.dataplane.detach_all();
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

async fn drain_kernel_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd for its whole life.
    let Ok(mut logger) = (unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }) else {
        return;
    };
    loop {
        let Ok(mut guard) = logger.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

async fn resolve_ports(
    netlink: &Handle,
    config: &Config,
) -> anyhow::Result<BTreeMap<String, Link>> {
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    for (i, name) in config.dataplane.member_ports.iter().enumerate() {
        match links::by_name(netlink, name).await? {
            Some(link) => {
                found.insert(name.clone(), link);
            }
            None => missing.push(format!("{name} (dataplane.member_ports[{i}])")),
        }
    }
    if !missing.is_empty() {
        bail!(
            "member port interface(s) not found in this network namespace: {}",
            missing.join(", ")
        );
    }
    Ok(found)
}

struct Agent {
    config: Config,
    config_path: PathBuf,
    started: Instant,
    dataplane: Dataplane,
    /// Current kernel view of each configured member port that exists.
    links: BTreeMap<String, Link>,
    /// Why a configured port is not attached.
    port_problems: BTreeMap<String, String>,
    recent: VecDeque<Captured>,
    replies_received: u64,
    capture_stats: Arc<CaptureStats>,
    bad_requests: Arc<AtomicU64>,
    netlink: Handle,
    /// Peer sync, when configured.
    peer: Option<PeerSync>,
    /// MC-LAG identity, when configured.
    mclag: Option<Mclag>,
    /// State inference.
    inference: Option<Inference>,
    /// The config center, when hosted here.
    center: Option<CenterHandle>,
    /// The rollout device side, when configured.
    device: Option<DeviceHandle>,
    /// Fabric sync, when configured.
    fabric: Option<crate::fabric::Fabric>,
    /// The member ports as last told to peer sync.
    peer_ports: Vec<MemberPort>,
}

impl Agent {
    fn policy_word(&self) -> u32 {
        let dp = &self.config.dataplane;
        (if dp.sync_own_replies {
            policy::SYNC_OWN
        } else {
            0
        }) | (if dp.vrrp_prefix_is_shared {
            policy::VRRP_PREFIX_IS_SHARED
        } else {
            0
        })
    }

    fn apply_policy(&mut self) -> anyhow::Result<()> {
        let word = self.policy_word();
        self.dataplane.set_policy(word)?;
        Ok(())
    }

    /// The MAC tables implied by the config and the ports' current MACs.
    fn wanted_tables(&self) -> MacTables {
        let dp = &self.config.dataplane;
        let mut own: BTreeSet<MacAddr> = dp.own_macs.iter().copied().collect();
        own.extend(self.links.values().filter_map(|l| l.mac));
        let mut shared: BTreeSet<MacAddr> = dp.shared_macs.iter().copied().collect();
        for group in &dp.vrrp_groups {
            let vrid = *group as u8;
            shared.insert(MacAddr(arp::vrrp_v4_mac(vrid)));
            shared.insert(MacAddr(arp::vrrp_v6_mac(vrid)));
        }
        MacTables {
            peer: dp.peer_macs.iter().copied().collect(),
            own,
            shared,
        }
    }

    fn refresh_tables(&mut self) -> anyhow::Result<()> {
        let wanted = self.wanted_tables();
        if &wanted != self.dataplane.tables() {
            tracing::info!(
                peer = wanted.peer.len(),
                own = wanted.own.len(),
                shared = wanted.shared.len(),
                "MAC tables updated"
            );
            self.dataplane.set_tables(wanted)?;
        }
        Ok(())
    }

    /// Attaches to every configured port that exists and is not attached.
    /// At start-up (`strict`) a failure is fatal; later it is recorded.
    fn attach_all(&mut self, strict: bool) -> anyhow::Result<()> {
        let mode = self.config.dataplane.xdp_mode;
        for name in self.config.dataplane.member_ports.clone() {
            let Some(link) = self.links.get(&name) else {
                continue;
            };
            let ifindex = link.index;
            if self
                .dataplane
                .ports()
                .get(&name)
                .is_some_and(|p| p.ifindex == ifindex)
            {
                continue;
            }
            match self.dataplane.attach(&name, ifindex, mode) {
                Ok(mode) => {
                    tracing::info!(interface = name, ifindex, ?mode, "classifier attached");
                    self.port_problems.remove(&name);
                }
                Err(err) if strict => return Err(err.into()),
                Err(err) => {
                    tracing::error!(interface = name, error = %err, "attach failed");
                    self.port_problems.insert(name, err.to_string());
                }
            }
        }
        Ok(())
    }

    /// The member ports with their MLAG ids, as peer sync needs them.
    fn local_ports(&self) -> Vec<MemberPort> {
        let Some(peer) = &self.config.peer else {
            return Vec::new();
        };
        peer.mlag_ids_for(&self.config.dataplane.member_ports)
            .into_iter()
            .map(|(name, mlag_id)| {
                let link = self.links.get(&name);
                MemberPort {
                    ifindex: link.map(|l| l.index),
                    mac: link.and_then(|l| l.mac),
                    name,
                    mlag_id,
                }
            })
            .collect()
    }

    async fn update_peer_ports(&mut self) {
        let Some(peer) = self.peer.clone() else {
            return;
        };
        let ports = self.local_ports();
        if ports != self.peer_ports {
            self.peer_ports = ports.clone();
            if let Some(mclag) = &self.mclag {
                mclag.ports(ports.clone()).await;
            }
            peer.ports(ports).await;
        }
    }

    async fn on_capture(&mut self, captured: Captured) {
        if let Some(peer) = &self.peer {
            peer.captured(captured.clone()).await;
        }
        self.replies_received += 1;
        tracing::debug!(
            ifindex = captured.ifindex,
            class = captured.class.name(),
            sender = %std::net::Ipv4Addr::from(captured.arp.sender_ip),
            "reply captured"
        );
        if self.recent.len() >= self.config.dataplane.recent_captures {
            self.recent.pop_back();
        }
        self.recent.push_front(captured);
    }

    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Changed(link) => {
                if !self.config.dataplane.member_ports.contains(&link.name) {
                    return;
                }
                let previous = self.links.insert(link.name.clone(), link.clone());
                if previous.as_ref().map(|p| p.mac) != Some(link.mac) {
                    tracing::info!(interface = link.name, mac = ?link.mac, "member port MAC changed");
                }
                if previous.is_none() {
                    tracing::info!(interface = link.name, "member port appeared");
                }
                if let Err(err) = self.attach_all(false).and_then(|()| self.refresh_tables()) {
                    tracing::error!(interface = link.name, "{err:#}");
                }
            }
            LinkEvent::Removed { index, name } => {
                let Some(port) = self
                    .links
                    .iter()
                    .find(|(_, l)| l.index == index)
                    .map(|(n, _)| n.clone())
                else {
                    return;
                };
                tracing::warn!(
                    interface = port,
                    ?name,
                    "member port removed; classifier detached until it returns"
                );
                self.links.remove(&port);
                self.dataplane.detach(&port);
                self.port_problems
                    .insert(port, "interface does not exist".into());
                if let Err(err) = self.refresh_tables() {
                    tracing::error!("{err:#}");
                }
            }
        }
    }

    async fn reload(&mut self) -> anyhow::Result<()> {
        let new = Config::load(&self.config_path)?;
        if new.instance != self.config.instance {
            bail!(
                "instance cannot change on reload ({} -> {}); restart the agent",
                self.config.instance,
                new.instance
            );
        }
        let old = std::mem::replace(&mut self.config, new);
        for field in ["ebpf_log", "capture_queue"] {
            let changed = match field {
                "ebpf_log" => old.dataplane.ebpf_log != self.config.dataplane.ebpf_log,
                _ => old.dataplane.capture_queue != self.config.dataplane.capture_queue,
            };
            if changed {
                tracing::warn!("dataplane.{field} changed; it takes effect at the next restart");
            }
        }
        let ports = &self.config.dataplane.member_ports;
        for name in &old.dataplane.member_ports {
            if !ports.contains(name) {
                tracing::info!(
                    interface = name,
                    "member port removed from config; detaching"
                );
                self.dataplane.detach(name);
                self.links.remove(name);
                self.port_problems.remove(name);
            }
        }
        if old.dataplane.xdp_mode != self.config.dataplane.xdp_mode {
            self.dataplane.detach_all();
        }
        for name in ports.clone() {
            if self.links.contains_key(&name) {
                continue;
            }
            match links::by_name(&self.netlink, &name).await? {
                Some(link) => {
                    self.links.insert(name, link);
                }
                None => {
                    tracing::warn!(
                        interface = name,
                        "member port does not exist yet; attaching when it appears"
                    );
                    self.port_problems
                        .insert(name, "interface does not exist".into());
                }
            }
        }
        self.apply_policy()?;
        self.attach_all(false)?;
        self.refresh_tables()?;
        tracing::info!(file = %self.config_path.display(), "config reloaded");
        Ok(())
    }

    async fn on_request(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::ok(&self.status()),
            Request::Counters => match self.counters() {
                Ok(report) => Response::ok(&report),
                Err(err) => Response::error(format!("{err:#}")),
            },
            Request::Captured { limit } => {
                Response::ok(&self.captured(limit.unwrap_or(usize::MAX)))
            }
            Request::Reload => match self.reload().await {
                Ok(()) => {
                    self.update_peer_ports().await;
                    Response::ok(&self.status())
                }
                Err(err) => Response::error(format!("reload refused, old config kept: {err:#}")),
            },
            Request::Rollout => {
                if self.center.is_none() && self.device.is_none() {
                    return Response::error(
                        "rollout is not configured (no [rollout.center] or [rollout.device] section)",
                    );
                }
                let device = match &self.device {
                    Some(device) => Some(device.report().await),
                    None => None,
                };
                Response::ok(&RolloutReport {
                    center: self.center.as_ref().map(|c| c.report()),
                    device,
                })
            }
            Request::States { faulty } => match &self.inference {
                Some(inference) => inference.query(StateQuery::All { faulty }).await,
                None => Response::error("state inference is not running"),
            },
            Request::State { object } => match &self.inference {
                Some(inference) => inference.query(StateQuery::One(object)).await,
                None => Response::error("state inference is not running"),
            },
            Request::Fabric => match &self.fabric {
                Some(fabric) => fabric.show().await,
                None => Response::error(
                    "fabric sync is not configured (no [fabric] section in the config)",
                ),
            },
            Request::FabricSet { key, value } => match &self.fabric {
                Some(fabric) => fabric.set(key, value).await,
                None => Response::error(
                    "fabric sync is not configured (no [fabric] section in the config)",
                ),
            },
            Request::Mclag => match &self.mclag {
                Some(mclag) => mclag.query().await,
                None => {
                    Response::error("MC-LAG is not configured (no [mclag] section in the config)")
                }
            },
            Request::Peer | Request::Arp => match &self.peer {
                Some(peer) => {
                    peer.query(if request == Request::Peer {
                        PeerQuery::Peer
                    } else {
                        PeerQuery::Arp
                    })
                    .await
                }
                None => {
                    Response::error("peer sync is not configured (no [peer] section in the config)")
                }
            },
        }
    }

    fn status(&mut self) -> StatusReport {
        let ports = self
            .config
            .dataplane
            .member_ports
            .iter()
            .map(|name| {
                let link = self.links.get(name);
                let attached = self.dataplane.ports().get(name);
                PortStatus {
                    name: name.clone(),
                    ifindex: link.map(|l| l.index),
                    mac: link.and_then(|l| l.mac),
                    up: link.is_some_and(|l| l.up),
                    xdp_mode: attached.map(|a| a.mode),
                    problem: self.port_problems.get(name).cloned(),
                }
            })
            .collect();
        let tables = self.dataplane.tables().clone();
        StatusReport {
            instance: self.config.instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            config_file: self.config_path.display().to_string(),
            program_id: self.dataplane.program_id(CLASSIFIER_PROGRAM),
            pass_program_id: self.dataplane.program_id(PASS_PROGRAM),
            sync_own_replies: self.config.dataplane.sync_own_replies,
            vrrp_prefix_is_shared: self.config.dataplane.vrrp_prefix_is_shared,
            ports,
            peer_macs: tables.peer.into_iter().collect(),
            own_macs: tables.own.into_iter().collect(),
            shared_macs: tables.shared.into_iter().collect(),
        }
    }

    fn counters(&self) -> anyhow::Result<CountersReport> {
        let k = self.dataplane.counters().context("reading mlag_counters")?;
        Ok(CountersReport {
            seen: k.get(counters::SEEN),
            arp_replies: k.get(counters::ARP_REPLIES),
            peer: k.get(counters::PEER),
            own: k.get(counters::OWN),
            shared: k.get(counters::SHARED),
            malformed: k.get(counters::MALFORMED),
            ringbuf_full: k.get(counters::RINGBUF_FULL),
            unmatched: k.get(counters::UNMATCHED),
            captured: k.get(counters::CAPTURED),
            agent: AgentCounters {
                records_read: self.capture_stats.records.load(Ordering::Relaxed),
                invalid_records: self.capture_stats.invalid.load(Ordering::Relaxed),
                replies_received: self.replies_received,
                bad_requests: self.bad_requests.load(Ordering::Relaxed),
            },
        })
    }

    fn captured(&self, limit: usize) -> Vec<CapturedEntry> {
        let now = crate::clock::monotonic_ns();
        let names: BTreeMap<u32, &str> = self
            .dataplane
            .ports()
            .iter()
            .map(|(n, p)| (p.ifindex, n.as_str()))
            .collect();
        self.recent
            .iter()
            .take(limit)
            .map(|c| CapturedEntry {
                port: names
                    .get(&c.ifindex)
                    .map_or_else(|| format!("ifindex {}", c.ifindex), |n| n.to_string()),
                ifindex: c.ifindex,
                class: c.class.name().into(),
                outer_vlan: c.outer_vlan,
                inner_vlan: c.inner_vlan,
                vlan_count: c.vlan_count,
                dst_mac: c.dst_mac,
                sender_mac: MacAddr(c.arp.sender_mac),
                sender_ip: c.arp.sender_ip.into(),
                target_mac: MacAddr(c.arp.target_mac),
                target_ip: c.arp.target_ip.into(),
                age_ms: now.saturating_sub(c.timestamp_ns) / 1_000_000,
                frame_len: c.frame_len,
            })
            .collect()
    }
}
