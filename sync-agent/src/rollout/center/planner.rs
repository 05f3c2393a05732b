//! Rollout planning (SPEC 6.3), pure functions.
//!
//! [`plan`] cuts the (device, service) updates of one rollout into batches:
//!
//! 1. no device has two services in the same batch,
//! 2. a device's services keep their (dependency) order across batches, so
//!    the next one is only released once the batch holding the previous one
//!    has fully succeeded,
//! 3. a batch holds at most `batch_size` steps.
//!
//! It keeps a window of at most `batch_size` devices: every batch takes the
//! next service of each device in the window, a device leaves the window when
//! its last service is out and the next device in the input takes its place.
//! So batches are full while devices remain, and each device goes through
//! its services in consecutive batches (the time a device spends half
//! updated is as short as it can be). Linear in the number of steps.
//!
//! [`dependency_order`] sorts one device's services topologically by
//! `depends_on` and refuses cycles and unknown dependencies.

use std::collections::{BTreeSet, HashMap};

use crate::rollout::wire::ServiceRegistration;

/// Batches for `steps`: per device (names unique), its affected services in
/// dependency order. Returns batches of (device, service), in release order.
/// A `batch_size` of 0 is taken as 1. Names are whatever the caller holds
/// (owned, or borrowed so that a plan of 10,000 steps copies no string).
pub fn plan<D: Clone, S: Clone>(steps: &[(D, Vec<S>)], batch_size: usize) -> Vec<Vec<(D, S)>> {
    let batch_size = batch_size.max(1);
    let total: usize = steps.iter().map(|(_, services)| services.len()).sum();
    let mut batches = Vec::with_capacity(total.div_ceil(batch_size));
    let mut waiting = steps.iter().filter(|(_, services)| !services.is_empty());
    let mut window: Vec<(&D, &[S])> = Vec::with_capacity(batch_size);
    loop {
        while window.len() < batch_size {
            match waiting.next() {
                Some((device, services)) => window.push((device, services.as_slice())),
                None => break,
            }
        }
        if window.is_empty() {
            break;
        }
        let mut batch = Vec::with_capacity(window.len());
        for (device, rest) in window.iter_mut() {
            batch.push(((*device).clone(), rest[0].clone()));
            *rest = &rest[1..];
        }
        window.retain(|(_, rest)| !rest.is_empty());
        batches.push(batch);
    }
    batches
}

