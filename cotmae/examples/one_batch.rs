//! One CoT-MAE training batch, end to end, printing the shape of every tensor on the way: a
//! document → sentences → spans → an anchor and its contextual span → whole-word masks → the
//! encoder → the [CLS] vector → the decoder → the two MLM losses → gradients → one AdamW step.
//!
//! This is the runnable companion of the book's chapter "One batch, end to end"
//! (`docs/book/src/one-batch.md`), which includes the pieces between the `ANCHOR` comments.
//! Run it with `cargo run --example one_batch`; change a constant below (the mask ratios, the
//! span length, the model size) and run it again to see what moves.
//!
//! Everything is seeded: the same code prints the same numbers on every machine.

use autograd::Var;
use bert::{BertConfig, Tokenizer};
use cotmae::{
    document_spans, split_sentences, BertForCotMAE, CollatorConfig, CotMaeCollator,
    CotMaeModelArgs, DataType, SpanKind,
};
use nn::{step_params, AdamW, AdamWConfig, Ctx, Module};
use tensor::{Rng, Tensor};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

// ANCHOR: knobs
/// Documents in the batch (the paper: 64 per device); each gives two texts.
const DOCUMENTS: usize = 2;
/// Token budget of a span (the paper: 128) and of a collated text (the paper: 128).
const SPAN_TOKENS: usize = 24;
const MAX_SEQ_LENGTH: usize = 32;
/// The paper's mask ratios: light for the encoder, heavy for the decoder.
const ENCODER_MASK_RATIO: f64 = 0.30;
const DECODER_MASK_RATIO: f64 = 0.45;
/// A tiny BERT (bert-base: hidden 768, 12 layers, 12 heads, FFN 3072).
const HIDDEN: usize = 64;
const LAYERS: usize = 2;
const HEADS: usize = 4;
// ANCHOR_END: knobs

