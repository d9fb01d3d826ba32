//! `cotmae ablation`: the paper's comparisons at small scale, as arms x seeds on any corpus,
//! with paired statistics and a report.
//!
//! 1. [`spec`]: read and check the TOML spec (data, starting model, shared flags, arms).
//! 2. Shared stages, cached under `DIR/shared/` by their exact command line (so arms that do not
//!    change them share them): `prepare` per seed, `tokenize-corpus`, `tokenize-queries`, BM25
//!    negatives ([`retrieval::bm25`]) unless the spec gives negatives, `build-train` per seed.
//! 3. [`cell`]: each arm x seed in `DIR/<arm>/seed-<s>/`: `pretrain` (unless `pretrain =
//!    false`), `train-retriever` (one or two stages), `encode`, `search` to `run.dev.tsv`, the
//!    metrics to `metrics.json` (written atomically, last: a cell with it is finished).
//! 4. [`stats`] and [`report`]: per-arm means over seeds, paired differences with the baseline
//!    (bootstrap interval and randomization test over queries), `report.md`, `report.json` and
//!    the SVG figures of [`svg`].
//!
//! Paired design: seed `s` is every stage's `--seed` in every arm, so the initialisation,
//! the pretraining data order, the training files and the fine-tuning order of two arms differ
//! only by what the arms change. Each stage's command is printed before it runs (as in `demo`)
//! and leaves a marker (`stages/<name>.done`, holding its seconds) when it finishes; a rerun
//! skips marked stages and resumes a training stage from its latest checkpoint, so `kill -9`
//! loses at most the stage that was running. Cells run one after another with every thread.

pub mod cell;
pub mod report;
pub mod spec;
pub mod stats;
pub mod svg;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cli::{run_args, CliResult};
use crate::device::DeviceArgs;
use spec::Spec;

/// What `cotmae ablation` was asked to do.
#[derive(Clone, Debug)]
pub struct AblationOptions {
    pub spec: PathBuf,
    pub output_dir: PathBuf,
    /// `--device`, `--fp16` / `--bf16` for every stage that runs a model.
    pub compute: DeviceArgs,
}

/// Runs stages, skipping those already marked done, and keeps the account the harness-overhead
/// check and the tests read.
#[derive(Debug, Default)]
pub struct Stages {
    /// Stages run (not skipped) by this invocation.
    pub run: usize,
    /// Their seconds, added up.
    pub seconds: f64,
}

impl Stages {
    /// Runs `f` unless `markers/<name>.done` exists; writes the marker (its seconds) after.
    /// Returns the stage's seconds (from the marker when skipped).
    pub fn stage(
        &mut self,
        markers: &Path,
        name: &str,
        f: impl FnOnce() -> CliResult,
    ) -> CliResult<f64> {
        let marker = markers.join(format!("{name}.done"));
        if let Ok(text) = std::fs::read_to_string(&marker) {
            eprintln!(
                "ablation: {name} already done ({}), skipped",
                marker.display()
            );
            return Ok(text.trim().parse().unwrap_or(0.0));
        }
        let t = Instant::now();
        f()?;
        let secs = t.elapsed().as_secs_f64();
        std::fs::create_dir_all(markers)?;
        tensor::fs::write_atomic(&marker, format!("{secs}\n").as_bytes())
            .map_err(|e| format!("{}: {e}", marker.display()))?;
        self.run += 1;
        self.seconds += secs;
        Ok(secs)
    }

    /// Runs subcommand `words` as a stage whose output is `DIR/shared/<name>-<hash>`, the hash
    /// of the command line (with `{out}` standing for the output path), and returns that path.
    pub fn shared(&mut self, dir: &Path, name: &str, words: &[String]) -> CliResult<PathBuf> {
        let key = format!("{name}-{:016x}", fnv1a(&words.join("\u{1f}")));
        let out = dir.join("shared").join(&key);
        let argv: Vec<String> = words
            .iter()
            .map(|w| w.replace("{out}", &out.display().to_string()))
            .collect();
        self.stage(&dir.join("shared").join("stages"), &key, || run_args(&argv))?;
        Ok(out)
    }
}

/// FNV-1a, 64 bits: a stable name for a cached stage's command line.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `p` as a command-line word.
pub fn word(p: &Path) -> String {
    p.display().to_string()
}

/// Words from string slices.
pub fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| w.to_string()).collect()
}

/// What a run did: the stages it ran and its wall time (the harness overhead check).
#[derive(Debug)]
pub struct AblationRun {
    pub stages: Stages,
    pub wall_seconds: f64,
    pub report: report::Report,
}

/// A text progress bar over cells with elapsed time and an ETA from the cells run so far.
fn progress_line(done: usize, total: usize, started: Instant, ran: usize) -> String {
    let width = 24;
    let filled = width * done / total.max(1);
    let elapsed = started.elapsed().as_secs_f64();
    let eta = if ran > 0 {
        format!("{:.0}s", elapsed / ran as f64 * (total - done) as f64)
    } else {
        "?".into()
    };
    format!(
        "[{}{}] {done}/{total} cells, {elapsed:.0}s elapsed, ETA {eta}",
        "#".repeat(filled),
        "-".repeat(width - filled)
    )
}

/// Runs the whole ablation (module doc) and writes the report.
pub fn run(opts: &AblationOptions) -> CliResult<AblationRun> {
    let started = Instant::now();
    let spec = Spec::read(&opts.spec)?;
    opts.compute.open()?;
    let dir = &opts.output_dir;
    std::fs::create_dir_all(dir)?;
    let mut stages = Stages::default();
    let plan = cell::Plan::new(&spec, dir, &opts.compute)?;
    let total = spec.arms.len() * spec.seeds.len();
    let (mut done, mut ran) = (0, 0);
    let mut cells = Vec::new();
    for &seed in &spec.seeds {
        for arm in &spec.arms {
            eprintln!(
                "\nablation: {} -- arm {}, seed {seed}",
                progress_line(done, total, started, ran),
                arm.name
            );
            let before = stages.run;
            cells.push(plan.run_cell(arm, seed, &mut stages)?);
            done += 1;
            ran += usize::from(stages.run > before);
        }
    }
    eprintln!("\nablation: {}", progress_line(done, total, started, ran));
    let mut report = report::Report::build(&spec, &plan, &cells)?;
    let wall = started.elapsed().as_secs_f64();
    report.write(dir, wall, stages.seconds)?;
    eprintln!(
        "ablation: {} stages run, {:.1}s in stages, {:.1}s wall (harness {:.2}%); report in {}",
        stages.run,
        stages.seconds,
        wall,
        100.0 * (wall - stages.seconds).max(0.0) / stages.seconds.max(1e-9),
        dir.join("report.md").display()
    );
    Ok(AblationRun {
        stages,
        wall_seconds: wall,
        report,
    })
}
