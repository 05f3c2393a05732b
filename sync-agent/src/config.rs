//! The agent's TOML config file (SPEC 7.1): the instance name and one
//! section per SPEC module. Each section's types, defaults and validation
//! live with the module that owns it (`<module>/config.rs`); this file
//! only assembles them, reads the file, and makes the checks that need two
//! sections at once. Unknown fields are refused; every problem is reported
//! at once, each naming its field.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::validate::Problem;
use crate::{
    dataplane::config::DataplaneConfig, fabric::config::FabricConfig,
    inference::config::InferenceConfig, mclag::config::MclagConfig, metrics::config::MetricsConfig,
    peersync::config::PeerConfig, rollout::config::RolloutConfig, validate::Problems,
    web::config::WebConfig,
};

/// The whole config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this agent instance; names its control socket.
    pub instance: String,
    /// The XDP classifier on the member ports (SPEC 1). Optional: a config
    /// center or a fabric server on a management host runs without it.
    #[serde(default)]
    pub dataplane: Option<DataplaneConfig>,
    /// Peer sync over the peer link (SPEC 2); without it nothing is synced.
    #[serde(default)]
    pub peer: Option<PeerConfig>,
    /// MC-LAG pair identity (SPEC 3); needs `[peer]`.
    #[serde(default)]
    pub mclag: Option<MclagConfig>,
    /// State inference (SPEC 5): extra objects and rules.
    #[serde(default)]
    pub inference: InferenceConfig,
    /// Config center and rollout (SPEC 6).
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// Fabric sync over MQTT (SPEC 4).
    #[serde(default)]
    pub fabric: Option<FabricConfig>,
    /// Prometheus metrics over HTTP; off unless the section is present.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The live web view over HTTP; off unless the section is present
    /// (then on the loopback address unless `listen` says otherwise).
    #[serde(default)]
    pub web: Option<WebConfig>,
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a field of the wrong type or an unknown field.
    #[error("config file {path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message (names the field and line).
        message: String,
    },
    /// Well-formed but wrong values.
    #[error("config file {path} has {} problem(s):\n  {}", problems.len(), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: origin.to_string(),
                problems,
            })
        }
    }

    /// Every semantic problem of the config.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        if self.instance.is_empty()
            || self.instance.len() > 64
            || !self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            || self.instance.starts_with('.')
        {
            out.add(
                "instance",
                format!(
                    "'{}' must be 1-64 characters of letters, digits, '-', '_' or '.', not starting with '.'",
                    self.instance
                ),
            );
        }
        if let Some(dataplane) = &self.dataplane {
            dataplane.problems(&mut out);
        }
        if let Some(peer) = &self.peer {
            match &self.dataplane {
                Some(dataplane) => peer.problems(&dataplane.member_ports, &mut out),
                None => out.add(
                    "peer",
                    "needs a [dataplane] section (peer sync works on the member ports)",
                ),
            }
        }
        if self.roles().is_empty() {
            out.add(
                "instance",
                "nothing to run: give at least one of [dataplane], [fabric], [rollout.center], [rollout.device]",
            );
        }
        self.rollout.problems(&mut out);
        if let Some(fabric) = &self.fabric {
            for (field, message) in fabric.problems() {
                out.add(field, message);
            }
        }
        self.inference.problems(&mut out);
        if let Some(metrics) = &self.metrics {
            metrics.problems(self.rollout.center.as_ref().map(|c| c.listen), &mut out);
        }
        if let Some(web) = &self.web {
            let others: Vec<(&str, std::net::SocketAddr)> = [
                self.metrics.as_ref().map(|m| ("metrics.listen", m.listen)),
                self.rollout
                    .center
                    .as_ref()
                    .map(|c| ("rollout.center.listen", c.listen)),
            ]
            .into_iter()
            .flatten()
            .collect();
            web.problems(&others, &mut out);
        }
        if let Some(mclag) = &self.mclag {
            self.mclag_with_peer_problems(mclag, &mut out);
            mclag.problems(&mut out);
        }
        out.into_vec()
    }

    /// The roles this config runs, in start order: `dataplane`, `peer`,
    /// `mclag`, `fabric`, `rollout-center`, `rollout-device` (the state
    /// model always runs and is not listed).
    pub fn roles(&self) -> Vec<&'static str> {
        let mut roles = Vec::new();
        if self.dataplane.is_some() {
            roles.push("dataplane");
        }
        if self.peer.is_some() {
            roles.push("peer");
        }
        if self.mclag.is_some() {
            roles.push("mclag");
        }
        if self.fabric.is_some() {
            roles.push("fabric");
        }
        if self.rollout.center.is_some() {
            roles.push("rollout-center");
        }
        if self.rollout.device.is_some() {
            roles.push("rollout-device");
        }
        roles
    }

    /// The member ports, none without `[dataplane]`.
    pub fn member_ports(&self) -> &[String] {
        self.dataplane
            .as_ref()
            .map_or(&[], |d| d.member_ports.as_slice())
    }

    /// `[mclag]` runs over the `[peer]` session: the checks that need both.
    fn mclag_with_peer_problems(&self, mclag: &MclagConfig, out: &mut Problems) {
        match &self.peer {
            None => out.add(
                "mclag",
                "needs a [peer] section (the election runs over the peer session)",
            ),
            Some(peer) => {
                let address = mclag.address.unwrap_or(peer.local_address);
                if address.is_ipv4() != peer.peer_address.is_ipv4() && mclag.address.is_some() {
                    out.add(
                        "mclag.address",
                        "use the same address family on both switches",
                    );
                }
                if let Some(backup) = &mclag.backup
                    && peer.port == backup.port
                    && peer.local_address == backup.local_address
                {
                    out.add(
                        "mclag.backup.port",
                        "clashes with the peer-link keepalive socket",
                    );
                }
            }
        }
    }
}
#[cfg(test)]
mod tests {

