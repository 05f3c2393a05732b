//! The MC-LAG handlers driven by event sequences against a recording
//! [`PortOps`]: what the task decides, and what it does to the ports,
//! without root or a kernel.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use tokio::sync::oneshot;

use super::{
    config::{BackupPath, LinkLocalMode, MclagConfig},
    election::Role,
    eui64,
    events::Event,
    port_ops::{ActorSystem, PortError, PortOps},
    report::MclagReport,
    task::Task,
};
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
    Readdress(String, Ipv6Addr),
    Announce(String, MacAddr),
}

/// Records every side effect; keeps one link-local address per port so the
/// report shows what a readdress did. Every announcement is two frames.
#[derive(Default)]
struct Recorder {
    calls: Vec<Call>,
    link_locals: BTreeMap<u32, Vec<IpAddr>>,
}

impl PortOps for Recorder {
    async fn set_mac(&mut self, _: u32, name: &str, mac: MacAddr) -> Result<(), PortError> {
        self.calls.push(Call::SetMac(name.into(), mac));
        Ok(())
    }

    fn set_actor_system(&mut self, name: &str, mac: MacAddr) -> Result<ActorSystem, PortError> {
        self.calls.push(Call::ActorSystem(name.into(), mac));
        Ok(ActorSystem::Set)
    }

    async fn bounce(&mut self, _: u32, name: &str) -> Result<(), PortError> {
        self.calls.push(Call::Bounce(name.into()));
        Ok(())
    }

    async fn readdress_link_local(
        &mut self,
        ifindex: u32,
        name: &str,
        wanted: Ipv6Addr,
    ) -> Result<(), PortError> {
        self.calls.push(Call::Readdress(name.into(), wanted));
        self.link_locals.insert(ifindex, vec![IpAddr::V6(wanted)]);
        Ok(())
    }

    async fn announce(&mut self, _: u32, name: &str, mac: MacAddr) -> Result<u64, PortError> {
        self.calls.push(Call::Announce(name.into(), mac));
        Ok(2)
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
        })
        .collect()
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

fn hello(peer: &str) -> Event {
    Event::Session(SessionEvent::Up {
        mclag_address: Some(ip(peer)),
        ports: twins(),
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

/// What a slave does to each port: twin MAC, bond actor system, EUI-64
/// link-local of the twin MAC.
fn alignment() -> Vec<Call> {
    (1..=2u8)
        .flat_map(|i| {
            let name = format!("m{i}");
            let twin = mac(TWIN, i);
            [
                Call::SetMac(name.clone(), twin),
                Call::ActorSystem(name.clone(), twin),
                Call::Readdress(name, eui64::link_local(twin)),
            ]
        })
        .collect()
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
    assert_eq!(t.ops.calls, alignment());
    let r = report(&mut t).await;
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
