//! The op profiler. Every op opens a `scope(name)` at its dispatch point; when profiling is on
//! (`profiler::enable()` or `COTMAE_PROFILE=1`), the time spent in each op name is accumulated and
//! `profiler::report()` prints a table. When off, a scope costs one relaxed atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static ENV_CHECKED: AtomicU8 = AtomicU8::new(0);
static TOTALS: Mutex<Option<HashMap<&'static str, (u64, Duration)>>> = Mutex::new(None);

pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

fn enabled() -> bool {
    if ENV_CHECKED.load(Ordering::Relaxed) == 0 {
        ENV_CHECKED.store(1, Ordering::Relaxed);
        if std::env::var("COTMAE_PROFILE").is_ok_and(|v| v == "1") {
            enable();
        }
    }
    ENABLED.load(Ordering::Relaxed)
}

/// Times the enclosing op until dropped.
pub struct Scope {
    name: &'static str,
    start: Option<Instant>,
}

pub fn scope(name: &'static str) -> Scope {
    Scope {
        name,
        start: enabled().then(Instant::now),
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let dt = start.elapsed();
            let mut g = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
            let e = g
                .get_or_insert_with(HashMap::new)
                .entry(self.name)
                .or_default();
            e.0 += 1;
            e.1 += dt;
        }
    }
}

/// (op name, calls, total time), the most expensive first. Nested ops count in both.
pub fn totals() -> Vec<(&'static str, u64, Duration)> {
    let g = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = g
        .iter()
        .flat_map(|m| m.iter().map(|(k, (n, d))| (*k, *n, *d)))
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.2));
    v
}

pub fn reset() {
    *TOTALS.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The totals as a printable table.
pub fn report() -> String {
    let mut s = format!("{:<24} {:>10} {:>12}\n", "op", "calls", "total ms");
    for (name, n, d) in totals() {
        s += &format!("{name:<24} {n:>10} {:>12.3}\n", d.as_secs_f64() * 1e3);
    }
    s
}
