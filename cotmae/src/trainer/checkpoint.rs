//! Checkpoint directories: writing them atomically, finding the latest, rotating old ones, and
//! reading one back to resume.
//!
//! `output_dir/checkpoint-N/` (N = optimizer steps done) holds:
//! - the encoder as an HF `BertForMaskedLM` directory (`config.json`, `model.safetensors`,
//!   `vocab.txt`, tokenizer files): any checkpoint can be fine-tuned or loaded by transformers
//!   as it is;
//! - `c_head.safetensors`: the decoder head (`c_head.<i>.*`), as the original keeps the non-BERT
//!   weights beside the HF files;
//! - `optimizer.safetensors` (AdamW moments and step counts, `nn::AdamW::save_state`);
//! - `trainer_state.json` (step, data position, dropout generator, loss sums: [`TrainerState`]);
//! - `training_args.json` (every flag of the run).
//!
//! The learning-rate schedule is not stored separately: it is a function of the flags and the
//! step. Atomicity: everything is written (each file synced) into `checkpoint-N.tmp-<pid>/`,
//! which is then renamed to `checkpoint-N`; a directory named `checkpoint-*.tmp-*` is the
//! leftover of a killed run and is removed at the next start. Only directories with a
//! `trainer_state.json` count as checkpoints.

use std::path::{Path, PathBuf};

use bert::{BertForMaskedLM, Tokenizer};
use nn::{AdamW, Module};
use tensor::{DType, Rng, Tensor};

use super::state::{TrainerState, STATE_FILE};
use crate::model::{BertForCotMAE, CotMaeModelArgs};
use crate::{Error, Result};

pub const CHECKPOINT_PREFIX: &str = "checkpoint-";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const HEAD_FILE: &str = "c_head.safetensors";
pub const ARGS_FILE: &str = "training_args.json";
const HEAD_PREFIX: &str = "c_head.";

/// `N` of a directory named exactly `checkpoint-N`.
pub fn checkpoint_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(CHECKPOINT_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push((name.to_string(), entry.path()));
        }
    }
    Ok(out)
}

/// The complete checkpoints of `output_dir`, by increasing step.
pub fn list_checkpoints(output_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !output_dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(u64, PathBuf)> = entries(output_dir)?
        .into_iter()
        .filter_map(|(name, path)| Some((checkpoint_step(&name)?, path)))
        .filter(|(_, path)| path.join(STATE_FILE).is_file())
        .collect();
    found.sort();
    Ok(found)
}

/// The newest `checkpoint-N` that can be resumed from, if any; newer ones that are empty,
/// incomplete or corrupt are passed over with a warning naming each, why, and the one chosen
/// (`retrieval::resume`).
pub fn latest_checkpoint(output_dir: &Path) -> Result<Option<PathBuf>> {
    if !output_dir.is_dir() {
        return Ok(None);
    }
    let all: Vec<(u64, PathBuf)> = entries(output_dir)?
        .into_iter()
        .filter_map(|(name, path)| Some((checkpoint_step(&name)?, path)))
        .filter(|(_, path)| path.is_dir())
        .collect();
    let (chosen, skipped) = retrieval::resume::newest_resumable(all, STATE_FILE);
    retrieval::resume::warn_skipped(&skipped, chosen.as_deref());
    Ok(chosen)
}

/// Removes the `checkpoint-*.tmp-*` directories a killed run left behind; returns them.
pub fn remove_stale(output_dir: &Path) -> Result<Vec<PathBuf>> {
    retrieval::resume::remove_stale(output_dir, |name| {
        name.starts_with(CHECKPOINT_PREFIX) && name.contains(".tmp-")
    })
    .map_err(|(path, e)| Error::io(&path, e))
}

/// Deletes the oldest checkpoints until at most `limit` remain; returns the deleted ones.
pub fn rotate(output_dir: &Path, limit: Option<usize>) -> Result<Vec<PathBuf>> {
    let Some(limit) = limit else {
        return Ok(Vec::new());
    };
    let all = list_checkpoints(output_dir)?;
    let excess = all.len().saturating_sub(limit);
    let mut removed = Vec::new();
    for (_, path) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        removed.push(path);
    }
    Ok(removed)
}

