//! safetensors files: read through a memory map (zero-copy CPU tensors when the data is aligned)
//! with the header validated, and written atomically (temp file, fsync, rename).
//!
//! File layout: 8 bytes little-endian `N`, then `N` bytes of UTF-8 JSON
//! `{"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ..}`
//! (padded with spaces), then the data section. Offsets are relative to the data section start;
//! each tensor is row-major, little-endian, `e - b == product(shape) * dtype size` bytes.
//!
//! A truncated or hostile file gives an `Error::File` naming the file (and the tensor), never a
//! panic or an out-of-bounds read. The writer lays tensors out the way the Python `safetensors`
//! library does (by dtype alignment, largest first, then by name), so files are byte-identical to
//! `safetensors.torch.save_file` for the same tensors and metadata.

use crate::cpu::copy::gather_strided;
use crate::{map_cpu_storage, DType, Error, Result, Tensor};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// Tensors are read and written as the host's bytes; the format is little-endian.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "safetensors I/O assumes a little-endian host"
);

/// Headers larger than this are rejected as corrupt (the Python library uses the same limit).
const MAX_HEADER_LEN: u64 = 100_000_000;
const METADATA_KEY: &str = "__metadata__";

/// One tensor's header entry. `begin..end` is relative to the data section.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// An open safetensors file: the validated header and a shared memory map of the whole file.
///
/// The map is read-only; as with any memory map, the file must not be modified while open.
pub struct SafeTensors {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    data_start: usize,
    /// Ordered by data offset (then name).
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensors")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

impl SafeTensors {
    /// Maps `path` and validates its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let err = |m: String| file_err(path, m);
        let file =
            std::fs::File::open(path).map_err(|e| err(format!("cannot open safetensors: {e}")))?;
        let file_len = file
            .metadata()
            .map_err(|e| err(format!("cannot stat: {e}")))?
            .len();
        if file_len < 8 {
            return Err(err(format!(
                "file is {file_len} bytes, shorter than the 8-byte safetensors header length"
            )));
        }
        // SAFETY: the map is read-only and we only ever read it through bounds-checked slices;
        // the file must not be truncated or modified by another process while it is mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| err(format!("cannot memory-map: {e}")))?;
        let (data_start, entries, metadata) = parse(&map).map_err(err)?;
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(SafeTensors {
            path: path.to_path_buf(),
            map: Arc::new(map),
            data_start,
            entries,
            index,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, in data-offset order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The `__metadata__` map (empty when the file has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.index
            .get(name)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| file_err(&self.path, format!("no tensor named {name:?}")))
    }

    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.entry(name)?.shape)
    }

    pub fn dtype(&self, name: &str) -> Result<DType> {
        Ok(self.entry(name)?.dtype)
    }

    /// The tensor `name`, reading the map in place (it is copied only when the data is not
    /// aligned for its dtype). "BOOL" tensors come back as U8.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let e = self.entry(name)?;
        Tensor::from_mmap(
            self.map.clone(),
            self.data_start + e.begin,
            e.dtype,
            &e.shape,
        )
        .map_err(|err| file_err(&self.path, format!("tensor {name:?}: {err}")))
    }

    /// Every tensor, in data-offset order.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.entries
            .iter()
            .map(|e| Ok((e.name.clone(), self.get(&e.name)?)))
            .collect()
    }
}

type Parsed = (usize, Vec<Entry>, BTreeMap<String, String>);

