//! The report's figures as plain, self-contained SVG (no scripts, no external fonts), readable
//! in a browser and on GitHub:
//!
//! - [`mrr_bars`]: MRR@10 per arm, a bar at the mean over seeds, a dot per seed, and for every
//!   arm but the baseline a whisker spanning the baseline's mean plus the 95% interval of the
//!   paired difference (where the arm's mean could be, given the baseline's).
//! - [`loss_curves`]: pretraining loss per arm against step, the mean over seeds as a line and
//!   the min-max band over seeds shaded.

use std::fmt::Write as _;

use super::report::Report;

const W: f64 = 640.0;
const H: f64 = 360.0;
/// Plot area margins: left, right, top, bottom.
const M: (f64, f64, f64, f64) = (60.0, 20.0, 30.0, 50.0);
const COLORS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG header, a title and the y axis with `ticks` labelled ticks over `[lo, hi]`.
fn frame(title: &str, y_label: &str, lo: f64, hi: f64) -> String {
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        W / 2.0,
        escape(title)
    );
    let (x0, y0, y1) = (M.0, H - M.3, M.2);
    let _ = writeln!(
        s,
        "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"black\"/>\n\
         <line x1=\"{x0}\" y1=\"{y0}\" x2=\"{}\" y2=\"{y0}\" stroke=\"black\"/>",
        W - M.1
    );
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        let y = y0 - (y0 - y1) * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{x0}\" y2=\"{y:.1}\" stroke=\"black\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.3}</text>",
            x0 - 4.0,
            x0 - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" \
         text-anchor=\"middle\">{}</text>",
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label)
    );
    s
}

/// The y pixel of value `v` on an axis over `[lo, hi]`.
fn y_of(v: f64, lo: f64, hi: f64) -> f64 {
    let span = if hi > lo { hi - lo } else { 1.0 };
    (H - M.3) - (H - M.3 - M.2) * (v - lo) / span
}

/// MRR@10 bars with per-seed dots and interval whiskers (module doc).
pub fn mrr_bars(r: &Report) -> String {
    let metric = |a: &super::report::ArmSummary| {
        a.metrics
            .iter()
            .find(|m| m.metric == "MRR@10")
            .cloned()
            .expect("MRR@10 is reported")
    };
    let base_mean = r
        .arms
        .iter()
        .find(|a| a.arm == r.baseline)
        .map(|a| metric(a).mean)
        .unwrap_or(0.0);
    let mut hi: f64 = 0.0;
    for a in &r.arms {
        hi = hi.max(metric(a).per_seed.iter().cloned().fold(0.0, f64::max));
    }
    for c in r.comparisons.iter().filter(|c| c.metric == "MRR@10") {
        hi = hi.max(base_mean + c.ci95_high);
    }
    let hi = if hi > 0.0 { hi * 1.1 } else { 1.0 };
    let mut s = frame("MRR@10 per arm (bar: mean; dots: seeds)", "MRR@10", 0.0, hi);
    let n = r.arms.len().max(1) as f64;
    let slot = (W - M.0 - M.1) / n;
    for (i, a) in r.arms.iter().enumerate() {
        let m = metric(a);
        let cx = M.0 + slot * (i as f64 + 0.5);
        let (top, bottom) = (y_of(m.mean, 0.0, hi), H - M.3);
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" \
             fill-opacity=\"0.7\"><title>{}: {}</title></rect>",
            cx - slot * 0.3,
            slot * 0.6,
            bottom - top,
            COLORS[i % COLORS.len()],
            escape(&a.arm),
            m.mean
        );
        for (k, v) in m.per_seed.iter().enumerate() {
            let dx = (k as f64 - (m.per_seed.len() as f64 - 1.0) / 2.0) * 8.0;
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"black\"><title>seed {}: \
                 {v}</title></circle>",
                cx + dx,
                y_of(*v, 0.0, hi),
                r.seeds.get(k).copied().unwrap_or(0)
            );
        }
        if let Some(c) = r
            .comparisons
            .iter()
            .find(|c| c.arm == a.arm && c.metric == "MRR@10")
        {
            let (y_lo, y_hi) = (
                y_of(base_mean + c.ci95_low, 0.0, hi),
                y_of(base_mean + c.ci95_high, 0.0, hi),
            );
            let _ = writeln!(
                s,
                "<g stroke=\"black\" stroke-width=\"1.5\"><line x1=\"{cx:.1}\" y1=\"{y_lo:.1}\" \
                 x2=\"{cx:.1}\" y2=\"{y_hi:.1}\"/><line x1=\"{:.1}\" y1=\"{y_lo:.1}\" \
                 x2=\"{:.1}\" y2=\"{y_lo:.1}\"/><line x1=\"{:.1}\" y1=\"{y_hi:.1}\" \
                 x2=\"{:.1}\" y2=\"{y_hi:.1}\"/></g>",
                cx - 6.0,
                cx + 6.0,
                cx - 6.0,
                cx + 6.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            H - M.3 + 18.0,
            escape(&a.arm)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">whiskers: baseline \
         mean + 95% paired-bootstrap interval of the difference</text>\n</svg>",
        W / 2.0,
        H - 8.0
    );
    s
}

/// Pretraining loss curves, mean line and min-max band per arm (module doc).
pub fn loss_curves(r: &Report) -> String {
    let curves: Vec<_> = r
        .arms
        .iter()
        .enumerate()
        .filter(|(_, a)| !a.loss.steps.is_empty())
        .collect();
    let max_step = curves
        .iter()
        .filter_map(|(_, a)| a.loss.steps.last().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (_, a) in &curves {
        lo = a.loss.min.iter().cloned().fold(lo, f64::min);
        hi = a.loss.max.iter().cloned().fold(hi, f64::max);
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let mut s = frame(
        "Pretraining loss (line: mean over seeds; band: min-max)",
        "loss",
        lo,
        hi,
    );
    let x_of = |step: u64| M.0 + (W - M.0 - M.1) * step as f64 / max_step;
    for (k, (i, a)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let l = &a.loss;
        let mut band = String::new();
        for (step, v) in l.steps.iter().zip(&l.max) {
            let _ = write!(band, "{:.1},{:.1} ", x_of(*step), y_of(*v, lo, hi));
        }
        for (step, v) in l.steps.iter().zip(&l.min).rev() {
            let _ = write!(band, "{:.1},{:.1} ", x_of(*step), y_of(*v, lo, hi));
        }
        let line: Vec<String> = l
            .steps
            .iter()
            .zip(&l.mean)
            .map(|(step, v)| format!("{:.1},{:.1}", x_of(*step), y_of(*v, lo, hi)))
            .collect();
        let _ = writeln!(
            s,
            "<polygon points=\"{}\" fill=\"{color}\" fill-opacity=\"0.2\" stroke=\"none\"/>\n\
             <polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>",
            band.trim_end(),
            line.join(" "),
            W - M.1 - 120.0,
            M.2 + 16.0 * (k as f64 + 1.0),
            escape(&a.arm)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step (0 to {max_step})</text>\n</svg>",
        W / 2.0,
        H - 12.0
    );
    s
}
