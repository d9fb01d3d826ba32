//! A small key-value store over TCP (the role of torch's `TCPStore`): rank 0 serves it at
//! `MASTER_ADDR:MASTER_PORT`, every rank (rank 0 included) connects as a client. Ranks in
//! different processes or on different machines use it to meet: to publish the `ncclUniqueId`,
//! and, for CPU ranks, as the transport of [`super::TcpGroup`]'s collectives.
//!
//! Operations: `set(key, value)`, `get(key)` (waits until the key exists, up to the client's
//! timeout), `delete(key)`. Each client first says which rank it is. The server notices when a
//! client's connection closes without a goodbye (its process exited or was killed): from then on
//! every waiting or later `get` fails with an error naming that rank, so the survivors stop
//! instead of waiting for it. A client that loses the server reports rank 0 as gone.
//!
//! Wire format, both directions: frames of `[u32 length (little endian)][payload]`. A request is
//! `[op byte][u32 key length][key][value]`; a reply is `[0][value]` (ok) or `[1][message]`.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tensor::{Error, Result};

const OP: &str = "TcpStore";
const HELLO: u8 = 0;
const SET: u8 = 1;
const GET: u8 = 2;
const DELETE: u8 = 3;
const BYE: u8 = 4;
/// The largest frame accepted (a bucket of 25 MiB widened to f64 is 50 MiB).
const MAX_FRAME: usize = 1 << 30;

fn io(what: &str, e: std::io::Error) -> Error {
    Error::op(OP, format!("{what}: {e}"))
}

fn write_frame(w: &mut impl Write, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    w.write_all(&(len as u32).to_le_bytes())?;
    for p in parts {
        w.write_all(p)?;
    }
    w.flush()
}

