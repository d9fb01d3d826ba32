//! Property tests of the safetensors reader (issue 14, class 5): random bytes, mutations of a
//! valid file, headers built from hostile sizes and offsets, and the write -> read round trip.
//! The reader must return an error naming the file or a file whose every tensor reads back with
//! the bytes its header promises; never panic, never allocate what the file merely claims.

#[path = "../../tests/fuzz/strategies.rs"]
mod strategies;

use std::collections::BTreeMap;

use proptest::prelude::*;
use strategies::*;
use tensor::safetensors::{save, SafeTensors};
use tensor::Tensor;

/// Opens `bytes` as a file; on success checks every tensor against its header, on failure that
/// the error names the file.
fn open_checked(dir: &Scratch, bytes: &[u8]) {
    let p = dir.file("x.safetensors", bytes);
    match SafeTensors::open(&p) {
        Ok(st) => {
            let mut total = 0;
            for name in st.names() {
                let t = st.get(name).unwrap();
                assert_eq!(t.shape(), st.shape(name).unwrap());
                assert_eq!(t.dtype(), st.dtype(name).unwrap());
                total += t.elem_count() * t.dtype().size_in_bytes();
            }
            // Non-overlapping tensors cannot hold more bytes than the file.
            assert!(total <= bytes.len());
        }
        Err(e) => assert_names(&e.to_string(), &p),
    }
    assert_bounded_memory("SafeTensors::open");
}

/// A small valid file: a few tensors of different dtypes and its metadata.
fn valid_file() -> Vec<u8> {
    let dir = Scratch::new("st-valid");
    let a = Tensor::from_vec((0..12).map(|x| x as f32).collect(), &[3, 4]).unwrap();
    let b = Tensor::from_vec(vec![5i64, -6], &[2]).unwrap();
    let c = Tensor::from_vec(vec![1u8, 2, 3], &[1, 3]).unwrap();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let p = dir.path().join("v.safetensors");
    save(&p, &[("a", &a), ("b", &b), ("c", &c)], Some(&meta)).unwrap();
    std::fs::read(p).unwrap()
}

type RawEntry = (String, Vec<u64>, (u64, u64));

/// A file whose header is built from the given entries (dtype, shape, offsets), followed by
/// `data_len` zero bytes of data.
fn header_file(entries: &[RawEntry], data_len: usize) -> Vec<u8> {
    let body: Vec<String> = entries
        .iter()
        .enumerate()
        .map(|(i, (dtype, shape, (b, e)))| {
            format!(r#""t{i}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{b},{e}]}}"#)
        })
        .collect();
    let header = format!("{{{}}}", body.join(","));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

fn entry() -> impl Strategy<Value = RawEntry> {
    let dtype =
        prop::sample::select(&["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "I32"][..]);
    (
        dtype.prop_map(str::to_string),
        prop::collection::vec(size_u64(), 0..4),
        (size_u64(), size_u64()),
    )
}

proptest! {
    #![proptest_config(config(DEFAULT_CASES))]

    #[test]
    fn random_bytes_are_refused_without_panic(b in bytes(64)) {
        open_checked(&Scratch::new("st-rand"), &b);
    }

    #[test]
    fn mutated_files_never_panic(b in mutated(valid_file())) {
        open_checked(&Scratch::new("st-mut"), &b);
    }

    #[test]
    fn hostile_headers_never_panic(
        entries in prop::collection::vec(entry(), 1..4),
        data_len in 0usize..64,
    ) {
        open_checked(&Scratch::new("st-hdr"), &header_file(&entries, data_len));
    }

    #[test]
    fn save_then_open_round_trips(
        tensors in prop::collection::vec(
            (0usize..3, prop::collection::vec(0usize..4, 0..3), any::<u64>()), 0..4),
        meta in prop::collection::btree_map(
            prop::collection::vec(any::<char>(), 0..4).prop_map(String::from_iter),
            prop::collection::vec(any::<char>(), 0..6).prop_map(String::from_iter),
            0..3),
    ) {
        let dir = Scratch::new("st-rt");
        let made: Vec<(String, Tensor)> = tensors
            .iter()
            .enumerate()
            .map(|(i, (kind, shape, seed))| {
                let n: usize = shape.iter().product();
                let vals: Vec<u64> = (0..n as u64).map(|j| seed.wrapping_mul(j + 1)).collect();
                let t = match kind {
                    0 => Tensor::from_vec(vals.iter().map(|&v| v as f32).collect(), shape),
                    1 => Tensor::from_vec(vals.iter().map(|&v| v as i64).collect(), shape),
                    _ => Tensor::from_vec(vals.iter().map(|&v| v as u8).collect(), shape),
                };
                (format!("t.{i}"), t.unwrap())
            })
            .collect();
        let refs: Vec<(&str, &Tensor)> = made.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let p = dir.path().join("rt.safetensors");
        save(&p, &refs, Some(&meta)).unwrap();
        let st = SafeTensors::open(&p).unwrap();
        prop_assert_eq!(st.metadata(), &meta);
        prop_assert_eq!(st.len(), made.len());
        for (name, t) in &made {
            let got = st.get(name).unwrap();
            prop_assert_eq!(got.shape(), t.shape());
            prop_assert_eq!(got.dtype(), t.dtype());
            prop_assert_eq!(got.to_vec_f64().unwrap(), t.to_vec_f64().unwrap());
        }
        assert_bounded_memory("save/open");
    }
}

/// Hostile sizes from issue 14: every one is an error naming the file and the tensor.
#[test]
fn hostile_sizes_are_errors_naming_the_tensor() {
    let dir = Scratch::new("st-hostile");
    let cases: &[(&str, &[u64], (u64, u64))] = &[
        ("F32", &[1 << 40], (0, 1 << 42)),
        ("F32", &[1 << 62, 4], (0, 16)),
        ("F32", &[u64::MAX], (0, 4)),
        ("U8", &[1], (u64::MAX - 1, u64::MAX)),
        // Offsets past the end of the file.
        ("U8", &[4], (60, 64)),
        // No elements, but dims whose product (the strides) overflows.
        ("F32", &[0, 1 << 40, 1 << 40], (0, 0)),
        ("F32", &[0, 1 << 62, 1 << 62, 1 << 62], (0, 0)),
    ];
    for (dtype, shape, offs) in cases {
        let b = header_file(&[(dtype.to_string(), shape.to_vec(), *offs)], 16);
        let p = dir.file("h.safetensors", &b);
        let msg = SafeTensors::open(&p).unwrap_err().to_string();
        assert!(
            msg.contains("\"t0\"") && msg.contains("h.safetensors"),
            "{msg}"
        );
    }
    // Overlapping tensors.
    let b = header_file(
        &[
            ("F32".into(), vec![2], (0, 8)),
            ("U8".into(), vec![4], (4, 8)),
        ],
        8,
    );
    let msg = SafeTensors::open(dir.file("o.safetensors", &b))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("overlaps"), "{msg}");
    // A tensor with no elements and ordinary dims is still accepted.
    let b = header_file(&[("F32".into(), vec![0, 3], (0, 0))], 0);
    let st = SafeTensors::open(dir.file("z.safetensors", &b)).unwrap();
    assert_eq!(st.get("t0").unwrap().shape(), &[0, 3]);
}
