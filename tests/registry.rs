//! Routing: priority, confidence thresholds, the fallback, and the built-in
//! handlers' decisions.

mod common;

use async_trait::async_trait;
use common::text;
use orchestrator::event::ResponseContent;
use orchestrator::{HandlerError, HandlerRegistry, Intent, IntentHandler, IntentOutcome, MessageContext, Reply};

struct Named {
    intent: &'static str,
    priority: i32,
    threshold: f64,
    label: &'static str,
}

#[async_trait]
impl IntentHandler for Named {
    fn intent(&self) -> &str {
        self.intent
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    fn confidence_threshold(&self) -> f64 {
        self.threshold
    }
    async fn handle(&self, _ctx: &MessageContext) -> Result<IntentOutcome, HandlerError> {
        Ok(IntentOutcome::reply(Reply::text(self.label)))
    }
}

fn named(intent: &'static str, priority: i32, threshold: f64, label: &'static str) -> Named {
    Named { intent, priority, threshold, label }
}

fn ctx(intent: Intent) -> MessageContext {
    MessageContext {
        event_id: uuid::Uuid::new_v4(),
        tenant_id: "default".into(),
        message_id: "m".into(),
        inbound: text("m", "+15551234567", "hi"),
        intent,
        attempt: 1,
        max_attempts: 4,
        run: 1,
    }
}

async fn label(registry: &HandlerRegistry, intent: Intent) -> String {
    let outcome = registry.route(&ctx(intent.clone())).handle(&ctx(intent)).await.unwrap();
    match outcome.response.unwrap().content {
        ResponseContent::Text { message } => message,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn highest_priority_accepting_handler_wins() {
    let registry = HandlerRegistry::new(named("UNKNOWN", 0, 0.0, "fallback"))
        .with(named("ORDER_REQUEST", 10, 0.5, "low priority"))
        .with(named("ORDER_REQUEST", 50, 0.5, "high priority"))
        .with(named("ORDER_REQUEST", 50, 0.5, "same priority, registered later"));
    assert_eq!(
        registry.handlers().map(|h| h.priority()).collect::<Vec<_>>(),
        [50, 50, 10],
        "sorted by priority, ties in registration order"
    );
    assert_eq!(label(&registry, Intent::new("ORDER_REQUEST", 0.9)).await, "high priority");
}

#[tokio::test]
async fn confidence_below_the_threshold_falls_through() {
    let registry = HandlerRegistry::new(named("UNKNOWN", 0, 0.0, "fallback"))
        .with(named("ORDER_REQUEST", 50, 0.9, "picky"))
        .with(named("ORDER_REQUEST", 10, 0.5, "lenient"));
    assert_eq!(label(&registry, Intent::new("ORDER_REQUEST", 0.95)).await, "picky");
    assert_eq!(label(&registry, Intent::new("ORDER_REQUEST", 0.9)).await, "picky", "threshold is inclusive");
    assert_eq!(label(&registry, Intent::new("ORDER_REQUEST", 0.7)).await, "lenient");
    assert_eq!(label(&registry, Intent::new("ORDER_REQUEST", 0.3)).await, "fallback");
}

#[tokio::test]
async fn no_accepting_handler_means_the_fallback() {
    let registry =
        HandlerRegistry::new(named("UNKNOWN", 0, 0.0, "fallback")).with(named("ORDER_REQUEST", 1, 0.5, "order"));
    assert_eq!(label(&registry, Intent::new("REFUND", 1.0)).await, "fallback");
    assert!(HandlerRegistry::new(named("UNKNOWN", 0, 0.0, "f")).is_empty());
}

#[tokio::test]
async fn built_in_handlers_decide_from_entities() {
    let registry = handlers::builtin();
    assert_eq!(registry.len(), 5);
    let decide = |intent: Intent| {
        let registry = registry.clone();
        async move {
            let c = ctx(intent);
            let handler = registry.route(&c);
            (handler.intent().to_owned(), handler.handle(&c).await.unwrap())
        }
    };
    let actions = |o: &IntentOutcome| o.actions.iter().map(|a| a.action.clone()).collect::<Vec<_>>();

    let (h, o) =
        decide(Intent::new("ORDER_REQUEST", 0.9).with_entity("product", "pizza").with_entity("quantity", 3)).await;
    assert_eq!((h.as_str(), actions(&o)), ("ORDER_REQUEST", vec!["create_order".into(), "notify_sales".into()]));
    assert_eq!(o.actions[0].params["items"][0], serde_json::json!({ "product": "pizza", "quantity": 3 }));

    let (_, o) = decide(Intent::new("ORDER_REQUEST", 0.9)).await;
    assert!(o.actions.is_empty(), "no product named: ask, do not order");

    let (h, _) = decide(Intent::new("ORDER_REQUEST", 0.5)).await;
    assert_eq!(h, "UNKNOWN", "below the order handler's 0.7 threshold");

    let (_, o) = decide(Intent::new("COMPLAINT", 0.6)).await;
    assert_eq!((actions(&o), o.escalate), (vec!["create_support_ticket".into()], false));
    let (_, o) = decide(Intent::new("COMPLAINT", 0.6).with_entity("severity", "high")).await;
    assert_eq!(actions(&o), ["create_support_ticket", "flag_for_review", "notify_sales"]);
    assert!(o.escalate);

    let (_, o) = decide(Intent::new("SCHEDULE_CALL", 0.8)).await;
    assert!(o.actions.is_empty());
    assert!(
        matches!(o.response.unwrap().content, ResponseContent::Interactive { ref buttons, .. } if buttons.len() == 3)
    );
    let (_, o) = decide(Intent::new("SCHEDULE_CALL", 0.8).with_entity("preferred_time", "tomorrow 10am")).await;
    assert_eq!(actions(&o), ["notify_sales"]);

    for intent in ["PRICING_INQUIRY", "AVAILABILITY_INQUIRY"] {
        let (h, o) = decide(Intent::new(intent, 0.8).with_entity("product", "tacos")).await;
        assert_eq!((h.as_str(), actions(&o)), (intent, vec!["notify_sales".into()]));
    }
    let (h, o) = decide(Intent::unknown()).await;
    assert_eq!((h.as_str(), actions(&o)), ("UNKNOWN", vec!["flag_for_review".into()]));
}

#[tokio::test]
async fn built_in_handlers_answer_in_the_language_of_the_message() {
    use orchestrator::{Classifier, KeywordClassifier};
    let registry = handlers::builtin();
    let reply_to = |text: &'static str| {
        let registry = registry.clone();
        async move {
            let inbound = text_inbound(text);
            let intent = KeywordClassifier.classify(&inbound).await.unwrap();
            let mut c = ctx(intent);
            c.inbound = inbound;
            registry.route(&c).handle(&c).await.unwrap().response.unwrap().content
        }
    };
    let text_of = |content: ResponseContent| match content {
        ResponseContent::Text { message } => message,
        ResponseContent::Interactive { body_text, buttons } => {
            format!("{body_text} {}", buttons.iter().map(|b| b.title.as_str()).collect::<Vec<_>>().join("/"))
        }
        other => panic!("{other:?}"),
    };
    assert!(text_of(reply_to("Quiero pedir 2 tacos").await).contains("Registramos tu pedido: 2 x tacos"));
    assert!(text_of(reply_to("I want to order 2 tacos").await).contains("registered your order: 2 x tacos"));
    assert!(text_of(reply_to("¿Cuánto cuesta la pizza?").await).starts_with("¡Gracias por tu interés"));
    assert!(text_of(reply_to("Mi pedido llegó roto").await).starts_with("Lamentamos"));
    assert_eq!(
        text_of(reply_to("¿Me pueden llamar?").await),
        "¡Claro! ¿Cuándo quieres que te llamemos? Mañana/Tarde/Noche"
    );
}

fn text_inbound(body: &str) -> orchestrator::Inbound {
    text("m", "+5215512345678", body)
}
