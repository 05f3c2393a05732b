//! The supervisor: loads the config, starts each module in dependency
//! order, wires their channels, handles signals, hands a reloaded config to
//! the owners of its sections, and shuts down cleanly. It owns no module's
//! state and never waits on a module inside its loop (a reload is answered
//! by the dataplane task directly to whoever asked).
//!
//! ```text
//!                    netlink link watcher
//!                            │ LinkEvent (broadcast)
//!          ┌─────────────────┼──────────────────┐
//!          ▼                 ▼                  ▼
//!      dataplane ─Captured─► peersync ─SessionEvent─► mclag
//!          │  └─watch<Vec<MemberPort>>──┴──────────────┘
//!          ◄──watch peer MACs (hello)──┘  ◄──watch shared MAC──┘
//!          │
//!      fabric ──Info, remote alarms──► inference ──own alarms──► fabric
//!       ▲  └──releases heard (push)──► rollout device ◄── HTTP ── rollout center
//!       └──────────releases to announce───────────────────────────────┘
//!
//!   control socket ─► Router ─► each module's handle (typed reports)
//!   GET /metrics ─► metrics ─► the same handles (reports -> Prometheus)
//!   GET / (browser) ─► web ─► the same handles (reports -> HTML and SVG)
//!   SIGHUP / `reload` ─► supervisor ─► dataplane (live) | log "at restart"
//! ```

mod alarm_push;
mod config_push;
mod reload;
mod systemd;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{broadcast, mpsc, watch},
};

