//! Node identity keys of a cluster, one per StatefulSet ordinal.
//!
//! Keys use the node's own key file format (`p2p_mpc_node::identity`), so a pod reads its
//! mounted key exactly as a node started by hand reads its key file. A key, once made, is
//! never replaced: scaling up adds keys, scaling down keeps them for a later scale-up.

use std::collections::BTreeMap;
use std::path::Path;

use libp2p::PeerId;
use p2p_mpc_node::identity;

/// A problem with stored keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("identity Secret entry `{entry}` is not a valid node key: {reason}")]
    Corrupt { entry: String, reason: String },
}

/// The Secret entry of the key of `pod` (e.g. `mynet-2.key`).
pub fn entry_name(pod: &str) -> String {
    format!("{pod}.key")
}

/// The pod name of ordinal `i` of cluster `name`.
pub fn pod_name(name: &str, i: i32) -> String {
    format!("{name}-{i}")
}

/// The keys of a cluster: Secret entry name to key file bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterKeys {
    entries: BTreeMap<String, Vec<u8>>,
}

impl ClusterKeys {
    /// Keys as found in the Secret (entries that are not keys are ignored).
    pub fn from_entries(entries: BTreeMap<String, Vec<u8>>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .filter(|(k, _)| k.ends_with(".key"))
                .collect(),
        }
    }

    /// Adds a fresh key for every pod of `0..replicas` that has none; returns the pods added.
    pub fn ensure(&mut self, name: &str, replicas: i32) -> Vec<String> {
        let mut added = Vec::new();
        for i in 0..replicas {
            let pod = pod_name(name, i);
            self.entries.entry(entry_name(&pod)).or_insert_with(|| {
                added.push(pod.clone());
                identity::encode_keypair(&identity::generate())
            });
        }
        added
    }

    /// The peer id of `pod`'s key.
    pub fn peer_id(&self, pod: &str) -> Result<Option<PeerId>, KeyError> {
        let entry = entry_name(pod);
        let Some(bytes) = self.entries.get(&entry) else {
            return Ok(None);
        };
        identity::decode_keypair(Path::new(&entry), bytes)
            .map(|k| Some(k.public().to_peer_id()))
            .map_err(|e| KeyError::Corrupt {
                entry,
                reason: e.to_string(),
            })
    }

    /// All entries, for the Secret.
    pub fn entries(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_adds_keys_and_never_replaces_them() {
        let mut keys = ClusterKeys::default();
        assert_eq!(keys.ensure("net", 3), vec!["net-0", "net-1", "net-2"]);
        let before = keys.clone();
        assert!(
            keys.ensure("net", 3).is_empty(),
            "nothing new at the same size"
        );
        assert_eq!(keys.ensure("net", 5), vec!["net-3", "net-4"]);
        for (k, v) in before.entries() {
            assert_eq!(keys.entries()[k], *v, "key {k} unchanged");
        }
        // Scaling down keeps every key.
        assert!(keys.ensure("net", 1).is_empty());
        assert_eq!(keys.entries().len(), 5);
        let p0 = keys.peer_id("net-0").unwrap().unwrap();
        assert_eq!(p0, before.peer_id("net-0").unwrap().unwrap());
        assert_ne!(p0, keys.peer_id("net-1").unwrap().unwrap());
    }

    #[test]
    fn corrupt_entry_is_named() {
        let keys = ClusterKeys::from_entries(BTreeMap::from([(
            "net-0.key".to_string(),
            b"junk".to_vec(),
        )]));
        let err = keys.peer_id("net-0").unwrap_err().to_string();
        assert!(err.contains("net-0.key"), "{err}");
        assert!(!err.contains("junk"));
    }
}
