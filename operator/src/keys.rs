//! Node identity keys of a cluster, one per member ordinal.
//!
//! Keys use the node's own key file format (`p2p_mpc_node::identity`), so a pod reads its
//! mounted key exactly as a node started by hand reads its key file. A key, once made, is
//! never replaced: scaling up adds keys, scaling down keeps them (in the member's Secret) for
//! a later scale-up.

use std::collections::BTreeMap;
use std::path::Path;

use libp2p::PeerId;
use p2p_mpc_node::identity;

/// A problem with stored keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("identity key of {member} (Secret {secret}) is not a valid node key: {reason}")]
    Corrupt {
        member: String,
        secret: String,
        reason: String,
    },
}

/// The keys of a cluster: member ordinal to key file bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterKeys {
    keys: BTreeMap<i32, Vec<u8>>,
}

/// Entry name of member `i`'s key in the one Secret of every key of the earlier layout
/// (`<cluster>-identity`, entries `<cluster>-<i>.key`).
pub fn legacy_entry(cluster: &str, i: i32) -> String {
    format!("{cluster}-{i}.key")
}

impl ClusterKeys {
    /// The keys found in the legacy all-keys Secret of cluster `name` (entries that are not
    /// member keys are ignored).
    pub fn from_legacy_entries(name: &str, entries: &BTreeMap<String, Vec<u8>>) -> Self {
        let prefix = format!("{name}-");
        let keys = entries
            .iter()
            .filter_map(|(entry, bytes)| {
                let ordinal = entry.strip_prefix(&prefix)?.strip_suffix(".key")?;
                let i: i32 = ordinal.parse().ok().filter(|i| *i >= 0)?;
                (ordinal == i.to_string()).then(|| (i, bytes.clone()))
            })
            .collect();
        Self { keys }
    }

    /// Records the key of member `i` as found in its own Secret; it wins over any other copy.
    pub fn insert_existing(&mut self, i: i32, bytes: Vec<u8>) {
        self.keys.insert(i, bytes);
    }

    /// Adds a fresh key for every member of `0..replicas` that has none; returns those added.
    pub fn ensure(&mut self, replicas: i32) -> Vec<i32> {
        let mut added = Vec::new();
        for i in 0..replicas {
            self.keys.entry(i).or_insert_with(|| {
                added.push(i);
                identity::encode_keypair(&identity::generate())
            });
        }
        added
    }

    /// The key file bytes of member `i`.
    pub fn get(&self, i: i32) -> Option<&[u8]> {
        self.keys.get(&i).map(Vec::as_slice)
    }

    /// Every member ordinal with a key.
    pub fn ordinals(&self) -> impl Iterator<Item = i32> + '_ {
        self.keys.keys().copied()
    }

    /// The peer id of member `i`'s key (`member` and `secret` name it in an error).
    pub fn peer_id(&self, i: i32, member: &str, secret: &str) -> Result<Option<PeerId>, KeyError> {
        let Some(bytes) = self.keys.get(&i) else {
            return Ok(None);
        };
        identity::decode_keypair(Path::new(member), bytes)
            .map(|k| Some(k.public().to_peer_id()))
            .map_err(|e| KeyError::Corrupt {
                member: member.to_string(),
                secret: secret.to_string(),
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_adds_keys_and_never_replaces_them() {
        let mut keys = ClusterKeys::default();
        assert_eq!(keys.ensure(3), vec![0, 1, 2]);
        let before = keys.clone();
        assert!(keys.ensure(3).is_empty(), "nothing new at the same size");
        assert_eq!(keys.ensure(5), vec![3, 4]);
        for i in before.ordinals() {
            assert_eq!(keys.get(i), before.get(i), "key {i} unchanged");
        }
        // Scaling down keeps every key.
        assert!(keys.ensure(1).is_empty());
        assert_eq!(keys.ordinals().count(), 5);
        let p0 = keys.peer_id(0, "m0", "s0").unwrap().unwrap();
        assert_eq!(p0, before.peer_id(0, "m0", "s0").unwrap().unwrap());
        assert_ne!(p0, keys.peer_id(1, "m1", "s1").unwrap().unwrap());
    }

    #[test]
    fn legacy_entries_are_read_by_ordinal() {
        let key = identity::encode_keypair(&identity::generate());
        let entries = BTreeMap::from([
            ("net-0.key".to_string(), key.clone()),
            ("net-12.key".to_string(), key.clone()),
            ("net-01.key".to_string(), key.clone()),
            ("other-1.key".to_string(), key.clone()),
            ("net-x.key".to_string(), key.clone()),
            ("README".to_string(), key.clone()),
        ]);
        let keys = ClusterKeys::from_legacy_entries("net", &entries);
        assert_eq!(keys.ordinals().collect::<Vec<_>>(), vec![0, 12]);
        let mut keys = keys;
        let other = identity::encode_keypair(&identity::generate());
        keys.insert_existing(0, other.clone());
        assert_eq!(
            keys.get(0),
            Some(other.as_slice()),
            "a member's own Secret wins"
        );
    }

    #[test]
    fn corrupt_key_is_named_without_its_bytes() {
        let mut keys = ClusterKeys::default();
        keys.insert_existing(0, b"junk".to_vec());
        let err = keys
            .peer_id(0, "net-0", "net-node-0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("net-0") && err.contains("net-node-0"), "{err}");
        assert!(!err.contains("junk"));
    }
}
