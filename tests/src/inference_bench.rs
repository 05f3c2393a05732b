//! Benchmark of the inference engine on a 1,000,000-object model (SPEC 5,
//! issue item 6), called by the benchmark binary (`mlag-bench`). It drives
//! the engine through the public API of `sync_agent::inference` only, and
//! needs no root.
//!
//! The fabric shape: 2,000 switches, each with
//!
//! - the switch (physical),
//! - a bridge (L2, maps-to the switch), its IP interface (L3, maps-to the
//!   bridge), a gateway (L3, belongs-to that IP interface) and a service
//!   (maps-to the gateway),
//! - 165 ports, each a physical port (belongs-to the switch), its LAN port
//!   (L2, maps-to the port; the first 16 LAN ports also belong-to the bridge)
//!   and its IP interface (L3, maps-to the LAN port),
//!
//! that is 5 + 165 x 3 = 500 objects per switch and 1,000,000 in all, with
//! 1,030,000 dependencies. A port fault changes 3 objects (port, LAN port,
//! IP interface); a switch fault changes all 500 objects of its switch.
//!
//! The redundant variant ([`build_redundant`], issue 16 item 6) pairs the
//! switches (s0 with s1, s2 with s3, ...) and makes every LAN port
//! `redundant` over its own port and its twin, the same port of the other
//! switch of the pair: 330,000 more dependencies, no more objects. One port
//! down makes both twins' LAN ports (and their IP interfaces) degraded;
//! both twins down makes them down.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use sync_agent::inference::{
    Dependency, Info, Layer, Model, ModelError, ObjectId, Redundancy, RuleTable, alarms::Alarms,
    config::AlarmConfig,
};

/// The goal of issue 6, item 6.
pub const GOAL: &str = "one change propagated in under 10 ms on the 1M model";

/// Issue 16 item 6: resident bytes per object of the redundant 1M model.
pub const MEMORY_GOAL: usize = 200;

const SWITCHES: usize = 2_000;
const PORTS: usize = 165;
const BRIDGE_MEMBERS: usize = 16;
const RANDOM_CHANGES: usize = 200_000;
const SAMPLES: usize = 1_000;

/// Resident memory of this process in KiB (0 if unknown).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// xorshift64*, enough for picking ports.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn port_id(switch: usize, port: usize) -> ObjectId {
    ObjectId(format!("port:s{switch}-p{port}"))
}

/// Builds the model described in the module documentation.
pub fn build(switches: usize, ports: usize) -> Result<Model, ModelError> {
    build_with(switches, ports, false)
}

/// The model with every LAN port of a pair of switches redundant over its
/// port and that port's twin (see the module documentation).
pub fn build_redundant(switches: usize, ports: usize) -> Result<Model, ModelError> {
    build_with(switches, ports, true)
}

fn lan_id(switch: usize, port: usize) -> ObjectId {
    ObjectId(format!("lan:s{switch}-p{port}"))
}

