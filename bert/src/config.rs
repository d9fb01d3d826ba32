//! `BertConfig`: the model hyper-parameters, read from and written to HF's `config.json`.
//!
//! Reading follows `transformers.BertConfig`: a missing key takes bert-base-uncased's value, keys
//! this crate does not use (`architectures`, `transformers_version`, `use_cache`, ...) are ignored
//! but kept, so a loaded and re-saved config loses nothing. A key with a wrong type or a value this
//! implementation does not support (a `hidden_act` other than the erf GELU, relative position
//! embeddings, a hidden size not divisible by the head count) is an error naming the file and the
//! key. Writing produces what `save_pretrained` writes: one JSON object, keys sorted, indent 2.

use crate::error::{BertError, Result};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Only "gelu" (the exact, erf-based GELU) is supported.
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    /// Row of the word embeddings that starts at zero and gets no gradient from the embedding
    /// lookup (`null` in the JSON: none).
    pub pad_token_id: Option<usize>,
    /// Only "absolute" is supported.
    pub position_embedding_type: String,
    /// Every other key of the file, written back unchanged by [`BertConfig::to_json_string`].
    pub extra: BTreeMap<String, Value>,
}

impl Default for BertConfig {
    /// bert-base-uncased.
    fn default() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: Some(0),
            position_embedding_type: "absolute".into(),
            extra: BTreeMap::new(),
        }
    }
}

/// The keys this crate reads; everything else goes to `extra`.
const KNOWN: [&str; 14] = [
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "position_embedding_type",
];

/// The largest value accepted for each size field: far beyond any BERT in use, small enough that
/// products of two of them fit in 64 bits. A value above it is a corrupt or hostile file.
type SizeField = fn(&BertConfig) -> usize;
const SIZE_LIMITS: [(&str, SizeField, usize); 7] = [
    ("vocab_size", |c| c.vocab_size, 1 << 24),
    ("hidden_size", |c| c.hidden_size, 1 << 16),
    ("num_hidden_layers", |c| c.num_hidden_layers, 1 << 10),
    ("num_attention_heads", |c| c.num_attention_heads, 1 << 12),
    ("intermediate_size", |c| c.intermediate_size, 1 << 18),
    (
        "max_position_embeddings",
        |c| c.max_position_embeddings,
        1 << 20,
    ),
    ("type_vocab_size", |c| c.type_vocab_size, 1 << 16),
];

/// Reads `key` of `map` as a `T` (its default when absent); the error names the file and key.
fn field<T: DeserializeOwned>(
    map: &Map<String, Value>,
    key: &str,
    default: T,
    path: &Path,
) -> Result<T> {
    match map.get(key) {
        None => Ok(default),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| BertError::config(path, key, format!("{e} (got {v})"))),
    }
}

