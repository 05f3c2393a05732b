//! Liveness of the switch at the other end of a path, by UDP keepalives:
//! on the peer link apart from the session's data flow (so a bulk transfer
//! never delays detection; peer sync), and on the backup path (MC-LAG's
//! split-brain check). The keepalive thread ([`spawn`]) only reports; its
//! owner decides.
//!
//! It never waits on its owner: keepalives must go on while the owner is
//! slow (a stalled owner must not make this switch look dead to the peer).
//! Reports are offered with `try_send`:
//! - an Up/Down change that does not fit is kept as the *pending* state and
//!   offered again on every pass of the thread's loop (at least once an
//!   interval); a newer change replaces it. Coalescing keeps the meaning: the owner
//!   always ends up with the latest state, and a boot id change stays
//!   visible (the pending Up carries the newest boot id; a Down-then-Up
//!   with the same boot id that the owner never saw was a blip shorter than
//!   its own delay).
//! - a rejected datagram that does not fit is counted here by reason and
//!   offered again, one report per reason carrying the count, on every
//!   pass: under a flood of garbage the owner's counters still count every
//!   datagram this thread read (only what the kernel drops when the flood
//!   outruns the socket buffer never reaches them).
//!
//! A path may also have a *watcher* ([`spawn`]'s `watcher`): a
//! `watch` channel that gets every judgement the moment it is made, apart
//! from the owner's queue. MC-LAG watches the peer link this way, so a
//! takeover never waits for peer sync to be scheduled (the owner's
//! queue goes through peer sync's task, which a flood of sync traffic or
//! a saturated CPU may keep from running for tens of milliseconds).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use std::net::UdpSocket;
use sync_common::wire::{self, Encoder, Frame, MessageType, SubType};

use tokio::sync::{
    mpsc::{self, error::TrySendError},
    watch,
};

use crate::{
    bus::Liveness,
    log_limit::LogLimiter,
    realtime::{Scheduling, schedule_this_thread},
};

/// What a liveness task tells its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LivenessReport {
    /// The other end came up (or restarted) or went silent.
    Changed(Liveness),
    /// Datagrams were refused (a stranger, garbage, not a keepalive).
    Rejected {
        /// Counter label.
        reason: &'static str,
        /// How many datagrams (more than one when the owner had no room
        /// for the earlier reports).
        count: u64,
        /// The last one, for the log.
        detail: String,
    },
}

/// The way to the owner: reports offered without waiting (see the module
/// doc), the newest state change and the rejections it had no room for.
struct Reports {
    events: mpsc::Sender<LivenessReport>,
    /// Told each judgement at once (see the module doc).
    watcher: Option<watch::Sender<Option<Liveness>>>,
    /// The newest state change the owner has not taken yet.
    pending: Option<Liveness>,
    /// Rejections the owner had no room for, by reason: how many, and the
    /// last one's detail. A handful of reasons exist, so it stays small.
    unreported: BTreeMap<&'static str, (u64, String)>,
    log: LogLimiter,
}

