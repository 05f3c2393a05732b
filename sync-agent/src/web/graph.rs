//! The page's two graphs, laid out and drawn as SVG by `layout-rs` (a
//! Graphviz-like layered layout; no layout is computed here): the fabric
//! (members, servers, who is active, faults) from `show fabric`, and the
//! faulty objects of the state model (coloured by fault level, root causes
//! marked) from `show states --faulty` and `show alarms`.
//!
//! Node and edge labels are escaped by the library's SVG writer; the
//! attributes added here for the page (`class`, `data-*`) are escaped by
//! [`attr`]. A graph larger than [`MAX_NODES`] is cut (the worst objects
//! are kept) so one refresh costs a bounded layout.

use std::collections::{BTreeMap, BTreeSet};

use layout::{
    backends::svg::SVGWriter,
    core::{base::Orientation, color::Color, style::StyleAttr},
    std_shapes::{
        render::get_shape_size,
        shapes::{Arrow, Element, LineEndKind, ShapeKind},
    },
    topo::layout::VisualGraph,
};

use crate::{
    fabric::{report::FabricReport, wire::Role},
    inference::report::{AlarmsReport, StatesReport},
};

/// The most nodes one graph draws: the layered layout grows faster than
/// linearly, and a page with more is unreadable anyway.
pub const MAX_NODES: usize = 80;
const FONT: usize = 14;

/// A node to draw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// What it stands for (a member identity, an object id): `data-id`.
    pub id: String,
    /// Its text, one line per `\n`.
    pub label: String,
    /// CSS classes for the page (`member up`, `object level-3 root`).
    pub class: String,
    /// Fill colour (`#rrggbb`).
    pub fill: &'static str,
    /// Border width: root causes and the active server are drawn thicker.
    pub border: usize,
}

/// An edge between two nodes (indices into [`Graph::nodes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// From.
    pub from: usize,
    /// To.
    pub to: usize,
    /// Drawn dashed (a standby server, a lost-contact dependency).
    pub dashed: bool,
}

/// A graph before layout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    /// Nodes, in a stable order (the layout is deterministic for one input).
    pub nodes: Vec<Node>,
    /// Edges.
    pub edges: Vec<Edge>,
    /// Nodes left out because of [`MAX_NODES`].
    pub left_out: usize,
}

/// ` name="value"` with the value escaped for a double-quoted attribute.
pub fn attr(name: &str, value: &str) -> String {
    use std::fmt::Write as _;
    let mut out = format!(" {name}=\"");
    let _ = write!(maud::Escaper::new(&mut out), "{value}");
    out.push('"');
    out
}

impl Graph {
    /// The SVG of the graph laid out top to bottom; `None` when it has no
    /// node (the library needs at least one).
    pub fn svg(&self) -> Option<String> {
        if self.nodes.is_empty() {
            return None;
        }
        let dir = Orientation::TopToBottom;
        let mut vg = VisualGraph::new(dir);
        let handles: Vec<_> = self
            .nodes
            .iter()
            .map(|node| {
                let shape = ShapeKind::new_box(&node.label);
                let look = StyleAttr::new(
                    Color::fast("black"),
                    node.border,
                    Color::from_name(node.fill),
                    6,
                    FONT,
                );
                let size = get_shape_size(dir, &shape, FONT, false);
                vg.add_node(Element::create_with_properties(
                    shape,
                    look,
                    dir,
                    size,
                    format!(
                        "{}{}",
                        attr("class", &node.class),
                        attr("data-id", &node.id)
                    ),
                ))
            })
            .collect();
        for edge in &self.edges {
            let mut arrow = Arrow::simple("");
            arrow.start = LineEndKind::None;
            arrow.end = LineEndKind::Arrow;
            if edge.dashed {
                arrow.line_style = layout::core::style::LineStyleKind::Dashed;
            }
            vg.add_edge(arrow, handles[edge.from], handles[edge.to]);
        }
        let mut svg = SVGWriter::new();
        vg.do_it(false, false, false, &mut svg);
        // The writer sizes the picture from each label's length as if it
        // ran downwards, leaving a blank band below the graph: size it to
        // the nodes as laid out instead (edges run between them).
        let (mut width, mut height) = (0f64, 0f64);
        for node in vg.iter_nodes() {
            let pos = vg.pos(node);
            width = width.max(pos.right(false));
            height = height.max(pos.bottom(false));
        }
        Some(fit(&svg.finalize(), width + 10.0, height + 10.0))
    }
}

