//! The Chrome Trace Event Format (what chrome://tracing, Perfetto and speedscope open): every
//! record becomes a complete event (`"ph": "X"`, `ts` and `dur` in microseconds) on its track:
//! host threads in process 1 (`tid` = thread id), where phases enclose module slices, which
//! enclose op slices; each GPU's stream in process 2 (`tid` = the GPU's ordinal), where the
//! slices are CUDA-event times. A flow arrow (`"ph": "s"` then `"f"`, one `id`) goes from each
//! host op slice to its GPU slice. `args` carry the module path, phase, shapes, dtype, device,
//! FLOPs and bytes, so a saved trace can be read back into the tables (`cotmae profile`).

use super::record::{Kind, Phase, Record};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

const HOST_PID: u32 = 1;
const GPU_PID: u32 = 2;

fn category(k: Kind) -> &'static str {
    match k {
        Kind::Op => "op",
        Kind::Module => "module",
        Kind::Phase => "phase",
        Kind::Kernel => "kernel",
    }
}

fn pid(r: &Record) -> u32 {
    if r.kind == Kind::Kernel {
        GPU_PID
    } else {
        HOST_PID
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// The events of `records`, sorted so that a parent comes before the slices it encloses.
pub fn to_json(records: &[Record]) -> Value {
    let mut recs: Vec<&Record> = records.iter().collect();
    // Enclosing slices first: by start, then the longer first, then phase > module > op.
    let rank = |k: Kind| match k {
        Kind::Phase => 0,
        Kind::Module => 1,
        Kind::Op | Kind::Kernel => 2,
    };
    recs.sort_by_key(|r| {
        let order = (r.start_ns, std::cmp::Reverse(r.dur_ns), rank(r.kind));
        (pid(r), r.thread, order)
    });
    let mut events = vec![
        json!({"ph": "M", "name": "process_name", "pid": HOST_PID, "tid": 0, "ts": 0,
               "args": {"name": "host"}}),
        json!({"ph": "M", "name": "process_name", "pid": GPU_PID, "tid": 0, "ts": 0,
               "args": {"name": "GPU (CUDA events)"}}),
    ];
    let mut tracks: Vec<(u32, u32)> = recs.iter().map(|r| (pid(r), r.thread)).collect();
    tracks.dedup();
    tracks.sort();
    tracks.dedup();
    for (p, t) in tracks {
        let name = if p == GPU_PID {
            format!("cuda:{t} stream")
        } else {
            format!("host thread {t}")
        };
        events.push(json!({
            "ph": "M", "name": "thread_name", "pid": p, "tid": t, "ts": 0,
            "args": {"name": name}
        }));
    }
    for r in recs {
        events.push(json!({
            "name": r.name,
            "cat": category(r.kind),
            "ph": "X",
            "ts": us(r.start_ns),
            "dur": us(r.dur_ns),
            "pid": pid(r),
            "tid": r.thread,
            "args": {
                "module": &*r.module,
                "phase": r.phase.name(),
                "shapes": r.shapes,
                "dtype": r.dtype,
                "device": r.device,
                "flops": r.flops,
                "bytes": r.bytes,
                "self_us": us(r.self_ns),
            }
        }));
        if r.flow != 0 && matches!(r.kind, Kind::Op | Kind::Kernel) {
            // The arrow leaves the host slice at its start and enters the GPU slice.
            let ph = if r.kind == Kind::Op { "s" } else { "f" };
            events.push(json!({
                "name": "launch", "cat": "launch", "ph": ph, "bp": "e", "id": r.flow,
                "ts": us(r.start_ns), "pid": pid(r), "tid": r.thread
            }));
        }
    }
    json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}

/// Writes the records kept so far (see `records()`) as a Chrome trace, atomically.
pub fn write_chrome_trace(path: &Path) -> Result<()> {
    let (records, _) = super::records();
    let text = serde_json::to_vec(&to_json(&records)).map_err(|e| Error::File {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    crate::fs::write_atomic(path, &text).map_err(|e| Error::File {
        path: path.display().to_string(),
        msg: format!("cannot write the trace: {e}"),
    })
}

fn static_dtype(s: &str) -> &'static str {
    crate::DType::from_safetensors_name(s).map_or("", |d| d.safetensors_name())
}

fn static_device(s: &str) -> &'static str {
    match s {
        "cpu" => "cpu",
        "cuda" => "cuda",
        _ => "",
    }
}

/// Reads back a trace this profiler wrote (complete events with our categories; other events
/// are skipped). Errors name the file and the event.
pub fn read_chrome_trace(path: &Path) -> Result<Vec<Record>> {
    let err = |msg: String| Error::File {
        path: path.display().to_string(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| err(format!("not JSON: {e}")))?;
    let events = v
        .get("traceEvents")
        .and_then(Value::as_array)
        .ok_or_else(|| err("no `traceEvents` array".into()))?;
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if e.get("ph").and_then(Value::as_str) != Some("X") {
            continue;
        }
        let kind = match e.get("cat").and_then(Value::as_str) {
            Some("op") => Kind::Op,
            Some("module") => Kind::Module,
            Some("phase") => Kind::Phase,
            Some("kernel") => Kind::Kernel,
            _ => continue,
        };
        let num = |v: Option<&Value>, field: &str| {
            v.and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| err(format!("event {i}: `{field}` missing or not a number >= 0")))
        };
        let text = |field: &str| {
            e.get("args")
                .and_then(|a| a.get(field))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let arg = |field: &str| e.get("args").and_then(|a| a.get(field));
        let name = e
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| err(format!("event {i}: no `name`")))?;
        let phase = Phase::parse(text("phase"))
            .ok_or_else(|| err(format!("event {i}: unknown phase {:?}", text("phase"))))?;
        out.push(Record {
            kind,
            name: Cow::Owned(name.to_string()),
            module: Arc::from(text("module")),
            phase,
            shapes: text("shapes").to_string(),
            dtype: static_dtype(text("dtype")),
            device: static_device(text("device")),
            thread: num(e.get("tid"), "tid")? as u32,
            start_ns: (num(e.get("ts"), "ts")? * 1e3) as u64,
            dur_ns: (num(e.get("dur"), "dur")? * 1e3) as u64,
            self_ns: (num(arg("self_us"), "args.self_us")? * 1e3) as u64,
            flops: num(arg("flops"), "args.flops")? as u64,
            bytes: num(arg("bytes"), "args.bytes")? as u64,
            flow: 0,
        });
    }
    Ok(out)
}
