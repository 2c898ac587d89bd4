//! Per-phone order across retries: a message whose phone waits behind an
//! earlier one (in retry, or at the AI service) is parked in the database,
//! and the holder drains the parked messages in order once it finishes.

use super::act::is_final;
use super::records::{Decoded, Delivered};
use super::{Worker, until_ok};
use crate::store::{ParkCheck, ParkedMessage};

impl Worker {
    /// Parks the message behind its phone's message in retry, or processes
    /// it; a holder that finished releases the messages parked behind it.
    pub(super) async fn deliver(&self, delivered: Delivered) {
        let decoded = Decoded::from(&delivered);
        if let Decoded::Inbound(incoming) = &decoded
            && delivered.topic == delivered.base_topic()
        {
            let business = incoming.inbound.business_hint().map_or("unknown", crate::metrics::label);
            crate::metrics::metrics().messages_received.with_label_values(&[business, "kafka"]).inc();
        }
        let message_id = decoded.message_id();
        let mut holder = false;
        // A message id with a NUL cannot be stored: such a message is refused
        // by the pipeline before any write, so it is not parked either.
        if let (Some(key), Some(message_id)) = (&delivered.key, message_id.as_ref().filter(|id| !id.contains('\0'))) {
            let parked = ParkedMessage {
                id: 0,
                key: key.clone(),
                message_id: message_id.clone(),
                topic: delivered.base_topic().to_owned(),
                partition: delivered.partition,
                offset: delivered.offset,
                // Decoded above, so it is UTF-8.
                payload: String::from_utf8_lossy(&delivered.payload).into_owned(),
            };
            match until_ok("checking the key's retry block", || self.parking.park_if_blocked(&parked)).await {
                ParkCheck::Parked => {
                    tracing::info!(
                        message_id,
                        "parked behind an earlier message of the same phone (in retry or waiting for the AI service)"
                    );
                    return;
                }
                ParkCheck::Open { holder: is_holder } => holder = is_holder,
            }
        }
        // Handed to the AI service: the key stays blocked behind it.
        let Some(outcome) = self.settle(&delivered, &decoded).await else { return };
        if holder
            && is_final(&outcome)
            && let Some(key) = &delivered.key
        {
            self.drain(key).await;
        }
    }

    /// Processes the messages parked under `key` in order, until one of them
    /// goes to retry (it then holds the key) or none is left (the block goes).
    pub(super) async fn drain(&self, key: &str) {
        loop {
            let Some(parked) = until_ok("reading parked messages", || self.parking.next_parked(key)).await else {
                if until_ok("unblocking the key", || self.parking.unblock_if_empty(key)).await {
                    return;
                }
                continue;
            };
            let delivered = Delivered::from_parked(&parked);
            let decoded = Decoded::from(&delivered);
            let outcome = self.settle(&delivered, &decoded).await;
            until_ok("unparking", || self.parking.unpark(parked.id)).await;
            // In retry or waiting for the AI service: it holds the key now.
            if !outcome.as_ref().is_some_and(is_final) {
                return;
            }
        }
    }
}
