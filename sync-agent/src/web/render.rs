//! The page: one HTML document with a section per running module, built
//! with `maud` (every report value is escaped by the template engine; only
//! the SVG that [`super::graph`] draws is inserted as markup), and the
//! sections alone for `GET /api/view`, which the page's script polls and
//! swaps in.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Serialize;

use super::{
    graph::{self, Graph},
    report::{Answer, Section, Snapshot, ViewJson, WebStats},
};
use crate::{
    fabric::report::FabricReport,
    inference::report::{AlarmsReport, StatesReport},
    mclag::{MclagReport, election::Role},
    peersync::report::{ArpReportEntry, PeerReport},
    rollout::{
        center::CenterReport,
        device::DeviceReport,
        wire::{Rollout, StepState},
    },
};

/// The most synced entries listed per direction and family.
const MAX_ENTRIES: usize = 20;
/// The most faults listed.
const MAX_FAULTS: usize = 12;
/// The most rollouts listed.
const MAX_ROLLOUTS: usize = 8;

/// The page's script: polls `/api/view` every `data-refresh-ms` and swaps
/// the sections in (served as `/app.js`, so the page needs no inline script).
pub const APP_JS: &str = include_str!("app.js");
/// The page's style sheet (served as `/style.css`).
pub const STYLE_CSS: &str = include_str!("style.css");

/// A serde enum's name as it appears in `show … -j` (`master`, `succeeded`).
fn word<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Why a module's report is missing.
fn unanswered(what: &str, err: &str) -> Markup {
    html! { p.error { (what) " did not answer: " (err) } }
}

/// A graph's SVG, or a note when there is nothing to draw or the layout
/// failed (`failures` counts the latter).
fn drawn(graph: &Graph, empty: &str, failures: &mut u64) -> Markup {
    // The layout library asserts on inputs it cannot place; a page must
    // still come back with its tables.
    let svg = std::panic::catch_unwind(|| graph.svg());
    if svg.is_err() {
        *failures += 1;
    }
    html! {
        @match svg {
            Ok(Some(svg)) => div.graph { (PreEscaped(svg)) },
            Ok(None) => p.empty { (empty) },
            Err(_) => p.error { "the layout library could not draw this graph; see the table" },
        }
        @if graph.left_out > 0 {
            p.note { (graph.left_out) " more not drawn (the graph shows " (graph::MAX_NODES) ")" }
        }
    }
}

/// Renders every section of `snapshot`; `failures` counts graphs the
/// layout could not draw.
pub fn sections(snapshot: &Snapshot, failures: &mut u64) -> Vec<Section> {
    let mut out = Vec::new();
    if snapshot.mclag.is_some() || snapshot.peer.is_some() {
        out.push(Section {
            id: "mlag",
            title: "MLAG pair",
            html: mlag(snapshot).into_string(),
        });
    }
    if let Some(fabric) = &snapshot.fabric {
        out.push(Section {
            id: "fabric",
            title: "Fabric",
            html: match fabric {
                Ok(report) => fabric_section(report, failures),
                Err(err) => unanswered("fabric sync", err),
            }
            .into_string(),
        });
    }
    if let Some(faulty) = &snapshot.faulty {
        out.push(Section {
            id: "inference",
            title: "Faulty objects",
            html: match faulty {
                Ok(states) => inference(states, snapshot.alarms.as_ref(), failures),
                Err(err) => unanswered("the state model", err),
            }
            .into_string(),
        });
    }
    if let Some(rollout) = &snapshot.rollout {
        out.push(Section {
            id: "rollout",
            title: "Rollouts",
            html: html! {
                @if let Some(center) = &rollout.center { (center_rollouts(center)) }
                @if let Some(device) = &rollout.device { (device_services(device)) }
            }
            .into_string(),
        });
    }
    out
}

