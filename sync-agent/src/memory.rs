//! Process-wide memory settings of the agent binary, and of the benchmark
//! binary that hosts its parts (so that the figures there are the agent's).

/// Turns transparent huge pages off for this process and the processes it
/// starts. mimalloc advises them (`MADV_HUGEPAGE`) on its arenas, so the
/// first touch of fresh heap zeroes a whole 2 MB page inside whatever
/// request touched it. Seen with perf under `xtask bench center` on a
/// 2-core VM: a put releasing a version to 10,000 devices spent most of its
/// time in `clear_page_erms` under `do_huge_pmd_anonymous_page`, and its
/// first long-poll answer came some 110 ms later than with 4 KB pages
/// (which fault in only what is touched). Latency-bound servers (Redis,
/// MongoDB) turn them off for the same reason; the cost is a few more TLB
/// misses.
pub fn no_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and changes only
    // this process's memory flags.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn huge_pages_are_off_once_asked() {
        super::no_transparent_huge_pages().unwrap();
        // SAFETY: PR_GET_THP_DISABLE takes integer arguments only.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
