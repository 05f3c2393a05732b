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

/// Most datagrams taken from the socket before a liveness judgement (see
/// the ticker branch of [`run`]): enough for every keepalive of a long
/// stall, bounded so a flood of datagrams cannot hold the ticker.
const DRAIN_BEFORE_JUDGING: usize = 64;

/// What the keepalives have said so far.
struct Heard {
    peer: SocketAddr,
    last_seen: Option<Instant>,
    up: bool,
    current_boot: Option<u64>,
}

impl Heard {
    /// Takes one datagram: a keepalive from the peer refreshes `last_seen`
    /// (and reports Up on a change), anything else is reported as rejected.
    /// False when the owner is gone.
    fn datagram(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        events: &mpsc::Sender<LivenessReport>,
        pending: &mut Option<Liveness>,
        dropped: &mut u64,
        log: &mut LogLimiter,
    ) -> bool {
        let verdict = if from.ip() != self.peer.ip() {
            Err("keepalive_from_stranger")
        } else {
            match Frame::decode(bytes, bytes.len()) {
                Ok(frame) if frame.header.msg_type == MessageType::Keepalive => {
                    frame.u64_of(wire::tlv::BOOT_ID).ok_or("bad_keepalive")
                }
                Ok(_) => Err("bad_keepalive"),
                Err(err) => Err(err.reason()),
            }
        };
        match verdict {
            Ok(peer_boot) => {
                self.last_seen = Some(Instant::now());
                // A new boot id without a silence in between is a
                // restart faster than the dead interval: report it too.
                if !self.up || self.current_boot != Some(peer_boot) {
                    self.up = true;
                    self.current_boot = Some(peer_boot);
                    let state = Liveness::Up { boot_id: peer_boot };
                    // Behind an older pending change: this one replaces it.
                    if pending.is_some() {
                        *pending = Some(state);
                    } else {
                        return offer(
                            events,
                            LivenessReport::Changed(state),
                            pending,
                            dropped,
                            log,
                        );
                    }
                }
                true
            }
            Err(reason) => {
                let report = LivenessReport::Rejected {
                    reason,
                    detail: format!("{}-byte datagram from {from}", bytes.len()),
                };
                offer(events, report, pending, dropped, log)
            }
        }
    }
}

/// One datagram already in the socket's queue, without waiting. A plain
/// non-blocking `recvfrom`, not tokio's `try_recv_from`: that one answers
/// from the readiness tokio last saw, which a runtime that was too busy to
/// poll its driver has not updated yet.
fn recv_now(socket: &UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut from_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: buf and from are valid for writes of the lengths given, and
    // the fd is the socket's, open for as long as `socket` is borrowed.
    let len = unsafe {
        libc::recvfrom(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut from as *mut libc::sockaddr_storage).cast(),
            &mut from_len,
        )
    };
    if len < 0 {
        return None;
    }
    Some((len as usize, socket_addr(&from)?))
}

/// The address in a `sockaddr_storage` `recvfrom` filled (IPv4 or IPv6).
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
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
    let mut heard = Heard {
        peer,
        last_seen: None,
        up: false,
        current_boot: None,
    };
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
                // Keepalives that came while this task did not run (a busy
                // runtime) are taken before judging: after a stall the tick
                // and the socket are ready at once, and the select may pick
                // the tick first, which would then see an old `last_seen`
                // and declare a live peer dead.
                let mut waiting = 0;
                while waiting < DRAIN_BEFORE_JUDGING {
                    let Some((len, from)) = recv_now(&socket, &mut buf) else { break };
                    waiting += 1;
                    if !heard.datagram(&buf[..len], from, &events, &mut pending, &mut dropped, &mut log) {
                        return;
                    }
                }
                if heard.up && heard.last_seen.is_some_and(|t| t.elapsed() > dead) {
                    heard.up = false;
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
                if !heard.datagram(&buf[..len], from, &events, &mut pending, &mut dropped, &mut log) {
                    return;
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

    /// The runtime stalls (here: this test blocks its only thread) for
    /// three dead intervals while the peer's keepalives keep coming. When
    /// the task runs again its ticker and its socket are ready at once;
    /// whichever the select takes first, the keepalives waiting in the
    /// socket count before the judgement, so the peer is never declared
    /// dead. (Without that, the ticker wins about every other stall.)
    #[tokio::test]
    async fn keepalives_waiting_after_a_stall_count_before_the_judgement() {
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let interval = Duration::from_millis(10);
        let dead = Duration::from_millis(50);
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(run(
            local,
            peer.local_addr().unwrap(),
            interval,
            dead,
            7,
            tx,
        ));
        // Up first (the task binds its socket once it runs).
        let up = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let _ = peer.send_to(&keepalive(1), local);
                tokio::time::sleep(interval).await;
                if let Ok(report) = rx.try_recv() {
                    return report;
                }
            }
        })
        .await
        .expect("the peer comes up");
        assert_eq!(up, LivenessReport::Changed(Liveness::Up { boot_id: 1 }));
        for stall in 0..12 {
            // Keepalives sent before and at the end of the stall: the last
            // one waits in the socket when the task runs again.
            peer.send_to(&keepalive(1), local).unwrap();
            std::thread::sleep(3 * dead);
            peer.send_to(&keepalive(1), local).unwrap();
            tokio::time::sleep(2 * interval).await;
            if let Ok(report) = rx.try_recv() {
                panic!("stall {stall}: {report:?} though keepalives kept coming");
            }
        }
        task.abort();
    }
}
