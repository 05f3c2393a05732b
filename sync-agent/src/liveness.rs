//! Liveness of the switch at the other end of a path, by UDP keepalives:
//! on the peer link apart from the session's data flow (so a bulk transfer
//! never delays detection; peer sync), and on the backup path (MC-LAG's
//! split-brain check). The task only reports; its owner decides.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sync_common::wire::{self, Encoder, Frame, MessageType, SubType};
use tokio::{net::UdpSocket, sync::mpsc};

use crate::bus::Liveness;

/// What a liveness task tells its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LivenessReport {
    /// The other end came up (or restarted) or went silent.
    Changed(Liveness),
    /// A datagram was refused (a stranger, garbage, not a keepalive).
    Rejected {
        /// Counter label.
        reason: &'static str,
        /// For the log.
        detail: String,
    },
}

/// Sends keepalives to `peer` every `interval` and reports the peer up or
/// down (after `dead` without one). Runs until `events` closes.
pub async fn run(
    local: SocketAddr,
    peer: SocketAddr,
    interval: Duration,
    dead: Duration,
    boot_id: u64,
    events: mpsc::Sender<LivenessReport>,
) {
    let socket = loop {
        match UdpSocket::bind(local).await {
            Ok(socket) => break socket,
            Err(err) => {
                tracing::warn!(%local, error = %err, "cannot bind the keepalive socket yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if events.is_closed() {
                    return;
                }
            }
        }
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u32;
    let mut last_seen: Option<Instant> = None;
    let mut up = false;
    let mut current_boot = None;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                seq = seq.wrapping_add(1);
                let mut out = [0u8; 64];
                let Ok(mut encoder) = Encoder::new(&mut out, MessageType::Keepalive, SubType::None, seq) else { continue };
                if encoder.tlv(wire::tlv::BOOT_ID, &[&boot_id.to_be_bytes()]).is_err() {
                    continue;
                }
                let len = encoder.finish();
                // A send error (link down, no route) shows up as missing keepalives.
                let _ = socket.send_to(&out[..len], peer).await;
                if up && last_seen.is_some_and(|t| t.elapsed() > dead) {
                    up = false;
                    if events.send(LivenessReport::Changed(Liveness::Down)).await.is_err() {
                        return;
                    }
                }
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                let verdict = if from.ip() != peer.ip() {
                    Err("keepalive_from_stranger")
                } else {
                    match Frame::decode(&buf[..len], buf.len()) {
                        Ok(frame) if frame.header.msg_type == MessageType::Keepalive => {
                            frame.u64_of(wire::tlv::BOOT_ID).ok_or("bad_keepalive")
                        }
                        Ok(_) => Err("bad_keepalive"),
                        Err(err) => Err(err.reason()),
                    }
                };
                match verdict {
                    Ok(peer_boot) => {
                        last_seen = Some(Instant::now());
                        // A new boot id without a silence in between is a
                        // restart faster than the dead interval: report it too.
                        if !up || current_boot != Some(peer_boot) {
                            up = true;
                            current_boot = Some(peer_boot);
                            if events.send(LivenessReport::Changed(Liveness::Up { boot_id: peer_boot })).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(reason) => {
                        if events.send(LivenessReport::Rejected { reason, detail: format!("{len}-byte datagram from {from}") }).await.is_err() {
                            return;
                        }
                    }
                }
            }
            () = events.closed() => return,
        }
    }
}
