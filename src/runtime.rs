//! The threads requests run on: how many there are, and the tokio runtimes on them.
//!
//! With one thread, tokio's single-threaded runtime. With several, by default
//! (`server.scheduler = "per-core"`) one single-threaded runtime per thread, each accepting on
//! a listening socket of its own (the server binds them with `SO_REUSEPORT`, so the kernel
//! spreads new connections over them). A connection is then accepted, served, forwarded and
//! timed on one thread: its upstream connections are driven there too, and the pool keeps
//! them on that thread's own idle stack (the private `place`), as the HTTP/2 client keeps one client per
//! thread. The work-stealing runtime instead moves tasks and wake-ups between its threads,
//! which costs 10 to 15 % more CPU a request on one core (docs/performance.md). It stays
//! available (`"work-stealing"`) for the case it serves better: a few HTTP/2 connections
//! carrying all the traffic, whose streams a per-core thread cannot hand to another.
//!
//! The main thread's runtime is the first of the per-core ones and also runs the gateway's
//! background work (key refreshes, session renewals, reloads) and the admin listener. The
//! others are `Worker`s (crate-private), started by the server for each further listening socket.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;

/// `server.scheduler`: how several threads share the proxy listener's connections. With one
/// thread both are the same single-threaded runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// A single-threaded runtime per thread, each accepting on a listening socket of its own
    /// (`SO_REUSEPORT`): a connection, its upstream connections and its timers stay on the
    /// thread that accepted it.
    PerCore,
    /// One multi-threaded runtime: idle threads take tasks from busy ones.
    WorkStealing,
}

/// How long a stopping worker waits for its blocking tasks (a DNS lookup, a file read) before
/// it leaves them behind: the process is ending.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

thread_local! {
    /// This thread's place among the per-core runtimes: 0 on the main thread and on any thread
    /// that is not a worker's.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The most per-core runtimes started in this process: the pool makes one idle stack each.
static SHARDS: AtomicUsize = AtomicUsize::new(1);

/// How many threads serve requests: `configured` (`server.threads`) when set, else
/// `TOKIO_WORKER_THREADS` when set, else one per CPU this process may use (its affinity mask
/// and cgroup quota count).
pub fn threads(configured: Option<u32>) -> Result<usize, String> {
    threads_from(
        configured,
        std::env::var("TOKIO_WORKER_THREADS").ok().as_deref(),
    )
}

fn threads_from(config: Option<u32>, env: Option<&str>) -> Result<usize, String> {
    if let Some(n) = config {
        return Ok(usize::try_from(n).unwrap_or(1).max(1));
    }
    match env {
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n @ 1..) => Ok(n),
            _ => Err(format!(
                "TOKIO_WORKER_THREADS must be a whole number of threads, at least 1 (got {v:?})"
            )),
        },
        None => Ok(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)),
    }
}

/// The main thread's runtime: single-threaded unless `scheduler` is work-stealing with more
/// than one thread (per-core's other threads are the `Worker`s the server starts).
pub fn build(threads: usize, scheduler: Scheduler) -> io::Result<Runtime> {
    let mut builder = if scheduler == Scheduler::WorkStealing && threads > 1 {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build()
}

/// This thread's place among the per-core runtimes (0 outside them).
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Which of `count` things kept one per per-core runtime (made [`shards`] long) this thread
/// uses. Within range whatever `count` is: a thing made before a later runtime started is
/// shared by wrapping round.
pub(crate) fn place(count: usize) -> usize {
    index() % count.max(1)
}

/// How many per-core runtimes this process has started at most (at least 1).
pub(crate) fn shards() -> usize {
    SHARDS.load(Ordering::Relaxed)
}

/// A thread running a single-threaded runtime of its own, until it is stopped or dropped.
/// Dropped, it is told to stop and left to end by itself.
pub(crate) struct Worker {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Starts the runtime of place `index` (1 and up) on a thread named `tollgate-w{index}`.
    pub(crate) fn start(index: usize) -> io::Result<Worker> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, handle) = std::sync::mpsc::sync_channel::<io::Result<Handle>>(1);
        // The runtime is built on its own thread and never leaves it: a runtime dropped on an
        // async thread (should the spawn fail after building it here) would panic.
        let thread = std::thread::Builder::new()
            .name(format!("tollgate-w{index}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                INDEX.with(|i| i.set(index));
                let _ = ready.send(Ok(rt.handle().clone()));
                // Runs the tasks spawned on `handle` until told to stop (or the sender is
                // dropped); the tasks left then are dropped with the runtime.
                let _ = rt.block_on(stopped);
                rt.shutdown_timeout(BLOCKING_GRACE);
            })?;
        // Waits only for the new thread to build its runtime.
        let handle = handle
            .recv()
            .map_err(|_| io::Error::other("a worker thread ended before it started"))??;
        SHARDS.fetch_max(index + 1, Ordering::Relaxed);
        Ok(Worker {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where to spawn this worker's tasks.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the runtime (its remaining tasks are dropped) and waits for its thread to end.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_count_comes_first_then_the_environment_then_the_cpus() {
        assert_eq!(threads_from(Some(3), Some("5")), Ok(3));
        assert_eq!(threads_from(None, Some(" 5 ")), Ok(5));
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(threads_from(None, None), Ok(cpus));
        for bad in ["0", "-1", "two", ""] {
            let e = threads_from(None, Some(bad)).unwrap_err();
            assert!(e.contains("TOKIO_WORKER_THREADS"), "{e}");
        }
    }

    #[test]
    fn one_thread_or_per_core_is_single_threaded_and_work_stealing_is_not() {
        use tokio::runtime::RuntimeFlavor::{CurrentThread, MultiThread};
        let flavor = |n, s| build(n, s).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(1, Scheduler::PerCore), CurrentThread);
        assert_eq!(flavor(4, Scheduler::PerCore), CurrentThread);
        assert_eq!(flavor(1, Scheduler::WorkStealing), CurrentThread);
        assert_eq!(flavor(2, Scheduler::WorkStealing), MultiThread);
    }

    #[tokio::test]
    async fn a_worker_runs_its_tasks_on_its_own_named_thread_and_stops() {
        let worker = Worker::start(3).unwrap();
        let (name, place) = worker
            .handle()
            .spawn(async { (std::thread::current().name().map(str::to_owned), index()) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("tollgate-w3"));
        assert_eq!(place, 3);
        assert_eq!(index(), 0, "the test's own thread is not a worker");
        assert!(shards() >= 4);
        // A task still pending when the worker stops is dropped, not left running.
        let pending = worker.handle().spawn(std::future::pending::<()>());
        worker.stop().await;
        assert!(pending.await.unwrap_err().is_cancelled());
    }
}