impl Reports {
    /// Offers a report without waiting. A state change that does not fit
    /// is kept as pending; false when the owner is gone.
    fn offer(&mut self, report: LivenessReport) -> bool {
        match self.events.try_send(report) {
            Ok(()) => true,
            Err(TrySendError::Full(LivenessReport::Changed(state))) => {
                self.pending = Some(state);
                true
            }
            Err(TrySendError::Full(LivenessReport::Rejected {
                reason,
                count,
                detail,
            })) => {
                let waiting = self.unreported.entry(reason).or_default();
                waiting.0 += count;
                waiting.1 = detail;
                if self.log.admit("liveness_reports_waiting").is_some() {
                    tracing::debug!(
                        reason,
                        waiting = waiting.0,
                        "owner is not taking liveness reports; rejected datagrams counted here until it does"
                    );
                }
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Reports a state change; behind an older pending one it replaces it
    /// (never overtakes it in the queue). False when the owner is gone.
    fn change(&mut self, state: Liveness) -> bool {
        if let Some(watcher) = &self.watcher {
            // Never blocks; a watcher that is gone is no reason to stop.
            watcher.send_replace(Some(state));
        }
        if self.pending.is_some() {
            self.pending = Some(state);
            return true;
        }
        self.offer(LivenessReport::Changed(state))
    }

    /// Offers the pending change, then the waiting rejections, again.
    /// False when the owner is gone.
    fn retry_pending(&mut self) -> bool {
        let alive = match self.pending.take() {
            Some(state) => self.offer(LivenessReport::Changed(state)),
            None => !self.events.is_closed(),
        };
        // A state change still waiting goes first; rejections wait behind it.
        if self.pending.is_some() {
            return alive;
        }
        // Those that still do not fit go back into `unreported`.
        for (reason, (count, detail)) in std::mem::take(&mut self.unreported) {
            if !self.offer(LivenessReport::Rejected {
                reason,
                count,
                detail,
            }) {
                return false;
            }
        }
        alive
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
    fn datagram(&mut self, bytes: &[u8], from: SocketAddr, reports: &mut Reports) -> bool {
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
                    return reports.change(Liveness::Up { boot_id: peer_boot });
                }
                true
            }
            Err(reason) => {
                let report = LivenessReport::Rejected {
                    reason,
                    count: 1,
                    detail: format!("{}-byte datagram from {from}", bytes.len()),
                };
                reports.offer(report)
            }
        }
    }
}

/// One datagram already in the socket's queue, without waiting
/// (`MSG_DONTWAIT` on the otherwise blocking socket).
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

/// How often keepalives go, when the other end counts as gone, and how
/// the thread that runs them is scheduled (`[peer]`, for every path).
#[derive(Clone, Copy, Debug)]
pub struct KeepaliveTiming {
    /// Between two keepalives.
    pub interval: Duration,
    /// Silence after which the other end is reported down.
    pub dead: Duration,
    /// SCHED_FIFO priority of the thread (1-99); 0: normal scheduling.
    pub rt_priority: u8,
}

/// One path's keepalives.
#[derive(Clone, Copy, Debug)]
pub struct Keepalives {
    /// This switch's end (the socket is bound here).
    pub local: SocketAddr,
    /// The other end.
    pub peer: SocketAddr,
    /// This agent's boot id, carried in every keepalive.
    pub boot_id: u64,
    pub timing: KeepaliveTiming,
}

/// Starts `keepalives` on a thread of their own and returns how it is
/// scheduled. The thread sends a keepalive every interval and reports the
/// other end up or down (after `dead` without one) on `events`, never
/// waiting on them (see the module doc); it ends within an interval of
/// `events` closing. A `watcher` gets every judgement at once as well
/// (the module doc says why).
///
/// A thread, not a task: a dead interval of tens of milliseconds is
/// shorter than the time a busy runtime (or a saturated CPU, for a
/// normal-priority thread) may leave a task unscheduled, and a keepalive
/// that is late because its sender was not run reads as a dead switch. At
/// real-time priority the thread runs as soon as a keepalive is due or
/// arrives, whatever else the CPUs do; its work per wakeup is bounded (one
/// send, at most [`DRAIN_BEFORE_JUDGING`] datagrams), so it cannot hold a
/// CPU.
pub fn spawn(
    keepalives: Keepalives,
    events: mpsc::Sender<LivenessReport>,
    watcher: Option<watch::Sender<Option<Liveness>>>,
) -> std::io::Result<Scheduling> {
    let (scheduled_tx, scheduled) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(format!("keepalive-{}", keepalives.local.port()))
        .spawn(move || {
            let scheduling = schedule_this_thread(keepalives.timing.rt_priority);
            let _ = scheduled_tx.send(scheduling);
            run(keepalives, events, watcher);
        })?;
    scheduled
        .recv()
        .map_err(|_| std::io::Error::other("the keepalive thread ended before starting"))
}

/// Binds the keepalive socket, retrying every second while the address is
/// not there yet (an interface still coming up). None once `events` closed.
fn bind(local: SocketAddr, events: &mpsc::Sender<LivenessReport>) -> Option<UdpSocket> {
    let mut warned = false;
    loop {
        match UdpSocket::bind(local) {
            Ok(socket) => return Some(socket),
            Err(err) => {
                if !warned {
                    tracing::warn!(%local, error = %err, "cannot bind the keepalive socket yet; retrying every second");
                    warned = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                if events.is_closed() {
                    return None;
                }
            }
        }
    }
}

/// The keepalive thread's loop (see [`spawn`]).
fn run(
    keepalives: Keepalives,
    events: mpsc::Sender<LivenessReport>,
    watcher: Option<watch::Sender<Option<Liveness>>>,
) {
    let Keepalives {
        local,
        peer,
        boot_id,
        timing: KeepaliveTiming { interval, dead, .. },
    } = keepalives;
    let Some(socket) = bind(local, &events) else {
        return;
    };
    let mut seq = 0u32;
    let mut heard = Heard {
        peer,
        last_seen: None,
        up: false,
        current_boot: None,
    };
    let mut buf = [0u8; 512];
    let mut reports = Reports {
        events,
        watcher,
        pending: None,
        unreported: BTreeMap::new(),
        log: LogLimiter::new(Duration::from_secs(1)),
    };
    let mut next_tick = Instant::now();
    loop {
        // A change the owner had no room for is offered again on every
        // pass: at least once an interval.
        if !reports.retry_pending() {
            return;
        }
        let now = Instant::now();
        if now >= next_tick {
            // Late (the thread was not run): the next one an interval from
            // now, not a burst to catch up.
            next_tick = (next_tick + interval).max(now + interval / 2);
            seq = seq.wrapping_add(1);
            let mut out = [0u8; 64];
            let Ok(mut encoder) =
                Encoder::new(&mut out, MessageType::Keepalive, SubType::None, seq)
            else {
                continue;
            };
            if encoder
                .tlv(wire::tlv::BOOT_ID, &[&boot_id.to_be_bytes()])
                .is_err()
            {
                continue;
            }
            let len = encoder.finish();
            // A send error (link down, no route) shows up as missing keepalives.
            let _ = socket.send_to(&out[..len], peer);
            // Keepalives that came while this thread was not run are taken
            // before judging: after a stall the tick is due and the socket
            // ready at once, and judging first would see an old
            // `last_seen` and declare a live peer dead.
            let mut waiting = 0;
            while waiting < DRAIN_BEFORE_JUDGING {
                let Some((len, from)) = recv_now(&socket, &mut buf) else {
                    break;
                };
                waiting += 1;
                if !heard.datagram(&buf[..len], from, &mut reports) {
                    return;
                }
            }
            if heard.up && heard.last_seen.is_some_and(|t| t.elapsed() > dead) {
                heard.up = false;
                if !reports.change(Liveness::Down) {
                    return;
                }
            }
            continue;
        }
        // Until the next keepalive is due, or a datagram comes.
        let wait = (next_tick - now).max(Duration::from_micros(50));
        if socket.set_read_timeout(Some(wait)).is_err() {
            std::thread::sleep(wait);
            continue;
        }
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                if !heard.datagram(&buf[..len], from, &mut reports) {
                    return;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            // Anything else (an ICMP error queued on the socket): no
            // datagram this time; a pause so a socket that keeps failing
            // cannot spin a real-time thread.
            Err(_) => std::thread::sleep(wait.min(Duration::from_millis(1))),
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

    fn free_udp_port() -> SocketAddr {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    }

    fn keepalives(local: SocketAddr, peer: SocketAddr, dead: Duration) -> Keepalives {
        Keepalives {
            local,
            peer,
            boot_id: 7,
            timing: KeepaliveTiming {
                interval: Duration::from_millis(10),
                dead,
                rt_priority: 0,
            },
        }
    }

    /// The owner takes nothing: keepalives still go out every interval,
    /// the garbage is counted here, and the latest state change waits as
    /// pending; once the owner reads it gets the change and a count of
    /// every garbage datagram.
    #[tokio::test]
    async fn keepalives_go_on_while_the_owner_takes_no_reports() {
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = free_udp_port();
        let (tx, mut rx) = mpsc::channel(1);
        spawn(
            keepalives(local, peer.local_addr().unwrap(), Duration::from_secs(60)),
            tx,
            None,
        )
        .unwrap();
        async fn recv(peer: &tokio::net::UdpSocket) -> SocketAddr {
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
            peer.send_to(b"garbage", local).await.unwrap(); // counted, waiting
        }
        peer.send_to(&keepalive(2), local).await.unwrap(); // Up{2}: pending
        // Keepalives keep coming though nobody reads the reports.
        for _ in 0..20 {
            recv(&peer).await;
        }
        let first = rx.recv().await.unwrap();
        assert_eq!(first, LivenessReport::Changed(Liveness::Up { boot_id: 1 }));
        // The pending change arrives, and every garbage datagram is
        // counted (in reports of several datagrams each).
        let (mut latest, mut garbage) = (None, 0);
        tokio::time::timeout(Duration::from_secs(5), async {
            while latest.is_none() || garbage < 50 {
                match rx.recv().await.unwrap() {
                    LivenessReport::Changed(state) => latest = Some(state),
                    LivenessReport::Rejected { count, .. } => garbage += count,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("got {latest:?} and {garbage} of 50 garbage datagrams"));
        assert_eq!(latest, Some(Liveness::Up { boot_id: 2 }));
        assert_eq!(garbage, 50);
    }

    /// The owner's runtime stalls (here: this test blocks its only thread)
    /// for three dead intervals while the peer keeps sending keepalives
    /// from a thread of its own: this switch's keepalives keep going out
    /// during the stall (as a task on the stalled runtime they would not,
    /// and the peer would declare this switch dead), and the peer is not
    /// reported down.
    #[tokio::test]
    async fn a_stalled_runtime_neither_stops_keepalives_nor_loses_the_peer() {
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let local = free_udp_port();
        let dead = Duration::from_millis(50);
        let (tx, mut rx) = mpsc::channel(16);
        spawn(
            keepalives(local, peer.local_addr().unwrap(), dead),
            tx,
            None,
        )
        .unwrap();
        // The peer: a keepalive every 10 ms, counting the ones it hears,
        // until told to stop.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let heard = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let peer_thread = {
            let (stop, heard) = (stop.clone(), heard.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = peer.send_to(&keepalive(1), local);
                    let until = Instant::now() + Duration::from_millis(10);
                    while Instant::now() < until {
                        if peer.recv_from(&mut buf).is_ok() {
                            heard.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        let up = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the peer comes up");
        assert_eq!(
            up,
            Some(LivenessReport::Changed(Liveness::Up { boot_id: 1 }))
        );
        for stall in 0..5 {
            let before = heard.load(std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(3 * dead);
            let during = heard.load(std::sync::atomic::Ordering::Relaxed) - before;
            assert!(
                during >= 5,
                "stall {stall}: the peer heard {during} keepalives in {:?}",
                3 * dead
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Ok(report) = rx.try_recv() {
                panic!("stall {stall}: {report:?} though keepalives kept coming");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        peer_thread.join().unwrap();
    }

    /// Asked for real time, the thread runs in SCHED_FIFO at that priority
    /// as the kernel reports it (`/proc/self/task/TID/stat`: rt_priority
    /// and policy); without CAP_SYS_NICE it says why it could not.
    #[tokio::test]
    async fn the_keepalive_thread_runs_at_the_real_time_priority_asked_for() {
        let local = free_udp_port();
        let (tx, _rx) = mpsc::channel(1);
        let mut asked = keepalives(local, free_udp_port(), Duration::from_secs(60));
        asked.timing.rt_priority = 7;
        let scheduling = spawn(asked, tx, None).unwrap();
        // Whether this machine lets a thread of ours take SCHED_FIFO at
        // all (CAP_SYS_NICE, an RT cgroup with budget), tried apart.
        let allowed = std::thread::spawn(|| {
            let param = libc::sched_param { sched_priority: 1 };
            // SAFETY: pid 0 is the calling thread, which ends right after.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
        })
        .join()
        .unwrap();
        if !allowed {
            let Scheduling::Refused(why) = scheduling else {
                panic!("real time refused here, yet {scheduling}");
            };
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                assert!(why.contains("CAP_SYS_NICE"), "{why}");
            }
            return;
        }
        assert_eq!(scheduling, Scheduling::RealTime(7));
        let (rt_priority, policy) = kernel_scheduling(&format!("keepalive-{}", local.port()))
            .expect("the thread is listed");
        assert_eq!(rt_priority, 7, "rt_priority");
        assert_eq!(policy, libc::SCHED_FIFO, "policy");
    }

    /// The owner takes nothing (its queue is full) when the peer goes
    /// silent: the watcher is told Down within the dead interval and a
    /// tick all the same.
    #[tokio::test]
    async fn the_watcher_hears_the_peer_go_silent_while_the_owner_takes_nothing() {
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = free_udp_port();
        let dead = Duration::from_millis(50);
        let (tx, _rx) = mpsc::channel(1);
        let (watcher, mut watched) = watch::channel(None);
        spawn(
            keepalives(local, peer.local_addr().unwrap(), dead),
            tx,
            Some(watcher),
        )
        .unwrap();
        // The thread's first keepalive: its socket is bound.
        let mut buf = [0u8; 512];
        tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
            .await
            .expect("a keepalive in time")
            .unwrap();
        // The only keepalive: silence from then on.
        let silent = Instant::now();
        peer.send_to(&keepalive(1), local).await.unwrap(); // Up{1}: fills the queue
        peer.send_to(b"garbage", local).await.unwrap(); // no room: dropped
        tokio::time::timeout(Duration::from_secs(5), watched.wait_for(|s| s.is_some()))
            .await
            .expect("the watcher hears the peer come up")
            .unwrap();
        assert_eq!(*watched.borrow(), Some(Liveness::Up { boot_id: 1 }));
        tokio::time::timeout(
            Duration::from_secs(5),
            watched.wait_for(|s| *s == Some(Liveness::Down)),
        )
        .await
        .expect("the watcher hears the peer go silent")
        .unwrap();
        assert!(
            silent.elapsed() >= dead,
            "Down after {:?}, before the dead interval",
            silent.elapsed()
        );
    }

    /// How the kernel schedules this process's thread named `name`
    /// (`/proc/self/task/TID/stat`): its rt_priority and policy.
    fn kernel_scheduling(name: &str) -> Option<(u32, i32)> {
        let stat = std::fs::read_dir("/proc/self/task")
            .ok()?
            .flatten()
            .find(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == name)
            })
            .and_then(|task| std::fs::read_to_string(task.path().join("stat")).ok())?;
        // Fields after the command name, which ends with ')': state is field
        // 3, rt_priority 40, policy 41.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
        Some((
            fields.get(40 - 3)?.parse().ok()?,
            fields.get(41 - 3)?.parse().ok()?,
        ))
    }
}
