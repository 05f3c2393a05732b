//! `[metrics]`: where the Prometheus endpoint listens. The section is off
//! unless present; any address may be given (metrics are read-only), but
//! not port 0 (a scraper must know the port) nor the config center's.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::validate::Problems;

/// The address the README and `--help` suggest.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9472";

/// `[metrics]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// HTTP address serving `GET /metrics` (e.g. `127.0.0.1:9472`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("valid default address")
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_listen(),
        }
    }
}

impl MetricsConfig {
    /// Records what is wrong; `center_listen` is `[rollout.center]`'s
    /// address, if the agent hosts the center.
    pub fn problems(&self, center_listen: Option<SocketAddr>, out: &mut Problems) {
        if self.listen.port() == 0 {
            out.add(
                "metrics.listen",
                format!(
                    "'{}' has port 0: give the port Prometheus is to scrape (e.g. {DEFAULT_LISTEN})",
                    self.listen
                ),
            );
        }
        if let Some(center) = center_listen
            && center.port() == self.listen.port()
            && (center.ip() == self.listen.ip()
                || center.ip().is_unspecified()
                || self.listen.ip().is_unspecified())
        {
            out.add(
                "metrics.listen",
                format!(
                    "'{}' clashes with rollout.center.listen '{center}'",
                    self.listen
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str, center: Option<&str>) -> Vec<String> {
        let config: MetricsConfig = toml::from_str(text).unwrap();
        let mut out = Problems::default();
        config.problems(center.map(|c| c.parse().unwrap()), &mut out);
        out.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn any_address_with_a_port_is_accepted_and_the_default_is_loopback() {
        assert!(problems("listen = \"0.0.0.0:9472\"\n", None).is_empty());
        assert!(problems("listen = \"[::1]:9100\"\n", Some("127.0.0.1:7480")).is_empty());
        let config: MetricsConfig = toml::from_str("").unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
    }

    #[test]
    fn port_zero_and_the_centers_address_are_refused_naming_the_field() {
        let found = problems("listen = \"127.0.0.1:0\"\n", None);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("metrics.listen: '127.0.0.1:0' has port 0"),
            "{found:?}"
        );
        let found = problems("listen = \"127.0.0.1:7480\"\n", Some("0.0.0.0:7480"));
        assert!(
            found[0].contains("clashes with rollout.center.listen"),
            "{found:?}"
        );
    }

    #[test]
    fn an_unknown_field_or_a_bad_address_is_a_parse_error() {
        assert!(toml::from_str::<MetricsConfig>("listen = \"localhost\"\n").is_err());
        assert!(toml::from_str::<MetricsConfig>("port = 1\n").is_err());
    }
}
