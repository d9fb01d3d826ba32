//! Choosing the checkpoint to resume from, and cleaning what a killed run left, for both
//! trainers (`train-retriever` here, `pretrain` in `cotmae::trainer::checkpoint`).
//!
//! Both write a checkpoint into a temporary directory and rename it to `checkpoint-N` when
//! complete, so a kill leaves a temporary (removed at the next start by [`remove_stale`]) and
//! never a half-written `checkpoint-N`. A `checkpoint-N` can still be empty (made by hand, or a
//! copy that stopped) or corrupt (a truncated file, damaged JSON): `--resume_from_checkpoint
//! latest` passes over such directories, newest first, saying for each what is wrong and which
//! checkpoint it chose instead ([`newest_resumable`], [`warn_skipped`]).

use std::path::{Path, PathBuf};

/// Files every checkpoint of both trainers holds besides its trainer state.
const REQUIRED: [&str; 2] = ["config.json", "model.safetensors"];

/// Why the checkpoint directory `dir` cannot be resumed from, or None: its `state_file`, its
/// `config.json` or its `model.safetensors` is missing, a JSON file does not parse, or a
/// `.safetensors` file has a damaged header or is shorter than its header says.
pub fn checkpoint_problem(dir: &Path, state_file: &str) -> Option<String> {
    for name in std::iter::once(state_file).chain(REQUIRED) {
        if !dir.join(name).is_file() {
            return Some(format!("no {name} (an empty or incomplete checkpoint)"));
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => return Some(format!("cannot list it: {e}")),
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let problem = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
                })
                .err(),
            Some("safetensors") => tensor::safetensors::SafeTensors::open(&path)
                .err()
                .map(|e| e.to_string()),
            _ => None,
        };
        if let Some(p) = problem {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            return Some(format!("{name} is damaged: {p}"));
        }
    }
    None
}

/// Checkpoint directories passed over, each with why ([`checkpoint_problem`]), newest first.
pub type Skipped = Vec<(PathBuf, String)>;

/// The newest of `candidates` (`(N, checkpoint-N)`, in any order) that can be resumed from,
/// and the newer ones passed over, each with why ([`checkpoint_problem`]), newest first.
pub fn newest_resumable(
    mut candidates: Vec<(u64, PathBuf)>,
    state_file: &str,
) -> (Option<PathBuf>, Skipped) {
    candidates.sort();
    let mut skipped = Vec::new();
    for (_, dir) in candidates.into_iter().rev() {
        match checkpoint_problem(&dir, state_file) {
            None => return (Some(dir), skipped),
            Some(why) => skipped.push((dir, why)),
        }
    }
    (None, skipped)
}

/// One warning on stderr per checkpoint passed over, naming it, why, and the one chosen.
pub fn warn_skipped(skipped: &[(PathBuf, String)], chosen: Option<&Path>) {
    let chosen = chosen.map_or("none".to_string(), |p| p.display().to_string());
    for (dir, why) in skipped {
        eprintln!(
            "warning: skipping {}: {why}; the newest usable checkpoint is {chosen}",
            dir.display()
        );
    }
}

/// Removes the directories of `output_dir` whose name `is_stale` (the temporaries of killed
/// saves); returns them. A missing `output_dir` has none. Errors name the path.
pub fn remove_stale(
    output_dir: &Path,
    is_stale: impl Fn(&str) -> bool,
) -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
    let rd = match std::fs::read_dir(output_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err((output_dir.to_path_buf(), e)),
    };
    let mut removed = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| (output_dir.to_path_buf(), e))?;
        let path = entry.path();
        if entry.file_name().to_str().is_some_and(&is_stale) && path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(|e| (path.clone(), e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empty, incomplete, truncated and damaged checkpoints are each passed over with a reason
    /// that names what is wrong; the newest sound one is chosen.
    #[test]
    fn newest_resumable_passes_over_empty_incomplete_and_corrupt_checkpoints() {
        let dir = tensor::testing::TempDir::new("retrieval-resume");
        let t = tensor::Tensor::from_vec(vec![1f32, 2.0], &[2]).unwrap();
        let make = |n: u64| {
            let d = dir.0.join(format!("checkpoint-{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("state.json"), b"{\"step\": 1}").unwrap();
            std::fs::write(d.join("config.json"), b"{}").unwrap();
            tensor::safetensors::save(d.join("model.safetensors"), &[("w", &t)], None).unwrap();
            d
        };
        let good = make(2);
        let empty = dir.0.join("checkpoint-9");
        std::fs::create_dir_all(&empty).unwrap();
        let no_model = make(8);
        std::fs::remove_file(no_model.join("model.safetensors")).unwrap();
        let truncated = make(7);
        let bytes = std::fs::read(truncated.join("model.safetensors")).unwrap();
        std::fs::write(
            truncated.join("model.safetensors"),
            &bytes[..bytes.len() - 4],
        )
        .unwrap();
        let bad_json = make(6);
        std::fs::write(bad_json.join("state.json"), b"{\"step\": ").unwrap();
        let candidates = [2, 9, 8, 7, 6]
            .map(|n| (n, dir.0.join(format!("checkpoint-{n}"))))
            .to_vec();
        let (chosen, skipped) = newest_resumable(candidates, "state.json");
        assert_eq!(chosen, Some(good));
        let got: Vec<(&Path, &str)> = skipped
            .iter()
            .map(|(p, w)| (p.as_path(), w.as_str()))
            .collect();
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(
            got[0].0 == empty && got[0].1.contains("no state.json"),
            "{got:?}"
        );
        assert!(got[1].0 == no_model && got[1].1.contains("no model.safetensors"));
        assert!(got[2].0 == truncated && got[2].1.starts_with("model.safetensors is damaged"));
        assert!(got[3].0 == bad_json && got[3].1.starts_with("state.json is damaged"));
        // Nothing usable: none chosen, all named.
        let (chosen, skipped) = newest_resumable(vec![(9, empty)], "state.json");
        assert_eq!((chosen, skipped.len()), (None, 1));
    }

    #[test]
    fn remove_stale_removes_only_matching_directories() {
        let dir = tensor::testing::TempDir::new("retrieval-stale");
        for d in [".tmp-checkpoint-3-77", "checkpoint-3"] {
            std::fs::create_dir_all(dir.0.join(d)).unwrap();
        }
        std::fs::write(dir.0.join(".tmp-checkpoint-file"), b"x").unwrap();
        let removed = remove_stale(&dir.0, |n| n.starts_with(".tmp-checkpoint-")).unwrap();
        assert_eq!(removed, [dir.0.join(".tmp-checkpoint-3-77")]);
        assert!(
            dir.0.join("checkpoint-3").is_dir() && dir.0.join(".tmp-checkpoint-file").is_file()
        );
        assert!(remove_stale(&dir.0.join("missing"), |_| true)
            .unwrap()
            .is_empty());
    }
}
