//! The agent under systemd (`Type=notify`, `WatchdogSec=`): readiness once
//! every module has started (the XDP program attached, the control socket
//! bound), and watchdog pings only while every module still answers, so a
//! wedged agent is restarted by systemd rather than left holding the ports.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call here does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::control::router::Router;

/// How long each module gets to answer the watchdog's probe: well inside
/// the ping interval, so a slow answer still leaves time to ping.
const PROBE_SHARE: u32 = 4;

/// Tells systemd the agent is up, with a status line for `systemctl status`.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the agent is stopping (it restores the ports meanwhile).
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The interval to ping the watchdog at, if systemd armed one for this
/// process: half its timeout, as sd_watchdog_enabled(3) advises.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|timeout| !timeout.is_zero())
        .map(|timeout| timeout / 2)
}

/// Asks every running module for its report; pings the watchdog only if all
/// answered within their share of `interval`. A module that stopped or hangs
/// is named in the log and the ping is withheld.
pub async fn watchdog_tick(router: &Router, interval: Duration) {
    match router.probe(interval / PROBE_SHARE).await {
        Ok(()) => notify(&[NotifyState::Watchdog]),
        Err(module) => tracing::error!(
            "watchdog: the {module} module did not answer; not pinging systemd (it restarts the agent when the watchdog runs out)"
        ),
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("systemd notification failed: {e}");
    }
}
