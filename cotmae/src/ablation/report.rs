//! The ablation's report: `report.json` (every number), `report.md` (the same numbers, in
//! words and tables) and the figures `mrr.svg` and `loss.svg` beside them.
//!
//! Every number is rounded once, when the report is built (4 decimals; FLOPs and steps whole),
//! and both files print those rounded values with Rust's shortest round-trip formatting, so
//! report.md shows exactly what report.json holds.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::cell::{CellResult, Plan};
use super::spec::Spec;
use super::stats::{compare, mean_std, RESAMPLES};
use super::svg;
use crate::cli::CliResult;

/// The metrics reported per cell, as named in `metrics.json`.
pub const METRICS: [&str; 4] = ["MRR@10", "recall@1", "recall@50", "recall@1000"];
/// The metrics compared with the baseline (per-query values: reciprocal rank, hit at 50).
pub const COMPARED: [&str; 2] = ["MRR@10", "recall@50"];

fn r4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// One metric of one arm over seeds.
#[derive(Clone, Debug, Serialize)]
pub struct MetricSummary {
    pub metric: String,
    pub mean: f64,
    pub std: f64,
    /// In `seeds` order.
    pub per_seed: Vec<f64>,
}

/// A pretraining loss curve over seeds: at each logged step, the mean, min and max.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LossCurve {
    pub steps: Vec<u64>,
    pub mean: Vec<f64>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ArmSummary {
    pub arm: String,
    pub pretrain: bool,
    pub pretrain_steps: u64,
    /// Pretraining FLOPs of one cell (matrix products, forward and backward).
    pub pretrain_flops: f64,
    /// Mean over seeds of the pretraining stage's wall time.
    pub pretrain_seconds: f64,
    pub metrics: Vec<MetricSummary>,
    pub loss: LossCurve,
}

#[derive(Clone, Debug, Serialize)]
pub struct ComparisonRow {
    pub arm: String,
    pub metric: String,
    /// Arm minus baseline, mean over seeds of the per-query mean difference.
    pub diff: f64,
    pub ci95_low: f64,
    pub ci95_high: f64,
    pub p_value: f64,
    pub interval_excludes_zero: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Harness {
    pub wall_seconds: f64,
    pub stage_seconds: f64,
    pub overhead_percent: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub spec: String,
    pub seeds: Vec<u64>,
    pub baseline: String,
    pub dev_queries_judged: usize,
    pub method: String,
    pub resamples: usize,
    pub arms: Vec<ArmSummary>,
    pub comparisons: Vec<ComparisonRow>,
    /// This invocation's wall time and the time inside its stages (stages reused from an
    /// earlier run count in neither).
    pub harness: Option<Harness>,
}

pub const METHOD: &str = "paired bootstrap over dev queries (the same query draw in every seed), \
                          95% percentile interval; paired randomization test (each query's \
                          arm/baseline values swapped with probability 1/2, in every seed at \
                          once), two-sided p-value";

/// Per-query values of a finished cell: (reciprocal rank at 10, hit at 50), judged-query order.
fn per_query(cell: &CellResult, qrels: &retrieval::Qrels) -> CliResult<(Vec<f64>, Vec<f64>)> {
    let run = retrieval::Run::read(cell.dir.join("run.dev.tsv"))?;
    let ranks = retrieval::metrics::first_relevant_ranks(qrels, &run);
    Ok((
        ranks
            .iter()
            .map(|(_, r)| retrieval::metrics::reciprocal_rank_at_10(*r))
            .collect(),
        ranks
            .iter()
            .map(|(_, r)| f64::from(u8::from(r.is_some_and(|r| r <= 50))))
            .collect(),
    ))
}

/// The pretraining loss curve of each cell (`trainer_log.jsonl`'s `loss` entries).
fn loss_points(cell: &CellResult) -> Vec<(u64, f64)> {
    let path = cell
        .dir
        .join("pretrained")
        .join(crate::trainer::log::LOG_FILE);
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_u64()?, v.get("loss")?.as_f64()?)))
        .collect()
}

