//! What every parser fuzz test shares: the case count, hostile numbers, mutations of a valid file,
//! random text for line formats, scratch files, and a global allocator that records the largest
//! single allocation so a test can assert that no input made a parser allocate without bound.
//!
//! Included by `#[path = "../../tests/fuzz/strategies.rs"] mod strategies;` from each crate's
//! `tests/fuzz_*.rs` (one copy of the strategies, each test binary its own allocator). A case is
//! written to a file because the parsers read paths (several memory-map them).
//!
//! The invariant every fuzz test checks: a parser given any bytes returns an error or a valid
//! result, never panics (proptest reports a panic as a failing case, shrunk), and never asks for
//! more than [`MEMORY_BOUND`] in one allocation (inputs claiming huge sizes are refused first).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// Cases per property when `PROPTEST_CASES` is not set: small, so that all fuzz tests together
/// stay within about a minute of `cargo test` on two cores.
pub const DEFAULT_CASES: u32 = 64;

/// The proptest configuration: `PROPTEST_CASES` (and the other `PROPTEST_*` variables) when set,
/// else `cases`; failures are reported, not persisted into the source tree (each bug found gets a
/// named regression test instead).
pub fn config(cases: u32) -> Config {
    let mut c = if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default()
    } else {
        Config::with_cases(cases)
    };
    c.failure_persistence = None;
    c
}

// ---------------------------------------------------------------------------------------------
// Memory: the largest single allocation.

/// The most one allocation may ask for while parsing a fuzzed input.
pub const MEMORY_BOUND: usize = 1 << 30;
/// Requests above this are refused outright (the process aborts naming the size) rather than
/// letting an overcommitted allocation swap the machine.
const REFUSE_ABOVE: usize = 16 << 30;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, noting the largest request.
pub struct Recording;

fn note(size: usize) -> bool {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    size <= REFUSE_ABOVE
}

