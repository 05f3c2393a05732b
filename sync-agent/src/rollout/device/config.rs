//! `[rollout.device]`: the device side's configuration (SPEC 6.2–6.4): the
//! center to follow, this device's name, its backup directory and its
//! services with their files, commands and dependencies.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::rollout::wire::{self, ConfigKey};
use crate::validate::{Problem, Problems};

pub use crate::rollout::wire::DEFAULT_WATCH_TIMEOUT_MS;
/// Default deadline of a health check.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 5_000;

fn default_watch_timeout_ms() -> u64 {
    DEFAULT_WATCH_TIMEOUT_MS
}

fn default_health_timeout_ms() -> u64 {
    DEFAULT_HEALTH_TIMEOUT_MS
}

/// Default for `recheck_s`: how often a device that does not long-poll
/// asks its center when no release was pushed.
pub const DEFAULT_RECHECK_S: u64 = 300;

fn default_true() -> bool {
    true
}

fn default_recheck_s() -> u64 {
    DEFAULT_RECHECK_S
}

/// One service of the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique on the device; 1–64 of `[A-Za-z0-9._-]` (it names the backup
    /// file and goes into the poll's `have` list).
    pub name: String,
    /// The center config it uses. In a config file either
    /// `"namespace/group/name"` or `{namespace, group, name}`.
    #[serde(with = "key_text")]
    pub config: ConfigKey,
    /// The file the config is written to.
    pub path: PathBuf,
    /// Command (argv, no shell) run after the file changed; empty: none.
    #[serde(default)]
    pub reload: Vec<String>,
    /// Command (argv, no shell) whose exit status 0 means healthy; empty:
    /// none.
    #[serde(default)]
    pub health: Vec<String>,
    /// Deadline of the health check (0: the default, 5000).
    #[serde(default = "default_health_timeout_ms")]
    pub health_timeout_ms: u64,
    /// Services of this device updated before this one.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// The device side's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Base URL of the center, `http://host:port` or `https://host:port`,
    /// or several (`["https://c1:7480", "https://c2:7480"]`, centers sharing
    /// one etcd): the device uses the first that answers and fails over to
    /// the next when one does not.
    pub center: Centers,
    /// File holding this device's token (`sync-agent config token new
    /// --device NAME`), sent with every request; needed when the center
    /// has tokens configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signed an `https://` center's certificate
    /// (the only trust root then; default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// This device's name at the center.
    pub device: String,
    /// Directory of the local backup store.
    pub backup_dir: PathBuf,
    /// The device's services.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// How long the center may hold a poll (0: the default, 30000).
    #[serde(default = "default_watch_timeout_ms")]
    pub watch_timeout_ms: u64,
    /// Hold a long poll at the center (the default). `false`: ask only when
    /// a release is pushed over the fabric (the agent must run `[fabric]`)
    /// and every `recheck_s` seconds otherwise.
    #[serde(default = "default_true")]
    pub long_poll: bool,
    /// Without long polling, how often to ask the center anyway, seconds
    /// (default 300; at least 1).
    #[serde(default = "default_recheck_s")]
    pub recheck_s: u64,
    /// Labels sent at registration; a rollout's `--canary` may name a label
    /// instead of devices (e.g. `labels = ["canary"]`).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// The center URLs of a device: one string in a config file, or a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OneOrMany", into = "OneOrMany")]
pub struct Centers(pub Vec<String>);

#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for Centers {
    fn from(v: OneOrMany) -> Self {
        match v {
            OneOrMany::One(url) => Centers(vec![url]),
            OneOrMany::Many(urls) => Centers(urls),
        }
    }
}

impl From<Centers> for OneOrMany {
    fn from(c: Centers) -> Self {
        match <[String; 1]>::try_from(c.0) {
            Ok([url]) => OneOrMany::One(url),
            Err(urls) => OneOrMany::Many(urls),
        }
    }
}

impl From<&str> for Centers {
    fn from(url: &str) -> Self {
        Centers(vec![url.to_string()])
    }
}

impl From<String> for Centers {
    fn from(url: String) -> Self {
        Centers(vec![url])
    }
}

