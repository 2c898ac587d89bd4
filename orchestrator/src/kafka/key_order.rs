//! Per-key ordering: messages with the same key (phone) run one after
//! another in arrival order; different keys run concurrently.

use std::collections::HashMap;

use tokio::sync::oneshot;

/// The tail of each key's chain of work.
#[derive(Debug, Default)]
pub(crate) struct KeyChains {
    tails: HashMap<String, oneshot::Receiver<()>>,
}

/// Wait for `previous`, do the work, then drop or fire `done`.
pub(crate) struct Link {
    pub previous: Option<oneshot::Receiver<()>>,
    pub done: oneshot::Sender<()>,
}

impl KeyChains {
    /// Appends a piece of work for `key`; must be called in arrival order.
    pub(crate) fn append(&mut self, key: &str) -> Link {
        let (done, tail) = oneshot::channel();
        let previous = self.tails.insert(key.to_owned(), tail);
        if self.tails.len() > 10_000 {
            self.prune();
        }
        Link { previous, done }
    }

    /// Forgets keys whose last work has finished.
    fn prune(&mut self) {
        self.tails.retain(|_, tail| matches!(tail.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_runs_in_order_other_keys_do_not_wait() {
        let mut chains = KeyChains::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (key, label, delay) in [("a", "a1", 50), ("a", "a2", 0), ("b", "b1", 0)] {
            let link = chains.append(key);
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                if let Some(previous) = link.previous {
                    let _ = previous.await;
                }
                tokio::time::sleep(Duration::from_millis(delay)).await;
                order.lock().unwrap().push(label);
                let _ = link.done.send(());
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["b1", "a1", "a2"]);
    }
}
