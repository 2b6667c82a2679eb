//! The Secret holding every node's identity key.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::{ClusterNames, child_meta};
use crate::crd::MpcCluster;
use crate::keys::ClusterKeys;

/// The identity Secret: one entry `<pod>.key` per node, in the node's key file format.
pub fn build(mc: &MpcCluster, names: &ClusterNames, keys: &ClusterKeys) -> Secret {
    Secret {
        metadata: child_meta(mc, names, names.secret()),
        type_: Some("Opaque".into()),
        data: Some(
            keys.entries()
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    }
}