fn main() -> Result<()> {
    // The demo's generated world: documents about made-up people, and a vocabulary of its words.
    let world = cotmae::demo::data::generate(DOCUMENTS, 1.0, 7);
    let scratch = std::env::temp_dir().join(format!("cotmae-one-batch-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let vocab = scratch.join("vocab.txt");
    std::fs::write(&vocab, world.vocab().join("\n") + "\n")?;
    let tokenizer = Tokenizer::from_vocab_file(&vocab, true)?;
    std::fs::remove_dir_all(&scratch)?;

    // ANCHOR: spans
    // 1-3. Each document: sentences, their token ids, spans and contextual spans (`prepare`).
    let mut rng = Rng::new(42);
    let mut documents = Vec::new();
    for (d, doc) in world.docs.iter().enumerate() {
        let text = doc.text();
        let sentences: Vec<Vec<u32>> = split_sentences(&text)
            .into_iter()
            .map(|s| tokenizer.encode(s, false, None))
            .collect();
        let spans = document_spans(sentences.clone(), SPAN_TOKENS, 100, 0.15, &mut rng)
            .ok_or("a document with fewer than two spans")?;
        if d == 0 {
            print_document(&text, &sentences, &spans, &tokenizer);
        }
        documents.push(spans.span_sets());
    }
    // ANCHOR_END: spans

    // ANCHOR: collate
    // 4-5. The batch: per document one span and one contextual kind, each text cropped, wrapped in
    // [CLS] .. [SEP], padded, and whole-word masked; the decoder batch swaps texts pairwise.
    let mut collator = CotMaeCollator::new(
        &tokenizer,
        CollatorConfig {
            max_seq_length: MAX_SEQ_LENGTH,
            encoder_mask_ratio: ENCODER_MASK_RATIO,
            decoder_mask_ratio: DECODER_MASK_RATIO,
            data_type: DataType::Mixed,
        },
        42,
    )?;
    let doc_ids: Vec<usize> = (0..DOCUMENTS).collect();
    let batch = collator.collate(documents.as_slice(), &doc_ids)?;
    // ANCHOR_END: collate
    section("5. the collated batch: [anchor_0, ctx_0, anchor_1, ctx_1, ...]");
    shape("input_ids", &batch.input_ids);
    shape("attention_mask", &batch.attention_mask);
    shape("labels (-100 = not predicted)", &batch.labels);
    shape("decoder_input_ids", &batch.decoder_input_ids);
    print_row(
        "encoder row 0 (anchor_0)",
        &batch.input_ids,
        &batch.labels,
        0,
        &tokenizer,
    )?;
    print_row(
        "decoder row 0 (ctx_0)",
        &batch.decoder_input_ids,
        &batch.decoder_labels,
        0,
        &tokenizer,
    )?;

    // ANCHOR: model
    let config = BertConfig {
        vocab_size: tokenizer.vocab_size(),
        hidden_size: HIDDEN,
        num_hidden_layers: LAYERS,
        num_attention_heads: HEADS,
        intermediate_size: 4 * HIDDEN,
        max_position_embeddings: MAX_SEQ_LENGTH,
        ..BertConfig::default()
    };
    let model = BertForCotMAE::from_config(&config, CotMaeModelArgs::default(), &mut Rng::new(0))?;
    let mut ctx = Ctx::train(1);
    // ANCHOR_END: model
    let n_params: usize = model
        .named_params()
        .iter()
        .map(|(_, p)| p.var().value().elem_count())
        .sum();
    println!(
        "\nmodel: {LAYERS} encoder layers + {} decoder layers, hidden {HIDDEN}, {HEADS} heads, vocabulary {}: {n_params} parameters",
        model.c_head.len(),
        config.vocab_size
    );

    // 6-7. The same computation as `BertForCotMAE::forward`, spelled out to print each shape.
    section("6. encoder");
    // ANCHOR: encoder
    let embeddings = model
        .lm
        .bert
        .embeddings
        .forward(&batch.input_ids, None, &mut Ctx::eval())?;
    let encoded = model.lm.bert.forward(
        &batch.input_ids,
        Some(&batch.attention_mask),
        None,
        &mut Ctx::eval(),
    )?;
    let hidden = &encoded.last_hidden_state; // [2B, L, H]
    let cls = hidden.narrow(1, 0, 1)?; // [2B, 1, H]: row i's [CLS] vector
                                       // ANCHOR_END: encoder
    shape_var(
        "embeddings (word + position + type, LayerNorm)",
        &embeddings,
    );
    shape_var("last_hidden_state", hidden);
    shape_var("[CLS] vectors h[:, :1]", &cls);
    section("7. decoder");
    // ANCHOR: decoder
    // Decoder row i reads text i^1 (its partner) and, at position 0, the [CLS] of encoder row i.
    let dec_emb =
        model
            .lm
            .bert
            .embeddings
            .forward(&batch.decoder_input_ids, None, &mut Ctx::eval())?;
    let x = Var::cat(&[&cls, &dec_emb.narrow(1, 1, MAX_SEQ_LENGTH - 1)?], 1)?;
    // ANCHOR_END: decoder
    shape_var("decoder embeddings of the masked partner text", &dec_emb);
    shape_var("x = cat([CLS] of row i, embeddings[:, 1:])", &x);
    println!(
        "  -> {} BERT layers (c_head) -> the shared MLM head -> logits at the masked positions only",
        model.c_head.len()
    );

    section("8. losses");
    // ANCHOR: loss
    let out = model.forward(&batch, &mut ctx)?;
    let encoder_mlm_loss = out.encoder_mlm_loss.value().to_vec_f64()?[0];
    let head_mlm_loss = out
        .head_mlm_loss
        .as_ref()
        .ok_or("no decoder head")?
        .value()
        .to_vec_f64()?[0];
    let loss = out.loss.value().to_vec_f64()?[0];
    // ANCHOR_END: loss
    let uniform = (config.vocab_size as f64).ln();
    println!("encoder_mlm_loss {encoder_mlm_loss:.4}   head_mlm_loss {head_mlm_loss:.4}   loss {loss:.4}");
    println!("(a model that knows nothing scores ln(vocabulary) = {uniform:.4})");

    section("9. gradients");
    // ANCHOR: backward
    let grads = out.loss.backward()?;
    drop(out);
    let params = model.named_params();
    // ANCHOR_END: backward
    for (name, p) in &params {
        if WATCHED.iter().any(|w| name == w) {
            let g = grads
                .get(&p.var())
                .ok_or("a parameter without a gradient")?;
            println!("|grad| {:>12.6}  {name} {:?}", l2(g)?, g.shape());
        }
    }

    section("10. one AdamW step");
    // ANCHOR: adamw
    let before: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.var().value().clone())
        .collect();
    let mut opt = AdamW::new(AdamWConfig {
        lr: 1e-4,
        weight_decay: 0.01,
        ..AdamWConfig::default()
    })?;
    step_params(&mut opt, 1e-4, &params, &grads)?;
    // ANCHOR_END: adamw
    for ((name, p), old) in params.iter().zip(&before) {
        if WATCHED.iter().any(|w| name == w) {
            let moved = p.var().value().sub(old)?;
            println!("|update| {:>10.6}  {name}", l2(&moved)?);
        }
    }
    println!(
        "\n(AdamW's first step moves each weight by about lr = 1e-4 whatever its gradient's size, \
         so a [64, 64] matrix by about sqrt(4096) * 1e-4 = 0.0064)"
    );
    Ok(())
}

/// The parameters whose gradient and update the example prints.
const WATCHED: [&str; 4] = [
    "bert.embeddings.word_embeddings.weight",
    "bert.encoder.layer.0.attention.self.query.weight",
    "c_head.0.attention.self.query.weight",
    "cls.predictions.transform.dense.weight",
];

fn section(title: &str) {
    println!("\n== {title}");
}

fn shape(name: &str, t: &Tensor) {
    println!("{name:<48} {:?} {:?}", t.shape(), t.dtype());
}

fn shape_var(name: &str, v: &Var) {
    shape(name, v.value());
}

fn l2(t: &Tensor) -> Result<f64> {
    Ok(t.to_vec_f64()?.iter().map(|x| x * x).sum::<f64>().sqrt())
}

/// Steps 1-3 for one document.
fn print_document(
    text: &str,
    sentences: &[Vec<u32>],
    spans: &cotmae::DocumentSpans,
    tokenizer: &Tokenizer,
) {
    section("1. a document");
    println!("{text}");
    section("2. sentences -> token ids (no special tokens)");
    for (i, s) in sentences.iter().enumerate() {
        println!("sentence {i}: {} tokens {:?}", s.len(), s);
    }
    section(&format!(
        "3. spans (sentences appended until the running length exceeds {SPAN_TOKENS})"
    ));
    for i in 0..spans.num_spans() {
        let kinds: Vec<String> = SpanKind::ALL
            .iter()
            .map(|&k| format!("{} {}", k.name(), spans.get(i, k).len()))
            .collect();
        println!("span {i}: tokens per kind: {}", kinds.join(", "));
    }
    section("4. span 0 as an anchor, and its nearby span");
    println!(
        "anchor:  {}",
        tokenizer.decode(spans.get(0, SpanKind::Anchor))
    );
    println!(
        "nearby:  {}",
        tokenizer.decode(spans.get(0, SpanKind::Nearby))
    );
}

/// One row of a batch as tokens, a masked position shown as `[MASK]→word` (its label).
fn print_row(
    title: &str,
    ids: &Tensor,
    labels: &Tensor,
    row: usize,
    tokenizer: &Tokenizer,
) -> Result<()> {
    let len = ids.shape()[1];
    let ids = ids.to_vec::<i64>()?;
    let labels = labels.to_vec::<i64>()?;
    let mut words = Vec::new();
    for t in row * len..(row + 1) * len {
        let token = tokenizer.id_to_token(ids[t] as u32).unwrap_or("?");
        if token == "[PAD]" {
            break;
        }
        words.push(match labels[t] {
            -100 => token.to_string(),
            l => format!("{token}→{}", tokenizer.id_to_token(l as u32).unwrap_or("?")),
        });
    }
    println!("{title}: {}", words.join(" "));
    Ok(())
}