/// Mean, min and max over seeds at the steps every seed logged.
fn loss_curve(curves: &[Vec<(u64, f64)>]) -> LossCurve {
    let mut out = LossCurve::default();
    let Some(first) = curves.first() else {
        return out;
    };
    for &(step, _) in first {
        let vals: Vec<f64> = curves
            .iter()
            .filter_map(|c| c.iter().find(|(s, _)| *s == step).map(|&(_, l)| l))
            .collect();
        if vals.len() == curves.len() {
            out.steps.push(step);
            out.mean
                .push(r4(vals.iter().sum::<f64>() / vals.len() as f64));
            out.min
                .push(r4(vals.iter().cloned().fold(f64::INFINITY, f64::min)));
            out.max
                .push(r4(vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)));
        }
    }
    out
}

impl Report {
    /// Builds the report from the finished cells (all arms x seeds).
    pub fn build(spec: &Spec, plan: &Plan, cells: &[CellResult]) -> CliResult<Report> {
        let qrels = retrieval::Qrels::read(&spec.data.dev_qrels)?;
        let cells_of = |arm: &str| -> Vec<&CellResult> {
            spec.seeds
                .iter()
                .filter_map(|s| cells.iter().find(|c| c.arm == arm && c.seed == *s))
                .collect()
        };
        let mut arms = Vec::new();
        let mut per_query_of = Vec::new();
        for (arm, pre) in spec.arms.iter().zip(&plan.pretraining) {
            let cs = cells_of(&arm.name);
            let mut metrics = Vec::new();
            for name in METRICS {
                let per_seed: Vec<f64> = cs
                    .iter()
                    .map(|c| c.metrics.get(name).and_then(|v| v.as_f64()).unwrap_or(0.0))
                    .map(r4)
                    .collect();
                let (mean, std) = mean_std(&per_seed);
                metrics.push(MetricSummary {
                    metric: name.to_string(),
                    mean: r4(mean),
                    std: r4(std),
                    per_seed,
                });
            }
            let secs: Vec<f64> = cs
                .iter()
                .map(|c| c.metrics["pretrain_seconds"].as_f64().unwrap_or(0.0))
                .collect();
            arms.push(ArmSummary {
                arm: arm.name.clone(),
                pretrain: arm.pretrain,
                pretrain_steps: pre.steps,
                pretrain_flops: (pre.steps as f64 * pre.flops_per_step).round(),
                pretrain_seconds: (mean_std(&secs).0 * 10.0).round() / 10.0,
                metrics,
                loss: loss_curve(&cs.iter().map(|c| loss_points(c)).collect::<Vec<_>>()),
            });
            per_query_of.push(
                cs.iter()
                    .map(|c| per_query(c, &qrels))
                    .collect::<CliResult<Vec<_>>>()?,
            );
        }
        let b = spec
            .arms
            .iter()
            .position(|a| a.name == spec.baseline)
            .expect("the baseline is an arm");
        let mut comparisons = Vec::new();
        for (i, arm) in spec.arms.iter().enumerate().filter(|(i, _)| *i != b) {
            for (m, metric) in COMPARED.iter().enumerate() {
                let pick = |v: &Vec<(Vec<f64>, Vec<f64>)>| -> Vec<Vec<f64>> {
                    v.iter()
                        .map(|(rr, hit)| if m == 0 { rr.clone() } else { hit.clone() })
                        .collect()
                };
                let c = compare(&pick(&per_query_of[i]), &pick(&per_query_of[b]), RESAMPLES);
                comparisons.push(ComparisonRow {
                    arm: arm.name.clone(),
                    metric: metric.to_string(),
                    diff: r4(c.diff),
                    ci95_low: r4(c.low),
                    ci95_high: r4(c.high),
                    p_value: r4(c.p_value),
                    interval_excludes_zero: c.excludes_zero(),
                });
            }
        }
        Ok(Report {
            spec: spec.path.display().to_string(),
            seeds: spec.seeds.clone(),
            baseline: spec.baseline.clone(),
            dev_queries_judged: qrels.judged_queries().count(),
            method: METHOD.to_string(),
            resamples: RESAMPLES,
            arms,
            comparisons,
            harness: None,
        })
    }