/// `text` from its `<svg` element on (an XML declaration is not allowed
/// inside an HTML document), its size no larger than `width` x `height`.
fn fit(text: &str, width: f64, height: f64) -> String {
    let text = match text.find("<svg") {
        Some(start) => &text[start..],
        None => text,
    };
    let Some(tag_end) = text.find('>') else {
        return text.to_string();
    };
    let (tag, rest) = text.split_at(tag_end);
    // <svg width="W" height="H" viewBox="0 0 W H" xmlns=...
    let number = |name: &str| -> Option<f64> {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        tag[start..].split('"').next()?.parse().ok()
    };
    let (Some(w), Some(h)) = (number("width"), number("height")) else {
        return text.to_string();
    };
    let (w2, h2) = (w.min(width.ceil()), h.min(height.ceil()));
    format!(
        "<svg width=\"{w2}\" height=\"{h2}\" viewBox=\"0 0 {w2} {h2}\" xmlns=\"http://www.w3.org/2000/svg\"{rest}"
    )
}

/// Each member's faults in force: the ports whose last fault is not a
/// `port-up`, as `kind port`.
pub fn faults_now(fabric: &FabricReport) -> BTreeMap<String, Vec<String>> {
    // Faults arrive newest last; the last word on each port wins.
    let mut last: BTreeMap<(String, String), &str> = BTreeMap::new();
    for f in &fabric.faults {
        last.insert(
            (f.fault.member.clone(), f.fault.port.clone()),
            f.fault.kind.as_str(),
        );
    }
    let mut down: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((member, port), kind) in last {
        if kind != "port-up" {
            down.entry(member)
                .or_default()
                .push(format!("{kind} {port}"));
        }
    }
    down
}

/// The fabric as this switch sees it: every member (colour by state, red
/// with a fault), every server (thick border when active), and an edge
/// from each member to each server it reports to (dashed to a standby).
pub fn fabric_graph(fabric: &FabricReport) -> Graph {
    let faults = faults_now(fabric);
    // Servers by identity: (rank, active). This switch's own view of
    // itself is more recent than its status messages.
    let mut servers: BTreeMap<String, (usize, bool)> = fabric
        .servers
        .iter()
        .map(|s| (s.server.clone(), (s.rank, s.active)))
        .collect();
    if let (Some(rank), Some(active)) = (fabric.rank, fabric.active) {
        servers.insert(fabric.identity.clone(), (rank, active));
    }
    // A standby server sends no status: known from its role alone.
    for m in &fabric.members {
        if m.role != Role::Client {
            servers
                .entry(m.identity.clone())
                .or_insert((usize::MAX, false));
        }
    }
    let mut graph = Graph::default();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut members: Vec<_> = fabric.members.iter().collect();
    // Servers first, so they are kept if the graph is cut.
    members.sort_by_key(|m| (!servers.contains_key(&m.identity), m.identity.clone()));
    let mut names: Vec<(String, Option<&str>)> = members
        .iter()
        .map(|m| (m.identity.clone(), Some(m.state.as_str())))
        .collect();
    for server in servers.keys() {
        if !names.iter().any(|(n, _)| n == server) {
            names.insert(0, (server.clone(), None));
        }
    }
    if names.len() > MAX_NODES {
        graph.left_out = names.len() - MAX_NODES;
        names.truncate(MAX_NODES);
    }
    for (name, state) in names {
        let server = servers.get(&name);
        let down = faults.get(&name);
        let mut label = name.clone();
        let mut class = String::from("member");
        match server {
            Some((rank, active)) => {
                let what = if *active { "active" } else { "standby" };
                let rank = match rank {
                    0 => "primary server",
                    1 => "backup server",
                    _ => "server",
                };
                label.push_str(&format!("\n{rank}, {what}"));
                class.push_str(&format!(" server {what}"));
            }
            None => label.push_str("\nmember"),
        }
        let state = state.unwrap_or("server only");
        label.push_str(&format!("\n{state}"));
        class.push_str(&format!(" {}", state.replace(' ', "-")));
        if let Some(down) = down {
            label.push_str(&format!("\n{}", down.join("\n")));
            class.push_str(" fault");
        }
        let fill = match (down.is_some(), state) {
            (true, _) => "#ff8a80",
            (false, "up") => "#b9f6ca",
            (false, "silent") => "#ffd180",
            (false, "server only") => "#e3f2fd",
            _ => "#cfd8dc",
        };
        index.insert(name.clone(), graph.nodes.len());
        graph.nodes.push(Node {
            id: name,
            label,
            class,
            fill,
            border: if server.is_some_and(|s| s.1) { 4 } else { 2 },
        });
    }
    for member in &fabric.members {
        let Some(&from) = index.get(&member.identity) else {
            continue;
        };
        // A pure server is not a member of its own fabric.
        if member.role == Role::Server {
            continue;
        }
        for (server, (_, active)) in &servers {
            if *server == member.identity {
                continue;
            }
            if let Some(&to) = index.get(server) {
                graph.edges.push(Edge {
                    from,
                    to,
                    dashed: !active,
                });
            }
        }
    }
    graph
}

