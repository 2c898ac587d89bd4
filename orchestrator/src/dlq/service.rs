//! [`DlqService`]: list, show, group, discard and replay entries.

use std::sync::Arc;
use std::time::Duration;

use crate::event::Envelope;
use crate::publish::{Publish, PublishError};
use crate::store::{DeadLetter, DeadLetterQueue, DlqFilter, DlqStatus, FailureGroup, Page, StoreError};

/// Header on a replayed copy: the dead-letter entry it came from.
pub const REPLAY_OF_HEADER: &str = "x-replay-of";

/// An operation on the dead-letter queue failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// No entry has this id.
    #[error("dead letter {0} not found")]
    NotFound(i64),
    /// The entry's status does not allow it (replaying one already replayed, say).
    #[error("dead letter {id} is {from}; it cannot become {to}")]
    Refused {
        /// Entry id.
        id: i64,
        /// Its status.
        from: &'static str,
        /// The status asked for.
        to: &'static str,
    },
    /// Replaying needs a publisher (Kafka), and none was configured.
    #[error("replaying needs a Kafka connection (set KAFKA_BOOTSTRAP_SERVERS)")]
    NoPublisher,
    /// The entry has nowhere to go: no source topic and a payload that is not an envelope.
    #[error("dead letter {0} has no source topic to replay to")]
    NoDestination(i64),
    /// Kafka did not take the copy; the entry was left `failed`.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for DlqError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => DlqError::NotFound(id),
            StoreError::InvalidTransition { id, from, to } => DlqError::Refused { id, from, to },
            other => DlqError::Store(other),
        }
    }
}

/// How a bulk replay runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BulkReplay {
    /// Only say what would be replayed.
    pub dry_run: bool,
    /// At most this many entries.
    pub limit: u64,
    /// At most this many replays per second, so a fixed downstream is not flooded.
    pub per_second: u32,
}

impl Default for BulkReplay {
    fn default() -> Self {
        Self { dry_run: false, limit: 1000, per_second: 50 }
    }
}

/// What a bulk replay did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkReport {
    /// Entries that matched the filter (only `failed` ones are replayable).
    pub matched: Vec<i64>,
    /// Entries replayed.
    pub replayed: Vec<i64>,
    /// Entries that could not be replayed, with why.
    pub failed: Vec<(i64, String)>,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// The dead-letter queue's operations.
#[derive(Clone)]
pub struct DlqService {
    store: Arc<dyn DeadLetterQueue>,
    publisher: Option<Arc<dyn Publish>>,
}

impl DlqService {
    /// Operations on `store`; replaying needs [`with_publisher`](Self::with_publisher).
    pub fn new(store: Arc<dyn DeadLetterQueue>) -> Self {
        Self { store, publisher: None }
    }

    /// Replays by publishing with `publisher`.
    pub fn with_publisher(mut self, publisher: impl Publish + 'static) -> Self {
        self.publisher = Some(Arc::new(publisher));
        self
    }

    /// Entries matching `filter`, newest first.
    pub async fn list(&self, filter: &DlqFilter, page: Page) -> Result<Vec<DeadLetter>, DlqError> {
        Ok(self.store.list(filter, page).await?)
    }

    /// One entry.
    pub async fn get(&self, id: i64) -> Result<DeadLetter, DlqError> {
        self.store.get(id).await?.ok_or(DlqError::NotFound(id))
    }

    /// Entries matching `filter` grouped by failure fingerprint, largest first.
    pub async fn groups(&self, filter: &DlqFilter, limit: u64) -> Result<Vec<FailureGroup>, DlqError> {
        Ok(self.store.groups(filter, limit).await?)
    }

    /// Marks a failed entry `discarded`.
    pub async fn discard(&self, id: i64) -> Result<DeadLetter, DlqError> {
        Ok(self.store.mark(id, DlqStatus::Discarded).await?)
    }

