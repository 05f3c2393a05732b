//! The dataplane task: the one owner of the loaded classifier, the member
//! ports' kernel view and the recent captures. Its loop takes one input at
//! a time — a captured batch, an interface change, an operator request —
//! and never waits on another module. Captures reach peer sync straight
//! from the reader (one task hop less on the sync latency path); the task
//! gets them afterwards for its counters and `show captured`. With peer
//! sync running, the reader runs on its thread (`crate::sync_thread`), so
//! the hand-over to peer sync stays on one thread.
//!
//! ```text
//!   capture::run (child) ──mpsc CaptureBatch──► captures_for_peer (peer sync)
//!        └───────────────mpsc CaptureBatch─►┐
//!   link events ──────────broadcast───────►├─► Task
//!   DataplaneHandle ──────mpsc Event──────►┤      └──► watch ports
//!   peer MACs (peer sync), shared MAC (MC-LAG) ─watch─►┘
//!   drain_kernel_log (child, only when ebpf_log is on)
//! ```

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use anyhow::bail;
use rtnetlink::Handle;
use tokio::sync::{
    broadcast::{self, error::RecvError},
    mpsc, watch,
};

use super::{
    DataplaneHandle, DataplaneStart, DataplaneStarted, INJECT_PROGRAM, INJECT_REDIRECT_PROGRAM,
    capture::{self, CaptureStats},
    classifier::Classifier,
    config::{DataplaneConfig, InjectConfig},
    events::Event,
    policy,
    report::PortCaptures,
};
use crate::bus::{Captured, Link, LinkEvent, MemberPort};
use crate::mac::MacAddr;
use crate::southbound::{
    inject::{self, Injector},
    links,
};

/// The state the dataplane task owns.
pub(super) struct Task {
    pub(super) config: DataplaneConfig,
    pub(super) instance: String,
    pub(super) config_file: PathBuf,
    pub(super) started: Instant,
    pub(super) classifier: Classifier,
    /// MLAG id of each member port, in `member_ports` order.
    pub(super) mlag_ids: Vec<(String, u32)>,
    /// Current kernel view of each configured member port that exists.
    pub(super) links: BTreeMap<String, Link>,
    /// Why a configured port is not attached.
    pub(super) port_problems: BTreeMap<String, String>,
    pub(super) recent: VecDeque<Captured>,
    pub(super) replies_received: u64,
    /// Replies captured per interface index (see `CountersReport::per_port`).
    pub(super) per_port: BTreeMap<u32, PortCaptures>,
    pub(super) capture_stats: Arc<CaptureStats>,
    pub(super) netlink: Handle,
    ports_tx: watch::Sender<Vec<MemberPort>>,
    /// Peer MACs learnt at run time: the peer's hello, the MC-LAG shared MAC.
    pub(super) learnt_peer_macs: BTreeSet<MacAddr>,
}

impl Task {
    /// Loads, attaches and starts (see [`DataplaneHandle::spawn`]).
    pub(super) async fn start(start: DataplaneStart) -> anyhow::Result<DataplaneStarted> {
        let DataplaneStart {
            config,
            instance,
            config_file,
            mlag_ids,
            netlink,
            links: link_events,
            captures_for_peer,
            capture_runtime,
            peer_macs,
            shared_mac,
        } = start;
        let found = resolve_ports(&netlink, &config).await?;
        let (mut classifier, ring, logger) = Classifier::load(config.ebpf_log)?;
        let inject = choose_injector(&mut classifier, config.inject)?;
        let (ports_tx, ports) = watch::channel(Vec::new());
        let capture_stats = Arc::new(CaptureStats::default());
        let mut task = Task {
            recent: VecDeque::with_capacity(config.recent_captures),
            config,
            instance,
            config_file,
            started: Instant::now(),
            classifier,
            mlag_ids,
            links: found,
            port_problems: BTreeMap::new(),
            replies_received: 0,
            per_port: BTreeMap::new(),
            capture_stats: capture_stats.clone(),
            netlink,
            ports_tx,
            learnt_peer_macs: BTreeSet::new(),
        };
        task.apply_policy()?;
        task.attach_all(true)?;
        task.refresh_tables()?;
        task.publish_ports();

        let (capture_tx, capture_rx) =
            mpsc::channel(capture::queue_batches(task.config.capture_queue));
        let reader = async move {
            if let Err(err) = capture::run(ring, captures_for_peer, capture_tx, capture_stats).await
            {
                tracing::error!(error = %err, "capture reader stopped");
            }
        };
        match capture_runtime {
            Some(runtime) => drop(runtime.spawn(reader)),
            None => drop(tokio::spawn(reader)),
        }
        if let Some(logger) = logger {
            tokio::spawn(drain_kernel_log(logger));
        }
        let (events, events_rx) = mpsc::channel(64);
        tokio::spawn(task.run(
            capture_rx,
            link_events,
            events_rx,
            LearntMacs {
                peer: peer_macs,
                shared: shared_mac,
            },
        ));
        Ok(DataplaneStarted {
            handle: DataplaneHandle { events },
            ports,
            inject,
        })
    }

