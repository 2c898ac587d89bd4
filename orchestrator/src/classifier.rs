//! The intent stage: give an inbound message its intent.
//!
//! [`KeywordClassifier`] is the built-in rule classifier (English and
//! Spanish), so the system works with no AI service; an external AI service
//! plugs in through the same [`Classifier`] trait.

use std::sync::LazyLock;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::context::Inbound;
use crate::event::Selection;
use crate::intent::{Intent, names};

/// Classification failed; the message is retried like any other failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("classification failed: {0}")]
pub struct ClassifyError(pub String);

/// Gives a message its intent, confidence and entities.
#[async_trait]
pub trait Classifier: Send + Sync {
    /// Classifies one message.
    async fn classify(&self, inbound: &Inbound) -> Result<Intent, ClassifyError>;
}

/// One intent's keywords (normalised: lower case, no accents). Earlier rules
/// win ties, so a complaint is never mistaken for an order.
const RULES: &[(&str, &[&str])] = &[
    (
        names::COMPLAINT,
        &[
            "complaint",
            "complain",
            "broken",
            "damaged",
            "late",
            "never arrived",
            "refund",
            "money back",
            "terrible",
            "worst",
            "angry",
            "wrong",
            "disappointed",
            "queja",
            "reclamo",
            "roto",
            "danado",
            "nunca llego",
            "llego tarde",
            "muy tarde",
            "reembolso",
            "devolucion",
            "pesimo",
            "molesto",
            "equivocado",
            "decepcionado",
        ],
    ),
    (
        names::SCHEDULE_CALL,
        &[
            "call me",
            "schedule a call",
            "phone call",
            "callback",
            "call back",
            "talk to someone",
            "llamame",
            "llamada",
            "agendar",
            "hablar con alguien",
            "me llaman",
            "me pueden llamar",
        ],
    ),
    (
        names::PRICING_INQUIRY,
        &[
            "price",
            "prices",
            "cost",
            "how much",
            "quote",
            "pricing",
            "precio",
            "precios",
            "cuesta",
            "cuanto",
            "cotizacion",
            "costo",
            "vale",
        ],
    ),
    (
        names::AVAILABILITY_INQUIRY,
        &[
            "available",
            "availability",
            "in stock",
            "do you have",
            "are you open",
            "disponible",
            "disponibles",
            "disponibilidad",
            "tienen",
            "hay",
            "stock",
            "abierto",
            "abren",
        ],
    ),
    (
        names::ORDER_REQUEST,
        &[
            "order",
            "buy",
            "purchase",
            "i want",
            "i d like",
            "i would like",
            "send me",
            "deliver",
            "pedido",
            "pedir",
            "quiero",
            "comprar",
            "me gustaria",
            "ordenar",
            "enviame",
            "mandame",
            "quisiera",
        ],
    ),
];

/// Common words that tell Spanish from English.
const SPANISH_WORDS: &[&str] = &[
    "el", "la", "los", "las", "de", "que", "mi", "un", "una", "por", "favor", "hola", "gracias", "quiero", "tienen",
    "cuanto", "cuesta", "precio", "pedido", "es", "para", "con", "llego", "manana", "tarde", "llamame", "hay", "y",
];
const ENGLISH_WORDS: &[&str] = &[
    "the", "i", "my", "a", "an", "is", "are", "do", "you", "have", "how", "much", "please", "want", "to", "of", "and",
    "for", "with", "it", "can", "order", "call",
];

/// `es` or `en`, by which language's common words the text uses more.
fn language(original: &str, normalised: &str) -> &'static str {
    let words: Vec<&str> = normalised.split(' ').collect();
    let spanish = words.iter().filter(|w| SPANISH_WORDS.contains(w)).count()
        // Inverted marks and ñ are unambiguous: they outweigh a shared word.
        + 2 * original.chars().filter(|c| matches!(c, '¿' | '¡' | 'ñ' | 'Ñ')).count();
    let english = words.iter().filter(|w| ENGLISH_WORDS.contains(w)).count();
    if spanish > english { "es" } else { "en" }
}

/// Words that make a complaint severe.
const SEVERE: &[&str] = &[
    "terrible",
    "worst",
    "furious",
    "lawyer",
    "never again",
    "unacceptable",
    "scam",
    "pesimo",
    "furioso",
    "abogado",
    "nunca mas",
    "inaceptable",
    "estafa",
    "denuncia",
];

const TIME_WORDS: &[&str] =
    &["today", "tomorrow", "morning", "afternoon", "evening", "tonight", "hoy", "manana", "tarde", "noche"];

