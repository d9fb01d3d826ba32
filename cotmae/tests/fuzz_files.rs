//! Property tests of the files `cotmae` reads back (issue 14, class 5): the token store, the
//! JSON-lines documents `pretrain` reads, `trainer_state.json`, TensorBoard event files, and the
//! ablation spec. Random bytes and mutations of valid files give an error naming the file or a
//! valid result, never a panic or an allocation of a claimed size; each writer's output reads
//! back as written.

#[path = "../../tests/fuzz/strategies.rs"]
mod strategies;

use std::path::{Path, PathBuf};

use cotmae::ablation::spec::Spec;
use cotmae::collator::{CollatorState, SpanSource};
use cotmae::spans::{SpanKind, SpanSet};
use cotmae::trainer::loader::LoaderState;
use cotmae::trainer::state::{LossSums, STATE_FILE};
use cotmae::trainer::tensorboard::{read_records, EventWriter};
use cotmae::trainer::{TrainData, TrainerState};
use cotmae::{prepare, PrepareOptions, TokenStore, TokenStoreWriter};
use proptest::prelude::*;
use strategies::*;
use tensor::Rng;

fn span_set() -> impl Strategy<Value = SpanSet> {
    let ids = || prop::collection::vec(0u32..65536, 0..6);
    (ids(), ids(), ids(), ids()).prop_map(|(anchor, random_sampled, nearby, overlap)| SpanSet {
        anchor,
        random_sampled,
        nearby,
        overlap,
    })
}

fn documents() -> impl Strategy<Value = Vec<Vec<SpanSet>>> {
    prop::collection::vec(prop::collection::vec(span_set(), 1..4), 0..4)
}

/// Writes `docs` as a token store in `dir`; returns the file.
fn write_store(dir: &Path, docs: &[Vec<SpanSet>]) -> PathBuf {
    let mut w = TokenStoreWriter::create(dir).unwrap();
    for d in docs {
        w.add_span_sets(d).unwrap();
    }
    w.finish().unwrap()
}

fn valid_store() -> Vec<u8> {
    let dir = Scratch::new("ts-valid");
    let set = |x: u32| SpanSet {
        anchor: vec![x, x + 1, x + 2],
        random_sampled: vec![x + 3],
        nearby: vec![],
        overlap: vec![x, x],
    };
    std::fs::read(write_store(
        dir.path(),
        &[vec![set(1), set(9)], vec![set(20)]],
    ))
    .unwrap()
}

/// Every span of every document, read through the source's public interface.
fn all_spans(s: &dyn SpanSource) -> Vec<Vec<SpanSet>> {
    (0..s.num_docs())
        .map(|d| {
            (0..s.num_spans(d))
                .map(|i| {
                    let ids = |kind| {
                        let mut v = Vec::new();
                        s.span_ids(d, i, kind, &mut v);
                        v
                    };
                    SpanSet {
                        anchor: ids(SpanKind::Anchor),
                        random_sampled: ids(SpanKind::RandomSampled),
                        nearby: ids(SpanKind::Nearby),
                        overlap: ids(SpanKind::Overlap),
                    }
                })
                .collect()
        })
        .collect()
}

fn check_store(dir: &Scratch, bytes: &[u8]) {
    let p = dir.file("tokens.bin", bytes);
    match TokenStore::open(&p) {
        Ok(s) => {
            all_spans(&s);
        }
        Err(e) => assert_names(&e.to_string(), &p),
    }
    assert_bounded_memory("TokenStore::open");
}

fn jsonl(docs: &[Vec<SpanSet>]) -> Vec<u8> {
    docs.iter()
        .map(|d| format!("{}\n", serde_json::json!({ "spans": d })))
        .collect::<String>()
        .into_bytes()
}

fn valid_state() -> TrainerState {
    let loader = LoaderState {
        epoch: 1,
        index: 7,
        collator: CollatorState {
            seed: 3,
            offset: (2 << 56) + 99,
        },
    };
    let rng = Rng {
        seed: 42,
        offset: (1 << 56) + 5,
    };
    let mut s = TrainerState::new(100, loader, rng, PathBuf::from("runs/x"));
    s.global_step = 12;
    s.since_log = LossSums {
        steps: 2,
        sequences: 64,
        loss: 7.25,
        encoder_mlm_loss: 4.0,
        head_mlm_loss: 3.25,
    };
    s.total = s.since_log;
    s.loss_scaler = Some(nn::Precision::F16.loss_scaler().unwrap().state_dict());
    s
}

