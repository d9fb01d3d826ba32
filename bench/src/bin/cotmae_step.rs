//! One CoT-MAE pretraining step on the CPU: `BertForCotMAE` at bert-base shape (random init,
//! dropout 0.1, two decoder-head layers), a batch of 8 documents = 16 sequences of 128 tokens,
//! forward (encoder and decoder MLM losses), backward, gradient clipping to norm 1.0 and an AdamW
//! step (torch's rule, weight decay 0.01 except biases and LayerNorm weights). The PyTorch twin is
//! `bench/cotmae_torch.py`; `bench/run_cotmae.sh` runs both on the same batch.
//!
//! The batch is real collator output: synthetic documents (`cotmae::synthetic`), split into
//! sentences, tokenized with the bert-base-uncased vocabulary, grouped into spans with their
//! contextual spans (REFERENCE §1), then one anchor/context pair per document, cropped, padded and
//! whole-word masked at 0.30 (encoder) and 0.45 (decoder) by `CotMaeCollator` (REFERENCE §2).
//! It is written to a safetensors file (the six `CotMaeBatch` tensors, i64 [16, 128]) so both
//! sides time the same batch.
//!
//! usage: cotmae_step batch FILE [--docs 8] [--seq 128] write the batch (2 rows per document
//!                                                     of `--seq` tokens)
//!        cotmae_step FILE [--tiny | --base-shaped] [--warmup N] [--iters N]
//!                         [--device cpu|cuda[:N]] [--precision fp32|bf16|fp16] [--bert]
//!                         [--counters]
//!                                                     time the step on FILE's batch: warm-up
//!                                                     steps (2, at least 1), then the median of
//!                                                     N (5); one JSON line on stdout, the first
//!                                                     step's losses and all times on stderr
//!
//! `--tiny` (hidden 64, 2 layers, 4 heads, FFN 128, same vocabulary) is for smoke tests only;
//! `--base-shaped` is bert-base's graph at a tiny width (12 layers, 12 heads of 8, hidden 96, FFN
//! 384): the same kernels, GEMMs and syncs per step as bert-base, cheap enough for the simulator.
//! `--counters` (a GPU) prints, instead of times, what each step after the first did on the
//! device (`cuda::Counters`: device-to-host syncs, kernel launches, GEMMs, cuBLASLt heuristic
//! queries, weight casts, bytes moved by copies), one JSON line per step on stdout; those steps
//! read no loss and end with no sync, as a trainer's non-logging step. Each counted step is
//! followed by one more under the profiler, whose ops' bytes (read and written, from their
//! shapes: `op_bytes`, top-level ops only, so nothing is counted twice) are the step's modelled
//! memory traffic; launches and syncs do not depend on the batch size, bytes do.
//! On a GPU (`--device cuda`, a build with feature `cuda`) each timed step ends with a device
//! sync. `--precision bf16` runs the forward under bf16 autocast (f32 master weights and
//! optimizer state), on the GPU (cuBLAS) or on the CPU (the bf16 GEMM, AMX or AVX512-BF16);
//! `fp16` (GPU only) adds the dynamic loss scaler, as `pretrain --bf16 / --fp16` do.
//! `--bert` times a plain BERT MLM step (BertForMaskedLM on the encoder half of the batch:
//! `input_ids`, `attention_mask`, `labels`) instead of the CoT-MAE step. The GPU twin is
//! `bench/gpu_step_torch.py`, driven by `bench/run_gpu.sh`.

use std::path::PathBuf;
use std::time::Instant;

use autograd::Gradients;
use autograd::Var;
use bench::report;
use bert::{BertConfig, BertForMaskedLM, Tokenizer, IGNORE_INDEX};
use cotmae::model::loss_values;
use cotmae::{
    document_spans, generate_documents, BertForCotMAE, CollatorConfig, CotMaeBatch, CotMaeCollator,
    CotMaeModelArgs,
};
use nn::{
    step_params, unscale_and_clip, AdamW, AdamWConfig, AdamWVariant, Ctx, LossScaler, Module,
    Param, Precision, StepDecision,
};
use tensor::safetensors::{save, SafeTensors};
use tensor::{DType, Device, Error, Result, Rng, Tensor};

