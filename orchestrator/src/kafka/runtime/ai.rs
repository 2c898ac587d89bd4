//! The runtime's side of the external AI route (see [`crate::kafka::ai_route`]):
//! asking for a classification, finishing a message with its result, and
//! the sweeper for overdue results and stranded phones.

use std::sync::Arc;

use chrono::Utc;
use rdkafka::message::{Message, OwnedMessage};

use super::act::{ActError, is_final};
use super::records::{Decoded, Delivered};
use super::{RuntimeStats, Worker, until_ok};
use crate::event::{AiProcessRequest, Envelope, EventData, topics};
use crate::intent::Intent;
use crate::kafka::ai_route::AiRoute;
use crate::pipeline::{Incoming, PROCESSED_BY};
use crate::store::PendingClassification;

impl Worker {
    /// Stores the message as pending, blocks its phone behind it and asks
    /// the AI service. Safe to repeat: a redelivery reuses the pending row
    /// and asks again with the same `processing_id`.
    pub(super) async fn request_classification(
        &self,
        ai: &AiRoute,
        delivered: &Delivered,
        incoming: &Incoming,
    ) -> Result<(), ActError> {
        let phone = incoming.inbound.phone();
        let pending = PendingClassification {
            processing_id: uuid::Uuid::new_v4().to_string(),
            key: delivered.key.clone().unwrap_or_else(|| phone.to_owned()),
            message_id: incoming.inbound.message_id(&incoming.event_id.to_string()).to_owned(),
            topic: delivered.base_topic().to_owned(),
            partition: delivered.partition,
            offset: delivered.offset,
            // Decoded, so it is UTF-8.
            payload: String::from_utf8_lossy(&delivered.payload).into_owned(),
            requested_at: Utc::now(),
        };
        let (pending, _) = ai.pending.register(&pending).await?;
        self.parking.block(&pending.key, &pending.message_id).await?;
        let request = AiProcessRequest {
            processing_id: pending.processing_id.clone(),
            message_id: pending.message_id.clone(),
            from_phone: phone.to_owned(),
            text: incoming.inbound.text().map(str::to_owned),
            lead_id: None,
            business_id: None,
            tenant_id: incoming.inbound.tenant_hint().map(str::to_owned),
            requested_at: pending.requested_at,
        };
        self.publisher.publish(&Envelope::new(EventData::AiProcessRequest(request), PROCESSED_BY)).await?;
        RuntimeStats::bump(&self.stats.ai_requests);
        tracing::debug!(processing_id = %pending.processing_id, "classification requested from the AI service");
        Ok(())
    }

    /// Finishes the pending message an `AiProcessResult` answers.
    pub(super) async fn on_ai_result(&self, message: &OwnedMessage) {
        let Some(ai) = &self.ai else { return };
        let payload = message.payload().unwrap_or_default();
        let result = match Envelope::decode(payload) {
            Ok(Envelope { data: EventData::AiProcessResult(result), .. }) => result,
            other => {
                // Recorded for operators; the message it meant to answer falls back after the timeout.
                let reason = match other {
                    Err(error) => error.to_string(),
                    Ok(envelope) => format!("{} event on {}", envelope.event_type(), topics::AI_RESULT),
                };
                tracing::warn!(%reason, "unusable AI result dead-lettered");
                let source = crate::kafka::received::source_of(message);
                let failure = crate::event::FailureType::SerializationError;
                until_ok("dead-lettering an unusable AI result", || {
                    self.orchestrator.reject(payload, Some(source.clone()), failure, reason.clone())
                })
                .await;
                return;
            }
        };
        let processing_id = result.processing_id.clone();
        let Some(pending) =
            until_ok("taking the pending message", || ai.pending.take(&processing_id, ai.settings.hold)).await
        else {
            tracing::info!(%processing_id, "AI result for a message already finished (late or repeated): ignored");
            return;
        };
        self.finish_pending(ai, pending, Intent::from(result)).await;
    }

    /// Finishes a pending message with `intent`, forgets it, and releases
    /// its phone's parked messages once it is done with.
    pub(super) async fn finish_pending(&self, ai: &AiRoute, pending: PendingClassification, intent: Intent) {
        let delivered = Delivered::from_pending(&pending, intent);
        let decoded = Decoded::from(&delivered);
        let outcome = self.settle(&delivered, &decoded).await;
        // Drain before forgetting the row: a crash in between leaves the row,
        // and finishing it again (a duplicate by then) drains the phone.
        // (In retry instead, the retry copy holds the phone and drains it.)
        if outcome.as_ref().is_some_and(is_final) {
            let holder = until_ok("reading the phone's holder", || self.parking.holder(&pending.key)).await;
            // Only the holder releases the phone: a repeated finish must not drain behind a newer holder.
            if holder.as_deref() == Some(pending.message_id.as_str()) {
                self.drain(&pending.key).await;
            }
        }
        until_ok("forgetting the pending message", || ai.pending.resolve(&pending.processing_id)).await;
    }

    /// Lifts blocks whose holder is gone: not waiting for the AI service and
    /// untouched far longer than any retry or classification takes. Their
    /// parked messages are processed in order; nothing is lost, a phone
    /// stranded by a crash at the wrong moment is freed.
    pub(super) async fn lift_stale_blocks(&self, ai: &AiRoute) {
        let horizon = ai.settings.timeout + ai.settings.hold + ai.settings.stale_block_margin;
        let before = Utc::now() - crate::store::to_chrono(horizon);
        let stale = match self.parking.stale_blocks(before, 100).await {
            Ok(stale) => stale,
            Err(error) => {
                tracing::warn!(%error, "reading stale phone blocks failed");
                return;
            }
        };
        for (key, holder) in stale {
            if until_ok("checking a stale block", || ai.pending.waiting(&key, &holder)).await {
                continue;
            }
            tracing::warn!(
                phone = %crate::mask_phone(&key),
                holder = %holder,
                "lifting a stale phone block (its holder finished without releasing it)"
            );
            self.drain(&key).await;
        }
    }

    /// Finishes, with the runtime's own classifier, pending messages whose
    /// AI result is overdue, until `stop` turns true.
    pub(super) async fn sweep_overdue(self: Arc<Self>, ai: AiRoute, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(ai.settings.sweep_interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = ticks.tick() => {}
            }
            self.lift_stale_blocks(&ai).await;
            let before = Utc::now() - crate::store::to_chrono(ai.settings.timeout);
            let overdue = match ai.pending.overdue(before, 100).await {
                Ok(overdue) => overdue,
                Err(error) => {
                    tracing::warn!(%error, "reading overdue AI classifications failed");
                    continue;
                }
            };
            for candidate in overdue {
                if *stop.borrow() {
                    return;
                }
                let taken = until_ok("taking an overdue message", || {
                    ai.pending.take(&candidate.processing_id, ai.settings.hold)
                })
                .await;
                // Finished or taken by another worker meanwhile.
                let Some(pending) = taken else { continue };
                let intent = match Decoded::from(&Delivered::from_pending(&pending, Intent::unknown())) {
                    Decoded::Inbound(incoming) => self.classify(&incoming).await,
                    _ => Intent::unknown(),
                };
                tracing::warn!(
                    processing_id = %pending.processing_id,
                    timeout = ?ai.settings.timeout,
                    intent = %intent.name,
                    "no AI result in time: classified with the fallback classifier"
                );
                RuntimeStats::bump(&self.stats.ai_timeouts);
                self.finish_pending(&ai, pending, intent).await;
            }
        }
    }
}
