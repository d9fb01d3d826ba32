//! `cotmae ablation` on tiny generated data: a 2-arm x 2-seed spec end to end, the paired
//! design, a rerun after an interrupted cell, `match_compute`, and the spec's error messages.

use std::path::{Path, PathBuf};

use cotmae::ablation::cell::Plan;
use cotmae::ablation::spec::Spec;
use cotmae::ablation::{run, AblationOptions};
use cotmae::demo::{data, write_task};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cotmae-ablation-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The demo's generated task in `dir`, with a smaller BERT so the test takes seconds.
fn task(dir: &Path) {
    write_task(&data::generate(30, 0.7, 3), dir, 3).unwrap();
    let vocab = bert::Tokenizer::from_dir(dir.join("vocab"))
        .unwrap()
        .vocab_size();
    let config = bert::BertConfig {
        vocab_size: vocab,
        hidden_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 64,
        max_position_embeddings: 64,
        ..bert::BertConfig::default()
    };
    std::fs::write(
        dir.join("config.json"),
        config.to_json_string("BertForMaskedLM"),
    )
    .unwrap();
}

const DATA: &str = r#"
[data]
corpus = "corpus.tsv"
dev_qrels = "qrels.dev.tsv"
dev_queries = "queries.dev.tsv"
pretrain_file = "documents.txt"
train_qrels = "qrels.train.tsv"
train_queries = "queries.train.tsv"
bm25_depth = 10
[model]
config_name = "config.json"
tokenizer_name = "vocab"
[prepare]
maxlen = 24
[pretrain]
max_steps = 3
per_device_train_batch_size = 4
max_seq_length = 24
save_steps = 3
logging_steps = 1
learning_rate = 1e-3
[finetune]
max_steps = 3
per_device_train_batch_size = 4
train_n_passages = 2
q_max_len = 16
p_max_len = 24
logging_steps = 1
n_sample = 4
depth = 20
"#;

fn write_spec(dir: &Path, head: &str, arms: &str) -> PathBuf {
    let path = dir.join("spec.toml");
    std::fs::write(&path, format!("{head}\n{DATA}\n{arms}")).unwrap();
    path
}

const TWO_ARMS: &str = r#"
[arms.none]
pretrain = false
[arms.mlm]
pretrain.use_decoder_head = false
"#;

