//! Coalesced calls: requests that arrive while earlier ones are being
//! served wait, and go together in the next batch. There is no timer: an
//! idle coalescer serves each call at once, a busy one serves many per
//! round trip, so batches grow exactly as fast as the backend falls behind.
//!
//! The store uses it for claims, saga-log rows and completions; executors
//! use it for their own rows (one multi-row `INSERT` per batch instead of
//! one per message).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use orchestrator::coalesce::Coalescer;
//!
//! // One writer task, at most 100 requests a batch; the batch function
//! // answers each request, in order.
//! let doubler = Coalescer::spawn(1, 100, |batch: Vec<u32>| async move {
//!     batch.into_iter().map(|n| n * 2).collect::<Vec<_>>()
//! });
//! assert_eq!(doubler.call(21).await.unwrap(), 42);
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

/// A coalesced call that got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoalesceError {
    /// The writer tasks are gone (their runtime shut down).
    #[error("the batch writer stopped")]
    Stopped,
    /// The batch function panicked; the writer goes on with the next batch.
    #[error("the batch failed: its writer panicked")]
    Panicked,
    /// The batch function returned fewer answers than requests.
    #[error("the batch returned {returned} answers for {requests} requests")]
    ShortBatch {
        /// Requests in the batch.
        requests: usize,
        /// Answers the batch function returned.
        returned: usize,
    },
}

/// A request waiting for its batch, and where its answer goes.
struct Job<Req, Out> {
    request: Req,
    reply: oneshot::Sender<Result<Out, CoalesceError>>,
}

/// Groups concurrent calls into batches served by a few writer tasks.
pub struct Coalescer<Req, Out> {
    queue: mpsc::UnboundedSender<Job<Req, Out>>,
}

impl<Req, Out> std::fmt::Debug for Coalescer<Req, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

impl<Req: Send + 'static, Out: Send + 'static> Coalescer<Req, Out> {
    /// Starts `writers` tasks (so one slow batch does not hold up the next),
    /// each taking up to `max_batch` waiting calls and handing them to
    /// `serve`, which returns one answer per request, in order. Must be
    /// called inside a tokio runtime; the tasks end when the coalescer is dropped.
    pub fn spawn<S, Fut>(writers: usize, max_batch: usize, serve: S) -> Self
    where
        S: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Out>> + Send + 'static,
    {
        // A writer serves one batch at a time: a caller that gives up while
        // its request waits is skipped, one that gives up during the batch
        // is served all the same (the statement is already under way).
        let (queue, waiting) = mpsc::unbounded_channel::<Job<Req, Out>>();
        let waiting = Arc::new(Mutex::new(waiting));
        let serve = Arc::new(serve);
        let max_batch = max_batch.max(1);
        for _ in 0..writers.max(1) {
            let (waiting, serve) = (waiting.clone(), serve.clone());
            tokio::spawn(async move {
                loop {
                    let jobs = {
                        let mut waiting = waiting.lock().await;
                        let Some(first) = waiting.recv().await else { return };
                        // Let the tasks that are ready now run first: a wave of
                        // messages woken by the last batch queues its next
                        // calls together instead of the first going alone.
                        tokio::task::yield_now().await;
                        let mut jobs = vec![first];
                        while jobs.len() < max_batch {
                            match waiting.try_recv() {
                                Ok(job) => jobs.push(job),
                                Err(_) => break,
                            }
                        }
                        jobs
                    };
                    // A caller that gave up (timed out, cancelled) is not served: its
                    // request must not take effect after it moved on (an executor's
                    // insert after its compensation, a claim nobody holds).
                    let (requests, replies): (Vec<Req>, Vec<_>) = jobs
                        .into_iter()
                        .filter(|job| !job.reply.is_closed())
                        .map(|job| (job.request, job.reply))
                        .unzip();
                    if requests.is_empty() {
                        continue;
                    }
                    // Its own task, so a panic fails this batch, not the writer.
                    let answers = match tokio::spawn(serve(requests)).await {
                        Ok(answers) => answers,
                        Err(_) => {
                            for reply in replies {
                                let _ = reply.send(Err(CoalesceError::Panicked));
                            }
                            continue;
                        }
                    };
                    let (requests, returned) = (replies.len(), answers.len());
                    let mut answers = answers.into_iter();
                    for reply in replies {
                        let answer = answers.next().ok_or(CoalesceError::ShortBatch { requests, returned });
                        // The caller may have gone (cancelled): its request was served all the same.
                        let _ = reply.send(answer);
                    }
                }
            });
        }
        Self { queue }
    }

    /// Queues `request` for the next batch and waits for its answer.
    pub async fn call(&self, request: Req) -> Result<Out, CoalesceError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Job { request, reply }).map_err(|_| CoalesceError::Stopped)?;
        answer.await.map_err(|_| CoalesceError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let coalescer = Arc::new(Coalescer::spawn(1, 64, move |requests: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                // Slow enough that the other calls queue behind the first batch.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                requests.into_iter().map(|r| if r == 7 { Err(r) } else { Ok(r * 2) }).collect::<Vec<_>>()
            }
        }));
        let calls: Vec<_> = (0..100u32)
            .map(|r| {
                let coalescer = coalescer.clone();
                tokio::spawn(async move { (r, coalescer.call(r).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (r, answer) = call.await.unwrap();
            match answer {
                Ok(doubled) => assert_eq!(doubled, r * 2),
                Err(seven) => assert_eq!((r, seven), (7, 7)),
            }
        }
        let served = batches.load(Ordering::SeqCst);
        assert!(served < 10, "100 concurrent calls took {served} batches");
    }

    #[tokio::test]
    async fn a_lone_call_is_a_batch_of_one() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let coalescer = Coalescer::spawn(2, 64, move |requests: Vec<u8>| {
            seen.lock().unwrap().push(requests.len());
            async move { requests }
        });
        assert_eq!(coalescer.call(5).await.unwrap(), 5);
        assert_eq!(coalescer.call(6).await.unwrap(), 6);
        assert_eq!(*sizes.lock().unwrap(), [1, 1]);
    }

    #[tokio::test]
    async fn a_caller_that_gave_up_while_waiting_is_not_served() {
        let served = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = served.clone();
        let coalescer = Arc::new(Coalescer::spawn(1, 64, move |requests: Vec<u32>| {
            seen.lock().unwrap().extend(requests.iter().copied());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                requests
            }
        }));
        // 1 occupies the writer; 2 waits behind it and times out; 3 waits and stays.
        let first = tokio::spawn({
            let coalescer = coalescer.clone();
            async move { coalescer.call(1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(5), coalescer.call(2)).await;
        assert!(gave_up.is_err(), "2 was still waiting for the first batch");
        assert_eq!(coalescer.call(3).await.unwrap(), 3);
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(*served.lock().unwrap(), [1, 3], "2 was never served");
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_callers_and_the_writer_goes_on() {
        let coalescer = Coalescer::spawn(1, 64, |requests: Vec<u8>| async move {
            assert!(!requests.contains(&13), "unlucky");
            requests
        });
        assert_eq!(coalescer.call(13).await, Err(CoalesceError::Panicked));
        assert_eq!(coalescer.call(7).await, Ok(7));
    }

    #[tokio::test]
    async fn a_short_answer_list_fails_the_requests_it_missed() {
        let coalescer = Coalescer::spawn(1, 64, |_requests: Vec<u8>| async move { Vec::<u8>::new() });
        assert_eq!(coalescer.call(1).await, Err(CoalesceError::ShortBatch { requests: 1, returned: 0 }));
    }
}
