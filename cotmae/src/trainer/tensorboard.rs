//! TensorBoard event files, written by hand: the TFRecord framing, CRC-32C, and the few
//! `Event` / `Summary` protobuf fields a scalar needs. What `torch.utils.tensorboard`'s
//! `SummaryWriter.add_scalar` (HF's `TensorBoardCallback`) writes, and what `tensorboard` reads.
//!
//! A file is a sequence of records, each
//!
//! ```text
//! u64 length (little-endian) | u32 masked_crc32c(length bytes) | payload | u32 masked_crc32c(payload)
//! ```
//!
//! with `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8` over CRC-32C (Castagnoli, reflected
//! polynomial 0x82F63B78). A record with a wrong CRC is dropped by TensorBoard without a word,
//! which `scripts/check_tensorboard.py` guards against.
//!
//! Each payload is one serialised `Event` (tensorflow/core/util/event.proto):
//! `wall_time` (1, double), `step` (2, int64), then one of `file_version` (3, string),
//! `summary` (5, `Summary`), `session_log` (7, `SessionLog`; 6 is the deprecated
//! `log_message`). A `Summary` holds repeated
//! `value` (1) messages of `tag` (1, string) and `simple_value` (2, float). The first event of a
//! file is `file_version: "brain.Event:2"`.
//!
//! [`read_records`] reads a file back (tests, and anyone checking a log), validating each
//! record's length and CRCs before trusting them.
//!
//! A resumed run appends to the same directory in a new file whose name sorts after every
//! existing one (TensorBoard reads a directory's files in name order), and starts it with a
//! `SessionLog { status: START }` at the first step it will log: TensorBoard then discards what
//! the interrupted run had logged from that step on (its "orphaned data" purge), so the
//! re-logged steps are not shown twice.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32C (Castagnoli) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// TFRecord's masked CRC.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the payload, its masked CRC.
pub fn tf_record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
    out
}

/// A protobuf message being encoded (fields appended in order).
#[derive(Default)]
struct Proto(Vec<u8>);