fn read_frame(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (more than {MAX_FRAME})"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

#[derive(Default)]
struct Table {
    values: HashMap<String, Arc<Vec<u8>>>,
    /// Ranks whose connection closed without a goodbye, in the order noticed.
    vanished: Vec<usize>,
}

struct Shared {
    table: Mutex<Table>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves the store on `addr` (`host:port`) from background threads, for the life of the
/// process; returns the address bound.
pub fn serve(addr: &str) -> Result<std::net::SocketAddr> {
    let listener =
        TcpListener::bind(addr).map_err(|e| io(&format!("serving the store on {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| io("the store's address", e))?;
    let shared = Arc::new(Shared {
        table: Mutex::new(Table::default()),
        changed: Condvar::new(),
    });
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let shared = shared.clone();
            std::thread::spawn(move || serve_client(stream, &shared));
        }
    });
    Ok(bound)
}

/// One client's requests, until it says goodbye or its connection closes.
fn serve_client(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let (mut r, mut w) = (BufReader::new(stream), BufWriter::new(write_half));
    let mut rank = None;
    while let Ok(frame) = read_frame(&mut r) {
        let Some((&op, rest)) = frame.split_first() else {
            break;
        };
        let (key, value) = match rest
            .get(..4)
            .map(|l| u32::from_le_bytes(l.try_into().unwrap()))
        {
            Some(n) if rest.len() >= 4 + n as usize => {
                let (k, v) = rest[4..].split_at(n as usize);
                (String::from_utf8_lossy(k).into_owned(), v)
            }
            _ => break,
        };
        let reply: std::result::Result<Arc<Vec<u8>>, String> = match op {
            HELLO => {
                rank = key.parse::<usize>().ok();
                Ok(Arc::new(Vec::new()))
            }
            SET => {
                shared.lock().values.insert(key, Arc::new(value.to_vec()));
                shared.changed.notify_all();
                Ok(Arc::new(Vec::new()))
            }
            GET => {
                let timeout = Duration::from_millis(u64::from_le_bytes(
                    value
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or([0; 8]),
                ));
                wait_for(shared, &key, timeout)
            }
            DELETE => {
                shared.lock().values.remove(&key);
                Ok(Arc::new(Vec::new()))
            }
            BYE => {
                rank = None;
                break;
            }
            _ => Err(format!("unknown request {op}")),
        };
        let sent = match reply {
            Ok(v) => write_frame(&mut w, &[&[0], &v]),
            Err(m) => write_frame(&mut w, &[&[1], m.as_bytes()]),
        };
        if sent.is_err() {
            break;
        }
    }
    if let Some(r) = rank {
        shared.lock().vanished.push(r);
        shared.changed.notify_all();
    }
}

/// The value of `key` once it is set, or why it will not be.
fn wait_for(
    shared: &Shared,
    key: &str,
    timeout: Duration,
) -> std::result::Result<Arc<Vec<u8>>, String> {
    let deadline = Instant::now() + timeout;
    let mut table = shared.lock();
    loop {
        if let Some(v) = table.values.get(key) {
            return Ok(v.clone());
        }
        if let Some(r) = table.vanished.first() {
            return Err(format!(
                "rank {r} disconnected from the store (its process exited or was killed) while \
                 {key:?} was awaited"
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("{key:?} was not set within {timeout:?}"));
        }
        table = shared
            .changed
            .wait_timeout(table, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// A connection to the store.
pub struct StoreClient {
    addr: String,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    timeout: Duration,
}

impl StoreClient {
    /// Connects as `rank` to the store at `addr`, retrying until `timeout` (the server may not be
    /// up yet); `get` then waits up to `timeout` for a key.
    pub fn connect(addr: &str, rank: usize, timeout: Duration) -> Result<StoreClient> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            let tried = addr
                .to_socket_addrs()
                .map_err(|e| io(&format!("resolving {addr}"), e))?
                .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).ok());
            match tried {
                Some(s) => break s,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                None => {
                    return Err(Error::op(
                        OP,
                        format!(
                            "rank {rank}: no store at {addr} within {timeout:?} (is rank 0 \
                             running, and MASTER_ADDR:MASTER_PORT its address?)"
                        ),
                    ))
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let writer = stream
            .try_clone()
            .map_err(|e| io("a store connection", e))?;
        let mut client = StoreClient {
            addr: addr.to_string(),
            reader: BufReader::new(stream),
            writer: BufWriter::new(writer),
            timeout,
        };
        client.request(HELLO, &rank.to_string(), &[])?;
        Ok(client)
    }

    fn request(&mut self, op: u8, key: &str, value: &[u8]) -> Result<Vec<u8>> {
        let lost = |e: std::io::Error| {
            Error::op(
                OP,
                format!(
                    "lost the store at {} served by rank 0 (rank 0 exited or was killed?): {e}",
                    self.addr
                ),
            )
        };
        let klen = (key.len() as u32).to_le_bytes();
        write_frame(&mut self.writer, &[&[op], &klen, key.as_bytes(), value]).map_err(lost)?;
        let reply = read_frame(&mut self.reader).map_err(lost)?;
        match reply.split_first() {
            Some((0, v)) => Ok(v.to_vec()),
            Some((_, m)) => Err(Error::op(OP, String::from_utf8_lossy(m).into_owned())),
            None => Err(Error::op(OP, "an empty reply from the store")),
        }
    }

    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.request(SET, key, value).map(|_| ())
    }

    /// The value of `key`, waiting for it to be set (module doc).
    pub fn get(&mut self, key: &str) -> Result<Vec<u8>> {
        self.get_within(key, self.timeout)
    }

    /// As [`StoreClient::get`], waiting at most `timeout`.
    pub fn get_within(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let ms = timeout.as_millis().min(u64::MAX as u128) as u64;
        self.request(GET, key, &ms.to_le_bytes())
    }

    pub fn delete(&mut self, key: &str) -> Result<()> {
        self.request(DELETE, key, &[]).map(|_| ())
    }
}

impl Drop for StoreClient {
    fn drop(&mut self) {
        // A goodbye: this rank leaves normally, nobody should wait for it as vanished.
        let _ = write_frame(&mut self.writer, &[&[BYE], &0u32.to_le_bytes()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_wait_delete_and_a_vanished_rank() {
        let addr = serve("127.0.0.1:0").unwrap().to_string();
        let t = Duration::from_secs(10);
        let mut a = StoreClient::connect(&addr, 0, t).unwrap();
        let waiter = {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut b = StoreClient::connect(&addr, 1, t).unwrap();
                b.get("late").unwrap()
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        a.set("late", b"value").unwrap();
        assert_eq!(waiter.join().unwrap(), b"value");
        a.delete("late").unwrap();
        let mut short = StoreClient::connect(&addr, 0, Duration::from_millis(100)).unwrap();
        let e = short.get("late").unwrap_err().to_string();
        assert!(e.contains("was not set within"), "{e}");
        // A client whose connection closes without a goodbye is named to the waiters.
        let raw = TcpStream::connect(&addr).unwrap();
        let mut w = BufWriter::new(raw.try_clone().unwrap());
        write_frame(&mut w, &[&[HELLO], &1u32.to_le_bytes(), b"2"]).unwrap();
        read_frame(&mut BufReader::new(raw.try_clone().unwrap())).unwrap();
        drop((w, raw));
        let e = a.get("never").unwrap_err().to_string();
        assert!(e.contains("rank 2 disconnected"), "{e}");
    }

    #[test]
    fn no_server_is_a_clear_error() {
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = StoreClient::connect(&free.to_string(), 1, Duration::from_millis(300))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no store at") && e.contains("rank 1"), "{e}");
    }
}
