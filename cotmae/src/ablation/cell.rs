//! One cell of an ablation (an arm at a seed) as a script of `cotmae` subcommands, each printed
//! before it runs, in `DIR/<arm>/seed-<s>/`:
//!
//! ```text
//! pretrain         -> pretrained/          (skipped with pretrain = false)
//! train-retriever  -> retriever-s1/        (stage 1: BM25 or the spec's negatives)
//! [stage 2: encode + search the training queries with retriever-s1 -> run-s1.train.tsv,
//!  build-train-hn -> train-hn/, train-retriever on both negative sets -> retriever-s2/]
//! encode, search   -> run.dev.tsv
//! metrics          -> metrics.json         (atomic; its presence marks the cell finished)
//! ```
//!
//! The shared inputs (prepared spans, tokenized corpus and queries, training files) come from
//! [`Stages::shared`], keyed by their command lines. [`Plan`] also fixes each arm's pretraining
//! steps: `match_compute` arms get `round(steps x FLOPs/step of the matched arm / their own
//! FLOPs/step)` ([`crate::flops`]).

use std::path::{Path, PathBuf};

use bert::BertConfig;
use clap::Parser;
use retrieval::formats::jsonl_inputs;

use super::spec::{flag_words, Arm, Spec, Start};
use super::{word, words, Stages};
use crate::cli::{run_args, Cli, CliResult, Command};
use crate::device::DeviceArgs;
use crate::flops::{pretrain_step_flops, StepShape};
use crate::trainer::PretrainArgs;

/// Pretraining of one arm, fixed before any cell runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ArmPretraining {
    /// 0 for `pretrain = false`.
    pub steps: u64,
    pub flops_per_step: f64,
}

/// A finished cell: where it is and what `metrics.json` holds.
#[derive(Clone, Debug)]
pub struct CellResult {
    pub arm: String,
    pub seed: u64,
    pub dir: PathBuf,
    pub metrics: serde_json::Value,
}

/// Everything a cell needs besides its arm and seed.
pub struct Plan<'a> {
    pub spec: &'a Spec,
    pub dir: PathBuf,
    compute: DeviceArgs,
    /// Per arm, in spec order.
    pub pretraining: Vec<ArmPretraining>,
}

/// Parses `cotmae <words>` with the real command line (defaults filled in).
fn parse(argv: &[String]) -> CliResult<Command> {
    let all = std::iter::once("cotmae".to_string()).chain(argv.iter().cloned());
    Ok(Cli::try_parse_from(all)?.command)
}

/// The BERT config every arm starts from.
fn start_config(spec: &Spec) -> CliResult<BertConfig> {
    let path = match &spec.model.start {
        Start::Config(c) => c.clone(),
        Start::Model(m) => m.join("config.json"),
    };
    Ok(BertConfig::from_file(&path)?)
}

/// The shape of one pretraining step of `args` on `config`.
pub fn step_shape(args: &PretrainArgs, config: &BertConfig) -> StepShape {
    let (m, d, t) = (&args.model, &args.data, &args.training);
    StepShape {
        rows: 2 * t.per_device_train_batch_size * t.gradient_accumulation_steps,
        seq_len: d.max_seq_length,
        hidden: config.hidden_size,
        intermediate: config.intermediate_size,
        vocab: config.vocab_size,
        encoder_layers: config.num_hidden_layers,
        head_layers: if m.use_decoder_head {
            m.n_head_layers
        } else {
            0
        },
        encoder_mask_ratio: d.encoder_mask_ratio,
        decoder_mask_ratio: m.enable_head_mlm.then_some(d.decoder_mask_ratio),
    }
}