impl std::fmt::Display for Centers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// `ConfigKey` as `"ns/group/name"` text in config files (the structured
/// form is accepted too).
mod key_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use super::ConfigKey;

    pub fn serialize<S: Serializer>(key: &ConfigKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Parts {
            namespace: String,
            group: String,
            name: String,
        },
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ConfigKey, D::Error> {
        match Either::deserialize(d)? {
            Either::Text(text) => text.parse().map_err(D::Error::custom),
            Either::Parts {
                namespace,
                group,
                name,
            } => ConfigKey::new(namespace, group, name).map_err(D::Error::custom),
        }
    }
}

impl DeviceConfig {
    /// Checks the config: a usable center URL, a valid device name, valid and
    /// unique service names, distinct files, dependencies that exist and no
    /// dependency cycle. The error lists every problem.
    pub fn validate(&self) -> Result<(), DeviceConfigError> {
        let mut problems = Problems::default();
        self.problems(&mut problems);
        let problems = problems.into_vec();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DeviceConfigError(problems))
        }
    }

    /// Every problem of `[rollout.device]` (see [`DeviceConfig::validate`]),
    /// each at its field, e.g. `rollout.device.services[1].depends_on`.
    pub fn problems(&self, out: &mut Problems) {
        const AT: &str = "rollout.device";
        if self.center.0.is_empty() {
            out.add(format!("{AT}.center"), "give at least one center URL");
        }
        let many = self.center.0.len() > 1;
        for (i, center) in self.center.0.iter().enumerate() {
            let at = if many {
                format!("{AT}.center[{i}]")
            } else {
                format!("{AT}.center")
            };
            match center_url(center) {
                Err(e) => out.add(at, format!("{e:#}")),
                Ok(url) if url.scheme() == "http" && self.ca_file.is_some() => out.add(
                    format!("{AT}.ca_file"),
                    format!("ca_file is for an https:// center; center is {center:?}"),
                ),
                Ok(_) => {}
            }
        }
        for (field, file) in [("token_file", &self.token_file), ("ca_file", &self.ca_file)] {
            if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                out.add(format!("{AT}.{field}"), format!("{field} is empty"));
            }
        }
        if let Err(e) = wire::check_name("device", &self.device) {
            out.add(format!("{AT}.device"), e);
        }
        if self.backup_dir.as_os_str().is_empty() {
            out.add(format!("{AT}.backup_dir"), "backup_dir is empty");
        }
        if self.recheck_s == 0 {
            out.add(format!("{AT}.recheck_s"), "recheck_s must be at least 1");
        }
        for (i, label) in self.labels.iter().enumerate() {
            if let Err(e) = wire::check_name("label", label) {
                out.add(format!("{AT}.labels[{i}]"), e);
            }
        }
        let mut names = HashSet::new();
        let mut paths = HashMap::new();
        for (i, svc) in self.services.iter().enumerate() {
            let at = format!("{AT}.services[{i}]");
            if let Err(e) = wire::check_name("service", &svc.name) {
                out.add(format!("{at}.name"), e);
            }
            if !names.insert(svc.name.as_str()) {
                out.add(
                    format!("{at}.name"),
                    format!("service {:?} is declared twice", svc.name),
                );
            }
            if let Err(e) = svc.config.validate() {
                out.add(
                    format!("{at}.config"),
                    format!("service {:?}: {e}", svc.name),
                );
            }
            if svc.path.file_name().is_none() {
                out.add(
                    format!("{at}.path"),
                    format!(
                        "service {:?}: path {:?} does not name a file",
                        svc.name, svc.path
                    ),
                );
            }
            if let Some(other) = paths.insert(svc.path.clone(), svc.name.as_str()) {
                out.add(
                    format!("{at}.path"),
                    format!(
                        "services {other:?} and {:?} both write {}",
                        svc.name,
                        svc.path.display()
                    ),
                );
            }
            for (what, argv) in [("reload", &svc.reload), ("health", &svc.health)] {
                if argv.first().is_some_and(|p| p.is_empty()) {
                    out.add(
                        format!("{at}.{what}"),
                        format!(
                            "service {:?}: {what} command has an empty program",
                            svc.name
                        ),
                    );
                }
            }
        }
        let mut dependencies_exist = true;
        for (i, svc) in self.services.iter().enumerate() {
            let at = format!("{AT}.services[{i}].depends_on");
            for dep in &svc.depends_on {
                if dep == &svc.name {
                    dependencies_exist = false;
                    out.add(&at, format!("service {:?} depends on itself", svc.name));
                } else if !names.contains(dep.as_str()) {
                    dependencies_exist = false;
                    out.add(
                        &at,
                        format!(
                            "service {:?} depends on {dep:?}, which is not a service of this device",
                            svc.name
                        ),
                    );
                }
            }
        }
        // A self-dependency is a cycle too: say it once.
        if dependencies_exist && let Some(cycle) = find_cycle(&self.services) {
            out.add(
                format!("{AT}.services"),
                format!("service dependency cycle: {}", cycle.join(" -> ")),
            );
        }
    }
}

