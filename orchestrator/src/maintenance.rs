//! Background upkeep of the store.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::store::Store;

/// Deletes expired completed dedupe records every `every`, until the task is
/// aborted. A failed purge is logged and tried again next time.
pub fn spawn_dedupe_cleanup(store: Arc<dyn Store>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match store.purge_expired(Utc::now()).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "expired dedupe records purged"),
                Err(error) => tracing::warn!(%error, "dedupe cleanup failed; will retry"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Claim, MemoryStore, MessageKey};

    #[tokio::test]
    async fn purges_expired_records_in_the_background() {
        let store = Arc::new(MemoryStore::new());
        let key = MessageKey::new("t", "m");
        let Claim::Acquired { lease, .. } = store.claim(&key, Duration::from_secs(30)).await.unwrap() else {
            panic!("fresh key")
        };
        store.complete(&lease, &[], Duration::ZERO, None).await.unwrap();
        assert_eq!(store.claim(&key, Duration::from_secs(30)).await.unwrap(), Claim::Done);
        let task = spawn_dedupe_cleanup(store.clone(), Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(60)).await;
        task.abort();
        // The record is gone: the id could be claimed afresh.
        assert_eq!(store.claim(&key, Duration::from_secs(30)).await.unwrap().acquired(), Some((1, 1)));
    }
}
