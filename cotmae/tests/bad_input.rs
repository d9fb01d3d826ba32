//! Issue 14, through the `cotmae` command line: bad input gets an error naming the file, the
//! line or the tensor, never an exit 0 with a wrong or empty result, and outputs never replace
//! what is not a regular file. One test per class; the library tests next to each reader check
//! the rules themselves (`bert/tests/checkpoint.rs`, `retrieval/src/ids.rs`, `tensor/src/fs.rs`).

use std::path::{Path, PathBuf};

use bert::BertForMaskedLM;
use cotmae::cli::run_args;
use retrieval::{EmbeddingSet, EncodeItem, JsonlWriter};
use tensor::testing::TempDir;
use tensor::Tensor;

fn cli(args: &[&str]) -> Result<(), String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_args(&args).map_err(|e| e.to_string())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tiny() -> PathBuf {
    tensor::testing::fixtures_dir().join("bert/tiny")
}

/// One training example of `train-retriever`'s JSON lines.
const TRAIN_LINE: &str = "{\"query\": [5, 6], \"positives\": [[7, 8]], \"negatives\": [[9, 10]]}\n";

/// The arguments of a tiny `train-retriever` run of `model` on `train` into `out`, then `extra`
/// (the batch shape and length of the run).
fn retriever_args(model: &Path, out: &Path, train: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train-retriever",
        "--model_name_or_path",
        s(model),
        "--output_dir",
        s(out),
        "--train_dir",
        s(train),
        "--q_max_len",
        "8",
        "--p_max_len",
        "8",
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

/// The arguments of a tiny `pretrain` run of the tiny model on `data` into `out`, then `extra`.
fn pretrain_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let tiny = tiny();
    let mut a: Vec<String> = [
        "pretrain",
        "--model_name_or_path",
        s(&tiny),
        "--train_path",
        s(data),
        "--output_dir",
        s(out),
        "--max_seq_length",
        "16",
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

/// [`cli`] with owned arguments.
fn cli_owned(args: Vec<String>) -> Result<(), String> {
    run_args(&args).map_err(|e| e.to_string())
}

/// The tiny fixture's tensors, `edit`ed, saved as a model directory `dir` with its vocabulary.
fn model_with(dir: &Path, edit: impl Fn(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let (mlm, _) = BertForMaskedLM::from_pretrained(tiny()).unwrap();
    let mut tensors: Vec<(String, Tensor)> = nn::Module::named_params(&mlm)
        .into_iter()
        .map(|(n, p)| (n, p.tensor()))
        .collect();
    edit(&mut tensors);
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "vocab.txt"] {
        std::fs::copy(tiny().join(f), dir.join(f)).unwrap();
    }
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tensor::safetensors::save(dir.join("model.safetensors"), &refs, None).unwrap();
    dir.to_path_buf()
}

fn items(path: &Path) -> PathBuf {
    let mut w = JsonlWriter::create(path).unwrap();
    for i in 0..3u32 {
        w.write(&EncodeItem {
            text_id: format!("d{i}"),
            text: vec![5 + i, 9, 17],
        })
        .unwrap();
    }
    w.finish().unwrap();
    path.to_path_buf()
}

fn encode(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> Result<(), String> {
    let mut args = vec![
        "encode",
        "--model",
        s(model),
        "--input",
        s(input),
        "--output",
        s(out),
        "--max-len",
        "8",
    ];
    args.extend(extra);
    cli(&args)
}

/// Class 2, weights: all tensors unknown, a core tensor missing, NaN / inf values.
#[test]
fn missing_and_non_finite_weights_stop_every_loading_subcommand() {
    let d = TempDir::new("bad-input-weights");
    let input = items(&d.0.join("in.jsonl"));
    let out = d.0.join("emb");

    // Every tensor under another architecture's names (the issue's example).
    let unknown = model_with(&d.0.join("unknown"), |t| {
        for (n, _) in t.iter_mut() {
            *n = format!("roberta.{n}");
        }
    });
    let e = encode(&unknown, &input, &out, &[]).unwrap_err();
    assert!(
        e.contains("unknown/model.safetensors")
            && e.contains("embeddings.word_embeddings.weight")
            && e.contains("--allow_random_init"),
        "{e}"
    );
    assert!(!out.exists(), "nothing written on error");
    // Asked for: a random encoder, and the encode runs.
    encode(&unknown, &input, &out, &["--allow_random_init"]).unwrap();
    assert_eq!(EmbeddingSet::read(&out).unwrap().len(), 3);

    // One core tensor missing, for encode and for train-retriever (found ourselves).
    let gone = "bert.encoder.layer.0.output.LayerNorm.weight";
    let partial = model_with(&d.0.join("partial"), |t| t.retain(|(n, _)| n != gone));
    let e = encode(&partial, &input, &d.0.join("emb2"), &[]).unwrap_err();
    assert!(e.contains("encoder.layer.0.output.LayerNorm.weight"), "{e}");
    let train = d.0.join("train.jsonl");
    std::fs::write(&train, TRAIN_LINE).unwrap();
    let tr = d.0.join("tr");
    let e = cli_owned(retriever_args(
        &partial,
        &tr,
        &train,
        &["--max_steps", "1", "--train_n_passages", "2"],
    ))
    .unwrap_err();
    assert!(
        e.contains("partial/model.safetensors")
            && e.contains("encoder.layer.0.output.LayerNorm.weight"),
        "{e}"
    );

    // NaN (the issue's example), +inf and -inf (found ourselves) name the tensor and the file.
    for (k, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        let target = "bert.embeddings.word_embeddings.weight";
        let dir = model_with(&d.0.join(format!("nonfinite{k}")), |t| {
            for (n, v) in t.iter_mut() {
                if n == target {
                    let mut x = v.to_vec::<f32>().unwrap();
                    x[70] = bad;
                    *v = Tensor::from_vec(x, v.shape()).unwrap();
                }
            }
        });
        let e = encode(&dir, &input, &d.0.join("emb3"), &["--allow_random_init"]).unwrap_err();
        assert!(
            e.contains(target) && e.contains("non-finite") && e.contains("model.safetensors"),
            "{e}"
        );
    }
}

fn write_set(dir: &Path, ids: &[&str], rows: Vec<f32>) {
    let n = ids.len();
    let d = rows.len().checked_div(n).unwrap_or(2);
    let t = Tensor::from_vec(rows, &[n, d]).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    tensor::safetensors::save(
        dir.join("embeddings.safetensors"),
        &[("embeddings", &t)],
        None,
    )
    .unwrap();
    std::fs::write(
        dir.join("ids.txt"),
        ids.iter().map(|i| format!("{i}\n")).collect::<String>(),
    )
    .unwrap();
}

/// Class 2, embeddings and ids fed to `search`, rankings fed to `evaluate`.
#[test]
fn search_and_evaluate_refuse_bad_vectors_ids_and_empty_or_repeated_inputs() {
    let d = TempDir::new("bad-input-search");
    let q = d.0.join("q");
    write_set(&q, &["q1", "q2"], vec![1.0, 0.0, 0.0, 1.0]);
    let c = d.0.join("c");
    write_set(&c, &["p1", "p2", "p3"], vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5]);
    let out = d.0.join("run.tsv");
    let search = |corpus: &[&Path]| {
        let mut a = vec![
            "search",
            "--queries",
            s(&q),
            "--output",
            s(&out),
            "--depth",
            "2",
        ];
        a.push("--corpus");
        a.extend(corpus.iter().map(|p| s(p)));
        cli(&a)
    };
    search(&[&c]).unwrap();

    // A NaN in a corpus row (the issue's example) and an inf in a query row.
    let bad = d.0.join("nan");
    write_set(&bad, &["p7", "p8"], vec![1.0, 0.0, f32::NAN, 1.0]);
    let e = search(&[&c, &bad]).unwrap_err();
    assert!(
        e.contains("nan/embeddings.safetensors") && e.contains("row 1") && e.contains("\"p8\""),
        "{e}"
    );
    let badq = d.0.join("inf");
    write_set(&badq, &["q9"], vec![f32::INFINITY, 0.0]);
    let e = cli(&[
        "search",
        "--queries",
        s(&badq),
        "--corpus",
        s(&c),
        "--output",
        s(&out),
    ])
    .unwrap_err();
    assert!(e.contains("row 0") && e.contains("non-finite"), "{e}");

    // Ids: tab, space, carriage return, empty (the issue's), a control character (ours).
    for (k, id) in ["p\t1", "p 1", "p\r1", "", "p\u{7}1"]
        .into_iter()
        .enumerate()
    {
        let dir = d.0.join(format!("ids{k}"));
        write_set(&dir, &["p0", id], vec![1.0, 0.0, 0.0, 1.0]);
        let e = search(&[&dir]).unwrap_err();
        assert!(e.contains(&format!("ids{k}/ids.txt:2:")), "{id:?}: {e}");
    }
    // A pid in two shards (the issue's example) and twice in one (ours).
    let dup = d.0.join("dup");
    write_set(&dup, &["p9", "p2"], vec![1.0, 0.0, 0.0, 1.0]);
    let e = search(&[&c, &dup]).unwrap_err();
    assert!(
        e.contains("dup/ids.txt:2") && e.contains("c/ids.txt:2"),
        "{e}"
    );
    let dup1 = d.0.join("dup1");
    write_set(&dup1, &["p4", "p5", "p4"], vec![0.0; 6]);
    let e = search(&[&dup1]).unwrap_err();
    assert!(
        e.contains("dup1/ids.txt:3") && e.contains("ids.txt:1"),
        "{e}"
    );
    // An empty corpus (the issue's example), in one shard or all of several.
    let empty = d.0.join("empty");
    write_set(&empty, &[], vec![]);
    let e = search(&[&empty]).unwrap_err();
    assert!(e.contains("holds no passage"), "{e}");
    let e = search(&[&empty, &empty]).unwrap_err();
    assert!(e.contains("holds no passage"), "{e}");

    // evaluate: a passage twice for a query (the issue's example), also as TREC lines (ours).
    let qrels = d.0.join("qrels.tsv");
    std::fs::write(&qrels, "q1\t0\tp1\t1\n").unwrap();
    for (k, text) in [
        "q1\tp1\t2.0\nq1\tp2\t1.0\nq1\tp1\t0.5\n",
        "q1 Q0 p2 1 2.0 x\nq2 Q0 p2 1 1.0 x\nq1 Q0 p2 2 0.5 x\n",
    ]
    .into_iter()
    .enumerate()
    {
        let run = d.0.join(format!("dup-run{k}.tsv"));
        std::fs::write(&run, text).unwrap();
        let e = cli(&["evaluate", "--qrels", s(&qrels), "--run", s(&run)]).unwrap_err();
        assert!(
            e.contains(&format!("dup-run{k}.tsv:3:"))
                && e.contains("twice")
                && e.contains("line 1"),
            "{e}"
        );
    }
    // A qrels id with a control character.
    std::fs::write(&qrels, "q1\t0\tp\u{1}1\t1\n").unwrap();
    let e = cli(&["evaluate", "--qrels", s(&qrels), "--run", s(&out)]).unwrap_err();
    assert!(e.contains("qrels.tsv:1:") && e.contains("control"), "{e}");
}

/// The build-train inputs of `retrieval/tests/data.rs`, smaller: passages p0..p5.
fn train_inputs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let corpus: String = (0..6)
        .map(|i| format!("p{i}\ttitle\tw{i} w{}\n", i + 10))
        .collect();
    std::fs::write(dir.join("corpus.tsv"), corpus).unwrap();
    std::fs::write(dir.join("queries.tsv"), "q1\tw1 w2\nq2\tw3\n").unwrap();
    std::fs::write(dir.join("qrels.tsv"), "q1\t0\tp0\t1\nq2\t0\tp1\t1\n").unwrap();
}

fn build(dir: &Path, cmd: &str, negatives: &str, save_to: &Path) -> Result<(), String> {
    build_with(dir, cmd, negatives, save_to, &[])
}

fn build_with(
    dir: &Path,
    cmd: &str,
    negatives: &str,
    save_to: &Path,
    extra: &[&str],
) -> Result<(), String> {
    let neg = dir.join("neg.tsv");
    std::fs::write(&neg, negatives).unwrap();
    let flag = if cmd == "build-train" {
        "--negative_file"
    } else {
        "--hn_file"
    };
    let (tok, qrels) = (tiny(), dir.join("qrels.tsv"));
    let (queries, corpus) = (dir.join("queries.tsv"), dir.join("corpus.tsv"));
    let mut args = vec![
        cmd,
        "--tokenizer_name",
        s(&tok),
        flag,
        s(&neg),
        "--qrels",
        s(&qrels),
        "--queries",
        s(&queries),
        "--collection",
        s(&corpus),
        "--save_to",
        s(save_to),
    ];
    args.extend(extra);
    cli(&args)
}

fn negatives_of(save_to: &Path) -> Vec<usize> {
    let files = retrieval::jsonl_inputs(save_to).unwrap();
    files
        .iter()
        .flat_map(|f| retrieval::read_jsonl::<retrieval::TrainExample>(f).unwrap())
        .map(|e| e.negatives.len())
        .collect()
}

/// Class 2, degenerate training data.
#[test]
fn build_train_refuses_unknown_pids_and_never_writes_an_example_without_negatives() {
    let d = TempDir::new("bad-input-build");
    train_inputs(&d.0);
    // An unknown pid: at the top of the ranking (ours) and past `depth` (the issue's silent
    // drop), both errors naming the line.
    for (k, text) in [
        "q1\tp9\t3\n",
        "q1\tp2\t3\nq1\tp3\t2\nq1\tp4\t2\nq1\tp5\t1\nq1\tp9\t0\n",
    ]
    .into_iter()
    .enumerate()
    {
        let save_to = d.0.join(format!("hn{k}"));
        let e = build_with(&d.0, "build-train-hn", text, &save_to, &["--depth", "2"]).unwrap_err();
        assert!(e.contains("neg.tsv:") && e.contains("\"p9\""), "{e}");
    }
    // A positive among BM25 negatives (the issue's): removed; q2 left with none: skipped.
    let out = d.0.join("bm25");
    build(
        &d.0,
        "build-train",
        "q1\tp0\tp0\nq1\tp0\tp2\nq2\tp1\tp1\n",
        &out,
    )
    .unwrap();
    assert_eq!(negatives_of(&out), [1], "q1 keeps p2 only, q2 is skipped");
    // Every query left without a negative (the issue's 0-negative example), or no line at all
    // (build-train writing 0 examples): an error, and no directory claimed.
    let none = d.0.join("none");
    let e = build(&d.0, "build-train", "q1\tp0\tp0\n", &none).unwrap_err();
    assert!(
        e.contains("no training example") && e.contains("1 query"),
        "{e}"
    );
    let e = build(&d.0, "build-train-hn", "q1\tp0\t1\n", &none).unwrap_err();
    assert!(e.contains("no training example"), "{e}");
    let e = build(&d.0, "build-train", "\n", &none).unwrap_err();
    assert!(e.contains("no training example"), "{e}");
    assert!(!none.exists());
    // A pid with a space in the collection: the collection's file:line.
    std::fs::write(d.0.join("corpus.tsv"), "p0\tt\tw1\np 1\tt\tw2\n").unwrap();
    let e = build(&d.0, "build-train", "q1\tp0\tp0\n", &none).unwrap_err();
    assert!(e.contains("corpus.tsv:2:") && e.contains("a space"), "{e}");
}

/// Class 2 (found ourselves): `prepare` that would write no document (a blank file, or lines
/// that all give fewer than two spans) is an error, not 0 documents written and exit 0.
#[test]
fn prepare_writing_no_document_is_an_error() {
    let d = TempDir::new("bad-input-prepare");
    for (k, text) in ["\n\n", "one short line\n"].into_iter().enumerate() {
        let file = d.0.join(format!("corpus{k}.txt"));
        std::fs::write(&file, text).unwrap();
        let save_to = d.0.join(format!("out{k}"));
        let e = cli(&[
            "prepare",
            "--file",
            s(&file),
            "--save_to",
            s(&save_to),
            "--tokenizer",
            s(&tiny()),
        ])
        .unwrap_err();
        assert!(
            e.contains(&format!("corpus{k}.txt")) && e.contains("no document to write"),
            "{e}"
        );
        let left: Vec<_> = std::fs::read_dir(&save_to).map_or(vec![], |r| r.collect());
        assert!(left.is_empty(), "{left:?}");
    }
}

/// Class 2: pretraining data whose spans are all empty.
#[test]
fn pretrain_on_empty_spans_is_an_error_not_a_zero_loss() {
    let d = TempDir::new("bad-input-spans");
    let data = d.0.join("data.jsonl");
    let empty = r#"{"spans": [{"anchor": [], "random_sampled": [], "nearby": [], "overlap": []}]}"#;
    std::fs::write(&data, format!("{empty}\n{empty}\n")).unwrap();
    let out = d.0.join("out");
    let e = cli_owned(pretrain_args(&data, &out, &["--max_steps", "1"])).unwrap_err();
    assert!(e.contains("data.jsonl") && e.contains("every span"), "{e}");
}

/// Class 4 (found ourselves): batch sizes no run could reach are errors naming the flag, not an
/// abort on a failed allocation in the first step (`--gradient_accumulation_steps 1e11` of
/// `pretrain`, `--train_n_passages 1e11` of `train-retriever` aborted).
#[test]
fn unreachable_batch_sizes_are_errors_not_aborts() {
    let d = TempDir::new("bad-input-batch");
    let data = d.0.join("data.jsonl");
    let doc =
        r#"{"spans": [{"anchor": [5, 6], "random_sampled": [7], "nearby": [8], "overlap": [9]}]}"#;
    std::fs::write(&data, format!("{doc}\n")).unwrap();
    let args = [
        "--max_steps",
        "1",
        "--gradient_accumulation_steps",
        "100000000000",
    ];
    let e = cli_owned(pretrain_args(&data, &d.0.join("out"), &args)).unwrap_err();
    assert!(
        e.contains("--gradient_accumulation_steps 100000000000 is above the limit"),
        "{e}"
    );
    let train = d.0.join("train.jsonl");
    std::fs::write(&train, TRAIN_LINE).unwrap();
    for (batch, n) in [("1", "100000000000"), ("100000000000", "2")] {
        let out = d.0.join(format!("tr{batch}"));
        let extra = [
            "--per_device_train_batch_size",
            batch,
            "--train_n_passages",
            n,
            "--max_steps",
            "1",
        ];
        let e = cli_owned(retriever_args(&tiny(), &out, &train, &extra)).unwrap_err();
        assert!(e.contains("above the limit"), "{e}");
    }
}

/// Class 3: outputs that are a symlink, a FIFO, a device or a directory are refused untouched.
#[cfg(unix)]
#[test]
fn outputs_never_replace_links_fifos_devices_or_directories() {
    let d = TempDir::new("bad-input-outputs");
    let q = d.0.join("q");
    write_set(&q, &["q1"], vec![1.0, 0.0]);
    let target = d.0.join("kept.tsv");
    std::fs::write(&target, "keep\n").unwrap();
    let link = d.0.join("link.tsv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = d.0.join("fifo.tsv");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    let dir = d.0.join("a-dir");
    std::fs::create_dir(&dir).unwrap();
    let mut cases: Vec<(PathBuf, &str)> = vec![
        (link.clone(), "symbolic link"),
        (dir.clone(), "directory"),
        (PathBuf::from("/dev/null"), "device"),
    ];
    if made.is_ok_and(|st| st.success()) {
        cases.push((fifo.clone(), "FIFO"));
    } else {
        eprintln!("mkfifo unavailable: the FIFO case is not checked here");
    }
    for (path, says) in &cases {
        // search --output (a run file) and tokenize-queries --save_to (JSON lines).
        let e = cli(&[
            "search",
            "--queries",
            s(&q),
            "--corpus",
            s(&q),
            "--output",
            s(path),
        ])
        .unwrap_err();
        assert!(e.contains(says) && e.contains("refusing"), "{e}");
        let queries = d.0.join("queries.tsv");
        std::fs::write(&queries, "q1\tw1\n").unwrap();
        let e = cli(&[
            "tokenize-queries",
            "--tokenizer_name",
            s(&tiny()),
            "--query_file",
            s(&queries),
            "--save_to",
            s(path),
        ])
        .unwrap_err();
        assert!(e.contains(says) && e.contains("refusing"), "{e}");
    }
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
    assert!(dir.is_dir() && std::fs::read_dir(&dir).unwrap().next().is_none());
}

/// Class 2, ids where they are read (found ourselves): the `text_id` of JSON lines given to
/// `encode` (a newline, a space, a tab, empty), and the pid column of a corpus given to
/// `tokenize-corpus` (a space, empty, listed twice); nothing is written.
#[test]
fn ids_are_checked_in_json_lines_and_tsv_corpora() {
    let d = TempDir::new("bad-input-ids");
    let model = tiny();
    for (k, id) in ["d\n1", "d 1", "d\t1", ""].into_iter().enumerate() {
        let input = d.0.join(format!("in{k}.jsonl"));
        let line = serde_json::json!({"text_id": id, "text": [5, 9]});
        std::fs::write(
            &input,
            format!("{{\"text_id\": \"d0\", \"text\": [5]}}\n{line}\n"),
        )
        .unwrap();
        let out = d.0.join(format!("emb{k}"));
        let e = encode(&model, &input, &out, &[]).unwrap_err();
        assert!(
            e.contains(&format!("in{k}.jsonl:2:")) && e.contains("text_id"),
            "{id:?}: {e}"
        );
        assert!(!out.exists(), "nothing written for {id:?}");
    }
    for (k, (text, says)) in [
        ("p0\tt\tw1\np 1\tt\tw2\n", "a space"),
        ("p0\tt\tw1\n\tt\tw2\n", "empty id"),
        ("p0\tt\tw1\np1\tt\tw2\np0\tt\tw3\n", "already listed at"),
    ]
    .into_iter()
    .enumerate()
    {
        let corpus = d.0.join(format!("corpus{k}.tsv"));
        std::fs::write(&corpus, text).unwrap();
        let save_to = d.0.join(format!("enc{k}"));
        let e = cli(&[
            "tokenize-corpus",
            "--tokenizer_name",
            s(&model),
            "--file",
            s(&corpus),
            "--save_to",
            s(&save_to),
        ])
        .unwrap_err();
        let line = if k == 2 { 3 } else { 2 };
        assert!(
            e.contains(&format!("corpus{k}.tsv:{line}:")) && e.contains(says),
            "{text:?}: {e}"
        );
    }
    // A query id listed twice in a query file: an error, and no output.
    let queries = d.0.join("queries.tsv");
    std::fs::write(&queries, "q1\tw1\nq2\tw2\nq1\tw3\n").unwrap();
    let save_to = d.0.join("q.json");
    let e = cli(&[
        "tokenize-queries",
        "--tokenizer_name",
        s(&model),
        "--query_file",
        s(&queries),
        "--save_to",
        s(&save_to),
    ])
    .unwrap_err();
    assert!(
        e.contains("queries.tsv:3:") && e.contains("already listed at"),
        "{e}"
    );
    assert!(!save_to.exists());
    // An empty or blank input is an error, not 0 records written (found ourselves).
    std::fs::write(&queries, "\n\n").unwrap();
    for (cmd, flag, to) in [
        ("tokenize-queries", "--query_file", d.0.join("q0.json")),
        ("tokenize-corpus", "--file", d.0.join("enc-empty")),
    ] {
        let e = cli(&[
            cmd,
            "--tokenizer_name",
            s(&model),
            flag,
            s(&queries),
            "--save_to",
            s(&to),
        ])
        .unwrap_err();
        assert!(
            e.contains("queries.tsv") && e.contains("no record"),
            "{cmd}: {e}"
        );
        assert!(!to.exists(), "{cmd}");
    }
}

/// Class 2, mined negatives (found ourselves): a positive ranked among a query's hard negatives
/// is removed, and a query whose whole ranking is its positives gets no example.
#[test]
fn build_train_hn_removes_positives_from_the_negatives() {
    let d = TempDir::new("bad-input-hn");
    train_inputs(&d.0);
    let out = d.0.join("hn");
    // q1: p0 is its positive, ranked first; q2: only its positive p1.
    build(
        &d.0,
        "build-train-hn",
        "q1\tp0\t3\nq1\tp2\t2\nq1\tp3\t1\nq2\tp1\t5\n",
        &out,
    )
    .unwrap();
    assert_eq!(negatives_of(&out), [2], "q1 keeps p2 and p3, q2 is skipped");
}

/// Runs the `cotmae` binary; returns its success and its stderr.
fn run_bin(args: &[String]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cotmae"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Class 4, both trainers: a killed save's temporary is removed at start, saying so, and
/// `--resume_from_checkpoint latest` names the newer empty or corrupt `checkpoint-N` it passes
/// over and the checkpoint it resumes from.
#[test]
fn resumes_name_the_checkpoints_skipped_and_the_one_used_in_both_trainers() {
    let d = TempDir::new("bad-input-resume");
    let train = d.0.join("train.jsonl");
    std::fs::write(&train, TRAIN_LINE.repeat(4)).unwrap();
    let spans = d.0.join("spans.jsonl");
    let doc = r#"{"spans": [{"anchor": [5, 6, 7], "random_sampled": [8, 9], "nearby": [10], "overlap": [11, 12]}]}"#;
    std::fs::write(&spans, format!("{doc}\n").repeat(4)).unwrap();
    let retriever = |out: &Path, steps: &str, extra: &[&str]| {
        let mut a = vec!["--per_device_train_batch_size", "2", "--max_steps", steps];
        a.extend(["--save_steps", "1", "--train_n_passages", "2"]);
        a.extend(extra);
        run_bin(&retriever_args(&tiny(), out, &train, &a))
    };
    let pretrain = |out: &Path, steps: &str, extra: &[&str]| {
        let mut a = vec!["--per_device_train_batch_size", "2", "--max_steps", steps];
        a.extend(["--save_steps", "1"]);
        a.extend(extra);
        run_bin(&pretrain_args(&spans, out, &a))
    };
    type Trainer<'a> = &'a dyn Fn(&Path, &str, &[&str]) -> (bool, String);
    let trainers: [(&str, Trainer, &str); 2] = [
        ("train-retriever", &retriever, ".tmp-checkpoint-3-12345"),
        ("pretrain", &pretrain, "checkpoint-3.tmp-12345"),
    ];
    for (name, run, tmp) in trainers {
        let out = d.0.join(name);
        let (ok, err) = run(&out, "2", &[]);
        assert!(ok, "{name}: {err}");
        // What kills and damage leave: a half-written save, an empty checkpoint-9 and a
        // checkpoint-5 whose model file is cut short.
        std::fs::create_dir_all(out.join(tmp)).unwrap();
        std::fs::create_dir_all(out.join("checkpoint-9")).unwrap();
        let five = out.join("checkpoint-5");
        std::fs::create_dir_all(&five).unwrap();
        for entry in std::fs::read_dir(out.join("checkpoint-2")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), five.join(entry.file_name())).unwrap();
        }
        let model = five.join("model.safetensors");
        let bytes = std::fs::read(&model).unwrap();
        std::fs::write(&model, &bytes[..bytes.len() - 8]).unwrap();

        let (ok, err) = run(&out, "3", &["--resume_from_checkpoint", "latest"]);
        assert!(ok, "{name}: {err}");
        let said = |what: &str| err.lines().any(|l| l.contains(what));
        assert!(
            said(&format!("removed {}", out.join(tmp).display())),
            "{name}: {err}"
        );
        assert!(!out.join(tmp).exists(), "{name}");
        for skipped in [
            "checkpoint-9: no ",
            "checkpoint-5: model.safetensors is damaged",
        ] {
            assert!(said(skipped), "{name}: {skipped}: {err}");
        }
        let two = out.join("checkpoint-2");
        assert!(
            said(&format!("resuming from {}", two.display())),
            "{name}: {err}"
        );
    }
}
