//! Coalesced writes: calls that arrive while earlier ones are being written
//! wait, and go together in the next statement. There is no timer: an idle
//! store writes each call at once, a busy one writes many messages' rows per
//! round trip, so batches grow exactly as fast as the database falls behind.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::store::StoreError;

/// A request waiting for its batch, and where its result goes.
struct Job<Req, Resp> {
    request: Req,
    reply: oneshot::Sender<Result<Resp, StoreError>>,
}

/// Groups concurrent calls into batches written by a few writer tasks.
pub(super) struct Coalescer<Req, Resp> {
    queue: mpsc::UnboundedSender<Job<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Coalescer<Req, Resp> {
    /// Starts `writers` tasks (so one slow batch does not hold up the next),
    /// each taking up to `max_batch` waiting calls and handing them to
    /// `write`, which returns one result per request, in order. Must be
    /// called inside a tokio runtime; the tasks end when the coalescer is dropped.
    pub(super) fn spawn<W, Fut>(writers: usize, max_batch: usize, write: W) -> Self
    where
        W: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<Resp, StoreError>>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::unbounded_channel::<Job<Req, Resp>>();
        let waiting = Arc::new(Mutex::new(waiting));
        let write = Arc::new(write);
        for _ in 0..writers.max(1) {
            let (waiting, write) = (waiting.clone(), write.clone());
            tokio::spawn(async move {
                loop {
                    let jobs = {
                        let mut waiting = waiting.lock().await;
                        let Some(first) = waiting.recv().await else { return };
                        let mut jobs = vec![first];
                        while jobs.len() < max_batch {
                            match waiting.try_recv() {
                                Ok(job) => jobs.push(job),
                                Err(_) => break,
                            }
                        }
                        jobs
                    };
                    let (requests, replies): (Vec<Req>, Vec<_>) =
                        jobs.into_iter().map(|job| (job.request, job.reply)).unzip();
                    let expected = replies.len();
                    let mut results = write(requests).await.into_iter();
                    for reply in replies {
                        let result = results.next().unwrap_or_else(|| {
                            Err(StoreError::Database(sea_orm::DbErr::Custom(format!(
                                "batched write returned fewer results than the {expected} requests"
                            ))))
                        });
                        // The caller may have gone (cancelled): its row is written all the same.
                        let _ = reply.send(result);
                    }
                }
            });
        }
        Self { queue }
    }

    /// Queues `request` for the next batch and waits for its result.
    pub(super) async fn call(&self, request: Req) -> Result<Resp, StoreError> {
        let (reply, result) = oneshot::channel();
        let stopped = || StoreError::Database(sea_orm::DbErr::Custom("the batch writer stopped".to_owned()));
        self.queue.send(Job { request, reply }).map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

/// The same database failure for every request of a failed batch.
pub(super) fn fail_all<Resp>(error: &StoreError, n: usize) -> Vec<Result<Resp, StoreError>> {
    let message = match error {
        StoreError::Database(inner) => inner.to_string(),
        other => other.to_string(),
    };
    (0..n).map(|_| Err(StoreError::Database(sea_orm::DbErr::Custom(message.clone())))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_each_gets_its_own_result() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let coalescer = Arc::new(Coalescer::spawn(1, 64, move |requests: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                // Slow enough that the other calls queue behind the first batch.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                requests.into_iter().map(|r| if r == 7 { Err(StoreError::NotFound(7)) } else { Ok(r * 2) }).collect()
            }
        }));
        let calls: Vec<_> = (0..100u32)
            .map(|r| {
                let coalescer = coalescer.clone();
                tokio::spawn(async move { (r, coalescer.call(r).await) })
            })
            .collect();
        for call in calls {
            let (r, result) = call.await.unwrap();
            match result {
                Ok(doubled) => assert_eq!(doubled, r * 2),
                Err(StoreError::NotFound(7)) => assert_eq!(r, 7),
                Err(other) => panic!("unexpected {other}"),
            }
        }
        let written = batches.load(Ordering::SeqCst);
        assert!(written < 10, "100 concurrent calls took {written} batches");
    }

    #[tokio::test]
    async fn a_lone_call_is_a_batch_of_one() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let coalescer = Coalescer::spawn(2, 64, move |requests: Vec<u8>| {
            seen.lock().unwrap().push(requests.len());
            async move { requests.into_iter().map(Ok).collect() }
        });
        assert_eq!(coalescer.call(5).await.unwrap(), 5);
        assert_eq!(coalescer.call(6).await.unwrap(), 6);
        assert_eq!(*sizes.lock().unwrap(), [1, 1]);
    }

    #[tokio::test]
    async fn a_short_result_list_fails_the_requests_it_missed() {
        let coalescer =
            Coalescer::spawn(1, 64, |_requests: Vec<u8>| async move { Vec::<Result<u8, StoreError>>::new() });
        assert!(matches!(coalescer.call(1).await, Err(StoreError::Database(_))));
    }
}
