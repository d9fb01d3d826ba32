//! Atomic file writes: the bytes go to `<path>.tmp-<pid>` in the same directory, are synced, and
//! the temporary file is renamed over `path`, so a crash leaves either the old file or the new
//! one, never a half-written one. Used for configs, vocabularies and checkpoint metadata across
//! the workspace (the safetensors writer streams the same way).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(tmp)
}

/// Writes `bytes` to `path` atomically (module doc); on error the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = crate::testing::TempDir::new("tensor-fs");
        let path = dir.0.join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
        assert!(write_atomic(&dir.0.join("missing/a.json"), b"x").is_err());
    }
}
