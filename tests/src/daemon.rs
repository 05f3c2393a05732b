//! A server program from a Debian package (Prometheus, Alertmanager, …) run
//! by a test inside a namespace: its config and data in a directory of its
//! own, its output in a log there, killed when dropped.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use crate::{agent::TempDir, netns::Netns, wait_until};

/// The running program.
pub struct Daemon {
    child: Child,
    dir: TempDir,
    /// Its HTTP base URL (`http://LISTEN`), reachable inside the namespace.
    pub base: String,
}

impl Daemon {
    /// Writes `config` to `config.yml` in a fresh directory and runs
    /// `program --config.file=… ARGS --web.listen-address=LISTEN` in `ns`
    /// (`args` may use `{dir}` for the directory), then waits until `ready`
    /// (given the base URL) says so, failing with the program's log.
    pub fn start(
        ns: &Netns,
        program: &str,
        config: &str,
        args: &[&str],
        listen: &str,
        ready: impl Fn(&str) -> Result<(), String>,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new(&format!("mlag-{program}"))?;
        let config_file = dir.path().join("config.yml");
        std::fs::write(&config_file, config)?;
        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let dir_text = dir.path().display().to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), program])
            .arg(format!("--config.file={}", config_file.display()))
            .args(args.iter().map(|a| a.replace("{dir}", &dir_text)))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("starting {program} (its Debian package; `cargo xtask setup`)")
            })?;
        let daemon = Self {
            child,
            dir,
            base: format!("http://{listen}"),
        };
        wait_until(Duration::from_secs(30), &format!("{program} ready"), || {
            ready(&daemon.base).map_err(|e| format!("{e}\n{}", daemon.log()))
        })?;
        Ok(daemon)
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Its directory (config, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
