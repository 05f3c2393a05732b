//! Testbed for mlag-sync: network namespaces joined by veth pairs, real
//! frames written with packet sockets, and real agent processes queried over
//! their control sockets. Used by the integration tests, the lab
//! (`cargo xtask run`) and the benchmarks. Everything here needs root.
//!
//! Every object cleans up after itself on drop (namespaces, processes, temp
//! files), and names carry the process id and a counter so parallel runs do
//! not clash.

pub mod agent;
pub mod center_bench;
pub mod daemon;
pub mod etcd;
pub mod fabric;
pub mod fabric_bench;
pub mod frames;
pub mod inference_bench;
pub mod neighwatch;
pub mod netns;
pub mod pair;
pub mod throughput_bench;

use std::time::{Duration, Instant};

/// Polls `probe` until it returns `Some`, or fails after `timeout` naming
/// `what` and the last value seen.
pub fn wait_until<T, L: std::fmt::Debug>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, L>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A name unique to this process and call: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Heap bytes in use, kept by `mlag-bench`'s global allocator (0 in other
/// binaries): what a data structure costs whatever the allocator keeps
/// cached, unlike the resident size.
pub static HEAP_IN_USE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// [`HEAP_IN_USE`] now.
pub fn heap_in_use() -> i64 {
    HEAP_IN_USE.load(std::sync::atomic::Ordering::Relaxed)
}

/// The time of `clock` (a `CLOCK_*` id) in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
