//! Crash-safe file writes for the node's state (identity key, key shares, aggregation tasks):
//! a temp file in the same directory (mode 0600), fsync, then rename or hard link into place,
//! then fsync of the directory. A node killed at any instant leaves the old file or the new
//! one, never a torn one; leftovers are recognised by [`is_temp_file`] and removed at start.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Marks temp files in a state directory.
pub const TEMP_MARKER: &str = ".tmp-";

/// What to do when the target exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Keep it and fail with `ErrorKind::AlreadyExists` (keys are never overwritten).
    Keep,
    /// Replace it atomically.
    Replace,
}

/// Whether `file_name` is a temp file left by an interrupted write.
pub fn is_temp_file(file_name: &str) -> bool {
    file_name.contains(TEMP_MARKER)
}

/// Writes `bytes` to `path` (mode 0600) atomically; see the module docs.
pub fn write(path: &Path, bytes: &[u8], existing: Existing) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and per write, so concurrent writers never share a temp file.
    let tmp = parent.join(format!(
        ".{name}{TEMP_MARKER}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        match existing {
            // A hard link never replaces an existing file: no check-then-act race.
            Existing::Keep => {
                fs::hard_link(&tmp, path)?;
                fs::remove_file(&tmp)?;
            }
            Existing::Replace => fs::rename(&tmp, path)?,
        }
        fs::File::open(parent)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keep_refuses_to_overwrite_and_replace_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write(&path, b"one", Existing::Keep).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let err = write(&path, b"two", Existing::Keep).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write(&path, b"three", Existing::Replace).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"three");
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["state"], "no temp file left behind");
    }
}