impl Proto {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire_type: u32) {
        self.varint(((field << 3) | wire_type) as u64);
    }

    fn int64(mut self, field: u32, v: i64) -> Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }

    fn double(mut self, field: u32, v: f64) -> Self {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn float(mut self, field: u32, v: f32) -> Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(mut self, field: u32, v: &[u8]) -> Self {
        self.key(field, 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    fn message(self, field: u32, m: Proto) -> Self {
        self.bytes(field, &m.0)
    }
}

/// `SessionLog.SessionStatus.START`.
const SESSION_START: i64 = 1;
pub const FILE_VERSION: &str = "brain.Event:2";

fn event(wall_time: f64, step: u64) -> Proto {
    Proto::default().double(1, wall_time).int64(2, step as i64)
}

/// The `Event` announcing the file format.
pub fn file_version_event(wall_time: f64) -> Vec<u8> {
    event(wall_time, 0).bytes(3, FILE_VERSION.as_bytes()).0
}

/// An `Event` with one scalar summary value (`simple_value`, f32 as TensorBoard stores it).
pub fn scalar_event(wall_time: f64, step: u64, tag: &str, value: f32) -> Vec<u8> {
    let value = Proto::default().bytes(1, tag.as_bytes()).float(2, value);
    let summary = Proto::default().message(1, value);
    event(wall_time, step).message(5, summary).0
}

/// An `Event` with `SessionLog { status: START }` at `step`.
pub fn session_start_event(wall_time: f64, step: u64) -> Vec<u8> {
    let log = Proto::default().int64(1, SESSION_START);
    event(wall_time, step).message(7, log).0
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The machine's name for file names (`localhost` when unknown), reduced to `[A-Za-z0-9._-]`.
pub fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// The payloads of the records in `bytes`, an events file read back from `path` (named in
/// errors). Each record's length is trusted only after its CRC matches and it fits in what is
/// left of the file, so a corrupt or truncated file is an error naming the record and its byte
/// offset, never an allocation of the size it claims.
pub fn read_records(path: &Path, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while !bytes.is_empty() {
        let bad =
            |m: String| Error::format(path, format!("record {} at byte {at}: {m}", out.len()));
        let (head, rest) = bytes.split_first_chunk::<12>().ok_or_else(|| {
            bad(format!(
                "{} bytes left, a record header needs 12",
                bytes.len()
            ))
        })?;
        let (len_bytes, crc) = head.split_at(8);
        if u32::from_le_bytes(crc.try_into().unwrap()) != masked_crc32c(len_bytes) {
            return Err(bad("the length's CRC does not match (corrupt file)".into()));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap());
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l.checked_add(4).is_some_and(|n| n <= rest.len()))
            .ok_or_else(|| {
                bad(format!(
                    "length {len} runs past the end of the file (truncated?)"
                ))
            })?;
        let (payload, rest) = rest.split_at(len);
        let (crc, rest) = rest.split_at(4);
        if u32::from_le_bytes(crc.try_into().unwrap()) != masked_crc32c(payload) {
            return Err(bad("the payload's CRC does not match (corrupt file)".into()));
        }
        out.push(payload.to_vec());
        at += 16 + len;
        bytes = rest;
    }
    Ok(out)
}

/// The timestamp field of an events file name, `events.out.tfevents.<secs>.<host>...`.
fn name_timestamp(name: &str) -> Option<u64> {
    name.strip_prefix("events.out.tfevents.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Appends events to one file of a TensorBoard log directory.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` (if needed) and a new events file in it whose name sorts after the existing
    /// ones, starting with the file-version event and, given `purge_from`, a session-start
    /// event at that step (module doc).
    pub fn create(dir: impl AsRef<Path>, purge_from: Option<u64>) -> Result<EventWriter> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut secs = now() as u64;
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            if let Some(t) = entry.file_name().to_str().and_then(name_timestamp) {
                // Saturating: a file named with a timestamp of u64::MAX must not overflow.
                secs = secs.max(t.saturating_add(1));
            }
        }
        let path = dir.join(format!(
            "events.out.tfevents.{secs:010}.{}.{}.0",
            hostname(),
            std::process::id()
        ));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter {
            path,
            file: BufWriter::new(file),
        };
        let t = now();
        w.write(&file_version_event(t))?;
        if let Some(step) = purge_from {
            w.write(&session_start_event(t, step))?;
        }
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, payload: &[u8]) -> Result<()> {
        self.file
            .write_all(&tf_record(payload))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// One scalar at `step` (as `add_scalar(tag, value, step)`).
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: u64) -> Result<()> {
        self.write(&scalar_event(now(), step, tag, value as f32))
    }

    /// Hands the buffered events to the OS (done after every log, so a killed run keeps them).
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_values() {
        // The CRC catalogue's check value and the RFC 3720 (iSCSI) test vectors.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
        // Masked values from TensorBoard's own `masked_crc32c` (tensorflow_stub).
        assert_eq!(masked_crc32c(b"abc"), 0x21F1_576E);
        assert_eq!(masked_crc32c(&24u64.to_le_bytes()), 0x224B_7FA3);
    }

    /// A minimal protobuf reader for the tests: (field, wire type, value bytes or varint).
    fn fields(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>, u64)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let x = b[0];
                *b = &b[1..];
                v |= ((x & 0x7f) as u64) << shift;
                shift += 7;
                if x < 0x80 {
                    return v;
                }
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let (field, wt) = ((key >> 3) as u32, (key & 7) as u32);
            let (bytes, n) = match wt {
                0 => (Vec::new(), varint(&mut b)),
                1 | 5 => {
                    let len = if wt == 1 { 8 } else { 4 };
                    let v = b[..len].to_vec();
                    b = &b[len..];
                    (v, 0)
                }
                2 => {
                    let len = varint(&mut b) as usize;
                    let v = b[..len].to_vec();
                    b = &b[len..];
                    (v, 0)
                }
                _ => panic!("wire type {wt}"),
            };
            out.push((field, wt, bytes, n));
        }
        out
    }

    #[test]
    fn scalar_event_fields() {
        let e = fields(&scalar_event(1.5, 300, "train/loss", 2.25));
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].0, e[0].1), (1, 1));
        assert_eq!(f64::from_le_bytes(e[0].2.clone().try_into().unwrap()), 1.5);
        assert_eq!((e[1].0, e[1].1, e[1].3), (2, 0, 300));
        assert_eq!((e[2].0, e[2].1), (5, 2));
        let summary = fields(&e[2].2);
        assert_eq!((summary.len(), summary[0].0), (1, 1));
        let value = fields(&summary[0].2);
        assert_eq!((value[0].0, value[0].2.as_slice()), (1, &b"train/loss"[..]));
        assert_eq!((value[1].0, value[1].1), (2, 5));
        assert_eq!(
            f32::from_le_bytes(value[1].2.clone().try_into().unwrap()),
            2.25
        );
        let s = fields(&session_start_event(0.0, 7));
        assert_eq!((s[1].3, s[2].0), (7, 7));
        assert_eq!(fields(&s[2].2)[0].3, 1);
    }

    #[test]
    fn existing_file_named_with_the_largest_timestamp_does_not_overflow() {
        let dir = std::env::temp_dir().join(format!("cotmae-tb-max-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("events.out.tfevents.{}.h", u64::MAX)), b"").unwrap();
        let w = EventWriter::create(&dir, None).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(name.contains(&u64::MAX.to_string()), "{name}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writer_files_sort_after_existing_ones() {
        let dir = std::env::temp_dir().join(format!("cotmae-tb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = EventWriter::create(&dir, None).unwrap();
        w.add_scalar("train/loss", 3.5, 1).unwrap();
        w.add_scalar("train/loss", 3.25, 2).unwrap();
        w.flush().unwrap();
        let first = w.path().to_path_buf();
        drop(w);
        let w2 = EventWriter::create(&dir, Some(2)).unwrap();
        let second = w2.path().to_path_buf();
        drop(w2);
        assert!(
            second.file_name() > first.file_name(),
            "{second:?} {first:?}"
        );

        let recs = read_records(&first, &std::fs::read(&first).unwrap()).unwrap();
        assert_eq!(recs.len(), 3);
        let version = fields(&recs[0]);
        assert_eq!(
            (version[2].0, version[2].2.as_slice()),
            (3, FILE_VERSION.as_bytes())
        );
        let steps: Vec<u64> = recs[1..].iter().map(|r| fields(r)[1].3).collect();
        assert_eq!(steps, [1, 2]);
        let recs = read_records(&second, &std::fs::read(&second).unwrap()).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(fields(&recs[1])[2].0, 7, "session log");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
