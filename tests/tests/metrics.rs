//! `[metrics]` against real agents: the exposition a live agent serves is
//! accepted by `promtool check metrics`, and a real Prometheus server
//! scraping both switches of a pair sees a classifier counter move when a
//! reply crosses a member port.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use mlag_testbed::{
    daemon::Daemon,
    netns::Netns,
    pair::{B_IP, C_IP, Pair},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(20);

/// `[metrics]` on `listen`, appended to a pair config's `[peer]` section.
fn metrics_on(listen: &str) -> String {
    format!("\n[metrics]\nlisten = \"{listen}\"\n")
}

/// Runs `promtool check metrics` on `text`: its complaints, if any.
fn promtool_check(text: &str) -> anyhow::Result<Option<String>> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool (Debian package prometheus; `cargo xtask setup`)")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((!out.status.success() || !said.trim().is_empty()).then_some(said))
}

#[test]
fn promtool_accepts_the_metrics_of_a_live_agent() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let mclag = "\n[mclag]\ninit_delay_s = 0\n";
    let a = pair.agent_a(&format!("{mclag}{}", metrics_on("127.0.0.1:9472")))?;
    let _b = pair.agent_b(mclag)?;
    a.wait_session_up()?;
    // A reply on the member port, so the per-port family has samples too.
    pair.c.send_frames(
        "c-a",
        &[pair.reply_from_c(C_IP, pair.b_mac, B_IP).to_bytes()],
    )?;
    wait_until(WAIT, "the reply captured", || match a.counter("captured") {
        Ok(n) if n > 0 => Ok(()),
        other => Err(format!("{other:?}")),
    })?;

    let url = "http://127.0.0.1:9472/metrics";
    let (status, content_type, text) = pair.a.http_get(url, None)?;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    if let Some(complaints) = promtool_check(&text)? {
        bail!("promtool check metrics refused the exposition:\n{complaints}\n---\n{text}");
    }
    for expected in [
        "mlag_sync_classifier_frames_total ",
        "mlag_sync_peer_session_state{peer=\"169.254.77.2\",state=\"up\"} 1",
        "mlag_sync_port_captured_total{port=\"a-c\",family=\"arp\",class=\"peer\"} 1",
        "mlag_sync_mclag_role{role=\"",
        "mlag_sync_module_up{module=\"inference\"} 1",
        "# TYPE mlag_sync_ringbuf_lost_total counter",
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }

    let (_, content_type, om) = pair.a.http_get(url, Some("application/openmetrics-text"))?;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(om.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    Ok(())
}

/// A Prometheus server in a namespace, killed on drop.
struct Prometheus(Daemon);

impl Prometheus {
    /// Starts Prometheus in `ns` on `listen`, scraping `targets` every second.
    fn start(ns: &Netns, listen: &str, targets: &[&str]) -> anyhow::Result<Self> {
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: mlag-sync\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        Daemon::start(
            ns,
            "prometheus",
            &config,
            &["--storage.tsdb.path={dir}/data"],
            listen,
            |base| match ns.http_get(&format!("{base}/-/ready"), None) {
                Ok((200, _, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .map(Self)
    }

    fn log(&self) -> String {
        self.0.log()
    }

    /// The instant vector of `query`: (labels, value) per series.
    fn query(&self, ns: &Netns, query: &str) -> anyhow::Result<Vec<(serde_json::Value, f64)>> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.0.base),
            &[("query", query)],
        )?;
        let (status, _, body) = ns.http_get(url.as_str(), None)?;
        let json: serde_json::Value = serde_json::from_str(&body)?;
        if status != 200 || json["status"] != "success" {
            bail!("query {query} answered {status}: {body}");
        }
        json["data"]["result"]
            .as_array()
            .context("result is a vector")?
            .iter()
            .map(|series| {
                let value = series["value"][1]
                    .as_str()
                    .context("sample value")?
                    .parse()?;
                Ok((series["metric"].clone(), value))
            })
            .collect()
    }
}

#[test]
fn prometheus_scraping_both_switches_sees_a_classifier_counter_move() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    // Each agent serves on its peer-link address, so one Prometheus in A's
    // namespace reaches both over the peer link.
    let (target_a, target_b) = ("169.254.77.1:9472", "169.254.77.2:9472");
    let a = pair.agent_a(&metrics_on(target_a))?;
    let _b = pair.agent_b(&metrics_on(target_b))?;
    a.wait_session_up()?;
    let prometheus = Prometheus::start(&pair.a, "127.0.0.1:9090", &[target_a, target_b])?;

    wait_until(WAIT, "both agents scraped and up", || {
        match prometheus.query(&pair.a, "up == 1") {
            Ok(up) if up.len() == 2 => Ok(()),
            other => Err(format!("{other:?}\n{}", prometheus.log())),
        }
    })?;
    let counter = format!(
        "mlag_sync_classifier_classified_total{{family=\"arp\",class=\"peer\",instance=\"{target_a}\"}}"
    );
    let before = wait_until(WAIT, "the classifier counter scraped", || match prometheus
        .query(&pair.a, &counter)
    {
        Ok(series) if series.len() == 1 => Ok(series[0].1),
        other => Err(format!("{other:?}")),
    })?;
    // A reply to B's MAC arriving on A's member port: class peer.
    pair.c.send_frames(
        "c-a",
        &[pair.reply_from_c(C_IP, pair.b_mac, B_IP).to_bytes()],
    )?;
    let after = wait_until(WAIT, "the counter risen in Prometheus", || match prometheus
        .query(&pair.a, &counter)
    {
        Ok(series) if series.len() == 1 && series[0].1 > before => Ok(series[0].1),
        other => Err(format!("{other:?} (before {before})")),
    })?;
    assert_eq!(after, before + 1.0, "one reply, counted once");
    let b_series = prometheus.query(
        &pair.a,
        &format!("mlag_sync_peer_session_state{{state=\"up\",instance=\"{target_b}\"}}"),
    )?;
    assert_eq!(b_series.len(), 1, "B's peer session scraped too");
    assert_eq!(b_series[0].1, 1.0);
    Ok(())
}
