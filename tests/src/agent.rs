//! A real `sync-agent run` process inside a namespace, with its own config
//! file, control socket and log, stopped and cleaned up on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// Path of the agent binary: `SYNC_AGENT_BIN` (set by `cargo xtask`), else
/// the debug build in this workspace.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("SYNC_AGENT_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sync-agent"),
    };
    if !path.is_file() {
        bail!(
            "sync-agent binary not found at {} (run the tests with `cargo xtask test`)",
            path.display()
        );
    }
    Ok(path)
}

/// Directory for one test's files, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `/tmp/<unique name>`.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(crate::unique_name(prefix));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running agent.
pub struct Agent {
    child: Option<Child>,
    binary: PathBuf,
    /// Its instance name (unique per test).
    pub instance: String,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its stderr log.
    pub log: PathBuf,
    _dir: TempDir,
}

impl Agent {
    /// Writes `config` (TOML, with `instance = "{instance}"` substituted) and
    /// starts the agent in `ns`, waiting until it answers `status`.
    pub fn start(ns: &Netns, config_template: &str) -> anyhow::Result<Self> {
        let agent = Self::spawn(ns, config_template)?;
        agent.wait_ready()?;
        Ok(agent)
    }

    /// Starts the agent without waiting (for tests that expect it to fail).
    pub fn spawn(ns: &Netns, config_template: &str) -> anyhow::Result<Self> {
        Self::spawn_with(ns, config_template, &[])
    }

    /// Like [`Agent::spawn`], with `wrapper` (e.g. `setpriv …` to drop
    /// privileges) run inside the namespace in front of the agent.
    pub fn spawn_with(ns: &Netns, config_template: &str, wrapper: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_with_env(ns, config_template, wrapper, &[])
    }

    /// Like [`Agent::spawn_with`], with `env` added to the agent's
    /// environment (e.g. systemd's `NOTIFY_SOCKET`).
    pub fn spawn_with_env(
        ns: &Netns,
        config_template: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let binary = agent_binary()?;
        let dir = TempDir::new("mlag-agent")?;
        let instance = crate::unique_name("t");
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, config_template.replace("{instance}", &instance))?;
        let socket = dir.path().join("control.sock");
        let log = dir.path().join("agent.log");
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()])
            .args(wrapper)
            .arg(&binary);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--log")
            .arg("info,netlink_packet_route=error")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child: Some(child),
            binary,
            instance,
            socket,
            config,
            log,
            _dir: dir,
        })
    }

    /// Process id of the running agent (`ip netns exec` execs it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU time (user + system) the agent has used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line, in clock ticks.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_micros(ticks * 1_000_000 / hz))
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the control socket answers, or fails with the log.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.query(&["status"]).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("agent did not become ready; log:\n{}", self.log_text())
    }

    /// Runs `sync-agent --socket S -j ARGS` and returns the JSON answer.
    pub fn query(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.cli(&["-j"], args)?)?)
    }

    /// Runs `sync-agent --socket S ARGS` and returns its text output.
    pub fn query_text(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&self.cli(&[], args)?).into_owned())
    }

    /// `sync-agent --socket S FLAGS ARGS`: its stdout, or its stderr as the error.
    fn cli(&self, flags: &[&str], args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let out = Command::new(&self.binary)
            .arg("--socket")
            .arg(&self.socket)
            .args(flags)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "sync-agent {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// One request over the control socket itself (not through the CLI,
    /// whose process start-up is not the agent's answer time): the answer's
    /// data and how long the agent took to give it.
    pub fn timed_request(
        &self,
        request: &sync_agent::control::protocol::Request,
    ) -> anyhow::Result<(serde_json::Value, Duration)> {
        use std::io::{BufRead as _, BufReader, Write as _};
        let started = Instant::now();
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        stream.write_all(line.as_bytes())?;
        let mut answer = String::new();
        BufReader::new(&stream)
            .read_line(&mut answer)
            .context("no answer within 5 s")?;
        let took = started.elapsed();
        let answer: serde_json::Value = serde_json::from_str(&answer)?;
        anyhow::ensure!(answer["ok"] == true, "request failed: {answer}");
        Ok((answer["data"].clone(), took))
    }

    /// `show counters -j`.
    pub fn counters(&self) -> anyhow::Result<serde_json::Value> {
        self.query(&["show", "counters"])
    }

    /// Waits (up to 15 s) until `show peer` says the peer session is up;
    /// returns that report.
    pub fn wait_session_up(&self) -> anyhow::Result<serde_json::Value> {
        crate::wait_until(Duration::from_secs(15), "peer session up", || {
            match self.query(&["show", "peer"]) {
                Ok(p) if p["state"] == "up" => Ok(p),
                other => Err(other
                    .map(|p| p["state"].to_string())
                    .map_err(|e| e.to_string())),
            }
        })
    }

    /// One integer counter of `show counters -j`.
    pub fn counter(&self, name: &str) -> anyhow::Result<u64> {
        self.counters()?[name]
            .as_u64()
            .with_context(|| format!("counter {name} missing"))
    }

    /// `show captured -j` (newest first).
    pub fn captured(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self
            .query(&["show", "captured", "-n", "1000"])?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("agent already stopped")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("agent still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the agent (SIGKILL: no goodbye to anyone) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("agent already stopped")?;
        child.kill()?;
        let status = child.wait()?;
        self.child = None;
        Ok(status)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_ref().context("agent already stopped")?;
        // `ip netns exec` execs the agent, so the child pid is the agent's.
        // SAFETY: signalling a pid has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(10))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some()
            && self.stop().is_err()
            && let Some(child) = self.child.as_mut()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
