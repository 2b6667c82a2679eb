//! The node's libp2p identity key: loaded from, or created in, a protobuf-encoded key file.
//!
//! The operator writes keys in the same format through [`encode_keypair`], so a key made in
//! Kubernetes and one made by `p2p-mpc keygen` are interchangeable.

use std::fs::{self};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

/// A problem with an identity key file. Messages name the path, never the key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read identity key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "identity key file {path} is not a libp2p protobuf-encoded keypair ({reason}); the file was left untouched"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write identity key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("identity key file {path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
}

/// How the identity was obtained, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// Read from an existing key file.
    Loaded,
    /// Generated and saved because the key file did not exist.
    Created,
    /// Generated in memory only (no key file configured).
    Ephemeral,
}

/// Generates a new Ed25519 keypair.
pub fn generate() -> Keypair {
    Keypair::generate_ed25519()
}

/// The key file bytes of a keypair (libp2p protobuf encoding).
pub fn encode_keypair(key: &Keypair) -> Vec<u8> {
    key.to_protobuf_encoding()
        .expect("Ed25519 keypairs always have a protobuf encoding")
}

/// Decodes key file bytes; `path` is only used in the error.
pub fn decode_keypair(path: &Path, bytes: &[u8]) -> Result<Keypair, IdentityError> {
    Keypair::from_protobuf_encoding(bytes).map_err(|e| IdentityError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads a key file.
pub fn read_keypair(path: &Path) -> Result<Keypair, IdentityError> {
    let bytes = fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o007 != 0
    {
        // Group access is left alone: Kubernetes grants a pod's fsGroup read access to its
        // mounted key, which is how a non-root node reads it.
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "identity key file is accessible to other users; run chmod 600 on it"
        );
    }
    decode_keypair(path, &bytes)
}

/// Writes a new key file (mode 0600, parent directories created with 0700), atomically; never
/// replaces an existing file (see `crate::atomic_file`).
pub fn write_new_keypair(path: &Path, key: &Keypair) -> Result<(), IdentityError> {
    let werr = |source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(werr)?;
    }
    match crate::atomic_file::write(
        path,
        &encode_keypair(key),
        crate::atomic_file::Existing::Keep,
    ) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(IdentityError::Exists {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(werr(e)),
    }
}

/// The node's identity: from `path` (created if missing) or ephemeral when `path` is `None`.
pub fn load_or_create(path: Option<&Path>) -> Result<(Keypair, IdentitySource), IdentityError> {
    let Some(path) = path else {
        return Ok((generate(), IdentitySource::Ephemeral));
    };
    match fs::symlink_metadata(path) {
        Ok(_) => Ok((read_keypair(path)?, IdentitySource::Loaded)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate();
            match write_new_keypair(path, &key) {
                Ok(()) => Ok((key, IdentitySource::Created)),
                // Another process created it between our check and our write: use theirs.
                Err(IdentityError::Exists { .. }) => {
                    Ok((read_keypair(path)?, IdentitySource::Loaded))
                }
                Err(e) => Err(e),
            }
        }
        Err(source) => Err(IdentityError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_key_is_reused_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key");
        let (k1, s1) = load_or_create(Some(&path)).unwrap();
        assert_eq!(s1, IdentitySource::Created);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (k2, s2) = load_or_create(Some(&path)).unwrap();
        assert_eq!(s2, IdentitySource::Loaded);
        assert_eq!(k1.public().to_peer_id(), k2.public().to_peer_id());
    }

    #[test]
    fn corrupt_file_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, b"not a key").unwrap();
        let err = load_or_create(Some(&path)).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"not a key");
    }

    #[test]
    fn write_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_new_keypair(&path, &generate()).unwrap();
        let before = fs::read(&path).unwrap();
        assert!(matches!(
            write_new_keypair(&path, &generate()),
            Err(IdentityError::Exists { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), before);
    }
}
