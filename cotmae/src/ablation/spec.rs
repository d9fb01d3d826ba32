//! The ablation spec: a TOML file naming the data, the starting model, the flags every stage
//! shares and the arms (what each changes). See docs/ablations.md for a full
//! example.
//!
//! Reading it is strict: an unknown key anywhere, an unknown flag of a stage, a flag the
//! harness sets itself (paths, `seed`, ...), a missing file or an arm name that is not a plain
//! word are errors naming the spec file, the line and the key. Stage flags are checked against
//! the subcommands' own clap definitions, so a spec accepts exactly what the command line does.
//! Relative paths are relative to the spec's folder.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde::Deserialize;

use crate::cli::{Cli, CliResult};

/// The flags of one stage, in spec order, as (flag, value) with shared flags first and an arm's
/// overrides replacing them.
pub type Flags = Vec<(String, toml::Value)>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    seeds: Vec<u64>,
    baseline: String,
    data: Data,
    model: RawModel,
    #[serde(default)]
    prepare: toml::Table,
    #[serde(default)]
    pretrain: toml::Table,
    #[serde(default)]
    finetune: toml::Table,
    arms: toml::Table,
}

/// `[data]`: the task's files (paths resolved against the spec's folder).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// Documents for `cotmae prepare --file`.
    pub pretrain_file: PathBuf,
    /// `pid \t text` or `pid \t title \t text`.
    pub corpus: PathBuf,
    pub train_queries: PathBuf,
    pub train_qrels: PathBuf,
    pub dev_queries: PathBuf,
    pub dev_qrels: PathBuf,
    /// Stage-1 negatives as `build-train --negative_file` takes them; BM25 over `corpus` when
    /// absent.
    pub negatives: Option<PathBuf>,
    /// BM25 hits kept per training query (positives excluded) when `negatives` is absent.
    #[serde(default = "default_bm25_depth")]
    pub bm25_depth: usize,
}

fn default_bm25_depth() -> usize {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    config_name: Option<PathBuf>,
    model_name_or_path: Option<PathBuf>,
    tokenizer_name: PathBuf,
}

/// Where every arm starts: a random encoder from a config (drawn from the seed) or a model.
#[derive(Clone, Debug, PartialEq)]
pub enum Start {
    Config(PathBuf),
    Model(PathBuf),
}

/// `[model]`.
#[derive(Clone, Debug)]
pub struct Model {
    pub start: Start,
    pub tokenizer_name: PathBuf,
}

/// One arm: what it changes against the shared flags.
#[derive(Clone, Debug)]
pub struct Arm {
    pub name: String,
    /// `pretrain = false`: fine-tune the starting model itself.
    pub pretrain: bool,
    /// Pretraining steps set so its pretraining FLOPs equal this arm's.
    pub match_compute: Option<String>,
    pub prepare: Flags,
    pub pretrain_flags: Flags,
    pub finetune: Flags,
}

/// The harness's own `[finetune]` keys (not `train-retriever` flags).
#[derive(Clone, Debug, PartialEq)]
pub struct FinetunePlan {
    /// 1: BM25 (or given) negatives; 2: then hard negatives mined with the stage-1 retriever.
    pub stages: usize,
    /// Negatives kept per training query by `build-train` (`--n_sample`).
    pub n_sample: usize,
    /// Search depth of the dev ranking.
    pub depth: usize,
    /// Stage 2's mined negatives: from the first `hn_depth` non-positive hits keep `hn_sample`.
    pub hn_depth: usize,
    pub hn_sample: usize,
}

/// A parsed, checked spec.
#[derive(Clone, Debug)]
pub struct Spec {
    pub path: PathBuf,
    pub seeds: Vec<u64>,
    pub baseline: String,
    pub data: Data,
    pub model: Model,
    pub arms: Vec<Arm>,
}

/// Keys of `[finetune]` the harness reads itself, with their defaults.
const FINETUNE_OWN: [(&str, usize); 5] = [
    ("stages", 1),
    ("n_sample", 30),
    ("depth", 1000),
    ("hn_depth", 200),
    ("hn_sample", 30),
];

