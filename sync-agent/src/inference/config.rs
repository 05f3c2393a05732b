//! `[inference]`: history depth, declared objects (with redundancy groups)
//! and extra rules (SPEC 5).

use serde::{Deserialize, Serialize};

use super::{DEFAULT_DEGRADED_LEVEL, Dependency, Layer, Redundancy, Rule};
use crate::validate::{Problems, is_ifname};

fn default_history() -> usize {
    32
}

fn default_degraded_level() -> u8 {
    DEFAULT_DEGRADED_LEVEL
}

/// `[inference]`: objects and rules beyond the built-in ones.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    /// Entries kept in each object's state and information histories.
    #[serde(default = "default_history")]
    pub history: usize,
    /// Objects to add to the model (e.g. a service on an IP interface).
    #[serde(default)]
    pub objects: Vec<DeclaredObject>,
    /// Rules that normalise information to states (before the built-in ones).
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Physical links from a port of this switch to a port of another
    /// fabric member, where the cabling is known (no LLDP here to learn
    /// it): each is `link:LOCAL--MEMBER/IF`, down when either end is.
    #[serde(default)]
    pub links: Vec<DeclaredLink>,
    /// Root-cause alarms (`[inference.alarms]`).
    #[serde(default)]
    pub alarms: AlarmConfig,
    /// The MLAG id of each member port, when the switch has an MLAG peer:
    /// each id gets an MLAG interface object redundant over the local port
    /// and its twin on the peer. Not read from the `[inference]` section:
    /// the agent fills it in from `[peer]` (`mlag_ids`) before starting.
    #[serde(skip)]
    pub mlag_ports: Vec<(String, u32)>,
    /// This switch's addresses on its paths to the MLAG peer, when it has
    /// one: the interfaces holding them are the peer link and the backup
    /// path, which the peer switch object is reached over. Filled in by
    /// the agent from `[peer]` and `[mclag].backup`.
    #[serde(skip)]
    pub peer_paths: Option<PeerPaths>,
    /// The VLANs each MLAG id carries, with the interface that serves each
    /// (`[peer].vlan_interfaces`): each VLAN is an object redundant over
    /// the MLAG interfaces that carry it. Filled in by the agent.
    #[serde(skip)]
    pub vlans: Vec<VlanOnMlag>,
}

/// One VLAN an MLAG id carries (`[[peer.vlan_interfaces]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VlanOnMlag {
    /// The MLAG id.
    pub mlag_id: u32,
    /// Outer VLAN id.
    pub outer: u16,
    /// Inner VLAN id (0 when single-tagged).
    pub inner: u16,
    /// The interface that serves the VLAN (its IP interfaces map it).
    pub interface: String,
}

/// This switch's addresses on its paths to the MLAG peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerPaths {
    /// On the peer link (`peer.local_address`).
    pub link: std::net::IpAddr,
    /// On the MC-LAG backup path (`mclag.backup.local_address`), if any.
    pub backup: Option<std::net::IpAddr>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            history: default_history(),
            objects: Vec::new(),
            links: Vec::new(),
            rules: Vec::new(),
            alarms: AlarmConfig::default(),
            mlag_ports: Vec::new(),
            peer_paths: None,
            vlans: Vec::new(),
        }
    }
}

fn default_alarm_level() -> u8 {
    1
}

fn yes() -> bool {
    true
}

fn default_repeat_s() -> u64 {
    60
}

fn default_timeout_ms() -> u64 {
    5000
}

/// `[inference.alarms]`: when an object's state raises an alarm, and where
/// alarms are posted.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// Fault level from which an object's effective state raises an alarm
    /// (1 to 255; default 1: every fault, `degraded` included).
    #[serde(default = "default_alarm_level")]
    pub level: u8,
    /// An object in lost contact raises an alarm too (default true): lost
    /// contact is no fault, but the operator must know the view is blind.
    #[serde(default = "yes")]
    pub lost_contact: bool,
    /// Post alarms to an Alertmanager-compatible receiver (none by default).
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

impl Default for AlarmConfig {
    fn default() -> Self {
        Self {
            level: default_alarm_level(),
            lost_contact: true,
            webhook: None,
        }
    }
}

/// `[inference.alarms.webhook]`: alarms as Alertmanager alerts
/// (`POST <url>` with the `/api/v2/alerts` body).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where alerts go, e.g. `http://127.0.0.1:9093/api/v2/alerts`.
    pub url: String,
    /// Raised alarms are posted again this often (seconds; 0 = only on
    /// change), as Alertmanager resolves an alert not heard of for its
    /// `resolve_timeout`. Default 60.
    #[serde(default = "default_repeat_s")]
    pub repeat_s: u64,
    /// Time allowed for one post (ms, 100 to 60000; default 5000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// An object declared in the config.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeclaredObject {
    /// Its id, e.g. `svc:web`.
    pub id: String,
    /// Its layer.
    pub layer: Layer,
    /// Its kind, e.g. `service`.
    pub kind: String,
    /// What it depends on.
    #[serde(default)]
    pub depends_on: Vec<DeclaredDependency>,
    /// How the faults of its dependencies (those not `required`) pass on:
    /// `"all"` (default: any fault), `"redundant"` (down only when none is
    /// up) or `{ at_least = N }` (down only when fewer than N are up);
    /// `degraded` in between.
    #[serde(default)]
    pub redundancy: Redundancy,
    /// Level of the `degraded` state of a `redundant` / `at_least` object
    /// (1 to 255, default 1).
    #[serde(default = "default_degraded_level")]
    pub degraded_level: u8,
}

