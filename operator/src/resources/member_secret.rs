//! The Secret of one member: its identity key, its node config and the cluster roster.
//!
//! Only that member's pod mounts it, so a compromised pod holds one identity, not all; and
//! the roster sits where only those who may read keys can change it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::config::{CONFIG_FILE, KEY_FILE, MEMBERS_FILE};
use super::{ClusterNames, MEMBER_LABEL, child_meta};
use crate::crd::MpcCluster;

/// What goes into member `i`'s Secret.
pub struct MemberFiles<'a> {
    /// The identity key, in the node's key file format.
    pub key: &'a [u8],
    /// `node.yml` of this member.
    pub config: String,
    /// The roster, shared by every member.
    pub members: String,
    /// The JSON Schemas of the topic rules, by file name (`config::schema_files`).
    pub schemas: Vec<(String, String)>,
}

/// The Secret `<cluster>-node-<i>`.
pub fn build(mc: &MpcCluster, names: &ClusterNames, i: i32, files: MemberFiles<'_>) -> Secret {
    let mut metadata = child_meta(mc, names, names.member_secret(i));
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(MEMBER_LABEL.into(), i.to_string());
    }
    let mut data = BTreeMap::from([
        (KEY_FILE.to_string(), ByteString(files.key.to_vec())),
        (
            CONFIG_FILE.to_string(),
            ByteString(files.config.into_bytes()),
        ),
        (
            MEMBERS_FILE.to_string(),
            ByteString(files.members.into_bytes()),
        ),
    ]);
    for (name, text) in files.schemas {
        data.insert(name, ByteString(text.into_bytes()));
    }
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The identity key stored in a member's Secret, if any.
pub fn key_of(secret: &Secret) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_FILE))
        .map(|b| b.0.clone())
}