/// The colour of a fault level (lost contact is level 0 and grey).
pub fn level_fill(level: u8, lost_contact: bool) -> &'static str {
    match level {
        0 if lost_contact => "#cfd8dc",
        0 => "#b9f6ca",
        1 => "#fff59d",
        2 => "#ffd180",
        _ => "#ff8a80",
    }
}

/// The faulty objects of the state model and the dependencies their
/// faults were inferred through (an edge from the dependency to what it
/// made faulty); the alarms' root causes drawn with a thick border.
pub fn inference_graph(states: &StatesReport, alarms: Option<&AlarmsReport>) -> Graph {
    let roots: BTreeSet<&str> = alarms
        .into_iter()
        .flat_map(|a| &a.alarms)
        .flat_map(|a| &a.root_causes)
        .map(|id| id.as_str())
        .collect();
    let mut objects: Vec<_> = states.objects.iter().collect();
    // Root causes and the worst first, so they are kept if the graph is cut.
    objects.sort_by_key(|o| {
        (
            !roots.contains(o.id.as_str()),
            std::cmp::Reverse(o.fault_level),
            o.id.0.clone(),
        )
    });
    let mut graph = Graph::default();
    if objects.len() > MAX_NODES {
        graph.left_out = objects.len() - MAX_NODES;
        objects.truncate(MAX_NODES);
    }
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &objects {
        let root = roots.contains(o.id.as_str());
        let lost = o.effective.iter().any(|s| s.lost_contact);
        let states: Vec<String> = o
            .effective
            .iter()
            .map(|s| format!("{}({})", s.name, s.level))
            .collect();
        let mut label = format!("{}\n{}", o.id.0, states.join(","));
        if root {
            label.push_str("\nroot cause");
        }
        let mut class = format!("object level-{}", o.fault_level);
        if root {
            class.push_str(" root");
        }
        if lost {
            class.push_str(" lost-contact");
        }
        index.insert(o.id.as_str(), graph.nodes.len());
        graph.nodes.push(Node {
            id: o.id.0.clone(),
            label,
            class,
            fill: level_fill(o.fault_level, lost),
            border: if root { 5 } else { 2 },
        });
    }
    let mut seen = BTreeSet::new();
    for o in &objects {
        let Some(&to) = index.get(o.id.as_str()) else {
            continue;
        };
        // A logical state's source is the dependency it came from.
        for state in &o.logical {
            for source in state.source.split(',').map(str::trim) {
                if let Some(&from) = index.get(source)
                    && from != to
                    && seen.insert((from, to))
                {
                    graph.edges.push(Edge {
                        from,
                        to,
                        dashed: state.lost_contact,
                    });
                }
            }
        }
    }
    graph
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            label: format!("{id}\nup"),
            class: "member up".into(),
            fill: "#b9f6ca",
            border: 2,
        }
    }

    #[test]
    fn the_svg_holds_every_node_and_edge() {
        let graph = Graph {
            nodes: ["sw-a", "sw-b", "sw-d", "sw-e"].map(node).to_vec(),
            edges: vec![
                Edge {
                    from: 2,
                    to: 0,
                    dashed: false,
                },
                Edge {
                    from: 2,
                    to: 1,
                    dashed: true,
                },
                Edge {
                    from: 3,
                    to: 0,
                    dashed: false,
                },
                Edge {
                    from: 3,
                    to: 1,
                    dashed: true,
                },
            ],
            left_out: 0,
        };
        let svg = graph.svg().expect("drawn");
        assert!(svg.starts_with("<svg"), "no XML declaration inside HTML");
        assert!(svg.ends_with("</svg>"));
        // Two layers of boxes: no blank band below them.
        let height: f64 = svg
            .split("height=\"")
            .nth(1)
            .and_then(|h| h.split('"').next())
            .and_then(|h| h.parse().ok())
            .expect("a height");
        assert!(height < 300.0, "{height}: {svg}");
        for id in ["sw-a", "sw-b", "sw-d", "sw-e"] {
            assert!(svg.contains(&format!("data-id=\"{id}\"")), "{id}: {svg}");
            assert!(
                svg.contains(&format!(">{id}</tspan>")),
                "{id}'s label: {svg}"
            );
        }
        assert_eq!(
            svg.matches("marker-end=\"url(#endarrow)\"").count(),
            4,
            "{svg}"
        );
        assert_eq!(svg.matches("stroke-dasharray").count(), 2, "{svg}");
    }

    #[test]
    fn one_node_is_drawn_and_no_node_is_no_graph() {
        let one = Graph {
            nodes: vec![node("alone")],
            ..Graph::default()
        };
        assert!(one.svg().expect("drawn").contains("data-id=\"alone\""));
        assert_eq!(Graph::default().svg(), None);
    }

    #[test]
    fn hostile_labels_and_ids_are_escaped() {
        let hostile = "<script>alert(\"x\")</script>";
        let graph = Graph {
            nodes: vec![Node {
                id: hostile.into(),
                label: hostile.into(),
                class: "member\" onclick=\"x".into(),
                fill: "#ffffff",
                border: 2,
            }],
            ..Graph::default()
        };
        let svg = graph.svg().expect("drawn");
        assert!(!svg.contains("<script"), "{svg}");
        assert!(!svg.contains("\" onclick"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
    }

    #[test]
    fn a_big_graph_is_cut_keeping_the_root_causes() {
        let objects: Vec<serde_json::Value> = (0..MAX_NODES + 5)
            .map(|n| {
                serde_json::json!({
                    "id": format!("port:p{n}"), "layer": "physical", "kind": "port",
                    "actual": [], "logical": [],
                    "effective": [{"name": "down", "level": 3, "lost_contact": false, "source": "link"}],
                    "fault_level": 3, "since_ms": 1, "state_history": [], "info_history": [],
                })
            })
            .collect();
        let states: StatesReport = serde_json::from_value(serde_json::json!({
            "objects": objects,
            "counters": {"infos": 0, "unknown_infos": 0, "unknown_objects": 0, "changes": 0},
        }))
        .unwrap();
        let last = format!("port:p{}", MAX_NODES + 4);
        let alarms: AlarmsReport = serde_json::from_value(serde_json::json!({
            "level": 3, "lost_contact": false,
            "alarms": [{"object": last, "states": [], "level": 3, "root_causes": [last],
                        "raised_ms": 1, "suppressed": []}],
            "cleared": [], "counters": crate::inference::alarms::AlarmStats::default(),
        }))
        .unwrap();
        let graph = inference_graph(&states, Some(&alarms));
        assert_eq!(graph.nodes.len(), MAX_NODES);
        assert_eq!(graph.left_out, 5);
        assert_eq!(graph.nodes[0].id, last, "the root cause is kept first");
        assert!(graph.nodes[0].class.contains("root"));
    }
}
