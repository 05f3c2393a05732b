//! The dataplane task's inputs and one handler for each: a captured reply,
//! an interface change, and the operator's requests.

use std::collections::BTreeMap;

use anyhow::Context as _;
use sync_common::{capture::Class, counters};
use tokio::sync::oneshot;

use super::{
    CLASSIFIER_PROGRAM, PASS_PROGRAM,
    config::DataplaneConfig,
    report::{
        AgentCounters, CapturedEntry, CapturedList, CountersReport, PortCaptures, PortStatus,
        StatusReport,
    },
    task::{LearntMacs, Task},
};
use crate::{
    bus::{Captured, LinkEvent},
    clock::monotonic_ns,
    mac::MacAddr,
    southbound::links,
};

/// Operator requests to the dataplane task.
pub(super) enum Event {
    /// `status`.
    Status(oneshot::Sender<StatusReport>),
    /// `show counters`.
    Counters(oneshot::Sender<Result<CountersReport, String>>),
    /// `show captured`.
    Captured {
        limit: usize,
        reply: oneshot::Sender<CapturedList>,
    },
    /// A reloaded `[dataplane]` section.
    Reload {
        config: Box<DataplaneConfig>,
        mlag_ids: Vec<(String, u32)>,
        reply: oneshot::Sender<Result<StatusReport, String>>,
    },
    /// Detach and stop.
    Shutdown(oneshot::Sender<()>),
}

impl Task {
    /// A reply the classifier captured (the reader already handed it to
    /// peer sync): counted, and into the recent list.
    pub(super) fn process_capture(&mut self, captured: Captured) {
        self.replies_received += 1;
        let port = self.per_port.entry(captured.ifindex).or_default();
        match (captured.nd.is_some(), captured.class) {
            (false, Class::Peer) => port.peer += 1,
            (false, _) => port.own += 1,
            (true, Class::Peer) => port.na_peer += 1,
            (true, _) => port.na_own += 1,
        }
        match &captured.nd {
            None => tracing::debug!(
                ifindex = captured.ifindex,
                class = captured.class.name(),
                sender = %std::net::Ipv4Addr::from(captured.arp.sender_ip),
                "reply captured"
            ),
            Some(nd) => tracing::debug!(
                ifindex = captured.ifindex,
                class = captured.class.name(),
                target = %std::net::Ipv6Addr::from(nd.target),
                "neighbour advertisement captured"
            ),
        }
        if self.recent.len() >= self.config.recent_captures {
            self.recent.pop_back();
        }
        self.recent.push_front(captured);
    }