/// Flags the harness sets itself, per subcommand.
fn reserved(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "prepare" => &["file", "save_to", "tokenizer", "seed", "threads"],
        "pretrain" => &[
            "model_name_or_path",
            "config_name",
            "tokenizer_name",
            "train_path",
            "output_dir",
            "overwrite_output_dir",
            "seed",
            "resume_from_checkpoint",
            "device",
            "fp16",
            "bf16",
            "do_train",
            "debug_hang_after_step",
        ],
        _ => &[
            "model_name_or_path",
            "config_name",
            "tokenizer_name",
            "output_dir",
            "train_dir",
            "seed",
            "overwrite_output_dir",
            "resume_from_checkpoint",
            "device",
            "fp16",
            "bf16",
            "threads",
        ],
    }
}

/// The long flag names of subcommand `cmd`.
pub fn known_flags(cmd: &str) -> Vec<String> {
    let root = Cli::command();
    let sub = root
        .find_subcommand(cmd)
        .unwrap_or_else(|| panic!("no subcommand {cmd}"));
    sub.get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

/// Whether `--flag` of `cmd` is a bare switch (no value; `true` passes it, `false` omits it).
pub fn is_switch(cmd: &str, flag: &str) -> bool {
    let root = Cli::command();
    let sub = root.find_subcommand(cmd).expect("a subcommand");
    let switch = sub
        .get_arguments()
        .find(|a| a.get_long() == Some(flag))
        .is_some_and(|a| !a.get_action().takes_values());
    switch
}

/// The 1-based line of `key` in `src` at or after byte `from` (a `key =` or `x.key =` line),
/// else the line of `from`.
fn line_of(src: &str, from: usize, key: &str) -> usize {
    let line_at = |offset: usize| src[..offset.min(src.len())].matches('\n').count() + 1;
    let mut offset = from.min(src.len());
    for line in src[offset..].split_inclusive('\n') {
        let t = line.trim_start();
        let stem = t.split('=').next().unwrap_or("").trim();
        let last = stem
            .rsplit('.')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        if t.contains('=') && last == key {
            return line_at(offset);
        }
        offset += line.len();
    }
    line_at(from)
}

/// Byte offset of a table header like `[arms.mlm]` (or of a dotted `arms.mlm.` key), else 0.
fn header_offset(src: &str, header: &str) -> usize {
    src.find(&format!("[{header}]"))
        .or_else(|| src.find(&format!("{header}.")))
        .unwrap_or(0)
}

struct Ctx<'a> {
    path: &'a Path,
    src: &'a str,
}