fn build_with(switches: usize, ports: usize, redundant: bool) -> Result<Model, ModelError> {
    let mut m = Model::new();
    m.reserve(switches * (5 + 3 * ports));
    for s in 0..switches {
        let switch = ObjectId(format!("switch:s{s}"));
        let bridge = ObjectId(format!("bridge:s{s}"));
        let bridge_ip = ObjectId(format!("ip:s{s}-br0"));
        let gateway = ObjectId(format!("gw:s{s}"));
        let service = ObjectId(format!("svc:s{s}"));
        m.add_object(switch.clone(), Layer::Physical, "switch")?;
        m.add_object(bridge.clone(), Layer::L2, "bridge")?;
        m.add_dependency(&bridge, &switch, Dependency::MapsTo)?;
        m.add_object(bridge_ip.clone(), Layer::L3, "ip-interface")?;
        m.add_dependency(&bridge_ip, &bridge, Dependency::MapsTo)?;
        m.add_object(gateway.clone(), Layer::L3, "gateway")?;
        m.add_dependency(&gateway, &bridge_ip, Dependency::BelongsTo)?;
        m.add_object(service.clone(), Layer::Service, "service")?;
        m.add_dependency(&service, &gateway, Dependency::MapsTo)?;
        for p in 0..ports {
            let port = port_id(s, p);
            let lan = lan_id(s, p);
            let ip = ObjectId(format!("ip:s{s}-p{p}"));
            m.add_object(port.clone(), Layer::Physical, "port")?;
            m.add_dependency(&port, &switch, Dependency::BelongsTo)?;
            m.add_object(lan.clone(), Layer::L2, "lan-port")?;
            if redundant && (s ^ 1) < switches {
                m.set_redundancy(&lan, Redundancy::Redundant, 1)?;
                m.add_group_dependency(&lan, &port, Dependency::MapsTo)?;
            } else {
                m.add_dependency(&lan, &port, Dependency::MapsTo)?;
            }
            if p < BRIDGE_MEMBERS {
                m.add_dependency(&lan, &bridge, Dependency::BelongsTo)?;
            }
            m.add_object(ip.clone(), Layer::L3, "ip-interface")?;
            m.add_dependency(&ip, &lan, Dependency::MapsTo)?;
        }
    }
    if redundant {
        // The twins exist only once both switches of a pair are built.
        for s in (0..switches).filter(|s| (s ^ 1) < switches) {
            for p in 0..ports {
                m.add_group_dependency(&lan_id(s, p), &port_id(s ^ 1, p), Dependency::MapsTo)?;
            }
        }
    }
    Ok(m)
}

/// Median, 99th percentile and maximum of `samples` (sorted in place).
fn spread(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| ms(samples[((samples.len() - 1) as f64 * q) as usize]);
    (at(0.5), at(0.99), at(1.0))
}

/// Runs the benchmark on the given shape and returns the report.
pub fn bench_report_with(switches: usize, ports: usize, random_changes: usize) -> String {
    let mut out = String::new();
    let rules = RuleTable::builtin();
    let info = |message: &str, object: ObjectId| Info {
        source: "netlink".into(),
        message: message.into(),
        object,
    };
    let mut now = 1u64;

    let rss_before = rss_kib();
    let started = Instant::now();
    let mut m = match build(switches, ports) {
        Ok(m) => m,
        Err(err) => return format!("inference benchmark: building the model failed: {err}\n"),
    };
    let build_time = started.elapsed();
    let rss_built = rss_kib();
    let _ = writeln!(out, "inference: dependency-based state inference (SPEC 5)");
    let _ = writeln!(
        out,
        "  model: {} objects ({switches} switches x (5 + {ports} ports x 3)), built in {:.0} ms",
        m.len(),
        ms(build_time)
    );
    let _ = writeln!(
        out,
        "  memory: {:.0} MiB resident after building ({:.0} MiB before, {:.0} bytes per object)",
        mib(rss_built),
        mib(rss_before),
        (rss_built.saturating_sub(rss_before) * 1024) as f64 / m.len().max(1) as f64
    );

    // One port fault and its clearing, cold.
    let target = port_id(switches / 2, ports / 2);
    let started = Instant::now();
    let down = m
        .apply(info("link-down", target.clone()), &rules, now)
        .map(|a| a.changes.len());
    let down_time = started.elapsed();
    now += 1;
    let started = Instant::now();
    let up = m
        .apply(info("link-up", target.clone()), &rules, now)
        .map(|a| a.changes.len());
    let up_time = started.elapsed();
    now += 1;
    let _ = writeln!(
        out,
        "  one port fault ({target}, link-down): {:.3} ms, {} objects changed; its clearing (link-up): {:.3} ms, {} objects changed",
        ms(down_time),
        down.unwrap_or(0),
        ms(up_time),
        up.unwrap_or(0)
    );

    // A spread over many ports (each sample one propagated change).
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut samples = Vec::with_capacity(2 * SAMPLES);
    for _ in 0..SAMPLES {
        let port = port_id(rng.below(switches), rng.below(ports));
        for message in ["link-down", "link-up"] {
            let i = info(message, port.clone());
            let started = Instant::now();
            let _ = m.apply(i, &rules, now);
            samples.push(started.elapsed());
            now += 1;
        }
    }
    let (median, p99, max) = spread(&mut samples);
    let _ = writeln!(
        out,
        "  port fault/clearing over {SAMPLES} random ports: median {median:.3} ms, p99 {p99:.3} ms, max {max:.3} ms"
    );

    // A whole switch (everything of its 500 objects).
    let switch = ObjectId(format!("switch:s{}", switches / 3));
    let health = |message: &str| Info {
        source: "agent".into(),
        message: message.into(),
        object: switch.clone(),
    };
    let started = Instant::now();
    let degraded = m
        .apply(health("unhealthy"), &rules, now)
        .map(|a| a.changes.len())
        .unwrap_or(0);
    let degraded_time = started.elapsed();
    now += 1;
    let started = Instant::now();
    let healthy = m
        .apply(health("healthy"), &rules, now)
        .map(|a| a.changes.len())
        .unwrap_or(0);
    let healthy_time = started.elapsed();
    now += 1;
    let _ = writeln!(
        out,
        "  one switch fault ({switch}): {:.3} ms, {degraded} objects changed; its clearing: {:.3} ms, {healthy} objects changed",
        ms(degraded_time),
        ms(healthy_time)
    );

    // Random state changes.
    let line = random_changes_line(
        &mut m,
        &rules,
        &mut rng,
        (switches, ports),
        random_changes,
        &mut now,
    );
    out.push_str(&line);
    let _ = writeln!(
        out,
        "  memory: {:.0} MiB resident at the end (with histories)",
        mib(rss_kib())
    );
    let worst = [down_time, up_time].into_iter().map(ms).fold(max, f64::max);
    let _ = writeln!(
        out,
        "  goal: {GOAL}: {} (slowest port change {worst:.3} ms)",
        if worst < 10.0 { "met" } else { "NOT met" }
    );
    out
}

