//! Client signing keys (`p2p-mpc client ...`): the Ed25519 keys with which API callers
//! authorize signing requests under a key's policy.
//!
//! A client key file holds the 32-byte secret seed as 64 hex digits on one line, mode 0600,
//! written atomically and never overwritten. The secret never appears in output or errors.

use std::path::Path;

use ed25519_dalek::SigningKey;

use crate::atomic_file::{Existing, write};
use crate::mpc::policy::{self, Authorization};

/// Reads a client key file; the error names the file, never its content.
pub fn read(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read client key {}: {e}", path.display()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            format!(
                "{} is not a client key file (expected 64 hex digits, as `p2p-mpc client keygen` writes)",
                path.display()
            )
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Makes a new client key at `path` (refusing to overwrite) and returns its public key, hex.
pub fn generate(path: &Path) -> Result<String, String> {
    let key = policy::generate_client_key();
    let text = format!("{}\n", hex::encode(key.to_bytes()));
    write(path, text.as_bytes(), Existing::Keep).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("{} exists already; not overwritten", path.display())
        } else {
            format!("cannot write {}: {e}", path.display())
        }
    })?;
    Ok(public_key(&key))
}

/// The public key of `key`, hex (what a policy's `clients` lists).
pub fn public_key(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

/// Authorizes signing `message` with `key_id` through `coordinator`, valid for `ttl_secs`.
pub fn authorize(
    key: &SigningKey,
    key_id: &str,
    coordinator: &libp2p::PeerId,
    message: &[u8],
    ttl_secs: u64,
) -> Authorization {
    policy::authorize(key, key_id, coordinator, message, policy::now() + ttl_secs)
}

/// Approves `what` for `key_id` with every client key file that `args` names.
pub fn approve_with_files(
    args: &crate::cli::AuthorizeArgs,
    key_id: &str,
    what: policy::Approves<'_>,
) -> Result<Vec<Authorization>, String> {
    args.client_keys
        .iter()
        .map(|file| {
            Ok(policy::approve(
                &read(file)?,
                key_id,
                what,
                policy::now() + args.ttl,
            ))
        })
        .collect()
}

/// Authorizes signing `message` with `key_id` through `coordinator` with every client key
/// file that `args` names.
pub fn authorize_with_files(
    args: &crate::cli::AuthorizeArgs,
    key_id: &str,
    coordinator: libp2p::PeerId,
    message: &[u8],
) -> Result<Vec<Authorization>, String> {
    let what = policy::Approves::Signing {
        message,
        coordinator,
    };
    approve_with_files(args, key_id, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_0600_refuses_to_overwrite_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.key");
        let public = generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(public_key(&read(&path).unwrap()), public);
        assert!(generate(&path).unwrap_err().contains("not overwritten"));
        assert_eq!(public_key(&read(&path).unwrap()), public);
        std::fs::write(&path, "garbage").unwrap();
        let err = read(&path).unwrap_err();
        assert!(
            err.contains("not a client key file") && !err.contains("garbage"),
            "{err}"
        );
    }
}
