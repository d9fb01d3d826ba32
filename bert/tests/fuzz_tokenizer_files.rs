//! Property tests of the files a model directory brings (issue 14, class 5): `config.json`,
//! `vocab.txt` and `tokenizer_config.json`. Random bytes and mutations of valid files (hostile
//! numbers, wrong types, truncation) give an error naming the file or a usable result, never a
//! panic; a config and a vocabulary read back as written.

#[path = "../../tests/fuzz/strategies.rs"]
mod strategies;

use std::path::Path;

use bert::{BertConfig, Tokenizer};
use proptest::prelude::*;
use strategies::*;

fn small_config() -> BertConfig {
    BertConfig {
        vocab_size: 30,
        hidden_size: 8,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 16,
        max_position_embeddings: 32,
        ..BertConfig::default()
    }
}

const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

fn valid_vocab() -> Vec<u8> {
    let words = ["the", "cat", "##s", "sat", "on", "mat", ",", ".", "中"];
    let mut v: Vec<&str> = SPECIALS.to_vec();
    v.extend(words);
    format!("{}\n", v.join("\n")).into_bytes()
}

/// Loads `dir` as a tokenizer directory; on success the tokenizer must encode and decode text
/// into ids inside its vocabulary.
fn check_tokenizer_dir(dir: &Scratch, vocab_path: &Path, config_path: &Path) {
    match Tokenizer::from_dir(dir.path()) {
        Ok(t) => {
            let ids = t.encode("The cats sat, on the mat. 中文 Ünïcode", true, Some(16));
            assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
            t.decode(&ids);
        }
        Err(e) => {
            let msg = e.to_string();
            let named = |p: &Path| msg.contains(p.file_name().unwrap().to_str().unwrap());
            assert!(named(vocab_path) || named(config_path), "{msg}");
        }
    }
    assert_bounded_memory("Tokenizer::from_dir");
}

proptest! {
    #![proptest_config(config(DEFAULT_CASES))]

    #[test]
    fn config_json_never_panics(
        b in any_input(small_config().to_json_string("BertForMaskedLM").into_bytes()),
    ) {
        let dir = Scratch::new("cfg");
        let p = dir.file("config.json", &b);
        match BertConfig::from_file(&p) {
            // An accepted config's sizes multiply without overflow.
            Ok(c) => prop_assert!(c.parameter_count().is_some()),
            Err(e) => assert_names(&e.to_string(), &p),
        }
        assert_bounded_memory("BertConfig::from_file");
    }

    #[test]
    fn config_json_round_trips(
        vocab in 1usize..100_000,
        heads in 1usize..8,
        head_dim in 1usize..16,
        layers in 1usize..24,
        inter in 1usize..4096,
        pad in prop::option::of(0usize..10),
    ) {
        let c = BertConfig {
            vocab_size: vocab,
            hidden_size: heads * head_dim,
            num_attention_heads: heads,
            num_hidden_layers: layers,
            intermediate_size: inter,
            pad_token_id: pad.filter(|&p| p < vocab),
            ..BertConfig::default()
        };
        let back = BertConfig::from_json_str(&c.to_json_string("BertModel"), Path::new("c.json"))
            .unwrap();
        prop_assert_eq!(BertConfig { extra: Default::default(), ..back }, c);
    }

    #[test]
    fn vocab_txt_never_panics(b in any_input(valid_vocab())) {
        let dir = Scratch::new("vocab");
        let v = dir.file("vocab.txt", &b);
        check_tokenizer_dir(&dir, &v, &dir.path().join("tokenizer_config.json"));
    }

    #[test]
    fn tokenizer_config_never_panics(b in any_input(
        br#"{"do_lower_case": true, "strip_accents": null, "tokenize_chinese_chars": false, "model_max_length": 512}"#.to_vec(),
    )) {
        let dir = Scratch::new("tokcfg");
        let v = dir.file("vocab.txt", &valid_vocab());
        let c = dir.file("tokenizer_config.json", &b);
        check_tokenizer_dir(&dir, &v, &c);
    }

    #[test]
    fn vocab_round_trips(words in prop::collection::btree_set("[a-z#é中]{1,6}", 0..40)) {
        let dir = Scratch::new("vocab-rt");
        let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        tokens.extend(words.into_iter().filter(|w| !SPECIALS.contains(&w.as_str())));
        let p = dir.file("vocab.txt", format!("{}\n", tokens.join("\n")).as_bytes());
        let t = Tokenizer::from_vocab_file(&p, true).unwrap();
        prop_assert_eq!(t.vocab_size(), tokens.len());
        for (i, tok) in tokens.iter().enumerate() {
            prop_assert_eq!(t.token_to_id(tok), Some(i as u32));
            prop_assert_eq!(t.id_to_token(i as u32), Some(tok.as_str()));
        }
        let out = Scratch::new("vocab-rt-out");
        let saved = t.save_vocab(out.path()).unwrap();
        prop_assert_eq!(std::fs::read(saved).unwrap(), std::fs::read(&p).unwrap());
    }
}
