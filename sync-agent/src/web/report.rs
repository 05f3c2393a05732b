//! What one refresh of the view gathered: the reports `show …` prints,
//! one per running module, and the JSON the page polls for. Pure data, so
//! the rendering is tested without an agent.

use serde::Serialize;

use crate::{
    fabric::report::FabricReport,
    inference::report::{AlarmsReport, StatesReport},
    mclag::MclagReport,
    peersync::report::{ArpReportEntry, PeerReport},
    rollout::report::RolloutReport,
};

pub use crate::handles::Answer;

/// Everything one refresh gathered. `None`: the module is not configured
/// here, and its section is left out of the page.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The agent's instance name.
    pub instance: String,
    /// The roles it runs.
    pub roles: Vec<String>,
    /// When it was gathered (ms since the epoch).
    pub taken_unix_ms: u64,
    /// `show mclag`.
    pub mclag: Option<Answer<MclagReport>>,
    /// `show peer`.
    pub peer: Option<Answer<PeerReport>>,
    /// `show arp` (entries synced either way).
    pub arp: Option<Answer<Vec<ArpReportEntry>>>,
    /// `show nd`.
    pub nd: Option<Answer<Vec<ArpReportEntry>>>,
    /// `show fabric`.
    pub fabric: Option<Answer<FabricReport>>,
    /// `show states --faulty` (inference always runs).
    pub faulty: Option<Answer<StatesReport>>,
    /// `show alarms` (for the root causes).
    pub alarms: Option<Answer<AlarmsReport>>,
    /// `show rollout`, when this agent hosts the center or is a device.
    pub rollout: Option<RolloutReport>,
}

/// One section of the page.
#[derive(Clone, Debug, Serialize)]
pub struct Section {
    /// Its element id (`mlag`, `fabric`, `inference`, `rollout`).
    pub id: &'static str,
    /// Its heading.
    pub title: &'static str,
    /// Its body, HTML with every report value escaped.
    pub html: String,
}

/// The counters of the web view itself, shown at the foot of the page.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct WebStats {
    /// Views gathered from the modules.
    pub gathered: u64,
    /// Requests answered from a view gathered for an earlier request.
    pub shared: u64,
    /// Graphs the layout library could not draw (the tables still show).
    pub graph_failures: u64,
    /// Requests for a path that does not exist (answered 404).
    pub not_found: u64,
    /// Requests with a method other than GET or HEAD (answered 405).
    pub bad_method: u64,
    /// Requests refused because too many were waiting (answered 503).
    pub busy: u64,
}

/// What `GET /api/view` answers: the page's sections, rendered.
#[derive(Clone, Debug, Serialize)]
pub struct ViewJson {
    /// The agent's instance name.
    pub instance: String,
    /// The roles it runs.
    pub roles: Vec<String>,
    /// When the reports were gathered (ms since the epoch).
    pub taken_unix_ms: u64,
    /// The sections, in page order.
    pub sections: Vec<Section>,
    /// The web view's own counters.
    pub stats: WebStats,
}
