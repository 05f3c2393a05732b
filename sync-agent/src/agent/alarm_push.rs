//! Wiring of alarms over the fabric (issue 16): this switch's root-cause
//! alarms go out on the fabric's fault channel, and other members' alarms
//! heard there go to the local inference, which lists them by origin.
//! Only channels between handles; every decision is in the modules.

use tokio::sync::broadcast::{self, error::RecvError};

use crate::{bus::AlarmRecord, fabric::FabricHandle, inference::InferenceHandle};

/// Starts both forwardings when the fabric runs.
pub(super) fn wire(inference: &InferenceHandle, fabric: Option<&FabricHandle>) {
    let Some(fabric) = fabric else {
        return;
    };
    let to_fabric = fabric.clone();
    forward(
        inference.subscribe_alarms(),
        "inference to fabric",
        move |a| to_fabric.publish_alarm(a).is_ok(),
    );
    let to_inference = inference.clone();
    forward(fabric.subscribe_alarms(), "fabric to inference", move |a| {
        to_inference.remote_alarm(a).is_ok()
    });
}

/// Hands every alarm from `from` to `to` until either side is gone. A
/// lagging receiver skips what it missed (logged): an alarm still raised is
/// told again on its next change, and the fabric republishes its own on
/// every reconnect.
fn forward(
    mut from: broadcast::Receiver<AlarmRecord>,
    what: &'static str,
    mut to: impl FnMut(AlarmRecord) -> bool + Send + 'static,
) {
    tokio::spawn(async move {
        loop {
            match from.recv().await {
                Ok(alarm) => {
                    if !to(alarm) {
                        break;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "alarms {what}: fell behind, skipped");
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
}