/// The benchmark on the 1,000,000-object model (about 2 s in release, plus the build).
pub fn bench_report() -> String {
    bench_report_with(SWITCHES, PORTS, RANDOM_CHANGES)
}

/// The redundancy-group benchmark on the 1,000,000-object model.
pub fn redundancy_report() -> String {
    redundancy_report_with(SWITCHES, PORTS, RANDOM_CHANGES)
}

/// Gives freed heap memory back to the kernel, so that the resident size
/// measures the next model alone (the other model was dropped before); a
/// no-op for allocators other than glibc's.
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of glibc's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Applies `message` to `object` and times it: (ms, objects changed).
fn timed(
    m: &mut Model,
    rules: &RuleTable,
    message: &str,
    object: &ObjectId,
    now: u64,
) -> (f64, usize) {
    let started = Instant::now();
    let changed = m
        .apply(Info::new("netlink", message, object.clone()), rules, now)
        .map_or(0, |a| a.changes.len());
    (ms(started.elapsed()), changed)
}

/// Runs the redundancy-group benchmark on the given shape (see
/// [`build_redundant`]) and returns the report.
pub fn redundancy_report_with(switches: usize, ports: usize, random_changes: usize) -> String {
    let mut out = String::new();
    let rules = RuleTable::builtin();
    trim_heap();
    let rss_before = rss_kib();
    let heap_before = crate::heap_in_use();
    let started = Instant::now();
    let mut m = match build_redundant(switches, ports) {
        Ok(m) => m,
        Err(err) => return format!("redundancy benchmark: building the model failed: {err}\n"),
    };
    let build_time = started.elapsed();
    let rss_built = rss_kib();
    let heap_built = crate::heap_in_use();
    let _ = writeln!(
        out,
        "inference with redundancy groups: every LAN port of a switch pair redundant over its port and the twin's"
    );
    let _ = writeln!(
        out,
        "  model: {} objects, {} redundancy groups of 2, built in {:.0} ms",
        m.len(),
        switches / 2 * 2 * ports,
        ms(build_time)
    );
    let objects = m.len().max(1) as f64;
    let resident = (rss_built.saturating_sub(rss_before) * 1024) as f64 / objects;
    // Judged on the heap in use (counted by mlag-bench's allocator): the
    // resident size also counts what the allocator keeps cached from the
    // model built before (mimalloc keeps freed pages; malloc_trim is
    // glibc's only).
    let counted = heap_built > heap_before;
    let per_object = if counted {
        (heap_built - heap_before) as f64 / objects
    } else {
        resident
    };
    let _ = writeln!(
        out,
        "  memory: {per_object:.0} bytes per object ({}; goal <= {MEMORY_GOAL} bytes: {}); resident {:.0} MiB after building, {:.0} MiB before ({resident:.0} bytes per object)",
        if counted {
            "heap in use"
        } else {
            "resident, no heap count in this binary"
        },
        if per_object <= MEMORY_GOAL as f64 {
            "met"
        } else {
            "NOT met"
        },
        mib(rss_built),
        mib(rss_before),
    );
    let (a, b) = ((switches / 2) & !1, ports / 2);
    let (port, twin) = (port_id(a, b), port_id(a + 1, b));
    let lan = lan_id(a, b);
    let level = |m: &Model| m.fault_level(&lan).unwrap_or(99);
    let mut now = 1;
    let (down_ms, down_n) = timed(&mut m, &rules, "link-down", &port, now);
    let degraded = level(&m);
    now += 1;
    let (both_ms, both_n) = timed(&mut m, &rules, "link-down", &twin, now);
    let both = level(&m);
    now += 1;
    let (back_ms, back_n) = timed(&mut m, &rules, "link-up", &twin, now);
    let back = level(&m);
    now += 1;
    let (clear_ms, clear_n) = timed(&mut m, &rules, "link-up", &port, now);
    let cleared = level(&m);
    now += 1;
    let _ = writeln!(
        out,
        "  one twin down ({port}): {down_ms:.3} ms, {down_n} objects changed, {lan} level {degraded} (degraded)"
    );
    let _ = writeln!(
        out,
        "  both twins down (+{twin}): {both_ms:.3} ms, {both_n} changed, level {both} (down); one back: {back_ms:.3} ms, {back_n} changed, level {back}; cleared: {clear_ms:.3} ms, {clear_n} changed, level {cleared}"
    );
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let line = random_changes_line(
        &mut m,
        &rules,
        &mut rng,
        (switches, ports),
        random_changes,
        &mut now,
    );
    out.push_str(&line);
    let line = alarms_line(
        &mut m,
        &rules,
        &mut rng,
        (switches, ports),
        random_changes / 4,
        &mut now,
    );
    out.push_str(&line);
    out
}

