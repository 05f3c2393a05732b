//! Group commit: the one thread that writes the center's database.
//!
//! A durable write costs one fsync (milliseconds on most disks), so one
//! transaction per change caps the center at a few hundred changes per
//! second whatever the CPU. Here every change is a job sent to one writer
//! thread; the thread takes every job waiting (up to [`MAX_BATCH`]), applies
//! them in order inside one redb write transaction, commits it (one fsync)
//! and only then runs each job's continuation, in submission order, which
//! acknowledges the change. So a change is still acknowledged only once it
//! is on disk, and concurrent changes share the fsync.
//!
//! Running the continuations on the writer thread, in order, also gives the
//! center one total order of changes: whatever a continuation does (the
//! engine planning a rollout) happens in the order the changes were
//! committed, before the next batch is written.
//!
//! Contract for a job's operation: it either succeeds, or fails before
//! writing anything (checks first, then writes), so a refused change leaves
//! nothing half-applied in the shared transaction. An
//! [`CenterError::Internal`] error (the database itself failed) aborts the
//! whole batch: every job in it fails with that error, none is committed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use redb::WriteTransaction;

use super::error::{CenterError, CenterResult};
use super::store::Store;

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 1024;

/// A change waiting for the writer.
pub trait Job: Send {
    /// Applies the change inside `txn`; returns what to run once the
    /// transaction is committed (or abandoned).
    fn apply(self: Box<Self>, store: &Store, txn: &WriteTransaction) -> Box<dyn Done>;
    /// The batch could not even start: report `err`.
    fn fail(self: Box<Self>, err: CenterError);
}

/// The second half of a job, run after the commit with its outcome.
pub trait Done: Send {
    /// Whether the job's operation failed with an internal error (which
    /// aborts the batch).
    fn internal_error(&self) -> Option<&CenterError>;
    /// `committed`: Ok once the batch is on disk, else why it is not.
    fn done(self: Box<Self>, committed: CenterResult<()>);
}

struct Op<T, F, A> {
    op: F,
    after: A,
    _t: std::marker::PhantomData<fn() -> T>,
}

struct Applied<T, A> {
    result: CenterResult<T>,
    after: A,
}

impl<T, F, A> Job for Op<T, F, A>
where
    T: Send + 'static,
    F: FnOnce(&Store, &WriteTransaction) -> CenterResult<T> + Send + 'static,
    A: FnOnce(CenterResult<T>) + Send + 'static,
{
    fn apply(self: Box<Self>, store: &Store, txn: &WriteTransaction) -> Box<dyn Done> {
        let result = (self.op)(store, txn);
        Box::new(Applied {
            result,
            after: self.after,
        })
    }

    fn fail(self: Box<Self>, err: CenterError) {
        (self.after)(Err(err))
    }
}

impl<T: Send + 'static, A: FnOnce(CenterResult<T>) + Send + 'static> Done for Applied<T, A> {
    fn internal_error(&self) -> Option<&CenterError> {
        match &self.result {
            Err(e @ CenterError::Internal(_)) => Some(e),
            _ => None,
        }
    }

    fn done(self: Box<Self>, committed: CenterResult<()>) {
        let result = match committed {
            Ok(()) => self.result,
            // A refused change stays refused for its own reason.
            Err(e) => self.result.and(Err(e)),
        };
        (self.after)(result)
    }
}

/// Builds a job from an operation and its continuation.
pub fn job<T, F, A>(op: F, after: A) -> Box<dyn Job>
where
    T: Send + 'static,
    F: FnOnce(&Store, &WriteTransaction) -> CenterResult<T> + Send + 'static,
    A: FnOnce(CenterResult<T>) + Send + 'static,
{
    Box::new(Op {
        op,
        after,
        _t: std::marker::PhantomData,
    })
}

/// What the writer has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed (one fsync each).
    pub commits: u64,
    /// Changes in them.
    pub changes: u64,
    /// Time spent applying changes (engine and store work inside the
    /// transactions), in nanoseconds: with `commit_ns`, where a slow write
    /// spends its time.
    pub apply_ns: u64,
    /// Time spent committing (writing pages and the fsync), in nanoseconds.
    pub commit_ns: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    changes: AtomicU64,
    apply_ns: AtomicU64,
    commit_ns: AtomicU64,
}

/// Runs the writer loop over `jobs` until every sender is gone. Blocks: run
/// it on a thread of its own.
pub fn run(store: &Store, jobs: mpsc::Receiver<Box<dyn Job>>) {
    run_counted(store, jobs, &Counters::default())
}

fn run_counted(store: &Store, jobs: mpsc::Receiver<Box<dyn Job>>, counters: &Counters) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let size = batch.len() as u64;
        if commit_batch(store, batch, counters) {
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters.changes.fetch_add(size, Ordering::Relaxed);
        }
    }
}

