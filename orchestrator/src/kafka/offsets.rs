//! Which offset may be committed: everything below it is finished.
//!
//! Messages of one partition finish out of order (different keys run
//! concurrently); the commit point is the lowest offset still in flight, or
//! one past the highest seen when nothing is.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Partition {
    in_flight: BTreeSet<i64>,
    next: i64,
}

/// In-flight offsets per topic partition.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    partitions: Mutex<HashMap<(String, i32), Partition>>,
}

impl OffsetTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), Partition>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message was handed to a worker.
    pub(crate) fn start(&self, topic: &str, partition: i32, offset: i64) {
        let mut partitions = self.lock();
        let entry = partitions.entry((topic.to_owned(), partition)).or_default();
        entry.in_flight.insert(offset);
        entry.next = entry.next.max(offset + 1);
    }

    /// A message is finished; returns the new commit point (the next offset
    /// to consume) when it moved.
    pub(crate) fn finish(&self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let mut partitions = self.lock();
        let entry = partitions.get_mut(&(topic.to_owned(), partition))?;
        let before = entry.in_flight.first().copied();
        entry.in_flight.remove(&offset);
        match (before, entry.in_flight.first()) {
            (Some(lowest), _) if lowest != offset => None,
            (_, Some(&next_in_flight)) => Some(next_in_flight),
            (_, None) => Some(entry.next),
        }
    }

    /// Stops tracking a partition (revoked or newly assigned): offsets of
    /// messages still running there are never stored by this consumer.
    pub(crate) fn forget(&self, topic: &str, partition: i32) {
        self.lock().remove(&(topic.to_owned(), partition));
    }

    /// Messages still in flight, over all partitions.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().values().map(|p| p.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_below_the_lowest_unfinished_offset() {
        let tracker = OffsetTracker::default();
        for offset in 10..14 {
            tracker.start("t", 0, offset);
        }
        assert_eq!(tracker.finish("t", 0, 12), None, "11 and 10 are still running");
        assert_eq!(tracker.finish("t", 0, 11), None);
        assert_eq!(tracker.finish("t", 0, 10), Some(13), "10..=12 done, 13 still running");
        assert_eq!(tracker.finish("t", 0, 13), Some(14));
        assert_eq!(tracker.in_flight(), 0);
        // Partitions are independent.
        tracker.start("t", 1, 5);
        tracker.start("t", 0, 14);
        assert_eq!(tracker.finish("t", 0, 14), Some(15));
        assert_eq!(tracker.in_flight(), 1);
    }

    #[test]
    fn a_partition_that_comes_back_starts_afresh() {
        let tracker = OffsetTracker::default();
        for offset in 0..10 {
            tracker.start("t", 0, offset);
        }
        // Revoked while 0..10 run; they finish afterwards: nothing may be stored.
        tracker.forget("t", 0);
        assert_eq!(tracker.finish("t", 0, 3), None);
        // Assigned again and redelivered from the committed offset 3: finishing 3
        // must not jump past 4..10, which this assignment has not seen yet.
        tracker.forget("t", 0);
        tracker.start("t", 0, 3);
        assert_eq!(tracker.finish("t", 0, 3), Some(4));
    }
}
