//! HF model directories: loading `config.json` + `model.safetensors` into our modules and saving
//! a directory `transformers` loads back.
//!
//! Loading maps each checkpoint tensor to a parameter by name, the way `from_pretrained` does:
//! * the `bert.` prefix is optional both ways (a bare `BertModel` checkpoint loads into
//!   `BertForMaskedLM`'s `bert.*`, a `BertForPreTraining` one into a `BertModel`);
//! * old LayerNorm names `gamma` / `beta` read as `weight` / `bias`;
//! * `cls.predictions.decoder.bias` is `cls.predictions.bias`, and `cls.predictions.decoder.weight`
//!   is the word-embedding table (both tied); when the canonical name is also present, the alias
//!   is ignored;
//! * buffers (`embeddings.position_ids`, `embeddings.token_type_ids`) and the next-sentence head
//!   (`cls.seq_relationship.*`) are ignored.
//!
//! Anything else without a place is *unexpected*; parameters the checkpoint lacks are *missing*
//! and keep their initialisation. Both are returned in a [`LoadReport`]; the caller decides with
//! [`LoadReport::require`] which missing parameters are an error (a core weight, unless the user
//! asked for random init) and which a warning (a head its task does not use), as HF's warnings
//! and its `ignore_mismatched_sizes`. A shape mismatch, or a NaN or infinite value, is an error
//! naming the tensor and the file, and nothing is modified until every tensor has been checked. f32 tensors stay memory-mapped (zero-copy) until the
//! optimizer first writes them; f16 / bf16 / f64 tensors are converted to f32.
//!
//! Saving writes `config.json`, `model.safetensors` (HF names, the tied decoder not duplicated,
//! `{"format": "pt"}` metadata) and, given a tokenizer, `vocab.txt`, `tokenizer_config.json` and
//! `special_tokens_map.json`. A new directory is built under a temporary name and renamed into
//! place; into an existing directory each file is written to a temporary name and renamed, so a
//! crash never leaves a truncated file.

use crate::config::BertConfig;
use crate::error::{BertError, Result};
use crate::init::{reinit, Init};
use crate::mlm::BertForMaskedLM;
use crate::model::BertModel;
use crate::tokenizer::Tokenizer;
use nn::{Module, Param};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tensor::safetensors::SafeTensors;
use tensor::{DType, Rng, Tensor};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// What loading a checkpoint did besides filling parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Model parameters the checkpoint has no tensor for (they keep their initial values).
    pub missing: Vec<String>,
    /// Checkpoint tensors the model has no parameter for.
    pub unexpected: Vec<String>,
    /// Checkpoint tensors skipped on purpose: buffers, the next-sentence head, tied aliases.
    pub ignored: Vec<String>,
    /// The safetensors files read (named in errors).
    pub files: Vec<PathBuf>,
}

/// The flag that lets a model load with missing weights randomly initialised (HF's
/// `ignore_mismatched_sizes` in spirit); named in the error that refuses such a load.
pub const ALLOW_RANDOM_INIT_FLAG: &str = "--allow_random_init";

/// True for the parameters of a head (`pooler.*`, `cls.*`, with or without `bert.`), which a
/// task may not use; everything else is the encoder every task needs.
pub fn is_head_param(name: &str) -> bool {
    let n = name.strip_prefix("bert.").unwrap_or(name);
    n.starts_with("pooler.") || n.starts_with("cls.")
}

impl LoadReport {
    /// True when every parameter was loaded and every tensor used or deliberately ignored.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }

    /// An error when the checkpoint lacks a parameter the task uses (`used(name)`), naming the
    /// file(s) and the missing tensors, unless `allow_random_init`: then those parameters keep
    /// their random initialisation, as the report says. A head the task does not use is left to
    /// the report's warning.
    pub fn require(&self, used: &dyn Fn(&str) -> bool, allow_random_init: bool) -> Result<()> {
        let needed: Vec<&str> = self
            .missing
            .iter()
            .map(String::as_str)
            .filter(|n| used(n))
            .collect();
        if needed.is_empty() || allow_random_init {
            return Ok(());
        }
        let file = match self.files.as_slice() {
            [one] => one.clone(),
            many => many
                .first()
                .and_then(|f| f.parent())
                .map_or_else(PathBuf::new, Path::to_path_buf),
        };
        let shown: Vec<&str> = needed.iter().take(8).copied().collect();
        let more = if needed.len() > shown.len() {
            format!(" and {} more", needed.len() - shown.len())
        } else {
            String::new()
        };
        let why = if self.unexpected.is_empty() {
            String::new()
        } else {
            format!(
                "; {} of its tensors have no place in the model (first: {:?}), a checkpoint of \
                 another architecture?",
                self.unexpected.len(),
                self.unexpected[0]
            )
        };
        Err(BertError::checkpoint(
            &file,
            format!(
                "the checkpoint lacks {} weight(s) the model needs: {shown:?}{more}{why}; pass \
                 {ALLOW_RANDOM_INIT_FLAG} to initialise them randomly instead",
                needed.len()
            ),
        ))
    }
}

impl std::fmt::Display for LoadReport {
    /// HF-style warnings, one line each for unexpected and missing names (nothing when clean).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sep = "";
        if !self.unexpected.is_empty() {
            write!(
                f,
                "some checkpoint weights were not used ({}): {:?}",
                self.unexpected.len(),
                self.unexpected
            )?;
            sep = "\n";
        }
        if !self.missing.is_empty() {
            write!(
                f,
                "{sep}some weights were not in the checkpoint and are newly initialized ({}): {:?}",
                self.missing.len(),
                self.missing
            )?;
        }
        Ok(())
    }
}

/// Where a checkpoint tensor goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// Into this model parameter; `rank` orders competing names (0: the exact name, 1: the name
    /// with the `bert.` prefix added or removed, 2: a legacy or tied alias).
    Param {
        name: String,
        rank: u8,
    },
    Ignored,
    Unexpected,
}

const HEAD_BIAS: &str = "cls.predictions.bias";
const WORD_EMBEDDINGS: &str = "bert.embeddings.word_embeddings.weight";

/// Maps checkpoint name `key` onto the model's parameter names.
fn resolve(key: &str, has_param: &dyn Fn(&str) -> bool) -> Target {
    if key.ends_with("embeddings.position_ids")
        || key.ends_with("embeddings.token_type_ids")
        || key.starts_with("cls.seq_relationship.")
    {
        return Target::Ignored;
    }
    let mut name = key.to_string();
    let mut alias = false;
    for (old, new) in [(".gamma", ".weight"), (".beta", ".bias")] {
        if let Some(stem) = key.strip_suffix(old) {
            name = format!("{stem}{new}");
            alias = true;
        }
    }
    // The decoder is tied; only a model with the MLM head takes its aliases.
    if has_param(HEAD_BIAS) {
        let tied = match name.as_str() {
            "cls.predictions.decoder.bias" => Some(HEAD_BIAS),
            "cls.predictions.decoder.weight" => Some(WORD_EMBEDDINGS),
            _ => None,
        };
        if let Some(t) = tied {
            name = t.to_string();
            alias = true;
        }
    }
    let base = if alias { 2 } else { 0 };
    let prefixed = format!("bert.{name}");
    let candidates = [
        Some((name.as_str(), base)),
        Some((prefixed.as_str(), base.max(1))),
        name.strip_prefix("bert.").map(|n| (n, base.max(1))),
    ];
    for (n, rank) in candidates.into_iter().flatten() {
        if has_param(n) {
            return Target::Param {
                name: n.to_string(),
                rank,
            };
        }
    }
    Target::Unexpected
}

/// The safetensors files of a model directory: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| BertError::io(&index, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| BertError::checkpoint(&index, format!("invalid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| BertError::checkpoint(&index, "no \"weight_map\" object"))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for f in map.values() {
            let f = f.as_str().ok_or_else(|| {
                BertError::checkpoint(&index, "weight_map values must be file names")
            })?;
            let p = dir.join(f);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        return Ok(files);
    }
    let hint = if dir.join("pytorch_model.bin").is_file() {
        " (only safetensors weights are read; convert pytorch_model.bin with transformers' \
         save_pretrained(..., safe_serialization=True))"
    } else {
        ""
    };
    Err(BertError::checkpoint(
        &single,
        format!("no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in the directory{hint}"),
    ))
}

