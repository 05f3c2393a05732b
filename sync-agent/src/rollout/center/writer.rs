//! Group commit: the one thread that writes the center's database.
//!
//! A durable write costs one fsync (milliseconds on most disks), so one
//! transaction per change caps the center at a few hundred changes per
//! second whatever the CPU. Here every change is a job sent to one writer
//! thread; the thread takes every job waiting (up to [`MAX_BATCH`]), applies
//! them in order inside one write transaction of the store
//! ([`super::storage::StorageTxn`]), commits it (one fsync on redb) and only
//! then runs each job's continuation, in submission order, which
//! acknowledges the change. So a change is still acknowledged only once it
//! is durable, and concurrent changes share the commit. A batch is one
//! transaction whatever the store: on etcd it would be one guarded `Txn`.
//!
//! Running the continuations on the writer thread, in order, also gives the
//! center one total order of changes: whatever a continuation does (the
//! engine planning a rollout) happens in the order the changes were
//! committed, before the next batch is written.
//!
//! Reads of what the center has committed ([`Writer::read`]) go through the
//! same thread: a read runs after every change submitted before it is
//! committed and its continuation has run, and before the next batch is
//! applied, so it sees exactly the committed state, never a change that a
//! crash could still undo. A batch of reads alone opens no transaction.
//!
//! Contract for a job's operation: it either succeeds, or fails before
//! writing anything (checks first, then writes), so a refused change leaves
//! nothing half-applied in the shared transaction. An
//! [`CenterError::Internal`] error (the database itself failed) aborts the
//! whole batch: every job in it fails with that error, none is committed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use super::error::{CenterError, CenterResult};
use super::storage::StorageTxn;
use super::store::Store;

/// What the writer thread is sent.
enum Work {
    Change(Box<dyn Job>),
    /// Runs once everything sent before it is committed.
    Read(Box<dyn FnOnce() + Send>),
}

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 1024;

