//! Atomic file writes: the bytes go to `<path>.tmp-<pid>` in the same directory, are synced, and
//! the temporary file is renamed over `path`, so a crash leaves either the old file or the new
//! one, never a half-written one. Used for configs, vocabularies and checkpoint metadata across
//! the workspace (the safetensors writer streams the same way).
//!
//! A rename replaces whatever the final name points at, so before writing every writer asks
//! [`check_replaceable`]: only a missing path or a regular file may be replaced. A symbolic
//! link (even to a regular file), a FIFO, a device (`/dev/null`, `/dev/full`), a socket or a
//! directory is refused with an error saying what the path is and what to do; nothing is written
//! through them (we chose refusing over writing through: a rename cannot keep a link, and
//! writing in place would lose atomicity).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(tmp)
}

/// What kind of file system object `path` is, for errors; None when nothing is there.
fn describe(path: &Path) -> std::io::Result<Option<(&'static str, bool)>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Ok(Some(("a FIFO (named pipe)", false)));
        }
        if t.is_char_device() || t.is_block_device() {
            return Ok(Some(("a device", false)));
        }
        if t.is_socket() {
            return Ok(Some(("a socket", false)));
        }
    }
    Ok(Some(if t.is_symlink() {
        ("a symbolic link", false)
    } else if t.is_dir() {
        ("a directory", false)
    } else if t.is_file() {
        ("a regular file", true)
    } else {
        ("not a regular file", false)
    }))
}

/// Ok when an output may be renamed over `path`: nothing is there, or a regular file is (module
/// doc). Otherwise an `InvalidInput` error saying what the path is and what to do (callers name
/// the path, as with any I/O error).
pub fn check_replaceable(path: &Path) -> std::io::Result<()> {
    match describe(path)? {
        None | Some((_, true)) => Ok(()),
        Some((what, false)) => {
            let advice = if what == "a symbolic link" {
                let target = std::fs::read_link(path)
                    .map(|t| format!(" to {}", t.display()))
                    .unwrap_or_default();
                format!(
                    "{what}{target}; outputs are renamed into place and would replace the link, \
                     so give the target path itself or remove the link"
                )
            } else {
                format!(
                    "{what}; outputs are written to a temporary file and renamed into place, \
                     which would replace it: give the path of a regular file (or a new one)"
                )
            };
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("refusing to write: the path is {advice}"),
            ))
        }
    }
}

/// Writes `bytes` to `path` atomically (module doc); on error the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    check_replaceable(path)?;
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

    /// Issue 14, class 3: a symlink, a FIFO, a device or a directory is never replaced.
    #[cfg(unix)]
    #[test]
    fn refuses_to_replace_links_fifos_devices_and_directories() {
        let dir = crate::testing::TempDir::new("tensor-fs-special");
        let target = dir.0.join("target.txt");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.0.join("link.txt");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = dir.0.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        let sub = dir.0.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let mut cases = vec![
            (link.clone(), "a symbolic link to"),
            (sub.clone(), "a directory"),
            (PathBuf::from("/dev/null"), "a device"),
        ];
        if made.is_ok_and(|s| s.success()) {
            cases.push((fifo.clone(), "a FIFO"));
        } else {
            eprintln!("mkfifo unavailable: the FIFO case is not checked here");
        }
        for (path, says) in cases {
            let e = write_atomic(&path, b"new").unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            let msg = e.to_string();
            assert!(msg.contains(says) && msg.contains("refusing"), "{msg}");
        }
        // Nothing changed, no temporary left.
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(sub.is_dir());
        let names: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
        assert_eq!(names.len(), 3 + fifo.exists() as usize, "{names:?}");
        // A regular file, and a missing one, are fine.
        write_atomic(&target, b"new").unwrap();
        check_replaceable(&dir.0.join("new.txt")).unwrap();
    }
}