/// Validates the whole file image: header length, JSON, every entry, and the data ranges.
/// Returns the data section start, the entries sorted by offset, and the metadata.
fn parse(file: &[u8]) -> std::result::Result<Parsed, String> {
    let len_bytes: [u8; 8] = file
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("file is {} bytes, shorter than 8", file.len()))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_LEN {
        return Err(format!(
            "header length {n} exceeds the {MAX_HEADER_LEN}-byte limit (corrupt file?)"
        ));
    }
    let available = file.len() as u64 - 8;
    if n > available {
        return Err(format!(
            "header length {n} is larger than the {available} bytes after it (truncated file?)"
        ));
    }
    let data_start = 8 + n as usize;
    let header = std::str::from_utf8(&file[8..data_start])
        .map_err(|e| format!("header is not valid UTF-8: {e}"))?;
    let json: Value =
        serde_json::from_str(header).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let Value::Object(obj) = json else {
        return Err("header is not a JSON object".into());
    };
    if let Some(key) = duplicate_key(header) {
        return Err(format!("header has duplicate key {key:?}"));
    }
    let data_len = file.len() - data_start;

    let mut metadata = BTreeMap::new();
    let mut entries = Vec::with_capacity(obj.len());
    for (name, v) in &obj {
        if name == METADATA_KEY {
            metadata = parse_metadata(v)?;
        } else {
            entries.push(parse_entry(name, v, data_len)?);
        }
    }

    entries.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    // Overlap check over the non-empty ranges: after sorting by start, a range overlaps an
    // earlier one exactly when it starts before the furthest end seen so far.
    let mut furthest: Option<&Entry> = None;
    for e in entries.iter().filter(|e| e.end > e.begin) {
        if let Some(p) = furthest {
            if e.begin < p.end {
                return Err(format!(
                    "tensor {:?} (bytes {}..{}) overlaps tensor {:?} (bytes {}..{})",
                    e.name, e.begin, e.end, p.name, p.begin, p.end
                ));
            }
        }
        if furthest.is_none_or(|p| e.end > p.end) {
            furthest = Some(e);
        }
    }
    Ok((data_start, entries, metadata))
}

fn parse_metadata(v: &Value) -> std::result::Result<BTreeMap<String, String>, String> {
    let Value::Object(m) = v else {
        return Err(format!("{METADATA_KEY} is not a JSON object"));
    };
    m.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(format!("{METADATA_KEY} value for {k:?} is not a string")),
        })
        .collect()
}

fn parse_entry(name: &str, v: &Value, data_len: usize) -> std::result::Result<Entry, String> {
    let bad = |m: String| format!("tensor {name:?}: {m}");
    let Value::Object(o) = v else {
        return Err(bad("entry is not a JSON object".into()));
    };
    let field = |k: &str| o.get(k).ok_or_else(|| bad(format!("missing \"{k}\"")));
    let dtype_name = field("dtype")?
        .as_str()
        .ok_or_else(|| bad("\"dtype\" is not a string".into()))?;
    let dtype = DType::from_safetensors_name(dtype_name)
        .ok_or_else(|| bad(format!("unsupported dtype {dtype_name:?}")))?;
    let to_usize = |v: &Value, what: &str| -> std::result::Result<usize, String> {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| bad(format!("{what} contains {v}, not a non-negative integer")))
    };
    let shape = field("shape")?
        .as_array()
        .ok_or_else(|| bad("\"shape\" is not an array".into()))?
        .iter()
        .map(|d| to_usize(d, "\"shape\""))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let offsets = field("data_offsets")?
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| bad("\"data_offsets\" is not an array of two integers".into()))?;
    let begin = to_usize(&offsets[0], "\"data_offsets\"")?;
    let end = to_usize(&offsets[1], "\"data_offsets\"")?;
    if begin > end {
        return Err(bad(format!("data_offsets [{begin}, {end}]: begin > end")));
    }
    if end > data_len {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] end beyond the {data_len}-byte data section (truncated file?)"
        )));
    }
    let expected = shape
        .iter()
        .try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    // Views compute strides and element counts as products of dims, which overflow for dims such
    // as [0, 2^40, 2^40] even though the tensor holds no data: refuse those too.
    let nonzero: Vec<usize> = shape.iter().copied().filter(|&d| d != 0).collect();
    if crate::memory::checked_bytes(&nonzero, dtype.size_in_bytes())
        .is_none_or(|b| b > isize::MAX as u64)
    {
        return Err(bad(format!("shape {shape:?} overflows")));
    }
    if end - begin != expected {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] hold {} bytes but shape {shape:?} of {dtype_name} needs {expected}",
            end - begin
        )));
    }
    Ok(Entry {
        name: name.to_string(),
        dtype,
        shape,
        begin,
        end,
    })
}