    /// Discards every failed entry matching `filter` (up to `limit`); returns their ids.
    pub async fn discard_matching(&self, filter: &DlqFilter, limit: u64) -> Result<Vec<i64>, DlqError> {
        let filter = DlqFilter { status: Some(DlqStatus::Failed), ..filter.clone() };
        let mut discarded = Vec::new();
        for entry in self.store.list(&filter, Page { limit, offset: 0 }).await? {
            match self.store.mark(entry.id, DlqStatus::Discarded).await {
                Ok(_) => discarded.push(entry.id),
                // Replayed or discarded by someone else meanwhile.
                Err(StoreError::InvalidTransition { .. }) => {}
                Err(other) => return Err(other.into()),
            }
        }
        Ok(discarded)
    }

    /// Sends a failed entry's original payload back to its original topic
    /// with its attempt count reset, and marks it `replayed`. The mark comes
    /// first (it reopens the message's claim, so the copy is processed, not
    /// skipped as dead-lettered); if Kafka does not take the copy, the mark
    /// is taken back.
    pub async fn replay(&self, id: i64) -> Result<DeadLetter, DlqError> {
        let publisher = self.publisher.as_ref().ok_or(DlqError::NoPublisher)?;
        let entry = self.get(id).await?;
        let (topic, key, payload) = destination(&entry).ok_or(DlqError::NoDestination(id))?;
        let marked = self.store.mark(id, DlqStatus::Replayed).await?;
        let id_header = id.to_string();
        let mut headers = vec![(REPLAY_OF_HEADER, id_header.as_bytes())];
        // The replayed attempt continues the message's original trace.
        if let Some(traceparent) = &entry.trace_context {
            headers.push((crate::telemetry::TRACEPARENT, traceparent.as_bytes()));
        }
        let sent = publisher.send_record(&topic, key.as_deref(), &payload, &headers).await;
        if let Err(error) = sent {
            self.store.undo_replay(id).await?;
            return Err(error.into());
        }
        tracing::info!(dlq_id = id, %topic, replay_count = marked.replay_count, "dead letter replayed");
        self.get(id).await
    }

    /// Replays every failed entry matching `filter` (up to `options.limit`,
    /// oldest first, at most `options.per_second`); a dry run only lists them.
    pub async fn replay_matching(&self, filter: &DlqFilter, options: BulkReplay) -> Result<BulkReport, DlqError> {
        let filter = DlqFilter { status: Some(DlqStatus::Failed), ..filter.clone() };
        let mut matching = self.store.list(&filter, Page { limit: options.limit, offset: 0 }).await?;
        // Oldest first: the order they failed in.
        matching.reverse();
        let mut report = BulkReport {
            matched: matching.iter().map(|e| e.id).collect(),
            dry_run: options.dry_run,
            ..Default::default()
        };
        if options.dry_run {
            return Ok(report);
        }
        if !matching.is_empty() && self.publisher.is_none() {
            return Err(DlqError::NoPublisher);
        }
        let mut pace = tokio::time::interval(Duration::from_secs(1) / options.per_second.clamp(1, 10_000));
        for entry in matching {
            pace.tick().await;
            match self.replay(entry.id).await {
                Ok(_) => report.replayed.push(entry.id),
                Err(error) => report.failed.push((entry.id, error.to_string())),
            }
        }
        Ok(report)
    }
}

/// Where a replayed copy goes: the original topic (not its `.retry` twin),
/// the original key, the payload with `attempt_count` back to 1.
fn destination(entry: &DeadLetter) -> Option<(String, Option<String>, Vec<u8>)> {
    let envelope = Envelope::decode(&entry.payload).ok();
    let topic = match (&entry.source, &envelope) {
        (Some(source), _) => source.topic.trim_end_matches(".retry").to_owned(),
        (None, Some(envelope)) => envelope.event_type().topic().to_owned(),
        (None, None) => return None,
    };
    let key = entry
        .source
        .as_ref()
        .and_then(|s| s.key.clone())
        .or_else(|| envelope.as_ref().and_then(|e| e.data.phone().map(str::to_owned)));
    let payload = match envelope {
        Some(mut envelope) => {
            envelope.attempt_count = 1;
            envelope.encode()
        }
        // Bytes that never decoded go back as they are (after a fix upstream they may).
        None => entry.payload.clone(),
    };
    Some((topic, key, payload))
}