/// Applies and commits one batch; whether it was committed.
fn commit_batch(store: &Store, batch: Vec<Box<dyn Job>>, counters: &Counters) -> bool {
    let started = std::time::Instant::now();
    let txn = match store.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            for job in batch {
                job.fail(e.clone());
            }
            return false;
        }
    };
    let mut applied = Vec::with_capacity(batch.len());
    let mut broken = None;
    for job in batch {
        let done = job.apply(store, &txn);
        if broken.is_none() {
            broken = done.internal_error().cloned();
        }
        applied.push(done);
    }
    let applying = started.elapsed();
    counters
        .apply_ns
        .fetch_add(applying.as_nanos() as u64, Ordering::Relaxed);
    let committed = match broken {
        Some(e) => {
            let _ = txn.abort();
            Err(CenterError::Internal(format!(
                "config store: change abandoned with its batch: {e}"
            )))
        }
        None => txn
            .commit()
            .map_err(|e| CenterError::internal("config store: commit", e)),
    };
    counters.commit_ns.fetch_add(
        (started.elapsed() - applying).as_nanos() as u64,
        Ordering::Relaxed,
    );
    if let Err(e) = &committed {
        tracing::error!("config center: {e}");
    }
    let ok = committed.is_ok();
    for done in applied {
        done.done(committed.clone());
    }
    ok
}

/// The writer thread's handle: submitting jobs, and stopping the thread
/// (when dropped, after the jobs already sent).
pub struct Writer {
    counters: std::sync::Arc<Counters>,
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread over `store`.
    pub fn spawn(store: std::sync::Arc<Store>) -> CenterResult<Writer> {
        let (tx, rx) = mpsc::channel();
        let counters = std::sync::Arc::new(Counters::default());
        let counted = counters.clone();
        let thread = std::thread::Builder::new()
            .name("center-writer".into())
            .spawn(move || run_counted(&store, rx, &counted))
            .map_err(|e| CenterError::internal("starting the config store writer", e))?;
        Ok(Writer {
            counters,
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    /// Commits and changes so far.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            changes: self.counters.changes.load(Ordering::Relaxed),
            apply_ns: self.counters.apply_ns.load(Ordering::Relaxed),
            commit_ns: self.counters.commit_ns.load(Ordering::Relaxed),
        }
    }

    /// Queues `job` for the next batch.
    pub fn submit(&self, job: Box<dyn Job>) {
        if let Some(jobs) = &self.jobs
            && let Err(mpsc::SendError(job)) = jobs.send(job)
        {
            job.fail(CenterError::Internal(
                "the config store writer has stopped".into(),
            ));
        }
    }

    /// Applies `op` in the next batch and, once that batch is committed,
    /// runs `after` with the outcome (on the writer thread, in commit
    /// order); returns what `after` returned.
    pub async fn write<T, U, F, A>(&self, op: F, after: A) -> CenterResult<U>
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnOnce(&Store, &WriteTransaction) -> CenterResult<T> + Send + 'static,
        A: FnOnce(CenterResult<T>) -> CenterResult<U> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(job(op, move |result| {
            let _ = tx.send(after(result));
        }));
        rx.await
            .map_err(|_| CenterError::Internal("the config store writer dropped a change".into()))?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The thread ends once its channel is closed and drained; waiting
        // for it means the database is closed when the center is gone
        // (unless this drop runs on the writer thread itself).
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::rollout::center::store::{DEFAULT_MAX_CONFIG_BYTES, NewVersion};
    use crate::rollout::wire::{ConfigKey, Format};

    fn new(content: &str) -> NewVersion {
        NewVersion {
            format: Format::Json,
            content: content.into(),
            description: String::new(),
            author: "w".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_share_commits_and_refusals_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(&dir.path().join("w.redb"), DEFAULT_MAX_CONFIG_BYTES).unwrap());
        let writer = Arc::new(Writer::spawn(store.clone()).unwrap());
        let key: ConfigKey = "n/g/k".parse().unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            let (writer, key, order) = (writer.clone(), key.clone(), order.clone());
            tasks.spawn(async move {
                // Every third change is invalid JSON: refused, nothing written.
                let content = if i % 3 == 0 {
                    "{".to_string()
                } else {
                    format!("{{\"i\":{i}}}")
                };
                writer
                    .write(
                        move |store, txn| store.put_in(txn, &key, new(&content), i, "put"),
                        move |written| {
                            let written = written?;
                            order.lock().unwrap().push(written.record.version);
                            Ok(written.record.version)
                        },
                    )
                    .await
            });
        }
        let (mut ok, mut refused) = (0, 0);
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                Ok(_) => ok += 1,
                Err(CenterError::Invalid(_)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((ok, refused), (133, 67));
        // Continuations ran in commit order: versions 1, 2, 3, ...
        let order = order.lock().unwrap().clone();
        assert_eq!(order, (1..=133).collect::<Vec<u64>>());
        assert_eq!(store.history(&key).unwrap().len(), 133);
        let audit = store.audit(0, 1000).unwrap();
        assert_eq!(audit.len(), 133);
        assert!(audit.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        // Dropping the writer closes the database for a reopen.
        drop(writer);
        drop(store);
        let again = Store::open(&dir.path().join("w.redb"), DEFAULT_MAX_CONFIG_BYTES).unwrap();
        assert_eq!(again.get(&key, None).unwrap().version, 133);
    }
}