/// Loads the safetensors `files` into `module`'s parameters by name (see the module docs).
/// Checks everything before modifying anything.
pub fn load_weights(module: &dyn Module, files: &[PathBuf]) -> Result<LoadReport> {
    let params: Vec<(String, Param)> = module.named_params();
    let index: HashMap<&str, usize> = params
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    let has = |n: &str| index.contains_key(n);
    let opened = files
        .iter()
        .map(|f| Ok(SafeTensors::open(f)?))
        .collect::<Result<Vec<_>>>()?;

    let mut report = LoadReport {
        files: files.to_vec(),
        ..LoadReport::default()
    };
    // parameter index -> (rank, file, checkpoint name)
    let mut chosen: HashMap<usize, (u8, usize, String)> = HashMap::new();
    for (fi, st) in opened.iter().enumerate() {
        for key in st.names() {
            match resolve(key, &has) {
                Target::Ignored => report.ignored.push(key.to_string()),
                Target::Unexpected => report.unexpected.push(key.to_string()),
                Target::Param { name, rank } => {
                    let pi = index[name.as_str()];
                    let (model_shape, file_shape) = (params[pi].1.shape(), st.shape(key)?);
                    if model_shape != file_shape {
                        return Err(BertError::checkpoint(
                            st.path(),
                            format!(
                                "tensor {key:?} has shape {file_shape:?} but the model's {name} \
                                 is {model_shape:?}"
                            ),
                        ));
                    }
                    let dtype = st.dtype(key)?;
                    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
                        return Err(BertError::checkpoint(
                            st.path(),
                            format!("tensor {key:?} has dtype {dtype}, expected a float type"),
                        ));
                    }
                    let loser = match chosen.get(&pi) {
                        Some((r, _, _)) if *r <= rank => Some((rank, key.to_string())),
                        _ => chosen
                            .insert(pi, (rank, fi, key.to_string()))
                            .map(|(r, _, k)| (r, k)),
                    };
                    // An alias beside its canonical name is expected; two names for one
                    // parameter otherwise is not.
                    if let Some((r, k)) = loser {
                        if r == 2 {
                            report.ignored.push(k);
                        } else {
                            report.unexpected.push(k);
                        }
                    }
                }
            }
        }
    }
    let mut values = Vec::with_capacity(chosen.len());
    for (&pi, (_, fi, key)) in &chosen {
        let t = opened[*fi].get(key)?;
        let t = if t.dtype() == DType::F32 {
            t
        } else {
            t.to_dtype(DType::F32)?
        };
        if let Some(i) = t.first_non_finite()? {
            return Err(BertError::checkpoint(
                opened[*fi].path(),
                format!(
                    "tensor {key:?} has a non-finite value (NaN or inf) at element {i} (shape {:?})",
                    t.shape()
                ),
            ));
        }
        values.push((pi, t));
    }
    for (pi, t) in values {
        let (name, p) = &params[pi];
        p.set(name, t)?;
    }
    report.missing = params
        .iter()
        .enumerate()
        .filter(|(i, _)| !chosen.contains_key(i))
        .map(|(_, (n, _))| n.clone())
        .collect();
    Ok(report)
}

fn read_config(dir: &Path) -> Result<BertConfig> {
    BertConfig::from_file(dir.join(CONFIG_FILE))
}

/// HF's initialisation (seed 0, in parameter order) for the parameters the checkpoint lacked.
fn init_missing(module: &dyn Module, report: &LoadReport, config: &BertConfig) -> Result<()> {
    let mut rng = Rng::new(0);
    for (name, p) in module.named_params() {
        if report.missing.contains(&name) {
            reinit(&name, &p, config, &mut rng)?;
        }
    }
    Ok(())
}

impl BertModel {
    /// Loads an HF model directory (`config.json` + safetensors weights). Parameters the
    /// checkpoint lacks get HF's random initialisation (seed 0); see the report.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        add_pooling_layer: bool,
    ) -> Result<(BertModel, LoadReport)> {
        let dir = dir.as_ref();
        let config = read_config(dir)?;
        let model = BertModel::with_init(&config, add_pooling_layer, &mut Init::Zeros)?;
        let report = model.load_weights(dir)?;
        init_missing(&model, &report, &config)?;
        Ok((model, report))
    }

    /// Loads the weights of an HF model directory into this model.
    pub fn load_weights(&self, dir: impl AsRef<Path>) -> Result<LoadReport> {
        load_weights(self, &weight_files(dir.as_ref())?)
    }

    /// Writes an HF `BertModel` directory (see the module docs).
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<Path>,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<()> {
        save_dir(dir.as_ref(), &self.config, "BertModel", self, tokenizer)
    }
}

