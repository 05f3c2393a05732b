//! Liveness of the switch at the other end of a path, by UDP keepalives:
//! on the peer link apart from the session's data flow (so a bulk transfer
//! never delays detection; peer sync), and on the backup path (MC-LAG's
//! split-brain check). The task only reports; its owner decides.
//!
//! It never waits on its owner: keepalives must go on while the owner is
//! slow (a stalled owner must not make this switch look dead to the peer).
//! Reports are offered with `try_send`:
//! - an Up/Down change that does not fit is kept as the *pending* state and
//!   offered again (a `reserve` branch of the select, beside the ticker);
//!   a newer change replaces it. Coalescing keeps the meaning: the owner
//!   always ends up with the latest state, and a boot id change stays
//!   visible (the pending Up carries the newest boot id; a Down-then-Up
//!   with the same boot id that the owner never saw was a blip shorter than
//!   its own delay).
//! - a rejected datagram that does not fit is dropped (counted in the log,
//!   rate-limited): under a flood of garbage the owner's counters are then
//!   a lower bound, which is what they already are when the socket buffer
//!   overflows.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sync_common::wire::{self, Encoder, Frame, MessageType, SubType};
use tokio::{
    net::UdpSocket,
    sync::mpsc::{self, error::TrySendError},
};

use crate::{bus::Liveness, log_limit::LogLimiter};

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

/// Offers a report without waiting. A state change that does not fit goes
/// back to the caller (to be kept as pending); false when the owner is gone.
fn offer(
    events: &mpsc::Sender<LivenessReport>,
    report: LivenessReport,
    pending: &mut Option<Liveness>,
    dropped: &mut u64,
    log: &mut LogLimiter,
) -> bool {
    match events.try_send(report) {
        Ok(()) => true,
        Err(TrySendError::Full(LivenessReport::Changed(state))) => {
            *pending = Some(state);
            true
        }
        Err(TrySendError::Full(LivenessReport::Rejected { reason, .. })) => {
            *dropped += 1;
            if log.admit("liveness_report_dropped").is_some() {
                tracing::warn!(
                    reason,
                    total = *dropped,
                    "owner is not taking liveness reports; dropped a rejected-datagram report"
                );
            }
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

/// Sends keepalives to `peer` every `interval` and reports the peer up or
/// down (after `dead` without one). Runs until `events` closes. Never waits
/// on `events` (see the module doc).
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
    // The newest state change the owner has not taken yet.
    let mut pending: Option<Liveness> = None;
    let mut dropped = 0u64;
    let mut log = LogLimiter::new(Duration::from_secs(1));
    loop {
        tokio::select! {
            permit = events.reserve(), if pending.is_some() => {
                let Ok(permit) = permit else { return };
                if let Some(state) = pending.take() {
                    permit.send(LivenessReport::Changed(state));
                }
            }
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
                    // Behind an older pending change: this one replaces it
                    // (never overtakes it in the queue).
                    if pending.is_some() {
                        pending = Some(Liveness::Down);
                    } else if !offer(&events, LivenessReport::Changed(Liveness::Down), &mut pending, &mut dropped, &mut log) {
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
                            let report = LivenessReport::Changed(Liveness::Up { boot_id: peer_boot });
                            // Behind an older pending change: this one replaces it.
                            if pending.is_some() {
                                pending = Some(Liveness::Up { boot_id: peer_boot });
                            } else if !offer(&events, report, &mut pending, &mut dropped, &mut log) {
                                return;
                            }
                        }
                    }
                    Err(reason) => {
                        let report = LivenessReport::Rejected { reason, detail: format!("{len}-byte datagram from {from}") };
                        if !offer(&events, report, &mut pending, &mut dropped, &mut log) {
                            return;
                        }
                    }
                }
            }
            () = events.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keepalive(boot_id: u64) -> Vec<u8> {
        let mut out = [0u8; 64];
        let mut e = Encoder::new(&mut out, MessageType::Keepalive, SubType::None, 1).unwrap();
        e.tlv(wire::tlv::BOOT_ID, &[&boot_id.to_be_bytes()])
            .unwrap();
        let len = e.finish();
        out[..len].to_vec()
    }

    /// The owner takes nothing: keepalives still go out every interval,
    /// garbage reports are dropped, and the latest state change waits as
    /// pending and is delivered once the owner reads.
    #[tokio::test]
    async fn keepalives_go_on_while_the_owner_takes_no_reports() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = {
            // A free port for the liveness socket.
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(run(
            local,
            peer.local_addr().unwrap(),
            Duration::from_millis(10),
            Duration::from_secs(60),
            7,
            tx,
        ));
        async fn recv(peer: &UdpSocket) -> SocketAddr {
            let mut buf = [0u8; 512];
            tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
                .await
                .expect("a keepalive in time")
                .unwrap()
                .1
        }
        let from = recv(&peer).await;
        assert_eq!(from, local);
        peer.send_to(&keepalive(1), local).await.unwrap(); // Up{1}: fills the queue
        for _ in 0..50 {
            peer.send_to(b"garbage", local).await.unwrap(); // dropped reports
        }
        peer.send_to(&keepalive(2), local).await.unwrap(); // Up{2}: pending
        // Keepalives keep coming though nobody reads the reports.
        for _ in 0..20 {
            recv(&peer).await;
        }
        let first = rx.recv().await.unwrap();
        assert_eq!(first, LivenessReport::Changed(Liveness::Up { boot_id: 1 }));
        // The pending change arrives (a rejection report may come first).
        let latest = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let LivenessReport::Changed(state) = rx.recv().await.unwrap() {
                    return state;
                }
            }
        })
        .await
        .expect("the pending change is delivered");
        assert_eq!(latest, Liveness::Up { boot_id: 2 });
        task.abort();
    }
}
