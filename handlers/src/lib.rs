//! Built-in intent handlers of WhatsApp Orchestrator, one file per intent.
//!
//! Each decides its actions from the intent's entities and writes a reply:
//!
//! | intent | handler | actions | priority |
//! | --- | --- | --- | --- |
//! | `COMPLAINT` | [`ComplaintHandler`] | `create_support_ticket` (+ `flag_for_review`, `notify_sales` when severe) | 200 |
//! | `ORDER_REQUEST` | [`OrderRequestHandler`] | `create_order`, `notify_sales` | 100 |
//! | `SCHEDULE_CALL` | [`ScheduleCallHandler`] | `notify_sales` | 90 |
//! | `PRICING_INQUIRY` | [`PricingInquiryHandler`] | `notify_sales` | 80 |
//! | `AVAILABILITY_INQUIRY` | [`AvailabilityInquiryHandler`] | `notify_sales` | 80 |
//! | `UNKNOWN` (fallback) | [`UnknownHandler`] | `flag_for_review` | - |
//!
//! Entities read: `products` (names or `{"name","quantity"}`), `product`,
//! `quantity`, `severity` (`low|medium|high`), `order_id`, `date`,
//! `preferred_time`.

use orchestrator::HandlerRegistry;

pub mod availability_inquiry;
pub mod complaint;
mod entities;
pub mod order_request;
pub mod pricing_inquiry;
pub mod schedule_call;
pub mod stages;
pub mod unknown;

pub use availability_inquiry::AvailabilityInquiryHandler;
pub use complaint::ComplaintHandler;
pub use order_request::OrderRequestHandler;
pub use pricing_inquiry::PricingInquiryHandler;
pub use schedule_call::ScheduleCallHandler;
pub use unknown::UnknownHandler;

/// A registry with every built-in handler and [`UnknownHandler`] as fallback.
pub fn builtin() -> HandlerRegistry {
    HandlerRegistry::new(UnknownHandler)
        .with(ComplaintHandler)
        .with(OrderRequestHandler)
        .with(ScheduleCallHandler)
        .with(PricingInquiryHandler)
        .with(AvailabilityInquiryHandler)
}
