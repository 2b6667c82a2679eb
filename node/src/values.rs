//! Checks of single values that the command line, the config file and the API share: topic
//! names, the gossip size limit, peer multiaddrs. Each returns the value or an error that
//! says what was wrong.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// A peer address that ends in `/p2p/<peer id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub peer_id: PeerId,
    pub addr: Multiaddr,
}

/// Parses a multiaddr that must name its peer (`.../p2p/<peer id>`).
pub fn parse_peer_multiaddr(s: &str) -> Result<(PeerId, Multiaddr), String> {
    let addr: Multiaddr = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a valid multiaddr ({e}); expected e.g. /ip4/10.0.0.1/tcp/4001/p2p/12D3KooW..."))?;
    match addr.iter().last() {
        Some(Protocol::P2p(peer_id)) => Ok((peer_id, addr)),
        _ => Err(format!(
            "`{s}` does not end in /p2p/<peer id>; a bootnode or seed node must name its peer, e.g. /ip4/10.0.0.1/tcp/4001/p2p/12D3KooW..."
        )),
    }
}

/// A topic name: non-empty, at most 256 bytes, no control characters.
pub fn parse_topic(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a topic name must not be empty".into());
    }
    if s.len() > 256 {
        return Err(format!(
            "a topic name is at most 256 bytes, this one has {}",
            s.len()
        ));
    }
    if s.chars().any(char::is_control) {
        return Err("a topic name must not contain control characters".into());
    }
    Ok(s.to_string())
}

/// Smallest and largest accepted `--max-message-size`.
pub const MESSAGE_SIZE_RANGE: std::ops::RangeInclusive<usize> = 1024..=(64 * 1024 * 1024);

/// Parses `--max-message-size`, checking [`MESSAGE_SIZE_RANGE`].
pub fn parse_max_message_size(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of bytes"))?;
    check_max_message_size(n)
}

/// Checks a message size limit against [`MESSAGE_SIZE_RANGE`].
pub fn check_max_message_size(n: usize) -> Result<usize, String> {
    if MESSAGE_SIZE_RANGE.contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is out of range: expected {} to {} bytes",
            MESSAGE_SIZE_RANGE.start(),
            MESSAGE_SIZE_RANGE.end()
        ))
    }
}
