//! Reload (SIGHUP or `sync-agent reload`): the file is read and validated
//! again; each section goes to its owner or is reported, by name, as taking
//! effect at the next restart (logged, and listed in the answer to
//! `sync-agent reload`). Only `[dataplane]` (and the MLAG ids of
//! `[peer]`, which only number the member ports) apply live today.

use std::path::{Path, PathBuf};

use crate::{
    config::Config,
    control::router::ReloadRequest,
    dataplane::{DataplaneHandle, report::StatusReport},
};

/// The MLAG id of each member port: `[peer].mlag_ids`, else the position
/// in `member_ports` from 1.
pub(super) fn mlag_ids(config: &Config) -> Vec<(String, u32)> {
    match &config.peer {
        Some(peer) => peer.mlag_ids_for(config.member_ports()),
        None => config
            .member_ports()
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i as u32 + 1))
            .collect(),
    }
}

/// The sections whose change only a restart applies, that differ between
/// the running config and a reloaded one.
pub(super) fn sections_needing_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let peer_without_ids = |config: &Config| {
        config.peer.clone().map(|mut peer| {
            peer.mlag_ids.clear();
            peer
        })
    };
    let mut changed = Vec::new();
    if peer_without_ids(running) != peer_without_ids(new) {
        changed.push("peer");
    }
    if running.mclag != new.mclag {
        changed.push("mclag");
    }
    if running.fabric != new.fabric {
        changed.push("fabric");
    }
    if running.inference != new.inference {
        changed.push("inference");
    }
    if running.rollout.center != new.rollout.center {
        changed.push("rollout.center");
    }
    if running.rollout.device != new.rollout.device {
        changed.push("rollout.device");
    }
    if running.metrics != new.metrics {
        changed.push("metrics");
    }
    if running.web != new.web {
        changed.push("web");
    }
    changed
}

/// Reads the file again and hands its sections out.
pub(super) struct Reloader {
    path: PathBuf,
    /// The config the agent started with: what every section but
    /// `[dataplane]` still runs with.
    running: Config,
    /// None without `[dataplane]`.
    dataplane: Option<DataplaneHandle>,
}

impl Reloader {
    pub(super) fn new(path: &Path, running: Config, dataplane: Option<DataplaneHandle>) -> Self {
        Self {
            path: path.to_path_buf(),
            running,
            dataplane,
        }
    }

    /// Reloads; the answer (the dataplane's status, or why the file was
    /// refused) goes to `reply` when there is one. Never waits on a module:
    /// the dataplane's part is handed over and answered from there.
    pub(super) fn reload(&mut self, reply: Option<ReloadRequest>) {
        let refuse = |reply: Option<ReloadRequest>, message: String| {
            tracing::error!("reload refused: {message}");
            if let Some(reply) = reply {
                let _ = reply.send(Err(message));
            }
        };
        let new = match Config::load(&self.path) {
            Ok(new) => new,
            Err(err) => return refuse(reply, err.to_string()),
        };
        if new.instance != self.running.instance {
            return refuse(
                reply,
                format!(
                    "instance cannot change on reload ({} -> {}); restart the agent",
                    self.running.instance, new.instance
                ),
            );
        }
        let awaiting_restart = sections_needing_restart(&self.running, &new);
        for section in &awaiting_restart {
            tracing::warn!(
                section,
                "[{section}] changed in {}; it takes effect at the next restart",
                self.path.display()
            );
        }
        let mlag_ids = mlag_ids(&new);
        let file = self.path.display().to_string();
        let (dataplane, section) = match (self.dataplane.clone(), new.dataplane) {
            (Some(dataplane), Some(section)) => (dataplane, section),
            (Some(_), None) => {
                return refuse(
                    reply,
                    "[dataplane] cannot be removed on reload; restart the agent".into(),
                );
            }
            (None, added) => {
                let mut awaiting: Vec<String> =
                    awaiting_restart.iter().map(|s| s.to_string()).collect();
                if added.is_some() {
                    tracing::warn!(
                        "[dataplane] added in {file}; it takes effect at the next restart"
                    );
                    awaiting.push("dataplane".into());
                }
                tracing::info!(file, "config reloaded");
                if let Some(reply) = reply {
                    let mut status =
                        StatusReport::without_dataplane(&self.running.instance, &file, 0);
                    status.awaiting_restart = awaiting;
                    let _ = reply.send(Ok(status));
                }
                return;
            }
        };
        tokio::spawn(async move {
            let result = dataplane
                .reload(section, mlag_ids)
                .await
                .map(|mut status| {
                    status.awaiting_restart =
                        awaiting_restart.iter().map(|s| s.to_string()).collect();
                    status
                })
                .map_err(|e| e.to_string());
            match &result {
                Ok(_) => tracing::info!(file, "config reloaded"),
                Err(err) => tracing::error!("reload refused: {err}"),
            }
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
instance = "a"
[dataplane]
member_ports = ["eth1", "eth2"]
[peer]
local_address = "169.254.0.1"
peer_address = "169.254.0.2"
"#;

    #[test]
    fn only_sections_that_changed_and_need_a_restart_are_named() {
        let running = Config::parse(BASE, "test").unwrap();
        let same_but_dataplane =
            Config::parse(&BASE.replace("[peer]", "vrrp_groups = [3]\n[peer]"), "test").unwrap();
        assert!(sections_needing_restart(&running, &same_but_dataplane).is_empty());
        let ids_only = Config::parse(&format!("{BASE}mlag_ids = {{ eth1 = 7 }}\n"), "t").unwrap();
        assert!(sections_needing_restart(&running, &ids_only).is_empty());
        assert_eq!(
            mlag_ids(&ids_only),
            [("eth1".into(), 7), ("eth2".into(), 2)]
        );
        let peer_and_inference = Config::parse(
            &format!("{BASE}keepalive_interval_ms = 200\ndead_interval_ms = 1000\n[inference]\nhistory = 8\n"),
            "t",
        )
        .unwrap();
        assert_eq!(
            sections_needing_restart(&running, &peer_and_inference),
            ["peer", "inference"]
        );
    }

    #[test]
    fn without_a_peer_section_mlag_ids_are_positions() {
        let config = Config::parse(
            "instance = \"a\"\n[dataplane]\nmember_ports = [\"x\", \"y\"]\n",
            "t",
        )
        .unwrap();
        assert_eq!(mlag_ids(&config), [("x".into(), 1), ("y".into(), 2)]);
    }
}
