//! Per-topic content rules: what a valid gossip message on a joined topic looks like.
//!
//! A rule names a payload size limit, a content type (`text`, `json`, `cbor` or `bytes`)
//! and, for `json` and `cbor`, an optional JSON Schema. The network service checks every
//! message of a ruled topic once, after gossipsub checked its signature, and reports the outcome to gossipsub:
//! a message that breaks the rule is rejected there (not forwarded; gossipsub's peer
//! scoring, once switched on, holds it against the peer that sent it), counted by topic and
//! reason, and never reaches the API or chat. A node also
//! refuses to publish a message that breaks its own rule.
//!
//! Schemas are self-contained: a `$ref` to anything outside the schema file (a URL or another
//! file) is refused when the rule is loaded, so checking a message never touches the network
//! or the disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// CBOR nesting deeper than this is refused (the decoder recurses once per level).
const CBOR_RECURSION_LIMIT: usize = 64;

/// What the payload of a message on a topic must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    /// UTF-8 text (a topic without a rule is `text`).
    #[default]
    Text,
    /// One JSON value (UTF-8).
    Json,
    /// One well-formed CBOR item.
    Cbor,
    /// Any bytes.
    Bytes,
}

impl ContentType {
    /// The name used in config files and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Text => "text",
            ContentType::Json => "json",
            ContentType::Cbor => "cbor",
            ContentType::Bytes => "bytes",
        }
    }

    /// Whether the API shows this topic's payloads as text (else as base64).
    pub fn is_text(self) -> bool {
        matches!(self, ContentType::Text | ContentType::Json)
    }
}

/// A rule as written in the config file (`topic_rules.<topic>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRuleSpec {
    /// Largest payload a publisher may give, in bytes (at most `max_message_size`).
    pub max_bytes: Option<usize>,
    /// `text` when absent.
    pub content_type: Option<ContentType>,
    /// A JSON Schema file (relative paths are taken from the config file's directory); only
    /// with `json` or `cbor`.
    pub schema: Option<PathBuf>,
}

/// A loaded rule.
pub struct TopicRule {
    pub max_bytes: Option<usize>,
    pub content_type: ContentType,
    /// Where the schema was read from.
    pub schema_file: Option<PathBuf>,
    /// The schema itself, as shown by the API.
    pub schema: Option<Value>,
    validator: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for TopicRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicRule")
            .field("max_bytes", &self.max_bytes)
            .field("content_type", &self.content_type)
            .field("schema_file", &self.schema_file)
            .finish()
    }
}

/// Why a message breaks its topic's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The metric label: `over_max_bytes`, `invalid_utf8`, `not_json`, `not_cbor` or `schema`.
    pub reason: &'static str,
    /// What was wrong, for logs and API errors (never the payload itself).
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

fn violation(reason: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        reason,
        detail: detail.into(),
    }
}

/// Refuses every schema outside the schema file.
struct NoRetrieval;

impl jsonschema::Retrieve for NoRetrieval {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!(
            "`$ref` to {} is not followed: a topic schema must be self-contained",
            uri.as_str()
        )
        .into())
    }
}

impl TopicRule {
    /// Loads `spec`; `base` is the directory relative schema paths start from. Errors say
    /// what is wrong without naming the topic (the caller does).
    pub fn load(
        spec: &TopicRuleSpec,
        base: &Path,
        max_message_size: usize,
    ) -> Result<Self, String> {
        let schema = match &spec.schema {
            None => None,
            Some(path) => {
                let path = if path.is_absolute() {
                    path.clone()
                } else {
                    base.join(path)
                };
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read the schema file {}: {e}", path.display()))?;
                let schema: Value = serde_json::from_str(&text)
                    .map_err(|e| format!("the schema file {} is not JSON: {e}", path.display()))?;
                Some((Some(path), schema))
            }
        };
        Self::compile(spec.max_bytes, spec.content_type, schema, max_message_size)
    }

