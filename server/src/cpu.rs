//! The CPU pool: a fixed set of OS threads where every piece of CRDT work runs.
//!
//! Integrating an update, encoding a room's state or rebuilding a document can take from
//! microseconds to seconds, depending on what a client sent. On a tokio worker that time is
//! stolen from every other task on the worker: `/healthz`, other rooms, accepting connections,
//! even the shutdown signal. So room tasks hand that work to this pool and await the result;
//! the async side only moves bytes.
//!
//! Why not `spawn_blocking`: tokio's blocking pool also serves file reads (the static routes)
//! and grows to 512 threads, and the runtime waits for its jobs when it shuts down. This pool
//! has a fixed size (so a few poisoned rooms cannot starve the machine), a bounded queue (a room
//! awaiting a slot is backpressure, not memory), and plain threads that do not hold shutdown:
//! when the process exits, a job still running is abandoned.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Result, ServerError};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A handle to the pool; cheap to clone.
#[derive(Clone, Debug)]
pub struct CpuPool {
    jobs: mpsc::Sender<Job>,
}

/// What a job returned, and how long it ran on its thread.
#[derive(Debug)]
pub struct Ran<T> {
    /// The job's result.
    pub value: T,
    /// Wall time on the pool thread (the thread does nothing else meanwhile, so this is the
    /// job's CPU cost to within scheduling noise).
    pub took: Duration,
}

impl CpuPool {
    /// Starts `threads` workers (at least one) behind a queue of `queue` jobs.
    pub fn start(threads: usize, queue: usize) -> CpuPool {
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("concord-cpu-{n}"))
                .spawn(move || loop {
                    // One idle worker waits in `blocking_recv` holding the lock; the others
                    // wait for the lock. A job runs with the lock released.
                    let job = match rx.lock() {
                        Ok(mut rx) => rx.blocking_recv(),
                        Err(_) => None,
                    };
                    match job {
                        Some(job) => job(),
                        None => break,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a CPU pool thread");
            }
        }
        CpuPool { jobs: tx }
    }

    /// Runs `f` on a pool thread. A panic inside `f` comes back as
    /// [`ServerError::Internal`]; whatever `f` owned is dropped with it.
    pub async fn run<T, F>(&self, f: F) -> Result<Ran<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let start = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(f));
            let took = start.elapsed();
            let _ = tx.send(result.map(|value| Ran { value, took }));
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| ServerError::Internal("the CPU pool has stopped"))?;
        match rx.await {
            Ok(Ok(ran)) => Ok(ran),
            Ok(Err(_)) => Err(ServerError::Internal("a room job panicked")),
            Err(_) => Err(ServerError::Internal("a room job was dropped")),
        }
    }
}

/// The CPU time this thread has spent: what a member's frames cost is measured with it (see
/// [`concord_engine::host::HostConfig::cpu_clock`]). Zero where the thread clock is unavailable (no platform
/// Concord runs on): the budget then never bites, which is the safe way for it to fail.
pub fn thread_cpu_time() -> Duration {
    cpu_time::ThreadTime::try_now()
        .map(|t| t.as_duration())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member is charged for the CPU its frames used, not for time the thread was off the
    /// core: a loaded host must not cut off ordinary clients.
    #[test]
    fn the_cpu_clock_counts_work_not_waiting() {
        let waited = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        let waiting = thread_cpu_time() - waited;
        assert!(waiting < Duration::from_millis(10), "{waiting:?}");

        let worked = thread_cpu_time();
        let until = Instant::now() + Duration::from_millis(20);
        let mut spins = 0u64;
        while Instant::now() < until {
            spins = std::hint::black_box(spins + 1);
        }
        assert!(thread_cpu_time() > worked, "{spins} spins cost nothing");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_pool_does_not_stall_the_runtime() {
        let pool = CpuPool::start(1, 4);
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move || {
                    let _ = release_rx.recv();
                    7
                })
                .await
            }
        });
        // The single runtime thread is free while the pool thread is blocked.
        let ticked = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::task::yield_now().await;
            1
        })
        .await;
        assert_eq!(ticked.ok(), Some(1));
        release_tx.send(()).unwrap();
        assert_eq!(busy.await.unwrap().unwrap().value, 7);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_job_is_an_error_and_the_pool_survives() {
        let pool = CpuPool::start(1, 4);
        let err = pool.run(|| -> u8 { panic!("boom") }).await;
        assert!(matches!(err, Err(ServerError::Internal(_))));
        assert_eq!(pool.run(|| 5).await.unwrap().value, 5);
    }
}
