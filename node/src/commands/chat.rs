//! Chat on stdin/stdout: typed lines are published, received messages are printed.
//!
//! A line is published on the first configured topic; `topic> text` picks another topic.
//! End of stdin only ends chat input: a node in a container has no stdin and keeps running.

use tokio::io::{AsyncBufReadExt, BufReader};
use tracing::{info, warn};

use crate::network::{GossipMessage, NetworkClient};
use crate::node::NodeIo;

/// Chat for a running node: prints every message it receives and publishes every line
/// typed on stdin, until stdin ends (the printing goes on after).
pub async fn run(io: NodeIo) {
    let NodeIo {
        network,
        topics,
        mut messages,
    } = io;
    tokio::spawn(async move {
        while let Some(msg) = messages.recv().await {
            println!("{}", format_message(&msg));
        }
    });
    read_stdin(network, topics).await;
}

/// Splits a typed line into (topic, text): `topic> text` names the topic, any other line
/// goes to `default_topic`. A prefix with whitespace in it is text, not a topic.
pub fn parse_line<'a>(line: &'a str, default_topic: Option<&'a str>) -> Option<(&'a str, &'a str)> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return None;
    }
    if let Some((topic, text)) = line.split_once("> ")
        && !topic.is_empty()
        && !topic.chars().any(char::is_whitespace)
    {
        return Some((topic, text));
    }
    default_topic.map(|t| (t, line))
}

/// The line printed for a received message.
pub fn format_message(msg: &GossipMessage) -> String {
    let source = msg
        .source
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into());
    match std::str::from_utf8(&msg.data) {
        Ok(text) => format!("[{}] {}: {}", msg.topic, source, text),
        Err(_) => {
            use base64::Engine as _;
            format!(
                "[{}] {}: ({} bytes, base64) {}",
                msg.topic,
                source,
                msg.data.len(),
                base64::engine::general_purpose::STANDARD.encode(&msg.data)
            )
        }
    }
}

/// Reads stdin until it ends, publishing each line.
pub async fn read_stdin(network: NetworkClient, topics: Vec<String>) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let default_topic = topics.first().cloned();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => {
                info!("stdin closed; chat input is off, the node keeps running");
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot read stdin; chat input is off, the node keeps running");
                return;
            }
        };
        let Some((topic, text)) = parse_line(&line, default_topic.as_deref()) else {
            if default_topic.is_none() && !line.trim().is_empty() {
                eprintln!(
                    "chat: no topic configured; start with --topic NAME or type `topic> text`"
                );
            }
            continue;
        };
        if let Err(e) = network.publish(topic, text.as_bytes().to_vec()).await {
            eprintln!("chat: not sent on `{topic}`: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_pick_topics() {
        assert_eq!(parse_line("hello", Some("a")), Some(("a", "hello")));
        assert_eq!(
            parse_line("b> hi there", Some("a")),
            Some(("b", "hi there"))
        );
        assert_eq!(
            parse_line("two words> x", Some("a")),
            Some(("a", "two words> x"))
        );
        assert_eq!(parse_line("   ", Some("a")), None);
        assert_eq!(parse_line("hello", None), None);
    }
}
