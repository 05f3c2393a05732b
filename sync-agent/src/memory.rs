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

/// mimalloc's `mi_option_purge_delay` (`enum mi_option_e` in mimalloc.h,
/// the same index in v2 and v3; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc hand freed pages back to the OS at once instead of after
/// its default second (mimalloc v3's `options.c`). A fabric server's broker frees bursts of buffers (a
/// config round's 1,000 deliveries, a throughput burst) while new bursts
/// keep allocating; with the delay, freed pages of one burst were still
/// resident when the next grew the heap, and `xtask bench fabric` measured
/// the primary at 137 MiB resident after its rounds instead of 107 MiB.
/// Costs one `madvise` per freed page run.
pub fn return_freed_memory_at_once() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option
    // table; any value is valid for this option.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_is_the_option_set_to_zero() {
        // SAFETY: reading and writing mimalloc's option table.
        unsafe {
            // The default of mimalloc v3's options.c (1,000 ms) proves the
            // index names the purge delay; nothing else in the tests sets it.
            assert_eq!(
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
                1000
            );
            super::return_freed_memory_at_once();
            assert_eq!(
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
                0
            );
        }
    }

    #[test]
    fn huge_pages_are_off_once_asked() {
        super::no_transparent_huge_pages().unwrap();
        // SAFETY: PR_GET_THP_DISABLE takes integer arguments only.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