fn mclag_role(report: Option<&Answer<MclagReport>>) -> (String, String) {
    match report {
        Some(Ok(m)) => {
            let peer = match m.role {
                Role::Master => "slave",
                Role::Slave => "master",
                Role::Undecided => "undecided",
            };
            (word(&m.role), peer.into())
        }
        _ => ("-".into(), "-".into()),
    }
}

fn mlag(s: &Snapshot) -> Markup {
    let (role, peer_role) = mclag_role(s.mclag.as_ref());
    let peer = s.peer.as_ref().and_then(|p| p.as_ref().ok());
    let peer_name = peer
        .and_then(|p| p.peer_name.clone())
        .or_else(|| peer.map(|p| p.peer_address.clone()))
        .unwrap_or_else(|| "peer".into());
    html! {
        div.pair {
            div.switch.local {
                h3 { (s.instance) }
                p { "this switch" }
                p { "MC-LAG " span class={"role " (role)} { (role) } }
            }
            div.session {
                @match &s.peer {
                    Some(Ok(p)) => {
                        p { "session " span class={"state " (p.state)} { (p.state) } }
                        p { (p.local_address) " ⇄ " (p.peer_address) }
                        p { "version " (or_dash(p.negotiated_version.as_ref()))
                            ", up " (or_dash(p.session_up_s)) " s, last hello "
                            (or_dash(p.last_hello_ms_ago)) " ms ago" }
                    }
                    Some(Err(err)) => (unanswered("peer sync", err)),
                    None => p { "no peer sync" },
                }
            }
            div.switch.peer {
                h3 { (peer_name) }
                p { "the peer" }
                p { "MC-LAG " span class={"role " (peer_role)} { (peer_role) } }
            }
        }
        @match &s.mclag {
            Some(Ok(m)) => (mclag_detail(m)),
            Some(Err(err)) => (unanswered("MC-LAG", err)),
            None => {},
        }
        @if let Some(Ok(p)) = &s.peer { (synced(p, s.arp.as_ref(), s.nd.as_ref())) }
    }
}

fn mclag_detail(m: &MclagReport) -> Markup {
    html! {
        p {
            "peer alive " (m.peer_alive)
            @if let Some(backup) = m.backup_alive { ", backup path alive " (backup) }
            ", converged " (m.converged)
            ", shared MAC " (or_dash(m.shared_mac.as_ref()))
            ", role changes " (m.role_changes)
        }
        @if m.split_brain { p.error { "split brain" } }
        @if let Some(err) = &m.error { p.error { (err) } }
        @if !m.holds.is_empty() {
            p.warn { "ports held down: " (m.holds.iter().map(word).collect::<Vec<_>>().join(", ")) }
        }
        @for mm in &m.mismatches {
            p.warn { "mismatch " (mm.field) " " (or_dash(mm.port.as_ref())) ": here " (mm.local) ", peer " (mm.peer) }
        }
        table.ports {
            tr { th { "member port" } th { "MLAG id" } th { "MAC now" } th { "own MAC" } th { "twin's MAC" } th { "link-local" } th { "state" } }
            @for p in &m.ports {
                tr class=(if p.held_down { "held-down" } else { "serving" }) {
                    td { (p.name) } td { (p.mlag_id) }
                    td { (or_dash(p.current_mac.as_ref())) } td { (or_dash(p.original_mac.as_ref())) }
                    td { (or_dash(p.twin_mac.as_ref())) } td { (p.link_local.join(" ")) }
                    td { (if p.held_down { "held down" } else { "serving" }) }
                }
            }
        }
    }
}

