//! SPEC 5 against a real kernel: the agent's state model follows a member
//! port taken down and up, inferring the state of what depends on it.

use std::time::Duration;

use mlag_testbed::{agent::Agent, netns, netns::Netns, wait_until};

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
    let history = state(&agent, "port:m0")?["object"]["info_history"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(
        history >= 2,
        "the port's information history records the changes"
    );
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