/// Why [`DeviceConfig::validate`] refused a config: every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct DeviceConfigError(pub Vec<Problem>);

/// A dependency cycle among `services` (names, first repeated at the end).
pub(super) fn find_cycle(services: &[ServiceConfig]) -> Option<Vec<String>> {
    let deps: HashMap<&str, &[String]> = services
        .iter()
        .map(|s| (s.name.as_str(), s.depends_on.as_slice()))
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        node: &'a str,
        deps: &HashMap<&'a str, &'a [String]>,
        mark: &mut HashMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match mark.get(node).copied().unwrap_or(0) {
            2 => return None,
            1 => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        mark.insert(node, 1);
        path.push(node);
        for dep in deps.get(node).copied().unwrap_or_default() {
            if let Some(cycle) = visit(dep.as_str(), deps, mark, path) {
                return Some(cycle);
            }
        }
        path.pop();
        mark.insert(node, 2);
        None
    }
    for svc in services {
        if let Some(cycle) = visit(svc.name.as_str(), &deps, &mut mark, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// Indices of `services`, every service after the ones it depends on, else
/// in declaration order. The dependencies must exist and be acyclic.
pub(super) fn dependency_order(services: &[ServiceConfig]) -> Vec<usize> {
    let index: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    fn visit(
        i: usize,
        services: &[ServiceConfig],
        index: &HashMap<&str, usize>,
        done: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        if done[i] {
            return;
        }
        done[i] = true;
        for dep in &services[i].depends_on {
            if let Some(&d) = index.get(dep.as_str()) {
                visit(d, services, index, done, order);
            }
        }
        order.push(i);
    }
    let mut done = vec![false; services.len()];
    let mut order = Vec::with_capacity(services.len());
    for i in 0..services.len() {
        visit(i, services, &index, &mut done, &mut order);
    }
    order
}

/// The center's base URL, if `center` is a usable `http(s)://` URL without
/// query or fragment.
pub(super) fn center_url(center: &str) -> anyhow::Result<reqwest::Url> {
    let url =
        reqwest::Url::parse(center).with_context(|| format!("center URL {center:?} is invalid"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        bail!("center URL {center:?} is not an http:// or https:// URL");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("center URL {center:?} must not have a query or fragment");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_forms() {
        let text = r#"
            center = "http://10.0.0.1:8080"
            device = "leaf1"
            backup_dir = "/var/lib/mlag-sync/backup"

            [[services]]
            name = "web"
            config = "prod/web/nginx"
            path = "/etc/nginx/nginx.conf"
            reload = ["systemctl", "reload", "nginx"]
            health = ["curl", "-fsS", "http://127.0.0.1/health"]

            [[services]]
            name = "app"
            config = { namespace = "prod", group = "app", name = "main" }
            path = "/etc/app.toml"
            depends_on = ["web"]
        "#;
        let config: DeviceConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.watch_timeout_ms, DEFAULT_WATCH_TIMEOUT_MS);
        assert_eq!(config.services[0].config, "prod/web/nginx".parse().unwrap());
        assert_eq!(
            config.services[0].health_timeout_ms,
            DEFAULT_HEALTH_TIMEOUT_MS
        );
        assert_eq!(config.services[1].config, "prod/app/main".parse().unwrap());
        assert!(config.services[1].reload.is_empty());
        // Written back as text.
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["services"][1]["config"], "prod/app/main");

        let bad = text.replace("prod/web/nginx", "prod/web");
        let err = toml::from_str::<DeviceConfig>(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("namespace/group/name"), "{err}");
        assert_eq!(
            json["center"], "http://10.0.0.1:8080",
            "one URL stays a string"
        );

        // Several centers: a list, each URL checked at its index.
        let several = text.replace(
            r#"center = "http://10.0.0.1:8080""#,
            r#"center = ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]"#,
        );
        let config: DeviceConfig = toml::from_str(&several).unwrap();
        config.validate().unwrap();
        assert_eq!(config.center.0.len(), 2);
        let bad = several.replace("http://10.0.0.2", "ftp://10.0.0.2");
        let config: DeviceConfig = toml::from_str(&bad).unwrap();
        assert_eq!(problems(&config)[0].0, "rollout.device.center[1]");
        let none = several.replace(r#"["http://10.0.0.1:8080", "http://10.0.0.2:8080"]"#, "[]");
        let config: DeviceConfig = toml::from_str(&none).unwrap();
        assert_eq!(problems(&config)[0].0, "rollout.device.center");
    }

    fn two_services() -> DeviceConfig {
        let service = |name: &str| ServiceConfig {
            name: name.into(),
            config: format!("n/g/{name}").parse().unwrap(),
            path: format!("/etc/{name}.conf").into(),
            reload: Vec::new(),
            health: Vec::new(),
            health_timeout_ms: DEFAULT_HEALTH_TIMEOUT_MS,
            depends_on: Vec::new(),
        };
        DeviceConfig {
            center: "http://127.0.0.1:7480".into(),
            device: "leaf1".into(),
            backup_dir: "/var/lib/backup".into(),
            services: vec![service("a"), service("b")],
            watch_timeout_ms: DEFAULT_WATCH_TIMEOUT_MS,
            long_poll: true,
            recheck_s: DEFAULT_RECHECK_S,
            labels: vec![],
            token_file: None,
            ca_file: None,
        }
    }

    #[test]
    fn a_ca_file_needs_an_https_center() {
        let mut config = two_services();
        config.ca_file = Some("/etc/mlag-sync/ca.pem".into());
        assert_eq!(
            problems(&config)
                .iter()
                .map(|(f, _)| f.as_str())
                .collect::<Vec<_>>(),
            ["rollout.device.ca_file"]
        );
        config.center = "https://center.example:7480".into();
        config.token_file = Some("/etc/mlag-sync/token".into());
        assert_eq!(problems(&config), []);
        config.token_file = Some("".into());
        assert_eq!(problems(&config)[0].0, "rollout.device.token_file");
        config.center = "ftp://x".into();
        assert!(problems(&config)[0].1.contains("https://"));
    }

    fn problems(config: &DeviceConfig) -> Vec<(String, String)> {
        let mut out = Problems::default();
        config.problems(&mut out);
        out.into_vec()
            .into_iter()
            .map(|p| (p.field, p.message))
            .collect()
    }

    #[test]
    fn every_problem_is_reported_at_its_field() {
        assert!(problems(&two_services()).is_empty());
        let mut c = two_services();
        c.device = "leaf 1".into();
        c.services[1].depends_on = vec!["zz".into()];
        c.services[1].health = vec![String::new()];
        let fields: Vec<String> = problems(&c).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "rollout.device.device",
                "rollout.device.services[1].health",
                "rollout.device.services[1].depends_on",
            ]
        );
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("rollout.device.services[1].depends_on: service \"b\" depends on \"zz\""),
            "{err}"
        );
    }

    #[test]
    fn a_cycle_is_reported_once_at_the_services() {
        let mut c = two_services();
        c.services[0].depends_on = vec!["b".into()];
        c.services[1].depends_on = vec!["a".into()];
        assert_eq!(
            problems(&c),
            [(
                "rollout.device.services".to_string(),
                "service dependency cycle: a -> b -> a".to_string()
            )]
        );
        let mut c = two_services();
        c.services[0].depends_on = vec!["a".into()];
        assert_eq!(
            problems(&c),
            [(
                "rollout.device.services[0].depends_on".to_string(),
                "service \"a\" depends on itself".to_string()
            )]
        );
    }
}