fn check_state(dir: &Scratch, bytes: &[u8]) {
    let p = dir.file(STATE_FILE, bytes);
    if let Err(e) = TrainerState::load(dir.path()) {
        assert_names(&e.to_string(), &p);
    }
    assert_bounded_memory("TrainerState::load");
}

fn valid_events() -> Vec<u8> {
    let dir = Scratch::new("tb-valid");
    let mut w = EventWriter::create(dir.path(), Some(3)).unwrap();
    w.add_scalar("train/loss", 2.5, 3).unwrap();
    w.flush().unwrap();
    std::fs::read(w.path()).unwrap()
}

const SPEC: &str = include_str!("../../docs/ablation/stdlib.toml");

proptest! {
    #![proptest_config(config(DEFAULT_CASES))]

    #[test]
    fn token_store_never_panics(b in any_input(valid_store())) {
        check_store(&Scratch::new("ts"), &b);
    }

    #[test]
    fn token_store_round_trips(docs in documents()) {
        let dir = Scratch::new("ts-rt");
        let store = TokenStore::open(write_store(dir.path(), &docs)).unwrap();
        prop_assert_eq!(all_spans(&store), docs);
    }

    #[test]
    fn jsonl_documents_never_panic(b in any_input(jsonl(&vec![vec![SpanSet {
        anchor: vec![1, 2], random_sampled: vec![3], nearby: vec![], overlap: vec![4, 5],
    }]; 2]))) {
        let dir = Scratch::new("jl");
        let p = dir.file("data.jsonl", &b);
        match TrainData::open(&p) {
            Ok(d) => { all_spans(&d); }
            Err(e) => assert_names(&e.to_string(), &p),
        }
        assert_bounded_memory("TrainData::open");
    }

    #[test]
    fn jsonl_documents_round_trip(docs in documents()) {
        let dir = Scratch::new("jl-rt");
        let p = dir.file("data.jsonl", &jsonl(&docs));
        match TrainData::open(&p) {
            Ok(d) => prop_assert_eq!(all_spans(&d), docs),
            Err(e) => prop_assert!(docs.is_empty(), "{e}"),
        }
    }

    #[test]
    fn trainer_state_never_panics(b in any_input(valid_state().to_json().into_bytes())) {
        check_state(&Scratch::new("state"), &b);
    }

    #[test]
    fn trainer_state_round_trips(
        step in 0u64..1 << 40,
        epoch in 0u64..1 << 20,
        offset in 0u64..1 << 60,
        loss in any::<f64>(),
    ) {
        let dir = Scratch::new("state-rt");
        let mut s = valid_state();
        s.global_step = step;
        s.total.steps = step;
        s.loader.epoch = epoch;
        s.dropout_rng.offset = offset;
        s.total.loss = loss;
        dir.file(STATE_FILE, s.to_json().as_bytes());
        let back = TrainerState::load(dir.path()).unwrap();
        prop_assert_eq!(back.total.loss.to_bits(), loss.to_bits());
        prop_assert_eq!((back.global_step, back.loader.epoch), (step, epoch));
        prop_assert_eq!(back.dropout_rng.offset, offset);
    }

    #[test]
    fn event_files_never_panic(b in any_input(valid_events())) {
        let p = Path::new("events.out.tfevents.1.x");
        if let Err(e) = read_records(p, &b) {
            assert_names(&e.to_string(), p);
        }
        assert_bounded_memory("read_records");
    }

    #[test]
    fn event_files_round_trip(scalars in prop::collection::vec((any::<f32>(), any::<u64>()), 0..6)) {
        let dir = Scratch::new("tb-rt");
        let mut w = EventWriter::create(dir.path(), None).unwrap();
        for (v, step) in &scalars {
            w.add_scalar("train/loss", *v as f64, *step).unwrap();
        }
        w.flush().unwrap();
        let recs = read_records(w.path(), &std::fs::read(w.path()).unwrap()).unwrap();
        // The file-version event, then one per scalar, each ending with the value's bits.
        prop_assert_eq!(recs.len(), 1 + scalars.len());
        for (r, (v, _)) in recs[1..].iter().zip(&scalars) {
            prop_assert!(r.ends_with(&v.to_le_bytes()));
        }
    }

    #[test]
    fn ablation_spec_never_panics(b in any_input(SPEC.as_bytes().to_vec())) {
        let path = Path::new("/nonexistent/spec.toml");
        if let Ok(text) = std::str::from_utf8(&b) {
            match Spec::parse(path, text) {
                Ok(spec) => {
                    for arm in &spec.arms {
                        let _ = arm.plan();
                        let _ = arm.train_flags();
                    }
                }
                Err(e) => assert_names(&e.to_string(), path),
            }
        }
        assert_bounded_memory("Spec::parse");
    }
}

