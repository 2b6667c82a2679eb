//! The API token: the bearer token every `/v1` request to a node needs.
//!
//! Made once (32 random bytes, hex) into `<cluster>-api-token` unless the spec names a Secret
//! of the user's; never changed by the operator, so clients keep working across reconciles.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand_core::{OsRng, RngCore};

use super::{ClusterNames, child_meta};
use crate::crd::MpcCluster;

/// The key of the token in its Secret.
pub const TOKEN_KEY: &str = "token";
/// Where the pods mount the token Secret.
pub const TOKEN_DIR: &str = "/var/run/p2p-mpc/api";

/// The name of the Secret holding the cluster's API token: the spec's, else the operator's.
pub fn secret_name(mc: &MpcCluster, names: &ClusterNames) -> String {
    mc.spec
        .api
        .token_secret
        .clone()
        .unwrap_or_else(|| names.api_token_secret())
}

/// A fresh Secret `<cluster>-api-token` with a random token.
pub fn generate(mc: &MpcCluster, names: &ClusterNames) -> Secret {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    Secret {
        metadata: child_meta(mc, names, names.api_token_secret()),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(hex::encode(bytes).into_bytes()),
        )])),
        ..Default::default()
    }
}

/// Why a Secret cannot serve as the API token (none: it can).
pub fn unusable(secret: &Secret) -> Option<String> {
    match secret.data.as_ref().and_then(|d| d.get(TOKEN_KEY)) {
        None => Some(format!("has no key `{TOKEN_KEY}`")),
        Some(t) if String::from_utf8_lossy(&t.0).trim().is_empty() => {
            Some(format!("its key `{TOKEN_KEY}` is empty"))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::cluster;

    #[test]
    fn generated_tokens_are_random_hex_and_checked() {
        let mc = cluster("net", 3);
        let names = ClusterNames::of(&mc, "cluster.local");
        let a = generate(&mc, &names);
        let b = generate(&mc, &names);
        assert_eq!(a.metadata.name.as_deref(), Some("net-api-token"));
        let token = |s: &Secret| s.data.as_ref().unwrap()[TOKEN_KEY].0.clone();
        assert_eq!(token(&a).len(), 64);
        assert!(hex::decode(token(&a)).is_ok());
        assert_ne!(token(&a), token(&b));
        assert_eq!(unusable(&a), None);
        let mut empty = a.clone();
        empty.data = Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(b" \n".to_vec()),
        )]));
        assert!(unusable(&empty).unwrap().contains("empty"));
        empty.data = None;
        assert!(unusable(&empty).unwrap().contains("no key `token`"));
        assert_eq!(secret_name(&mc, &names), "net-api-token");
    }
}