#[test]
fn two_arms_two_seeds_end_to_end_paired_and_resumable() {
    let dir = temp("e2e");
    task(&dir);
    let spec = write_spec(&dir, "seeds = [1, 2]\nbaseline = \"mlm\"", TWO_ARMS);
    let out = dir.join("out");
    let opts = AblationOptions {
        spec,
        output_dir: out.clone(),
        compute: Default::default(),
    };
    let first = run(&opts).expect("ablation");

    // Every cell finished with its metrics; `pretrain = false` skipped pretraining.
    for arm in ["none", "mlm"] {
        for seed in [1, 2] {
            let cell = out.join(arm).join(format!("seed-{seed}"));
            let m: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(cell.join("metrics.json")).unwrap())
                    .unwrap();
            let mrr = m["MRR@10"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&mrr), "{m}");
            assert_eq!(m["depth"], 20, "{m}");
            assert!(cell.join("run.dev.tsv").exists());
            let pretrained = cell.join("pretrained");
            assert_eq!(pretrained.exists(), arm == "mlm", "{}", cell.display());
            assert_eq!(m["pretrain_steps"], if arm == "mlm" { 3 } else { 0 });
        }
    }
    // Paired design: one set of training files per seed, shared by both arms (same files and
    // same --seed, so the same fine-tuning order); one prepare per seed (only mlm pretrains).
    let shared: Vec<String> = std::fs::read_dir(out.join("shared"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let count = |p: &str| shared.iter().filter(|n| n.starts_with(p)).count();
    assert_eq!(count("train-"), 2, "{shared:?}");
    assert_eq!(count("prepare-"), 2, "{shared:?}");
    assert_eq!(count("corpus-"), 1, "{shared:?}");
    // Stages: shared corpus, dev queries, BM25 = 3; per seed prepare + build-train = 4;
    // per cell train + encode-search (x4) = 8; pretrain for mlm (x2) = 2.
    assert_eq!(first.stages.run, 17);

    // The report: both files, the same numbers, the comparison with the baseline.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(json["baseline"], "mlm");
    let rows = json["comparisons"].as_array().unwrap();
    assert_eq!(rows.len(), 2); // none vs mlm on MRR@10 and recall@50
    for row in rows {
        let diff = row["diff"].as_f64().unwrap();
        assert!(md.contains(&format!("{diff:+}")), "{diff} not in report.md");
        assert!(row["p_value"].as_f64().unwrap() > 0.0);
    }
    for arm in json["arms"].as_array().unwrap() {
        let mean = arm["metrics"][0]["mean"].as_f64().unwrap();
        assert!(md.contains(&format!("{mean} ±")), "{mean} not in report.md");
    }
    for svg in ["mrr.svg", "loss.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    }
    assert!(std::fs::read_to_string(out.join("loss.svg"))
        .unwrap()
        .contains("<polyline"));

    // A rerun reuses everything.
    let again = run(&opts).expect("rerun");
    assert_eq!(again.stages.run, 0);
    // A cell killed during its last stage (no metrics.json, no marker) reruns that stage only.
    let cell = out.join("mlm").join("seed-2");
    std::fs::remove_file(cell.join("metrics.json")).unwrap();
    std::fs::remove_file(cell.join("stages").join("encode-search.done")).unwrap();
    let resumed = run(&opts).expect("resume");
    assert_eq!(resumed.stages.run, 1);
    let before = first.report.arms[1].metrics[0].per_seed.clone();
    assert_eq!(resumed.report.arms[1].metrics[0].per_seed, before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_stage_fine_tuning_mines_hard_negatives_with_stage_one() {
    let dir = temp("stages");
    task(&dir);
    let arms = "[arms.none]\npretrain = false\nfinetune.stages = 2\nfinetune.hn_depth = 10\n";
    let spec = write_spec(&dir, "seeds = [5]\nbaseline = \"none\"", arms);
    let out = dir.join("out");
    let opts = AblationOptions {
        spec,
        output_dir: out.clone(),
        compute: Default::default(),
    };
    let r = run(&opts).expect("two-stage ablation");
    let cell = out.join("none").join("seed-5");
    // Stage 1 ranked the training queries; stage 2 trained on BM25 + mined negatives.
    assert!(cell.join("run-s1.train.tsv").exists());
    assert!(cell.join("retriever-s2/model.safetensors").exists());
    let names: Vec<String> = std::fs::read_dir(cell.join("train-s2"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("bm25-")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("hn-")), "{names:?}");
    let m = std::fs::read_to_string(cell.join("metrics.json")).unwrap();
    assert!(m.contains("train-retriever-s2"), "{m}");
    // shared: corpus, dev queries, BM25, build-train, train queries; cell: s1, mine,
    // build-train-hn, s2, encode-search.
    assert_eq!(r.stages.run, 10);
    assert!(r.report.comparisons.is_empty()); // one arm: nothing to compare
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn match_compute_sets_steps_from_the_flop_ratio() {
    let dir = temp("flops");
    task(&dir);
    let arms = r#"
[arms.cotmae]
pretrain.max_steps = 30
[arms.mlm-matched]
pretrain.use_decoder_head = false
match_compute = "cotmae"
"#;
    let path = write_spec(&dir, "seeds = [1]\nbaseline = \"cotmae\"", arms);
    let spec = Spec::read(&path).unwrap();
    let plan = Plan::new(&spec, &dir.join("out"), &Default::default()).unwrap();
    let (c, m) = (&plan.pretraining[0], &plan.pretraining[1]);
    assert_eq!(c.steps, 30);
    assert!(c.flops_per_step > m.flops_per_step, "{c:?} {m:?}");
    let want = (30.0 * c.flops_per_step / m.flops_per_step).round() as u64;
    assert_eq!(m.steps, want);
    assert!(m.steps > 30);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn spec_errors_name_the_file_line_and_key() {
    let dir = temp("errors");
    task(&dir);
    let err = |head: &str, arms: &str| -> String {
        let path = write_spec(&dir, head, arms);
        Spec::read(&path).expect_err("a bad spec").to_string()
    };
    let head = "seeds = [1]\nbaseline = \"mlm\"";
    // Unknown top-level key: toml's own message, with the line.
    let e = err(&format!("{head}\ncolour = 3"), TWO_ARMS);
    assert!(e.contains("spec.toml") && e.contains("colour"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    // Unknown flag of an arm: named with its arm and line.
    let e = err(head, "[arms.mlm]\npretrain.use_decoder_hed = false\n");
    let line = format!("{head}\n{DATA}\n").lines().count() + 2;
    assert!(
        e.contains(&format!("spec.toml:{line}:")) && e.contains("use_decoder_hed"),
        "{e} (want line {line})"
    );
    assert!(e.contains("has no flag"), "{e}");
    // A flag the harness sets itself.
    let e = err(head, "[arms.mlm]\npretrain.seed = 3\n");
    assert!(e.contains("set by the ablation"), "{e}");
    // An unknown key of an arm.
    let e = err(head, "[arms.mlm]\npretrian = false\n");
    assert!(e.contains("unknown key `arms.mlm.pretrian`"), "{e}");
    // A missing file.
    std::fs::remove_file(dir.join("qrels.dev.tsv")).unwrap();
    let e = err(head, TWO_ARMS);
    assert!(
        e.contains("data.dev_qrels") && e.contains("no such file"),
        "{e}"
    );
    assert!(e.contains("spec.toml:"), "{e}");
    // The baseline must be an arm.
    task(&dir);
    let e = err("seeds = [1]\nbaseline = \"mlmx\"", TWO_ARMS);
    assert!(e.contains("no arm named \"mlmx\""), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