proptest! {
    #![proptest_config(config(DEFAULT_CASES / 2))]

    /// `prepare` on any text (TSV or plain documents, bad UTF-8, stray tabs): an error naming
    /// the input or a prepared directory whose token store and data.jsonl agree.
    #[test]
    fn prepare_any_text(b in any_input(
        b"d1\turl\tA title\tOne sentence here. Another one there. And a third.\n".to_vec())) {
        let dir = Scratch::new("prep");
        let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\none\nsentence\nhere\n.\nanother\n";
        let tok = bert::Tokenizer::from_vocab_file(dir.file("vocab.txt", vocab.as_bytes()), true)
            .unwrap();
        let input = dir.file("docs.tsv", &b);
        let opts = PrepareOptions { maxlen: 4, window_size: 2, progress: false, ..Default::default() };
        match prepare(&input, dir.path().join("out"), &tok, opts) {
            Ok(r) if r.documents > 0 => {
                let store = TokenStore::open(dir.path().join("out")).unwrap();
                let docs = TrainData::open(dir.path().join("out/data.jsonl")).unwrap();
                prop_assert_eq!(store.num_docs(), r.documents);
                prop_assert_eq!(all_spans(&store), all_spans(&docs));
            }
            Ok(_) => {}
            Err(e) => assert_names(&e.to_string(), &input),
        }
        assert_bounded_memory("prepare");
    }
}

/// Hostile counts in a token store's header (issue 14, class 1): 2^40, 2^62, u64::MAX documents,
/// spans or tokens, and table offsets past the end, are errors naming the file.
#[test]
fn token_store_hostile_counts_are_errors() {
    let dir = Scratch::new("ts-hostile");
    let good = valid_store();
    for field in [16, 24, 32, 40, 48] {
        for v in [1u64 << 40, 1 << 62, u64::MAX, good.len() as u64 + 8] {
            let mut b = good.clone();
            b[field..field + 8].copy_from_slice(&v.to_le_bytes());
            let p = dir.file("tokens.bin", &b);
            let msg = TokenStore::open(&p).err().expect("accepted").to_string();
            assert!(
                msg.contains("tokens.bin") && msg.contains("corrupt"),
                "{msg}"
            );
        }
    }
}

/// A field of the trainer state and an edit that makes it hostile.
type Edit = (&'static str, fn(&mut TrainerState));

/// trainer_state.json numbers that would overflow a resumed run are errors naming the field.
#[test]
fn trainer_state_hostile_numbers_are_errors() {
    let dir = Scratch::new("state-hostile");
    let edits: [Edit; 7] = [
        ("skipped_steps", |s| s.skipped_steps = s.global_step + 1),
        ("total.steps", |s| s.total.steps = u64::MAX),
        ("since_log.sequences", |s| s.since_log.sequences = u64::MAX),
        ("loader.epoch", |s| s.loader.epoch = 1 << 40),
        ("dropout_rng.offset", |s| {
            s.dropout_rng.offset = u64::MAX - 3
        }),
        ("loader.collator.offset", |s| {
            s.loader.collator.offset = 1 << 63
        }),
        ("loss_scaler", |s| {
            s.loss_scaler.as_mut().unwrap().growth_interval = 0;
        }),
    ];
    for (field, edit) in edits {
        let mut s = valid_state();
        edit(&mut s);
        dir.file(STATE_FILE, s.to_json().as_bytes());
        let msg = TrainerState::load(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains(STATE_FILE) && msg.contains(field),
            "{field}: {msg}"
        );
    }
    dir.file(STATE_FILE, valid_state().to_json().as_bytes());
    assert_eq!(TrainerState::load(dir.path()).unwrap(), valid_state());
}

/// A record length that claims 2^62 bytes (its CRC valid) is refused before any allocation.
#[test]
fn event_record_claiming_a_huge_length_is_an_error() {
    let len = (1u64 << 62).to_le_bytes();
    let mut b = len.to_vec();
    b.extend_from_slice(&cotmae::trainer::tensorboard::masked_crc32c(&len).to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    let msg = read_records(Path::new("ev"), &b).unwrap_err().to_string();
    assert!(
        msg.contains("record 0") && msg.contains("past the end"),
        "{msg}"
    );
    assert_bounded_memory("read_records");
}