    /// The README's config example is a valid config.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("README has a toml block") + 8;
        let end = start + readme[start..].find("```").expect("closed");
        let config = Config::parse(&readme[start..end], "README.md").unwrap();
        assert!(config.metrics.is_some(), "the example shows [metrics]");
        let fabric = config.fabric.expect("the example shows [fabric]");
        assert_eq!(fabric.servers.len(), 2);
        assert_eq!(
            fabric.encryption.mode,
            crate::fabric::config::EncryptionMode::Aead
        );
    }

    /// Mutual TLS: client certificate and key go together; only a server
    /// hosting mosquitto checks client certificates.
    #[test]
    fn client_certificates_are_checked_only_where_a_broker_can() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("README has a toml block") + 8;
        let end = start + readme[start..].find("```").expect("closed");
        // The example's own `tls = {…}` line gives way to each case's.
        let example: String = readme[start..end]
            .lines()
            .filter(|line| !line.starts_with("tls = {"))
            .map(|line| format!("{line}\n"))
            .collect();
        let with_tls = |tls: &str| {
            Config::parse(
                &format!("{example}\n[fabric.tls]\nca_file = \"/etc/ca.pem\"\n{tls}"),
                "test",
            )
        };
        with_tls("client_cert_file = \"/c.pem\"\nclient_key_file = \"/c.key\"\n").unwrap();
        let err = with_tls("client_cert_file = \"/c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("client_cert_file and client_key_file go together"),
            "{err}"
        );
        let err = with_tls(
            "cert_file = \"/b.pem\"\nkey_file = \"/b.key\"\nclient_ca_file = \"/ca.pem\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("tls.client_ca_file") && err.contains("broker = \"mosquitto\""),
            "{err}"
        );
        let err = with_tls("client_ca_file = \"/ca.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only a server hosting the broker"), "{err}");
    }

    use super::*;
    use crate::{
        dataplane::config::{EbpfLogLevel, XdpModeConfig},
        peersync::config::ArpAcceptPolicy,
    };

    const GOOD: &str = r#"
