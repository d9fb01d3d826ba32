//! How much memory a size read from a file would need, checked before anything is allocated.
//!
//! Sizes in `config.json`, safetensors headers or token stores come from outside; multiplied
//! together they can overflow `usize` or ask for more memory than the machine has, which Rust
//! answers with a "capacity overflow" panic or an abort. Callers compute byte counts with
//! [`checked_bytes`] and compare them with [`available_bytes`] through [`check_fits`], so the user
//! gets an error naming the file and field instead.

/// Bytes of memory the kernel says are available to new allocations (`MemAvailable` in
/// `/proc/meminfo`), or None where that cannot be read (another OS): then only overflow is
/// checked.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text)
}

fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The product of `dims` times `elem_bytes`, or None on overflow.
pub fn checked_bytes(dims: &[usize], elem_bytes: usize) -> Option<u64> {
    dims.iter()
        .try_fold(elem_bytes as u64, |acc, &d| acc.checked_mul(d as u64))
}

/// A byte count in words ("1.5 GiB").
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Errors (with a sentence naming `what`) unless `bytes` (None: overflowed) fits in the memory
/// available now.
pub fn check_fits(what: &str, bytes: Option<u64>) -> Result<(), String> {
    let Some(bytes) = bytes else {
        return Err(format!(
            "{what} would need more than 2^64 bytes (the sizes overflow)"
        ));
    };
    match available_bytes() {
        Some(avail) if bytes > avail => Err(format!(
            "{what} would need {} and this machine has {} available",
            human_bytes(bytes),
            human_bytes(avail)
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_overflow_to_none_and_meminfo_parses() {
        assert_eq!(checked_bytes(&[3, 4], 4), Some(48));
        assert_eq!(checked_bytes(&[1 << 40, 1 << 40], 4), None);
        assert_eq!(
            parse_meminfo("MemTotal: 10 kB\nMemAvailable:  2048 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(parse_meminfo("MemTotal: 10 kB\n"), None);
        assert!(check_fits("x", None).unwrap_err().contains("overflow"));
        assert!(check_fits("x", Some(u64::MAX)).is_err() || available_bytes().is_none());
        assert!(check_fits("x", Some(16)).is_ok());
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
