//! Real-time scheduling for the agent's few latency-critical threads (the
//! keepalive threads, MC-LAG's takeover thread): a dead interval of tens of
//! milliseconds is shorter than a saturated CPU may leave a normal thread
//! waiting. Each such thread asks for itself and reports how it ended up.

/// How a thread ended up scheduled (`show peer`, `show mclag`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheduling {
    /// Real time, at this SCHED_FIFO priority.
    RealTime(u8),
    /// Normal scheduling, as configured.
    Normal,
    /// Normal scheduling although real time was asked for (why).
    Refused(String),
}

impl std::fmt::Display for Scheduling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RealTime(priority) => write!(f, "SCHED_FIFO {priority}"),
            Self::Normal => f.write_str("normal"),
            Self::Refused(why) => write!(f, "normal (real time refused: {why})"),
        }
    }
}

/// Puts the calling thread in SCHED_FIFO at `priority` (0: leaves it).
pub fn schedule_this_thread(priority: u8) -> Scheduling {
    if priority == 0 {
        return Scheduling::Normal;
    }
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        return Scheduling::RealTime(priority);
    }
    let err = std::io::Error::last_os_error();
    let why = if err.raw_os_error() == Some(libc::EPERM) {
        format!("{err}; it needs CAP_SYS_NICE or an RLIMIT_RTPRIO of {priority}")
    } else {
        err.to_string()
    };
    Scheduling::Refused(why)
}

/// Asks the fair scheduler (EEVDF; Linux 6.12 and later take a custom
/// slice) for a short time slice for the calling thread. Its weight, its
/// share of the CPU, is unchanged; what changes is when it runs once woken:
/// its deadline comes sooner than that of a thread running a default slice
/// (milliseconds), so it preempts such a thread at once instead of waiting
/// for the slice to end. For a thread whose work per wakeup is short and
/// whose latency matters, without the starvation risk of real time. Older
/// kernels accept the call and ignore the slice.
///
/// The thread's policy and nice value are kept as they are (an operator's
/// `Nice=` stays in force); only a thread under the fair scheduler's normal
/// policy is changed.
pub fn short_slice_this_thread(slice: std::time::Duration) -> std::io::Result<()> {
    // SAFETY: sched_attr is plain old data; all zeros is a valid value.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::sched_attr>() as u32;
    // SAFETY: pid 0 is the calling thread; the kernel writes at most
    // `size` bytes into `attr`.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut _, size, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.sched_policy != libc::SCHED_OTHER as u32 {
        return Err(std::io::Error::other(format!(
            "the thread runs under scheduling policy {}, not the fair scheduler's normal one",
            attr.sched_policy
        )));
    }
    attr.size = size;
    attr.sched_flags = 0;
    attr.sched_runtime = slice.as_nanos() as u64;
    // SAFETY: pid 0 is the calling thread; `attr` is a valid sched_attr
    // whose size field says how much of it the kernel may read.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const _, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_short_slice_keeps_the_threads_nice_value() {
        std::thread::spawn(|| {
            // Lowering one's own priority needs no privilege; `who` 0 is the
            // calling thread on Linux.
            // SAFETY: plain integer arguments.
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 7) }, 0);
            super::short_slice_this_thread(std::time::Duration::from_micros(100)).unwrap();
            // SAFETY: as above.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            assert_eq!(nice, 7, "the slice must not reset the nice value");
        })
        .join()
        .unwrap();
    }
}
