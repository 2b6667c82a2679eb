//! The last messages received per topic, served by `GET /v1/topics/{topic}/messages`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::network::GossipMessage;
use crate::network::topic_rules::TopicRules;

/// Messages kept per topic.
pub const MESSAGES_PER_TOPIC: usize = 256;

/// A received message as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredMessage {
    pub message_id: String,
    /// Author peer id.
    pub source: Option<String>,
    /// The payload as text, on `text` and `json` topics (their rule made sure it is UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The payload in standard base64, on `cbor` and `bytes` topics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Milliseconds since the Unix epoch, when this node received it.
    pub received_at_ms: u64,
}

/// Bounded per-topic buffers. Only topics the node joined receive messages, so the number of
/// buffers is bounded by the configuration, not by peers.
#[derive(Default)]
pub struct MessageLog {
    topics: Mutex<HashMap<String, VecDeque<StoredMessage>>>,
    /// Which topics carry text.
    rules: TopicRules,
}

impl MessageLog {
    /// A log that shows each topic's payloads as its rule's content type says.
    pub fn new(rules: TopicRules) -> Self {
        Self {
            topics: Mutex::default(),
            rules,
        }
    }

    /// Records a received message, dropping the oldest of its topic when full.
    pub fn push(&self, msg: &GossipMessage) {
        use base64::Engine as _;
        let text = self.rules.content_type(&msg.topic).is_text();
        let stored = StoredMessage {
            message_id: msg.id.clone(),
            source: msg.source.map(|p| p.to_string()),
            data: text.then(|| String::from_utf8_lossy(&msg.data).into_owned()),
            data_base64: (!text)
                .then(|| base64::engine::general_purpose::STANDARD.encode(&msg.data)),
            received_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let buf = topics.entry(msg.topic.clone()).or_default();
        if buf.len() == MESSAGES_PER_TOPIC {
            buf.pop_front();
        }
        buf.push_back(stored);
    }

    /// The buffered messages of `topic`, oldest first.
    pub fn recent(&self, topic: &str) -> Vec<StoredMessage> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics
            .get(topic)
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_latest_messages() {
        let log = MessageLog::default();
        for i in 0..(MESSAGES_PER_TOPIC + 10) {
            log.push(&GossipMessage {
                topic: "t".into(),
                source: None,
                id: i.to_string(),
                data: format!("m{i}").into_bytes(),
            });
        }
        let recent = log.recent("t");
        assert_eq!(recent.len(), MESSAGES_PER_TOPIC);
        assert_eq!(recent[0].data.as_deref(), Some("m10"));
        assert_eq!(recent[0].data_base64, None);
        assert!(log.recent("other").is_empty());
    }
}
