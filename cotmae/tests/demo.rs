//! The one-command demo at a toy size: it runs every stage end to end and is deterministic for a
//! seed (two runs in different directories give the same table).

use cotmae::demo::{run, DemoOptions};

fn options(dir: &std::path::Path) -> DemoOptions {
    DemoOptions {
        output_dir: dir.to_path_buf(),
        seed: 7,
        n_docs: 40,
        pretrain_steps: 12,
        finetune_epochs: 1,
        ..DemoOptions::default()
    }
}

#[test]
fn demo_runs_every_stage_and_is_deterministic() {
    let base = std::env::temp_dir().join(format!("cotmae-demo-test-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    let first = run(&options(&a)).expect("demo");
    let second = run(&options(&b)).expect("demo again");
    assert_eq!(first.rows.len(), 3);
    assert!(first.dev_queries > 0 && first.passages > 0);
    for (x, y) in first.rows.iter().zip(&second.rows) {
        assert_eq!(x.pretraining, y.pretraining);
        for (p, q) in [
            (x.mrr_at_10, y.mrr_at_10),
            (x.recall_at_1, y.recall_at_1),
            (x.recall_at_50, y.recall_at_50),
        ] {
            assert!((0.0..=1.0).contains(&p));
            assert_eq!(p.to_bits(), q.to_bits(), "{}: {p} vs {q}", x.pretraining);
        }
    }
    // Each encoder was fine-tuned and evaluated from its own files, through the ablation's
    // cells; `none` was not pretrained.
    for name in ["cotmae", "mlmonly", "none"] {
        let cell = a.join("ablation").join(name).join("seed-7");
        assert!(cell.join("retriever-s1/model.safetensors").exists());
        assert!(cell.join("run.dev.tsv").exists());
        assert_eq!(cell.join("pretrained").exists(), name != "none");
    }
    assert!(a.join("ablation/report.md").exists());
    assert!(first.table().contains("CoT-MAE"));
    std::fs::remove_dir_all(&base).unwrap();
}
