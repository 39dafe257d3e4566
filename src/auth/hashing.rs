//! The bound on password hashing (SPEC §10): argon2 takes 19 MiB and tens of milliseconds per
//! verification, so however many passwords arrive, at most `auth.max_concurrent_hashes` are
//! hashed at once, at most `auth.max_queued_hashes` wait, and the rest are refused at once.
//!
//! The work runs on a fixed set of threads of its own rather than on tokio's blocking pool: the
//! pool grows to hundreds of threads, and each thread's allocator arena keeps the 19 MiB it last
//! used, so peak memory followed the number of threads that ever hashed, not the bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// Refused: every hashing thread is busy and the queue is full. Answered 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

#[derive(Default)]
struct Counts {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// The hashing threads and their queue. Dropping it ends the threads once their work is done.
pub struct Hashes {
    queue: mpsc::Sender<Job>,
    counts: Arc<Counts>,
}

impl Hashes {
    /// Starts `threads` hashing threads behind a queue of `queue` jobs.
    pub fn new(threads: usize, queue: usize) -> Result<Hashes, String> {
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let counts = Arc::new(Counts::default());
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let counts = counts.clone();
            std::thread::Builder::new()
                .name(format!("gatehouse-hash-{i}"))
                .spawn(move || work(&rx, &counts))
                .map_err(|e| format!("cannot start the password hashing threads: {e}"))?;
        }
        Ok(Hashes { queue: tx, counts })
    }

    /// Runs `job` on a hashing thread, or refuses it at once when the queue is full. A caller
    /// that stops waiting does not free a place: the job still runs and still counts.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        self.queue.try_send(job).map_err(|_| Busy)?;
        // The only way to lose the answer is a panic in the job: treated as no capacity.
        rx.await.map_err(|_| Busy)
    }

    /// The most jobs that ever ran at the same time (for tests and operators' checks).
    pub fn peak_in_flight(&self) -> usize {
        self.counts.peak.load(Ordering::SeqCst)
    }
}

fn work(rx: &Mutex<mpsc::Receiver<Job>>, counts: &Counts) {
    super::secret::keep_working_memory();
    loop {
        // One idle thread waits on the queue at a time; the others wait for the lock.
        let job = match rx.lock() {
            Ok(mut rx) => rx.blocking_recv(),
            Err(_) => None,
        };
        let Some(job) = job else {
            return;
        };
        let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counts.peak.fetch_max(now, Ordering::SeqCst);
        // A panicking job drops its answer's sender; the thread goes on with the next job.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        counts.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn no_more_than_the_bound_run_and_the_queue_overflow_is_refused() {
        let hashes = Arc::new(Hashes::new(2, 3).unwrap());
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let mut waiting = Vec::new();
        let start = |waiting: &mut Vec<_>| {
            let hashes = hashes.clone();
            let release_rx = release_rx.clone();
            waiting.push(tokio::spawn(async move {
                hashes
                    .run(move || {
                        let _ = release_rx.lock().unwrap().recv();
                    })
                    .await
            }));
        };
        // Two running, then three queued.
        for _ in 0..2 {
            start(&mut waiting);
        }
        while hashes.counts.in_flight.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..3 {
            start(&mut waiting);
        }
        while hashes.queue.capacity() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut refused = 0;
        for _ in 0..20 {
            if hashes.run(|| ()).await == Err(Busy) {
                refused += 1;
            }
        }
        assert_eq!(refused, 20);
        for _ in 0..5 {
            release_tx.send(()).unwrap();
        }
        for task in waiting {
            assert_eq!(task.await.unwrap(), Ok(()));
        }
        assert_eq!(hashes.peak_in_flight(), 2);
        assert_eq!(hashes.run(|| 7).await, Ok(7));
    }
}
