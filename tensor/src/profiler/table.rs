//! The end-of-run tables: top ops, per module, per phase, with achieved GFLOP/s and GB/s and
//! their share of the device's peak; and two runs side by side with per-op ratios.
//! Times are self times (an op's time less the ops nested in it), so the rows add up.

use super::record::{Agg, AggKey, Kind, Phase, Record};
use std::collections::HashMap;
use std::fmt::Write;

/// The device's peak rates, for the "% of peak" columns (`None`: column left blank).
#[derive(Clone, Copy, Debug, Default)]
pub struct Peak {
    pub gflops: Option<f64>,
    pub gbps: Option<f64>,
}

impl Peak {
    /// `COTMAE_PEAK_GFLOPS` and `COTMAE_PEAK_GBPS`, when set to numbers.
    pub fn from_env() -> Peak {
        let get = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
        Peak {
            gflops: get("COTMAE_PEAK_GFLOPS"),
            gbps: get("COTMAE_PEAK_GBPS"),
        }
    }
}

/// Totals grouped three ways.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Per op name, the most expensive first.
    pub ops: Vec<(String, Agg)>,
    /// Per module path (self time of the ops inside it).
    pub modules: Vec<(String, Agg)>,
    /// Per phase: (phase, wall time of its slices, host op time inside it, GPU kernel time
    /// inside it).
    pub phases: Vec<(Phase, u64, u64, u64)>,
    /// GPU work per op name, timed by CUDA events (empty on the CPU).
    pub kernels: Vec<(String, Agg)>,
}

fn add_to(groups: &mut HashMap<String, Agg>, key: &str, a: &Agg) {
    match groups.get_mut(key) {
        Some(g) => g.add(a),
        None => {
            groups.insert(key.to_string(), *a);
        }
    }
}

fn grouped(groups: HashMap<String, Agg>) -> Vec<(String, Agg)> {
    let mut v: Vec<_> = groups.into_iter().collect();
    v.sort_by(|a, b| b.1.self_ns.cmp(&a.1.self_ns).then(a.0.cmp(&b.0)));
    v
}

impl Summary {
    /// From host op totals, GPU kernel totals (both per (op, module, phase)) and the wall
    /// time of each phase's slices.
    pub fn from_totals(
        aggs: HashMap<AggKey, Agg>,
        kernel_aggs: HashMap<AggKey, Agg>,
        phase_wall: HashMap<Phase, u64>,
    ) -> Summary {
        let (mut ops, mut modules, mut kernels) = Default::default();
        let (mut phase_ops, mut phase_kernels): (HashMap<Phase, u64>, HashMap<Phase, u64>) =
            Default::default();
        for ((op, module, phase), a) in &aggs {
            add_to(&mut ops, op, a);
            add_to(
                &mut modules,
                if module.is_empty() { "(top)" } else { module },
                a,
            );
            *phase_ops.entry(*phase).or_default() += a.self_ns;
        }
        for ((op, _, phase), a) in &kernel_aggs {
            add_to(&mut kernels, op, a);
            *phase_kernels.entry(*phase).or_default() += a.self_ns;
        }
        let get = |m: &HashMap<Phase, u64>, p| m.get(&p).copied();
        let phases = Phase::ALL
            .into_iter()
            .filter_map(|p| {
                let (w, o, k) = (
                    get(&phase_wall, p),
                    get(&phase_ops, p),
                    get(&phase_kernels, p),
                );
                (w.is_some() || o.is_some() || k.is_some())
                    .then(|| (p, w.unwrap_or(0), o.unwrap_or(0), k.unwrap_or(0)))
            })
            .collect();
        Summary {
            ops: grouped(ops),
            modules: grouped(modules),
            phases,
            kernels: grouped(kernels),
        }
    }

    /// The totals of a list of records (a trace read back from a file).
    pub fn from_records(records: &[Record]) -> Summary {
        let (mut aggs, mut kernels, mut walls): (
            HashMap<AggKey, Agg>,
            HashMap<AggKey, Agg>,
            HashMap<Phase, u64>,
        ) = Default::default();
        for r in records {
            let key = || (r.name.clone(), r.module.clone(), r.phase);
            match r.kind {
                Kind::Op => aggs.entry(key()).or_default().add(&Agg::of(r)),
                Kind::Kernel => kernels.entry(key()).or_default().add(&Agg::of(r)),
                Kind::Phase => *walls.entry(r.phase).or_default() += r.dur_ns,
                Kind::Module => {}
            }
        }
        Summary::from_totals(aggs, kernels, walls)
    }

