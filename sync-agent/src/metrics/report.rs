//! The modules' reports turned into metrics. One [`Scrape`] holds what
//! every running module answered to one scrape (the same reports `show …`
//! prints); [`Scrape::registry`] builds a fresh `prometheus-client`
//! registry from it, so nothing is kept between scrapes and no module
//! keeps metrics of its own.
//!
//! Names follow Prometheus' conventions: `mlag_sync_` prefix, base units
//! (`_seconds`), `_total` on counters (added by the encoder), one metric
//! per quantity with labels for port, class, reason, peer and member.
//! A report value that only grows is a counter; a level or a count of
//! things right now is a gauge.

use std::{
    collections::{BTreeMap, HashSet},
    sync::atomic::AtomicU64,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use serde::Serialize;

use crate::{
    dataplane::report::{CountersReport, StatusReport},
    fabric::report::FabricReport,
    inference::report::StatesReport,
    mclag::{MclagReport, election::Role},
    peersync::report::PeerReport,
    rollout::{
        center::{CenterReport, CenterStats},
        device::DeviceReport,
        wire::{RolloutState, StepState},
    },
};

/// The prefix of every metric name.
pub const PREFIX: &str = "mlag_sync";

pub use crate::handles::Answer;

/// Everything one scrape gathered. `None`: the module is not configured.
#[derive(Debug, Default)]
pub struct Scrape {
    /// The agent's instance name.
    pub instance: String,
    /// Seconds since the agent started.
    pub uptime_s: f64,
    /// `show counters`.
    pub counters: Option<Answer<CountersReport>>,
    /// `status` (member ports, attach modes).
    pub status: Option<Answer<StatusReport>>,
    /// `show peer`.
    pub peer: Option<Answer<PeerReport>>,
    /// `show mclag`.
    pub mclag: Option<Answer<MclagReport>>,
    /// `show states` (inference always runs).
    pub states: Option<Answer<StatesReport>>,
    /// `show fabric`.
    pub fabric: Option<Answer<FabricReport>>,
    /// The center's rollouts and its request counters.
    pub center: Option<(CenterReport, CenterStats)>,
    /// The device side of `show rollout`.
    pub device: Option<Answer<DeviceReport>>,
}

/// The label pairs of one sample.
type Labels = Vec<(String, String)>;
type GaugeF64 = Gauge<f64, AtomicU64>;

/// A registry being filled: one family per metric name, registered the
/// first time the name is used.
struct Builder {
    registry: Registry,
    counters: BTreeMap<String, Family<Labels, Counter>>,
    gauges: BTreeMap<String, Family<Labels, GaugeF64>>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A report's field or map key as part of a metric name: `[a-z0-9_]`.
fn name_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn flag(value: bool) -> f64 {
    if value { 1.0 } else { 0.0 }
}

impl Builder {
    fn new() -> Self {
        Builder {
            registry: Registry::with_prefix(PREFIX),
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
        }
    }

    /// Adds `value` to counter `name` (without `_total`) at `pairs`.
    fn counter(&mut self, name: &str, help: &str, pairs: &[(&str, &str)], value: u64) {
        // A metric without labels is registered alone: a family would
        // write it with empty braces.
        if pairs.is_empty() && !self.counters.contains_key(name) {
            let counter = Counter::<u64>::default();
            counter.inc_by(value);
            self.registry.register(name, help, counter);
            return;
        }
        let family = self.counters.entry(name.to_string()).or_insert_with(|| {
            let family = Family::<Labels, Counter>::default();
            self.registry.register(name, help, family.clone());
            family
        });
        family.get_or_create(&labels(pairs)).inc_by(value);
    }

    /// Sets gauge `name` at `pairs`.
    fn gauge(&mut self, name: &str, help: &str, pairs: &[(&str, &str)], value: f64) {
        self.gauge_in(name, None, help, pairs, value);
    }

    /// Sets gauge `name` in seconds (`_seconds` is appended).
    fn seconds(&mut self, name: &str, help: &str, pairs: &[(&str, &str)], value: f64) {
        self.gauge_in(name, Some(Unit::Seconds), help, pairs, value);
    }

    fn gauge_in(
        &mut self,
        name: &str,
        unit: Option<Unit>,
        help: &str,
        pairs: &[(&str, &str)],
        value: f64,
    ) {
        let key = match &unit {
            Some(unit) => format!("{name}_{}", unit.as_str()),
            None => name.to_string(),
        };
        if pairs.is_empty() && !self.gauges.contains_key(&key) {
            let gauge = GaugeF64::default();
            gauge.set(value);
            match unit {
                Some(unit) => self.registry.register_with_unit(name, help, unit, gauge),
                None => self.registry.register(name, help, gauge),
            }
            return;
        }
        let family = self.gauges.entry(key).or_insert_with(|| {
            let family = Family::<Labels, GaugeF64>::default();
            match unit {
                Some(unit) => self
                    .registry
                    .register_with_unit(name, help, unit, family.clone()),
                None => self.registry.register(name, help, family.clone()),
            }
            family
        });
        family.get_or_create(&labels(pairs)).set(value);
    }

    /// Every integer field of a report's counter struct as a counter
    /// `<prefix>_<field>_total`, fields in `nested` recursed into as
    /// `<prefix>_<nested>_<field>`; `gauges` are fields that are levels,
    /// not counts. Maps (counters by reason) are left to the caller.
    fn counters_of<T: Serialize>(
        &mut self,
        prefix: &str,
        report: &T,
        nested: &[&str],
        gauges: &[&str],
        help: &str,
        pairs: &[(&str, &str)],
    ) {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(report) else {
            return;
        };
        for (field, value) in &fields {
            let name = format!("{prefix}_{}", name_part(field));
            match value {
                serde_json::Value::Number(n) => {
                    let Some(n) = n.as_u64() else { continue };
                    let help = format!("{help} `{field}`");
                    if gauges.contains(&field.as_str()) {
                        self.gauge(&name, &help, pairs, n as f64);
                    } else {
                        self.counter(&name, &help, pairs, n);
                    }
                }
                serde_json::Value::Object(_) if nested.contains(&field.as_str()) => {
                    self.counters_of(&name, value, &[], gauges, help, pairs);
                }
                _ => {}
            }
        }
    }

    fn module_up<T>(&mut self, module: &str, answer: &Answer<T>) {
        self.gauge(
            "module_up",
            "1 if the module answered this scrape, 0 if it did not (stopped or too slow)",
            &[("module", module)],
            flag(answer.is_ok()),
        );
        if let Err(why) = answer {
            tracing::debug!(module, "metrics scrape without this module: {why}");
        }
    }
}

impl Scrape {
    /// A fresh registry holding every metric of this scrape.
    pub fn registry(&self) -> Registry {
        let mut b = Builder::new();
        b.gauge(
            "agent_info",
            "The agent's instance name and version (always 1)",
            &[
                ("agent", &self.instance),
                ("version", env!("CARGO_PKG_VERSION")),
            ],
            1.0,
        );
        b.seconds(
            "agent_uptime",
            "Time since the agent started",
            &[],
            self.uptime_s,
        );
        if let Some(answer) = &self.counters {
            b.module_up("dataplane", answer);
            if let Ok(report) = answer {
                dataplane_counters(&mut b, report);
            }
        }
        if let Some(Ok(status)) = &self.status {
            dataplane_ports(&mut b, status);
        }
        if let Some(answer) = &self.peer {
            b.module_up("peer", answer);
            if let Ok(report) = answer {
                peer(&mut b, report);
            }
        }
        if let Some(answer) = &self.mclag {
            b.module_up("mclag", answer);
            if let Ok(report) = answer {
                mclag(&mut b, report);
            }
        }
        if let Some(answer) = &self.states {
            b.module_up("inference", answer);
            if let Ok(report) = answer {
                inference(&mut b, report);
            }
        }
        if let Some(answer) = &self.fabric {
            b.module_up("fabric", answer);
            if let Ok(report) = answer {
                fabric(&mut b, report);
            }
        }
        if let Some((rollouts, stats)) = &self.center {
            center(&mut b, rollouts, stats);
        }
        if let Some(answer) = &self.device {
            b.module_up("rollout_device", answer);
            if let Ok(report) = answer {
                device(&mut b, report);
            }
        }
        b.registry
    }

    /// The exposition in OpenMetrics text (what Prometheus asks for).
    pub fn openmetrics(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry());
        text
    }

    /// The exposition in Prometheus' classic text format (0.0.4), for
    /// clients that do not ask for OpenMetrics (curl, `promtool check
    /// metrics`).
    pub fn prometheus_text(&self) -> String {
        to_prometheus_text(&self.openmetrics())
    }
}

/// OpenMetrics text as Prometheus' classic text format. The two differ,
/// for what this exporter writes, only in that a counter's `HELP`/`TYPE`
/// lines name the family without `_total` in OpenMetrics and with it in the
/// classic format, and in the `# UNIT` and `# EOF` lines, which the classic
/// format does not have. `prometheus-client` writes only OpenMetrics.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match descriptor {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{kind}{name}{total} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `show counters`: the kernel's counters summed over CPUs, the agent's
/// ring-buffer reader, and replies captured per port.
fn dataplane_counters(b: &mut Builder, c: &CountersReport) {
    b.counter(
        "classifier_frames",
        "Frames seen by the XDP classifier (all member ports, all CPUs)",
        &[],
        c.seen,
    );
    b.counter(
        "classifier_arp_replies",
        "ARP replies among the frames seen",
        &[],
        c.arp_replies,
    );
    b.counter(
        "classifier_neighbour_adverts",
        "Neighbour Advertisements among the frames seen",
        &[],
        c.na_adverts,
    );
    let classified =
        "Replies and advertisements by family (arp, nd) and class (peer, own, shared, unmatched)";
    for (family, class, n) in [
        ("arp", "peer", c.peer),
        ("arp", "own", c.own),
        ("arp", "shared", c.shared),
        ("arp", "unmatched", c.unmatched),
        ("nd", "peer", c.na_peer),
        ("nd", "own", c.na_own),
        ("nd", "shared", c.na_shared),
        ("nd", "unmatched", c.na_unmatched),
    ] {
        b.counter(
            "classifier_classified",
            classified,
            &[("family", family), ("class", class)],
            n,
        );
    }
    for (family, malformed, captured, echo) in [
        ("arp", c.malformed, c.captured, c.echo_suppressed),
        ("nd", c.na_malformed, c.na_captured, c.na_echo_suppressed),
    ] {
        let f = [("family", family)];
        b.counter(
            "classifier_malformed",
            "Malformed frames, by family",
            &f,
            malformed,
        );
        b.counter(
            "classifier_captured",
            "Replies pushed to the ring buffer, by family",
            &f,
            captured,
        );
        b.counter(
            "classifier_echo_suppressed",
            "Replies not captured: the agent's own injection seen again (generic XDP)",
            &f,
            echo,
        );
    }
    b.counter(
        "classifier_ipv6_unfollowed",
        "IPv6 frames with more extension headers than the classifier follows",
        &[],
        c.ipv6_unfollowed,
    );
    b.counter(
        "ringbuf_lost",
        "Replies lost because the kernel ring buffer was full",
        &[],
        c.ringbuf_full,
    );
    b.counter(
        "ringbuf_records_read",
        "Records the agent read from the ring buffer",
        &[],
        c.agent.records_read,
    );
    b.counter(
        "ringbuf_invalid_records",
        "Ring buffer records that failed validation",
        &[],
        c.agent.invalid_records,
    );
    for (port, p) in &c.per_port {
        for (family, class, n) in [
            ("arp", "peer", p.peer),
            ("arp", "own", p.own),
            ("nd", "peer", p.na_peer),
            ("nd", "own", p.na_own),
        ] {
            b.counter(
                "port_captured",
                "Replies captured per member port, by family and class (counted by the agent)",
                &[("port", port), ("family", family), ("class", class)],
                n,
            );
        }
    }
}

/// `status`: member ports up and attached.
fn dataplane_ports(b: &mut Builder, status: &StatusReport) {
    for port in &status.ports {
        let mode = port
            .xdp_mode
            .map(|m| format!("{m:?}").to_lowercase())
            .unwrap_or_else(|| "none".into());
        b.gauge(
            "port_up",
            "1 if the member port is administratively up",
            &[("port", &port.name)],
            flag(port.up),
        );
        b.gauge(
            "port_attached",
            "1 if the classifier is attached to the member port, in the mode labelled",
            &[("port", &port.name), ("mode", &mode)],
            flag(port.xdp_mode.is_some()),
        );
    }
}

/// The session states `show peer` reports.
const PEER_STATES: [&str; 4] = ["up", "opening", "connecting", "down"];

/// `show peer`: session state, tables, sync counters, rejects by reason.
fn peer(b: &mut Builder, p: &PeerReport) {
    let peer = [("peer", p.peer_address.as_str())];
    let mut states: Vec<&str> = PEER_STATES.to_vec();
    if !states.contains(&p.state.as_str()) {
        states.push(&p.state);
    }
    for state in states {
        b.gauge(
            "peer_session_state",
            "1 for the peer session's current state (up, opening, connecting, down)",
            &[("peer", &p.peer_address), ("state", state)],
            flag(state == p.state),
        );
    }
    b.gauge(
        "peer_alive",
        "1 while the peer's keepalives arrive",
        &peer,
        flag(p.alive),
    );
    if let Some(up) = p.session_up_s {
        b.seconds(
            "peer_session_up",
            "How long the session has been up",
            &peer,
            up as f64,
        );
    }
    if let Some(ago) = p.last_hello_ms_ago {
        b.seconds(
            "peer_last_hello_age",
            "Time since the peer's hello",
            &peer,
            ago as f64 / 1000.0,
        );
    }
    for (table, n, help) in [
        ("send", p.entries, "Entries in the send table"),
        ("pending", p.pending, "Entries waiting to be sent"),
        ("unacked", p.unacked, "Entries sent and not acknowledged"),
        ("learnt", p.learnt, "Entries learnt from the peer"),
    ] {
        b.gauge(&format!("peer_{table}_entries"), help, &peer, n as f64);
    }
    b.counter(
        "peer_send_table_evicted",
        "Send-table entries forgotten at the table bound",
        &peer,
        p.evicted,
    );
    b.counters_of(
        "peer",
        &p.counters,
        &["nd"],
        &["refresh_interfaces"],
        "Peer sync counter (show peer)",
        &peer,
    );
    for (reason, n) in &p.counters.rejected {
        b.counter(
            "peer_rejected",
            "Inputs from the peer (or a stranger) refused, by reason",
            &[("peer", &p.peer_address), ("reason", reason)],
            *n,
        );
    }
    for (reason, n) in &p.counters.local_failures {
        b.counter(
            "peer_local_failures",
            "Failures of this switch in peer sync, by reason",
            &[("peer", &p.peer_address), ("reason", reason)],
            *n,
        );
    }
}

/// `show mclag`: role, liveness, holds, counters.
fn mclag(b: &mut Builder, m: &MclagReport) {
    for role in [Role::Master, Role::Slave, Role::Undecided] {
        let name = format!("{role:?}").to_lowercase();
        b.gauge(
            "mclag_role",
            "1 for this switch's MC-LAG role (master, slave, undecided)",
            &[("role", &name)],
            flag(role == m.role),
        );
    }
    b.gauge(
        "mclag_peer_alive",
        "1 while the peer is alive on the peer link",
        &[],
        flag(m.peer_alive),
    );
    if let Some(alive) = m.backup_alive {
        b.gauge(
            "mclag_backup_alive",
            "1 while the peer is alive on the backup path",
            &[],
            flag(alive),
        );
    }
    b.gauge(
        "mclag_split_brain",
        "1 while the peer link is down and the peer alive on the backup path",
        &[],
        flag(m.split_brain),
    );
    b.gauge(
        "mclag_converged",
        "1 once a bulk sync from the peer has been applied",
        &[],
        flag(m.converged),
    );
    b.gauge(
        "mclag_mismatches",
        "Differences between this switch and its peer now (consistency check)",
        &[],
        m.mismatches.len() as f64,
    );
    for port in &m.ports {
        b.gauge(
            "mclag_port_held_down",
            "1 while MC-LAG holds the member port out of service",
            &[("port", &port.name)],
            flag(port.held_down),
        );
    }
    for (name, n, help) in [
        ("mclag_role_changes", m.role_changes, "MC-LAG role changes"),
        (
            "mclag_announcements_sent",
            m.announcements_sent,
            "Gratuitous ARP and unsolicited NA frames sent",
        ),
        (
            "mclag_mismatches_found",
            m.mismatches_found,
            "Consistency differences found",
        ),
        (
            "mclag_ports_taken_down",
            m.ports_taken_down,
            "Times member ports were taken out of service",
        ),
        (
            "mclag_ports_brought_up",
            m.ports_brought_up,
            "Times member ports were brought back into service",
        ),
    ] {
        b.counter(name, help, &[], n);
    }
}

/// `show states`: objects by fault level, alarms, counters.
fn inference(b: &mut Builder, s: &StatesReport) {
    let mut by_level: BTreeMap<u8, u64> = BTreeMap::from([(0, 0)]);
    let mut alarms = 0u64;
    for object in &s.objects {
        *by_level.entry(object.fault_level).or_default() += 1;
        // An alarm: a fault reported on the object itself (an actual
        // state), as opposed to one inferred from its dependencies.
        if object.actual.iter().any(|a| a.level > 0) {
            alarms += 1;
        }
        if object.fault_level > 0 {
            b.gauge(
                "inference_object_fault_level",
                "Effective fault level of each faulty object",
                &[("object", &object.id.0), ("kind", &object.kind)],
                f64::from(object.fault_level),
            );
        }
    }
    for (level, n) in by_level {
        b.gauge(
            "inference_objects",
            "Objects of the state model, by effective fault level (0: normal)",
            &[("level", &level.to_string())],
            n as f64,
        );
    }
    b.gauge(
        "inference_alarms",
        "Objects with a fault reported on them (an actual state above level 0)",
        &[],
        alarms as f64,
    );
    let c = &s.counters;
    for (name, n, help) in [
        ("inference_infos", c.infos, "Information applied"),
        (
            "inference_unknown_infos",
            c.unknown_infos,
            "Information no rule knows",
        ),
        (
            "inference_unknown_objects",
            c.unknown_objects,
            "Information about objects not in the model",
        ),
        (
            "inference_state_changes",
            c.changes,
            "Effective state changes",
        ),
        (
            "inference_alarms_raised",
            c.alarms.raised,
            "Root-cause alarms raised",
        ),
        (
            "inference_alarms_cleared",
            c.alarms.cleared,
            "Root-cause alarms cleared",
        ),
    ] {
        b.counter(name, help, &[], n);
    }
    b.gauge(
        "inference_alarms_active",
        "Root-cause alarms raised now",
        &[],
        c.alarms.active as f64,
    );
    b.gauge(
        "inference_alarms_suppressed",
        "Objects whose alarm is suppressed under a root cause now",
        &[],
        c.alarms.suppressed_now as f64,
    );
}

/// Fabric member states `show fabric` reports.
const MEMBER_STATES: [&str; 3] = ["up", "silent", "departed"];

/// `show fabric`: role, broker, members by state, rejects by kind, counters.
fn fabric(b: &mut Builder, f: &FabricReport) {
    let role = format!("{:?}", f.role).to_lowercase();
    b.gauge(
        "fabric_role",
        "1 for this member's fabric role (labelled)",
        &[("role", &role)],
        1.0,
    );
    b.gauge(
        "fabric_broker_connected",
        "1 while connected to the broker in use",
        &[],
        flag(f.connected),
    );
    if let Some(active) = f.active {
        b.gauge(
            "fabric_server_active",
            "1 while this server announces (servers only)",
            &[],
            flag(active),
        );
    }
    let mut by_state: BTreeMap<&str, u64> = MEMBER_STATES.iter().map(|s| (*s, 0)).collect();
    for member in &f.members {
        *by_state.entry(member.state.as_str()).or_default() += 1;
        if let Some(ago) = member.last_heartbeat_ms_ago {
            b.seconds(
                "fabric_member_heartbeat_age",
                "Time since each member's last heartbeat was heard",
                &[("member", &member.identity)],
                ago as f64 / 1000.0,
            );
        }
    }
    for (state, n) in by_state {
        b.gauge(
            "fabric_members",
            "Members known, this one included, by state (up, silent, departed)",
            &[("state", state)],
            n as f64,
        );
    }
    b.gauge(
        "fabric_faults",
        "Faults recorded",
        &[],
        f.faults.len() as f64,
    );
    b.gauge(
        "fabric_pending_changes",
        "This member's config changes awaiting acknowledgement",
        &[],
        f.pending_changes.len() as f64,
    );
    for (kind, n) in &f.rejected {
        b.counter(
            "fabric_rejected",
            "Fabric messages refused, by kind",
            &[("kind", kind)],
            *n,
        );
    }
    for (name, n) in &f.counters {
        if f.rejected.contains_key(name) {
            continue;
        }
        b.counter(
            &format!("fabric_{}", name_part(name)),
            &format!("Fabric counter `{name}` (show fabric)"),
            &[],
            *n,
        );
    }
}

/// The config center: rollouts and steps by state, requests, long polls.
fn center(b: &mut Builder, report: &CenterReport, stats: &CenterStats) {
    let rollout_states = [
        (RolloutState::Running, "running"),
        (RolloutState::Paused, "paused"),
        (RolloutState::Done, "done"),
    ];
    let step_states = [
        (StepState::Pending, "pending"),
        (StepState::Assigned, "assigned"),
        (StepState::Succeeded, "succeeded"),
        (StepState::Failed, "failed"),
        (StepState::Skipped, "skipped"),
    ];
    for (state, name) in rollout_states {
        let n = report.rollouts.iter().filter(|r| r.state == state).count();
        b.gauge(
            "rollouts",
            "Rollouts the center remembers, by state",
            &[("state", name)],
            n as f64,
        );
    }
    for (state, name) in step_states {
        let n = report
            .rollouts
            .iter()
            .flat_map(|r| r.batches.iter().flatten())
            .filter(|s| s.state == state)
            .count();
        b.gauge(
            "rollout_steps",
            "Steps (device, service) of the remembered rollouts, by state",
            &[("state", name)],
            n as f64,
        );
    }
    for (code, n) in &stats.requests {
        b.counter(
            "center_requests",
            "Config center HTTP requests answered, by status code",
            &[("code", &code.to_string())],
            *n,
        );
    }
    for (reason, n) in &stats.refused {
        b.counter(
            "center_refused",
            "Config center requests refused, by reason",
            &[("reason", reason)],
            *n,
        );
    }
    b.gauge(
        "center_long_polls_waiting",
        "Device long polls held by the center now",
        &[],
        stats.waiting_polls as f64,
    );
    b.gauge(
        "center_runs_engine",
        "1 if this center runs the rollout engine (the elected one of several centers on etcd)",
        &[],
        flag(stats.runs_engine),
    );
}

/// The device side of rollout: connection and counters.
fn device(b: &mut Builder, d: &DeviceReport) {
    b.gauge(
        "device_center_connected",
        "1 if the last request to the config center got an answer",
        &[],
        flag(d.connected),
    );
    b.counters_of(
        "device",
        &d.counters,
        &[],
        &[],
        "Rollout device counter (show rollout)",
        &[],
    );
}

#[cfg(test)]
mod tests;
