//! Wiring of config push (SPEC 6.2 "subscription"): the local config
//! center's releases go out on the fabric, and releases heard on the fabric
//! (or from a center on this very agent) go to the local device side. Only
//! channels between handles; every decision is in the modules.

use tokio::sync::broadcast::{self, error::RecvError};

use crate::{
    bus::ConfigReleased,
    fabric::FabricHandle,
    rollout::center::CenterHandle,
    rollout::device::{DeviceConfig, DeviceHandle},
};

/// Starts the forwarding each present pair of modules needs.
pub(super) fn wire(
    center: Option<&CenterHandle>,
    fabric: Option<&FabricHandle>,
    device: Option<(&DeviceHandle, &DeviceConfig)>,
) {
    if let (Some(center), Some(fabric)) = (center, fabric) {
        let fabric = fabric.clone();
        forward(center.subscribe_releases(), "center to fabric", move |r| {
            fabric.announce_release(r).is_ok()
        });
    }
    let Some((device, config)) = device else {
        return;
    };
    if let Some(fabric) = fabric {
        let device = device.clone();
        forward(fabric.subscribe_releases(), "fabric to device", move |r| {
            device.release_pushed(r);
            true
        });
    }
    if let Some(center) = center {
        // Our own announcements do not come back from the broker.
        let device = device.clone();
        forward(center.subscribe_releases(), "center to device", move |r| {
            device.release_pushed(r);
            true
        });
    }
    if !config.long_poll && fabric.is_none() && center.is_none() {
        tracing::warn!(
            recheck_s = config.recheck_s,
            "rollout.device.long_poll is false but this agent runs no [fabric] to hear pushed releases: the device asks its center only every recheck_s"
        );
    }
}

/// Hands every release from `from` to `to` until either side is gone. A
/// lagging receiver skips what it missed: devices ask about all their
/// services at once, and long polls remain.
fn forward(
    mut from: broadcast::Receiver<ConfigReleased>,
    what: &'static str,
    mut to: impl FnMut(ConfigReleased) -> bool + Send + 'static,
) {
    tokio::spawn(async move {
        loop {
            match from.recv().await {
                Ok(release) => {
                    if !to(release) {
                        break;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "config push {what}: lagged");
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
}
