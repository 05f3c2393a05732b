//! The lab's web view in a real browser: `mlag-lab --rounds 2 --hold` runs
//! the whole product (a port flap, then a config change with a canary) and
//! stays up; headless Chromium (Debian's `chromium`, installed by `cargo
//! xtask setup`) loads the page switch A serves, through the port the lab
//! forwards to A's namespace. The test checks the DOM for the fabric's
//! members and for a fault it causes itself (B's member port taken down),
//! that the page's script refreshed it, the center's page for the
//! rollout's batches, and saves a screenshot of each.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use mlag_testbed::wait_until;

/// Building six agents' namespaces and one round takes well under this.
const LAB_UP: Duration = Duration::from_secs(240);
const WAIT: Duration = Duration::from_secs(40);
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// The lab, stopped with SIGTERM (it removes everything) on drop.
struct Lab {
    child: Child,
    lines: mpsc::Receiver<String>,
    out: String,
}

impl Lab {
    fn start() -> anyhow::Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlag-lab"))
            .args(["--rounds", "2", "--hold"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting mlag-lab")?;
        let stdout = child.stdout.take().context("lab stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            out: String::new(),
        })
    }

    /// Reads the lab's output until a line starts with `prefix`.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.out.push_str(&line);
                    self.out.push('\n');
                    if line.starts_with(prefix) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "the lab printed no line {prefix:?} within {timeout:?}:\n{}",
                    self.out
                ),
            }
        }
    }

    /// SIGTERM, then waits for it to remove everything and exit.
    fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                while let Ok(line) = self.lines.try_recv() {
                    self.out.push_str(&line);
                    self.out.push('\n');
                }
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the lab did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.stop();
        }
    }
}

/// Runs headless Chromium with `args` then `url`, within [`BROWSER_TIMEOUT`];
/// its standard output.
fn chromium(profile: &Path, args: &[&str], url: &str) -> anyhow::Result<String> {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            // Root in a test container: Chromium's sandbox needs user namespaces.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting chromium (Debian package chromium; `cargo xtask setup`)")?;
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("chromium did not finish within {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The DOM after the page's script ran for a few (virtual) seconds.
fn dom(profile: &Path, url: &str) -> anyhow::Result<String> {
    chromium(profile, &["--virtual-time-budget=4000", "--dump-dom"], url)
}

/// One fabric node's `class` attribute in the DOM (`member server active up`).
fn node_class<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let end = dom.find(&format!("\" data-id=\"{id}\""))?;
    let start = dom[..end].rfind("class=\"")? + "class=\"".len();
    Some(&dom[start..end])
}

/// (status, body) of one request to the host's forwarded port.
fn request(method: reqwest::Method, url: &str) -> anyhow::Result<(u16, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let response = client.request(method, url).send().await?;
        Ok((response.status().as_u16(), response.text().await?))
    })
}