const NUMBER_WORDS: &[(&str, u64)] = &[
    ("one", 1),
    ("two", 2),
    ("three", 3),
    ("four", 4),
    ("five", 5),
    ("six", 6),
    ("seven", 7),
    ("eight", 8),
    ("nine", 9),
    ("ten", 10),
    ("un", 1),
    ("una", 1),
    ("uno", 1),
    ("dos", 2),
    ("tres", 3),
    ("cuatro", 4),
    ("cinco", 5),
    ("seis", 6),
    ("siete", 7),
    ("ocho", 8),
    ("nueve", 9),
    ("diez", 10),
];

/// Words that are never a product name.
const STOPWORDS: &[&str] = &[
    "x", "of", "the", "a", "an", "and", "please", "de", "del", "el", "la", "los", "las", "y", "por", "favor", "more",
    "mas", "for", "para", "is", "es", "are", "son", "to", "me",
];

/// The built-in rule classifier: keyword matches per intent (English and
/// Spanish, accent-insensitive), confidence growing with the matches, and
/// entities for the built-in handlers (`products`, `product`, `severity`,
/// `preferred_time`). Reply buttons `call_*` map to `SCHEDULE_CALL`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeywordClassifier;

impl KeywordClassifier {
    /// Classifies a text (synchronous core of [`Classifier::classify`]).
    pub fn classify_text(&self, text: &str) -> Intent {
        let normalised = normalise(text);
        let padded = format!(" {normalised} ");
        let best = PADDED_RULES
            .iter()
            .map(|(intent, keywords)| (*intent, keywords.iter().filter(|k| padded.contains(k.as_str())).count()))
            .filter(|(_, hits)| *hits > 0)
            // max_by_key keeps the last maximum; reverse so the earliest rule wins ties.
            .rev()
            .max_by_key(|(_, hits)| *hits);
        let language = language(text, &normalised);
        let Some((name, hits)) = best else {
            return Intent::new(names::UNKNOWN, 0.2).with_entity("language", language);
        };
        let confidence = (0.65 + 0.1 * hits as f64).min(0.95);
        let mut intent = Intent::new(name, confidence);
        intent.entities = entities(name, &normalised, &padded);
        intent.entities.insert("language".into(), json!(language));
        intent
    }
}

#[async_trait]
impl Classifier for KeywordClassifier {
    async fn classify(&self, inbound: &Inbound) -> Result<Intent, ClassifyError> {
        if let Inbound::Interaction(interaction) = inbound
            && let Selection::Button { id, title } = &interaction.selection
            && id.starts_with("call_")
        {
            return Ok(Intent::new(names::SCHEDULE_CALL, 0.95).with_entity("preferred_time", title.to_lowercase()));
        }
        Ok(inbound.text().map_or_else(|| Intent::new(names::UNKNOWN, 0.1), |text| self.classify_text(text)))
    }
}

/// `words` each with a space on both sides, so that `padded.contains(word)`
/// on space-padded normalised text is a whole-word match. Built once: padding
/// them per message cost an allocation per keyword.
fn padded_words(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| format!(" {word} ")).collect()
}

static PADDED_RULES: LazyLock<Vec<(&str, Vec<String>)>> =
    LazyLock::new(|| RULES.iter().map(|(intent, keywords)| (*intent, padded_words(keywords))).collect());
static PADDED_SEVERE: LazyLock<Vec<String>> = LazyLock::new(|| padded_words(SEVERE));
static PADDED_TIME_WORDS: LazyLock<Vec<String>> = LazyLock::new(|| padded_words(TIME_WORDS));

/// Lower case, accents folded, everything but letters and digits a single space.
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last_space = true;
    for ch in text.chars().flat_map(char::to_lowercase) {
        let ch = match ch {
            'á' | 'à' | 'ä' | 'â' => 'a',
            'é' | 'è' | 'ë' | 'ê' => 'e',
            'í' | 'ì' | 'ï' | 'î' => 'i',
            'ó' | 'ò' | 'ö' | 'ô' => 'o',
            'ú' | 'ù' | 'ü' | 'û' => 'u',
            'ñ' => 'n',
            c if c.is_alphanumeric() => c,
            _ => ' ',
        };
        if ch == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(ch);
            last_space = false;
        }
    }
    out.trim_end().to_owned()
}

fn entities(intent: &str, normalised: &str, padded: &str) -> Map<String, Value> {
    let mut entities = Map::new();
    let items = items(normalised);
    if let Some(first) = items.first() {
        entities.insert("product".into(), first["name"].clone());
    }
    if !items.is_empty() {
        entities.insert("products".into(), Value::Array(items));
    }
    if intent == names::COMPLAINT {
        let severe = PADDED_SEVERE.iter().any(|w| padded.contains(w.as_str()));
        entities.insert("severity".into(), json!(if severe { "high" } else { "medium" }));
    }
    if intent == names::SCHEDULE_CALL {
        let times: Vec<&str> = TIME_WORDS
            .iter()
            .zip(PADDED_TIME_WORDS.iter())
            .filter(|(_, p)| padded.contains(p.as_str()))
            .map(|(w, _)| *w)
            .collect();
        if !times.is_empty() {
            entities.insert("preferred_time".into(), json!(times.join(" ")));
        }
    }
    entities
}