use crate::{
    bus::{LINK_EVENTS_DEPTH, LinkEvent, NEIGHBOUR_CHANGES_DEPTH, NeighbourChange},
    config::Config,
    control::{
        self,
        router::{AgentInfo, ReloadRequest, Router},
        server::ControlSocket,
    },
    dataplane::{DataplaneHandle, DataplaneStart, DataplaneStarted},
    fabric::FabricHandle,
    handles::ModuleHandles,
    inference::{
        InferenceHandle,
        config::{PeerPaths, VlanOnMlag},
    },
    mac::MacAddr,
    mclag::{MclagChannels, MclagHandle},
    metrics::MetricsHandle,
    peersync::{Identity, PeerSyncChannels, PeerSyncHandle},
    rollout::{center::CenterHandle, device::DeviceHandle},
    southbound::{links, neighbours},
    sync_thread::SyncThread,
    web::WebHandle,
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

/// Depth of the queue between the dataplane and peer sync, in records
/// (carried in the reader's batches): captures beyond it wait in the kernel
/// ring buffer.
const PEER_CAPTURE_QUEUE: usize = 1024;
/// Depth of inference's information queue; producers count what it drops.
const INFO_QUEUE: usize = 4096;
/// Depth of the session-event queue from peer sync to MC-LAG.
const SESSION_QUEUE: usize = 64;
/// How long a module may take to restore what it changed at exit.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config_path: &Path, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let started = std::time::Instant::now();
    let roles = config.roles();
    // Only the XDP classifier needs root; a center or fabric server on a
    // management host runs as any user.
    if config.dataplane.is_some() {
        ensure_root("sync-agent run")?;
    }
    tracing::info!(
        instance = config.instance,
        "agent starting with roles: {}",
        roles.join(", ")
    );
    let socket_path = socket.unwrap_or_else(|| control::socket_path_for(&config.instance));
    let control_socket = ControlSocket::bind(&socket_path).await?;

    let netlink = links::connect()?;
    // Subscribe before anything looks interfaces up, so no change falls
    // between a look-up and the watch.
    let link_events = start_link_watch()?;
    let (dataplane_links, inference_links, fabric_links) = (
        link_events.subscribe(),
        link_events.subscribe(),
        link_events.subscribe(),
    );
    // One socket on the kernel's neighbour changes for the whole agent,
    // subscribed before the modules read the table.
    let neighbour_changes = start_neighbour_watch();
    let (inference_neighbours, peer_neighbours) = (
        neighbour_changes.as_ref().map(broadcast::Sender::subscribe),
        neighbour_changes.as_ref().map(broadcast::Sender::subscribe),
    );
    let mlag_ids = reload::mlag_ids(&config);
    // With an MLAG peer, the state model has an MLAG interface per MLAG id.
    let mut inference_config = config.inference.clone();
    if let Some(peer) = &config.peer {
        inference_config.mlag_ports = mlag_ids.clone();
        // The peer switch is reached over the peer link, and over the
        // MC-LAG backup path when there is one.
        inference_config.peer_paths = Some(PeerPaths {
            link: peer.local_address,
            backup: config
                .mclag
                .as_ref()
                .and_then(|m| m.backup.as_ref())
                .map(|b| b.local_address),
        });
        inference_config.vlans = peer
            .vlan_interfaces
            .iter()
            .map(|v| VlanOnMlag {
                mlag_id: v.mlag_id,
                outer: v.outer_vlan,
                inner: v.inner_vlan,
                interface: v.interface.clone(),
            })
            .collect();
    }

    let (peer_captures_tx, peer_captures_rx) = match &config.peer {
        Some(_) => {
            let (tx, rx) =
                mpsc::channel(crate::dataplane::capture::queue_batches(PEER_CAPTURE_QUEUE));
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    // Peer sync and the capture ring's reader share a thread of their own
    // (see `sync_thread`): kept until the agent returns, after the
    // shutdown sequence has asked peer sync to restore what it changed.
    let sync_thread = match &config.peer {
        Some(_) => {
            Some(SyncThread::start("peer-sync").context("peer sync: cannot start its thread")?)
        }
        None => None,
    };
    let sync_runtime = sync_thread.as_ref().map(SyncThread::handle);
    // What peer sync and MC-LAG learn that belongs in the classifier's
    // peer table; the senders go to them when they start.
    let (peer_macs_tx, peer_macs) = watch::channel(BTreeSet::new());
    let (shared_mac_tx, shared_mac) = watch::channel(None);
    let (dataplane, ports, inject) = match config.dataplane.clone() {
        Some(section) => {
            let DataplaneStarted {
                handle,
                ports,
                inject,
            } = DataplaneHandle::spawn(DataplaneStart {
                config: section,
                instance: config.instance.clone(),
                config_file: config_path.to_path_buf(),
                mlag_ids,
                netlink: netlink.clone(),
                links: dataplane_links,
                captures_for_peer: peer_captures_tx,
                capture_runtime: sync_runtime.cloned(),
                peer_macs,
                shared_mac,
            })
            .await?;
            (Some(handle), Some(ports), Some(inject))
        }
        None => {
            drop((dataplane_links, peer_captures_tx, peer_macs, shared_mac));
            (None, None, None)
        }
    };

    let center = match config.rollout.center.clone() {
        Some(section) => Some(CenterHandle::spawn(section).await?),
        None => None,
    };
    let device = match config.rollout.device.clone() {
        Some(section) => {
            tracing::info!(
                center = %section.center,
                device = section.device,
                services = section.services.len(),
                "rollout device starting"
            );
            Some(DeviceHandle::spawn(section).await?)
        }
        None => None,
    };

    let (info_tx, info_rx) = mpsc::channel(INFO_QUEUE);
    // The fabric first: inference follows its view of the members. What
    // the fabric tells inference meanwhile waits in `info_rx`.
    let fabric = match config.fabric.clone() {
        Some(section) => Some(
            FabricHandle::spawn(
                section,
                &config.instance,
                netlink.clone(),
                fabric_links,
                info_tx.clone(),
            )
            .await
            .context("fabric")?,
        ),
        None => None,
    };
    let inference = InferenceHandle::spawn(
        inference_config,
        &config.instance,
        netlink.clone(),
        inference_links,
        inference_neighbours,
        info_rx,
        fabric.as_ref().map(FabricHandle::members),
    )
    .await
    .context("state model")?;
    alarm_push::wire(&inference, fabric.as_ref());
    config_push::wire(
        center.as_ref(),
        fabric.as_ref(),
        device.as_ref().zip(config.rollout.device.as_ref()),
    );

    let (mut peer, mut mclag) = (None, None);
    // `[peer]` needs `[dataplane]` (validated): both or neither are here.
    if let (Some(peer_config), Some(captures), Some(ports), Some(inject)) =
        (config.peer.clone(), peer_captures_rx, ports, inject)
    {
        let mclag_address: Option<IpAddr> = config
            .mclag
            .as_ref()
            .map(|m| m.address.unwrap_or(peer_config.local_address));
        let identity = Identity {
            name: config.instance.clone(),
            system_id: ports
                .borrow()
                .iter()
                .find_map(|p| p.mac)
                .unwrap_or(MacAddr([0; 6])),
            boot_id: crate::random::boot_id(),
            mclag_address,
        };
        let (sessions, liveness_watcher) = match (config.mclag.clone(), mclag_address) {
            (Some(mclag_config), Some(address)) => {
                let keepalive = peer_config.keepalive_timing();
                tracing::info!(%address, "MC-LAG starting");
                let (tx, rx) = mpsc::channel(SESSION_QUEUE);
                // The peer link's keepalive thread tells MC-LAG directly.
                let (watcher, peer_link) = watch::channel(None);
                mclag = Some(
                    MclagHandle::spawn(
                        mclag_config,
                        address,
                        keepalive,
                        identity.boot_id,
                        MclagChannels {
                            ports: ports.clone(),
                            sessions: rx,
                            shared_mac: shared_mac_tx,
                            vlans: peer_config.vlan_map(),
                            peer_link,
                        },
                        netlink.clone(),
                    )
                    .context("MC-LAG: cannot start its thread")?,
                );
                (Some(tx), Some(watcher))
            }
            _ => (None, None),
        };
        tracing::info!(local = %peer_config.local_address, peer = %peer_config.peer_address, port = peer_config.port, boot_id = identity.boot_id, "peer sync starting");
        peer = Some(PeerSyncHandle::spawn(
            peer_config,
            identity,
            inject,
            netlink.clone(),
            PeerSyncChannels {
                ports: ports.clone(),
                captures,
                sessions,
                peer_macs: peer_macs_tx,
                infos: Some(info_tx.clone()),
                liveness_watcher,
                neighbours: peer_neighbours,
            },
            sync_runtime,
        ));
    }

    // Kept for the shutdown sequence (the router owns the others).
    let (peer_at_exit, mclag_at_exit) = (peer.clone(), mclag.clone());
    // The read-only views (metrics, web view) ask every running module.
    let handles = ModuleHandles {
        instance: config.instance.clone(),
        started,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        dataplane: dataplane.clone(),
        peer: peer.clone(),
        mclag: mclag.clone(),
        inference: inference.clone(),
        fabric: fabric.clone(),
        center: center.clone(),
        device: device.clone(),
    };
    let _metrics = match config.metrics.clone() {
        Some(section) => Some(MetricsHandle::spawn(section, handles.clone()).await?),
        None => None,
    };
    let _web = match config.web.clone() {
        Some(section) => Some(WebHandle::spawn(section, handles).await?),
        None => None,
    };
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let router = Arc::new(Router {
        dataplane: dataplane.clone(),
        agent: AgentInfo {
            instance: config.instance.clone(),
            config_file: config_path.display().to_string(),
            started,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        },
        inference,
        peer,
        mclag,
        fabric,
        center: center.clone(),
        device: device.clone(),
        reload: reload_tx,
        bad_requests: Default::default(),
    });
    tokio::spawn(control_socket.serve(router.clone()));

    tracing::info!(
        instance = config.instance,
        socket = %socket_path.display(),
        roles = roles.join(" "),
        "agent running"
    );
    let mut supervisor = reload::Reloader::new(config_path, config, dataplane.clone());
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    systemd::ready(&format!("running: {}", roles.join(", ")));
    // Without a systemd watchdog the tick never fires.
    let watchdog = systemd::watchdog_interval();
    let mut watchdog_ticks = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    watchdog_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Some(interval) = watchdog {
        tracing::info!("systemd watchdog armed: probing the modules every {interval:?}");
    }
    loop {
        tokio::select! {
            Some(reply) = reload_rx.recv() => supervisor.reload(Some(reply)),
            _ = sighup.recv() => supervisor.reload(None),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = watchdog_ticks.tick(), if watchdog.is_some() => {
                systemd::watchdog_tick(&router, watchdog.unwrap_or_default()).await;
            }
        }
    }
    systemd::stopping();
    tracing::info!("shutting down");
    // What MC-LAG and peer sync changed on the member ports is put back
    // while the ports are still ours, before the dataplane detaches; a
    // stuck module cannot hold the exit forever.
    if let Some(mclag) = &mclag_at_exit
        && tokio::time::timeout(RESTORE_TIMEOUT, mclag.shutdown())
            .await
            .is_err()
    {
        tracing::error!("MC-LAG did not restore the member ports in time");
    }
    if let Some(peer) = &peer_at_exit
        && tokio::time::timeout(RESTORE_TIMEOUT, peer.shutdown())
            .await
            .is_err()
    {
        tracing::error!("peer sync did not restore arp_accept in time");
    }
    if let Some(center) = &center {
        center.shutdown().await;
    }
    if let Some(device) = &device {
        device.shutdown().await;
    }
    if let Some(dataplane) = &dataplane {
        dataplane.shutdown().await;
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// Starts the one watcher of the kernel's neighbour changes and fans them
/// out to every subscriber; None (said once, loudly) when the kernel
/// refuses the subscription: the modules then keep what they read at start.
fn start_neighbour_watch() -> Option<broadcast::Sender<NeighbourChange>> {
    let mut watch = neighbours::watch()
        .inspect_err(|err| tracing::error!(error = %err, "cannot follow the kernel's neighbour table: the state model keeps the neighbours it read at start, and entries the kernel drops are not withdrawn from the MLAG peer"))
        .ok()?;
    let (tx, _) = broadcast::channel(NEIGHBOUR_CHANGES_DEPTH);
    let fan_out = tx.clone();
    tokio::spawn(async move {
        while let Some(change) = watch.recv().await {
            // No subscriber is not an error: modules subscribe as they start.
            let _ = fan_out.send(change);
        }
        tracing::error!(
            "the netlink neighbour watcher stopped; neighbour changes are no longer seen"
        );
    });
    Some(tx)
}

/// Starts the netlink link watcher and fans its events out to every
/// subscriber.
fn start_link_watch() -> anyhow::Result<broadcast::Sender<LinkEvent>> {
    let mut watch = links::watch()?;
    let (tx, _) = broadcast::channel(LINK_EVENTS_DEPTH);
    let fan_out = tx.clone();
    tokio::spawn(async move {
        while let Some(event) = watch.recv().await {
            // No subscriber is not an error: modules subscribe as they start.
            let _ = fan_out.send(event);
        }
        tracing::error!("the netlink link watcher stopped; interface changes are no longer seen");
    });
    Ok(tx)
}