impl Ctx<'_> {
    fn err(&self, from: usize, key: &str, msg: String) -> crate::cli::CliError {
        format!(
            "{}:{}: {key}: {msg}",
            self.path.display(),
            line_of(self.src, from, key)
        )
        .into()
    }

    /// Checks a stage's flag table against `cmd`'s flags (plus `own` harness keys).
    fn flags(
        &self,
        table: &toml::Table,
        cmd: &str,
        section: &str,
        own: &[&str],
    ) -> CliResult<Flags> {
        let from = header_offset(self.src, section);
        let known = known_flags(cmd);
        let mut out = Flags::new();
        for (key, value) in table {
            let name = format!("{section}.{key}");
            if reserved(cmd).contains(&key.as_str()) {
                return Err(self.err(
                    from,
                    key,
                    format!("`{name}` is set by the ablation itself (per cell); remove it"),
                ));
            }
            if !own.contains(&key.as_str()) && !known.iter().any(|k| k == key) {
                return Err(self.err(
                    from,
                    key,
                    format!("`{name}`: `cotmae {cmd}` has no flag --{key}"),
                ));
            }
            match value {
                toml::Value::Boolean(_)
                | toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::String(_) => out.push((key.clone(), value.clone())),
                other => {
                    return Err(self.err(
                        from,
                        key,
                        format!(
                            "`{name}` must be a boolean, number or string, not {}",
                            other.type_str()
                        ),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// A file the spec names, resolved against its folder; an error naming the key if missing.
    fn file(&self, key: &str, p: &Path) -> CliResult<PathBuf> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        };
        if !full.exists() {
            let last = key.rsplit('.').next().unwrap_or(key);
            return Err(self.err(
                0,
                last,
                format!("`{key}`: no such file or directory {}", full.display()),
            ));
        }
        Ok(full)
    }
}

/// `base` with `over`'s flags replacing or appended.
fn merge(base: &Flags, over: &Flags) -> Flags {
    let mut out = base.clone();
    for (k, v) in over {
        match out.iter_mut().find(|(b, _)| b == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}

/// A flag value as a command-line word.
pub fn value_word(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => other.to_string(),
    }
}

impl Spec {
    /// Reads and checks the spec at `path` (module doc).
    pub fn read(path: &Path) -> CliResult<Spec> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| format!("ablation spec {}: {e}", path.display()))?;
        Spec::parse(path, &src)
    }

    /// Parses spec text `src` read from `path` (relative paths resolve against its folder).
    pub fn parse(path: &Path, src: &str) -> CliResult<Spec> {
        let raw: RawSpec = toml::from_str(src)
            .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let cx = Ctx { path, src };
        if raw.seeds.is_empty() {
            return Err(cx.err(0, "seeds", "give at least one seed".into()));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(d) = raw.seeds.iter().find(|s| !seen.insert(**s)) {
            return Err(cx.err(0, "seeds", format!("seed {d} is listed twice")));
        }
        let mut data = raw.data.clone();
        for (key, p) in [
            ("data.pretrain_file", &mut data.pretrain_file),
            ("data.corpus", &mut data.corpus),
            ("data.train_queries", &mut data.train_queries),
            ("data.train_qrels", &mut data.train_qrels),
            ("data.dev_queries", &mut data.dev_queries),
            ("data.dev_qrels", &mut data.dev_qrels),
        ] {
            *p = cx.file(key, p)?;
        }
        if let Some(n) = &data.negatives {
            data.negatives = Some(cx.file("data.negatives", n)?);
        }
        let start = match (&raw.model.config_name, &raw.model.model_name_or_path) {
            (Some(c), None) => Start::Config(cx.file("model.config_name", c)?),
            (None, Some(m)) => Start::Model(cx.file("model.model_name_or_path", m)?),
            _ => {
                return Err(cx.err(
                    header_offset(src, "model"),
                    "model",
                    "give exactly one of config_name (random init) and model_name_or_path".into(),
                ))
            }
        };
        let model = Model {
            start,
            tokenizer_name: cx.file("model.tokenizer_name", &raw.model.tokenizer_name)?,
        };
        let own: Vec<&str> = FINETUNE_OWN.iter().map(|(k, _)| *k).collect();
        let prepare = cx.flags(&raw.prepare, "prepare", "prepare", &[])?;
        let pretrain = cx.flags(&raw.pretrain, "pretrain", "pretrain", &[])?;
        let finetune = cx.flags(&raw.finetune, "train-retriever", "finetune", &own)?;
        let mut arms = Vec::new();
        for (name, value) in &raw.arms {
            let section = format!("arms.{name}");
            let from = header_offset(src, &section);
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(cx.err(
                    from,
                    name,
                    format!("arm name {name:?}: use letters, digits, '-' and '_' only"),
                ));
            }
            let toml::Value::Table(table) = value else {
                return Err(cx.err(from, name, format!("`{section}` must be a table")));
            };
            let mut arm = Arm {
                name: name.clone(),
                pretrain: true,
                match_compute: None,
                prepare: prepare.clone(),
                pretrain_flags: pretrain.clone(),
                finetune: finetune.clone(),
            };
            for (key, v) in table {
                let sub = format!("{section}.{key}");
                match (key.as_str(), v) {
                    ("pretrain", toml::Value::Boolean(b)) => arm.pretrain = *b,
                    ("pretrain", toml::Value::Table(t)) => {
                        arm.pretrain_flags = merge(&pretrain, &cx.flags(t, "pretrain", &sub, &[])?);
                    }
                    ("prepare", toml::Value::Table(t)) => {
                        arm.prepare = merge(&prepare, &cx.flags(t, "prepare", &sub, &[])?);
                    }
                    ("finetune", toml::Value::Table(t)) => {
                        arm.finetune =
                            merge(&finetune, &cx.flags(t, "train-retriever", &sub, &own)?);
                    }
                    ("match_compute", toml::Value::String(s)) => {
                        arm.match_compute = Some(s.clone())
                    }
                    ("pretrain" | "prepare" | "finetune" | "match_compute", _) => {
                        return Err(cx.err(
                            from,
                            key,
                            format!("`{sub}` has the wrong type ({})", v.type_str()),
                        ))
                    }
                    _ => {
                        return Err(cx.err(
                            from,
                            key,
                            format!(
                                "unknown key `{sub}`; an arm takes pretrain, prepare, \
                                 finetune and match_compute"
                            ),
                        ))
                    }
                }
            }
            arms.push(arm);
        }
        if arms.is_empty() {
            return Err(cx.err(0, "arms", "give at least one [arms.NAME] table".into()));
        }
        let names: Vec<&str> = arms.iter().map(|a| a.name.as_str()).collect();
        if !names.contains(&raw.baseline.as_str()) {
            return Err(cx.err(
                0,
                "baseline",
                format!(
                    "no arm named {:?} (arms: {})",
                    raw.baseline,
                    names.join(", ")
                ),
            ));
        }
        for arm in &arms {
            let Some(target) = &arm.match_compute else {
                continue;
            };
            let from = header_offset(src, &format!("arms.{}", arm.name));
            let t = arms.iter().find(|a| &a.name == target);
            let problem = match t {
                None => Some(format!("no arm named {target:?}")),
                Some(t) if t.name == arm.name => Some("an arm cannot match itself".into()),
                Some(t) if !t.pretrain || !arm.pretrain => {
                    Some("both arms must pretrain (pretrain = false has no FLOPs)".into())
                }
                Some(t) if t.match_compute.is_some() => Some(format!(
                    "arm {target:?} itself matches another arm's compute"
                )),
                _ => None,
            };
            if let Some(p) = problem {
                return Err(cx.err(from, "match_compute", p));
            }
        }
        Ok(Spec {
            path: path.to_path_buf(),
            seeds: raw.seeds,
            baseline: raw.baseline,
            data,
            model,
            arms,
        })
    }

    pub fn arm(&self, name: &str) -> Option<&Arm> {
        self.arms.iter().find(|a| a.name == name)
    }
}

impl Arm {
    /// The harness's own `[finetune]` keys of this arm, defaults filled in.
    pub fn plan(&self) -> CliResult<FinetunePlan> {
        let get = |key: &str| -> CliResult<usize> {
            let default = FINETUNE_OWN.iter().find(|(k, _)| *k == key).expect("own").1;
            match self.finetune.iter().find(|(k, _)| k == key) {
                None => Ok(default),
                Some((_, toml::Value::Integer(i))) if *i > 0 => Ok(*i as usize),
                Some((_, v)) => Err(format!(
                    "arm {}: finetune.{key} must be a positive integer, got {v}",
                    self.name
                )
                .into()),
            }
        };
        let plan = FinetunePlan {
            stages: get("stages")?,
            n_sample: get("n_sample")?,
            depth: get("depth")?,
            hn_depth: get("hn_depth")?,
            hn_sample: get("hn_sample")?,
        };
        if !(1..=2).contains(&plan.stages) {
            return Err(format!(
                "arm {}: finetune.stages must be 1 or 2, got {}",
                self.name, plan.stages
            )
            .into());
        }
        Ok(plan)
    }

    /// `train-retriever` flags only (the harness's own keys removed).
    pub fn train_flags(&self) -> Flags {
        self.finetune
            .iter()
            .filter(|(k, _)| !FINETUNE_OWN.iter().any(|(o, _)| o == k))
            .cloned()
            .collect()
    }
}

/// `flags` as argument words for `cmd` (switches passed bare when true, omitted when false).
pub fn flag_words(cmd: &str, flags: &Flags) -> Vec<String> {
    let mut v = Vec::new();
    for (k, val) in flags {
        if is_switch(cmd, k) {
            if matches!(val, toml::Value::Boolean(true)) {
                v.push(format!("--{k}"));
            }
        } else {
            v.push(format!("--{k}"));
            v.push(value_word(val));
        }
    }
    v
}
