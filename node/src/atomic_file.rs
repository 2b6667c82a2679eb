//! Crash-safe file writes for the node's state (identity key, key shares, aggregation tasks):
//! a temp file in the same directory (mode 0600), fsync, then rename or hard link into place,
//! then fsync of the directory. A node killed at any instant leaves the old file or the new
//! one, never a torn one; leftovers are recognised by [`is_temp_file`] and removed at start.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
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

/// What a state directory holds once opened.
#[derive(Debug, Default)]
pub struct StateDir {
    /// Every regular entry: path and file name.
    pub files: Vec<(PathBuf, String)>,
    /// Temp files of interrupted writes, removed on opening.
    pub removed_temp_files: Vec<PathBuf>,
}

/// Creates `dir` (mode 0700) if needed, removes temp files left by interrupted writes and
/// lists the rest.
pub fn open_state_dir(dir: &Path) -> std::io::Result<StateDir> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut state = StateDir::default();
    for entry in fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_temp_file(&name) {
            if fs::remove_file(&path).is_ok() {
                state.removed_temp_files.push(path);
            }
        } else {
            state.files.push((path, name));
        }
    }
    Ok(state)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Moves a state file to its final name (both in one directory), durably: rename, then
/// fsync of the directory. Never replaces an existing file.
pub fn promote(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::hard_link(from, to)?;
    fs::remove_file(from)?;
    fs::File::open(parent_of(to))?.sync_all()
}

/// Removes state files durably (a missing one is not an error).
pub fn remove(paths: &[PathBuf]) -> std::io::Result<()> {
    for path in paths {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match paths.first() {
        Some(p) => fs::File::open(parent_of(p))?.sync_all(),
        None => Ok(()),
    }
}

/// Writes `bytes` to `path` (mode 0600) atomically; see the module docs.
pub fn write(path: &Path, bytes: &[u8], existing: Existing) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let parent = parent_of(path);
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

    #[test]
    fn opening_a_state_dir_removes_interrupted_writes() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("a/b");
        assert!(open_state_dir(&state_dir).unwrap().files.is_empty());
        assert_eq!(
            fs::metadata(&state_dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        write(&state_dir.join("kept"), b"x", Existing::Keep).unwrap();
        let torn = state_dir.join(format!(".kept{TEMP_MARKER}42-0"));
        fs::write(&torn, b"half").unwrap();
        let opened = open_state_dir(&state_dir).unwrap();
        assert_eq!(opened.removed_temp_files, vec![torn.clone()]);
        assert_eq!(
            opened.files,
            vec![(state_dir.join("kept"), "kept".to_string())]
        );
        assert!(!torn.exists());
    }
}
