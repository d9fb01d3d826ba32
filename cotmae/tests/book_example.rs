//! The book's chapter "One batch, end to end" shows what `cargo run --example one_batch` prints
//! (`docs/book/src/one-batch-output.txt`). This test runs the example and compares: every word
//! equal, every number within 1e-3 relative (the example is seeded; the tolerance only absorbs
//! last-digit differences of float summation order between CPUs). When the example's output
//! changes on purpose, regenerate the book's copy with `bash scripts/build_book.sh` (or
//! `cargo run --example one_batch > docs/book/src/one-batch-output.txt`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `cargo test` builds the package's examples beside the test binaries' folder:
/// `target/<profile>/examples/one_batch` next to `target/<profile>/deps/<this test>`.
fn example_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let bin = profile_dir
        .join("examples")
        .join(format!("one_batch{}", std::env::consts::EXE_SUFFIX));
    bin.exists().then_some(bin)
}

/// A token's number, if it is one (`5.0341`, `[4,` and `32]` are numbers; `sqrt(4096)` is not).
fn number(token: &str) -> Option<f64> {
    token
        .trim_matches(|c: char| matches!(c, '[' | ']' | ',' | '(' | ')'))
        .parse()
        .ok()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 + 1e-3 * a.abs().max(b.abs())
}

/// The first difference between two outputs, as `line N: expected X, got Y`.
fn first_difference(expected: &str, got: &str) -> Option<String> {
    let (e, g): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), got.lines().collect());
    if e.len() != g.len() {
        return Some(format!("{} lines expected, {} printed", e.len(), g.len()));
    }
    for (n, (el, gl)) in e.iter().zip(&g).enumerate() {
        let (et, gt): (Vec<&str>, Vec<&str>) = (
            el.split_whitespace().collect(),
            gl.split_whitespace().collect(),
        );
        let same = et.len() == gt.len()
            && et
                .iter()
                .zip(&gt)
                .all(|(a, b)| match (number(a), number(b)) {
                    (Some(x), Some(y)) => close(x, y),
                    _ => a == b,
                });
        if !same {
            return Some(format!("line {}:\n  book:    {el}\n  example: {gl}", n + 1));
        }
    }
    None
}

#[test]
fn the_book_shows_what_the_example_prints() {
    let Some(bin) = example_binary() else {
        // `cargo test --test book_example` alone does not build examples; the full `cargo test`
        // (what CI runs) does.
        eprintln!(
            "skipped: examples/one_batch is not built (run the whole `cargo test -p cotmae`)"
        );
        return;
    };
    let out = Command::new(&bin).output().expect("running the example");
    assert!(
        out.status.success(),
        "{} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    let book = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/book/src/one-batch-output.txt");
    let expected = std::fs::read_to_string(&book).unwrap();
    if let Some(diff) = first_difference(&expected, &got) {
        panic!(
            "{} is out of date ({diff}); regenerate it with \
             `cargo run --example one_batch > docs/book/src/one-batch-output.txt`",
            book.display()
        );
    }
}

#[test]
fn the_comparison_tolerates_rounding_and_nothing_else() {
    assert!(first_difference("loss 5.0341 [4, 32]", "loss 5.03411 [4, 32]").is_none());
    assert!(first_difference("loss 5.0341", "loss 5.2341").is_some());
    assert!(first_difference("shape [4, 32]", "shape [4, 33]").is_some());
    assert!(first_difference("a [MASK]→b", "a [MASK]→c").is_some());
    assert!(first_difference("one\ntwo", "one").is_some());
}
