//! The MC-LAG handlers driven by event sequences against a recording
//! [`PortOps`]: what the task decides, and what it does to the ports,
//! without root or a kernel. The fake holds each port's IPv6 addresses and
//! applies a readdress exactly as the trait promises
//! ([`Readdressed::plan`], which the real implementation uses too).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    config::{BackupPath, LinkLocalMode, MclagConfig, MismatchAction, SplitBrainAction},
    election::Role,
    eui64,
    events::Event,
    hold::HoldReason,
    port_ops::{self, ActorSystem, PortError, PortOps, Readdressed},
    report::MclagReport,
    task::{Inputs, Task},
};
use sync_common::wire::capability;

use crate::{
    bus::{Liveness, MemberPort, SessionEvent},
    liveness::LivenessReport,
    mac::MacAddr,
};

/// One side effect, as the fake saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    SetMac(String, MacAddr),
    ActorSystem(String, MacAddr),
    Bounce(String),
    /// Port, address to remove, address to add.
    Readdress(String, Option<Ipv6Addr>, Option<Ipv6Addr>),
    Announce(String, MacAddr),
    /// Port taken out of service (false) or brought back (true).
    InService(String, bool),
}

/// Records every side effect; keeps each port's link-local addresses (none
/// unless a test gives some) so the report shows what a readdress did.
/// Every announcement is two frames; every port has a bond whose
/// `ad_actor_system` starts all zero.
#[derive(Default)]
struct Recorder {
    calls: Vec<Call>,
    link_locals: BTreeMap<u32, Vec<IpAddr>>,
}

impl Recorder {
    /// Ports 11 and 12 hold the EUI-64 link-locals of their own MACs, and
    /// port 11 also an operator's `fe80::1234`.
    fn with_link_locals() -> Self {
        let mut link_locals = BTreeMap::new();
        link_locals.insert(
            11,
            vec![IpAddr::V6(eui64::link_local(mac(OWN, 1))), operator()],
        );
        link_locals.insert(12, vec![IpAddr::V6(eui64::link_local(mac(OWN, 2)))]);
        Self {
            calls: Vec::new(),
            link_locals,
        }
    }

    /// The addresses of `ifindex`, sorted (order is not the point).
    fn addresses(&self, ifindex: u32) -> Vec<IpAddr> {
        let mut list = self.link_locals.get(&ifindex).cloned().unwrap_or_default();
        list.sort();
        list
    }
}

/// An address the operator configured on m1.
fn operator() -> IpAddr {
    ip("fe80::1234")
}

fn v6(mac: MacAddr) -> IpAddr {
    IpAddr::V6(eui64::link_local(mac))
}

fn sorted(mut list: Vec<IpAddr>) -> Vec<IpAddr> {
    list.sort();
    list
}

impl PortOps for Recorder {
    async fn set_mac(&mut self, _: u32, name: &str, mac: MacAddr) -> Result<(), PortError> {
        self.calls.push(Call::SetMac(name.into(), mac));
        Ok(())
    }

    fn set_actor_system(&mut self, name: &str, mac: MacAddr) -> Result<ActorSystem, PortError> {
        self.calls.push(Call::ActorSystem(name.into(), mac));
        Ok(ActorSystem::Set {
            previous: Some(MacAddr([0; 6])),
        })
    }

    async fn bounce(&mut self, _: u32, name: &str) -> Result<(), PortError> {
        self.calls.push(Call::Bounce(name.into()));
        Ok(())
    }

    async fn readdress_link_local(
        &mut self,
        ifindex: u32,
        name: &str,
        remove: Option<Ipv6Addr>,
        add: Option<Ipv6Addr>,
    ) -> Result<Readdressed, PortError> {
        self.calls.push(Call::Readdress(name.into(), remove, add));
        let list = self.link_locals.entry(ifindex).or_default();
        let done = Readdressed::plan(list, remove, add);
        list.retain(|a| Some(*a) != done.removed.map(IpAddr::V6));
        list.extend(done.added.map(IpAddr::V6));
        Ok(done)
    }

    async fn announce(&mut self, _: u32, name: &str, mac: MacAddr) -> Result<u64, PortError> {
        self.calls.push(Call::Announce(name.into(), mac));
        Ok(2)
    }

    async fn set_in_service(&mut self, _: u32, name: &str, up: bool) -> Result<(), PortError> {
        self.calls.push(Call::InService(name.into(), up));
        Ok(())
    }

    async fn link_locals(&mut self, ifindex: u32) -> Result<Vec<IpAddr>, PortError> {
        Ok(self.link_locals.get(&ifindex).cloned().unwrap_or_default())
    }
}

const OWN: [u8; 6] = [0x02, 0, 0, 0, 0xa0, 1];
const TWIN: [u8; 6] = [0x00, 0x21, 0x2f, 0xb5, 0x6e, 0x10];