    async fn run(
        mut self,
        mut captures: mpsc::Receiver<capture::CaptureBatch>,
        mut link_events: broadcast::Receiver<LinkEvent>,
        mut events: mpsc::Receiver<Event>,
        mut learnt: LearntMacs,
    ) {
        loop {
            tokio::select! {
                Ok(()) = learnt.peer.changed() => self.process_learnt_macs(&mut learnt),
                Ok(()) = learnt.shared.changed() => self.process_learnt_macs(&mut learnt),
                Some(batch) = captures.recv() => {
                    for captured in batch.iter() {
                        self.process_capture(captured.clone());
                    }
                }
                link = link_events.recv() => match link {
                    Ok(event) => self.process_link(event),
                    Err(RecvError::Lagged(missed)) => self.process_links_lagged(missed).await,
                    Err(RecvError::Closed) => {}
                },
                event = events.recv() => match event {
                    Some(event) => {
                        if !self.process_request(event).await {
                            return;
                        }
                    }
                    None => {
                        self.classifier.detach_all();
                        return;
                    }
                },
            }
        }
    }

    pub(super) fn apply_policy(&mut self) -> anyhow::Result<()> {
        self.classifier
            .set_policy(policy::policy_word(&self.config))?;
        Ok(())
    }

    pub(super) fn refresh_tables(&mut self) -> anyhow::Result<()> {
        let wanted = policy::wanted_tables(
            &self.config,
            self.links.values().filter_map(|l| l.mac),
            self.learnt_peer_macs.iter().copied(),
        );
        if &wanted != self.classifier.tables() {
            tracing::info!(
                peer = wanted.peer.len(),
                own = wanted.own.len(),
                shared = wanted.shared.len(),
                "MAC tables updated"
            );
            self.classifier.set_tables(wanted)?;
        }
        Ok(())
    }

    /// Attaches to every configured port that exists and is not attached.
    /// At start-up (`strict`) a failure is fatal; later it is recorded.
    pub(super) fn attach_all(&mut self, strict: bool) -> anyhow::Result<()> {
        let mode = self.config.xdp_mode;
        for name in self.config.member_ports.clone() {
            let Some(link) = self.links.get(&name) else {
                continue;
            };
            let ifindex = link.index;
            if self
                .classifier
                .ports()
                .get(&name)
                .is_some_and(|p| p.ifindex == ifindex)
            {
                continue;
            }
            match self.classifier.attach(&name, ifindex, mode) {
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

    /// Tells peer sync and MC-LAG the member ports, if they changed.
    pub(super) fn publish_ports(&mut self) {
        let ports: Vec<MemberPort> = self
            .mlag_ids
            .iter()
            .map(|(name, mlag_id)| {
                let link = self.links.get(name);
                MemberPort {
                    ifindex: link.map(|l| l.index),
                    mac: link.and_then(|l| l.mac),
                    mtu: link.and_then(|l| l.mtu),
                    name: name.clone(),
                    mlag_id: *mlag_id,
                }
            })
            .collect();
        self.ports_tx.send_if_modified(|current| {
            if *current == ports {
                false
            } else {
                *current = ports;
                true
            }
        });
    }
}

/// What other modules learn that belongs in the peer table.
pub(super) struct LearntMacs {
    pub(super) peer: watch::Receiver<BTreeSet<MacAddr>>,
    pub(super) shared: watch::Receiver<Option<MacAddr>>,
}

async fn resolve_ports(
    netlink: &Handle,
    config: &DataplaneConfig,
) -> anyhow::Result<BTreeMap<String, Link>> {
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    for (i, name) in config.member_ports.iter().enumerate() {
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

/// The means of handing synced replies to the receive path (SPEC 2.3):
/// live frames where the kernel accepts them, else the tc redirect, which
/// attaches `mlag_inject_tc` to the loopback's egress. Logged either way.
fn choose_injector(classifier: &mut Classifier, choice: InjectConfig) -> anyhow::Result<Injector> {
    let live = classifier.program_owned_fd(INJECT_PROGRAM)?;
    let tc_redirect = |classifier: &mut Classifier| -> anyhow::Result<Injector> {
        classifier.attach_inject_redirect()?;
        Injector::tc_redirect().map_err(|err| {
            anyhow::anyhow!("injection by tc redirect: packet socket on the loopback device: {err}")
        })
    };
    let injector = match choice {
        InjectConfig::LiveFrame => Injector::live_frame(live),
        InjectConfig::TcRedirect => tc_redirect(classifier)?,
        InjectConfig::Auto => match inject::probe_live_frames(live.as_raw_fd()) {
            Ok(()) => Injector::live_frame(live),
            Err(err) => {
                tracing::info!(
                    "this kernel refuses BPF_PROG_RUN live frames ({err}); synced replies reach the receive path through a tc redirect on the loopback device ({INJECT_REDIRECT_PROGRAM})"
                );
                tc_redirect(classifier)?
            }
        },
    };
    tracing::info!(
        method = injector.method().name(),
        "kernel learning: injection method chosen"
    );
    Ok(injector)
}