const DOCS: usize = 8;
const SEQ: usize = 128;
const MAX_GRAD_NORM: f64 = 1.0;
const LR: f64 = 1e-4;
const KEYS: [&str; 6] = [
    "input_ids",
    "attention_mask",
    "labels",
    "decoder_input_ids",
    "decoder_attention_mask",
    "decoder_labels",
];

fn err(e: impl std::fmt::Display) -> Error {
    Error::op("cotmae_step", e.to_string())
}

/// The test vocabulary, found from the repository root at run time (the program is also run
/// from a copy of the repository on a GPU machine without the build tree).
fn vocab_path() -> Result<PathBuf> {
    let root = tensor::testing::find_repo_root().map_err(err)?;
    Ok(root.join("tests/fixtures/tokenizer/vocab.txt"))
}

/// The collator's batch of `docs` synthetic documents of `seq`-token rows (module docs).
fn make_batch(docs_n: usize, seq: usize) -> Result<CotMaeBatch> {
    let tok = Tokenizer::from_vocab_file(vocab_path()?, true).map_err(err)?;
    let mut rng = Rng::new(42);
    let docs: Vec<_> = generate_documents(docs_n, 30..=60, 42)
        .iter()
        .map(|d| {
            let sentences = d.sentences.iter().map(|s| tok.encode(s, false, None));
            document_spans(sentences, seq, 100, 0.15, &mut rng)
                .map(|s| s.span_sets())
                .ok_or_else(|| err(format!("synthetic document {} has < 2 spans", d.docid)))
        })
        .collect::<Result<_>>()?;
    let config = CollatorConfig {
        max_seq_length: seq,
        ..CollatorConfig::default()
    };
    let mut collator = CotMaeCollator::new(&tok, config, 42).map_err(err)?;
    let ids: Vec<usize> = (0..docs_n).collect();
    collator.collate(&docs[..], &ids).map_err(err)
}

fn tensors(b: &CotMaeBatch) -> [&Tensor; 6] {
    [
        &b.input_ids,
        &b.attention_mask,
        &b.labels,
        &b.decoder_input_ids,
        &b.decoder_attention_mask,
        &b.decoder_labels,
    ]
}

fn write_batch(path: &str, rest: &[String]) -> Result<()> {
    let (mut docs, mut seq) = (DOCS, SEQ);
    for pair in rest.chunks(2) {
        let [flag, n] = pair else {
            return Err(err(format!("unknown arguments {rest:?}")));
        };
        let n = n
            .parse()
            .ok()
            .filter(|&n: &usize| n > 0)
            .ok_or_else(|| err(format!("{flag} needs a positive number, got {n:?}")))?;
        match flag.as_str() {
            "--docs" => docs = n,
            "--seq" => seq = n,
            _ => return Err(err(format!("unknown argument {flag:?}"))),
        }
    }
    let b = make_batch(docs, seq)?;
    let named: Vec<(&str, &Tensor)> = KEYS.into_iter().zip(tensors(&b)).collect();
    let tmp = format!("{path}.tmp");
    save(&tmp, &named, None)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    let count = |t: &Tensor, keep: fn(i64) -> bool| -> Result<usize> {
        Ok(t.to_vec::<i64>()?.into_iter().filter(|&x| keep(x)).count())
    };
    let real = count(&b.attention_mask, |x| x != 0)?;
    let n = b.attention_mask.elem_count();
    let enc = count(&b.labels, |x| x != IGNORE_INDEX)?;
    let dec = count(&b.decoder_labels, |x| x != IGNORE_INDEX)?;
    eprintln!(
        "batch {:?} -> {path}: {real}/{n} real tokens, {enc} encoder and {dec} decoder labels",
        b.input_ids.shape()
    );
    Ok(())
}

