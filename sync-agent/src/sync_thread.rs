//! The sync thread: one OS thread with a one-thread tokio runtime, on which
//! the latency-critical path of peer sync runs — the capture ring's reader
//! (dataplane), the peer-sync task and its session's reader and writer.
//!
//! Why a thread of its own: on the agent's main (multi-thread) runtime a
//! synced reply crossed four tasks on each switch (ring reader -> peer sync
//! -> session writer; session reader -> peer sync), and the work-stealing
//! scheduler wakes an idle worker whenever a worker's queue holds more than
//! the task it runs next. So each reply woke the agent's second worker
//! (a futex wake, often an IPI to an idle CPU) on each switch, and the
//! tasks it stole ran on the other CPU. Measured with `perf sched` under
//! `mlag-bench latency`: about two worker-to-worker wakeups per reply per
//! agent, 4-40 us each before the woken worker ran; a wakeup across CPUs on
//! this VM costs ~60 us at the median (an idle vCPU halts). On one thread
//! the hops are calls into the same scheduler's queue: the only wakeup left
//! on a switch is the one that starts the path (the ring's, or the socket's
//! on the receiving switch).
//!
//! Nothing shares state through the thread: the modules still own their
//! state and talk through channels, which work across runtimes; the rest
//! of the agent (queries, the dataplane task's copy of each batch, MC-LAG's
//! session events) reaches these tasks as before.

use std::{io, time::Duration};

use tokio::{runtime::Handle, sync::oneshot};

/// The thread's time slice ([`crate::realtime::short_slice_this_thread`]):
/// the fair scheduler's least. Its work per wakeup is a few microseconds
/// (a batch read and sent, a frame read and injected); on a busy CPU a
/// wakeup then preempts a thread running a default slice instead of
/// waiting up to milliseconds behind it.
pub const SLICE: Duration = Duration::from_micros(100);

/// The running sync thread. Tasks spawned on [`SyncThread::handle`] run
/// on it; dropping this stops the runtime (its tasks are dropped) and the
/// thread ends.
pub struct SyncThread {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl SyncThread {
    /// Starts the thread (named `name`) and its runtime.
    pub fn start(name: &str) -> io::Result<Self> {
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                match crate::realtime::short_slice_this_thread(SLICE) {
                    Ok(()) => tracing::info!(slice_us = SLICE.as_micros() as u64, "sync thread started with a short time slice"),
                    Err(err) => tracing::warn!(error = %err, "sync thread started; the kernel refused it a short time slice, so a busy CPU may keep it waiting for a default slice"),
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = handle_tx.send(Err(err));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                // Runs every task spawned on the handle until the owner
                // drops its end (a dropped sender also ends the wait).
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| io::Error::other("the sync thread ended before its runtime started"))??;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    /// Where to spawn the tasks that must run on the sync thread.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_spawned_on_the_handle_run_on_the_named_thread_and_stop_with_it() {
        let thread = SyncThread::start("sync-test").unwrap();
        let name = thread
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("sync-test"));

        // A task that never ends on its own is dropped when the thread stops.
        let (tx, rx) = oneshot::channel::<()>();
        thread.handle().spawn(async move {
            let _held = tx;
            std::future::pending::<()>().await;
        });
        drop(thread);
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), rx)
                .await
                .expect("the task was dropped with the runtime")
                .is_err(),
            "the sender went away without sending"
        );
    }
}