    /// Writes report.json, report.md, mrr.svg and loss.svg into `dir` (each atomically),
    /// with this run's wall and stage seconds.
    pub fn write(&mut self, dir: &Path, wall: f64, stage_seconds: f64) -> CliResult {
        self.harness = Some(Harness {
            wall_seconds: (wall * 10.0).round() / 10.0,
            stage_seconds: (stage_seconds * 10.0).round() / 10.0,
            overhead_percent: if stage_seconds > 0.0 {
                r4(100.0 * (wall - stage_seconds).max(0.0) / stage_seconds)
            } else {
                0.0
            },
        });
        let json = serde_json::to_string_pretty(self)?;
        for (name, text) in [
            ("report.json", format!("{json}\n")),
            ("report.md", self.markdown()),
            ("mrr.svg", svg::mrr_bars(self)),
            ("loss.svg", svg::loss_curves(self)),
        ] {
            let mut f = retrieval::atomic::AtomicFile::create(dir.join(name))?;
            f.write_all(text.as_bytes())?;
            f.finish()?;
        }
        Ok(())
    }

    fn metric<'a>(arm: &'a ArmSummary, name: &str) -> &'a MetricSummary {
        arm.metrics
            .iter()
            .find(|m| m.metric == name)
            .expect("every reported metric")
    }

    /// report.md (module doc).
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let _ = writeln!(t, "# Ablation report\n");
        let _ = writeln!(
            t,
            "Spec `{}`; seeds {}; baseline `{}`; {} judged dev queries.\n",
            self.spec,
            seeds.join(", "),
            self.baseline,
            self.dev_queries_judged
        );
        let _ = writeln!(t, "## Arms (mean ± std over seeds; per-seed values)\n");
        let _ = writeln!(
            t,
            "| arm | pretraining steps | pretraining FLOPs | pretraining s (mean) | MRR@10 | \
             recall@1 | recall@50 | recall@1000 | MRR@10 per seed |"
        );
        let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
        for a in &self.arms {
            let cell = |name: &str| {
                let m = Self::metric(a, name);
                format!("{} ± {}", m.mean, m.std)
            };
            let per_seed: Vec<String> = Self::metric(a, "MRR@10")
                .per_seed
                .iter()
                .map(f64::to_string)
                .collect();
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                a.arm,
                if a.pretrain {
                    a.pretrain_steps.to_string()
                } else {
                    "none".into()
                },
                a.pretrain_flops,
                a.pretrain_seconds,
                cell("MRR@10"),
                cell("recall@1"),
                cell("recall@50"),
                cell("recall@1000"),
                per_seed.join(" / ")
            );
        }
        let _ = writeln!(t, "\n## Against the baseline `{}`\n", self.baseline);
        let _ = writeln!(
            t,
            "Method: {}; {} resamples each.\n",
            self.method, self.resamples
        );
        let _ = writeln!(t, "| arm | metric | difference | 95% interval | p-value |");
        let _ = writeln!(t, "|---|---|---|---|---|");
        for c in &self.comparisons {
            let _ = writeln!(
                t,
                "| {} | {} | {:+} | [{:+}, {:+}] | {} |",
                c.arm, c.metric, c.diff, c.ci95_low, c.ci95_high, c.p_value
            );
        }
        let _ = writeln!(t);
        for c in &self.comparisons {
            let verdict = if c.interval_excludes_zero {
                if c.diff > 0.0 {
                    "better than"
                } else {
                    "worse than"
                }
            } else {
                "not distinguishable from"
            };
            let _ = writeln!(
                t,
                "- `{}` is {verdict} `{}` on {}: {:+}, 95% interval [{:+}, {:+}] {} 0 \
                 (p = {}).",
                c.arm,
                self.baseline,
                c.metric,
                c.diff,
                c.ci95_low,
                c.ci95_high,
                if c.interval_excludes_zero {
                    "excludes"
                } else {
                    "contains"
                },
                c.p_value
            );
        }
        let _ = writeln!(
            t,
            "\n![MRR@10 per arm](mrr.svg)\n\n![pretraining loss](loss.svg)\n"
        );
        if let Some(h) = &self.harness {
            let _ = writeln!(
                t,
                "Wall time of this run: {} s, of which {} s inside its stages (harness overhead \
                 {}%).",
                h.wall_seconds, h.stage_seconds, h.overhead_percent
            );
        }
        t
    }
}