fn read_batch(path: &str) -> Result<CotMaeBatch> {
    let st = SafeTensors::open(path)?;
    let [input_ids, attention_mask, labels, decoder_input_ids, decoder_attention_mask, decoder_labels] =
        KEYS.map(|k| st.get(k));
    Ok(CotMaeBatch {
        input_ids: input_ids?,
        attention_mask: attention_mask?,
        labels: labels?,
        decoder_input_ids: decoder_input_ids?,
        decoder_attention_mask: decoder_attention_mask?,
        decoder_labels: decoder_labels?,
    })
}

/// Runs `f` on the gradients of `params` (each tied parameter once), taken out of `grads` and
/// put back after.
fn on_gradients<R>(
    params: &[(String, Param)],
    grads: &mut Gradients,
    f: impl FnOnce(&mut [&mut Tensor]) -> Result<R>,
) -> Result<R> {
    let mut taken: Vec<_> = params
        .iter()
        .filter_map(|(_, p)| grads.remove(&p.var()).map(|g| (p.var(), g)))
        .collect();
    let mut refs: Vec<&mut Tensor> = taken.iter_mut().map(|(_, g)| g).collect();
    let out = f(&mut refs);
    for (v, g) in taken {
        grads.insert(&v, g);
    }
    out
}

/// Unscales (fp16) and clips the gradients of `params` to a global norm of `max_norm`; returns
/// the norm and whether the optimizer steps.
fn clip(
    params: &[(String, Param)],
    grads: &mut Gradients,
    max_norm: f64,
    scaler: &mut LossScaler,
) -> Result<(f64, StepDecision)> {
    on_gradients(params, grads, |g| unscale_and_clip(scaler, g, max_norm))
}

/// Clips with the clipping decided on the device (`nn::clip_grad_norm_deferred`: no wait for a
/// GPU; the norm is not read).
fn clip_deferred(params: &[(String, Param)], grads: &mut Gradients, max_norm: f64) -> Result<()> {
    on_gradients(params, grads, |g| {
        nn::clip_grad_norm_deferred(g, max_norm).map(|_| ())
    })
}

struct Options {
    tiny: bool,
    warmup: usize,
    iters: usize,
    device: Device,
    precision: Precision,
    bert: bool,
    base_shaped: bool,
    counters: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        tiny: false,
        warmup: 2,
        iters: 5,
        device: Device::Cpu,
        precision: Precision::F32,
        bert: false,
        base_shaped: false,
        counters: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| err(format!("{name} needs a number")))
        };
        match a.as_str() {
            "--tiny" => o.tiny = true,
            "--bert" => o.bert = true,
            "--base-shaped" => o.base_shaped = true,
            "--counters" => o.counters = true,
            "--device" => {
                let name = it.next().ok_or_else(|| err("--device needs a name"))?;
                o.device = name.parse()?;
                o.device.ensure_available()?;
            }
            "--precision" => {
                let name = it.next().map(String::as_str);
                o.precision = match name {
                    Some("fp32") => Precision::F32,
                    Some("bf16") => Precision::Bf16,
                    Some("fp16") => Precision::F16,
                    _ => return Err(err("--precision needs fp32, bf16 or fp16")),
                };
            }
            "--warmup" => o.warmup = num("--warmup")?,
            "--iters" => o.iters = num("--iters")?.max(1),
            other => return Err(err(format!("unknown argument {other:?}"))),
        }
    }
    if o.precision == Precision::F16 && o.device.is_cpu() {
        return Err(err(
            "--precision fp16 needs --device cuda (bf16 runs on the CPU too)",
        ));
    }
    if o.counters && o.device.is_cpu() {
        return Err(err("--counters needs --device cuda"));
    }
    Ok(o)
}

fn config(o: &Options) -> BertConfig {
    if o.tiny {
        BertConfig {
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 128,
            ..BertConfig::default()
        }
    } else if o.base_shaped {
        BertConfig {
            hidden_size: 96,
            intermediate_size: 384,
            ..BertConfig::default()
        }
    } else {
        BertConfig::default()
    }
}

/// Waits for the device's queued work (a one-element download; nothing on the CPU).
fn sync(device: Device) -> Result<()> {
    if !device.is_cpu() {
        Tensor::zeros(&[1], DType::F32, device)?.to_vec::<f32>()?;
    }
    Ok(())
}