    /// An interface changed or went away: attach, detach, retable.
    pub(super) fn process_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Changed(link) => {
                if !self.config.member_ports.contains(&link.name) {
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
                self.classifier.detach(&port);
                self.port_problems
                    .insert(port, "interface does not exist".into());
                if let Err(err) = self.refresh_tables() {
                    tracing::error!("{err:#}");
                }
            }
        }
        self.publish_ports();
    }

    /// The peer's MACs (its hello) or the MC-LAG shared MAC changed: retable.
    pub(super) fn process_learnt_macs(&mut self, learnt: &mut LearntMacs) {
        let mut macs = learnt.peer.borrow_and_update().clone();
        macs.extend(*learnt.shared.borrow_and_update());
        if macs != self.learnt_peer_macs {
            tracing::info!(macs = ?macs, "peer MACs learnt from the peer session and MC-LAG");
            self.learnt_peer_macs = macs;
            if let Err(err) = self.refresh_tables() {
                tracing::error!("{err:#}");
            }
        }
    }

    /// Link events were lost (the broadcast lagged): read every member port
    /// again so nothing stays stale.
    pub(super) async fn process_links_lagged(&mut self, missed: u64) {
        tracing::warn!(
            missed,
            "interface events missed; re-reading the member ports"
        );
        for name in self.config.member_ports.clone() {
            match links::by_name(&self.netlink, &name).await {
                Ok(Some(link)) => self.process_link(LinkEvent::Changed(link)),
                Ok(None) => {
                    if let Some(link) = self.links.get(&name) {
                        let index = link.index;
                        self.process_link(LinkEvent::Removed {
                            index,
                            name: Some(name),
                        });
                    }
                }
                Err(err) => tracing::error!(interface = name, "{err:#}"),
            }
        }
    }

    /// An operator request.
    pub(super) async fn process_request(&mut self, event: Event) -> bool {
        match event {
            Event::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Event::Counters(reply) => {
                let _ = reply.send(self.counters().map_err(|e| format!("{e:#}")));
            }
            Event::Captured { limit, reply } => {
                let _ = reply.send(self.captured(limit));
            }
            Event::Reload {
                config,
                mlag_ids,
                reply,
            } => {
                let result = self
                    .reload(*config, mlag_ids)
                    .await
                    .map(|()| self.status())
                    .map_err(|e| format!("{e:#}"));
                let _ = reply.send(result);
            }
            Event::Shutdown(reply) => {
                tracing::info!("shutting down: detaching from every port");
                self.classifier.detach_all();
                let _ = reply.send(());
                return false;
            }
        }
        true
    }

    /// A new `[dataplane]` section, applied live.
    async fn reload(
        &mut self,
        new: DataplaneConfig,
        mlag_ids: Vec<(String, u32)>,
    ) -> anyhow::Result<()> {
        let old = std::mem::replace(&mut self.config, new);
        self.mlag_ids = mlag_ids;
        if old.ebpf_log != self.config.ebpf_log {
            tracing::warn!("dataplane.ebpf_log changed; it takes effect at the next restart");
        }
        if old.capture_queue != self.config.capture_queue {
            tracing::warn!("dataplane.capture_queue changed; it takes effect at the next restart");
        }
        let ports = &self.config.member_ports;
        for name in &old.member_ports {
            if !ports.contains(name) {
                tracing::info!(
                    interface = name,
                    "member port removed from config; detaching"
                );
                self.classifier.detach(name);
                self.links.remove(name);
                self.port_problems.remove(name);
            }
        }
        if old.xdp_mode != self.config.xdp_mode {
            self.classifier.detach_all();
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
        self.publish_ports();
        Ok(())
    }

    fn status(&mut self) -> StatusReport {
        let ports = self
            .config
            .member_ports
            .iter()
            .map(|name| {
                let link = self.links.get(name);
                let attached = self.classifier.ports().get(name);
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
        let tables = self.classifier.tables().clone();
        StatusReport {
            instance: self.instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            config_file: self.config_file.display().to_string(),
            program_id: self.classifier.program_id(CLASSIFIER_PROGRAM),
            pass_program_id: self.classifier.program_id(PASS_PROGRAM),
            inject_redirect_program_id: self.classifier.inject_redirect_program_id(),
            sync_own_replies: self.config.sync_own_replies,
            vrrp_prefix_is_shared: self.config.vrrp_prefix_is_shared,
            ports,
            peer_macs: tables.peer.into_iter().collect(),
            own_macs: tables.own.into_iter().collect(),
            shared_macs: tables.shared.into_iter().collect(),
            awaiting_restart: Vec::new(),
            roles: Vec::new(),
        }
    }

    fn counters(&self) -> anyhow::Result<CountersReport> {
        use std::sync::atomic::Ordering;
        let k = self
            .classifier
            .counters()
            .context("reading mlag_counters")?;
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
            echo_suppressed: k.get(counters::ECHO_SUPPRESSED),
            na_adverts: k.get(counters::NA_ADVERTS),
            na_peer: k.get(counters::NA_PEER),
            na_own: k.get(counters::NA_OWN),
            na_shared: k.get(counters::NA_SHARED),
            na_unmatched: k.get(counters::NA_UNMATCHED),
            na_malformed: k.get(counters::NA_MALFORMED),
            na_captured: k.get(counters::NA_CAPTURED),
            na_echo_suppressed: k.get(counters::NA_ECHO_SUPPRESSED),
            ipv6_unfollowed: k.get(counters::IPV6_UNFOLLOWED),
            agent: AgentCounters {
                records_read: self.capture_stats.records.load(Ordering::Relaxed),
                invalid_records: self.capture_stats.invalid.load(Ordering::Relaxed),
                replies_received: self.replies_received,
                bad_requests: 0,
            },
            per_port: self.per_port_by_name(),
        })
    }

    /// Member port names by interface index.
    fn port_names(&self) -> BTreeMap<u32, &str> {
        self.classifier
            .ports()
            .iter()
            .map(|(n, p)| (p.ifindex, n.as_str()))
            .collect()
    }

    /// The per-port capture counts, keyed by port name (`ifindex N` for an
    /// index no member port has now).
    fn per_port_by_name(&self) -> BTreeMap<String, PortCaptures> {
        let names = self.port_names();
        self.per_port
            .iter()
            .map(|(ifindex, counts)| {
                let name = names
                    .get(ifindex)
                    .map_or_else(|| format!("ifindex {ifindex}"), |n| n.to_string());
                (name, *counts)
            })
            .collect()
    }

    fn captured(&self, limit: usize) -> CapturedList {
        let now = monotonic_ns();
        let names = self.port_names();
        CapturedList(
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
                    nd_target: c.nd.map(|nd| nd.target.into()),
                    nd_target_mac: c.nd.and_then(|nd| nd.target_mac).map(MacAddr),
                })
                .collect(),
        )
    }
}
