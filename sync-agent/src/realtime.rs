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
pub fn short_slice_this_thread(slice: std::time::Duration) -> std::io::Result<()> {
    // SAFETY: sched_attr is plain old data; all zeros is SCHED_OTHER at
    // nice 0 with no flags.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
    attr.sched_policy = libc::SCHED_OTHER as u32;
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