    /// A rule from its parts; `schema` is the schema and the file it came from, if any.
    pub fn compile(
        max_bytes: Option<usize>,
        content_type: Option<ContentType>,
        schema: Option<(Option<PathBuf>, Value)>,
        max_message_size: usize,
    ) -> Result<Self, String> {
        let content_type = content_type.unwrap_or_default();
        if let Some(max) = max_bytes {
            if max == 0 {
                return Err("max_bytes must be at least 1".into());
            }
            if max > max_message_size {
                return Err(format!(
                    "max_bytes {max} is over max_message_size ({max_message_size}): no message that large is ever carried"
                ));
            }
        }
        let (schema_file, schema, validator) = match schema {
            None => (None, None, None),
            Some(_) if !matches!(content_type, ContentType::Json | ContentType::Cbor) => {
                return Err(format!(
                    "a schema needs content_type json or cbor, not {}",
                    content_type.as_str()
                ));
            }
            Some((file, schema)) => {
                let from = file
                    .as_ref()
                    .map(|p| format!("the schema file {}", p.display()))
                    .unwrap_or_else(|| "the schema".into());
                let validator = jsonschema::options()
                    .with_retriever(NoRetrieval)
                    .build(&schema)
                    .map_err(|e| format!("{from} is not a valid JSON Schema: {e}"))?;
                (file, Some(schema), Some(validator))
            }
        };
        Ok(Self {
            max_bytes,
            content_type,
            schema_file,
            schema,
            validator,
        })
    }

    /// Checks one payload.
    pub fn check(&self, payload: &[u8]) -> Result<(), Violation> {
        if let Some(max) = self.max_bytes
            && payload.len() > max
        {
            return Err(violation(
                "over_max_bytes",
                format!(
                    "{} bytes, over the topic's max_bytes of {max}",
                    payload.len()
                ),
            ));
        }
        let value = match self.content_type {
            ContentType::Bytes => return Ok(()),
            ContentType::Text => {
                return std::str::from_utf8(payload)
                    .map(|_| ())
                    .map_err(|e| violation("invalid_utf8", format!("not UTF-8 text: {e}")));
            }
            ContentType::Json => serde_json::from_slice::<Value>(payload)
                .map_err(|e| violation("not_json", format!("not one JSON value: {e}")))?,
            ContentType::Cbor => decode_cbor(payload, self.validator.is_some())?,
        };
        match &self.validator {
            Some(v) => v.validate(&value).map_err(|e| {
                // Where and which keyword, never the value itself (the error's own text
                // quotes the payload; this detail goes to logs and API answers).
                let at = e.instance_path().to_string();
                let at = if at.is_empty() {
                    "the top level".into()
                } else {
                    format!("`{}`", crate::log_limit::echo(&at))
                };
                violation(
                    "schema",
                    format!(
                        "breaks the topic's schema at {at}: fails `{}` (schema location `{}`)",
                        e.kind().keyword(),
                        crate::log_limit::echo(&e.schema_path().to_string())
                    ),
                )
            }),
            None => Ok(()),
        }
    }
}

/// Decodes one CBOR item (nothing may follow it); as JSON when `as_json` (a schema is checked
/// on it: byte strings, most tags and non-text map keys then do not fit; non-finite floats
/// and `undefined` read as null, and of duplicate map keys the last counts).
fn decode_cbor(payload: &[u8], as_json: bool) -> Result<Value, Violation> {
    let not_cbor = |what: &str, e: &dyn std::fmt::Display| {
        violation(
            "not_cbor",
            format!("{what}: {}", crate::log_limit::echo(&e.to_string())),
        )
    };
    let mut reader = payload;
    let value = if as_json {
        ciborium::de::from_reader_with_recursion_limit::<Value, _>(
            &mut reader,
            CBOR_RECURSION_LIMIT,
        )
        .map_err(|e| not_cbor("not CBOR that a JSON Schema can check", &e))?
    } else {
        ciborium::de::from_reader_with_recursion_limit::<ciborium::Value, _>(
            &mut reader,
            CBOR_RECURSION_LIMIT,
        )
        .map_err(|e| not_cbor("not one CBOR item", &e))?;
        Value::Null
    };
    if !reader.is_empty() {
        return Err(violation(
            "not_cbor",
            format!("{} bytes follow the CBOR item", reader.len()),
        ));
    }
    Ok(value)
}