impl DeclaredObject {
    /// Its dependencies in its redundancy group (all but the `required` ones).
    pub fn group_size(&self) -> usize {
        self.depends_on.iter().filter(|d| !d.required).count()
    }
}

/// A physical link declared in the config (`inference.links`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeclaredLink {
    /// This switch's port, e.g. `swp1`.
    pub local: String,
    /// The far end, `MEMBER/IF`: a port of another fabric member.
    pub remote: String,
}

impl DeclaredLink {
    /// The far end's member and port, when `remote` is `MEMBER/IF`.
    pub fn remote_end(&self) -> Option<(&str, &str)> {
        self.remote
            .split_once('/')
            .filter(|(member, port)| !member.is_empty() && is_ifname(port))
    }
}

/// A dependency declared in the config.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeclaredDependency {
    /// The object depended on, e.g. `ip:eth0`.
    pub id: String,
    /// belongs-to (same layer) or maps-to (a lower layer realises this one).
    pub kind: Dependency,
    /// Outside the object's redundancy group: its faults always pass on,
    /// whatever the object's `redundancy`.
    #[serde(default)]
    pub required: bool,
}

impl InferenceConfig {
    /// Every problem of the `[inference]` section.
    pub fn problems(&self, out: &mut Problems) {
        if !(1..=4096).contains(&self.history) {
            out.add(
                "inference.history",
                format!("{} must be between 1 and 4096", self.history),
            );
        }
        if self.alarms.level == 0 {
            out.add(
                "inference.alarms.level",
                "0 would alarm every object: must be between 1 and 255".to_string(),
            );
        }
        for (i, link) in self.links.iter().enumerate() {
            if !is_ifname(&link.local) {
                out.add(
                    format!("inference.links[{i}].local"),
                    format!("'{}' is not an interface name", link.local),
                );
            }
            if link.remote_end().is_none() {
                out.add(
                    format!("inference.links[{i}].remote"),
                    format!(
                        "'{}' is not MEMBER/IF (a port of another fabric member)",
                        link.remote
                    ),
                );
            }
        }
        if let Some(webhook) = &self.alarms.webhook {
            match reqwest::Url::parse(&webhook.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                Ok(url) => out.add(
                    "inference.alarms.webhook.url",
                    format!(
                        "'{}': scheme {} is not http or https",
                        webhook.url,
                        url.scheme()
                    ),
                ),
                Err(err) => out.add(
                    "inference.alarms.webhook.url",
                    format!("'{}' is not a URL: {err}", webhook.url),
                ),
            }
            if webhook.repeat_s > 86_400 {
                out.add(
                    "inference.alarms.webhook.repeat_s",
                    format!("{} must be at most 86400 (a day)", webhook.repeat_s),
                );
            }
            if !(100..=60_000).contains(&webhook.timeout_ms) {
                out.add(
                    "inference.alarms.webhook.timeout_ms",
                    format!("{} must be between 100 and 60000", webhook.timeout_ms),
                );
            }
        }
        for (i, object) in self.objects.iter().enumerate() {
            if object.id.is_empty() || !object.id.contains(':') {
                out.add(
                    format!("inference.objects[{i}].id"),
                    format!("'{}' must look like kind:name (e.g. svc:web)", object.id),
                );
            }
            if object.degraded_level == 0 {
                out.add(
                    format!("inference.objects[{i}].degraded_level"),
                    "0 is not a fault level: must be between 1 and 255".to_string(),
                );
            }
            let group = object.group_size();
            match object.redundancy {
                Redundancy::All => {}
                Redundancy::AtLeast(0) => out.add(
                    format!("inference.objects[{i}].redundancy"),
                    "at_least must be 1 or more".to_string(),
                ),
                policy if usize::from(policy.at_least()) > group => out.add(
                    format!("inference.objects[{i}].redundancy"),
                    format!(
                        "{policy} needs at least that many dependencies that are not `required`; {} has {group}",
                        object.id
                    ),
                ),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> InferenceConfig {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn problems(config: &InferenceConfig) -> String {
        let mut out = Problems::default();
        config.problems(&mut out);
        out.into_vec()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_declared_link_names_a_local_port_and_a_members_port() {
        let c = parse(
            r#"links = [{ local = "swp1", remote = "sw2/swp9" }, { local = "a/b", remote = "sw2" }, { local = "x", remote = "/p" }]"#,
        );
        assert_eq!(c.links[0].remote_end(), Some(("sw2", "swp9")));
        assert_eq!(
            problems(&c),
            "inference.links[1].local: 'a/b' is not an interface name\n\
             inference.links[1].remote: 'sw2' is not MEMBER/IF (a port of another fabric member)\n\
             inference.links[2].remote: '/p' is not MEMBER/IF (a port of another fabric member)"
        );
    }

    #[test]
    fn an_object_without_redundancy_reads_as_before_all_with_level_1() {
        let c = parse(
            r#"objects = [{ id = "svc:web", layer = "service", kind = "service", depends_on = [{ id = "ip:eth0", kind = "maps-to" }] }]"#,
        );
        let o = &c.objects[0];
        assert_eq!(o.redundancy, Redundancy::All);
        assert_eq!(o.degraded_level, 1);
        assert!(!o.depends_on[0].required);
        assert_eq!(problems(&c), "");
    }

    #[test]
    fn redundant_and_at_least_read_with_a_degraded_level_and_required_dependencies() {
        let c = parse(
            r#"
[[objects]]
id = "svc:web"
layer = "service"
kind = "service"
redundancy = "redundant"
degraded_level = 2
depends_on = [{ id = "ip:a", kind = "maps-to" }, { id = "ip:b", kind = "maps-to" }, { id = "switch:x", kind = "maps-to", required = true }]

[[objects]]
id = "svc:db"
layer = "service"
kind = "service"
redundancy = { at_least = 2 }
depends_on = [{ id = "ip:a", kind = "maps-to" }, { id = "ip:b", kind = "maps-to" }, { id = "ip:c", kind = "maps-to" }]
"#,
        );
        assert_eq!(c.objects[0].redundancy, Redundancy::Redundant);
        assert_eq!(c.objects[0].degraded_level, 2);
        assert_eq!(c.objects[0].group_size(), 2);
        assert!(c.objects[0].depends_on[2].required);
        assert_eq!(c.objects[1].redundancy, Redundancy::AtLeast(2));
        assert_eq!(problems(&c), "");
        assert!(
            toml::from_str::<InferenceConfig>(
                r#"objects = [{ id = "a:b", layer = "service", kind = "s", redundancy = "mostly" }]"#
            )
            .is_err()
        );
    }

    #[test]
    fn alarms_default_to_every_fault_and_lost_contact_without_a_webhook() {
        let c = parse("");
        assert_eq!(c.alarms, AlarmConfig::default());
        assert_eq!(c.alarms.level, 1);
        assert!(c.alarms.lost_contact);
        assert!(c.alarms.webhook.is_none());
        let c = parse(
            "[alarms]\nlevel = 3\nlost_contact = false\nwebhook = { url = \"http://127.0.0.1:9093/api/v2/alerts\" }\n",
        );
        assert_eq!(c.alarms.level, 3);
        assert!(!c.alarms.lost_contact);
        let webhook = c.alarms.webhook.as_ref().unwrap();
        assert_eq!((webhook.repeat_s, webhook.timeout_ms), (60, 5000));
        assert_eq!(problems(&c), "");
    }

    #[test]
    fn bad_alarm_settings_are_problems_naming_the_field() {
        let c = parse(
            "[alarms]\nlevel = 0\nwebhook = { url = \"ftp://x/\", timeout_ms = 5, repeat_s = 100000 }\n",
        );
        let text = problems(&c);
        for field in [
            "inference.alarms.level",
            "inference.alarms.webhook.url",
            "inference.alarms.webhook.timeout_ms",
            "inference.alarms.webhook.repeat_s",
        ] {
            assert!(text.contains(field), "{field} missing in {text}");
        }
        let c = parse("[alarms]\nwebhook = { url = \"not a url\" }\n");
        assert!(problems(&c).contains("not a URL"), "{}", problems(&c));
        assert!(toml::from_str::<InferenceConfig>("[alarms]\nlevle = 2\n").is_err());
    }

    #[test]
    fn impossible_redundancy_and_level_zero_are_problems_naming_the_field() {
        let c = parse(
            r#"
[[objects]]
id = "svc:a"
layer = "service"
kind = "service"
redundancy = { at_least = 3 }
degraded_level = 0
depends_on = [{ id = "ip:a", kind = "maps-to" }, { id = "ip:b", kind = "maps-to" }, { id = "ip:c", kind = "maps-to", required = true }]

[[objects]]
id = "svc:b"
layer = "service"
kind = "service"
redundancy = { at_least = 0 }
depends_on = [{ id = "ip:a", kind = "maps-to" }]
"#,
        );
        let text = problems(&c);
        assert!(
            text.contains("inference.objects[0].redundancy")
                && text.contains("at_least = 3")
                && text.contains("svc:a has 2"),
            "{text}"
        );
        assert!(
            text.contains("inference.objects[0].degraded_level"),
            "{text}"
        );
        assert!(
            text.contains("inference.objects[1].redundancy") && text.contains("1 or more"),
            "{text}"
        );
    }
}