    /// Total op self time.
    pub fn op_ns(&self) -> u64 {
        self.ops.iter().map(|(_, a)| a.self_ns).sum()
    }

    /// The three tables; at most `rows` rows each for ops and modules.
    pub fn render(&self, peak: Peak) -> String {
        let total = self.op_ns().max(1) as f64;
        let mut s = String::new();
        let _ = writeln!(s, "== top ops (self time) ==");
        rate_table(&mut s, "op", &self.ops, total, peak, 30);
        let _ = writeln!(s, "\n== per module (self time of its ops) ==");
        rate_table(&mut s, "module", &self.modules, total, peak, 40);
        if !self.kernels.is_empty() {
            let _ = writeln!(s, "\n== GPU work per op (CUDA event time) ==");
            let gpu_total = self.kernels.iter().map(|(_, a)| a.self_ns).sum::<u64>();
            rate_table(
                &mut s,
                "op",
                &self.kernels,
                gpu_total.max(1) as f64,
                peak,
                30,
            );
        }
        let _ = writeln!(s, "\n== per phase ==");
        let _ = writeln!(
            s,
            "{:<14} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "phase", "wall ms", "op ms", "host gap ms", "GPU ms", "GPU idle ms"
        );
        for (p, wall, ops, gpu) in &self.phases {
            let _ = writeln!(
                s,
                "{:<14} {:>12.3} {:>12.3} {:>12.3} {:>12.3} {:>12.3}",
                p.name(),
                ms(*wall),
                ms(*ops),
                ms(wall.saturating_sub(*ops)),
                ms(*gpu),
                if *gpu == 0 {
                    0.0
                } else {
                    ms(wall.saturating_sub(*gpu))
                }
            );
        }
        s
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// GFLOP/s and GB/s of an aggregate over its self time.
fn rates(a: &Agg) -> (f64, f64) {
    let secs = (a.self_ns.max(1)) as f64 / 1e9;
    (a.flops as f64 / secs / 1e9, a.bytes as f64 / secs / 1e9)
}

fn pct(x: f64, of: Option<f64>) -> String {
    of.map_or_else(String::new, |p| format!("{:.1}", 100.0 * x / p))
}

fn rate_table(
    s: &mut String,
    what: &str,
    rows: &[(String, Agg)],
    total: f64,
    peak: Peak,
    n: usize,
) {
    let _ = writeln!(
        s,
        "{what:<44} {:>8} {:>11} {:>6} {:>9} {:>7} {:>8} {:>7}",
        "calls", "self ms", "%", "GFLOP/s", "%peak", "GB/s", "%peak"
    );
    for (name, a) in rows.iter().take(n) {
        let (gf, gb) = rates(a);
        let _ = writeln!(
            s,
            "{name:<44} {:>8} {:>11.3} {:>6.1} {:>9.1} {:>7} {:>8.1} {:>7}",
            a.calls,
            ms(a.self_ns),
            100.0 * a.self_ns as f64 / total,
            gf,
            pct(gf, peak.gflops),
            gb,
            pct(gb, peak.gbps)
        );
    }
    if rows.len() > n {
        let _ = writeln!(s, "({} more rows)", rows.len() - n);
    }
}

/// Two runs' op tables side by side: self ms of each and the ratio after / before.
pub fn compare(before: &Summary, after: &Summary) -> String {
    let b: HashMap<&str, &Agg> = before.ops.iter().map(|(k, a)| (k.as_str(), a)).collect();
    let a: HashMap<&str, &Agg> = after.ops.iter().map(|(k, a)| (k.as_str(), a)).collect();
    let mut names: Vec<&str> = b.keys().chain(a.keys()).copied().collect();
    names.sort();
    names.dedup();
    let get = |m: &HashMap<&str, &Agg>, k: &str| m.get(k).map_or(0, |a| a.self_ns);
    names.sort_by_key(|k| std::cmp::Reverse(get(&b, k).max(get(&a, k))));
    let mut s = format!(
        "{:<44} {:>12} {:>12} {:>8}\n",
        "op", "before ms", "after ms", "ratio"
    );
    for k in names.iter().copied().chain(std::iter::once("(all ops)")) {
        let (x, y) = if k == "(all ops)" {
            (before.op_ns(), after.op_ns())
        } else {
            (get(&b, k), get(&a, k))
        };
        let ratio = if x == 0 {
            "-".to_string()
        } else {
            format!("{:.3}", y as f64 / x as f64)
        };
        let _ = writeln!(s, "{k:<44} {:>12.3} {:>12.3} {ratio:>8}", ms(x), ms(y));
    }
    s
}