/// The rules of a node's joined topics; a joined topic without an entry is `text`.
#[derive(Debug, Default, Clone)]
pub struct TopicRules {
    rules: BTreeMap<String, Arc<TopicRule>>,
}

/// A topic and its rule, as `GET /v1/topics` and the status show them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicView {
    pub topic: String,
    pub content_type: ContentType,
    /// `null`: only the node's `max_message_size` applies.
    pub max_bytes: Option<usize>,
    pub schema_file: Option<String>,
    pub schema: Option<Value>,
}

impl TopicRules {
    /// Rules by topic.
    pub fn new(rules: BTreeMap<String, TopicRule>) -> Self {
        Self {
            rules: rules.into_iter().map(|(t, r)| (t, Arc::new(r))).collect(),
        }
    }

    /// The rule of `topic`, if it has one.
    pub fn get(&self, topic: &str) -> Option<&TopicRule> {
        self.rules.get(topic).map(|r| &**r)
    }

    /// The content type of `topic`.
    pub fn content_type(&self, topic: &str) -> ContentType {
        self.get(topic).map(|r| r.content_type).unwrap_or_default()
    }

    /// Checks a payload on a joined topic (`text` when it has no rule).
    pub fn check(&self, topic: &str, payload: &[u8]) -> Result<(), Violation> {
        match self.get(topic) {
            Some(rule) => rule.check(payload),
            None => std::str::from_utf8(payload)
                .map(|_| ())
                .map_err(|e| violation("invalid_utf8", format!("not UTF-8 text: {e}"))),
        }
    }