/// The losses of one forward: (the loss to minimise, encoder MLM loss, head MLM loss or NaN).
type Losses = (Var, f64, f64);

fn time_step(path: &str, o: &Options) -> Result<()> {
    let batch = read_batch(path)?.to_device(o.device)?;
    let rng = &mut Rng::new(0);
    let lm = BertForMaskedLM::new(&config(o), rng)?;
    let model = BertForCotMAE::new(lm, CotMaeModelArgs::default(), rng)?;
    let (params, module): (_, &dyn Module) = if o.bert {
        (model.lm.named_params(), &model.lm)
    } else {
        (model.named_params(), &model)
    };
    nn::to_device(module, o.device)?;
    let mut opt = AdamW::new(AdamWConfig {
        lr: LR,
        weight_decay: 0.01,
        variant: AdamWVariant::Torch,
        ..AdamWConfig::default()
    })?;
    let mut scaler = o.precision.loss_scaler()?;
    let mut ctx = Ctx::train(1);
    // `read`: download the losses (a logging step); NaN otherwise.
    let forward = |ctx: &mut Ctx, read: bool| -> Result<Losses> {
        if o.bert {
            let out = model.lm.forward(
                &batch.input_ids,
                Some(&batch.attention_mask),
                None,
                &batch.labels,
                ctx,
            )?;
            let loss = match read {
                true => out.loss.value().to_vec_f64()?[0],
                false => f64::NAN,
            };
            Ok((out.loss, loss, f64::NAN))
        } else {
            let out = model.forward(&batch, ctx)?;
            if !read {
                return Ok((out.loss, f64::NAN, f64::NAN));
            }
            let (_, enc, head) = loss_values(&out)?;
            Ok((out.loss, enc, head.unwrap_or(f64::NAN)))
        }
    };
    let mut step = |logging: bool| -> Result<(f64, f64, f64)> {
        let (loss, enc, head) = o.precision.autocast(|| forward(&mut ctx, logging))?;
        let mut grads = match scaler.scale() {
            1.0 => loss.backward()?,
            scale => loss.mul_scalar(scale as f64)?.backward()?,
        };
        drop(loss); // release the graph so the optimizer writes parameters in place
        let (norm, decision) = if logging || o.precision == Precision::F16 {
            clip(&params, &mut grads, MAX_GRAD_NORM, &mut scaler)?
        } else {
            // A non-logging step decides the clipping on the device (the norm is not read).
            clip_deferred(&params, &mut grads, MAX_GRAD_NORM)?;
            (f64::NAN, StepDecision::Apply)
        };
        if decision == StepDecision::Apply {
            step_params(&mut opt, LR, &params, &grads)?;
        }
        if logging {
            o.device.check_status()?;
            sync(o.device)?;
        }
        Ok((enc, head, norm))
    };
    let (enc, head, norm) = step(true)?;
    eprintln!(
        "first step on {} ({:?}): encoder loss {enc:.4}, head loss {head:.4}, grad norm {norm:.3}",
        o.device, o.precision
    );
    if o.counters {
        return print_counters(o, &batch, &mut step);
    }
    for _ in 1..o.warmup {
        step(true)?;
    }
    let mut ms = Vec::with_capacity(o.iters);
    for _ in 0..o.iters {
        let t = Instant::now();
        step(true)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let &[rows, len] = batch.input_ids.shape() else {
        return Err(err("the batch must be [rows, seq]"));
    };
    let precision = match o.precision {
        Precision::F32 => "fp32",
        Precision::Bf16 => "bf16",
        Precision::F16 => "fp16",
    };
    let size = size_name(o);
    let (op, shape) = if o.device.is_cpu() {
        ("cotmae_train_step", format!("[{rows},{len}] {size}"))
    } else {
        // The names and shapes of bench/gpu_step_torch.py, for compare.py.
        let op = if o.bert {
            "bert_train_step"
        } else {
            "cotmae_train_step"
        };
        (op, format!("[{rows},{len}] {size} {precision}"))
    };
    report(op, &shape, ms[ms.len() / 2]);
    eprintln!("step ms: {ms:.1?}");
    if !tensor::profiler::totals().is_empty() {
        eprintln!("{}", tensor::profiler::report());
    }
    Ok(())
}

fn size_name(o: &Options) -> &'static str {
    match (o.tiny, o.base_shaped) {
        (true, _) => "tiny",
        (_, true) => "base-shaped",
        _ => "bert-base",
    }
}