/// The order in which a device's services must be updated: every service
/// after those it depends on, otherwise in registration order. Returns
/// indices into `services`. Refuses duplicate names, unknown dependencies
/// and cycles with a message naming them.
pub fn dependency_order(services: &[ServiceRegistration]) -> Result<Vec<usize>, String> {
    let mut index = HashMap::with_capacity(services.len());
    for (i, service) in services.iter().enumerate() {
        if index.insert(service.name.as_str(), i).is_some() {
            return Err(format!("service {:?} is registered twice", service.name));
        }
    }
    // deps[i]: indices service i depends on; users[j]: services depending on j.
    let mut missing = vec![0usize; services.len()];
    let mut users = vec![Vec::new(); services.len()];
    for (i, service) in services.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for dep in &service.depends_on {
            let Some(&j) = index.get(dep.as_str()) else {
                return Err(format!(
                    "service {:?} depends on {dep:?}, which this device does not register",
                    service.name
                ));
            };
            if seen.insert(j) {
                missing[i] += 1;
                users[j].push(i);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..services.len()).filter(|&i| missing[i] == 0).collect();
    let mut order = Vec::with_capacity(services.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            missing[u] -= 1;
            if missing[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() < services.len() {
        return Err(describe_cycle(services, &index, &missing));
    }
    Ok(order)
}

/// Walks dependencies among the services left unsorted until one repeats,
/// and names that cycle: `dependency cycle: a -> b -> a`.
fn describe_cycle(
    services: &[ServiceRegistration],
    index: &HashMap<&str, usize>,
    missing: &[usize],
) -> String {
    let unsorted = |i: usize| missing[i] > 0;
    let Some(start) = (0..services.len()).find(|&i| unsorted(i)) else {
        return "dependency cycle among services".to_string();
    };
    let mut path = vec![start];
    let mut at = start;
    loop {
        // Every unsorted service has an unsorted dependency.
        let next = services[at]
            .depends_on
            .iter()
            .filter_map(|d| index.get(d.as_str()).copied())
            .find(|&j| unsorted(j));
        let Some(next) = next else {
            break;
        };
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let cycle: Vec<&str> = path[pos..]
                .iter()
                .chain(std::iter::once(&next))
                .map(|&i| services[i].name.as_str())
                .collect();
            return format!("dependency cycle: {}", cycle.join(" -> "));
        }
        path.push(next);
        at = next;
    }
    "dependency cycle among services".to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Instant;

    use super::*;

    fn svc(name: &str, deps: &[&str]) -> ServiceRegistration {
        ServiceRegistration {
            name: name.into(),
            config: "ns/g/c".parse().unwrap(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn input(devices: usize, per_device: impl Fn(usize) -> usize) -> Vec<(String, Vec<String>)> {
        (0..devices)
            .map(|d| {
                (
                    format!("dev{d}"),
                    (0..per_device(d)).map(|s| format!("svc{s}")).collect(),
                )
            })
            .collect()
    }

    /// Checks rules 1-3 and that every step is planned exactly once.
    fn check(
        steps: &[(String, Vec<String>)],
        batch_size: usize,
        batches: &[Vec<(String, String)>],
    ) {
        let mut position: HashMap<(&str, &str), usize> = HashMap::new();
        for (b, batch) in batches.iter().enumerate() {
            assert!(!batch.is_empty(), "batch {b} is empty");
            assert!(
                batch.len() <= batch_size.max(1),
                "batch {b} has {} steps",
                batch.len()
            );
            let mut devices = HashSet::new();
            for (device, service) in batch {
                assert!(devices.insert(device), "device {device} twice in batch {b}");
                assert!(
                    position.insert((device, service), b).is_none(),
                    "{device}/{service} planned twice"
                );
            }
        }
        let total: usize = steps.iter().map(|(_, s)| s.len()).sum();
        assert_eq!(position.len(), total);
        for (device, services) in steps {
            for pair in services.windows(2) {
                assert!(
                    position[&(device.as_str(), pair[0].as_str())]
                        < position[&(device.as_str(), pair[1].as_str())],
                    "{device}: {} not before {}",
                    pair[0],
                    pair[1]
                );
            }
        }
    }

    #[test]
    fn one_service_per_device_per_batch_and_order_kept() {
        let steps = input(7, |d| d % 4);
        for batch_size in [0, 1, 2, 3, 5, 10, 100] {
            let batches = plan(&steps, batch_size);
            check(&steps, batch_size, &batches);
        }
    }

    #[test]
    fn single_device_gets_one_batch_per_service() {
        let steps = input(1, |_| 4);
        let batches = plan(&steps, 10);
        assert_eq!(batches.len(), 4);
        assert_eq!(batches[0], vec![("dev0".to_string(), "svc0".to_string())]);
        assert_eq!(batches[3], vec![("dev0".to_string(), "svc3".to_string())]);
    }

    #[test]
    fn batch_size_bounds_and_fills_batches() {
        let steps = input(25, |_| 2);
        let batches = plan(&steps, 10);
        check(&steps, 10, &batches);
        // 50 steps: full batches of 10 while enough devices remain, then
        // the last 5 devices' two services.
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 10, 10, 5, 5]
        );
        // Each device's services go in consecutive batches.
        assert_eq!(batches[0][0], ("dev0".into(), "svc0".into()));
        assert_eq!(batches[1][0], ("dev0".into(), "svc1".into()));
        assert!(plan::<String, String>(&[], 10).is_empty());
        assert!(plan(&input(3, |_| 0), 10).is_empty());
    }

    #[test]
    fn uneven_devices_refill_the_window() {
        let steps = input(4, |d| [3, 1, 1, 1][d]);
        let batches = plan(&steps, 2);
        check(&steps, 2, &batches);
        assert_eq!(batches.len(), 3);
        assert_eq!(
            batches[1],
            vec![
                ("dev0".into(), "svc1".into()),
                ("dev2".into(), "svc0".into())
            ]
        );
    }

    #[test]
    fn dependency_order_is_topological_and_stable() {
        let services = vec![
            svc("app", &["db", "cache"]),
            svc("db", &[]),
            svc("proxy", &["app"]),
            svc("cache", &["db"]),
            svc("metrics", &[]),
        ];
        let order = dependency_order(&services).unwrap();
        let names: Vec<&str> = order.iter().map(|&i| services[i].name.as_str()).collect();
        assert_eq!(names, vec!["db", "cache", "app", "proxy", "metrics"]);
        assert_eq!(dependency_order(&[]).unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn cycles_and_bad_dependencies_are_refused() {
        let e =
            dependency_order(&[svc("a", &["b"]), svc("b", &["c"]), svc("c", &["a"])]).unwrap_err();
        assert_eq!(e, "dependency cycle: a -> b -> c -> a");
        let e = dependency_order(&[svc("x", &[]), svc("a", &["a"])]).unwrap_err();
        assert_eq!(e, "dependency cycle: a -> a");
        let e = dependency_order(&[svc("a", &["ghost"])]).unwrap_err();
        assert!(e.contains("\"ghost\""), "{e}");
        let e = dependency_order(&[svc("a", &[]), svc("a", &[])]).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        // A cycle behind an acyclic prefix.
        let e =
            dependency_order(&[svc("z", &["q"]), svc("q", &["p"]), svc("p", &["q"])]).unwrap_err();
        assert_eq!(e, "dependency cycle: q -> p -> q");
    }

    #[test]
    fn big_input_plans_fast() {
        let steps = input(100_000, |_| 10);
        let start = Instant::now();
        let batches = plan(&steps, 10);
        let took = start.elapsed();
        assert_eq!(batches.len(), 100_000);
        check(&steps, 10, &batches);
        // Debug build on a small machine: still far under the few-second budget.
        assert!(took.as_secs_f64() < 3.0, "planning took {took:?}");
        let batches = plan(&steps, 1000);
        assert_eq!(batches.len(), 1000);
    }
}
