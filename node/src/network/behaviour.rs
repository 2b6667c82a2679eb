//! The libp2p behaviour of a node and how it is configured.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, connection_limits, gossipsub, identify, kad, ping, request_response};

use super::mpc_codec::MpcCodec;
use crate::mpc::wire::MPC_PROTOCOL;

/// Kademlia protocol id: our own DHT, not the public IPFS one.
pub const KAD_PROTOCOL: &str = "/p2p-mpc/kad/1.0.0";
/// Identify protocol version string (peers of other networks are told apart by it).
pub const IDENTIFY_PROTOCOL: &str = "/p2p-mpc/id/1.0.0";
/// Room for what gossipsub adds to a payload (author, sequence number, topic, signature,
/// author key, framing) on top of the application payload limit.
pub const GOSSIP_ENVELOPE_OVERHEAD: usize = 64 * 1024;

/// Everything a node speaks.
#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    /// Refuses connections of peers outside the cluster roster (first, so a stranger's
    /// connection is refused before any other behaviour sets up for it).
    pub door: super::door::Door,
    /// Caps on established and pending connections.
    pub limits: connection_limits::Behaviour,
    /// Pub/sub.
    pub gossipsub: gossipsub::Behaviour,
    /// Peer discovery.
    pub kademlia: kad::Behaviour<kad::store::MemoryStore>,
    /// Exchange of listen addresses and protocols.
    pub identify: identify::Behaviour,
    /// Liveness.
    pub ping: ping::Behaviour,
    /// MPC protocol messages, point to point (`/p2p-mpc/mpc/1`).
    /// Requests arrive undecoded ([`super::mpc_codec::RawMpc`]).
    pub mpc: request_response::Behaviour<MpcCodec>,
}

/// Settings the behaviour is built from.
#[derive(Debug, Clone)]
pub struct BehaviourSettings {
    /// Largest accepted payload of one gossip message, in bytes.
    pub max_message_size: usize,
    /// Largest number of established connections.
    pub max_connections: u32,
    /// The cluster roster, if any: only its members get a connection.
    pub roster: Option<std::sync::Arc<crate::roster::Roster>>,
    /// The bytes of inbound MPC requests being read, on all connections.
    pub mpc_read_budget: std::sync::Arc<super::mpc_codec::ReadBudget>,
}

/// Concurrent `/p2p-mpc/mpc/1` streams on one connection, both directions together. A
/// stream lasts from its open to the acknowledgement, which the session layer gives at once;
/// 64 signatures in flight between two nodes need at most about 2 × 64. With 4 connections
/// per peer, a peer can hold at most 4 × 128 × 256 KiB of unfinished requests here, and the
/// read budget bounds all peers together.
pub const MPC_STREAMS_PER_CONNECTION: usize = 128;

/// Established connections of one peer.
pub const CONNECTIONS_PER_PEER: u32 = 4;

/// A gossip message id as the libp2p pubsub specification defines it and go-libp2p-pubsub
/// computes it by default: the author's peer id (its bytes) followed by the 8-byte
/// big-endian sequence number. Ids must be the same bytes in two implementations for IHAVE,
/// IWANT and IDONTWANT to name the same messages: rust-libp2p's own default writes the two
/// as text (base58 and decimal), and js-libp2p's takes the author's public key instead of
/// its peer id (for Ed25519, the peer id without its 2-byte multihash header), so with js
/// peers only the messages themselves line up. The author's signature covers
/// both parts, so a forged message cannot take the id of a real one (gossipsub checks the
/// signature before it looks the id up).
pub fn message_id(message: &gossipsub::Message) -> gossipsub::MessageId {
    let mut id = message
        .source
        .map(|author| author.to_bytes())
        .unwrap_or_default();
    // Strict validation lets an empty sequence number through (the node then refuses the
    // message): its id is the author alone, which no numbered message's id can be.
    if let Some(seq) = message.sequence_number {
        id.extend_from_slice(&seq.to_be_bytes());
    }
    gossipsub::MessageId::from(id)
}