#[test]
fn chromium_shows_the_labs_members_and_a_port_taken_down_and_a_screenshot_is_saved()
-> anyhow::Result<()> {
    let mut lab = Lab::start()?;
    let namespaces = lab.wait_line("namespaces: A ", LAB_UP)?;
    let b_ns = namespaces
        .split_whitespace()
        .nth(4)
        .context("B's namespace in the lab's output")?
        .to_string();
    lab.wait_line("holding the lab up", LAB_UP)?;
    let web = lab.wait_line("web view: switch A ", WAIT)?;
    // web view: switch A URL  switch B URL  config center URL (...)
    let urls: Vec<&str> = web
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .collect();
    ensure!(urls.len() == 3, "{web}");
    let (url, center_url) = (urls[0].to_string(), urls[2].to_string());
    ensure!(url.starts_with("http://127.0.0.1:"), "{web}");

    // Kept after the test, for whoever wants to look at it.
    let shots = std::env::temp_dir().join(format!("mlag-web-{}", std::process::id()));
    std::fs::create_dir_all(&shots)?;
    let profile = tempfile::tempdir()?;

    // Every member of the fabric, drawn, with the active server marked;
    // B's member port is up again after the lab's flap: no fault in force.
    let members = ["sw-a", "sw-b", "sw-d", "sw-e"];
    let before = wait_until(WAIT, "every member up in A's page", || {
        let dom = dom(profile.path(), &url).map_err(|e| e.to_string())?;
        let classes: Vec<Option<&str>> = members.iter().map(|m| node_class(&dom, m)).collect();
        if classes
            .iter()
            .all(|c| c.is_some_and(|c| c.ends_with(" up")))
        {
            Ok(dom)
        } else {
            Err(format!("{classes:?}"))
        }
    })?;
    for section in ["mlag", "fabric", "inference", "rollout"] {
        ensure!(
            before.contains(&format!("<section id=\"{section}\">")),
            "no {section} section:\n{before}"
        );
    }
    ensure!(
        node_class(&before, "sw-a") == Some("member server active up"),
        "A is the active server: {:?}",
        node_class(&before, "sw-a")
    );
    ensure!(
        before.contains("refreshed every 1 s"),
        "the page's script did not refresh it:\n{before}"
    );

    // The fault: B's member port down. A hears of it over the fabric (a
    // port-down fault from sw-b) and over the peer link (its MLAG
    // interface loses its twin).
    Command::new("ip")
        .args(["-n", &b_ns, "link", "set", "b-c", "down"])
        .status()
        .context("ip link set b-c down")?;
    let after = wait_until(WAIT, "B's port fault in A's page", || {
        let dom = dom(profile.path(), &url).map_err(|e| e.to_string())?;
        let b = node_class(&dom, "sw-b").unwrap_or("").to_string();
        if b.ends_with(" fault")
            && dom.contains("sw-b: port-down b-c")
            && dom.contains("data-id=\"mlag:1\"")
        {
            Ok(dom)
        } else {
            Err(format!("sw-b {b:?}"))
        }
    })?;
    ensure!(
        node_class(&after, "sw-d").is_some_and(|c| !c.contains("fault")),
        "only B is faulty"
    );

    let shot = shots.join("web-view.png");
    chromium(
        profile.path(),
        &[
            "--virtual-time-budget=3000",
            "--window-size=1400,2600",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    )?;
    let png = std::fs::read(&shot).with_context(|| format!("no screenshot {}", shot.display()))?;
    ensure!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} is not a screenshot ({} bytes)",
        shot.display(),
        png.len()
    );
    println!("screenshot of the web view: {}", shot.display());

    // The center's page: the round's rollout, canary alone first.
    let center = wait_until(WAIT, "the rollout's batches on the center's page", || {
        let dom = dom(profile.path(), &center_url).map_err(|e| e.to_string())?;
        if dom.contains("batch 1 (canary)") && dom.contains("sw-d motd: succeeded") {
            Ok(dom)
        } else {
            Err(dom)
        }
    })?;
    ensure!(
        center.contains("<section id=\"rollout\">") && !center.contains("<section id=\"fabric\">"),
        "the center runs no fabric:\n{center}"
    );
    let center_shot = shots.join("web-view-center.png");
    chromium(
        profile.path(),
        &[
            "--virtual-time-budget=3000",
            "--window-size=1400,1400",
            &format!("--screenshot={}", center_shot.display()),
        ],
        &center_url,
    )?;
    println!(
        "screenshot of the center's web view: {}",
        center_shot.display()
    );

    // Bad input on the same page: no such path, a write.
    let base = url.trim_end_matches('/');
    let (status, body) = request(reqwest::Method::GET, &format!("{base}/no-such-page"))?;
    ensure!(status == 404 && body.contains("no page"), "{status} {body}");
    let (status, body) = request(reqwest::Method::POST, &format!("{base}/api/view"))?;
    ensure!(
        status == 405 && body.contains("read-only"),
        "{status} {body}"
    );

    let status = lab.stop()?;
    ensure!(status.success(), "the lab failed ({status}):\n{}", lab.out);
    let pid = lab.child.id();
    let left = Command::new("ip").args(["netns", "list"]).output()?;
    let left = String::from_utf8_lossy(&left.stdout);
    ensure!(
        !left.contains(&format!("-{pid}-")),
        "namespaces of the lab left behind:\n{left}"
    );
    Ok(())
}