// SAFETY: every call is forwarded unchanged to `System`, or refused with a null pointer, which
// the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if note(layout.size()) {
            System.alloc(layout)
        } else {
            std::ptr::null_mut()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if note(layout.size()) {
            System.alloc_zeroed(layout)
        } else {
            std::ptr::null_mut()
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if note(new_size) {
            System.realloc(ptr, layout, new_size)
        } else {
            std::ptr::null_mut()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

/// Asserts that no allocation since the last call asked for more than [`MEMORY_BOUND`], and
/// starts a new window. (Tests of one binary run in parallel; all of them hold the same bound.)
pub fn assert_bounded_memory(what: &str) {
    let largest = LARGEST.swap(0, Ordering::Relaxed);
    assert!(
        largest <= MEMORY_BOUND,
        "{what}: one allocation asked for {largest} bytes (bound {MEMORY_BOUND})"
    );
}

// ---------------------------------------------------------------------------------------------
// Numbers and mutations.

/// Sizes a hostile file claims: boundaries of every integer width, 2^40, 2^62, u64::MAX.
pub const HOSTILE_U64: [u64; 16] = [
    0,
    1,
    2,
    255,
    65_535,
    65_536,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    1 << 53,
    1 << 62,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

/// Mostly the hostile values, sometimes any u64.
pub fn hostile_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(&HOSTILE_U64[..]),
        1 => any::<u64>(),
    ]
}

/// Small sizes (a valid file's) or hostile ones.
pub fn size_u64() -> impl Strategy<Value = u64> {
    prop_oneof![2 => 0u64..16, 1 => hostile_u64()]
}

/// What a mutated number or value in a text file becomes: huge, negative, fractional, out of
/// range of every integer type, or a value of another JSON/TOML type.
pub const HOSTILE_TEXT: [&str; 22] = [
    "0",
    "-1",
    "1.5",
    "1e308",
    "1e400",
    "-0",
    "65536",
    "4294967296",
    "1099511627776",
    "4611686018427387904",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "NaN",
    "null",
    "true",
    "\"7\"",
    "[]",
    "{}",
    "[1,",
    "",
];

/// One edit of a file's bytes. Positions are [`Index`]es, resolved against the length at the
/// time of the edit.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Keep only the bytes before the position.
    Truncate(Index),
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// Repeat the bytes from the position, up to this many.
    Duplicate(Index, usize),
    /// Replace the first run of ASCII digits at or after the position (a size, an offset, an
    /// id in a text file) with a hostile text.
    Number(Index, &'static str),
    /// Overwrite 8 bytes at the 8-aligned position with a little-endian u64 (a binary header's
    /// count or offset).
    U64(Index, u64),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        3 => (any::<Index>(), prop::sample::select(&HOSTILE_TEXT[..]))
            .prop_map(|(i, t)| Mutation::Number(i, t)),
        2 => (any::<Index>(), hostile_u64()).prop_map(|(i, v)| Mutation::U64(i, v)),
    ]
}

/// Applies `m` to `b` (an edit past the end does nothing).
pub fn apply(b: &mut Vec<u8>, m: &Mutation) {
    if b.is_empty() {
        if let Mutation::Insert(_, x) = m {
            b.extend_from_slice(x);
        }
        return;
    }
    let at = |i: &Index| i.index(b.len());
    match m {
        Mutation::Truncate(i) => b.truncate(at(i)),
        Mutation::FlipBit(i, bit) => {
            let p = at(i);
            b[p] ^= 1 << bit;
        }
        Mutation::SetByte(i, v) => {
            let p = at(i);
            b[p] = *v;
        }
        Mutation::Insert(i, x) => {
            let p = at(i);
            b.splice(p..p, x.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let p = at(i);
            b.drain(p..(p + n).min(b.len()));
        }
        Mutation::Duplicate(i, n) => {
            let p = at(i);
            let piece = b[p..(p + n).min(b.len())].to_vec();
            b.splice(p..p, piece);
        }
        Mutation::Number(i, text) => {
            let p = at(i);
            if let Some(s) = b[p..].iter().position(u8::is_ascii_digit).map(|s| p + s) {
                let e = b[s..]
                    .iter()
                    .position(|c| !c.is_ascii_digit())
                    .map_or(b.len(), |e| s + e);
                b.splice(s..e, text.bytes());
            }
        }
        Mutation::U64(i, v) => {
            let p = at(i) / 8 * 8;
            if p + 8 <= b.len() {
                b[p..p + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// `valid` after one to four mutations: near-valid inputs that get past a parser's first checks.
pub fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(mutation(), 1..5).prop_map(move |ms| {
        let mut b = valid.clone();
        for m in &ms {
            apply(&mut b, m);
        }
        b
    })
}

/// Any bytes, up to `max` of them.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Pieces a line of a TSV, qrels, run or vocabulary file is made of: ids, numbers of every
/// size, separators, CR, odd Unicode, a byte that is not UTF-8.
const PIECES: [&[u8]; 24] = [
    b"a",
    b"q1",
    b"p7",
    b"0",
    b"1",
    b"3",
    b"-2",
    b"0.5",
    b"1e9",
    b"NaN",
    b"Q0",
    b"18446744073709551616",
    b"4294967296",
    b"[UNK]",
    b"##x",
    b"\t",
    b"\t",
    b" ",
    b"\r",
    b"\xc3\xa9",
    b"\xe4\xb8\xad",
    b"\0",
    b"\xff",
    b"{}",
];

/// Text of up to `lines` lines built from [`PIECES`].
pub fn line_text(lines: usize) -> impl Strategy<Value = Vec<u8>> {
    let line =
        prop::collection::vec(prop::sample::select(&PIECES[..]), 0..8).prop_map(|ps| ps.concat());
    prop::collection::vec(line, 0..lines).prop_map(|ls| ls.join(&b'\n'))
}

/// Either random bytes, random line text, or a mutation of `valid`.
pub fn any_input(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![1 => bytes(256), 1 => line_text(12), 3 => mutated(valid)]
}

// ---------------------------------------------------------------------------------------------
// Files.

/// A fresh directory under the system temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fuzz-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `bytes` to `name` in the directory and returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Asserts that an error message names the file it is about.
pub fn assert_names(msg: &str, path: &Path) {
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        msg.contains(name.as_ref()),
        "error does not name {name}: {msg}"
    );
}