fn synced(
    p: &PeerReport,
    arp: Option<&Answer<Vec<ArpReportEntry>>>,
    nd: Option<&Answer<Vec<ArpReportEntry>>>,
) -> Markup {
    let c = &p.counters;
    let tables = [("ARP", arp), ("ND", nd)];
    html! {
        h3 { "Synced entries" }
        p {
            "sent to the peer " strong.sent { (c.entries_sent) }
            ", received from it " strong.received { (c.entries_received) }
            ", learnt here now " (p.learnt)
            ", waiting " (p.pending) ", unacknowledged " (p.unacked)
        }
        div.entries {
            @for direction in ["sent", "received"] {
                div {
                    h4 { (if direction == "sent" { "sent to the peer" } else { "learnt from the peer" }) }
                    table {
                        tr { th { "" } th { "address" } th { "MAC" } th { "port" } th { "VLAN" } th { "class" } th { "kernel" } th { "age" } }
                        @for (family, table) in tables {
                            @match table {
                                Some(Ok(entries)) => {
                                    @let mine: Vec<_> = entries.iter().filter(|e| e.direction == direction).collect();
                                    @for e in mine.iter().take(MAX_ENTRIES) {
                                        tr class=(direction) {
                                            td { (family) } td { (e.ip) } td { (e.mac) } td { (e.port) }
                                            td { (e.outer_vlan) @if e.inner_vlan != 0 { "." (e.inner_vlan) } }
                                            td { (e.class) } td { (or_dash(e.kernel_state.as_ref())) }
                                            td { (e.age_ms / 1000) " s" }
                                        }
                                    }
                                    @if mine.len() > MAX_ENTRIES {
                                        tr { td colspan="8" { (mine.len() - MAX_ENTRIES) " more " (family) " entries" } }
                                    }
                                }
                                Some(Err(err)) => tr { td colspan="8" { (family) " table did not answer: " (err) } },
                                None => {},
                            }
                        }
                    }
                }
            }
        }
    }
}

fn fabric_section(f: &FabricReport, failures: &mut u64) -> Markup {
    let graph = graph::fabric_graph(f);
    let faults = graph::faults_now(f);
    html! {
        p {
            strong { (f.identity) } " is " (word(&f.role)) " (" (f.role_reason) ")"
            @if let Some(active) = f.active { ", " (if active { "active server" } else { "standby server" }) }
            "; broker " (f.broker) " " (if f.connected { "connected" } else { "not connected" })
            "; " (f.members.len()) " members"
        }
        (drawn(&graph, "no members known yet", failures))
        @if !faults.is_empty() {
            p.fault-now { "faults in force: "
                @for (member, down) in &faults { span.fault { (member) ": " (down.join(", ")) } " " }
            }
        }
        table.members {
            tr { th { "member" } th { "role" } th { "state" } th { "model" } th { "version" } th { "last heartbeat" } }
            @for m in &f.members {
                tr class=(m.state) {
                    td { (m.identity) } td { (word(&m.role)) } td { (m.state) } td { (m.model) } td { (m.version) }
                    td { (or_dash(m.last_heartbeat_ms_ago)) " ms ago" }
                }
            }
        }
        @if !f.faults.is_empty() {
            h3 { "Recent faults" }
            table.faults {
                tr { th { "member" } th { "port" } th { "kind" } th { "at (ms since the epoch)" } }
                @for r in f.faults.iter().rev().take(MAX_FAULTS) {
                    tr class=(r.fault.kind) { td { (r.fault.member) } td { (r.fault.port) } td { (r.fault.kind) } td { (r.fault.at_ms) } }
                }
            }
        }
    }
}

fn inference(
    states: &StatesReport,
    alarms: Option<&Answer<AlarmsReport>>,
    failures: &mut u64,
) -> Markup {
    let alarms_ok = alarms.and_then(|a| a.as_ref().ok());
    let graph = graph::inference_graph(states, alarms_ok);
    html! {
        p.legend {
            "colour by fault level: "
            span.swatch style={"background:" (graph::level_fill(0, true))} { "lost contact" }
            span.swatch style={"background:" (graph::level_fill(1, false))} { "1" }
            span.swatch style={"background:" (graph::level_fill(2, false))} { "2" }
            span.swatch style={"background:" (graph::level_fill(3, false))} { "3+" }
            "; thick border: root cause; arrows: a fault inferred from a dependency"
        }
        (drawn(&graph, "no faulty objects: everything is normal", failures))
        @match alarms {
            Some(Ok(a)) if !a.alarms.is_empty() => {
                table.alarms {
                    tr { th { "alarm" } th { "state" } th { "root causes" } th { "suppressed under it" } }
                    @for alarm in &a.alarms {
                        tr {
                            td { (alarm.object) }
                            td { (alarm.states.iter().map(|s| format!("{}({})", s.name, s.level)).collect::<Vec<_>>().join(",")) }
                            td.root { (alarm.root_causes.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) }
                            td { (alarm.suppressed.iter().map(|s| s.object.as_str()).collect::<Vec<_>>().join(", ")) }
                        }
                    }
                }
            }
            Some(Err(err)) => (unanswered("the alarm table", err)),
            _ => {},
        }
    }
}