fn mac(bytes: [u8; 6], last: u8) -> MacAddr {
    let mut bytes = bytes;
    bytes[5] = bytes[5].wrapping_add(last);
    MacAddr(bytes)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Two member ports, MLAG ids 1 and 2, on ifindex 11 and 12.
fn ports() -> Vec<MemberPort> {
    (1..=2u8)
        .map(|i| MemberPort {
            name: format!("m{i}"),
            mlag_id: u32::from(i),
            ifindex: Some(10 + u32::from(i)),
            mac: Some(mac(OWN, i)),
            mtu: Some(1500),
        })
        .collect()
}

/// The MTUs of the peer's twins: as ours.
fn twin_mtus() -> Vec<(u32, u32)> {
    vec![(1, 1500), (2, 1500)]
}

/// The peer's twins of [`ports`].
fn twins() -> Vec<(u32, MacAddr)> {
    (1..=2u8).map(|i| (u32::from(i), mac(TWIN, i))).collect()
}

fn config() -> MclagConfig {
    MclagConfig {
        address: None,
        linklocal: LinkLocalMode::Readdress,
        backup: None,
        announce: true,
        on_split_brain: SplitBrainAction::ShutPorts,
        init_delay_s: 0,
        on_mismatch: MismatchAction::Warn,
    }
}

fn with_backup() -> MclagConfig {
    MclagConfig {
        backup: Some(BackupPath {
            local_address: ip("192.0.2.1"),
            peer_address: ip("192.0.2.2"),
            port: 7789,
        }),
        ..config()
    }
}

/// A task at 10.0.0.5 with [`ports`].
fn task(config: MclagConfig) -> Task<Recorder> {
    Task::new(config, ip("10.0.0.5"), ports(), Recorder::default())
}

/// Like [`task`], the ports holding [`Recorder::with_link_locals`].
fn task_with_link_locals(config: MclagConfig) -> Task<Recorder> {
    Task::new(
        config,
        ip("10.0.0.5"),
        ports(),
        Recorder::with_link_locals(),
    )
}

fn hello(peer: &str) -> Event {
    Event::Session(SessionEvent::Up {
        mclag_address: Some(ip(peer)),
        ports: twins(),
        port_mtus: twin_mtus(),
        port_vlans: Default::default(),
        capabilities: capability::ALL,
    })
}

fn backup(liveness: Liveness) -> Event {
    Event::Backup(LivenessReport::Changed(liveness))
}

async fn drive(task: &mut Task<Recorder>, events: impl IntoIterator<Item = Event>) {
    for event in events {
        task.process(event).await;
    }
}

async fn report(task: &mut Task<Recorder>) -> MclagReport {
    let (tx, rx) = oneshot::channel();
    task.process(Event::Query(tx)).await;
    rx.await.unwrap()
}

/// What a slave does to each port: twin MAC, bond actor system, the EUI-64
/// link-local of its own MAC replaced by the one of the twin MAC.
fn alignment() -> Vec<Call> {
    (1..=2u8)
        .flat_map(|i| {
            let name = format!("m{i}");
            let twin = mac(TWIN, i);
            [
                Call::SetMac(name.clone(), twin),
                Call::ActorSystem(name.clone(), twin),
                Call::Readdress(
                    name,
                    Some(eui64::link_local(mac(OWN, i))),
                    Some(eui64::link_local(twin)),
                ),
            ]
        })
        .collect()
}

/// What restoring does to each port that held its own EUI-64 link-local
/// before alignment: own MAC, the bond's actor system back to all zero, the
/// twin-derived link-local replaced by the original one.
fn restoration() -> Vec<Call> {
    (1..=2u8)
        .flat_map(|i| {
            let name = format!("m{i}");
            [
                Call::SetMac(name.clone(), mac(OWN, i)),
                Call::ActorSystem(name.clone(), MacAddr([0; 6])),
                Call::Readdress(
                    name,
                    Some(eui64::link_local(mac(TWIN, i))),
                    Some(eui64::link_local(mac(OWN, i))),
                ),
            ]
        })
        .collect()
}

async fn shutdown(task: &mut Task<Recorder>) {
    let (tx, rx) = oneshot::channel();
    task.process(Event::Shutdown(tx)).await;
    rx.await.expect("shutdown is answered once restored");
}

#[tokio::test]
async fn a_peer_with_a_higher_address_makes_this_switch_slave_and_aligns_every_port() {
    let mut t = task(config());
    drive(&mut t, [hello("10.0.0.9")]).await;
    assert_eq!(t.ops.calls, alignment());
    let r = report(&mut t).await;
    assert_eq!(r.role, Role::Slave);
    assert_eq!(r.peer_address.as_deref(), Some("10.0.0.9"));
    assert!(r.peer_alive);
    assert_eq!(r.role_changes, 1);
    assert_eq!(r.error, None);
    assert_eq!(r.ports[0].original_mac, Some(mac(OWN, 1)));
    assert_eq!(r.ports[0].twin_mac, Some(mac(TWIN, 1)));
    assert_eq!(
        r.ports[0].link_local,
        vec!["fe80::221:2fff:feb5:6e11".to_string()]
    );
    assert_eq!(
        r.shared_mac,
        Some(mac(OWN, 1)),
        "current MAC, until the dataplane reports the new one"
    );
}

#[tokio::test]
async fn a_peer_with_a_lower_address_makes_this_switch_master_and_changes_nothing() {
    let mut t = task(config());
    drive(&mut t, [hello("10.0.0.1")]).await;
    assert_eq!(t.ops.calls, []);
    let r = report(&mut t).await;
    assert_eq!(r.role, Role::Master);
    assert_eq!(r.shared_mac, Some(mac(OWN, 1)));
    assert_eq!(r.ports[1].original_mac, Some(mac(OWN, 2)));
    assert!(r.ports[1].link_local.is_empty());
}

#[tokio::test]
async fn bounce_mode_bounces_the_port_instead_of_readdressing() {
    let mut t = task(MclagConfig {
        linklocal: LinkLocalMode::Bounce,
        ..config()
    });
    drive(&mut t, [hello("10.0.0.9")]).await;
    let bounced: Vec<Call> = t
        .ops
        .calls
        .iter()
        .filter(|c| matches!(c, Call::Bounce(_) | Call::Readdress(..)))
        .cloned()
        .collect();
    assert_eq!(
        bounced,
        [Call::Bounce("m1".into()), Call::Bounce("m2".into())]
    );
}

#[tokio::test]
async fn a_slave_that_loses_the_session_without_a_backup_path_takes_over_and_announces() {
    let mut t = task(config());
    drive(
        &mut t,
        [hello("10.0.0.9"), Event::Session(SessionEvent::Lost)],
    )
    .await;
    let announced: Vec<Call> = t.ops.calls[alignment().len()..].to_vec();
    assert_eq!(
        announced,
        [
            Call::Announce("m1".into(), mac(OWN, 1)),
            Call::Announce("m2".into(), mac(OWN, 2)),
        ]
    );
    let r = report(&mut t).await;
    assert_eq!(r.role, Role::Master);
    assert!(!r.peer_alive);
    assert_eq!(r.role_changes, 2);
    assert_eq!(r.announcements_sent, 4);
    assert!(r.last_role_change_unix_ms.is_some());
}

/// The peer link's keepalive thread says Down before peer sync does: the
/// slave takes over at once; peer sync's Lost, when it comes, changes
/// nothing more (no second role change, no second announcement).
#[tokio::test]
async fn a_slave_takes_over_on_the_keepalive_threads_word_and_peer_syncs_lost_adds_nothing() {
    let mut t = task(config());
    drive(&mut t, [hello("10.0.0.9"), Event::PeerLink(Liveness::Down)]).await;
    let r = report(&mut t).await;
    assert_eq!(r.role, Role::Master);
    assert!(!r.peer_alive);
    assert_eq!(r.announcements_sent, 4);
    drive(&mut t, [Event::Session(SessionEvent::Lost)]).await;
    let r = report(&mut t).await;
    assert_eq!((r.role_changes, r.announcements_sent), (2, 4));
    // Up on the peer link decides nothing: the hello elects.
    drive(&mut t, [Event::PeerLink(Liveness::Up { boot_id: 3 })]).await;
    assert_eq!(report(&mut t).await.role, Role::Master);
}

/// The running loop takes the keepalive thread's Down from its watch
/// channel while peer sync says nothing.
#[tokio::test]
async fn the_loop_takes_over_when_the_peer_links_watch_says_down() {
    let (sessions_tx, sessions) = mpsc::channel(4);
    let (_ports_tx, ports_rx) = watch::channel(ports());
    let (queries_tx, queries) = mpsc::channel(4);
    let (_shutdown_tx, shutdown_rx) = mpsc::channel(1);
    let (peer_link_tx, peer_link) = watch::channel(None);
    let t = task(config());
    tokio::spawn(t.run(Inputs {
        sessions,
        peer_link,
        ports: ports_rx,
        backup: None,
        queries,
        shutdown: shutdown_rx,
        shared_mac: watch::channel(None).0,
    }));
    let ask = || async {
        let (tx, rx) = oneshot::channel();
        queries_tx.send(tx).await.unwrap();
        rx.await.unwrap()
    };
    let Event::Session(up) = hello("10.0.0.9") else {
        unreachable!()
    };
    sessions_tx.send(up).await.unwrap();
    peer_link_tx.send_replace(Some(Liveness::Up { boot_id: 3 }));
    // The loop picks among ready inputs at random: a query may be answered
    // before the hello is taken.
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while ask().await.role != Role::Slave {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the hello makes this switch slave");
    peer_link_tx.send_replace(Some(Liveness::Down));
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let r = ask().await;
            if r.role == Role::Master {
                return r;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the slave takes over without a word from peer sync");
    assert_eq!(r.announcements_sent, 4);
}

#[tokio::test]
async fn takeover_without_announcing_when_announce_is_off() {
    let mut t = task(MclagConfig {
        announce: false,
        ..config()
    });
    drive(
        &mut t,
        [hello("10.0.0.9"), Event::Session(SessionEvent::Lost)],
    )
    .await;
    assert_eq!(t.ops.calls, alignment());
    let r = report(&mut t).await;
    assert_eq!(r.role, Role::Master);
    assert_eq!(r.announcements_sent, 0);
}

#[tokio::test]
async fn a_slave_that_loses_the_session_while_the_backup_path_is_alive_is_split_brain_and_stays_slave()
 {
    let mut t = task(with_backup());
    drive(
        &mut t,
        [
            backup(Liveness::Up { boot_id: 7 }),
            hello("10.0.0.9"),
            Event::Session(SessionEvent::Lost),
        ],
    )
    .await;
    let mut expected = alignment();
    expected.extend([
        Call::InService("m1".into(), false),
        Call::InService("m2".into(), false),
    ]);
    assert_eq!(
        t.ops.calls, expected,
        "dual active: the slave's ports go down"
    );
    let r = report(&mut t).await;
    assert_eq!(r.holds, [HoldReason::SplitBrain]);
    assert!(r.ports.iter().all(|p| p.held_down));
    assert!(
        r.to_string()
            .contains("member ports held down: split brain")
    );
    assert_eq!(r.role, Role::Slave);
    assert!(r.split_brain);
    assert!(r.backup_configured);
    assert_eq!(r.backup_alive, Some(true));
    assert_eq!(r.role_changes, 1);
    assert!(
        r.to_string()
            .contains("backup path: alive  split brain: true")
    );
}

#[tokio::test]
async fn the_backup_path_going_silent_after_a_split_brain_completes_the_takeover() {
    let mut t = task(with_backup());
    drive(
        &mut t,
        [
            backup(Liveness::Up { boot_id: 7 }),
            hello("10.0.0.9"),
            Event::Session(SessionEvent::Lost),
            backup(Liveness::Down),
        ],
    )
    .await;
    let r = report(&mut t).await;
    assert_eq!(r.role, Role::Master);
    assert_eq!(r.backup_alive, Some(false));
    assert_eq!(r.announcements_sent, 4);
}

#[tokio::test]
async fn the_session_coming_back_clears_split_brain() {
    let mut t = task(with_backup());
    drive(
        &mut t,
        [
            backup(Liveness::Up { boot_id: 7 }),
            hello("10.0.0.9"),
            Event::Session(SessionEvent::Lost),
            hello("10.0.0.9"),
        ],
    )
    .await;
    let r = report(&mut t).await;
    assert!(!r.split_brain);
    assert!(r.peer_alive);
    assert_eq!(r.role, Role::Slave);
}

#[tokio::test]
async fn rejected_backup_datagrams_change_nothing() {
    let mut t = task(with_backup());
    drive(
        &mut t,
        [Event::Backup(LivenessReport::Rejected {
            reason: "bad_keepalive",
            count: 1,
            detail: "3-byte datagram".into(),
        })],
    )
    .await;
    assert_eq!(report(&mut t).await.backup_alive, None);
}

#[tokio::test]
async fn repeated_hellos_do_not_flap_the_role() {
    let mut t = task(config());
    drive(&mut t, (0..5).map(|_| hello("10.0.0.9"))).await;
    let r = report(&mut t).await;
    assert_eq!(r.role, Role::Slave);
    assert_eq!(r.role_changes, 1);
    // Each hello re-aligns (idempotent on a real port whose MAC the
    // dataplane has not reported yet), never the other way round.
    assert!(t.ops.calls.iter().all(|c| !matches!(c, Call::Announce(..))));
}

#[tokio::test]
async fn ports_already_on_their_twins_mac_are_left_alone() {
    let mut t = task(config());
    let aligned: Vec<MemberPort> = ports()
        .into_iter()
        .zip(twins())
        .map(|(p, (_, twin))| MemberPort {
            mac: Some(twin),
            ..p
        })
        .collect();
    drive(&mut t, [Event::Ports(aligned), hello("10.0.0.9")]).await;
    assert_eq!(t.ops.calls, []);
}

#[tokio::test]
async fn a_new_member_port_is_aligned_by_a_slave() {
    let mut t = task(config());
    t.ports.truncate(1);
    drive(&mut t, [hello("10.0.0.9")]).await;
    assert_eq!(t.ops.calls, alignment()[..3]);
    drive(&mut t, [Event::Ports(ports())]).await;
    // The dataplane has not reported m1's new MAC yet: it is aligned again,
    // then m2 for the first time.
    assert_eq!(t.ops.calls[3..], alignment()[..]);
}

#[tokio::test]
async fn a_peer_without_an_election_address_is_an_error_in_the_report() {
    let mut t = task(config());
    drive(
        &mut t,
        [Event::Session(SessionEvent::Up {
            mclag_address: None,
            ports: twins(),
            port_mtus: twin_mtus(),
            port_vlans: Default::default(),
            capabilities: capability::ALL,
        })],
    )
    .await;
    assert_eq!(t.ops.calls, []);
    let r = report(&mut t).await;
    assert_eq!(r.role, Role::Undecided);
    assert_eq!(
        r.error.as_deref(),
        Some("the peer sends no election address (no [mclag] section in its config)")
    );
    assert_eq!(r.shared_mac, None);
    assert!(
        r.to_string()
            .contains("error: the peer sends no election address")
    );
}

#[tokio::test]
async fn equal_election_addresses_are_an_error_and_no_role() {
    let mut t = task(config());
    drive(&mut t, [hello("10.0.0.5")]).await;
    assert_eq!(t.ops.calls, []);
    let r = report(&mut t).await;
    assert_eq!(r.role, Role::Undecided);
    assert!(
        r.error
            .unwrap()
            .contains("both switches use election address 10.0.0.5")
    );
}

#[tokio::test]
async fn the_text_report_has_one_line_per_port_under_a_header() {
    let mut t = task(config());
    drive(&mut t, [hello("10.0.0.9")]).await;
    let text = report(&mut t).await.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("role Slave  own 10.0.0.5  peer 10.0.0.9 (alive)"));
    assert!(lines[1].starts_with("role changes 1 (last at unix ms "));
    assert_eq!(
        lines[2],
        "port              mlag original mac      current mac       twin mac          link-local"
    );
    assert_eq!(
        lines[3],
        "m1                   1 02:00:00:00:a0:02 02:00:00:00:a0:02 00:21:2f:b5:6e:11 fe80::221:2fff:feb5:6e11"
    );
    assert_eq!(lines.len(), 5);
}

#[tokio::test]
async fn clean_exit_restores_every_port_mac_link_local_and_actor_system() {
    let mut t = task_with_link_locals(config());
    drive(&mut t, [hello("10.0.0.9")]).await;
    assert_eq!(t.ops.calls, alignment());
    assert_eq!(
        t.ops.addresses(11),
        sorted(vec![v6(mac(TWIN, 1)), operator()])
    );
    shutdown(&mut t).await;
    assert_eq!(t.ops.calls[alignment().len()..], restoration()[..]);
    assert_eq!(
        t.ops.addresses(11),
        sorted(vec![v6(mac(OWN, 1)), operator()]),
        "the original EUI-64 link-local is back; the operator's stayed"
    );
    assert_eq!(t.ops.addresses(12), [v6(mac(OWN, 2))]);
    let r = report(&mut t).await;
    assert_eq!(r.ports[0].original_mac, Some(mac(OWN, 1)));
    assert_eq!(r.ports[0].current_mac, Some(mac(OWN, 1)));
}

#[tokio::test]
async fn clean_exit_with_nothing_aligned_touches_nothing() {
    let mut t = task_with_link_locals(config());
    drive(&mut t, [hello("10.0.0.1")]).await;
    shutdown(&mut t).await;
    assert_eq!(t.ops.calls, []);
}

#[tokio::test]
async fn repeated_alignment_restores_the_first_original_not_the_stale_report() {
    // The dataplane has not reported the new MAC between the hellos, so
    // the second alignment sees the original MAC again and finds the
    // original link-local already gone: restoring still brings it back.
    let mut t = task_with_link_locals(config());
    drive(&mut t, [hello("10.0.0.9"), hello("10.0.0.9")]).await;
    shutdown(&mut t).await;
    assert_eq!(t.ops.calls[2 * alignment().len()..], restoration()[..]);
    assert_eq!(t.ops.addresses(12), [v6(mac(OWN, 2))]);
}

#[tokio::test]
async fn an_original_link_local_the_port_never_had_is_not_invented() {
    // Recorder::default holds no addresses (e.g. addr_gen_mode none).
    let mut t = task(config());
    drive(&mut t, [hello("10.0.0.9")]).await;
    shutdown(&mut t).await;
    let readdressed: Vec<Call> = t.ops.calls[alignment().len()..]
        .iter()
        .filter(|c| matches!(c, Call::Readdress(..)))
        .cloned()
        .collect();
    assert_eq!(
        readdressed,
        [
            Call::Readdress("m1".into(), Some(eui64::link_local(mac(TWIN, 1))), None),
            Call::Readdress("m2".into(), Some(eui64::link_local(mac(TWIN, 2))), None),
        ]
    );
    assert!(t.ops.addresses(11).is_empty());
}

#[tokio::test]
async fn a_slave_that_becomes_master_by_election_restores_its_ports() {
    let mut t = task_with_link_locals(config());
    // The peer comes back with a lower election address (its config changed).
    drive(&mut t, [hello("10.0.0.9"), hello("10.0.0.1")]).await;
    assert_eq!(t.ops.calls[alignment().len()..], restoration()[..]);
    let r = report(&mut t).await;
    assert_eq!(r.role, Role::Master);
    assert_eq!(r.role_changes, 2);
    assert_eq!(
        t.ops.addresses(11),
        sorted(vec![v6(mac(OWN, 1)), operator()])
    );
}

#[tokio::test]
async fn a_takeover_keeps_the_shared_macs_and_a_later_election_as_master_restores() {
    let mut t = task_with_link_locals(config());
    drive(
        &mut t,
        [hello("10.0.0.9"), Event::Session(SessionEvent::Lost)],
    )
    .await;
    assert!(
        t.ops.calls[alignment().len()..]
            .iter()
            .all(|c| matches!(c, Call::Announce(..))),
        "SPEC 3.4: the downstream device must see no MAC change at takeover"
    );
    let before = t.ops.calls.len();
    drive(&mut t, [hello("10.0.0.1")]).await;
    assert_eq!(t.ops.calls[before..], restoration()[..]);
}

#[tokio::test]
async fn readdress_leaves_an_operators_link_local_alone() {
    let mut t = task_with_link_locals(config());
    drive(&mut t, [hello("10.0.0.9")]).await;
    assert_eq!(
        t.ops.addresses(11),
        sorted(vec![v6(mac(TWIN, 1)), operator()])
    );
    assert_eq!(t.ops.addresses(12), [v6(mac(TWIN, 2))]);
}

#[test]
fn the_readdress_plan_names_only_the_derived_addresses() {
    let own = eui64::link_local(mac(OWN, 1));
    let twin = eui64::link_local(mac(TWIN, 1));
    let current = [
        IpAddr::V6(own),
        operator(),
        ip("10.77.0.1"),
        ip("2001:db8::1"),
    ];
    assert_eq!(
        Readdressed::plan(&current, Some(own), Some(twin)),
        Readdressed {
            removed: Some(own),
            added: Some(twin)
        }
    );
    // Already done: nothing to do, and the operator's address is never named.
    let done = [IpAddr::V6(twin), operator()];
    assert_eq!(
        Readdressed::plan(&done, Some(own), Some(twin)),
        Readdressed::default()
    );
    // Removing what is also wanted removes nothing.
    assert_eq!(
        Readdressed::plan(&done, Some(twin), Some(twin)),
        Readdressed::default()
    );
}

#[tokio::test]
async fn a_new_twin_mac_replaces_the_address_derived_from_the_previous_one() {
    let mut t = task_with_link_locals(config());
    drive(&mut t, [hello("10.0.0.9")]).await;
    // The dataplane reports the aligned MACs; then the peer's port 1 gets a
    // new MAC (e.g. replaced hardware).
    let aligned: Vec<MemberPort> = ports()
        .into_iter()
        .zip(twins())
        .map(|(p, (_, twin))| MemberPort {
            mac: Some(twin),
            ..p
        })
        .collect();
    let new_twin = mac(TWIN, 7);
    let mut twins = twins();
    twins[0].1 = new_twin;
    let before = t.ops.calls.len();
    drive(
        &mut t,
        [
            Event::Ports(aligned),
            Event::Session(SessionEvent::Up {
                mclag_address: Some(ip("10.0.0.9")),
                ports: twins,
                port_mtus: twin_mtus(),
                port_vlans: Default::default(),
                capabilities: capability::ALL,
            }),
        ],
    )
    .await;
    assert_eq!(
        t.ops.calls[before..],
        [
            Call::SetMac("m1".into(), new_twin),
            Call::ActorSystem("m1".into(), new_twin),
            Call::Readdress(
                "m1".into(),
                Some(eui64::link_local(mac(TWIN, 1))),
                Some(eui64::link_local(new_twin)),
            ),
        ]
    );
    assert_eq!(t.ops.addresses(11), sorted(vec![v6(new_twin), operator()]));
    shutdown(&mut t).await;
    assert_eq!(
        t.ops.addresses(11),
        sorted(vec![v6(mac(OWN, 1)), operator()])
    );
    assert!(
        t.ops
            .calls
            .contains(&Call::SetMac("m1".into(), mac(OWN, 1))),
        "the original MAC, not the first twin's"
    );
}

#[tokio::test]
async fn bounce_mode_restores_by_bouncing_again() {
    let mut t = task(MclagConfig {
        linklocal: LinkLocalMode::Bounce,
        ..config()
    });
    drive(&mut t, [hello("10.0.0.9")]).await;
    let before = t.ops.calls.len();
    shutdown(&mut t).await;
    assert_eq!(
        t.ops.calls[before..],
        [
            Call::SetMac("m1".into(), mac(OWN, 1)),
            Call::ActorSystem("m1".into(), MacAddr([0; 6])),
            Call::Bounce("m1".into()),
            Call::SetMac("m2".into(), mac(OWN, 2)),
            Call::ActorSystem("m2".into(), MacAddr([0; 6])),
            Call::Bounce("m2".into()),
        ]
    );
}

#[tokio::test]
async fn the_loop_restores_and_ends_at_shutdown_though_inputs_stay_open() {
    let (_sessions_tx, sessions) = mpsc::channel(4);
    let (_ports_tx, ports_rx) = watch::channel(ports());
    let (_queries_tx, queries) = mpsc::channel(4);
    let (shutdown_tx, shutdown_rx) = mpsc::channel(1);
    let mut t = task_with_link_locals(config());
    drive(&mut t, [hello("10.0.0.9")]).await;
    let running = tokio::spawn(t.run(Inputs {
        sessions,
        peer_link: watch::channel(None).1,
        ports: ports_rx,
        backup: None,
        queries,
        shutdown: shutdown_rx,
        shared_mac: watch::channel(None).0,
    }));
    let (tx, rx) = oneshot::channel();
    shutdown_tx.send(tx).await.unwrap();
    rx.await.expect("shutdown is answered");
    tokio::time::timeout(std::time::Duration::from_secs(5), running)
        .await
        .expect("the loop ends at shutdown")
        .unwrap();
}

/// This kernel has no bonding (KERNEL-FACTS.md: "Unknown device type"), so
/// the sysfs layout of a bond and a bond slave is mimicked in a temporary
/// directory: `<bond>/bonding/` for the bond itself, and `<slave>/master`
/// as a symlink to the bond's directory, as the kernel lays them out.
struct FakeSysfs {
    dir: tempfile::TempDir,
}

impl FakeSysfs {
    /// `bond0` (a bond), `eth1` (its slave), `eth2` (no bond).
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("bond0/bonding")).unwrap();
        std::fs::write(
            root.join("bond0/bonding/ad_actor_system"),
            "00:00:00:00:00:00\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("eth1")).unwrap();
        std::os::unix::fs::symlink("../bond0", root.join("eth1/master")).unwrap();
        std::fs::create_dir_all(root.join("eth2")).unwrap();
        Self { dir }
    }

    fn root(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn actor_system(&self) -> String {
        std::fs::read_to_string(self.root().join("bond0/bonding/ad_actor_system")).unwrap()
    }
}

#[test]
fn the_actor_system_is_the_ports_own_when_the_member_port_is_the_bond() {
    let sysfs = FakeSysfs::new();
    assert_eq!(
        port_ops::actor_system_path(sysfs.root(), "bond0"),
        Some(sysfs.root().join("bond0/bonding/ad_actor_system"))
    );
    let set = port_ops::write_actor_system(sysfs.root(), "bond0", mac(TWIN, 1)).unwrap();
    assert_eq!(
        set,
        ActorSystem::Set {
            previous: Some(MacAddr([0; 6]))
        }
    );
    assert_eq!(sysfs.actor_system(), "00:21:2f:b5:6e:11");
}

#[test]
fn the_actor_system_is_the_masters_when_the_member_port_is_a_bond_slave() {
    let sysfs = FakeSysfs::new();
    assert_eq!(
        port_ops::actor_system_path(sysfs.root(), "eth1"),
        Some(sysfs.root().join("eth1/master/bonding/ad_actor_system"))
    );
    port_ops::write_actor_system(sysfs.root(), "eth1", mac(TWIN, 2)).unwrap();
    assert_eq!(sysfs.actor_system(), "00:21:2f:b5:6e:12");
    // And back, as restoring does.
    let set = port_ops::write_actor_system(sysfs.root(), "eth1", MacAddr([0; 6])).unwrap();
    assert_eq!(
        set,
        ActorSystem::Set {
            previous: Some(mac(TWIN, 2))
        }
    );
    assert_eq!(sysfs.actor_system(), "00:00:00:00:00:00");
}

#[test]
fn a_port_without_a_bond_has_no_actor_system_to_set() {
    let sysfs = FakeSysfs::new();
    assert_eq!(port_ops::actor_system_path(sysfs.root(), "eth2"), None);
    assert_eq!(port_ops::actor_system_path(sysfs.root(), "missing"), None);
    assert_eq!(
        port_ops::write_actor_system(sysfs.root(), "eth2", mac(TWIN, 1)).unwrap(),
        ActorSystem::NoBond
    );
    assert_eq!(sysfs.actor_system(), "00:00:00:00:00:00\n", "untouched");
}

fn in_service_calls(t: &Task<Recorder>) -> Vec<Call> {
    t.ops
        .calls
        .iter()
        .filter(|c| matches!(c, Call::InService(..)))
        .cloned()
        .collect()
}

fn ports_set(up: bool) -> [Call; 2] {
    [
        Call::InService("m1".into(), up),
        Call::InService("m2".into(), up),
    ]
}

#[tokio::test]
async fn dual_active_ports_stay_down_until_the_link_is_back_and_the_pair_resynced() {
    let mut t = task(with_backup());
    drive(
        &mut t,
        [
            backup(Liveness::Up { boot_id: 7 }),
            hello("10.0.0.9"),
            Event::Session(SessionEvent::Lost),
            hello("10.0.0.9"),
        ],
    )
    .await;
    assert_eq!(
        in_service_calls(&t),
        ports_set(false),
        "not back before resync"
    );
    assert_eq!(report(&mut t).await.holds, [HoldReason::SplitBrain]);
    drive(&mut t, [Event::Session(SessionEvent::Synced)]).await;
    assert_eq!(
        in_service_calls(&t),
        [ports_set(false), ports_set(true)].concat()
    );
    let r = report(&mut t).await;
    assert!(r.holds.is_empty());
    assert!(r.converged);
    assert_eq!((r.ports_taken_down, r.ports_brought_up), (2, 2));
}

#[tokio::test]
async fn dual_active_with_on_split_brain_log_only_reports() {
    let mut t = task(MclagConfig {
        on_split_brain: SplitBrainAction::Log,
        ..with_backup()
    });
    drive(
        &mut t,
        [
            backup(Liveness::Up { boot_id: 7 }),
            hello("10.0.0.9"),
            Event::Session(SessionEvent::Lost),
        ],
    )
    .await;
    assert!(in_service_calls(&t).is_empty());
    let r = report(&mut t).await;
    assert!(r.split_brain);
    assert!(r.holds.is_empty());
}

#[tokio::test]
async fn a_takeover_after_dual_active_brings_the_ports_back_before_announcing() {
    let mut t = task(with_backup());
    drive(
        &mut t,
        [
            backup(Liveness::Up { boot_id: 7 }),
            hello("10.0.0.9"),
            Event::Session(SessionEvent::Lost),
            backup(Liveness::Down),
        ],
    )
    .await;
    let after_alignment = &t.ops.calls[alignment().len()..];
    assert_eq!(
        after_alignment,
        [
            ports_set(false).to_vec(),
            ports_set(true).to_vec(),
            vec![
                Call::Announce("m1".into(), mac(OWN, 1)),
                Call::Announce("m2".into(), mac(OWN, 2)),
            ],
        ]
        .concat()
    );
    assert_eq!(report(&mut t).await.role, Role::Master);
}

#[tokio::test]
async fn the_init_delay_holds_the_ports_until_the_peers_bulk_sync_is_applied() {
    let mut t = task(MclagConfig {
        init_delay_s: 180,
        ..config()
    });
    t.start_init_delay().await;
    assert_eq!(in_service_calls(&t), ports_set(false));
    let r = report(&mut t).await;
    assert_eq!(r.holds, [HoldReason::InitDelay]);
    assert!(r.init_delay_remaining_ms.is_some_and(|ms| ms > 170_000));
    assert!(r.to_string().contains("init delay ("));
    // A hello alone does not end it: the peer's table has not arrived.
    drive(&mut t, [hello("10.0.0.9")]).await;
    assert_eq!(in_service_calls(&t), ports_set(false));
    drive(&mut t, [Event::Session(SessionEvent::Synced)]).await;
    assert_eq!(
        in_service_calls(&t),
        [ports_set(false), ports_set(true)].concat()
    );
    let r = report(&mut t).await;
    assert!(r.holds.is_empty());
    assert_eq!(r.init_delay_remaining_ms, None);
}

#[tokio::test]
async fn a_lone_switch_comes_up_when_the_init_delay_is_over() {
    let mut t = task(MclagConfig {
        init_delay_s: 180,
        ..config()
    });
    t.start_init_delay().await;
    drive(&mut t, [Event::InitDelayOver]).await;
    assert_eq!(
        in_service_calls(&t),
        [ports_set(false), ports_set(true)].concat()
    );
    assert!(!report(&mut t).await.converged);
}

#[tokio::test]
async fn no_init_delay_when_it_is_zero() {
    let mut t = task(config());
    t.start_init_delay().await;
    assert!(in_service_calls(&t).is_empty());
    assert!(report(&mut t).await.holds.is_empty());
}

#[tokio::test]
async fn a_port_that_appears_during_a_hold_is_held_too_and_shutdown_brings_all_back() {
    let mut t = task(MclagConfig {
        init_delay_s: 180,
        ..config()
    });
    t.start_init_delay().await;
    let mut more = ports();
    more.push(MemberPort {
        name: "m3".into(),
        mlag_id: 3,
        ifindex: Some(13),
        mac: Some(mac(OWN, 3)),
        mtu: Some(1500),
    });
    drive(&mut t, [Event::Ports(more)]).await;
    assert_eq!(
        in_service_calls(&t),
        [
            ports_set(false).to_vec(),
            vec![Call::InService("m3".into(), false)]
        ]
        .concat()
    );
    let before = t.ops.calls.len();
    shutdown(&mut t).await;
    let mut up: Vec<Call> = t.ops.calls[before..].to_vec();
    up.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        up,
        [
            Call::InService("m1".into(), true),
            Call::InService("m2".into(), true),
            Call::InService("m3".into(), true),
        ]
    );
}

#[tokio::test]
async fn a_twin_with_another_mtu_is_reported_and_a_shut_port_slave_holds_it_down() {
    let mut t = task(MclagConfig {
        on_mismatch: MismatchAction::ShutPort,
        ..config()
    });
    drive(
        &mut t,
        [Event::Session(SessionEvent::Up {
            mclag_address: Some(ip("10.0.0.9")),
            ports: twins(),
            port_mtus: vec![(1, 9000), (2, 1500)],
            port_vlans: Default::default(),
            capabilities: capability::ALL,
        })],
    )
    .await;
    assert_eq!(in_service_calls(&t), [Call::InService("m1".into(), false)]);
    let r = report(&mut t).await;
    assert_eq!(r.mismatches.len(), 1);
    assert_eq!(r.mismatches[0].field, "mtu");
    assert_eq!(r.mismatches[0].port.as_deref(), Some("m1"));
    assert_eq!(r.mismatches_found, 1);
    assert!(r.ports[0].held_down && !r.ports[1].held_down);
    assert!(
        r.to_string()
            .contains("inconsistent mtu (mlag 1) on m1: here 1500, peer 9000")
    );
    // The operator fixes the MTU here: the port comes back.
    let mut fixed = ports();
    fixed[0].mtu = Some(9000);
    drive(&mut t, [Event::Ports(fixed)]).await;
    assert_eq!(
        in_service_calls(&t),
        [
            Call::InService("m1".into(), false),
            Call::InService("m1".into(), true)
        ]
    );
    let r = report(&mut t).await;
    assert!(r.mismatches.is_empty());
    assert_eq!(r.mismatches_found, 1);
}

#[tokio::test]
async fn mismatches_only_warn_by_default_and_on_the_master() {
    for (config, address) in [
        (config(), "10.0.0.9"),
        (
            MclagConfig {
                on_mismatch: MismatchAction::ShutPort,
                ..config()
            },
            "10.0.0.1",
        ),
    ] {
        let mut t = task(config);
        drive(
            &mut t,
            [Event::Session(SessionEvent::Up {
                mclag_address: Some(ip(address)),
                ports: vec![(1, mac(TWIN, 1)), (5, mac(TWIN, 5))],
                port_mtus: vec![],
                port_vlans: Default::default(),
                capabilities: capability::ALL,
            })],
        )
        .await;
        assert!(in_service_calls(&t).is_empty());
        let r = report(&mut t).await;
        let fields: Vec<(&str, Option<u32>)> = r
            .mismatches
            .iter()
            .map(|m| (m.field.as_str(), m.mlag_id))
            .collect();
        assert_eq!(fields, [("mlag-id", Some(2)), ("mlag-id", Some(5))]);
    }
}
