//! Routes each operator request straight to the module that owns the
//! answer. Every connection is served by its own task, so a slow module
//! delays only the requests addressed to it; modules return typed reports
//! and only this file turns them into control-socket [`Response`]s.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::protocol::{Request, Response};
use crate::{
    bus::AskError,
    dataplane::{DataplaneHandle, report::StatusReport},
    fabric::FabricHandle,
    inference::InferenceHandle,
    mclag::MclagHandle,
    peersync::PeerSyncHandle,
    rollout::{center::CenterHandle, device::DeviceHandle, report::RolloutReport},
};

/// A reload asked for on the control socket; the supervisor answers.
pub type ReloadRequest = oneshot::Sender<Result<StatusReport, String>>;

/// What `status` says of the agent itself.
pub struct AgentInfo {
    /// Instance name.
    pub instance: String,
    /// Config file in use.
    pub config_file: String,
    /// When the agent started.
    pub started: std::time::Instant,
    /// The roles it runs ([`crate::config::Config::roles`]).
    pub roles: Vec<String>,
}

/// The handles of every running module.
pub struct Router {
    /// `[dataplane]`.
    pub dataplane: Option<DataplaneHandle>,
    /// The agent's identity and roles, for `status`.
    pub agent: AgentInfo,
    /// Always runs.
    pub inference: InferenceHandle,
    /// `[peer]`.
    pub peer: Option<PeerSyncHandle>,
    /// `[mclag]`.
    pub mclag: Option<MclagHandle>,
    /// `[fabric]`.
    pub fabric: Option<FabricHandle>,
    /// `[rollout.center]`.
    pub center: Option<CenterHandle>,
    /// `[rollout.device]`.
    pub device: Option<DeviceHandle>,
    /// Reloads go to the supervisor, which owns the config file.
    pub reload: mpsc::Sender<ReloadRequest>,
    /// Requests that could not be parsed (counted by the socket server).
    pub bad_requests: Arc<AtomicU64>,
}

fn answer<T: Serialize>(result: Result<T, AskError>) -> Response {
    match result {
        Ok(report) => Response::ok(&report),
        Err(err) => Response::error(err.to_string()),
    }
}

fn not_configured(what: &str, section: &str) -> Response {
    Response::error(format!(
        "{what} is not configured (no [{section}] section in the config)"
    ))
}

impl Router {
    /// Asks every running module for a report, each within `timeout`: Ok
    /// if all answered (a refusal is an answer), else the name of the first
    /// that stopped or did not answer in time. For the systemd watchdog.
    pub async fn probe(&self, timeout: std::time::Duration) -> Result<(), &'static str> {
        async fn alive<T>(
            name: &'static str,
            timeout: std::time::Duration,
            ask: impl std::future::Future<Output = Result<T, AskError>>,
        ) -> Result<(), &'static str> {
            match tokio::time::timeout(timeout, ask).await {
                Ok(Ok(_) | Err(AskError::Refused(_))) => Ok(()),
                Ok(Err(AskError::Gone(_))) | Err(_) => Err(name),
            }
        }
        if let Some(dataplane) = &self.dataplane {
            alive("dataplane", timeout, dataplane.status()).await?;
        }
        if let Some(peer) = &self.peer {
            alive("peer sync", timeout, peer.peer()).await?;
        }
        if let Some(mclag) = &self.mclag {
            alive("MC-LAG", timeout, mclag.report()).await?;
        }
        if let Some(fabric) = &self.fabric {
            alive("fabric", timeout, fabric.report()).await?;
        }
        // The smallest question the inference task answers: one object.
        alive("inference", timeout, self.inference.state("agent".into())).await?;
        if let Some(device) = &self.device {
            alive("rollout device", timeout, async {
                Ok(device.report().await)
            })
            .await?;
        }
        Ok(())
    }

    /// Answers one request.
    pub async fn route(&self, request: Request) -> Response {
        match request {
            Request::Status => {
                let status = match &self.dataplane {
                    Some(dataplane) => dataplane.status().await,
                    None => Ok(StatusReport::without_dataplane(
                        &self.agent.instance,
                        &self.agent.config_file,
                        self.agent.started.elapsed().as_secs(),
                    )),
                };
                answer(status.map(|mut status| {
                    status.roles = self.agent.roles.clone();
                    status
                }))
            }
            Request::Counters => match &self.dataplane {
                Some(dataplane) => answer(dataplane.counters().await.map(|mut report| {
                    report.agent.bad_requests = self.bad_requests.load(Ordering::Relaxed);
                    report
                })),
                None => not_configured("the dataplane", "dataplane"),
            },
            Request::Captured { limit } => match &self.dataplane {
                Some(dataplane) => answer(dataplane.captured(limit.unwrap_or(usize::MAX)).await),
                None => not_configured("the dataplane", "dataplane"),
            },
            Request::Reload => {
                let (tx, rx) = oneshot::channel();
                if self.reload.send(tx).await.is_err() {
                    return Response::error("agent is shutting down");
                }
                match rx.await {
                    Ok(Ok(mut status)) => {
                        status.roles = self.agent.roles.clone();
                        Response::ok(&status)
                    }
                    Ok(Err(err)) => {
                        Response::error(format!("reload refused, old config kept: {err}"))
                    }
                    Err(_) => Response::error("agent is shutting down"),
                }
            }
            Request::Peer => match &self.peer {
                Some(peer) => answer(peer.peer().await),
                None => not_configured("peer sync", "peer"),
            },
            Request::Arp => match &self.peer {
                Some(peer) => answer(peer.arp().await),
                None => not_configured("peer sync", "peer"),
            },
            Request::Nd => match &self.peer {
                Some(peer) => answer(peer.nd().await),
                None => not_configured("peer sync", "peer"),
            },
            Request::Mclag => match &self.mclag {
                Some(mclag) => answer(mclag.report().await),
                None => not_configured("MC-LAG", "mclag"),
            },
            Request::States { faulty } => answer(self.inference.states(faulty).await),
            Request::State { object } => answer(self.inference.state(object).await),
            Request::Alarms => answer(self.inference.alarms().await),
            Request::Fabric => match &self.fabric {
                Some(fabric) => answer(fabric.report().await),
                None => not_configured("fabric sync", "fabric"),
            },
            Request::FabricSet { key, value } => match &self.fabric {
                Some(fabric) => answer(fabric.set(key, value).await),
                None => not_configured("fabric sync", "fabric"),
            },
            Request::Rollout => {
                if self.center.is_none() && self.device.is_none() {
                    return Response::error(
                        "rollout is not configured (no [rollout.center] or [rollout.device] section)",
                    );
                }
                let device = match &self.device {
                    Some(device) => Some(device.report().await),
                    None => None,
                };
                let center = match &self.center {
                    Some(center) => match center.report().await {
                        Ok(report) => Some(report),
                        Err(err) => return Response::error(format!("config center: {err}")),
                    },
                    None => None,
                };
                Response::ok(&RolloutReport { center, device })
            }
        }
    }
}
