//! SPEC 5 against a real kernel: the agent's state model follows a member
//! port taken down and up, inferring the state of what depends on it, and
//! a declared object redundant over two ports is degraded, not down, while
//! one of them is up. With an MLAG pair: a twin down degrades the MLAG
//! interface under one root-cause alarm (posted to a real Alertmanager),
//! and the peer agent killed is one lost-contact alarm, not a storm.

use std::time::Duration;

use anyhow::Context as _;
use mlag_testbed::{agent::Agent, daemon::Daemon, netns, netns::Netns, pair::Pair, wait_until};

const WAIT: Duration = Duration::from_secs(10);

fn config() -> &'static str {
    r#"instance = "{instance}"
[dataplane]
member_ports = ["m0"]

[inference]
objects = [{ id = "svc:web", layer = "service", kind = "service", depends_on = [{ id = "ip:m0", kind = "maps-to" }] }]
"#
}

fn state(agent: &Agent, id: &str) -> anyhow::Result<serde_json::Value> {
    agent.query(&["show", "state", id])
}

fn level(agent: &Agent, id: &str) -> Result<u64, String> {
    state(agent, id)
        .map_err(|e| e.to_string())
        .map(|s| s["object"]["fault_level"].as_u64().unwrap_or(99))
}

#[test]
fn a_port_taken_down_makes_its_lan_port_ip_interface_and_service_inferred_down_and_up_clears_them()
-> anyhow::Result<()> {
    let switch = Netns::new("minf")?;
    let host = Netns::new("minfh")?;
    netns::veth(&switch, "m0", &host, "h0")?;
    switch.ip(&["addr", "add", "10.66.0.1/24", "dev", "m0"])?;
    let agent = Agent::start(&switch, config())?;
    for id in ["port:m0", "lan:m0", "ip:m0", "svc:web"] {
        assert_eq!(level(&agent, id), Ok(0), "{id} starts normal");
    }
    // What the port's histories hold before this test's own events (the
    // interfaces' state at start).
    let infos_at_start = info_history(&agent, "port:m0")?.len();
    let states_at_start = state(&agent, "port:m0")?["object"]["state_history"]
        .as_array()
        .map_or(0, Vec::len);

    switch.ip(&["link", "set", "m0", "down"])?;
    wait_until(WAIT, "the service to be inferred down", || {
        match level(&agent, "svc:web") {
            Ok(l) if l > 0 => Ok(()),
            other => Err(other),
        }
    })?;
    let port = state(&agent, "port:m0")?;
    assert_eq!(port["object"]["actual"][0]["name"], "down", "{port}");
    for id in ["lan:m0", "ip:m0", "svc:web"] {
        let s = state(&agent, id)?;
        let o = &s["object"];
        assert!(
            o["actual"].as_array().unwrap().is_empty(),
            "{id} has no information of its own: {s}"
        );
        assert_eq!(
            o["logical"][0]["name"], "down",
            "{id} is inferred down: {s}"
        );
        assert_eq!(o["effective"][0]["name"], "down", "{id}: {s}");
    }
    // The service's chain leads down to the port.
    let svc = state(&agent, "svc:web")?;
    let chain: Vec<&str> = svc["depends_on"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["to"].as_str())
        .collect();
    assert!(
        chain.contains(&"ip:m0") && chain.contains(&"lan:m0") && chain.contains(&"port:m0"),
        "{chain:?}"
    );
    let faulty = agent.query(&["show", "states", "--faulty"])?;
    let ids: Vec<&str> = faulty["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    for id in ["port:m0", "lan:m0", "ip:m0", "svc:web"] {
        assert!(ids.contains(&id), "{id} listed as faulty: {ids:?}");
    }
    assert!(!ids.contains(&"port:lo"));

    switch.ip(&["link", "set", "m0", "up"])?;
    wait_until(WAIT, "everything normal again", || {
        for id in ["port:m0", "lan:m0", "ip:m0", "svc:web"] {
            match level(&agent, id) {
                Ok(0) => {}
                other => return Err(format!("{id}: {other:?}")),
            }
        }
        Ok(())
    })?;
    // The information this test caused: netlink's link-down, then its
    // link-up, after what was there at start (the history is far from its
    // bound of 32).
    let infos = info_history(&agent, "port:m0")?;
    let caused: Vec<(String, String)> = infos[infos_at_start..]
        .iter()
        .map(|i| {
            (
                i["source"].as_str().unwrap_or("").to_string(),
                i["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let down = caused
        .iter()
        .position(|(s, m)| s == "netlink" && m == "link-down");
    let up = caused
        .iter()
        .rposition(|(s, m)| s == "netlink" && m == "link-up");
    assert!(
        matches!((down, up), (Some(d), Some(u)) if d < u),
        "the port's information history records link-down then link-up after the {infos_at_start} entries at start: {caused:?}"
    );
    // And its state history the two changes: down, then normal.
    let port = state(&agent, "port:m0")?;
    let changes: Vec<&str> = port["object"]["state_history"]
        .as_array()
        .unwrap()
        .iter()
        .skip(states_at_start)
        .filter_map(|h| h["effective"][0]["name"].as_str())
        .collect();
    // (Administrative state and carrier are two sources: bringing a veth up
    // may show it up without carrier for a moment, a second down/normal.)
    assert!(
        changes.len() >= 2
            && changes.len().is_multiple_of(2)
            && changes
                .iter()
                .enumerate()
                .all(|(i, c)| *c == if i % 2 == 0 { "down" } else { "normal" }),
        "the port's state history records down then normal: {changes:?}"
    );
    Ok(())
}

fn info_history(agent: &Agent, id: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(state(agent, id)?["object"]["info_history"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// The effective state of `id` as (first state's name, fault level, its sources).
fn effective(agent: &Agent, id: &str) -> Result<(String, u64, String), String> {
    let s = state(agent, id).map_err(|e| e.to_string())?;
    let o = &s["object"];
    Ok((
        o["effective"][0]["name"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        o["fault_level"].as_u64().unwrap_or(99),
        o["effective"][0]["source"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    ))
}

/// Waits for `id`'s effective state to be `name(level)`; returns its sources.
fn wait_effective(agent: &Agent, id: &str, name: &str, level: u64) -> anyhow::Result<String> {
    wait_until(
        WAIT,
        &format!("{id} to be {name}({level})"),
        || match effective(agent, id) {
            Ok((n, l, s)) if n == name && l == level => Ok(s),
            other => Err(other),
        },
    )
}

#[test]
fn an_object_redundant_over_two_ports_is_degraded_with_one_down_and_down_with_both()
-> anyhow::Result<()> {
    let switch = Netns::new("minfr")?;
    let host = Netns::new("minfrh")?;
    netns::veth(&switch, "m0", &host, "h0")?;
    netns::veth(&switch, "m1", &host, "h1")?;
    let text = r#"instance = "{instance}"
[dataplane]
member_ports = ["m0", "m1"]

[inference]
objects = [{ id = "svc:pair", layer = "service", kind = "service", redundancy = "redundant", depends_on = [{ id = "port:m0", kind = "maps-to" }, { id = "port:m1", kind = "maps-to" }] }]
"#;
    let agent = Agent::start(&switch, text)?;
    assert_eq!(
        effective(&agent, "svc:pair"),
        Ok(("normal".into(), 0, String::new()))
    );
    let svc = state(&agent, "svc:pair")?;
    assert_eq!(svc["object"]["group"]["redundancy"], "redundant", "{svc}");
    assert_eq!(svc["object"]["group"]["up"], 2, "{svc}");

    switch.ip(&["link", "set", "m0", "down"])?;
    let source = wait_effective(&agent, "svc:pair", "degraded", 1)?;
    assert_eq!(source, "port:m0", "the degraded state names the port down");
    assert_eq!(level(&agent, "port:m0"), Ok(3));
    assert_eq!(state(&agent, "svc:pair")?["object"]["group"]["up"], 1);

    switch.ip(&["link", "set", "m1", "down"])?;
    let source = wait_effective(&agent, "svc:pair", "down", 3)?;
    let mut sources: Vec<&str> = source.split(',').collect();
    sources.sort_unstable();
    assert_eq!(sources, ["port:m0", "port:m1"], "down from both ports");

    switch.ip(&["link", "set", "m0", "up"])?;
    let source = wait_effective(&agent, "svc:pair", "degraded", 1)?;
    assert_eq!(source, "port:m1", "degraded again, now from the other port");

    switch.ip(&["link", "set", "m1", "up"])?;
    wait_effective(&agent, "svc:pair", "normal", 0)?;
    Ok(())
}

#[test]
fn a_declared_dependency_cycle_is_refused_at_start_naming_the_path() -> anyhow::Result<()> {
    let switch = Netns::new("minfc")?;
    let host = Netns::new("minfch")?;
    netns::veth(&switch, "m0", &host, "h0")?;
    let text = r#"instance = "{instance}"
[dataplane]
member_ports = ["m0"]

[inference]
objects = [
  { id = "svc:a", layer = "service", kind = "service", depends_on = [{ id = "svc:b", kind = "belongs-to" }] },
  { id = "svc:b", layer = "service", kind = "service", depends_on = [{ id = "svc:a", kind = "belongs-to" }] },
]
"#;
    let mut agent = Agent::spawn(&switch, text)?;
    assert!(!agent.wait_exit(WAIT)?.success());
    let log = agent.log_text();
    assert!(
        log.contains("svc:a") && log.contains("svc:b") && log.contains("cycle"),
        "{log}"
    );
    Ok(())
}

#[test]
fn with_a_peer_each_mlag_id_has_an_mlag_interface_redundant_over_its_port_and_twin()
-> anyhow::Result<()> {
    // Only switch A runs: nothing is known of its twin on B.
    let pair = mlag_testbed::pair::Pair::new()?;
    let agent = pair.agent_a("")?;
    let mlag = state(&agent, "mlag:1")?;
    let group = &mlag["object"]["group"];
    assert_eq!(group["redundancy"], "redundant", "{mlag}");
    assert_eq!(
        group["members"],
        serde_json::json!(["port:a-c", "twin:1"]),
        "{mlag}"
    );
    let twin = state(&agent, "twin:1")?;
    assert_eq!(
        twin["object"]["effective"][0]["name"], "lost-contact",
        "a twin is unknown until the peer tells: {twin}"
    );
    // The unknown twin is not counted as up: degraded, naming it.
    assert_eq!(
        effective(&agent, "mlag:1"),
        Ok(("degraded".into(), 1, "twin:1".into()))
    );

    // The local member port down too: no leg known to be up.
    pair.a.ip(&["link", "set", "a-c", "down"])?;
    let source = wait_effective(&agent, "mlag:1", "down", 3)?;
    assert_eq!(source, "port:a-c");
    pair.a.ip(&["link", "set", "a-c", "up"])?;
    wait_effective(&agent, "mlag:1", "degraded", 1)?;
    Ok(())
}

/// `show alarms -j` as (object, root causes, suppressed objects) per raised
/// alarm, and the whole report.
type Raised = Vec<(String, Vec<String>, Vec<String>)>;

fn alarms(agent: &Agent) -> anyhow::Result<(Raised, serde_json::Value)> {
    let report = agent.query(&["show", "alarms"])?;
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        x.as_str()
                            .or(x["object"].as_str())
                            .unwrap_or("?")
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let raised = report["alarms"]
        .as_array()
        .context("alarms")?
        .iter()
        .map(|a| {
            (
                a["object"].as_str().unwrap_or("?").to_string(),
                strs(&a["root_causes"]),
                strs(&a["suppressed"]),
            )
        })
        .collect();
    Ok((raised, report))
}

/// Waits until `show alarms` satisfies `check`; returns the raised alarms.
fn wait_alarms(
    agent: &Agent,
    what: &str,
    check: impl Fn(&Raised) -> bool,
) -> anyhow::Result<(Raised, serde_json::Value)> {
    wait_until(WAIT, what, || match alarms(agent) {
        Ok((raised, report)) if check(&raised) => Ok((raised, report)),
        Ok((raised, _)) => Err(format!("{raised:?}")),
        Err(err) => Err(err.to_string()),
    })
}

/// `GET url` from inside `ns`: (status, body).
fn http_get(ns: &Netns, url: &str) -> anyhow::Result<(u16, String)> {
    let (status, _, body) = ns.http_get(url, None)?;
    Ok((status, body))
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) in a
/// namespace, killed on drop.
struct Alertmanager(Daemon);

impl Alertmanager {
    fn start(ns: &Netns, listen: &str) -> anyhow::Result<Self> {
        Daemon::start(
            ns,
            "prometheus-alertmanager",
            "route:\n  receiver: none\n  group_wait: 1s\nreceivers:\n  - name: none\n",
            // A single instance: no gossip port to collide with.
            &["--storage.path={dir}/data", "--cluster.listen-address="],
            listen,
            |base| match http_get(ns, &format!("{base}/-/ready")) {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .map(Self)
    }

    fn log(&self) -> String {
        self.0.log()
    }

    /// The alerts it holds (active ones: resolved alerts are not listed).
    fn alerts(&self, ns: &Netns) -> anyhow::Result<Vec<serde_json::Value>> {
        let (status, body) = http_get(ns, &format!("{}/api/v2/alerts", self.0.base))?;
        anyhow::ensure!(status == 200, "GET /api/v2/alerts: {status} {body}");
        Ok(serde_json::from_str::<serde_json::Value>(&body)?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

fn contains(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == item)
}

#[test]
fn one_twin_down_degrades_the_mlag_interface_under_a_twin_alarm_posted_to_alertmanager()
-> anyhow::Result<()> {
    let pair = Pair::new()?;
    let alertmanager = Alertmanager::start(&pair.a, "127.0.0.1:9093")?;
    let inference = format!(
        "\n[inference.alarms]\nwebhook = {{ url = \"{}/api/v2/alerts\", repeat_s = 2 }}\n",
        alertmanager.0.base
    );
    let a = pair.agent_a(&inference)?;
    let _b = pair.agent_b("")?;
    a.wait_session_up()?;
    wait_effective(&a, "mlag:1", "normal", 0)?;
    wait_alarms(&a, "no alarm with the pair up", Vec::is_empty)?;

    // B's member port down: A hears its twin is down.
    pair.b.ip(&["link", "set", "b-c", "down"])?;
    let source = wait_effective(&a, "mlag:1", "degraded", 1)?;
    assert_eq!(source, "twin:1");
    let (raised, report) = wait_alarms(&a, "one alarm on twin:1", |r| {
        r.len() == 1 && r[0].0 == "twin:1"
    })?;
    assert_eq!(
        raised[0].1,
        ["twin:1"],
        "the twin is its own root cause: {report}"
    );
    assert!(
        contains(&raised[0].2, "mlag:1"),
        "the degraded MLAG interface is suppressed under it: {report}"
    );
    let text = a.query_text(&["show", "alarms"])?;
    assert!(
        text.contains("twin:1") && text.contains("suppressed mlag:1"),
        "{text}"
    );

    // Alertmanager has it, with the root cause and what is suppressed.
    let alert = wait_until(WAIT, "Alertmanager to hold the twin:1 alert", || {
        let alerts = alertmanager.alerts(&pair.a).map_err(|e| e.to_string())?;
        alerts
            .into_iter()
            .find(|a| a["labels"]["object"] == "twin:1")
            .ok_or_else(|| alertmanager.log())
    })?;
    assert_eq!(
        alert["labels"]["alertname"], "MlagSyncInferenceAlarm",
        "{alert}"
    );
    assert_eq!(alert["annotations"]["root_cause"], "twin:1", "{alert}");
    assert!(
        alert["annotations"]["suppressed"]
            .as_str()
            .is_some_and(|s| s.contains("mlag:1")),
        "{alert}"
    );
    assert_eq!(alert["status"]["state"], "active", "{alert}");

    // A's own member port down too: the MLAG interface is down, under
    // both root causes.
    pair.a.ip(&["link", "set", "a-c", "down"])?;
    wait_effective(&a, "mlag:1", "down", 3)?;
    let (raised, report) = wait_alarms(&a, "alarms on twin:1 and port:a-c", |r| {
        r.len() == 2 && r.iter().all(|(_, _, s)| contains(s, "mlag:1"))
    })?;
    let mut objects: Vec<&str> = raised.iter().map(|(o, _, _)| o.as_str()).collect();
    objects.sort_unstable();
    assert_eq!(objects, ["port:a-c", "twin:1"], "{report}");

    // Both back: every alarm clears, and Alertmanager hears it resolved.
    pair.a.ip(&["link", "set", "a-c", "up"])?;
    pair.b.ip(&["link", "set", "b-c", "up"])?;
    wait_effective(&a, "mlag:1", "normal", 0)?;
    let (_, report) = wait_alarms(&a, "every alarm cleared", Vec::is_empty)?;
    let cleared: Vec<&str> = report["cleared"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["object"].as_str())
        .collect();
    assert!(
        cleared.contains(&"twin:1") && cleared.contains(&"port:a-c"),
        "{report}"
    );
    assert_eq!(report["counters"]["suppressed_now"], 0, "{report}");
    wait_until(
        WAIT,
        "Alertmanager to drop the resolved twin:1 alert",
        || {
            let alerts = alertmanager.alerts(&pair.a).map_err(|e| e.to_string())?;
            match alerts.iter().find(|a| a["labels"]["object"] == "twin:1") {
                None => Ok(()),
                Some(alert) => Err(alert.to_string()),
            }
        },
    )?;
    let webhook = &a.query(&["show", "alarms"])?["webhook"];
    assert!(webhook["posts"].as_u64() > Some(0), "{webhook}");
    Ok(())
}

#[test]
fn the_peer_agent_killed_is_one_lost_contact_alarm_with_its_objects_suppressed_under_it()
-> anyhow::Result<()> {
    let pair = Pair::new()?;
    let a = pair.agent_a("")?;
    let mut b = pair.agent_b("")?;
    a.wait_session_up()?;
    wait_effective(&a, "switch:mlag-peer", "normal", 0)?;
    wait_effective(&a, "mlag:1", "normal", 0)?;
    let (_, report) = wait_alarms(&a, "no alarm with the pair up", Vec::is_empty)?;
    let raised_before = report["counters"]["raised"].as_u64().context("raised")?;

    b.kill()?;
    // The peer switch is lost contact, its twin port with it, and the MLAG
    // interface inferred degraded from the twin.
    wait_effective(&a, "switch:mlag-peer", "lost-contact", 0)?;
    wait_effective(&a, "twin:1", "lost-contact", 0)?;
    assert_eq!(wait_effective(&a, "mlag:1", "degraded", 1)?, "twin:1");
    let (raised, report) = wait_alarms(&a, "one alarm on the peer switch", |r| {
        r.len() == 1 && contains(&r[0].2, "mlag:1") && contains(&r[0].2, "twin:1")
    })?;
    assert_eq!(raised[0].0, "switch:mlag-peer", "{report}");
    assert_eq!(raised[0].1, ["switch:mlag-peer"], "{report}");
    // No storm: exactly one alarm was raised for it all.
    assert_eq!(
        report["counters"]["raised"].as_u64(),
        Some(raised_before + 1),
        "{report}"
    );
    assert_eq!(report["counters"]["active"], 1, "{report}");
    Ok(())
}

#[test]
fn an_address_added_after_start_joins_the_model_as_an_ip_interface() -> anyhow::Result<()> {
    let switch = Netns::new("minfa")?;
    let host = Netns::new("minfah")?;
    netns::veth(&switch, "m0", &host, "h0")?;
    let text = r#"instance = "{instance}"
[dataplane]
member_ports = ["m0"]
"#;
    let agent = Agent::start(&switch, text)?;
    assert!(
        state(&agent, "ip:m0").is_err(),
        "no IPv4 address at start, no IP interface"
    );
    switch.ip(&["addr", "add", "10.66.2.1/24", "dev", "m0"])?;
    let ip = wait_until(WAIT, "ip:m0 to join the model", || state(&agent, "ip:m0"))?;
    assert_eq!(ip["object"]["kind"], "ip-interface", "{ip}");
    assert_eq!(ip["depends_on"][0]["to"], "lan:m0", "{ip}");
    // It follows its port like any other.
    switch.ip(&["link", "set", "m0", "down"])?;
    wait_effective(&agent, "ip:m0", "down", 3)?;
    switch.ip(&["link", "set", "m0", "up"])?;
    wait_effective(&agent, "ip:m0", "normal", 0)?;
    Ok(())
}

/// Whether `id` is in `agent`'s model (`show state` refuses unknown ids).
fn in_model(agent: &Agent, id: &str) -> bool {
    state(agent, id).is_ok()
}

/// Waits until `id` is (`present`) or is not in `agent`'s model.
fn wait_in_model(agent: &Agent, id: &str, present: bool) -> anyhow::Result<()> {
    let what = if present { "join" } else { "leave" };
    wait_until(WAIT, &format!("{id} to {what} the model"), || {
        if in_model(agent, id) == present {
            Ok(())
        } else {
            Err(present)
        }
    })
}

#[test]
fn a_gateway_routed_after_start_joins_the_model_under_its_ip_interface_and_leaves_with_its_route()
-> anyhow::Result<()> {
    let switch = Netns::new("minfg")?;
    let host = Netns::new("minfgh")?;
    netns::veth(&switch, "m0", &host, "h0")?;
    switch.ip(&["addr", "add", "10.66.4.1/24", "dev", "m0"])?;
    let agent = Agent::start(&switch, config())?;
    assert!(!in_model(&agent, "gw:10.66.4.254"), "no route, no gateway");

    switch.ip(&[
        "route",
        "add",
        "10.99.0.0/16",
        "via",
        "10.66.4.254",
        "dev",
        "m0",
    ])?;
    wait_in_model(&agent, "gw:10.66.4.254", true)?;
    let gw = state(&agent, "gw:10.66.4.254")?;
    assert_eq!(gw["object"]["kind"], "gateway", "{gw}");
    assert_eq!(gw["depends_on"][0]["to"], "ip:m0", "{gw}");
    // It follows its interface like any other object: the far end down
    // takes the carrier (the route stays, marked linkdown).
    host.ip(&["link", "set", "h0", "down"])?;
    wait_effective(&agent, "gw:10.66.4.254", "down", 3)?;
    host.ip(&["link", "set", "h0", "up"])?;
    wait_effective(&agent, "gw:10.66.4.254", "normal", 0)?;
    switch.ip(&["route", "del", "10.99.0.0/16"])?;
    wait_in_model(&agent, "gw:10.66.4.254", false)?;
    Ok(())
}

#[test]
fn an_address_removed_takes_its_ip_interface_and_what_only_it_held_out_of_the_model_clearing_their_alarms()
-> anyhow::Result<()> {
    let switch = Netns::new("minfd")?;
    let host = Netns::new("minfdh")?;
    netns::veth(&switch, "m0", &host, "h0")?;
    switch.ip(&["addr", "add", "10.66.5.1/24", "dev", "m0"])?;
    let agent = Agent::start(&switch, config())?;
    assert!(in_model(&agent, "ip:m0"));
    switch.ip(&[
        "route",
        "add",
        "10.98.0.0/16",
        "via",
        "10.66.5.254",
        "dev",
        "m0",
    ])?;
    wait_in_model(&agent, "gw:10.66.5.254", true)?;
    // A neighbour nobody answers for: it fails to resolve, is unreachable
    // and alarmed.
    let _ = switch.exec("ping", &["-c", "1", "-W", "1", "10.66.5.77"]);
    wait_in_model(&agent, "neigh:10.66.5.77", true)?;
    let neigh = state(&agent, "neigh:10.66.5.77")?;
    assert_eq!(neigh["depends_on"][0]["to"], "ip:m0", "{neigh}");
    wait_effective(&agent, "neigh:10.66.5.77", "unreachable", 2)?;
    wait_alarms(&agent, "an alarm on the failed neighbour", |r| {
        r.iter().any(|(o, _, _)| o == "neigh:10.66.5.77")
    })?;
    // svc:web depends on ip:m0 (declared): it stays, without it.
    assert!(in_model(&agent, "svc:web"));

    switch.ip(&["addr", "del", "10.66.5.1/24", "dev", "m0"])?;
    for id in ["ip:m0", "gw:10.66.5.254", "neigh:10.66.5.77"] {
        wait_in_model(&agent, id, false)?;
    }
    let (_, report) = wait_alarms(&agent, "the neighbour's alarm cleared", |r| {
        r.iter().all(|(o, _, _)| o != "neigh:10.66.5.77")
    })?;
    assert!(
        report["cleared"]
            .as_array()
            .is_some_and(|c| c.iter().any(|a| a["object"] == "neigh:10.66.5.77")),
        "{report}"
    );
    let svc = state(&agent, "svc:web")?;
    assert!(
        svc["depends_on"].as_array().is_some_and(Vec::is_empty),
        "the declared service lost its dependency on the removed IP interface: {svc}"
    );
    // The port and its LAN port stay: only the address went.
    assert!(in_model(&agent, "port:m0") && in_model(&agent, "lan:m0"));
    // An address again: the IP interface is back.
    switch.ip(&["addr", "add", "10.66.5.1/24", "dev", "m0"])?;
    wait_in_model(&agent, "ip:m0", true)?;
    Ok(())
}

#[test]
fn a_fabric_member_killed_is_lost_contact_with_its_ports_and_dependents_inferred_under_one_alarm()
-> anyhow::Result<()> {
    use mlag_testbed::fabric::{FabricLab, wait_all_see, wait_fault};
    const SETTLE: Duration = Duration::from_secs(20);
    let lab = FabricLab::new(3)?;
    // sw0 declares a service redundant over its own port and sw2's.
    let declared = r#"
[inference]
objects = [
  { id = "port:sw2/p1", layer = "physical", kind = "port" },
  { id = "svc:both", layer = "service", kind = "service", redundancy = "redundant", depends_on = [{ id = "port:sw2/p1", kind = "maps-to" }, { id = "port:p1", kind = "maps-to" }] },
]
"#;
    let sw0 = lab.start(0, declared)?;
    let sw1 = lab.start(1, "")?;
    let mut sw2 = lab.start(2, "")?;
    wait_all_see(&[&sw0, &sw1, &sw2], &["sw0", "sw1", "sw2"], SETTLE)?;
    // sw0 knows sw2 as a present switch.
    wait_effective(&sw0, "switch:sw2", "normal", 0)?;
    // sw2's port is heard of once (down, then up).
    lab.nodes[2].ip(&["link", "set", "p1b", "down"])?;
    wait_fault(&sw0, "sw2", "p1", "port-down", SETTLE)?;
    lab.nodes[2].ip(&["link", "set", "p1b", "up"])?;
    wait_fault(&sw0, "sw2", "p1", "port-up", SETTLE)?;
    wait_effective(&sw0, "svc:both", "normal", 0)?;
    let (_, report) = wait_alarms(&sw0, "no alarm with every member up", Vec::is_empty)?;
    let raised_before = report["counters"]["raised"].as_u64().context("raised")?;

    sw2.kill()?;
    wait_until(SETTLE, "sw0 to see sw2 lost contact", || {
        match effective(&sw0, "switch:sw2") {
            Ok((n, 0, _)) if n == "lost-contact" => Ok(()),
            other => Err(other),
        }
    })?;
    wait_effective(&sw0, "port:sw2/p1", "lost-contact", 0)?;
    // The service is inferred degraded from sw2's port (not known up).
    assert_eq!(
        wait_effective(&sw0, "svc:both", "degraded", 1)?,
        "port:sw2/p1"
    );
    let (raised, report) = wait_alarms(&sw0, "one alarm on sw2", |r| {
        r.len() == 1 && contains(&r[0].2, "port:sw2/p1") && contains(&r[0].2, "svc:both")
    })?;
    assert_eq!(raised[0].0, "switch:sw2", "{report}");
    assert_eq!(raised[0].1, ["switch:sw2"], "{report}");
    assert_eq!(
        report["counters"]["raised"].as_u64(),
        Some(raised_before + 1),
        "no storm: one alarm raised for it all: {report}"
    );
    // The other server sees it too.
    wait_effective(&sw1, "switch:sw2", "lost-contact", 0)?;

    // sw2 back: contact again, the alarm clears.
    let sw2 = lab.start(2, "")?;
    wait_all_see(&[&sw0, &sw2], &["sw0", "sw1", "sw2"], SETTLE)?;
    wait_effective(&sw0, "switch:sw2", "normal", 0)?;
    wait_effective(&sw0, "svc:both", "normal", 0)?;
    wait_alarms(&sw0, "every alarm cleared", Vec::is_empty)?;
    Ok(())
}

/// `show alarms`' remote alarms of `agent` as (origin, object, suppressed).
fn remote_alarms(agent: &Agent) -> anyhow::Result<Vec<(String, String, Vec<String>)>> {
    let report = agent.query(&["show", "alarms"])?;
    Ok(report["remote"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|a| {
                    (
                        a["origin"].as_str().unwrap_or("?").to_string(),
                        a["object"].as_str().unwrap_or("?").to_string(),
                        a["suppressed"]
                            .as_array()
                            .map(|s| {
                                s.iter()
                                    .filter_map(|x| x.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

#[test]
fn a_members_alarms_go_out_on_the_fault_channel_and_the_others_list_them_with_their_origin()
-> anyhow::Result<()> {
    use mlag_testbed::fabric::{FabricLab, counter, wait_all_see};
    const SETTLE: Duration = Duration::from_secs(20);
    let lab = FabricLab::new(3)?;
    let sw0 = lab.start(0, "")?;
    let sw1 = lab.start(1, "")?;
    let sw2 = lab.start(2, "")?;
    wait_all_see(&[&sw0, &sw1, &sw2], &["sw0", "sw1", "sw2"], SETTLE)?;
    assert!(remote_alarms(&sw0)?.is_empty());

    // sw2's member port loses its carrier: sw2 alarms it, the others hear.
    lab.nodes[2].ip(&["link", "set", "p1b", "down"])?;
    wait_alarms(&sw2, "sw2's own alarm on its port", |r| {
        r.iter().any(|(o, _, _)| o == "port:p1")
    })?;
    for observer in [&sw0, &sw1] {
        let remote = wait_until(SETTLE, "sw2's alarm heard", || {
            let remote =
                remote_alarms(observer).map_err(|e| vec![("?".into(), e.to_string(), vec![])])?;
            if remote
                .iter()
                .any(|(origin, o, _)| origin == "sw2" && o == "port:p1")
            {
                Ok(remote)
            } else {
                Err(remote)
            }
        })?;
        let (_, _, suppressed) = remote
            .iter()
            .find(|(origin, o, _)| origin == "sw2" && o == "port:p1")
            .unwrap();
        assert!(
            suppressed.contains(&"lan:p1".to_string()),
            "what sw2 suppressed under it travels with it: {remote:?}"
        );
    }
    let text = sw0.query_text(&["show", "alarms"])?;
    assert!(
        text.contains("remote alarms") && text.contains("sw2") && text.contains("port:p1"),
        "{text}"
    );
    assert!(counter(&sw2, "alarms_published") > 0);
    assert!(counter(&sw0, "alarms_received") > 0);

    // Back up: the alarm clears at sw2 and leaves the others' lists.
    lab.nodes[2].ip(&["link", "set", "p1b", "up"])?;
    wait_until(SETTLE, "sw2's alarm gone from sw0's remote list", || {
        let remote = remote_alarms(&sw0).map_err(|e| e.to_string())?;
        if remote.iter().all(|(origin, _, _)| origin != "sw2") {
            Ok(())
        } else {
            Err(format!("{remote:?}"))
        }
    })?;
    Ok(())
}

/// Whether `id` is in `agent`'s model, waiting up to `timeout`.
fn wait_in_model_for(
    agent: &Agent,
    id: &str,
    present: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let what = if present { "join" } else { "leave" };
    wait_until(
        timeout,
        &format!("{id} to {what} {}'s model", agent.instance),
        || {
            if in_model(agent, id) == present {
                Ok(())
            } else {
                Err(present)
            }
        },
    )
}

#[test]
fn a_remote_switchs_ports_join_the_model_from_the_fabric_topology_before_any_fault()
-> anyhow::Result<()> {
    use mlag_testbed::fabric::{FabricLab, show, wait_all_see};
    const SETTLE: Duration = Duration::from_secs(20);
    let lab = FabricLab::new(3)?;
    let sw0 = lab.start(0, "")?;
    let sw1 = lab.start(1, "")?;
    let sw2 = lab.start(2, "")?;
    wait_all_see(&[&sw0, &sw1, &sw2], &["sw0", "sw1", "sw2"], SETTLE)?;
    // sw0 (a server) hears sw2's heartbeats; sw2 (a client) knows sw0 from
    // the servers' roster records only. Either way every port is there,
    // under its member's switch, though no fault named any.
    for (observer, member) in [(&sw0, "sw2"), (&sw2, "sw0")] {
        for port in ["fab0", "p1", "p1b"] {
            let id = format!("port:{member}/{port}");
            wait_in_model_for(observer, &id, true, SETTLE)?;
            let port = state(observer, &id)?;
            assert_eq!(port["object"]["kind"], "remote-port", "{port}");
            assert_eq!(
                port["depends_on"][0]["to"],
                format!("switch:{member}"),
                "{port}"
            );
            assert_eq!(port["object"]["fault_level"], 0, "{port}");
        }
        assert!(!in_model(observer, &format!("port:{member}/lo")));
    }
    let faults = show(&sw0)?["faults"].clone();
    assert!(
        faults.as_array().is_some_and(Vec::is_empty),
        "the ports came from the topology, not from faults: {faults}"
    );
    // A port added on sw2 joins the others' models; gone, it leaves.
    lab.nodes[2].ip(&["link", "add", "x0", "type", "veth", "peer", "name", "x1"])?;
    wait_in_model_for(&sw0, "port:sw2/x0", true, SETTLE)?;
    wait_in_model_for(&sw1, "port:sw2/x1", true, SETTLE)?;
    lab.nodes[2].ip(&["link", "del", "x0"])?;
    wait_in_model_for(&sw0, "port:sw2/x0", false, SETTLE)?;
    wait_in_model_for(&sw0, "port:sw2/x1", false, SETTLE)?;
    assert!(in_model(&sw0, "port:sw2/p1"), "the others stay");
    Ok(())
}

/// `show alarms`' remote alarms of `agent` from `origin` as (object,
/// when its origin departed).
fn remote_from(agent: &Agent, origin: &str) -> anyhow::Result<Vec<(String, Option<u64>)>> {
    let report = agent.query(&["show", "alarms"])?;
    Ok(report["remote"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|a| a["origin"] == origin)
                .map(|a| {
                    (
                        a["object"].as_str().unwrap_or("?").to_string(),
                        a["origin_departed_ms"].as_u64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

#[test]
fn a_departed_members_alarms_stay_as_its_last_word_until_the_fabric_forgets_it_with_its_objects()
-> anyhow::Result<()> {
    use mlag_testbed::fabric::{FabricLab, wait_all_see};
    const SETTLE: Duration = Duration::from_secs(20);
    let lab = FabricLab::new(3)?;
    // sw0 forgets a departed member 4 s after its departure.
    let sw0 = lab.start(0, "prune_after_ms = 4000")?;
    let sw1 = lab.start(1, "")?;
    let mut sw2 = lab.start(2, "")?;
    wait_all_see(&[&sw0, &sw1, &sw2], &["sw0", "sw1", "sw2"], SETTLE)?;
    wait_in_model_for(&sw0, "port:sw2/p1", true, SETTLE)?;
    // sw2's member port loses its carrier: sw2 alarms it, sw0 lists it.
    lab.nodes[2].ip(&["link", "set", "p1b", "down"])?;
    wait_until(SETTLE, "sw2's alarm listed at sw0", || {
        let remote = remote_from(&sw0, "sw2").map_err(|e| e.to_string())?;
        if remote.iter().any(|(o, d)| o == "port:p1" && d.is_none()) {
            Ok(())
        } else {
            Err(format!("{remote:?}"))
        }
    })?;

    sw2.kill()?;
    // Departed: its alarm stays, marked as its last word.
    wait_until(SETTLE, "sw2's alarm marked as its last word", || {
        let remote = remote_from(&sw0, "sw2").map_err(|e| e.to_string())?;
        if remote.iter().any(|(o, d)| o == "port:p1" && d.is_some()) {
            Ok(())
        } else {
            Err(format!("{remote:?}"))
        }
    })?;
    let text = sw0.query_text(&["show", "alarms"])?;
    assert!(
        text.contains("origin departed: its last word, unconfirmed"),
        "{text}"
    );
    wait_effective(&sw0, "switch:sw2", "lost-contact", 0)?;

    // Forgotten (pruned): its alarms, switch and ports go, and so does the
    // lost-contact alarm on it.
    wait_until(SETTLE, "sw2 forgotten by sw0", || {
        let remote = remote_from(&sw0, "sw2").map_err(|e| e.to_string())?;
        let objects: Vec<&str> = ["switch:sw2", "port:sw2/p1", "port:sw2/fab0"]
            .into_iter()
            .filter(|id| in_model(&sw0, id))
            .collect();
        if remote.is_empty() && objects.is_empty() {
            Ok(())
        } else {
            Err(format!("{remote:?} {objects:?}"))
        }
    })?;
    let (raised, report) = wait_alarms(&sw0, "no alarm about sw2 left", |r| {
        r.iter().all(|(o, _, _)| !o.contains("sw2"))
    })?;
    assert!(
        report["cleared"]
            .as_array()
            .is_some_and(|c| c.iter().any(|a| a["object"] == "switch:sw2")),
        "{raised:?} {report}"
    );
    // sw1 (default prune time) still lists it as departed.
    wait_effective(&sw1, "switch:sw2", "lost-contact", 0)?;
    assert!(
        remote_from(&sw1, "sw2")?
            .iter()
            .all(|(_, departed)| departed.is_some())
    );
    Ok(())
}

#[test]
fn an_ipv6_address_added_after_start_joins_as_ip6_and_goes_down_with_its_port() -> anyhow::Result<()>
{
    let switch = Netns::new("minf6")?;
    let host = Netns::new("minf6h")?;
    netns::veth(&switch, "m0", &host, "h0")?;
    // No IPv6 on m0 at start (not even a link-local address).
    switch.exec("sysctl", &["-qw", "net.ipv6.conf.m0.disable_ipv6=1"])?;
    let text = r#"instance = "{instance}"
[dataplane]
member_ports = ["m0"]

[inference]
objects = [{ id = "svc:v6", layer = "service", kind = "service", depends_on = [{ id = "port:m0", kind = "maps-to" }] }]
"#;
    let agent = Agent::start(&switch, text)?;
    assert!(!in_model(&agent, "ip6:m0"), "no IPv6 address, no ip6:m0");
    switch.exec("sysctl", &["-qw", "net.ipv6.conf.m0.disable_ipv6=0"])?;
    switch.ip(&["addr", "add", "2001:db8:66::1/64", "dev", "m0", "nodad"])?;
    wait_in_model(&agent, "ip6:m0", true)?;
    let ip6 = state(&agent, "ip6:m0")?;
    assert_eq!(ip6["object"]["kind"], "ip6-interface", "{ip6}");
    assert_eq!(ip6["depends_on"][0]["to"], "lan:m0", "{ip6}");
    assert!(!in_model(&agent, "ip:m0"), "no IPv4 address: no ip:m0");
    // The far end down: the carrier goes, the address stays.
    host.ip(&["link", "set", "h0", "down"])?;
    assert_eq!(wait_effective(&agent, "ip6:m0", "down", 3)?, "lan:m0");
    host.ip(&["link", "set", "h0", "up"])?;
    wait_effective(&agent, "ip6:m0", "normal", 0)?;
    // Taken down here, the kernel flushes the port's IPv6 addresses: the
    // IPv6 interface stays, down, rather than vanish with its fault.
    switch.ip(&["link", "set", "m0", "down"])?;
    wait_effective(&agent, "ip6:m0", "down", 3)?;
    let left = switch.ip(&["-6", "addr", "show", "dev", "m0"])?;
    assert!(!left.contains("inet6"), "flushed: {left}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(in_model(&agent, "ip6:m0"));
    // Up again without an IPv6 address (IPv6 off): it leaves.
    switch.exec("sysctl", &["-qw", "net.ipv6.conf.m0.disable_ipv6=1"])?;
    switch.ip(&["link", "set", "m0", "up"])?;
    wait_effective(&agent, "port:m0", "normal", 0)?;
    // An address event (v4 here) makes it look again.
    switch.ip(&["addr", "add", "10.66.6.1/24", "dev", "m0"])?;
    wait_in_model(&agent, "ip:m0", true)?;
    wait_in_model(&agent, "ip6:m0", false)?;
    Ok(())
}

#[test]
fn the_peer_link_down_leaves_the_peer_degraded_over_the_backup_path_and_both_down_is_the_peer_down()
-> anyhow::Result<()> {
    let pair = Pair::new()?;
    let (backup_a, _) = pair.add_backup_path()?;
    let agent = pair.agent_a(&format!("\n[mclag]\ninit_delay_s = 0\n{backup_a}"))?;
    let link = state(&agent, "link:a-peer--mlag-peer")?;
    assert_eq!(link["object"]["kind"], "peer-link", "{link}");
    assert_eq!(link["depends_on"][0]["to"], "port:a-peer", "{link}");
    let backup = state(&agent, "link:a-bk--mlag-peer")?;
    assert_eq!(backup["object"]["kind"], "backup-path", "{backup}");
    let peer = state(&agent, "switch:mlag-peer")?;
    let group = &peer["object"]["group"];
    assert_eq!(group["redundancy"], "redundant", "{peer}");
    assert_eq!(
        group["members"],
        serde_json::json!(["link:a-peer--mlag-peer", "link:a-bk--mlag-peer"]),
        "{peer}"
    );
    // B is not running: the peer is in lost contact, not faulty.
    wait_effective(&agent, "switch:mlag-peer", "lost-contact", 0)?;

    // The peer link down: the peer is still reachable over the backup
    // path, degraded, and its twin port is not counted as up.
    pair.a.ip(&["link", "set", "a-peer", "down"])?;
    assert_eq!(
        wait_effective(&agent, "link:a-peer--mlag-peer", "down", 3)?,
        "port:a-peer"
    );
    assert_eq!(
        wait_effective(&agent, "switch:mlag-peer", "degraded", 1)?,
        "link:a-peer--mlag-peer"
    );
    wait_effective(&agent, "twin:1", "degraded", 1)?;
    // One alarm, on the port, with the link and the peer under it.
    let (raised, report) = wait_alarms(&agent, "the peer link's port alarmed", |r| {
        r.iter().any(|(o, _, s)| {
            o == "port:a-peer"
                && contains(s, "link:a-peer--mlag-peer")
                && contains(s, "switch:mlag-peer")
        })
    })?;
    assert!(
        raised.iter().all(|(o, _, _)| o != "switch:mlag-peer"),
        "{report}"
    );
    // The backup path down too: the peer is inferred down.
    pair.a.ip(&["link", "set", "a-bk", "down"])?;
    wait_effective(&agent, "switch:mlag-peer", "down", 3)?;
    wait_effective(&agent, "twin:1", "down", 3)?;
    // The peer link back: degraded again; the backup path back: the peer
    // is in lost contact again (B is still not running).
    pair.a.ip(&["link", "set", "a-peer", "up"])?;
    wait_effective(&agent, "switch:mlag-peer", "degraded", 1)?;
    pair.a.ip(&["link", "set", "a-bk", "up"])?;
    wait_effective(&agent, "switch:mlag-peer", "lost-contact", 0)?;
    Ok(())
}

#[test]
fn a_vlan_of_the_config_is_an_object_over_its_mlag_interface_that_its_ip_interface_maps()
-> anyhow::Result<()> {
    // Only A runs: its twin is unknown, so the MLAG interface is degraded.
    let pair = Pair::new()?;
    let agent = pair.agent_a(
        r#"vlan_interfaces = [{ mlag_id = 1, outer_vlan = 10, interface = "a-c" }, { mlag_id = 1, outer_vlan = 20, inner_vlan = 5, interface = "a-c" }]"#,
    )?;
    let vlan = state(&agent, "vlan:10")?;
    assert_eq!(vlan["object"]["kind"], "vlan", "{vlan}");
    assert_eq!(vlan["object"]["layer"], "l2", "{vlan}");
    assert_eq!(
        vlan["object"]["group"]["members"],
        serde_json::json!(["mlag:1"]),
        "{vlan}"
    );
    assert!(in_model(&agent, "vlan:20.5"));
    let ip = state(&agent, "ip:a-c")?;
    assert!(
        ip["depends_on"]
            .as_array()
            .is_some_and(|d| d.iter().any(|l| l["to"] == "vlan:10")),
        "{ip}"
    );
    assert_eq!(wait_effective(&agent, "vlan:10", "degraded", 1)?, "mlag:1");
    // The member port down too: no carrier of the VLAN is left.
    pair.a.ip(&["link", "set", "a-c", "down"])?;
    assert_eq!(wait_effective(&agent, "vlan:10", "down", 3)?, "mlag:1");
    wait_effective(&agent, "vlan:20.5", "down", 3)?;
    pair.a.ip(&["link", "set", "a-c", "up"])?;
    wait_effective(&agent, "vlan:10", "degraded", 1)?;
    Ok(())
}

#[test]
fn a_declared_link_to_a_members_port_goes_down_with_that_port_under_its_alarm() -> anyhow::Result<()>
{
    use mlag_testbed::fabric::{FabricLab, wait_all_see, wait_fault};
    const SETTLE: Duration = Duration::from_secs(20);
    let lab = FabricLab::new(3)?;
    // sw0's p1 is cabled to sw2's p1b (as sw0 declares), and a service of
    // sw0 runs over that link.
    let declared = r#"
[inference]
links = [{ local = "p1", remote = "sw2/p1b" }]
objects = [{ id = "svc:uplink", layer = "service", kind = "service", depends_on = [{ id = "link:p1--sw2/p1b", kind = "maps-to" }] }]
"#;
    let sw0 = lab.start(0, declared)?;
    let sw1 = lab.start(1, "")?;
    let sw2 = lab.start(2, "")?;
    wait_all_see(&[&sw0, &sw1, &sw2], &["sw0", "sw1", "sw2"], SETTLE)?;
    let link = state(&sw0, "link:p1--sw2/p1b")?;
    assert_eq!(link["object"]["kind"], "link", "{link}");
    let ends: Vec<&str> = link["depends_on"]
        .as_array()
        .map(|d| d.iter().filter_map(|l| l["to"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        ends.contains(&"port:p1") && ends.contains(&"port:sw2/p1b"),
        "{link}"
    );
    wait_effective(&sw0, "svc:uplink", "normal", 0)?;

    // The far end down at sw2: the link and the service are down, under
    // one alarm on sw2's port.
    lab.nodes[2].ip(&["link", "set", "p1b", "down"])?;
    wait_fault(&sw0, "sw2", "p1b", "port-down", SETTLE)?;
    assert_eq!(
        wait_effective(&sw0, "link:p1--sw2/p1b", "down", 3)?,
        "port:sw2/p1b"
    );
    wait_effective(&sw0, "svc:uplink", "down", 3)?;
    let (raised, report) = wait_alarms(&sw0, "one alarm on sw2's port", |r| {
        r.iter().any(|(o, _, s)| {
            o == "port:sw2/p1b" && contains(s, "link:p1--sw2/p1b") && contains(s, "svc:uplink")
        })
    })?;
    assert!(
        raised
            .iter()
            .all(|(o, _, _)| o != "link:p1--sw2/p1b" && o != "svc:uplink"),
        "{report}"
    );
    lab.nodes[2].ip(&["link", "set", "p1b", "up"])?;
    wait_effective(&sw0, "svc:uplink", "normal", 0)?;
    Ok(())
}