impl BertConfig {
    /// Reads an HF `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<BertConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| BertError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses config JSON; `path` is only used to name the source in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<BertConfig> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| BertError::config(path, "", format!("invalid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(BertError::config(path, "", "expected a JSON object"));
        };
        let d = BertConfig::default();
        let c = BertConfig {
            vocab_size: field(&map, "vocab_size", d.vocab_size, path)?,
            hidden_size: field(&map, "hidden_size", d.hidden_size, path)?,
            num_hidden_layers: field(&map, "num_hidden_layers", d.num_hidden_layers, path)?,
            num_attention_heads: field(&map, "num_attention_heads", d.num_attention_heads, path)?,
            intermediate_size: field(&map, "intermediate_size", d.intermediate_size, path)?,
            hidden_act: field(&map, "hidden_act", d.hidden_act, path)?,
            hidden_dropout_prob: field(&map, "hidden_dropout_prob", d.hidden_dropout_prob, path)?,
            attention_probs_dropout_prob: field(
                &map,
                "attention_probs_dropout_prob",
                d.attention_probs_dropout_prob,
                path,
            )?,
            max_position_embeddings: field(
                &map,
                "max_position_embeddings",
                d.max_position_embeddings,
                path,
            )?,
            type_vocab_size: field(&map, "type_vocab_size", d.type_vocab_size, path)?,
            initializer_range: field(&map, "initializer_range", d.initializer_range, path)?,
            layer_norm_eps: field(&map, "layer_norm_eps", d.layer_norm_eps, path)?,
            pad_token_id: field(&map, "pad_token_id", d.pad_token_id, path)?,
            position_embedding_type: field(
                &map,
                "position_embedding_type",
                d.position_embedding_type,
                path,
            )?,
            extra: map
                .into_iter()
                .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
                .collect(),
        };
        c.validate(path)?;
        Ok(c)
    }

    /// Checks the values this implementation can run; `path` names the source in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let err = |f: &str, m: String| Err(BertError::config(path, f, m));
        if self.num_hidden_layers == 0 {
            return err(
                "num_hidden_layers",
                "must be positive (a BERT with no layers is not a model this pipeline trains)"
                    .into(),
            );
        }
        for (f, v, max) in SIZE_LIMITS {
            let v = v(self);
            if v > max {
                return err(
                    f,
                    format!("{v} is beyond the largest value this implementation accepts ({max})"),
                );
            }
        }
        if let Err(m) = tensor::memory::check_fits(
            "the model's f32 weights",
            self.parameter_count().and_then(|n| n.checked_mul(4)),
        ) {
            return err("hidden_size", m);
        }
        for (f, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return err(f, "must be positive".into());
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(
                "num_attention_heads",
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            );
        }
        if self.hidden_act != "gelu" {
            return err(
                "hidden_act",
                format!(
                    "only \"gelu\" (erf) is supported, got {:?}",
                    self.hidden_act
                ),
            );
        }
        if self.position_embedding_type != "absolute" {
            return err(
                "position_embedding_type",
                format!(
                    "only \"absolute\" is supported, got {:?}",
                    self.position_embedding_type
                ),
            );
        }
        for (f, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return err(f, format!("must be in [0, 1), got {p}"));
            }
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return err(
                "layer_norm_eps",
                format!("must be positive, got {}", self.layer_norm_eps),
            );
        }
        if !(self.initializer_range >= 0.0 && self.initializer_range.is_finite()) {
            return err(
                "initializer_range",
                format!("must be >= 0, got {}", self.initializer_range),
            );
        }
        if let Some(p) = self.pad_token_id.filter(|&p| p >= self.vocab_size) {
            return err(
                "pad_token_id",
                format!("{p} is outside the vocabulary of {}", self.vocab_size),
            );
        }
        Ok(())
    }

    /// The number of parameters of a `BertForMaskedLM` of this shape (embeddings, layers, MLM head
    /// transform and decoder bias; the decoder weight is tied), or None when the product overflows.
    pub fn parameter_count(&self) -> Option<u64> {
        let (h, i, l) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.num_hidden_layers as u64,
        );
        let tables = (self.vocab_size as u64)
            .checked_add(self.max_position_embeddings as u64)?
            .checked_add(self.type_vocab_size as u64)?
            .checked_mul(h)?;
        // q, k, v, output (4 h^2 + 4 h), the two LayerNorms (4 h), the feed-forward (2 h i + i + h).
        let per_layer = h
            .checked_mul(h)?
            .checked_mul(4)?
            .checked_add(h.checked_mul(i)?.checked_mul(2)?)?
            .checked_add(h.checked_mul(9)?)?
            .checked_add(i)?;
        // The embeddings' LayerNorm (2 h), the MLM transform (h^2 + h) and its LayerNorm (2 h).
        let rest = h.checked_mul(h)?.checked_add(h.checked_mul(5)?)?;
        tables
            .checked_add(per_layer.checked_mul(l)?)?
            .checked_add(rest)?
            .checked_add(self.vocab_size as u64)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The JSON `save_pretrained` would write: every key of `extra`, the known keys, and
    /// `model_type: "bert"` and `architectures: [architecture]`; keys sorted, indent 2.
    pub fn to_json_string(&self, architecture: &str) -> String {
        let mut map: Map<String, Value> = self.extra.clone().into_iter().collect();
        let known = [
            ("vocab_size", Value::from(self.vocab_size)),
            ("hidden_size", Value::from(self.hidden_size)),
            ("num_hidden_layers", Value::from(self.num_hidden_layers)),
            ("num_attention_heads", Value::from(self.num_attention_heads)),
            ("intermediate_size", Value::from(self.intermediate_size)),
            ("hidden_act", Value::from(self.hidden_act.clone())),
            ("hidden_dropout_prob", Value::from(self.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                Value::from(self.attention_probs_dropout_prob),
            ),
            (
                "max_position_embeddings",
                Value::from(self.max_position_embeddings),
            ),
            ("type_vocab_size", Value::from(self.type_vocab_size)),
            ("initializer_range", Value::from(self.initializer_range)),
            ("layer_norm_eps", Value::from(self.layer_norm_eps)),
            (
                "pad_token_id",
                self.pad_token_id.map_or(Value::Null, Value::from),
            ),
            (
                "position_embedding_type",
                Value::from(self.position_embedding_type.clone()),
            ),
            ("model_type", Value::from("bert")),
            ("architectures", Value::from(vec![architecture.to_string()])),
        ];
        for (k, v) in known {
            map.insert(k.to_string(), v);
        }
        // serde_json's Map is ordered by key (no `preserve_order`), as HF's sort_keys=True.
        let mut s =
            serde_json::to_string_pretty(&Value::Object(map)).expect("a JSON map serialises");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<BertConfig> {
        BertConfig::from_json_str(s, Path::new("dir/config.json"))
    }

    #[test]
    fn defaults_are_bert_base_and_unknown_keys_are_kept() {
        let c = parse(r#"{"hidden_size": 384, "num_attention_heads": 12, "use_cache": true, "architectures": ["BertModel"]}"#).unwrap();
        assert_eq!(c.hidden_size, 384);
        assert_eq!(c.head_dim(), 32);
        assert_eq!(c.vocab_size, 30522);
        assert_eq!(c.num_hidden_layers, 12);
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(c.pad_token_id, Some(0));
        assert_eq!(c.extra.get("use_cache"), Some(&Value::Bool(true)));
        let back = parse(&c.to_json_string("BertForMaskedLM")).unwrap();
        assert_eq!(back.hidden_size, 384);
        assert_eq!(back.extra["use_cache"], Value::Bool(true));
        assert_eq!(
            back.extra["architectures"],
            serde_json::json!(["BertForMaskedLM"])
        );
        assert_eq!(back.extra["model_type"], Value::from("bert"));
        assert_eq!(
            BertConfig {
                extra: BTreeMap::new(),
                ..back
            },
            BertConfig {
                extra: BTreeMap::new(),
                ..c
            }
        );
    }

    #[test]
    fn null_pad_token_id() {
        let c = parse(r#"{"pad_token_id": null}"#).unwrap();
        assert_eq!(c.pad_token_id, None);
        assert!(c
            .to_json_string("BertModel")
            .contains("\"pad_token_id\": null"));
    }

    #[test]
    fn errors_name_file_and_field() {
        let cases = [
            (r#"{"hidden_size": "big"}"#, "hidden_size"),
            (r#"{"hidden_size": 100}"#, "num_attention_heads"),
            (r#"{"hidden_act": "relu"}"#, "hidden_act"),
            (
                r#"{"position_embedding_type": "relative_key"}"#,
                "position_embedding_type",
            ),
            (r#"{"hidden_dropout_prob": 1.5}"#, "hidden_dropout_prob"),
            (r#"{"vocab_size": 0}"#, "vocab_size"),
            (r#"{"pad_token_id": 40000}"#, "pad_token_id"),
            (r#"{"layer_norm_eps": -1}"#, "layer_norm_eps"),
            // Hostile sizes: an error naming the field, never a "capacity overflow" panic.
            (r#"{"hidden_size": 1e15}"#, "hidden_size"),
            (r#"{"hidden_size": 1099511627776}"#, "hidden_size"),
            (
                r#"{"intermediate_size": 4611686018427387904}"#,
                "intermediate_size",
            ),
            (r#"{"vocab_size": 1099511627776}"#, "vocab_size"),
            (r#"{"num_hidden_layers": 0}"#, "num_hidden_layers"),
            (r#"{"num_hidden_layers": 100000}"#, "num_hidden_layers"),
            (
                r#"{"max_position_embeddings": 18446744073709551615}"#,
                "max_position_embeddings",
            ),
            (r#"{"type_vocab_size": -1}"#, "type_vocab_size"),
            (r#"{"num_attention_heads": 1e3}"#, "num_attention_heads"),
            // Within every bound, yet far beyond any machine's memory (about 1 PiB of weights).
            (
                r#"{"hidden_size": 65536, "num_attention_heads": 64, "intermediate_size": 262144, "num_hidden_layers": 1024}"#,
                "hidden_size",
            ),
        ];
        for (json, f) in cases {
            let e = parse(json).unwrap_err().to_string();
            assert!(
                e.contains("dir/config.json") && e.contains(&format!("\"{f}\"")),
                "{json}: {e}"
            );
        }
        assert_eq!(
            BertConfig::default().parameter_count(),
            Some(109_514_298),
            "bert-base-uncased's BertForMaskedLM (HF counts 109,514,298 with the tied decoder)"
        );
        let e = parse("[1]").unwrap_err().to_string();
        assert!(e.contains("expected a JSON object"), "{e}");
        let e = parse("{").unwrap_err().to_string();
        assert!(e.contains("invalid JSON"), "{e}");
    }
}
