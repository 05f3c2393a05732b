use super::*;
use crate::{
    bus::Info,
    inference::{Dependency, Layer, Redundancy, RuleTable, config::AlarmConfig},
};

fn id(s: &str) -> ObjectId {
    ObjectId::from(s)
}

/// switch:me <- port:a <- lan:a <- ip:a; port:b likewise; mlag:1 redundant
/// over port:a and twin:1, mlag:2 over port:b and twin:2; the twins belong
/// to switch:peer; svc:x needs both ip:a and ip:b.
fn model() -> Model {
    let mut m = Model::new();
    let add = |m: &mut Model, o: &str, layer, kind: &str| m.add_object(id(o), layer, kind).unwrap();
    add(&mut m, "switch:me", Layer::Physical, "switch");
    add(&mut m, "switch:peer", Layer::Physical, "switch");
    for p in ["a", "b"] {
        add(&mut m, &format!("port:{p}"), Layer::Physical, "port");
        add(&mut m, &format!("lan:{p}"), Layer::L2, "lan-port");
        add(&mut m, &format!("ip:{p}"), Layer::L3, "ip-interface");
        m.add_dependency(
            &id(&format!("port:{p}")),
            &id("switch:me"),
            Dependency::BelongsTo,
        )
        .unwrap();
        m.add_dependency(
            &id(&format!("lan:{p}")),
            &id(&format!("port:{p}")),
            Dependency::MapsTo,
        )
        .unwrap();
        m.add_dependency(
            &id(&format!("ip:{p}")),
            &id(&format!("lan:{p}")),
            Dependency::MapsTo,
        )
        .unwrap();
    }
    for (n, p) in [(1, "a"), (2, "b")] {
        let (mlag, twin) = (id(&format!("mlag:{n}")), id(&format!("twin:{n}")));
        m.add_object(mlag.clone(), Layer::L2, "mlag-interface")
            .unwrap();
        m.add_object(twin.clone(), Layer::Physical, "twin-port")
            .unwrap();
        m.add_dependency(&twin, &id("switch:peer"), Dependency::BelongsTo)
            .unwrap();
        m.set_redundancy(&mlag, Redundancy::Redundant, 1).unwrap();
        m.add_group_dependency(&mlag, &id(&format!("port:{p}")), Dependency::MapsTo)
            .unwrap();
        m.add_group_dependency(&mlag, &twin, Dependency::MapsTo)
            .unwrap();
    }
    add(&mut m, "svc:x", Layer::Service, "service");
    m.add_dependency(&id("svc:x"), &id("ip:a"), Dependency::MapsTo)
        .unwrap();
    m.add_dependency(&id("svc:x"), &id("ip:b"), Dependency::MapsTo)
        .unwrap();
    m
}

struct Fixture {
    model: Model,
    rules: RuleTable,
    alarms: Alarms,
    now: u64,
}

impl Fixture {
    fn new(config: AlarmConfig) -> Self {
        let mut f = Self {
            model: model(),
            rules: RuleTable::builtin(),
            alarms: Alarms::new(config),
            now: 1000,
        };
        // The peer is up and so are its ports.
        f.say("peer", "twin-up", "twin:1");
        f.say("peer", "twin-up", "twin:2");
        f
    }

    fn say(&mut self, source: &str, message: &str, object: &str) -> Vec<Notice> {
        self.now += 1;
        let applied = self
            .model
            .apply(Info::new(source, message, object), &self.rules, self.now)
            .unwrap();
        let changed: Vec<ObjectId> = applied
            .changes
            .iter()
            .map(|c| c.object.clone())
            .chain([id(object)])
            .collect();
        self.alarms.update(&self.model, &changed, self.now)
    }