/// Writes `bytes` to `path` atomically (`tensor::fs::write_atomic`).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    tensor::fs::write_atomic(path, bytes).map_err(|e| Error::io(path, e))
}

fn sync_dir(dir: &Path) {
    // Makes renames durable; not possible on every platform, and the files are synced already.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes the model into the existing directory `dir`: the encoder as an HF directory (with the
/// tokenizer) and the decoder head as `c_head.safetensors`.
pub fn save_model(dir: &Path, model: &BertForCotMAE, tokenizer: &Tokenizer) -> Result<()> {
    model.save_encoder(dir, Some(tokenizer))?;
    let head: Vec<(String, Tensor)> = model
        .named_params()
        .into_iter()
        .filter(|(n, _)| n.starts_with(HEAD_PREFIX))
        .map(|(n, p)| (n, p.tensor()))
        .collect();
    if !head.is_empty() {
        let refs: Vec<(&str, &Tensor)> = head.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let meta = [("format".to_string(), "pt".to_string())].into();
        tensor::safetensors::save(dir.join(HEAD_FILE), &refs, Some(&meta))?;
    }
    Ok(())
}

/// Reads a model written by [`save_model`]: every encoder and head parameter must be there.
pub fn load_model(dir: &Path, args: CotMaeModelArgs) -> Result<BertForCotMAE> {
    let (lm, report) = BertForMaskedLM::from_pretrained(dir)?;
    if !report.is_clean() {
        return Err(Error::format(
            dir,
            format!("incomplete checkpoint: {report}"),
        ));
    }
    // The head's initial values are overwritten just below.
    let model = BertForCotMAE::new(lm, args, &mut Rng::new(0))?;
    let head: Vec<_> = model
        .named_params()
        .into_iter()
        .filter(|(n, _)| n.starts_with(HEAD_PREFIX))
        .collect();
    if head.is_empty() {
        return Ok(model);
    }
    let path = dir.join(HEAD_FILE);
    let file = tensor::safetensors::SafeTensors::open(&path)?;
    for (name, p) in &head {
        if !file.contains(name) {
            return Err(Error::format(
                &path,
                format!("no tensor {name:?} (the checkpoint's head has other layers than --n_head_layers asks for?)"),
            ));
        }
        let t = file.get(name)?;
        let t = if t.dtype() == DType::F32 {
            t
        } else {
            t.to_dtype(DType::F32)?
        };
        p.set(name, t)?;
    }
    if let Some(extra) = file
        .names()
        .into_iter()
        .find(|n| !head.iter().any(|(h, _)| h == n))
    {
        return Err(Error::format(
            &path,
            format!("tensor {extra:?} has no place in the model (--n_head_layers smaller than the checkpoint's?)"),
        ));
    }
    Ok(model)
}

/// What [`save_checkpoint`] writes.
pub struct Checkpoint<'a> {
    pub model: &'a BertForCotMAE,
    pub tokenizer: &'a Tokenizer,
    pub optimizer: &'a AdamW,
    pub state: &'a TrainerState,
    pub training_args: &'a serde_json::Value,
}

impl<'a> Checkpoint<'a> {
    /// The run's parts, in the fields' order.
    pub fn of(
        model: &'a BertForCotMAE,
        tokenizer: &'a Tokenizer,
        optimizer: &'a AdamW,
        state: &'a TrainerState,
        training_args: &'a serde_json::Value,
    ) -> Checkpoint<'a> {
        Checkpoint {
            model,
            tokenizer,
            optimizer,
            state,
            training_args,
        }
    }
}

/// Writes the run's files (model, `trainer_state.json`, `training_args.json`) into `dir`.
pub fn write_run_files(dir: &Path, ck: &Checkpoint) -> Result<()> {
    save_model(dir, ck.model, ck.tokenizer)?;
    let mut args = serde_json::to_string_pretty(ck.training_args).expect("JSON values serialise");
    args.push('\n');
    write_file_atomic(&dir.join(ARGS_FILE), args.as_bytes())?;
    write_file_atomic(&dir.join(STATE_FILE), ck.state.to_json().as_bytes())
}

