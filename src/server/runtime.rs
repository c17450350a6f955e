//! The async runtime that serves every listener (`server.worker_threads`).
//!
//! One worker gets tokio's current-thread scheduler; more get the
//! multi-thread (work-stealing) scheduler. With one worker the two do the
//! same work, but the multi-thread one still pays for being able to hand a
//! task to another thread: every wake-up goes through its shared run queue
//! and atomics, and its I/O driver is parked and unparked through a lock.
//! Portcullis wakes one task from another on every answer (the audit
//! writer; with Redis, the quota store's batch worker), so on one core the
//! current-thread scheduler answers more calls per CPU second (see
//! README.md, "Performance history").
//!
//! A current-thread runtime runs its tasks only while a thread is inside
//! its `block_on`: whatever needs them afterwards (the OTLP flush at exit)
//! runs inside another `block_on`, and a load generator that drives its
//! load from this thread gives its servers the multi-thread scheduler.

use std::num::NonZeroUsize;

/// How many worker threads a runtime asked for `requested` threads gets,
/// following tokio's own rule for 0: `TOKIO_WORKER_THREADS` when it is set,
/// else one per CPU this process may use
/// ([`std::thread::available_parallelism`]: its affinity mask and cgroup
/// CPU quota), else 1.
///
/// # Errors
/// `requested` is 0 and `TOKIO_WORKER_THREADS` is set but not a positive
/// number (tokio itself would panic on it).
pub fn worker_threads(requested: usize) -> Result<usize, String> {
    let env = std::env::var_os("TOKIO_WORKER_THREADS");
    resolve(
        requested,
        env.as_ref().map(|v| v.to_string_lossy()).as_deref(),
        || {
            std::thread::available_parallelism()
                .map(NonZeroUsize::get)
                .unwrap_or(1)
        },
    )
}

fn resolve(
    requested: usize,
    env: Option<&str>,
    cpus: impl FnOnce() -> usize,
) -> Result<usize, String> {
    if requested > 0 {
        return Ok(requested);
    }
    match env {
        None => Ok(cpus()),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "TOKIO_WORKER_THREADS={v:?} is not a positive number of runtime threads; \
                 unset it, or set server.worker_threads in the configuration"
            )),
        },
    }
}

/// Which tokio scheduler a runtime with `threads` workers uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// Every task on the thread that runs the runtime (one worker).
    CurrentThread,
    /// Work-stealing across this many worker threads (two or more).
    MultiThread(usize),
}

impl Scheduler {
    /// The scheduler for `requested` worker threads (0: see
    /// [`worker_threads`], whose errors it returns).
    pub fn for_threads(requested: usize) -> Result<Scheduler, String> {
        worker_threads(requested).map(Scheduler::of)
    }

    /// The scheduler for exactly `threads` (at least 1) worker threads.
    pub fn of(threads: usize) -> Scheduler {
        match threads {
            0 | 1 => Scheduler::CurrentThread,
            n => Scheduler::MultiThread(n),
        }
    }

    /// The name logged at start: `current_thread` or `multi_thread`
    /// (tokio's `RuntimeFlavor` names).
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::CurrentThread => "current_thread",
            Scheduler::MultiThread(_) => "multi_thread",
        }
    }

    /// Builds the runtime with I/O and timers enabled; `thread_name` names
    /// its threads (worker and blocking-pool threads).
    ///
    /// # Errors
    /// What tokio's `Builder::build` returns (the OS refused a thread or
    /// the I/O driver's epoll instance).
    pub fn build(self, thread_name: &str) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self {
            Scheduler::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Scheduler::MultiThread(n) => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        };
        builder.thread_name(thread_name).enable_all().build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_thread_gets_the_current_thread_scheduler() {
        assert_eq!(Scheduler::for_threads(1), Ok(Scheduler::CurrentThread));
        assert_eq!(Scheduler::for_threads(3), Ok(Scheduler::MultiThread(3)));
        assert_eq!(Scheduler::of(1).name(), "current_thread");
        assert_eq!(Scheduler::of(2).name(), "multi_thread");
    }

    #[test]
    fn zero_worker_threads_means_tokio_worker_threads_or_one_per_usable_cpu() {
        assert_eq!(resolve(0, None, || 2), Ok(2));
        assert_eq!(resolve(0, Some("3"), || 2), Ok(3));
        assert_eq!(resolve(5, Some("3"), || 2), Ok(5));
    }

    #[test]
    fn a_tokio_worker_threads_that_is_not_a_positive_number_is_refused_with_its_value() {
        for bad in ["0", "many", "-1"] {
            let err = resolve(0, Some(bad), || 2).unwrap_err();
            assert!(
                err.contains(&format!("TOKIO_WORKER_THREADS=\"{bad}\"")),
                "{err}"
            );
            assert!(err.contains("server.worker_threads"), "{err}");
        }
        // The configuration's own count wins; the variable is not read.
        assert_eq!(resolve(2, Some("many"), || 1), Ok(2));
    }

    #[test]
    fn a_current_thread_runtime_runs_spawned_tasks_and_timers() {
        let rt = Scheduler::CurrentThread.build("test").unwrap();
        let got = rt.block_on(async {
            let task = tokio::spawn(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                7
            });
            task.await.unwrap()
        });
        assert_eq!(got, 7);
    }
}