/// The first key that appears twice in one JSON object anywhere in `json` (which must already
/// be valid JSON). serde_json keeps the last of duplicate keys silently; we reject them.
fn duplicate_key(json: &str) -> Option<String> {
    let b = json.as_bytes();
    // One frame per open container: the keys seen so far for objects, None for arrays.
    let mut stack: Vec<Option<HashSet<String>>> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                let end = (i + 1).min(b.len());
                let rest = b[end..].iter().find(|c| !c.is_ascii_whitespace());
                if let (Some(Some(keys)), Some(b':')) = (stack.last_mut(), rest) {
                    let key: String = serde_json::from_str(json.get(start..end)?).ok()?;
                    if !keys.insert(key.clone()) {
                        return Some(key);
                    }
                }
                i = end;
                continue;
            }
            b'{' => stack.push(Some(HashSet::new())),
            b'[' => stack.push(None),
            b'}' | b']' => {
                stack.pop();
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Position of a dtype in the Python library's layout order (it sorts by its dtype enum,
/// descending, which puts the widest-aligned types first), so every tensor stays aligned.
fn layout_rank(d: DType) -> u8 {
    match d {
        DType::I64 => 5,
        DType::F64 => 4,
        DType::F32 => 3,
        DType::BF16 => 2,
        DType::F16 => 1,
        DType::U8 => 0,
    }
}

/// Writes `tensors` (any device, any layout) and optional `metadata` to `path` in safetensors
/// format; a tensor on a GPU is downloaded when its turn to be written comes (one at a time, so
/// host memory holds at most one of them). Atomically: the bytes go to `path.tmp-<pid>` in the same directory, are fsynced, and the temp
/// file is renamed over `path` (then the directory is fsynced where the platform allows).
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let mut order: Vec<&(&str, &Tensor)> = tensors.iter().collect();
    order.sort_by(|(an, at), (bn, bt)| {
        layout_rank(bt.dtype())
            .cmp(&layout_rank(at.dtype()))
            .then(an.cmp(bn))
    });
    let header = header_json(path, &order, metadata)?;
    crate::fs::check_replaceable(path).map_err(|e| file_err(path, e.to_string()))?;

    let file_name = path
        .file_name()
        .ok_or_else(|| file_err(path, "not a file path"))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);

    let write = || -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for (_, t) in &order {
            write_data(&mut w, t)?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    if let Err(e) = write().and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(file_err(path, format!("cannot write safetensors: {e}")));
    }
    // Make the rename durable. Opening a directory for fsync is not possible everywhere, so a
    // failure here is ignored: the data itself is already synced.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The header JSON for tensors in `order`, padded with spaces so the data starts on an 8-byte
/// boundary. Field order and formatting follow the Python library (compact JSON).
fn header_json(
    path: &Path,
    order: &[&(&str, &Tensor)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<String> {
    let quote = |s: &str| Value::String(s.to_string()).to_string();
    let mut parts = Vec::with_capacity(order.len() + 1);
    if let Some(m) = metadata {
        let items: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
            .collect();
        parts.push(format!("\"{METADATA_KEY}\":{{{}}}", items.join(",")));
    }
    let mut seen = HashSet::new();
    let mut offset = 0usize;
    for (name, t) in order {
        if *name == METADATA_KEY || !seen.insert(*name) {
            return Err(file_err(
                path,
                format!("tensor name {name:?} is reserved or given twice"),
            ));
        }
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        parts.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            quote(name),
            t.dtype().safetensors_name(),
            shape.join(","),
            offset,
            offset + bytes
        ));
        offset += bytes;
    }
    let mut header = format!("{{{}}}", parts.join(","));
    let pad = (8 - header.len() % 8) % 8;
    header.extend(std::iter::repeat_n(' ', pad));
    Ok(header)
}

