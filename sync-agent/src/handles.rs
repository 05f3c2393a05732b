//! The handles of the running modules, for the read-only views that ask
//! them all (the metrics endpoint, the web view): one set built by the
//! agent, one answer type, one way of asking with a deadline. `None` for a
//! module this agent does not run.

use std::{future::Future, time::Duration, time::Instant};

use crate::{
    bus::AskError,
    dataplane::DataplaneHandle,
    fabric::FabricHandle,
    inference::InferenceHandle,
    mclag::MclagHandle,
    peersync::PeerSyncHandle,
    rollout::{center::CenterHandle, device::DeviceHandle},
};

/// Every running module's handle.
#[derive(Clone)]
pub struct ModuleHandles {
    /// Instance name.
    pub instance: String,
    /// When the agent started.
    pub started: Instant,
    /// The roles this agent runs ([`crate::config::Config::roles`]).
    pub roles: Vec<String>,
    /// `[dataplane]`.
    pub dataplane: Option<DataplaneHandle>,
    /// `[peer]`.
    pub peer: Option<PeerSyncHandle>,
    /// `[mclag]`.
    pub mclag: Option<MclagHandle>,
    /// Always runs.
    pub inference: InferenceHandle,
    /// `[fabric]`.
    pub fabric: Option<FabricHandle>,
    /// `[rollout.center]`.
    pub center: Option<CenterHandle>,
    /// `[rollout.device]`.
    pub device: Option<DeviceHandle>,
}

/// What one module answered: its report, or why there is none (it did not
/// answer in time, or it has stopped).
pub type Answer<T> = Result<T, String>;

/// Asks one module within `timeout`; `None` if it is not running.
pub async fn ask<T>(
    timeout: Duration,
    question: Option<impl Future<Output = Result<T, AskError>>>,
) -> Option<Answer<T>> {
    let question = question?;
    Some(match tokio::time::timeout(timeout, question).await {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    })
}
