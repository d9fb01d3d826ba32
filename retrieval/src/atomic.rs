//! A file written under a temporary name in its final directory (`<name>.tmp-<pid>`) and renamed
//! into place by [`AtomicFile::finish`] after a flush and fsync, so a crash or an error never
//! leaves a half-written file under the final name. Dropped unfinished, the temporary file is
//! removed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Creates the temporary file (and the parent directory). A `path` that is a symlink, FIFO,
    /// device or directory is refused first (`tensor::fs::check_replaceable`).
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicFile> {
        let path = path.as_ref().to_path_buf();
        tensor::fs::check_replaceable(&path).map_err(|e| Error::io(&path, e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let tmp = tensor::fs::temp_path(&path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(AtomicFile {
            path,
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The buffered writer, for `write!` and serializers; map its errors with [`Self::io_error`].
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.out
            .as_mut()
            .expect("an AtomicFile is only taken by finish")
    }

    /// An I/O error on this file, naming the temporary path being written.
    pub fn io_error(&self, e: std::io::Error) -> Error {
        Error::io(&self.tmp, e)
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let r = self.writer().write_all(bytes);
        r.map_err(|e| self.io_error(e))
    }

    /// Flushes, syncs and renames the file into place; returns its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let out = self.out.take().expect("finish is called once");
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(std::mem::take(&mut self.path))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renamed_when_finished_removed_when_dropped() {
        let dir = std::env::temp_dir().join(format!("retrieval-atomic-{}", std::process::id()));
        let path = dir.join("sub").join("out.txt");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"hello\n").unwrap();
        assert!(!path.exists());
        assert_eq!(f.finish().unwrap(), path);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");

        let other = dir.join("dropped.txt");
        let mut f = AtomicFile::create(&other).unwrap();
        f.write_all(b"x").unwrap();
        drop(f);
        assert!(!other.exists());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "only sub/ remains: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
