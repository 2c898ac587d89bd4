//! `outbound_messages` on SQLite and (with TEST_DATABASE_URL) PostgreSQL,
//! and on the memory store: a reply is claimed once, its result is fenced
//! by the claim's lease, a burst of claims and results is answered per
//! reply, and a dead-lettered reply comes back when its entry is replayed.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use orchestrator::event::FailureType;
use orchestrator::store::{
    AttemptFailure, DeadLetterQueue, DeliveryStatuses, DlqStatus, MemoryStore, NewDeadLetter, OutboundMessages,
    OutboundReply, OutboundStatus, ReplyKey, ReplyLease, SendClaim,
};
use orchestrator::testing;
use orchestrator::{SqlStore, StoreError};

const LEASE: Duration = Duration::from_secs(30);

fn reply(original: &str, index: u32) -> OutboundReply {
    OutboundReply {
        key: ReplyKey { tenant_id: "acme".into(), original_message_id: original.into(), reply_index: index },
        phone_number_id: Some("1234".into()),
        recipient_phone: "+15551234567".into(),
        payload: r#"{"to_phone":"+15551234567"}"#.into(),
    }
}

fn acquired(claim: SendClaim) -> (ReplyLease, u32) {
    match claim {
        SendClaim::Acquired { lease, attempt } => (lease, attempt),
        other => panic!("expected a claim, got {other:?}"),
    }
}

fn dead_letter(key: &ReplyKey) -> NewDeadLetter {
    NewDeadLetter {
        message_id: Some(key.dead_letter_id()),
        tenant_id: Some(key.tenant_id.clone()),
        source: None,
        payload: b"{}".to_vec(),
        failure_type: FailureType::ExternalServiceError,
        error: "permanent (code Some(131047)): outside the window".into(),
        attempt_count: 1,
        trace_context: None,
        conversation: None,
    }
}

/// Every store under test: the SQL ones and the memory one.
async fn stores() -> Vec<(String, Arc<dyn Stores>, Option<testing::TestDb>)> {
    let mut all: Vec<(String, Arc<dyn Stores>, Option<testing::TestDb>)> =
        vec![("memory".into(), Arc::new(MemoryStore::new()), None)];
    for t in testing::databases().await {
        all.push((t.label.to_owned(), Arc::new(SqlStore::new(t.db.clone())), Some(t)));
    }
    all
}

trait Stores: OutboundMessages + DeadLetterQueue + DeliveryStatuses {}
impl<T: OutboundMessages + DeadLetterQueue + DeliveryStatuses> Stores for T {}

#[tokio::test]
async fn a_reply_is_claimed_once_and_a_sent_one_is_not_claimed_again() {
    for (label, store, _db) in stores().await {
        let first = reply("wamid.in-1", 0);
        let (lease, attempt) = acquired(store.claim_send(&first, LEASE).await.unwrap());
        assert_eq!(attempt, 1, "{label}");
        assert!(matches!(store.claim_send(&first, LEASE).await.unwrap(), SendClaim::Busy { .. }), "{label}: held");
        // A second reply to the same message is another reply.
        acquired(store.claim_send(&reply("wamid.in-1", 1), LEASE).await.unwrap());

        // A failed attempt: released, counted; the next claim is attempt 2.
        let failure = AttemptFailure { code: Some(2), error: "503", refund: false };
        store.release_send(&lease, &failure).await.unwrap();
        let (lease, attempt) = acquired(store.claim_send(&first, LEASE).await.unwrap());
        assert_eq!(attempt, 2, "{label}");
        // A deferral gives its attempt back.
        let deferred = AttemptFailure { code: None, error: "circuit open", refund: true };
        store.release_send(&lease, &deferred).await.unwrap();
        let (lease, attempt) = acquired(store.claim_send(&first, LEASE).await.unwrap());
        assert_eq!(attempt, 2, "{label}: a deferral is not an attempt");

        // Only the holder records the result.
        let stale = ReplyLease { token: lease.token.wrapping_add(1), ..lease.clone() };
        assert!(matches!(store.record_sent(&stale, Some("wamid.x")).await, Err(StoreError::LeaseLost(_))), "{label}");
        store.record_sent(&lease, Some("wamid.out-1")).await.unwrap();
        assert_eq!(
            store.claim_send(&first, LEASE).await.unwrap(),
            SendClaim::AlreadySent { wamid: Some("wamid.out-1".into()) },
            "{label}: a redelivery is not sent again"
        );
        let row = store.outbound(&first.key).await.unwrap().unwrap();
        assert_eq!((row.status, row.attempt_count), (OutboundStatus::Sent, 2), "{label}");
        assert_eq!(row.phone_number_id.as_deref(), Some("1234"), "{label}");
        assert!(row.error.is_none() && row.sent_at.is_some(), "{label}");
    }
}