fn step_class(state: StepState) -> String {
    format!("step {}", word(&state))
}

fn rollout(r: &Rollout) -> Markup {
    html! {
        div.rollout {
            h4 {
                "#" (r.id) " " (r.key) " version " (r.version) " "
                span class={"state " (word(&r.state))} { (word(&r.state)) }
            }
            @if !r.paused_reason.is_empty() { p.warn { (r.paused_reason) } }
            table.batches {
                @for (n, batch) in r.batches.iter().enumerate() {
                    tr class=(if n == r.current_batch { "current" } else { "" }) {
                        th {
                            "batch " (n + 1)
                            @if n == 0 && !r.canary.is_empty() { " (canary)" }
                            @if n == r.current_batch { " ◀ now" }
                        }
                        td {
                            @for step in batch {
                                span class=(step_class(step.state)) title=(step.reason) {
                                    (step.device) " " (step.service) ": " (word(&step.state))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn center_rollouts(center: &CenterReport) -> Markup {
    html! {
        h3 { "At this config center" }
        @if center.rollouts.is_empty() { p.empty { "no rollout yet" } }
        @for r in center.rollouts.iter().take(MAX_ROLLOUTS) { (rollout(r)) }
        @if center.rollouts.len() > MAX_ROLLOUTS {
            p.note { (center.rollouts.len() - MAX_ROLLOUTS) " older rollouts not shown" }
        }
    }
}

fn device_services(device: &DeviceReport) -> Markup {
    html! {
        h3 { "This device (" (device.device) " at " (device.center) ", "
            (if device.connected { "connected" } else { "not connected" }) ")" }
        table.services {
            tr { th { "service" } th { "config" } th { "version" } th { "last result" } }
            @for s in &device.services {
                tr { td { (s.name) } td { (s.key) } td { (or_dash(s.version)) } td { (s.last_result) } }
            }
        }
    }
}

/// The whole page for the first load (the script then keeps it fresh).
pub fn page(view: &ViewJson, refresh_ms: u64) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "mlag-sync: " (view.instance) }
                link rel="stylesheet" href="/style.css";
                script src="/app.js" defer {}
            }
            body data-refresh-ms=(refresh_ms) {
                header {
                    h1 { "mlag-sync " span.instance { (view.instance) } }
                    p.roles { "runs " (view.roles.join(", ")) }
                    p #status { "gathered at " span #taken data-ms=(view.taken_unix_ms) { (view.taken_unix_ms) } " (ms since the epoch)" }
                }
                main #sections { (PreEscaped(sections_html(view))) }
                footer #stats { (stats_text(&view.stats)) }
            }
        }
    }
    .into_string()
}

/// The sections as the page holds them (what the script swaps in).
pub fn sections_html(view: &ViewJson) -> String {
    html! {
        @for s in &view.sections {
            section id=(s.id) { h2 { (s.title) } (PreEscaped(&s.html)) }
        }
    }
    .into_string()
}

/// The footer line.
pub fn stats_text(s: &WebStats) -> String {
    format!(
        "web view: {} views gathered, {} requests shared one, {} graphs not drawn, {} unknown paths, {} bad methods, {} refused busy",
        s.gathered, s.shared, s.graph_failures, s.not_found, s.bad_method, s.busy
    )
}

#[cfg(test)]
mod tests;