/// Writes `output_dir/checkpoint-<global_step>` atomically (module doc); returns its path.
/// `agree` is called with the outcome of writing the files, before the rename: a data-parallel
/// run makes every rank agree there (a collective), so that a checkpoint is renamed into place
/// only when every rank finished the step; its error cancels the checkpoint.
pub fn save_checkpoint(
    output_dir: &Path,
    ck: &Checkpoint,
    agree: &mut dyn FnMut(Result<()>) -> Result<()>,
) -> Result<PathBuf> {
    let _phase = tensor::profiler::phase(tensor::profiler::Phase::Checkpoint);
    let name = format!("{CHECKPOINT_PREFIX}{}", ck.state.global_step);
    let dir = output_dir.join(&name);
    let tmp = output_dir.join(format!("{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = (|| {
        ck.optimizer.save_state(tmp.join(OPTIMIZER_FILE))?;
        write_run_files(&tmp, ck)
    })();
    if let Err(e) = agree(written) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&tmp);
    // A checkpoint of the same step from an earlier attempt is moved aside, then removed.
    let old = output_dir.join(format!("{name}.tmp-{}-replaced", std::process::id()));
    let replacing = dir.exists();
    if replacing {
        std::fs::rename(&dir, &old).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    sync_dir(output_dir);
    if replacing {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collator::CollatorState;
    use crate::trainer::loader::LoaderState;
    use bert::BertConfig;
    use nn::{step_params, AdamWConfig, Ctx};

    use tensor::testing::TempDir;

    fn temp_dir(name: &str) -> TempDir {
        TempDir::new(&format!("cotmae-ckpt-{name}"))
    }

    fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tokenizer/vocab.txt"
        );
        Tokenizer::from_vocab_file(path, true).unwrap()
    }

    fn model(tok: &Tokenizer, seed: u64) -> BertForCotMAE {
        let config = BertConfig {
            vocab_size: tok.vocab_size(),
            hidden_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 16,
            max_position_embeddings: 16,
            ..BertConfig::default()
        };
        BertForCotMAE::from_config(&config, CotMaeModelArgs::default(), &mut Rng::new(seed))
            .unwrap()
    }

    fn state(step: u64) -> TrainerState {
        let loader = LoaderState {
            epoch: 0,
            index: 3,
            collator: CollatorState { seed: 1, offset: 9 },
        };
        let mut s = TrainerState::new(10, loader, Rng::new(2), PathBuf::from("runs"));
        s.global_step = step;
        s
    }

    fn values(m: &BertForCotMAE) -> Vec<(String, Vec<f32>)> {
        m.named_params()
            .into_iter()
            .map(|(n, p)| (n, p.tensor().to_vec::<f32>().unwrap()))
            .collect()
    }

    #[test]
    fn names_and_steps() {
        assert_eq!(checkpoint_step("checkpoint-120"), Some(120));
        for bad in [
            "checkpoint-",
            "checkpoint-12.tmp-3",
            "checkpoint-x",
            "ckpt-1",
            "checkpoint-+1",
        ] {
            assert_eq!(checkpoint_step(bad), None, "{bad}");
        }
    }

    #[test]
    fn save_load_latest_rotate_and_stale() {
        let out = temp_dir("cycle");
        let tok = tokenizer();
        let m = model(&tok, 1);
        // One optimizer step so the state has moments.
        let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
        let params = m.named_params();
        let texts: Vec<Vec<u32>> = vec![vec![2000, 2001, 2002], vec![2003, 2004]];
        let cfg = crate::CollatorConfig {
            max_seq_length: 8,
            ..Default::default()
        };
        let batch = crate::CotMaeCollator::new(&tok, cfg, 0)
            .unwrap()
            .collate_texts(&texts)
            .unwrap();
        let loss = m.forward(&batch, &mut Ctx::train(0)).unwrap().loss;
        let grads = loss.backward().unwrap();
        drop(loss);
        step_params(&mut opt, 1e-3, &params, &grads).unwrap();

        let args = serde_json::json!({ "training": { "seed": 1 } });
        for step in [2, 4, 6] {
            let st = state(step);
            let ck = Checkpoint {
                model: &m,
                tokenizer: &tok,
                optimizer: &opt,
                state: &st,
                training_args: &args,
            };
            save_checkpoint(&out.0, &ck, &mut |w| w).unwrap();
        }
        // Same step again: replaced in place.
        let st = state(6);
        let ck = Checkpoint {
            model: &m,
            tokenizer: &tok,
            optimizer: &opt,
            state: &st,
            training_args: &args,
        };
        let dir6 = save_checkpoint(&out.0, &ck, &mut |w| w).unwrap();
        // Leftovers of a killed run, and a directory that is not a checkpoint.
        std::fs::create_dir_all(out.0.join("checkpoint-8.tmp-999")).unwrap();
        std::fs::create_dir_all(out.0.join("checkpoint-9")).unwrap();
        // A newer checkpoint whose model file was cut short, and one whose trainer state is
        // damaged (issue 14): `latest` passes over both.
        for (n, file) in [(10, "model.safetensors"), (11, STATE_FILE)] {
            let bad = out.0.join(format!("checkpoint-{n}"));
            std::fs::create_dir_all(&bad).unwrap();
            for entry in std::fs::read_dir(&dir6).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), bad.join(entry.file_name())).unwrap();
            }
            let bytes = std::fs::read(bad.join(file)).unwrap();
            std::fs::write(bad.join(file), &bytes[..bytes.len() / 2]).unwrap();
        }
        assert_eq!(latest_checkpoint(&out.0).unwrap(), Some(dir6.clone()));
        for n in [9, 10, 11] {
            std::fs::remove_dir_all(out.0.join(format!("checkpoint-{n}"))).unwrap();
        }
        std::fs::create_dir_all(out.0.join("checkpoint-9")).unwrap();
        let steps: Vec<u64> = list_checkpoints(&out.0)
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(steps, [2, 4, 6]);
        let stale = remove_stale(&out.0).unwrap();
        assert_eq!(stale, [out.0.join("checkpoint-8.tmp-999")]);
        assert!(!out.0.join("checkpoint-8.tmp-999").exists());

        let removed = rotate(&out.0, Some(2)).unwrap();
        assert_eq!(removed, [out.0.join("checkpoint-2")]);
        assert!(rotate(&out.0, None).unwrap().is_empty());
        let steps: Vec<u64> = list_checkpoints(&out.0)
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(steps, [4, 6]);

        // Read back: same weights, same optimizer state, same trainer state.
        let back = load_model(&dir6, CotMaeModelArgs::default()).unwrap();
        assert_eq!(values(&back), values(&m));
        let opt2 = AdamW::from_state(dir6.join(OPTIMIZER_FILE)).unwrap();
        for name in opt.param_names() {
            assert_eq!(opt2.param_state(name), opt.param_state(name), "{name}");
        }
        assert_eq!(TrainerState::load(&dir6).unwrap(), st);
        // The encoder alone is a clean HF BertForMaskedLM directory.
        let (_, report) = BertForMaskedLM::from_pretrained(&dir6).unwrap();
        assert!(report.is_clean(), "{report}");

        // A head with more layers than the checkpoint's: the error names the tensor.
        let three = CotMaeModelArgs {
            n_head_layers: 3,
            ..CotMaeModelArgs::default()
        };
        let err = load_model(&dir6, three).err().unwrap().to_string();
        assert!(
            err.contains("c_head.2.") && err.contains(HEAD_FILE),
            "{err}"
        );
        let one = CotMaeModelArgs {
            n_head_layers: 1,
            ..CotMaeModelArgs::default()
        };
        let err = load_model(&dir6, one).err().unwrap().to_string();
        assert!(err.contains("c_head.1."), "{err}");
    }
}