    /// How `topic` is shown.
    pub fn view(&self, topic: &str) -> TopicView {
        let rule = self.get(topic);
        TopicView {
            topic: topic.to_string(),
            content_type: rule.map(|r| r.content_type).unwrap_or_default(),
            max_bytes: rule.and_then(|r| r.max_bytes),
            schema_file: rule
                .and_then(|r| r.schema_file.as_ref())
                .map(|p| p.display().to_string()),
            schema: rule.and_then(|r| r.schema.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(spec: TopicRuleSpec, schema: Option<&str>) -> Result<TopicRule, String> {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = schema {
            std::fs::write(dir.path().join("s.json"), text).unwrap();
        }
        TopicRule::load(&spec, dir.path(), 1024)
    }

    const READING: &str = r#"{"type":"object","required":["sensor","value"],
        "properties":{"sensor":{"type":"string"},"value":{"type":"number"}},
        "additionalProperties":false}"#;

    fn json_rule() -> TopicRule {
        rule(
            TopicRuleSpec {
                max_bytes: Some(64),
                content_type: Some(ContentType::Json),
                schema: Some("s.json".into()),
            },
            Some(READING),
        )
        .unwrap()
    }

    fn cbor(v: &impl Serialize) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn json_rule_takes_valid_messages_and_names_each_fault() {
        let r = json_rule();
        assert_eq!(r.check(br#"{"sensor":"a","value":1.5}"#), Ok(()));
        let reason = |p: &[u8]| r.check(p).unwrap_err().reason;
        assert_eq!(reason(br#"{"sensor":"a","value":"x"}"#), "schema");
        assert_eq!(reason(br#"{"sensor":"a"}"#), "schema");
        assert_eq!(reason(br#"{"sensor":"a","value":1,"x":2}"#), "schema");
        assert_eq!(reason(b"{not json"), "not_json");
        assert_eq!(reason(b"\xff\xfe"), "not_json");
        assert_eq!(reason(&[b' '; 65]), "over_max_bytes");
        let e = r
            .check(br#"{"sensor":"a","value":"hot-secret"}"#)
            .unwrap_err();
        assert!(
            e.detail.contains("/value") && e.detail.contains("`type`"),
            "{}",
            e.detail
        );
        // The detail goes to logs and API answers: it never quotes the message.
        assert!(!e.detail.contains("hot-secret"), "{}", e.detail);
        let whole = r.check(br#"["very-secret"]"#).unwrap_err();
        assert!(!whole.detail.contains("very-secret"), "{}", whole.detail);
    }

    #[test]
    fn cbor_rule_checks_one_item_and_its_schema() {
        let r = rule(
            TopicRuleSpec {
                content_type: Some(ContentType::Cbor),
                schema: Some("s.json".into()),
                ..Default::default()
            },
            Some(READING),
        )
        .unwrap();
        let good = cbor(&serde_json::json!({"sensor": "a", "value": 2}));
        assert_eq!(r.check(&good), Ok(()));
        let bad = cbor(&serde_json::json!({"sensor": 3, "value": 2}));
        assert_eq!(r.check(&bad).unwrap_err().reason, "schema");
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(r.check(&trailing).unwrap_err().reason, "not_cbor");
        assert_eq!(
            r.check(&good[..good.len() - 1]).unwrap_err().reason,
            "not_cbor"
        );
        // Deep nesting is refused, not recursed into: 10,000 nested one-element arrays.
        let deep = vec![0x81u8; 10_000];
        assert_eq!(r.check(&deep).unwrap_err().reason, "not_cbor");
        let plain = rule(
            TopicRuleSpec {
                content_type: Some(ContentType::Cbor),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert_eq!(plain.check(&cbor(&vec![1u8, 2, 3])), Ok(()));
        assert_eq!(plain.check(&deep).unwrap_err().reason, "not_cbor");
        assert_eq!(plain.check(&[0xff]).unwrap_err().reason, "not_cbor");
    }

    #[test]
    fn text_and_bytes() {
        let rules = TopicRules::new(BTreeMap::from([(
            "raw".to_string(),
            rule(
                TopicRuleSpec {
                    content_type: Some(ContentType::Bytes),
                    ..Default::default()
                },
                None,
            )
            .unwrap(),
        )]));
        assert_eq!(rules.check("raw", b"\xff\x00"), Ok(()));
        assert_eq!(rules.check("chat", b"hello"), Ok(()));
        assert_eq!(
            rules.check("chat", b"\xff").unwrap_err().reason,
            "invalid_utf8"
        );
        assert_eq!(rules.view("chat").content_type, ContentType::Text);
        assert!(!rules.content_type("raw").is_text());
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let json = |schema: Option<&str>| {
            rule(
                TopicRuleSpec {
                    content_type: Some(ContentType::Json),
                    schema: Some("s.json".into()),
                    ..Default::default()
                },
                schema,
            )
            .unwrap_err()
        };
        assert!(
            json(None).contains("cannot read the schema file"),
            "{}",
            json(None)
        );
        assert!(json(Some("{nope")).contains("is not JSON"));
        let invalid = json(Some(r#"{"type": 12}"#));
        assert!(invalid.contains("not a valid JSON Schema"), "{invalid}");
        let remote = json(Some(r#"{"$ref": "https://example.com/s.json"}"#));
        assert!(remote.contains("self-contained"), "{remote}");
        let file = json(Some(r#"{"$ref": "other.json"}"#));
        assert!(
            file.contains("not a valid JSON Schema") && file.contains("other.json"),
            "{file}"
        );
        let text_schema = rule(
            TopicRuleSpec {
                schema: Some("s.json".into()),
                ..Default::default()
            },
            Some(READING),
        )
        .unwrap_err();
        assert!(
            text_schema.contains("json or cbor, not text"),
            "{text_schema}"
        );
        let big = rule(
            TopicRuleSpec {
                max_bytes: Some(2048),
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
        assert!(big.contains("over max_message_size"), "{big}");
        // A local `$ref` inside the schema is fine.
        let local = rule(
            TopicRuleSpec {
                content_type: Some(ContentType::Json),
                schema: Some("s.json".into()),
                ..Default::default()
            },
            Some(r##"{"$defs":{"n":{"type":"number"}},"$ref":"#/$defs/n"}"##),
        )
        .unwrap();
        assert_eq!(local.check(b"3"), Ok(()));
        assert_eq!(local.check(b"\"x\"").unwrap_err().reason, "schema");
    }
}