/// Builds the behaviour for `key`. Gossipsub registers its own metrics in `registry` (the
/// libp2p registry, under `libp2p_gossipsub_`): among them the messages it refuses itself
/// before the node sees them (`invalid_messages_per_topic`).
pub fn build(
    key: &Keypair,
    settings: &BehaviourSettings,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<NodeBehaviour, String> {
    let peer_id = key.public().to_peer_id();

    let pending = (settings.max_connections / 4).clamp(8, 256);
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(settings.max_connections))
            .with_max_pending_incoming(Some(pending))
            .with_max_pending_outgoing(Some(pending))
            .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER)),
    );

    let gossip_config = gossipsub::ConfigBuilder::default()
        // The libp2p default: every message carries its author, a sequence number and the
        // author's signature, and a message without them or with a bad signature is refused.
        .validation_mode(gossipsub::ValidationMode::Strict)
        .max_transmit_size(settings.max_message_size + GOSSIP_ENVELOPE_OVERHEAD)
        .message_id_fn(message_id)
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(700))
        .build()
        .map_err(|e| format!("gossipsub configuration: {e}"))?;
    let mut gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
    )
    .map_err(|e| format!("gossipsub: {e}"))?
    .with_metrics(
        registry.sub_registry_with_prefix("libp2p_gossipsub"),
        gossipsub::MetricsConfig::default(),
    );
    // Gossipsub accounts for the messages it refuses itself (a bad or missing signature,
    // say) only while peer scoring is active: it is, with every weight 0, so each
    // peer's score stays 0 and nobody is graylisted. Real weights and thresholds are the
    // reputation work still to come; this only makes the refusals visible in
    // `libp2p_gossipsub_invalid_messages_per_topic_total`.
    gossipsub
        .with_peer_score(
            gossipsub::PeerScoreParams {
                app_specific_weight: 0.0,
                ip_colocation_factor_weight: 0.0,
                behaviour_penalty_weight: 0.0,
                slow_peer_weight: 0.0,
                ..Default::default()
            },
            gossipsub::PeerScoreThresholds::default(),
        )
        .map_err(|e| format!("gossipsub peer scoring: {e}"))?;

    let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    kad_config
        .set_periodic_bootstrap_interval(Some(Duration::from_secs(30)))
        .set_query_timeout(Duration::from_secs(30));
    let mut kademlia =
        kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
    kademlia.set_mode(Some(kad::Mode::Server));

    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
            .with_agent_version(format!("p2p-mpc/{}", env!("CARGO_PKG_VERSION")))
            .with_push_listen_addr_updates(true),
    );

    let ping = ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(15)));

    let mpc = request_response::Behaviour::with_codec(
        MpcCodec::new(settings.mpc_read_budget.clone()),
        [(
            StreamProtocol::new(MPC_PROTOCOL),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(10))
            .with_max_concurrent_streams(MPC_STREAMS_PER_CONNECTION),
    );

    Ok(NodeBehaviour {
        door: super::door::Door::new(settings.roster.clone()),
        mpc,
        limits,
        gossipsub,
        kademlia,
        identify,
        ping,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(source: Option<libp2p::PeerId>, seq: Option<u64>) -> gossipsub::Message {
        gossipsub::Message {
            source,
            data: b"text".to_vec(),
            sequence_number: seq,
            topic: gossipsub::IdentTopic::new("chat").hash(),
        }
    }

    #[test]
    fn message_ids_are_the_author_then_the_big_endian_sequence_number() {
        let author = Keypair::generate_ed25519().public().to_peer_id();
        let id = message_id(&message(Some(author), Some(0x0102_0304_0506_0708)));
        let mut want = author.to_bytes();
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(id.0, want);
        // The data is not part of the id (the signature binds it to author and number).
        let mut other = message(Some(author), Some(0x0102_0304_0506_0708));
        other.data = b"else".to_vec();
        assert_eq!(message_id(&other), id);
        // A message without a sequence number cannot take the id of number 0.
        let none = message_id(&message(Some(author), None));
        assert_eq!(none.0, author.to_bytes());
        assert_ne!(none, message_id(&message(Some(author), Some(0))));
    }
}
