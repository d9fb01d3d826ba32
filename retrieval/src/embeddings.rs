//! An encoded set of texts on disk: `DIR/embeddings.safetensors` (one tensor `embeddings`,
//! [N, d], row i the vector of text i) and `DIR/ids.txt` (N lines, line i the text_id of row i).
//! `encode` writes it; `search` reads query and corpus sets (a corpus may be several such
//! directories, one per shard). Both files are written atomically; reading checks that the two
//! agree, that every id follows [`crate::ids`] and every value is finite (an error names the
//! row, its id and the file), and memory-maps the vectors (f32 stays zero-copy; f16/bf16 are
//! widened to f32).

use std::path::Path;

use tensor::{safetensors, DType, Tensor};

use crate::atomic::AtomicFile;
use crate::ids::{check_id, id_problem};
use crate::{Error, Result};

pub const EMBEDDINGS_FILE: &str = "embeddings.safetensors";
pub const IDS_FILE: &str = "ids.txt";
/// Name of the one tensor in [`EMBEDDINGS_FILE`].
pub const TENSOR_NAME: &str = "embeddings";

/// Text ids and their vectors, row for row.
pub struct EmbeddingSet {
    pub ids: Vec<String>,
    /// [N, d] f32.
    pub embeddings: Tensor,
}

impl EmbeddingSet {
    pub fn new(ids: Vec<String>, embeddings: Tensor) -> Result<EmbeddingSet> {
        let ok = embeddings.shape().len() == 2 && embeddings.shape()[0] == ids.len();
        if !ok {
            return Err(Error::Config(format!(
                "embeddings: {} ids for a tensor of shape {:?} (expected [{}, d])",
                ids.len(),
                embeddings.shape(),
                ids.len()
            )));
        }
        if let Some(msg) = ids.iter().find_map(|id| id_problem(id)) {
            return Err(Error::Config(format!("embeddings: {msg}")));
        }
        Ok(EmbeddingSet { ids, embeddings })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The vector size d.
    pub fn dim(&self) -> usize {
        self.embeddings.shape()[1]
    }

    /// Writes `dir/embeddings.safetensors` and `dir/ids.txt` (the directory is created).
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        safetensors::save(
            dir.join(EMBEDDINGS_FILE),
            &[(TENSOR_NAME, &self.embeddings)],
            None,
        )?;
        let mut ids = AtomicFile::create(dir.join(IDS_FILE))?;
        for id in &self.ids {
            ids.write_all(id.as_bytes())?;
            ids.write_all(b"\n")?;
        }
        ids.finish()?;
        Ok(())
    }

    /// Reads a directory written by [`write`](Self::write).
    pub fn read(dir: impl AsRef<Path>) -> Result<EmbeddingSet> {
        let dir = dir.as_ref();
        let st_path = dir.join(EMBEDDINGS_FILE);
        let st = safetensors::SafeTensors::open(&st_path)?;
        if !st.contains(TENSOR_NAME) {
            return Err(Error::format(
                &st_path,
                format!("no tensor named {TENSOR_NAME:?} (found {:?})", st.names()),
            ));
        }
        let mut embeddings = st.get(TENSOR_NAME)?;
        if embeddings.shape().len() != 2 {
            return Err(Error::format(
                &st_path,
                format!("{TENSOR_NAME} must be [N, d], got {:?}", embeddings.shape()),
            ));
        }
        match embeddings.dtype() {
            DType::F32 => {}
            DType::F16 | DType::BF16 | DType::F64 => {
                embeddings = embeddings.to_dtype(DType::F32)?
            }
            other => {
                return Err(Error::format(
                    &st_path,
                    format!("{TENSOR_NAME} has dtype {other}; expected a float type"),
                ))
            }
        }
        let ids_path = dir.join(IDS_FILE);
        let text = std::fs::read_to_string(&ids_path).map_err(|e| Error::io(&ids_path, e))?;
        let ids: Vec<String> = text.split_terminator('\n').map(str::to_string).collect();
        for (i, id) in ids.iter().enumerate() {
            check_id(&ids_path, i + 1, id)?;
        }
        if ids.len() != embeddings.shape()[0] {
            return Err(Error::format(
                &ids_path,
                format!(
                    "{} ids for {} vectors in {}",
                    ids.len(),
                    embeddings.shape()[0],
                    st_path.display()
                ),
            ));
        }
        if let Some(i) = embeddings.first_non_finite()? {
            let (row, column) = (i / embeddings.shape()[1], i % embeddings.shape()[1]);
            return Err(Error::format(
                &st_path,
                format!(
                    "row {row} (text_id {:?}, {IDS_FILE} line {}) has a non-finite value (NaN \
                     or inf) at column {column}; the encoder that wrote it diverged or the \
                     file is damaged",
                    ids[row],
                    row + 1
                ),
            ));
        }
        Ok(EmbeddingSet { ids, embeddings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mismatch_errors() {
        let dir = std::env::temp_dir().join(format!("retrieval-emb-{}", std::process::id()));
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let ids = vec!["a".to_string(), "b1".to_string(), "c".to_string()];
        let set = EmbeddingSet::new(
            ids.clone(),
            Tensor::from_vec(data.clone(), &[3, 2]).unwrap(),
        )
        .unwrap();
        set.write(&dir).unwrap();
        let back = EmbeddingSet::read(&dir).unwrap();
        assert_eq!(back.ids, ids);
        assert_eq!(back.dim(), 2);
        assert_eq!(back.embeddings.to_vec::<f32>().unwrap(), data);

        std::fs::write(dir.join(IDS_FILE), "a\nb\n").unwrap();
        let err = EmbeddingSet::read(&dir).err().unwrap().to_string();
        assert!(
            err.contains("ids.txt") && err.contains("2 ids for 3 vectors"),
            "{err}"
        );
        assert!(EmbeddingSet::new(
            vec!["x\ny".into()],
            Tensor::zeros(&[1, 2], DType::F32, tensor::Device::Cpu).unwrap()
        )
        .is_err());
        assert!(EmbeddingSet::new(
            vec![],
            Tensor::zeros(&[1, 2], DType::F32, tensor::Device::Cpu).unwrap()
        )
        .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