/// `--counters`: `iters` non-logging steps after the first, each one JSON line of what it did on
/// the device (the counters of this thread's work, `cuda::Counters`).
#[cfg(feature = "cuda")]
fn print_counters(
    o: &Options,
    batch: &CotMaeBatch,
    step: &mut dyn FnMut(bool) -> Result<(f64, f64, f64)>,
) -> Result<()> {
    let what = if o.bert { "bert" } else { "cotmae" };
    let shape = format!("{:?} {}", batch.input_ids.shape(), size_name(o));
    for i in 0..o.iters {
        o.device.reset_counters()?;
        step(false)?;
        let c = o.device.counters()?.unwrap_or_default();
        // The same step once more under the profiler (after the counters were read: reading
        // its GPU records waits for the device).
        let op_bytes = {
            let _on = tensor::profiler::session(1 << 20);
            step(false)?;
            let (records, dropped) = tensor::profiler::records();
            if dropped > 0 {
                return Err(err(format!(
                    "the profiler dropped {dropped} records of one step"
                )));
            }
            top_level_op_bytes(&records)
        };
        println!(
            "{{\"step\": {}, \"model\": \"{what}\", \"shape\": \"{shape}\", \"precision\": \"{:?}\", \
             \"syncs\": {}, \"launches\": {}, \"gemms\": {}, \"heuristic_queries\": {}, \
             \"weight_casts\": {}, \"casts\": {}, \"bytes_to_device\": {}, \
             \"bytes_to_host\": {}, \"bytes_on_device\": {}, \"op_bytes\": {op_bytes}}}",
            2 * i + 2,
            o.precision,
            c.syncs,
            c.launches,
            c.gemms,
            c.heuristic_queries,
            c.weight_casts,
            c.casts,
            c.bytes_to_device,
            c.bytes_to_host,
            c.bytes_on_device
        );
    }
    o.device.check_status()
}

/// The bytes the profiled ops read and wrote (`Record::bytes`, from their shapes), counting only
/// ops not nested inside another op on the same thread (an op made of ops counts once).
#[cfg(feature = "cuda")]
fn top_level_op_bytes(records: &[tensor::profiler::Record]) -> u64 {
    use tensor::profiler::Kind;
    let mut ops: Vec<_> = records.iter().filter(|r| r.kind == Kind::Op).collect();
    // Per thread by start, an enclosing op (longer) before the ops it contains.
    ops.sort_by_key(|r| (r.thread, r.start_ns, std::cmp::Reverse(r.dur_ns)));
    let mut open: Option<(u32, u64)> = None; // the top-level op's thread and end
    let mut bytes = 0;
    for r in ops {
        if open.is_none_or(|(t, end)| t != r.thread || r.start_ns >= end) {
            bytes += r.bytes;
            open = Some((r.thread, r.start_ns + r.dur_ns));
        }
    }
    bytes
}

#[cfg(not(feature = "cuda"))]
fn print_counters(
    _: &Options,
    _: &CotMaeBatch,
    _: &mut dyn FnMut(bool) -> Result<(f64, f64, f64)>,
) -> Result<()> {
    Err(err("--counters needs a build with --features cuda"))
}

fn main() -> Result<()> {
    tensor::heap::keep_freed_memory(); // as the cotmae binary runs
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, path, rest @ ..] if cmd == "batch" => write_batch(path, rest),
        [path, rest @ ..] if !path.starts_with('-') => time_step(path, &parse(rest)?),
        _ => Err(err(
            "usage: cotmae_step batch FILE [--docs N] [--seq N] | cotmae_step FILE [--tiny] [--warmup N] \
             [--iters N] [--device cpu|cuda[:N]] [--precision fp32|bf16|fp16] [--bert] \
             [--base-shaped] [--counters]",
        )),
    }
}