/// "2 tacos", "dos tacos", "3 x soda": a quantity followed by a product word.
fn items(normalised: &str) -> Vec<Value> {
    let words: Vec<&str> = normalised.split(' ').collect();
    let mut items = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let quantity =
            word.parse::<u64>().ok().or_else(|| NUMBER_WORDS.iter().find(|(w, _)| w == word).map(|(_, n)| *n));
        let Some(quantity) = quantity.filter(|q| (1..=1000).contains(q)) else { continue };
        let product = words[i + 1..].iter().find(|w| !STOPWORDS.contains(w) && w.parse::<u64>().is_err());
        if let Some(product) = product {
            items.push(json!({ "name": product, "quantity": quantity }));
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(text: &str) -> Intent {
        KeywordClassifier.classify_text(text)
    }

    #[test]
    fn english_and_spanish_intents() {
        for (text, expected) in [
            ("I'd like to order 2 tacos and 1 soda", names::ORDER_REQUEST),
            ("Quiero pedir dos tacos", names::ORDER_REQUEST),
            ("How much is the pizza?", names::PRICING_INQUIRY),
            ("¿Cuánto cuesta la pizza?", names::PRICING_INQUIRY),
            ("My order arrived broken and late", names::COMPLAINT),
            ("Mi pedido llegó roto, quiero un reembolso", names::COMPLAINT),
            ("Do you have vegan burgers in stock?", names::AVAILABILITY_INQUIRY),
            ("¿Tienen hamburguesas veganas disponibles?", names::AVAILABILITY_INQUIRY),
            ("Please call me tomorrow morning", names::SCHEDULE_CALL),
            ("Llámame mañana por la tarde", names::SCHEDULE_CALL),
            ("asdf qwerty", names::UNKNOWN),
        ] {
            assert_eq!(classify(text).name, expected, "{text}");
        }
    }

    #[test]
    fn tells_spanish_from_english() {
        assert_eq!(classify("¿Cuánto cuesta la pizza?").entity_str("language"), Some("es"));
        assert_eq!(classify("Quiero pedir dos tacos").entity_str("language"), Some("es"));
        assert_eq!(classify("How much is the pizza?").entity_str("language"), Some("en"));
        assert_eq!(classify("asdf").entity_str("language"), Some("en"));
        assert_eq!(classify("¿Me pueden llamar?").entity_str("language"), Some("es"));
    }

    #[test]
    fn complaints_win_ties_and_confidence_grows_with_matches() {
        // "I want" (order) and "refund" (complaint) both match once.
        assert_eq!(classify("I want a refund").name, names::COMPLAINT);
        let one = classify("I want tacos").confidence;
        let two = classify("I want to order tacos").confidence;
        assert!(one >= 0.7 && two > one && two <= 0.95, "{one} {two}");
        assert!(classify("nothing to see").confidence < 0.5);
    }

    #[test]
    fn extracts_entities_for_the_built_in_handlers() {
        let order = classify("I want to order 2 tacos and three sodas please");
        assert_eq!(order.entities["products"], json!([{"name":"tacos","quantity":2},{"name":"sodas","quantity":3}]));
        let pedido = classify("Quiero 2 x empanadas");
        assert_eq!(pedido.entities["products"], json!([{"name":"empanadas","quantity":2}]));
        assert_eq!(classify("This is the worst service, terrible!").entity_str("severity"), Some("high"));
        assert_eq!(classify("my order is late").entity_str("severity"), Some("medium"));
        assert_eq!(classify("call me tomorrow morning").entity_str("preferred_time"), Some("tomorrow morning"));
    }

    #[tokio::test]
    async fn call_buttons_schedule_a_call() {
        let interaction = Inbound::Interaction(crate::event::InteractionReceived {
            original_message_id: "wamid.1".into(),
            from_phone: "+15551234567".into(),
            interaction_type: crate::event::InteractionType::ButtonReply,
            selection: Selection::Button { id: "call_morning".into(), title: "Morning".into() },
            received_at: chrono::Utc::now(),
            message_id: None,
        });
        let intent = KeywordClassifier.classify(&interaction).await.unwrap();
        assert_eq!(
            (intent.name.as_str(), intent.entity_str("preferred_time")),
            (names::SCHEDULE_CALL, Some("morning"))
        );
    }
}