impl<'a> Plan<'a> {
    pub fn new(spec: &'a Spec, dir: &Path, compute: &DeviceArgs) -> CliResult<Plan<'a>> {
        let config = start_config(spec)?;
        let mut own = Vec::new();
        for arm in &spec.arms {
            let mut argv = words(&["pretrain", "--config_name", "c", "--tokenizer_name", "t"]);
            argv.extend(words(&["--train_path", "p", "--output_dir", "o"]));
            argv.extend(flag_words("pretrain", &arm.pretrain_flags));
            let Command::Pretrain(args) =
                parse(&argv).map_err(|e| format!("arm {}: pretrain flags: {e}", arm.name))?
            else {
                unreachable!("a pretrain command line")
            };
            let steps = args.training.max_steps;
            own.push((steps, pretrain_step_flops(&step_shape(&args, &config))));
        }
        let mut pretraining = Vec::new();
        for (arm, &(steps, flops)) in spec.arms.iter().zip(&own) {
            let steps = match &arm.match_compute {
                _ if !arm.pretrain => 0,
                Some(target) => {
                    let i = spec
                        .arms
                        .iter()
                        .position(|a| &a.name == target)
                        .expect("checked");
                    let (t_steps, t_flops) = own[i];
                    if t_steps <= 0 {
                        return Err(format!(
                            "arm {}: match_compute = {target:?} needs pretrain.max_steps on \
                             arm {target}",
                            arm.name
                        )
                        .into());
                    }
                    (t_steps as f64 * t_flops / flops).round().max(1.0) as u64
                }
                None if steps > 0 => steps as u64,
                None => {
                    return Err(format!(
                        "arm {}: give pretrain.max_steps (the report counts pretraining FLOPs \
                         from steps)",
                        arm.name
                    )
                    .into())
                }
            };
            pretraining.push(ArmPretraining {
                steps,
                flops_per_step: if arm.pretrain { flops } else { 0.0 },
            });
        }
        Ok(Plan {
            spec,
            dir: dir.to_path_buf(),
            compute: compute.clone(),
            pretraining,
        })
    }

    fn arm_index(&self, arm: &Arm) -> usize {
        self.spec
            .arms
            .iter()
            .position(|a| a.name == arm.name)
            .expect("an arm of the spec")
    }

    /// The directory of a cell.
    pub fn cell_dir(&self, arm: &str, seed: u64) -> PathBuf {
        self.dir.join(arm).join(format!("seed-{seed}"))
    }

    /// Runs (or reuses) one cell and returns its metrics.
    pub fn run_cell(&self, arm: &Arm, seed: u64, st: &mut Stages) -> CliResult<CellResult> {
        let spec = self.spec;
        let cell = self.cell_dir(&arm.name, seed);
        let metrics_path = cell.join("metrics.json");
        if let Ok(text) = std::fs::read_to_string(&metrics_path) {
            eprintln!("ablation: cell {} finished earlier, reused", cell.display());
            let metrics = serde_json::from_str(&text)
                .map_err(|e| format!("{}: {e}", metrics_path.display()))?;
            return Ok(cell_result(arm, seed, cell, metrics));
        }
        std::fs::create_dir_all(&cell)?;
        let markers = cell.join("stages");
        let (dir, tok) = (&self.dir, word(&spec.model.tokenizer_name));
        let s = seed.to_string();
        let plan = arm.plan()?;
        let Command::TrainRetriever(ft) = parse(
            &[
                words(&[
                    "train-retriever",
                    "--config_name",
                    "c",
                    "--tokenizer_name",
                    "t",
                ]),
                words(&["--output_dir", "o", "--train_dir", "d"]),
                flag_words("train-retriever", &arm.train_flags()),
            ]
            .concat(),
        )
        .map_err(|e| format!("arm {}: finetune flags: {e}", arm.name))?
        else {
            unreachable!("a train-retriever command line")
        };

        // Pretraining.
        let pre = &self.pretraining[self.arm_index(arm)];
        let pretrained = cell.join("pretrained");
        let pretrain_secs = if arm.pretrain {
            let prep = st.shared(
                dir,
                "prepare",
                &[
                    words(&["prepare", "--file"]),
                    vec![word(&spec.data.pretrain_file)],
                    words(&["--save_to", "{out}", "--tokenizer"]),
                    vec![tok.clone(), "--seed".into(), s.clone()],
                    flag_words("prepare", &arm.prepare),
                ]
                .concat(),
            )?;
            st.stage(&markers, "pretrain", || {
                let mut argv = words(&["pretrain"]);
                argv.extend(self.start_words("--config_name"));
                argv.extend(["--tokenizer_name".into(), tok.clone()]);
                argv.extend(["--train_path".into(), word(&prep)]);
                argv.extend(["--output_dir".into(), word(&pretrained)]);
                argv.extend(["--seed".into(), s.clone()]);
                let flags: Vec<_> = arm
                    .pretrain_flags
                    .iter()
                    .filter(|(k, _)| k != "max_steps")
                    .cloned()
                    .collect();
                argv.extend(flag_words("pretrain", &flags));
                argv.extend(["--max_steps".into(), pre.steps.to_string()]);
                argv.extend(resume_words(
                    crate::trainer::checkpoint::latest_checkpoint(&pretrained)?.is_some(),
                    false,
                ));
                argv.extend(self.compute.argv());
                run_args(&argv)
            })?
        } else {
            0.0
        };
        let start = if arm.pretrain {
            vec!["--model_name_or_path".into(), word(&pretrained)]
        } else {
            self.start_words("--config_name")
        };

        // Shared retrieval inputs.
        let corpus = st.shared(
            dir,
            "corpus",
            &[
                words(&["tokenize-corpus", "--tokenizer_name"]),
                vec![tok.clone(), "--file".into(), word(&spec.data.corpus)],
                words(&["--save_to", "{out}", "--n_splits", "1", "--truncate"]),
                vec![(ft.p_max_len - 2).to_string()],
            ]
            .concat(),
        )?;
        let queries = |file: &Path, st: &mut Stages| {
            st.shared(
                dir,
                "queries",
                &[
                    words(&["tokenize-queries", "--tokenizer_name"]),
                    vec![tok.clone(), "--query_file".into(), word(file)],
                    words(&["--save_to", "{out}", "--truncate"]),
                    vec![(ft.q_max_len - 2).to_string()],
                ]
                .concat(),
            )
        };
        let dev_queries = queries(&spec.data.dev_queries, st)?;
        let negatives = match &spec.data.negatives {
            Some(n) => n.clone(),
            None => {
                let out = dir
                    .join("shared")
                    .join(format!("bm25-negatives-top{}.tsv", spec.data.bm25_depth));
                st.stage(&dir.join("shared").join("stages"), "bm25-negatives", || {
                    eprintln!(
                        "\n(BM25 over {}: top {} per training query, positives excluded -> {})",
                        spec.data.corpus.display(),
                        spec.data.bm25_depth,
                        out.display()
                    );
                    let r = retrieval::bm25::bm25_negatives(
                        &spec.data.corpus,
                        &spec.data.train_queries,
                        &retrieval::Qrels::read(&spec.data.train_qrels)?,
                        spec.data.bm25_depth,
                        &out,
                    )?;
                    eprintln!("{} queries, {} negatives", r.queries, r.negatives);
                    Ok(())
                })?;
                out
            }
        };
        let train_words = |cmd: &str, negative_file: &Path| {
            [
                words(&[cmd, "--tokenizer_name"]),
                vec![tok.clone(), "--qrels".into(), word(&spec.data.train_qrels)],
                vec!["--queries".into(), word(&spec.data.train_queries)],
                vec!["--collection".into(), word(&spec.data.corpus)],
                vec!["--negative_file".into(), word(negative_file)],
                words(&["--truncate"]),
                vec![(ft.p_max_len - 2).to_string(), "--seed".into(), s.clone()],
            ]
            .concat()
        };
        let mut bm25_words = train_words("build-train", &negatives);
        bm25_words.extend(words(&["--save_to", "{out}", "--n_sample"]));
        bm25_words.push(plan.n_sample.to_string());
        let train1 = st.shared(dir, "train", &bm25_words)?;

        // Fine-tuning, stage 1 (and 2).
        let train_flags = flag_words("train-retriever", &arm.train_flags());
        let finetune = |st: &mut Stages, name: &str, train_dir: &Path| -> CliResult<PathBuf> {
            let out = cell.join(format!("retriever-{name}"));
            st.stage(&markers, &format!("train-retriever-{name}"), || {
                let resume = retrieval::latest_checkpoint(&out)?.is_some();
                let argv = [
                    words(&["train-retriever"]),
                    start.clone(),
                    vec!["--tokenizer_name".into(), tok.clone()],
                    vec!["--train_dir".into(), word(train_dir)],
                    vec![
                        "--output_dir".into(),
                        word(&out),
                        "--seed".into(),
                        s.clone(),
                    ],
                    train_flags.clone(),
                    resume_words(resume, true),
                    self.compute.argv(),
                ]
                .concat();
                run_args(&argv)
            })?;
            Ok(out)
        };
        let lens = (ft.p_max_len, ft.q_max_len);
        let mut retriever = finetune(st, "s1", &train1)?;
        if plan.stages == 2 {
            let train_queries = queries(&spec.data.train_queries, st)?;
            let mined = cell.join("run-s1.train.tsv");
            st.stage(&markers, "mine", || {
                self.encode_search(
                    &retriever,
                    (&corpus, &train_queries),
                    lens,
                    plan.hn_depth,
                    &mined,
                )
            })?;
            let s2 = cell.join("train-s2");
            st.stage(&markers, "build-train-hn", || {
                let hn = cell.join("train-hn");
                let mut argv = train_words("build-train-hn", &mined);
                argv.extend(["--save_to".into(), word(&hn), "--depth".into()]);
                argv.extend([plan.hn_depth.to_string(), "--n_sample".into()]);
                argv.push(plan.hn_sample.to_string());
                run_args(&argv)?;
                link_union(&s2, &[("bm25", &train1), ("hn", &hn)])
            })?;
            retriever = finetune(st, "s2", &s2)?;
        }

        // Dev ranking and metrics.
        let ranking = cell.join("run.dev.tsv");
        let eval_secs = st.stage(&markers, "encode-search", || {
            self.encode_search(
                &retriever,
                (&corpus, &dev_queries),
                lens,
                plan.depth,
                &ranking,
            )
        })?;
        let m = retrieval::evaluate(
            &retrieval::Qrels::read(&spec.data.dev_qrels)?,
            &retrieval::Run::read(&ranking)?,
        )?;
        if let Some(w) = m.depth_warning() {
            eprintln!("{w}");
        }
        let mut metrics = m.to_json();
        let seconds = stage_seconds(&markers)?;
        let obj = metrics.as_object_mut().expect("an object");
        obj.insert("pretrain_steps".into(), pre.steps.into());
        obj.insert(
            "pretrain_flops".into(),
            (pre.steps as f64 * pre.flops_per_step).into(),
        );
        obj.insert("pretrain_seconds".into(), pretrain_secs.into());
        obj.insert("encode_search_seconds".into(), eval_secs.into());
        obj.insert("stage_seconds".into(), seconds);
        let mut f = retrieval::atomic::AtomicFile::create(&metrics_path)?;
        f.write_all(format!("{metrics:#}\n").as_bytes())?;
        f.finish()?;
        Ok(cell_result(arm, seed, cell, metrics))
    }

    /// `--config_name C` or `--model_name_or_path M`: where every arm starts.
    fn start_words(&self, config_flag: &str) -> Vec<String> {
        match &self.spec.model.start {
            Start::Config(c) => vec![config_flag.into(), word(c)],
            Start::Model(m) => vec!["--model_name_or_path".into(), word(m)],
        }
    }

    /// Encodes the corpus and `queries` with `model` (into `<model>/emb-*`) and searches.
    fn encode_search(
        &self,
        model: &Path,
        (corpus, queries): (&Path, &Path),
        (p_max_len, q_max_len): (usize, usize),
        depth: usize,
        ranking: &Path,
    ) -> CliResult {
        let tag = ranking
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let emb = model.join(format!("emb-{tag}"));
        let encode = |input: &Path, output: &Path, max_len: usize, query: bool| {
            run_args(
                &[
                    words(&["encode", "--model"]),
                    vec![word(model), "--input".into(), word(input)],
                    vec!["--output".into(), word(output), "--max-len".into()],
                    vec![max_len.to_string()],
                    if query {
                        words(&["--is-query"])
                    } else {
                        vec![]
                    },
                    self.compute.argv(),
                ]
                .concat(),
            )
        };
        let mut shards = Vec::new();
        for (i, split) in jsonl_inputs(corpus)?.iter().enumerate() {
            let shard = emb.join(format!("corpus-{i:02}"));
            encode(split, &shard, p_max_len, false)?;
            shards.push(word(&shard));
        }
        let q = emb.join("queries");
        encode(queries, &q, q_max_len, true)?;
        run_args(
            &[
                words(&["search", "--queries"]),
                vec![word(&q), "--output".into(), word(ranking)],
                vec!["--depth".into(), depth.to_string()],
                self.compute.device_argv(),
                words(&["--corpus"]),
                shards,
            ]
            .concat(),
        )
    }
}

fn cell_result(arm: &Arm, seed: u64, dir: PathBuf, metrics: serde_json::Value) -> CellResult {
    CellResult {
        arm: arm.name.clone(),
        seed,
        dir,
        metrics,
    }
}

/// `--resume_from_checkpoint latest` when a checkpoint exists, else `--overwrite_output_dir`
/// (a bare switch for `train-retriever`, `true` for `pretrain`).
fn resume_words(resume: bool, bare_switch: bool) -> Vec<String> {
    match (resume, bare_switch) {
        (true, _) => words(&["--resume_from_checkpoint", "latest"]),
        (false, true) => words(&["--overwrite_output_dir"]),
        (false, false) => words(&["--overwrite_output_dir", "true"]),
    }
}

/// Every stage marker's seconds in `markers`, as a JSON object.
fn stage_seconds(markers: &Path) -> CliResult<serde_json::Value> {
    let mut obj = serde_json::Map::new();
    let mut entries: Vec<_> = std::fs::read_dir(markers)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(stage) = name.strip_suffix(".done") {
            let secs: f64 = std::fs::read_to_string(e.path())?
                .trim()
                .parse()
                .unwrap_or(0.0);
            obj.insert(stage.to_string(), secs.into());
        }
    }
    Ok(obj.into())
}

/// Fills `dir` with hard links (copies where links fail) to every training file of `sources`,
/// each prefixed by its source's name, so one training run reads both negative sets.
fn link_union(dir: &Path, sources: &[(&str, &Path)]) -> CliResult {
    std::fs::create_dir_all(dir)?;
    for (prefix, src) in sources {
        for f in jsonl_inputs(src)? {
            let name = f.file_name().map(|n| n.to_string_lossy().to_string());
            let link = dir.join(format!("{prefix}-{}", name.unwrap_or_default()));
            let _ = std::fs::remove_file(&link);
            if std::fs::hard_link(&f, &link).is_err() {
                std::fs::copy(&f, &link)?;
            }
        }
    }
    Ok(())
}
