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