/// `count` link-down/link-up infos on random ports with the alarm table
/// following every change (as the agent does), timed; the report line:
/// infos and alarms raised per second.
fn alarms_line(
    m: &mut Model,
    rules: &RuleTable,
    rng: &mut Rng,
    (switches, ports): (usize, usize),
    count: usize,
    now: &mut u64,
) -> String {
    let mut alarms = Alarms::new(AlarmConfig::default());
    let started = Instant::now();
    let mut notices = 0usize;
    for _ in 0..count {
        let port = port_id(rng.below(switches), rng.below(ports));
        let message = if rng.next() & 1 == 0 {
            "link-down"
        } else {
            "link-up"
        };
        if let Ok(applied) = m.apply(Info::new("netlink", message, port.clone()), rules, *now) {
            notices += alarms
                .update(
                    m,
                    applied.changes.iter().map(|c| &c.object).chain([&port]),
                    *now,
                )
                .len();
        }
        *now += 1;
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let stats = alarms.stats();
    format!(
        "  alarms under random changes: {count} infos in {:.0} ms = {:.0} infos/s; {} alarms raised = {:.0} alarms/s ({} cleared, {} suppressions, {} notices; {} raised and {} suppressed at the end)\n",
        elapsed * 1000.0,
        count as f64 / elapsed,
        stats.raised,
        stats.raised as f64 / elapsed,
        stats.cleared,
        stats.suppressed,
        notices,
        stats.active,
        stats.suppressed_now,
    )
}

/// `count` link-down/link-up infos on random ports of the model, timed;
/// the report line.
fn random_changes_line(
    m: &mut Model,
    rules: &RuleTable,
    rng: &mut Rng,
    (switches, ports): (usize, usize),
    count: usize,
    now: &mut u64,
) -> String {
    let recomputed = m.recomputations();
    let mut changes = 0usize;
    let started = Instant::now();
    for _ in 0..count {
        let port = port_id(rng.below(switches), rng.below(ports));
        let message = if rng.next() & 1 == 0 {
            "link-down"
        } else {
            "link-up"
        };
        if let Ok(applied) = m.apply(Info::new("netlink", message, port), rules, *now) {
            changes += applied.changes.len();
        }
        *now += 1;
    }
    let elapsed = started.elapsed();
    format!(
        "  random changes: {count} link-down/link-up on random ports in {:.0} ms = {:.0} infos/s ({changes} effective changes, {} recomputations)\n",
        ms(elapsed),
        count as f64 / elapsed.as_secs_f64().max(1e-9),
        m.recomputations() - recomputed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_model_has_the_documented_shape_and_propagates() {
        let mut m = build(3, 20).unwrap();
        assert_eq!(m.len(), 3 * (5 + 20 * 3));
        let rules = RuleTable::builtin();
        let applied = m
            .apply(Info::new("netlink", "link-down", "port:s1-p3"), &rules, 1)
            .unwrap();
        assert_eq!(applied.changes.len(), 3);
        let applied = m
            .apply(Info::new("agent", "unhealthy", "switch:s2"), &rules, 2)
            .unwrap();
        assert_eq!(applied.changes.len(), 5 + 20 * 3);
        assert_eq!(m.fault_level(&ObjectId::from("svc:s2")), Some(1));
    }

    #[test]
    fn a_small_benchmark_reports_every_figure() {
        let report = bench_report_with(4, 10, 1000);
        for needle in [
            "objects",
            "MiB",
            "one port fault",
            "random changes",
            "infos/s",
            "goal",
        ] {
            assert!(report.contains(needle), "{needle} in {report}");
        }
    }

    #[test]
    fn the_redundant_model_degrades_twins_and_downs_them_with_both_ports() {
        let mut m = build_redundant(3, 4).unwrap();
        assert_eq!(m.len(), 3 * (5 + 4 * 3), "no more objects");
        let rules = RuleTable::builtin();
        let applied = m
            .apply(Info::new("netlink", "link-down", "port:s0-p2"), &rules, 1)
            .unwrap();
        assert_eq!(applied.changes.len(), 5, "port, both LAN ports, both IPs");
        assert_eq!(m.fault_level(&lan_id(0, 2)), Some(1));
        assert_eq!(m.fault_level(&lan_id(1, 2)), Some(1));
        m.apply(Info::new("netlink", "link-down", "port:s1-p2"), &rules, 2)
            .unwrap();
        assert_eq!(m.fault_level(&ObjectId::from("ip:s1-p2")), Some(3));
        // The odd switch out (s2) has no twin: its LAN ports are `all`.
        let applied = m
            .apply(Info::new("netlink", "link-down", "port:s2-p0"), &rules, 3)
            .unwrap();
        assert_eq!(applied.changes.len(), 3);
        assert_eq!(m.fault_level(&lan_id(2, 0)), Some(3));
    }

    #[test]
    fn a_small_redundancy_benchmark_reports_every_figure() {
        let report = redundancy_report_with(4, 10, 1000);
        for needle in [
            "objects",
            "bytes per object",
            "level 1 (degraded)",
            "level 3 (down)",
            "cleared",
            "infos/s",
            "alarms/s",
        ] {
            assert!(report.contains(needle), "{needle} in {report}");
        }
        assert!(report.contains("cleared:") && report.ends_with("\n"));
    }

    #[test]
    #[ignore = "1,000,000 objects: run in release with --ignored --nocapture"]
    fn bench_report_on_the_1m_model() {
        println!("{}", bench_report());
    }
}