/// Writes a tensor's elements in row-major order, as little-endian bytes (downloading it first
/// when it lives on a GPU).
fn write_data(w: &mut impl Write, t: &Tensor) -> std::io::Result<()> {
    let host = t
        .to_device(crate::Device::Cpu)
        .map_err(std::io::Error::other)?;
    let t = &host;
    let s = t
        .cpu_storage("safetensors::save")
        .map_err(std::io::Error::other)?;
    map_cpu_storage!(s, b => {
        let all = b.as_slice();
        match t.layout().contiguous_range() {
            Some(r) => w.write_all(bytemuck::cast_slice(&all[r])),
            None => w.write_all(bytemuck::cast_slice(&gather_strided(all, t.layout()))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh path in the system temp dir, unique per process and call.
    fn temp_path(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!(
            "tensor-st-{}-{n}-{tag}.safetensors",
            std::process::id()
        ))
    }

    fn fixture(name: &str) -> PathBuf {
        crate::testing::fixtures_dir().join(name)
    }

    /// Writes a raw file: length prefix, `header` as given (unpadded), then `data`.
    fn raw_file(tag: &str, header: &str, data: &[u8]) -> PathBuf {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        let p = temp_path(tag);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Opens `p`, expects an error mentioning the file and every string in `want`.
    fn expect_err(p: &Path, want: &[&str]) {
        let e = SafeTensors::open(p).expect_err("malformed file accepted");
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        for w in want {
            assert!(msg.contains(w), "{msg:?} lacks {w:?}");
        }
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn round_trip_every_dtype() {
        let tensors = vec![
            (
                "f32",
                Tensor::from_vec(vec![1.5f32, -2.0, 3.25, 0.0, 7.0, 8.0], &[2, 3]).unwrap(),
            ),
            ("f64", Tensor::from_vec(vec![1e-300f64, 2.5], &[2]).unwrap()),
            (
                "f16",
                Tensor::from_vec(vec![f16::from_f32(0.5), f16::from_f32(-3.0)], &[1, 2]).unwrap(),
            ),
            (
                "bf16",
                Tensor::from_vec(vec![bf16::from_f32(1.0), bf16::from_f32(-0.25)], &[2, 1])
                    .unwrap(),
            ),
            (
                "i64",
                Tensor::from_vec(vec![i64::MIN, -1, 0, i64::MAX], &[4]).unwrap(),
            ),
            ("u8", Tensor::from_vec(vec![0u8, 1, 255], &[3]).unwrap()),
            ("scalar", Tensor::scalar(42.0f32)),
            (
                "empty",
                Tensor::zeros(&[0, 3], DType::F32, Default::default()).unwrap(),
            ),
            (
                "empty_i64",
                Tensor::from_vec(Vec::<i64>::new(), &[0]).unwrap(),
            ),
            // A non-contiguous view is written in row-major order.
            (
                "transposed",
                Tensor::from_vec((0..6).map(|x| x as f32).collect(), &[2, 3])
                    .unwrap()
                    .t()
                    .unwrap(),
            ),
        ];
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert("quote\"d".to_string(), "a\nb".to_string());
        let p = temp_path("roundtrip");
        save(&p, &refs, Some(&meta)).unwrap();

        let st = SafeTensors::open(&p).unwrap();
        assert_eq!(st.len(), tensors.len());
        assert_eq!(st.metadata(), &meta);
        for (name, t) in &tensors {
            let got = st.get(name).unwrap();
            assert_eq!(got.shape(), t.shape(), "{name}");
            assert_eq!(got.dtype(), t.dtype(), "{name}");
            assert_eq!(st.shape(name).unwrap(), t.shape());
            assert_eq!(st.dtype(name).unwrap(), t.dtype());
            assert_eq!(got.to_vec_f64().unwrap(), t.to_vec_f64().unwrap(), "{name}");
        }
        assert_eq!(
            st.get("transposed").unwrap().to_vec::<f32>().unwrap(),
            vec![0., 3., 1., 4., 2., 5.]
        );
        assert_eq!(
            st.get("i64").unwrap().to_vec::<i64>().unwrap(),
            vec![i64::MIN, -1, 0, i64::MAX]
        );
        // Python's order: widest dtype first, then by name; names() follows data offsets.
        assert_eq!(
            st.names(),
            vec![
                "empty_i64",
                "i64",
                "f64",
                "empty",
                "f32",
                "scalar",
                "transposed",
                "bf16",
                "f16",
                "u8"
            ]
        );
        let all = st.tensors().unwrap();
        assert_eq!(all.len(), tensors.len());
        assert_eq!(all[1].0, "i64");
        assert!(st
            .get("missing")
            .unwrap_err()
            .to_string()
            .contains("missing"));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn aligned_f32_is_zero_copy_and_header_is_padded() {
        let t = Tensor::from_vec((0..10).map(|x| x as f32).collect(), &[10]).unwrap();
        let p = temp_path("zerocopy");
        save(&p, &[("a", &t), ("b", &t)], None).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(bytes.len(), 8 + n + 80);
        assert!(!String::from_utf8_lossy(&bytes[8..8 + n]).contains(METADATA_KEY));
        let st = SafeTensors::open(&p).unwrap();
        let a = st.get("a").unwrap();
        let b = st.get("b").unwrap();
        assert!(a.is_mapped() && b.is_mapped());
        assert_eq!(b.to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
        assert!(st.metadata().is_empty());
        drop(st);
        // The mapped tensor keeps the map alive after the file handle is gone.
        assert_eq!(a.to_vec::<f32>().unwrap()[9], 9.0);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn unaligned_data_is_copied() {
        // A 1-byte u8 tensor first pushes the f32 data to an odd offset.
        let h = r#"{"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"f":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}}"#;
        let h = format!("{h}{}", " ".repeat((8 - h.len() % 8) % 8));
        let mut data = vec![7u8];
        data.extend_from_slice(&2.5f32.to_le_bytes());
        let p = raw_file("unaligned", &h, &data);
        let st = SafeTensors::open(&p).unwrap();
        let f = st.get("f").unwrap();
        assert!(!f.is_mapped());
        assert_eq!(f.to_vec::<f32>().unwrap(), vec![2.5]);
        assert_eq!(st.get("u").unwrap().to_vec::<u8>().unwrap(), vec![7]);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn save_overwrites_atomically_and_rejects_bad_names() {
        let p = temp_path("overwrite");
        let a = Tensor::from_vec(vec![1f32], &[1]).unwrap();
        let b = Tensor::from_vec(vec![2f32, 3.0], &[2]).unwrap();
        save(&p, &[("x", &a)], None).unwrap();
        save(&p, &[("x", &b)], None).unwrap();
        let st = SafeTensors::open(&p).unwrap();
        assert_eq!(st.get("x").unwrap().to_vec::<f32>().unwrap(), vec![2., 3.]);
        drop(st);
        let dir = p.parent().unwrap();
        let stem = p.file_name().unwrap().to_string_lossy().to_string();
        let leftovers = std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let n = e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .to_string();
                n.starts_with(&stem) && n.contains(".tmp-")
            })
            .count();
        assert_eq!(leftovers, 0);
        for bad in [vec![("x", &a), ("x", &b)], vec![(METADATA_KEY, &a)]] {
            let msg = save(&p, &bad, None).unwrap_err().to_string();
            assert!(msg.contains(&p.display().to_string()) && msg.contains("twice"));
        }
        std::fs::remove_file(&p).unwrap();
        let missing_dir = std::env::temp_dir().join("no-such-dir-tensor-st/x.safetensors");
        let msg = save(&missing_dir, &[("x", &a)], None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no-such-dir-tensor-st"), "{msg}");
    }

    #[test]
    fn malformed_files_are_rejected_with_the_file_name() {
        // Shorter than 8 bytes.
        let p = temp_path("short");
        std::fs::write(&p, [1u8, 2, 3]).unwrap();
        expect_err(&p, &["shorter than"]);
        let p = temp_path("empty");
        std::fs::write(&p, []).unwrap();
        expect_err(&p, &["0 bytes"]);

        // Header length larger than the file, and absurdly large.
        let p = temp_path("hdrlen");
        let mut b = 64u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        std::fs::write(&p, b).unwrap();
        expect_err(&p, &["header length 64", "truncated"]);
        let p = temp_path("hdrhuge");
        std::fs::write(&p, u64::MAX.to_le_bytes()).unwrap();
        expect_err(&p, &["exceeds"]);

        // Header not UTF-8, not JSON, not an object.
        let mut b = 2u64.to_le_bytes().to_vec();
        b.extend_from_slice(&[0xff, 0xfe]);
        let p = temp_path("utf8");
        std::fs::write(&p, b).unwrap();
        expect_err(&p, &["UTF-8"]);
        expect_err(&raw_file("json", "{\"a\":", &[]), &["not valid JSON"]);
        expect_err(&raw_file("array", "[1,2]", &[]), &["not a JSON object"]);
        expect_err(
            &raw_file("meta", r#"{"__metadata__":{"k":1}}"#, &[]),
            &["not a string"],
        );

        let entry = |body: &str| format!(r#"{{"w":{body}}}"#);
        let cases: &[(&str, &str)] = &[
            (r#"{"shape":[1],"data_offsets":[0,4]}"#, "missing \"dtype\""),
            (
                r#"{"dtype":"F32","data_offsets":[0,4]}"#,
                "missing \"shape\"",
            ),
            (r#"{"dtype":"F32","shape":[1]}"#, "missing \"data_offsets\""),
            (
                r#"{"dtype":3,"shape":[1],"data_offsets":[0,4]}"#,
                "not a string",
            ),
            (
                r#"{"dtype":"F32","shape":1,"data_offsets":[0,4]}"#,
                "not an array",
            ),
            (
                r#"{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}"#,
                "non-negative",
            ),
            (
                r#"{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}"#,
                "non-negative",
            ),
            (
                r#"{"dtype":"F32","shape":[1],"data_offsets":[0]}"#,
                "two integers",
            ),
            (
                r#"{"dtype":"F32","shape":[1],"data_offsets":"x"}"#,
                "two integers",
            ),
            (
                r#"{"dtype":"I32","shape":[1],"data_offsets":[0,4]}"#,
                "unsupported dtype \"I32\"",
            ),
            (
                r#"{"dtype":"F32","shape":[1],"data_offsets":[4,0]}"#,
                "begin > end",
            ),
            (
                r#"{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#,
                "beyond",
            ),
            (
                r#"{"dtype":"F32","shape":[2],"data_offsets":[0,4]}"#,
                "needs 8",
            ),
            (
                r#"{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}"#,
                "overflows",
            ),
            ("[1]", "not a JSON object"),
        ];
        for (i, (body, want)) in cases.iter().enumerate() {
            let p = raw_file(&format!("entry{i}"), &entry(body), &[0u8; 4]);
            expect_err(&p, &["\"w\"", want]);
        }

        // Overlapping ranges between two tensors.
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        expect_err(
            &raw_file("overlap", h, &[0u8; 8]),
            &["\"b\"", "overlaps", "\"a\""],
        );
        // A range nested inside a longer earlier one also overlaps.
        let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"c":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        expect_err(&raw_file("nested", h, &[0u8; 16]), &["overlaps", "\"a\""]);
        // Zero-size tensors may share an offset with anything.
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#;
        let p = raw_file("zerosize", h, &[0u8; 4]);
        assert_eq!(SafeTensors::open(&p).unwrap().len(), 2);
        std::fs::remove_file(&p).unwrap();

        // Duplicate names (serde_json alone would keep the last silently), and duplicate
        // fields inside an entry.
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        expect_err(&raw_file("dup", h, &[0u8; 8]), &["duplicate key \"a\""]);
        let h = r#"{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}"#;
        expect_err(
            &raw_file("dupfield", h, &[0u8; 4]),
            &["duplicate key \"dtype\""],
        );
        // Escaped quotes and braces inside strings do not confuse the duplicate scan.
        let h = r#"{"__metadata__":{"k\"{[":"v:}]\\","k2":"\"a\":"},"a\"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let p = raw_file("escapes", h, &[0u8; 8]);
        let st = SafeTensors::open(&p).unwrap();
        assert_eq!(st.names(), vec!["a\"", "a"]);
        assert_eq!(st.metadata()["k\"{["], "v:}]\\");
        std::fs::remove_file(&p).unwrap();

        // A valid file truncated anywhere in the data is an error, never a panic.
        let t = Tensor::from_vec(vec![1f32; 16], &[4, 4]).unwrap();
        let p = temp_path("full");
        save(&p, &[("t", &t)], None).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        for cut in [0, 4, 8, 12, 30, bytes.len() - 64, bytes.len() - 1] {
            let p = temp_path("trunc");
            std::fs::write(&p, &bytes[..cut]).unwrap();
            expect_err(&p, &[]);
        }
    }

    #[test]
    fn random_corruption_never_panics() {
        let a = Tensor::from_vec((0..12).map(|x| x as f32).collect(), &[3, 4]).unwrap();
        let b = Tensor::from_vec(vec![5i64, 6], &[2]).unwrap();
        let p = temp_path("fuzzsrc");
        save(&p, &[("a", &a), ("b", &b)], None).unwrap();
        let good = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let p = temp_path("fuzz");
        let mut accepted = 0;
        for _ in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..1 + next() % 3 {
                let i = next() % header_end;
                // Mostly digits and JSON punctuation, so many mutations stay valid JSON.
                let alphabet = b"0123456789[]{},:\" F";
                bytes[i] = alphabet[next() % alphabet.len()];
            }
            std::fs::write(&p, &bytes).unwrap();
            if let Ok(st) = SafeTensors::open(&p) {
                accepted += 1;
                for name in st.names() {
                    let t = st.get(name).unwrap();
                    assert_eq!(t.shape(), st.shape(name).unwrap());
                }
            }
        }
        std::fs::remove_file(&p).unwrap();
        assert!(accepted < 300, "every corruption was accepted");
    }

    #[test]
    fn missing_file_names_the_path() {
        let p = temp_path("absent");
        let msg = SafeTensors::open(&p).unwrap_err().to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
    }

    #[test]
    fn reads_file_written_by_python() {
        // Written by scripts/gen_op_fixtures.py with safetensors.torch.save_file.
        let p = fixture("py_small.safetensors");
        let st = SafeTensors::open(&p).unwrap();
        assert_eq!(st.metadata()["format"], "pt");
        let f32s = st.get("f32").unwrap();
        assert_eq!(f32s.shape(), &[2, 3]);
        assert!(f32s.is_mapped());
        assert_eq!(
            f32s.to_vec::<f32>().unwrap(),
            vec![0.0, 1.5, -2.25, 3.0e-8, 1.0e30, -7.0]
        );
        let f16s = st.get("f16").unwrap();
        assert_eq!(f16s.dtype(), DType::F16);
        assert_eq!(f16s.to_vec_f64().unwrap(), vec![1.0, -0.5, 65504.0, 0.0]);
        let bf16s = st.get("bf16").unwrap();
        assert_eq!(bf16s.dtype(), DType::BF16);
        assert_eq!(bf16s.shape(), &[2, 2]);
        assert_eq!(bf16s.to_vec_f64().unwrap(), vec![1.0, -2.0, 0.15625, 258.0]);
        let i64s = st.get("i64").unwrap();
        assert_eq!(
            i64s.to_vec::<i64>().unwrap(),
            vec![-100, 0, 1, 30521, i64::MAX]
        );
        let scalar = st.get("scalar").unwrap();
        assert_eq!(scalar.shape(), &[] as &[usize]);
        assert_eq!(scalar.to_vec::<f32>().unwrap(), vec![3.5]);
        assert_eq!(st.get("empty").unwrap().shape(), &[0, 4]);

        // Our writer reproduces Python's bytes for the same tensors and metadata.
        let tensors = st.tensors().unwrap();
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let out = temp_path("pycopy");
        save(&out, &refs, Some(st.metadata())).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&p).unwrap());
        std::fs::remove_file(&out).unwrap();
    }

    #[test]
    fn op_fixtures_open_and_rewrite_byte_identical() {
        // scripts/gen_op_fixtures.py sorts the metadata keys, so our writer (BTreeMap order)
        // must reproduce the file exactly.
        let p = fixture("ops.safetensors");
        let st = SafeTensors::open(&p).unwrap();
        assert_eq!(
            st.metadata()["generator"],
            "python3 scripts/gen_op_fixtures.py"
        );
        assert!(st.metadata().contains_key("torch_version"));
        assert_eq!(st.shape("softmax.mask").unwrap(), &[2, 1, 1, 7]);
        assert_eq!(st.dtype("cross_entropy.target").unwrap(), DType::I64);
        assert!(st.get("gelu.x").unwrap().is_mapped());
        let tensors = st.tensors().unwrap();
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let out = temp_path("opscopy");
        save(&out, &refs, Some(st.metadata())).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&p).unwrap());
        std::fs::remove_file(&out).unwrap();
    }
}
