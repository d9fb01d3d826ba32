//! Tokenizer throughput: our `bert::Tokenizer::encode_batch` on the parity-fixture sentences
//! repeated to about 20 MB, compared with `bench/tokenizer_hf.py` (HF `BertTokenizerFast`) on the
//! same text and thread count. Prints JSON lines {"op", "shape", "ms", "ids_hash", "n_ids", ...};
//! `ms` is the best of `--repeats` runs; `ids_hash` (see `ids_hash`) must equal the HF script's.
//!
//! usage: target/release/tokenizer [--threads 2] [--mb 20] [--repeats 3] [--fixtures DIR]
//! e.g.   cargo build --release -p bench --bin tokenizer && target/release/tokenizer > ours.jsonl
//!        python3 bench/tokenizer_hf.py > hf.jsonl && python3 bench/compare.py ours.jsonl hf.jsonl

use std::path::PathBuf;
use std::time::Instant;

/// Order-sensitive hash of a batch of id sequences; `bench/tokenizer_hf.py` computes the same.
/// The sequences are concatenated, each followed by the sentinel `u32::MAX`; element `x` at
/// 0-based position `k` contributes `((x + 1) * C1) ^ ((k + 1) * C2)`, summed mod 2^64.
fn ids_hash(batch: &[Vec<u32>]) -> u64 {
    const C1: u64 = 0x9E37_79B9_7F4A_7C15;
    const C2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    let mut h = 0u64;
    let mut k = 0u64;
    for seq in batch {
        for x in seq.iter().copied().chain(std::iter::once(u32::MAX)) {
            k += 1;
            h = h.wrapping_add(((x as u64 + 1).wrapping_mul(C1)) ^ k.wrapping_mul(C2));
        }
    }
    h
}

struct Args {
    threads: usize,
    mb: f64,
    repeats: usize,
    fixtures: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: 2,
        mb: 20.0,
        repeats: 3,
        fixtures: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokenizer"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--threads" => a.threads = value.parse().map_err(|e| bad(&e))?,
            "--mb" => a.mb = value.parse().map_err(|e| bad(&e))?,
            "--repeats" => a.repeats = value.parse().map_err(|e| bad(&e))?,
            "--fixtures" => a.fixtures = PathBuf::from(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// The benchmark text: fixture lines on which HF's slow and fast tokenizers agree, repeated
/// `ceil(mb * 1e6 / bytes)` times (the HF script builds the same list).
fn load_texts(args: &Args) -> Result<Vec<String>, String> {
    let path = args.fixtures.join("sentences.jsonl");
    let data = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut base = Vec::new();
    for (i, line) in data.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        if v.get("fast").is_none() {
            if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
                base.push(t.to_string());
            }
        }
    }
    let bytes: usize = base.iter().map(|t| t.len()).sum();
    let reps = ((args.mb * 1e6) / bytes.max(1) as f64).ceil().max(1.0) as usize;
    Ok((0..reps).flat_map(|_| base.iter().cloned()).collect())
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let tok = bert::Tokenizer::from_vocab_file(args.fixtures.join("vocab.txt"), true)
        .map_err(|e| e.to_string())?;
    let texts = load_texts(&args)?;
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .map_err(|e| e.to_string())?;
    let shape = format!("lines={},MB={:.1}", texts.len(), bytes as f64 / 1e6);
    for (op, special, max_len) in [
        ("tokenize", false, None),
        ("encode_trunc128", true, Some(128)),
    ] {
        let mut best = f64::INFINITY;
        let mut out = Vec::new();
        for _ in 0..args.repeats.max(1) {
            drop(std::mem::take(&mut out)); // free the previous result outside the timed region
            let t0 = Instant::now();
            out = pool.install(|| tok.encode_batch(&texts, special, max_len));
            best = best.min(t0.elapsed().as_secs_f64() * 1e3);
        }
        let n_ids: usize = out.iter().map(Vec::len).sum();
        println!(
            "{}",
            serde_json::json!({
                "op": op, "shape": shape, "ms": (best * 1000.0).round() / 1000.0,
                "ids_hash": format!("{:016x}", ids_hash(&out)), "n_ids": n_ids,
                "threads": args.threads, "mb_per_s": ((bytes as f64 / 1e6) / (best / 1e3) * 10.0).round() / 10.0,
                "impl": "ours",
            })
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("tokenizer bench: {e}");
        std::process::exit(1);
    }
}
