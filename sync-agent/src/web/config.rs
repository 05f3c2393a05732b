//! `[web]`: where the live web view listens and how often its page
//! refreshes. The section is off unless present; with no `listen` it takes
//! the loopback address, since the page shows the fabric's members, faults
//! and rollouts to whoever can reach it. Any address may be given on
//! purpose (the page is read-only), but not port 0 (a browser must know
//! the port) nor another HTTP endpoint of this agent.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::validate::Problems;

/// The address used when `[web]` has no `listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9473";
/// How often the page asks for a fresh view by default.
pub const DEFAULT_REFRESH_MS: u64 = 2000;
/// The fastest refresh allowed: the view is gathered at most once per
/// [`super::task::MIN_AGE`] anyway, so faster polling only costs requests.
pub const MIN_REFRESH_MS: u64 = 500;
/// The slowest refresh allowed: slower is no longer a live view.
pub const MAX_REFRESH_MS: u64 = 60_000;

/// `[web]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// HTTP address serving the page (`GET /`) and its data
    /// (`GET /api/view`), e.g. `127.0.0.1:9473`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How often the page polls for a fresh view, in milliseconds
    /// (500-60000).
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("valid default address")
}

fn default_refresh_ms() -> u64 {
    DEFAULT_REFRESH_MS
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: default_listen(),
            refresh_ms: DEFAULT_REFRESH_MS,
        }
    }
}

/// Whether two listening addresses would take the same port.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl WebConfig {
    /// Records what is wrong; `others` are this agent's other HTTP
    /// listeners, each with its field name (`metrics.listen`, ...).
    pub fn problems(&self, others: &[(&str, SocketAddr)], out: &mut Problems) {
        if self.listen.port() == 0 {
            out.add(
                "web.listen",
                format!(
                    "'{}' has port 0: give the port the browser is to open (e.g. {DEFAULT_LISTEN})",
                    self.listen
                ),
            );
        }
        for (field, other) in others {
            if clash(self.listen, *other) {
                out.add(
                    "web.listen",
                    format!("'{}' clashes with {field} '{other}'", self.listen),
                );
            }
        }
        if !(MIN_REFRESH_MS..=MAX_REFRESH_MS).contains(&self.refresh_ms) {
            out.add(
                "web.refresh_ms",
                format!(
                    "{} is out of range: give {MIN_REFRESH_MS}-{MAX_REFRESH_MS} milliseconds",
                    self.refresh_ms
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str, others: &[(&str, &str)]) -> Vec<String> {
        let config: WebConfig = toml::from_str(text).unwrap();
        let others: Vec<(&str, SocketAddr)> = others
            .iter()
            .map(|(field, addr)| (*field, addr.parse().unwrap()))
            .collect();
        let mut out = Problems::default();
        config.problems(&others, &mut out);
        out.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_empty_section_listens_on_loopback_and_any_address_is_accepted() {
        let config: WebConfig = toml::from_str("").unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert!(config.listen.ip().is_loopback());
        assert_eq!(config.refresh_ms, DEFAULT_REFRESH_MS);
        assert!(problems("listen = \"0.0.0.0:8080\"\n", &[]).is_empty());
        assert!(
            problems(
                "listen = \"[::1]:9473\"\n",
                &[("metrics.listen", "127.0.0.1:9473")]
            )
            .is_empty()
        );
    }

    #[test]
    fn port_zero_a_clash_and_a_bad_refresh_are_refused_naming_the_field() {
        let found = problems("listen = \"127.0.0.1:0\"\n", &[]);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("web.listen: '127.0.0.1:0' has port 0"),
            "{found:?}"
        );
        let found = problems(
            "listen = \"127.0.0.1:9472\"\n",
            &[("metrics.listen", "0.0.0.0:9472")],
        );
        assert!(
            found[0].contains("clashes with metrics.listen '0.0.0.0:9472'"),
            "{found:?}"
        );
        let found = problems("refresh_ms = 10\n", &[]);
        assert!(
            found[0].starts_with("web.refresh_ms: 10 is out of range"),
            "{found:?}"
        );
    }

    #[test]
    fn an_unknown_field_or_a_bad_address_is_a_parse_error() {
        assert!(toml::from_str::<WebConfig>("listen = \"localhost\"\n").is_err());
        assert!(toml::from_str::<WebConfig>("port = 1\n").is_err());
    }
}
