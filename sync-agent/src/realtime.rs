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