impl BertForMaskedLM {
    /// Loads an HF model directory; a `BertModel` checkpoint (no `bert.` prefix) loads too, the
    /// MLM head then missing and randomly initialised (seed 0).
    pub fn from_pretrained(dir: impl AsRef<Path>) -> Result<(BertForMaskedLM, LoadReport)> {
        let dir = dir.as_ref();
        let config = read_config(dir)?;
        let model = BertForMaskedLM::with_init(&config, &mut Init::Zeros)?;
        let report = model.load_weights(dir)?;
        init_missing(&model, &report, &config)?;
        Ok((model, report))
    }

    pub fn load_weights(&self, dir: impl AsRef<Path>) -> Result<LoadReport> {
        load_weights(self, &weight_files(dir.as_ref())?)
    }

    /// Writes an HF `BertForMaskedLM` directory (`bert.`-prefixed names; see the module docs).
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<Path>,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<()> {
        save_dir(
            dir.as_ref(),
            self.config(),
            "BertForMaskedLM",
            self,
            tokenizer,
        )
    }
}

/// Writes `bytes` to `path` atomically (`tensor::fs::write_atomic`).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    tensor::fs::write_atomic(path, bytes).map_err(|e| BertError::io(path, e))
}

/// The files of the directory, written into `dir` (which exists).
fn write_files(
    dir: &Path,
    config: &BertConfig,
    architecture: &str,
    module: &dyn Module,
    tokenizer: Option<&Tokenizer>,
) -> Result<()> {
    write_atomic(
        &dir.join(CONFIG_FILE),
        config.to_json_string(architecture).as_bytes(),
    )?;

    let mut seen: Vec<Param> = Vec::new();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    module.visit_params("", &mut |name, p| {
        if !seen.iter().any(|q| q.same(p)) {
            seen.push(p.clone());
            tensors.push((name, p.tensor()));
        }
    });
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    tensor::safetensors::save(dir.join(WEIGHTS_FILE), &refs, Some(&meta))?;

    if let Some(tok) = tokenizer {
        let mut vocab = String::new();
        for id in 0..tok.vocab_size() as u32 {
            vocab.push_str(tok.id_to_token(id).unwrap_or_default());
            vocab.push('\n');
        }
        write_atomic(&dir.join("vocab.txt"), vocab.as_bytes())?;
        let specials = json!({
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "pad_token": "[PAD]",
            "sep_token": "[SEP]",
            "unk_token": "[UNK]",
        });
        let mut tc = specials.clone();
        let strip = if tok.strip_accents() == tok.do_lower_case() {
            Value::Null
        } else {
            Value::Bool(tok.strip_accents())
        };
        for (k, v) in [
            ("do_lower_case", Value::Bool(tok.do_lower_case())),
            ("strip_accents", strip),
            ("tokenize_chinese_chars", Value::Bool(true)),
            (
                "model_max_length",
                Value::from(config.max_position_embeddings),
            ),
            ("tokenizer_class", Value::from("BertTokenizer")),
        ] {
            tc[k] = v;
        }
        for (file, v) in [
            ("tokenizer_config.json", tc),
            ("special_tokens_map.json", specials),
        ] {
            let mut s = serde_json::to_string_pretty(&v).expect("JSON values serialise");
            s.push('\n');
            write_atomic(&dir.join(file), s.as_bytes())?;
        }
    }
    Ok(())
}