    /// Raised alarms: object -> (root causes, suppressed objects).
    fn raised(&self) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
        self.alarms
            .report(&self.model)
            .0
            .into_iter()
            .map(|a| {
                (
                    a.object.0,
                    (
                        a.root_causes.into_iter().map(|r| r.0).collect(),
                        a.suppressed.into_iter().map(|s| s.object.0).collect(),
                    ),
                )
            })
            .collect()
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

#[test]
fn a_port_down_raises_one_alarm_with_its_dependents_suppressed_and_clearing_clears_them() {
    let mut f = Fixture::new(AlarmConfig::default());
    assert!(f.raised().is_empty());
    let notices = f.say("netlink", "link-down", "port:a");
    let raised = f.raised();
    assert_eq!(raised.len(), 1, "{raised:?}");
    let (roots, suppressed) = &raised["port:a"];
    assert_eq!(roots, &strs(&["port:a"]));
    // mlag:1 only degraded (twin:1 is up) but that too is explained by port:a.
    assert_eq!(
        suppressed,
        &strs(&["ip:a", "lan:a", "mlag:1", "svc:x"]),
        "{raised:?}"
    );
    let stats = f.alarms.stats();
    assert_eq!(
        (stats.raised, stats.active, stats.suppressed_now),
        (1, 1, 4)
    );
    // The webhook hears of the one alarm, not of the suppressed ones.
    let told: Vec<&ObjectId> = notices
        .iter()
        .map(|n| match n {
            Notice::Raised(v) => &v.object,
            Notice::Cleared(v) => panic!("cleared {v:?}"),
        })
        .collect();
    assert_eq!(told, [&id("port:a")]);

    let notices = f.say("netlink", "link-up", "port:a");
    assert!(f.raised().is_empty(), "{:?}", f.raised());
    let stats = f.alarms.stats();
    assert_eq!(
        (stats.cleared, stats.active, stats.suppressed_now),
        (1, 0, 0)
    );
    assert!(
        matches!(&notices[..], [Notice::Cleared(v)] if v.object == id("port:a") && v.cleared_ms > 0),
        "{notices:?}"
    );
    let (_, cleared) = f.alarms.report(&f.model);
    assert_eq!(cleared[0].object, id("port:a"));
}

#[test]
fn one_twin_down_degrades_the_mlag_interface_under_the_twin_both_down_take_it_down() {
    let mut f = Fixture::new(AlarmConfig::default());
    f.say("peer", "twin-down", "twin:1");
    assert_eq!(f.model.fault_level(&id("mlag:1")), Some(1));
    let raised = f.raised();
    assert_eq!(
        raised,
        BTreeMap::from([("twin:1".to_string(), (strs(&["twin:1"]), strs(&["mlag:1"])))])
    );
    f.say("netlink", "link-down", "port:a");
    assert_eq!(f.model.fault_level(&id("mlag:1")), Some(3));
    let raised = f.raised();
    assert_eq!(raised.len(), 2, "{raised:?}");
    assert!(raised["twin:1"].1.contains(&"mlag:1".to_string()));
    assert!(raised["port:a"].1.contains(&"mlag:1".to_string()));
    // The twin back: mlag:1 is degraded under port:a alone.
    f.say("peer", "twin-up", "twin:1");
    let raised = f.raised();
    assert_eq!(raised.keys().collect::<Vec<_>>(), ["port:a"]);
    assert!(raised["port:a"].1.contains(&"mlag:1".to_string()));
    f.say("netlink", "link-up", "port:a");
    assert!(f.raised().is_empty());
    assert_eq!(f.alarms.stats().suppressed_now, 0);
}

#[test]
fn the_peer_lost_is_one_alarm_with_its_twins_and_mlag_interfaces_under_it() {
    let mut f = Fixture::new(AlarmConfig::default());
    f.say("peer", "liveness-lost", "switch:peer");
    f.say("peer", "twin-unknown", "twin:1");
    let notices = f.say("peer", "twin-unknown", "twin:2");
    let raised = f.raised();
    assert_eq!(
        raised,
        BTreeMap::from([(
            "switch:peer".to_string(),
            (
                strs(&["switch:peer"]),
                strs(&["mlag:1", "mlag:2", "twin:1", "twin:2"])
            )
        )]),
        "{notices:?}"
    );
    // No alarm storm: only switch:peer was ever raised.
    assert_eq!(f.alarms.stats().raised, 1);
    f.say("peer", "liveness-ok", "switch:peer");
    f.say("peer", "twin-up", "twin:1");
    f.say("peer", "twin-up", "twin:2");
    assert!(f.raised().is_empty(), "{:?}", f.raised());
    assert_eq!(f.alarms.stats().suppressed_now, 0);
}

#[test]
fn lost_contact_raises_nothing_when_configured_off_and_the_level_filters_degraded() {
    let mut f = Fixture::new(AlarmConfig {
        level: 2,
        lost_contact: false,
        webhook: None,
    });
    f.say("peer", "liveness-lost", "switch:peer");
    f.say("peer", "twin-unknown", "twin:1");
    assert!(f.raised().is_empty(), "{:?}", f.raised());
    // twin:2 down: mlag:2 only degraded (1 < 2), twin:2 raised alone.
    f.say("peer", "twin-down", "twin:2");
    let raised = f.raised();
    assert_eq!(
        raised,
        BTreeMap::from([("twin:2".to_string(), (strs(&["twin:2"]), vec![]))])
    );
}

#[test]
fn an_object_with_its_own_fault_raises_its_alarm_naming_the_deeper_root_cause() {
    let mut f = Fixture::new(AlarmConfig::default());
    f.say("netlink", "link-down", "port:a");
    // ip:a has its own word on it, at the alarm level: not suppressed.
    f.say("agent", "unhealthy", "ip:a");
    let raised = f.raised();
    assert_eq!(raised["ip:a"].0, strs(&["port:a"]));
    assert!(!raised["port:a"].1.contains(&"ip:a".to_string()));
    // svc:x stays suppressed under the root cause port:a.
    assert!(raised["port:a"].1.contains(&"svc:x".to_string()));
}

#[test]
fn a_dependent_of_two_roots_moves_under_the_one_left_when_the_other_clears() {
    let mut f = Fixture::new(AlarmConfig::default());
    f.say("netlink", "link-down", "port:a");
    f.say("netlink", "link-down", "port:b");
    let raised = f.raised();
    assert_eq!(raised.keys().collect::<Vec<_>>(), ["port:a", "port:b"]);
    assert!(raised["port:a"].1.contains(&"svc:x".to_string()));
    assert!(raised["port:b"].1.contains(&"svc:x".to_string()));
    f.say("netlink", "link-up", "port:a");
    let raised = f.raised();
    assert_eq!(raised.keys().collect::<Vec<_>>(), ["port:b"]);
    assert!(raised["port:b"].1.contains(&"svc:x".to_string()));
    assert!(!raised["port:b"].1.contains(&"ip:a".to_string()));
    f.say("netlink", "link-up", "port:b");
    assert!(f.raised().is_empty());
    assert_eq!(f.alarms.stats().suppressed_now, 0);
    assert_eq!(f.alarms.stats().cleared, 2);
}

#[test]
fn root_causes_walk_down_to_the_deepest_faulty_object() {
    let mut f = Fixture::new(AlarmConfig::default());
    f.say("netlink", "link-down", "port:b");
    assert_eq!(root_causes(&f.model, &id("svc:x")), [id("port:b")]);
    assert_eq!(root_causes(&f.model, &id("ip:a")), [id("ip:a")]);
}