instance = "switch-a"
[dataplane]
member_ports = ["eth1", "eth2"]
peer_macs = ["02:00:00:00:0b:01"]
vrrp_groups = [1, 7]
"#;

    #[test]
    fn a_center_alone_needs_no_dataplane_and_says_its_role() {
        let config = Config::parse(
            "instance = \"center\"\n[rollout.center]\nlisten = \"127.0.0.1:7480\"\ndb_path = \"/tmp/c.redb\"\n",
            "test",
        )
        .unwrap();
        assert!(config.dataplane.is_none());
        assert_eq!(config.roles(), vec!["rollout-center"]);
        assert!(config.member_ports().is_empty());
    }

    #[test]
    fn a_config_that_runs_nothing_or_peer_without_dataplane_is_refused() {
        let err = Config::parse("instance = \"x\"\n", "test").unwrap_err();
        assert!(err.to_string().contains("nothing to run"), "{err}");
        let err = Config::parse(
            "instance = \"x\"\n[peer]\nlocal_address = \"169.254.0.1\"\npeer_address = \"169.254.0.2\"\n",
            "test",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("peer: needs a [dataplane]"),
            "{err}"
        );
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = Config::parse(GOOD, "test").unwrap();
        assert_eq!(
            config.dataplane.as_ref().unwrap().xdp_mode,
            XdpModeConfig::Auto
        );
        assert!(config.dataplane.as_ref().unwrap().sync_own_replies);
        assert!(config.dataplane.as_ref().unwrap().vrrp_prefix_is_shared);
        assert_eq!(
            config.dataplane.as_ref().unwrap().ebpf_log,
            EbpfLogLevel::Off
        );
        assert_eq!(config.dataplane.as_ref().unwrap().capture_queue, 4096);
    }

    #[test]
    fn unknown_field_is_refused_by_name() {
        let text = GOOD.replace("vrrp_groups", "vrrp_group");
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(err.contains("vrrp_group"), "{err}");
    }

    #[test]
    fn bad_mac_names_the_value() {
        let text = GOOD.replace("02:00:00:00:0b:01", "02:00:00:00:0b");
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(
            err.contains("peer_macs") && err.contains("02:00:00:00:0b"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_field() {
        let text = r#"
instance = "a b"
[dataplane]
member_ports = ["eth1", "eth1", "this-name-is-far-too-long"]
peer_macs = ["01:00:5e:00:00:01"]
vrrp_groups = [0, 300]
capture_queue = 1
"#;
        let Err(ConfigError::Invalid { problems, .. }) = Config::parse(text, "test") else {
            panic!("expected Invalid");
        };
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "instance",
                "dataplane.member_ports[1]",
                "dataplane.member_ports[2]",
                "dataplane.peer_macs[0]",
                "dataplane.vrrp_groups[0]",
                "dataplane.vrrp_groups[1]",
                "dataplane.capture_queue",
            ]
        );
    }

    #[test]
    fn peer_section_defaults_and_mlag_ids_by_position() {
        let text = format!(
            "{GOOD}\n[peer]\nlocal_address = \"169.254.0.1\"\npeer_address = \"169.254.0.2\"\nmlag_ids = {{ eth2 = 9 }}\n"
        );
        let config = Config::parse(&text, "test").unwrap();
        let peer = config.peer.clone().unwrap();
        assert_eq!(peer.port, 7789);
        assert_eq!(peer.arp_accept, ArpAcceptPolicy::Set);
        assert_eq!(
            peer.mlag_ids_for(config.member_ports()),
            [("eth1".to_string(), 1), ("eth2".to_string(), 9)]
        );
    }

    #[test]
    fn peer_problems_name_their_fields() {
        let text = format!(
            "{GOOD}\n[peer]\nlocal_address = \"169.254.0.1\"\npeer_address = \"169.254.0.1\"\nmlag_ids = {{ eth9 = 1 }}\ndead_interval_ms = 100\n"
        );
        let Err(ConfigError::Invalid { problems, .. }) = Config::parse(&text, "test") else {
            panic!("expected Invalid")
        };
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "peer.peer_address",
                "peer.mlag_ids.eth9",
                "peer.dead_interval_ms"
            ]
        );
    }

    #[test]
    fn hello_timeout_defaults_to_3_s_and_is_bounded() {
        let peer = |extra: &str| {
            format!(
                "{GOOD}\n[peer]\nlocal_address = \"169.254.0.1\"\npeer_address = \"169.254.0.2\"\n{extra}"
            )
        };
        let config = Config::parse(&peer(""), "test").unwrap();
        assert_eq!(config.peer.unwrap().hello_timeout_ms, 3000);
        for bad in ["hello_timeout_ms = 0", "hello_timeout_ms = 600000"] {
            let Err(ConfigError::Invalid { problems, .. }) = Config::parse(&peer(bad), "test")
            else {
                panic!("expected Invalid for {bad}")
            };
            let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
            assert_eq!(fields, ["peer.hello_timeout_ms"], "{bad}");
        }
    }

    #[test]
    fn table_bounds_and_probe_pace_are_validated_with_safe_defaults() {
        let text = format!(
            "{GOOD}\n[peer]\nlocal_address = \"169.254.0.1\"\npeer_address = \"169.254.0.2\"\n"
        );
        let peer = Config::parse(&text, "test").unwrap().peer.unwrap();
        assert_eq!((peer.max_learnt, peer.refresh_probes_per_s), (1 << 20, 200));
        let text = format!("{text}max_learnt = 8\nrefresh_probes_per_s = 0\n");
        let Err(ConfigError::Invalid { problems, .. }) = Config::parse(&text, "test") else {
            panic!("expected Invalid")
        };
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["peer.max_learnt", "peer.refresh_probes_per_s"]);
    }

    #[test]
    fn the_web_view_is_off_unless_configured_on_loopback_by_default_and_must_not_take_metrics_port()
    {
        assert!(Config::parse(GOOD, "test").unwrap().web.is_none());
        let config = Config::parse(&format!("{GOOD}\n[web]\n"), "test").unwrap();
        let web = config.web.expect("[web] present");
        assert!(web.listen.ip().is_loopback(), "{}", web.listen);
        let text = format!(
            "{GOOD}\n[metrics]\nlisten = \"0.0.0.0:9500\"\n[web]\nlisten = \"10.0.0.1:9500\"\n"
        );
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(
            err.contains("web.listen: '10.0.0.1:9500' clashes with metrics.listen"),
            "{err}"
        );
    }

    #[test]
    fn metrics_are_off_unless_configured_and_listen_problems_name_the_field() {
        assert!(Config::parse(GOOD, "test").unwrap().metrics.is_none());
        let with = |listen: &str| format!("{GOOD}\n[metrics]\nlisten = \"{listen}\"\n");
        let config = Config::parse(&with("0.0.0.0:9472"), "test").unwrap();
        assert_eq!(config.metrics.unwrap().listen.port(), 9472);
        let err = Config::parse(&with("127.0.0.1:0"), "test")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metrics.listen: '127.0.0.1:0' has port 0"),
            "{err}"
        );
        let err = Config::parse(&with("nowhere"), "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen") && err.contains("nowhere"), "{err}");
    }

    #[test]
    fn empty_member_ports_is_refused() {
        let text = GOOD.replace(r#"["eth1", "eth2"]"#, "[]");
        let err = Config::parse(&text, "test").unwrap_err().to_string();
        assert!(
            err.contains("dataplane.member_ports: must name at least one"),
            "{err}"
        );
    }
}