/// Saves into `dir`: built under a temporary sibling and renamed when `dir` does not exist yet,
/// file by file (each atomically) when it does.
fn save_dir(
    dir: &Path,
    config: &BertConfig,
    architecture: &str,
    module: &dyn Module,
    tokenizer: Option<&Tokenizer>,
) -> Result<()> {
    if dir.is_dir() {
        return write_files(dir, config, architecture, module, tokenizer);
    }
    let name = dir
        .file_name()
        .ok_or_else(|| BertError::checkpoint(dir, "not a directory path"))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| BertError::io(&parent, e))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| BertError::io(&tmp, e))?;
    let result = write_files(&tmp, config, architecture, module, tokenizer)
        .and_then(|_| std::fs::rename(&tmp, dir).map_err(|e| BertError::io(dir, e)));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    if let Ok(d) = std::fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(v: &'a [&'static str]) -> impl Fn(&str) -> bool + 'a {
        move |n| v.contains(&n)
    }

    const MLM: [&str; 4] = [
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "cls.predictions.bias",
        "cls.predictions.transform.LayerNorm.bias",
    ];
    const BASE: [&str; 3] = [
        "embeddings.word_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "pooler.dense.weight",
    ];

    fn param(name: &str, rank: u8) -> Target {
        Target::Param {
            name: name.into(),
            rank,
        }
    }

    /// A checkpoint key, the model's names, and the parameter (name, rank) it should resolve to
    /// (None: unexpected).
    type Row<'a> = (&'a str, &'a [&'static str], Option<(&'a str, u8)>);

    fn check_table(rows: &[Row]) {
        for &(key, model, want) in rows {
            let want = want.map_or(Target::Unexpected, |(n, r)| param(n, r));
            assert_eq!(resolve(key, &names(model)), want, "{key}");
        }
    }

    #[test]
    fn prefix_is_optional_both_ways() {
        check_table(&[
            (
                "bert.embeddings.LayerNorm.weight",
                &MLM,
                Some(("bert.embeddings.LayerNorm.weight", 0)),
            ),
            (
                "embeddings.LayerNorm.weight",
                &MLM,
                Some(("bert.embeddings.LayerNorm.weight", 1)),
            ),
            (
                "bert.embeddings.LayerNorm.weight",
                &BASE,
                Some(("embeddings.LayerNorm.weight", 1)),
            ),
            (
                "bert.pooler.dense.weight",
                &BASE,
                Some(("pooler.dense.weight", 1)),
            ),
            ("bert.pooler.dense.weight", &MLM, None),
        ]);
    }

    #[test]
    fn legacy_and_tied_aliases() {
        check_table(&[
            (
                "bert.embeddings.LayerNorm.gamma",
                &MLM,
                Some(("bert.embeddings.LayerNorm.weight", 2)),
            ),
            (
                "cls.predictions.transform.LayerNorm.beta",
                &MLM,
                Some(("cls.predictions.transform.LayerNorm.bias", 2)),
            ),
            (
                "embeddings.LayerNorm.gamma",
                &BASE,
                Some(("embeddings.LayerNorm.weight", 2)),
            ),
            (
                "cls.predictions.decoder.bias",
                &MLM,
                Some(("cls.predictions.bias", 2)),
            ),
            (
                "cls.predictions.decoder.weight",
                &MLM,
                Some(("bert.embeddings.word_embeddings.weight", 2)),
            ),
            // Without an MLM head, the head's tensors are simply unexpected.
            ("cls.predictions.decoder.weight", &BASE, None),
            ("cls.predictions.bias", &BASE, None),
        ]);
    }

    #[test]
    fn buffers_and_nsp_head_are_ignored() {
        let mlm = names(&MLM);
        for k in [
            "bert.embeddings.position_ids",
            "embeddings.position_ids",
            "bert.embeddings.token_type_ids",
            "cls.seq_relationship.weight",
            "cls.seq_relationship.bias",
        ] {
            assert_eq!(resolve(k, &mlm), Target::Ignored, "{k}");
        }
        assert_eq!(resolve("something.else", &mlm), Target::Unexpected);
    }

    #[test]
    fn report_display() {
        let clean = LoadReport {
            ignored: vec!["x".into()],
            ..Default::default()
        };
        assert!(clean.is_clean());
        assert_eq!(clean.to_string(), "");
        let r = LoadReport {
            missing: vec!["cls.predictions.bias".into()],
            unexpected: vec!["pooler.dense.weight".into()],
            ..Default::default()
        };
        assert!(!r.is_clean());
        let s = r.to_string();
        assert!(s.contains("not used (1): [\"pooler.dense.weight\"]"), "{s}");
        assert!(
            s.contains("newly initialized (1): [\"cls.predictions.bias\"]"),
            "{s}"
        );
    }
}