/// A change waiting for the writer.
pub trait Job: Send {
    /// Applies the change inside `txn`; returns what to run once the
    /// transaction is committed (or abandoned).
    fn apply(self: Box<Self>, store: &Store, txn: &mut dyn StorageTxn) -> Box<dyn Done>;
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
    F: FnOnce(&Store, &mut dyn StorageTxn) -> CenterResult<T> + Send + 'static,
    A: FnOnce(CenterResult<T>) + Send + 'static,
{
    fn apply(self: Box<Self>, store: &Store, txn: &mut dyn StorageTxn) -> Box<dyn Done> {
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
            Err(e) if e.is_store_failure() => Some(e),
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
    F: FnOnce(&Store, &mut dyn StorageTxn) -> CenterResult<T> + Send + 'static,
    A: FnOnce(CenterResult<T>) + Send + 'static,
{
    Box::new(Op {
        op,
        after,
        _t: std::marker::PhantomData,
    })
}

/// What a center sharing its store with other centers does around each
/// batch (see [`super::service`]): check that its in-memory rollout engine
/// is current before the jobs use it, stamp what it writes, and reload it
/// if a commit fails.
pub trait BatchHooks: Send + Sync {
    /// In the batch's transaction, before its first job. An error fails
    /// every job of the batch; nothing is written.
    fn begin(&self, txn: &mut dyn StorageTxn) -> CenterResult<()>;
    /// In the batch's transaction, after its last job, before the commit.
    fn before_commit(&self, txn: &mut dyn StorageTxn) -> CenterResult<()>;
    /// The commit's outcome, before any continuation runs.
    fn after(&self, committed: &CenterResult<()>);
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
fn run_counted(
    store: &Store,
    work: mpsc::Receiver<Work>,
    counters: &Counters,
    hooks: Option<&dyn BatchHooks>,
) {
    while let Ok(first) = work.recv() {
        let mut batch = Vec::new();
        let mut reads = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Work::Change(job) => batch.push(job),
                Work::Read(read) => reads.push(read),
            }
            if batch.len() < MAX_BATCH {
                next = work.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            commit_batch(store, batch, counters, hooks);
        }
        for read in reads {
            read();
        }
    }
}

/// Applies and commits one batch (counted before its continuations run, so
/// a change's caller sees its own commit in [`Writer::stats`]).
fn commit_batch(
    store: &Store,
    batch: Vec<Box<dyn Job>>,
    counters: &Counters,
    hooks: Option<&dyn BatchHooks>,
) {
    let size = batch.len() as u64;
    let started = std::time::Instant::now();
    let began = store.begin_write().and_then(|mut txn| {
        if let Some(hooks) = hooks {
            hooks.begin(&mut *txn)?;
        }
        Ok(txn)
    });
    let mut txn = match began {
        Ok(txn) => txn,
        Err(e) => {
            if let Some(hooks) = hooks {
                hooks.after(&Err(e.clone()));
            }
            for job in batch {
                job.fail(e.clone());
            }
            return;
        }
    };
    let mut applied = Vec::with_capacity(batch.len());
    let mut broken = None;
    for job in batch {
        let done = job.apply(store, &mut *txn);
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
        Some(CenterError::Unavailable(e)) => {
            txn.abort();
            Err(CenterError::Unavailable(format!(
                "config store: change abandoned with its batch: {e}"
            )))
        }
        Some(e) => {
            txn.abort();
            Err(CenterError::Internal(format!(
                "config store: change abandoned with its batch: {e}"
            )))
        }
        None => match hooks.map_or(Ok(()), |hooks| hooks.before_commit(&mut *txn)) {
            Ok(()) => txn.commit(),
            Err(e) => {
                txn.abort();
                Err(e)
            }
        },
    };
    if let Some(hooks) = hooks {
        hooks.after(&committed);
    }
    counters.commit_ns.fetch_add(
        (started.elapsed() - applying).as_nanos() as u64,
        Ordering::Relaxed,
    );
    if let Err(e) = &committed {
        tracing::error!("config center: {e}");
    }
    if committed.is_ok() {
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters.changes.fetch_add(size, Ordering::Relaxed);
    }
    for done in applied {
        done.done(committed.clone());
    }
}

/// The writer thread's handle: submitting jobs, and stopping the thread
/// (when dropped, after the jobs already sent).
pub struct Writer {
    counters: std::sync::Arc<Counters>,
    jobs: Option<mpsc::Sender<Work>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread over `store`.
    pub fn spawn(store: std::sync::Arc<Store>) -> CenterResult<Writer> {
        Writer::spawn_with(store, None)
    }

    /// Starts the writer thread over `store`, running `hooks` around each
    /// batch.
    pub fn spawn_with(
        store: std::sync::Arc<Store>,
        hooks: Option<std::sync::Arc<dyn BatchHooks>>,
    ) -> CenterResult<Writer> {
        let (tx, rx) = mpsc::channel();
        let counters = std::sync::Arc::new(Counters::default());
        let counted = counters.clone();
        let thread = std::thread::Builder::new()
            .name("center-writer".into())
            .spawn(move || run_counted(&store, rx, &counted, hooks.as_deref()))
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
            && let Err(mpsc::SendError(Work::Change(job))) = jobs.send(Work::Change(job))
        {
            job.fail(CenterError::Internal(
                "the config store writer has stopped".into(),
            ));
        }
    }

    /// Runs `read` on the writer thread once every change submitted before
    /// it is committed (or refused), before the next batch is applied:
    /// what it sees of state the changes' continuations keep (the rollout
    /// engine) is committed state only.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> CenterResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = || CenterError::Internal("the config store writer has stopped".into());
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(Work::Read(Box::new(move || {
            let _ = tx.send(read());
        })))
        .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Applies `op` in the next batch and, once that batch is committed,
    /// runs `after` with the outcome (on the writer thread, in commit
    /// order); returns what `after` returned.
    pub async fn write<T, U, F, A>(&self, op: F, after: A) -> CenterResult<U>
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnOnce(&Store, &mut dyn StorageTxn) -> CenterResult<T> + Send + 'static,
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
        // for it means the store is closed when the center is gone
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

    /// A read sent while a change is being applied sees the state after
    /// that change's commit and continuation, never the state between.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_sees_only_committed_changes() {
        use std::sync::atomic::AtomicU8;
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(&dir.path().join("r.redb"), DEFAULT_MAX_CONFIG_BYTES).unwrap());
        let writer = Arc::new(Writer::spawn(store).unwrap());
        // 0 = untouched, 1 = applied (in the open transaction), 2 = committed.
        let state = Arc::new(AtomicU8::new(0));
        let (applied, committed) = (state.clone(), state.clone());
        let key: ConfigKey = "n/g/r".parse().unwrap();
        let change = {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .write(
                        move |store, txn| {
                            let written = store.put_in(txn, &key, new("{}"), 1, "put");
                            applied.store(1, Ordering::SeqCst);
                            // A slow batch: the read below arrives meanwhile.
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            written
                        },
                        move |written| {
                            committed.store(2, Ordering::SeqCst);
                            written
                        },
                    )
                    .await
            })
        };
        while state.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let seen = state.clone();
        let read = writer.read(move || seen.load(Ordering::SeqCst)).await;
        assert_eq!(read.unwrap(), 2, "the read ran before the commit");
        change.await.unwrap().unwrap();
        // With nothing to commit, a read runs at once.
        assert_eq!(writer.read(|| 7).await.unwrap(), 7);
        assert_eq!(writer.stats().commits, 1, "reads commit nothing");
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
