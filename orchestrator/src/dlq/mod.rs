//! Operating the dead-letter queue. The admin HTTP API and the consumer
//! binary's `dlq` commands are thin layers over [`DlqService`].
//!
//! | file | what it holds |
//! | --- | --- |
//! | `service` | [`DlqService`]: list, show, group, discard, replay (one or in bulk) |
//! | `fingerprint` | [`failure_fingerprint`] and [`normalize_error`]: one cause, one group |
//! | `table` | entries and groups as terminal tables |

mod fingerprint;
mod service;
mod table;

pub use fingerprint::{failure_fingerprint, normalize_error};
pub use service::{BulkReplay, BulkReport, DlqError, DlqService, REPLAY_OF_HEADER};
pub use table::{groups_table, table};