#[tokio::test]
async fn a_lease_that_ran_out_is_taken_over_and_fences_out_its_old_holder() {
    for (label, store, _db) in stores().await {
        let r = reply("wamid.in-2", 0);
        let (old, _) = acquired(store.claim_send(&r, Duration::from_millis(1)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (new, attempt) = acquired(store.claim_send(&r, LEASE).await.unwrap());
        assert_eq!(attempt, 2, "{label}: the dead worker's attempt counts");
        let failure = AttemptFailure { code: None, error: "late", refund: false };
        assert!(matches!(store.release_send(&old, &failure).await, Err(StoreError::LeaseLost(_))), "{label}");
        assert!(matches!(store.record_sent(&old, None).await, Err(StoreError::LeaseLost(_))), "{label}");
        store.record_sent(&new, Some("wamid.out-2")).await.unwrap();
    }
}

#[tokio::test]
async fn a_burst_of_claims_and_results_is_answered_per_reply() {
    for (label, store, _db) in stores().await {
        // 40 replies at once, one of them twice (a redelivery racing its original).
        let mut replies: Vec<OutboundReply> = (0..40).map(|n| reply(&format!("wamid.burst-{n}"), 0)).collect();
        replies.push(reply("wamid.burst-7", 0));
        let claims = futures_util::future::join_all(replies.iter().map(|r| store.claim_send(r, LEASE))).await;
        let mut leases = Vec::new();
        let mut busy = 0;
        for claim in claims {
            match claim.unwrap() {
                SendClaim::Acquired { lease, attempt } => {
                    assert_eq!(attempt, 1, "{label}");
                    leases.push(lease);
                }
                SendClaim::Busy { .. } => busy += 1,
                other => panic!("{label}: {other:?}"),
            }
        }
        assert_eq!((leases.len(), busy), (40, 1), "{label}: the repeat finds its original held");
        // One lease lost among the results: only that one is refused.
        let mut stale = leases[3].clone();
        stale.token = stale.token.wrapping_add(1);
        let mut writes: Vec<(ReplyLease, String)> =
            leases.iter().map(|l| (l.clone(), format!("wamid.sent-{}", l.key.original_message_id))).collect();
        writes[3].0 = stale;
        let results = futures_util::future::join_all(writes.iter().map(|(l, w)| store.record_sent(l, Some(w)))).await;
        for (n, result) in results.iter().enumerate() {
            assert_eq!(result.is_ok(), n != 3, "{label}: result {n}: {result:?}");
        }
        for lease in &leases {
            let row = store.outbound(&lease.key).await.unwrap().unwrap();
            let sent = lease.key.original_message_id != leases[3].key.original_message_id;
            assert_eq!(row.status == OutboundStatus::Sent, sent, "{label}: {}", lease.key.original_message_id);
            if sent {
                assert_eq!(row.wamid, Some(format!("wamid.sent-{}", lease.key.original_message_id)), "{label}");
            }
        }
    }
}

#[tokio::test]
async fn a_dead_lettered_reply_is_skipped_until_its_entry_is_replayed() {
    for (label, store, _db) in stores().await {
        let r = reply("wamid.in-3", 0);
        let (lease, _) = acquired(store.claim_send(&r, LEASE).await.unwrap());
        let id = store.fail_send(Some(&lease), Some(131047), &dead_letter(&r.key)).await.unwrap();
        let row = store.outbound(&r.key).await.unwrap().unwrap();
        assert_eq!((row.status, row.error_code), (OutboundStatus::Failed, Some(131047)), "{label}");
        assert_eq!(store.claim_send(&r, LEASE).await.unwrap(), SendClaim::Failed, "{label}");
        let entry = store.get(id).await.unwrap().unwrap();
        assert_eq!(entry.message_id.as_deref(), Some("reply:wamid.in-3#0"), "{label}");

        // A replay whose copy could not be sent is taken back: still failed.
        store.mark(id, DlqStatus::Replayed).await.unwrap();
        store.undo_replay(id).await.unwrap();
        assert_eq!(store.claim_send(&r, LEASE).await.unwrap(), SendClaim::Failed, "{label}");
        // A replay that went out: the reply is sendable again, attempts from the start.
        store.mark(id, DlqStatus::Replayed).await.unwrap();
        let (_, attempt) = acquired(store.claim_send(&r, LEASE).await.unwrap());
        assert_eq!(attempt, 1, "{label}");

        // A dead letter without a claim (undecodable bytes) files its entry alone.
        let loose = store.fail_send(None, None, &dead_letter(&reply("wamid.in-4", 0).key)).await.unwrap();
        assert!(store.get(loose).await.unwrap().is_some(), "{label}");
        assert!(store.outbound(&reply("wamid.in-4", 0).key).await.unwrap().is_none(), "{label}");
    }
}

#[tokio::test]
async fn webhook_statuses_move_a_reply_forward_never_back() {
    for (label, store, _db) in stores().await {
        let r = reply("wamid.in-5", 0);
        let (lease, _) = acquired(store.claim_send(&r, LEASE).await.unwrap());
        store.record_sent(&lease, Some("wamid.out-5")).await.unwrap();
        let status = |state: &str, error: Option<&str>| orchestrator::webhook::DeliveryStatus {
            message_id: "wamid.out-5".into(),
            recipient_phone: "+15551234567".into(),
            status: state.into(),
            timestamp: Utc::now(),
            error: error.map(str::to_owned),
            phone_number_id: Some("1234".into()),
        };
        let now = || async { store.outbound(&r.key).await.unwrap().unwrap() };
        store.record_status(&status("delivered", None)).await.unwrap();
        assert_eq!(now().await.status, OutboundStatus::Delivered, "{label}");
        store.record_status(&status("sent", None)).await.unwrap();
        assert_eq!(now().await.status, OutboundStatus::Delivered, "{label}: a late `sent` changes nothing");
        store.record_status(&status("read", None)).await.unwrap();
        assert_eq!(now().await.status, OutboundStatus::Read, "{label}");
        store.record_status(&status("failed", Some("131026: Message undeliverable"))).await.unwrap();
        let row = now().await;
        assert_eq!((row.status, row.error_code), (OutboundStatus::Failed, Some(131026)), "{label}");
        assert!(row.error.as_deref().is_some_and(|e| e.contains("undeliverable")), "{label}");
        // A status for a message we did not send through the sender is kept, and touches no reply.
        let mut other = status("delivered", None);
        other.message_id = "wamid.elsewhere".into();
        store.record_status(&other).await.unwrap();
        assert_eq!(store.statuses_of("wamid.elsewhere").await.unwrap().len(), 1, "{label}");
    }
}
