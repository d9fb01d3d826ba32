//! Simulated device memory: every allocation of a simulated GPU is its own anonymous mapping of
//! host memory, fenced by inaccessible guard pages, so that a kernel reading or writing past a
//! buffer faults at the first byte outside it instead of silently touching a neighbour.
//!
//! Layout of one allocation (pages of 4 KiB):
//!
//! ```text
//! [ guard page | data pages ........................ | guard page ]
//!                         ^ data (16-byte aligned)  ^ data + padded
//! ```
//!
//! The data is placed so that it ends exactly at the trailing guard page: `padded` is the byte
//! size rounded up to 16 (the alignment of the widest vector loads, `uint4`), so an access at or
//! past `data + padded` faults. Two slacks go unseen: the up to 15 bytes between the buffer's
//! end and `padded`, and the unused head of the first data page (an underflow faults only after
//! crossing it). Fresh memory is filled with 0xFF (a NaN in every float type, -1 in the integers),
//! so a kernel that leaves an output element unwritten is caught, like a poisoned pool on a GPU.
//!
//! Freeing: the pages are released (`madvise(DONTNEED)`) and made inaccessible, and the mapping
//! waits in a bounded quarantine before being unmapped, so a kernel that uses a freed buffer faults.
//! Every mapping, live or quarantined, is listed in a registry that turns a fault address into a
//! description ([`describe`]): "12 bytes past the end of a 4096-byte buffer", "use after free".

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

const PAGE: usize = 4096;
/// The alignment of every simulated buffer's first byte.
pub(crate) const ALIGN: usize = 16;
/// Freed mappings kept inaccessible before they are unmapped (each holds no memory, only
/// address space and one kernel mapping entry, of which Linux allows about 65 000).
const QUARANTINE_ENTRIES: usize = 4096;

/// The bytes of one simulated GPU in live buffers and the high-water mark it keeps "reserved",
/// with the meaning of the real stream-ordered pool's counters (see `Gpu::pool_usage`).
#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    pub used: AtomicU64,
    pub reserved: AtomicU64,
}

impl PoolCounters {
    fn add(&self, bytes: u64) {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.reserved.fetch_max(used, Ordering::Relaxed);
    }

    /// Gives reserved bytes beyond `keep` (and beyond what live buffers use) back.
    pub fn trim(&self, keep: u64) {
        let used = self.used.load(Ordering::Relaxed);
        let reserved = self.reserved.load(Ordering::Relaxed);
        self.reserved
            .store(reserved.min(keep.max(used)), Ordering::Relaxed);
    }
}

/// What the registry knows of one mapping.
#[derive(Clone, Copy, Debug)]
struct Region {
    map_len: usize,
    data: usize,
    bytes: usize,
    freed: bool,
}

struct Registry {
    /// Mappings by their first address.
    regions: BTreeMap<usize, Region>,
    /// Freed mappings, oldest first: (base, map_len).
    quarantine: VecDeque<(usize, usize)>,
}

fn registry() -> &'static Mutex<Registry> {
    static REG: OnceLock<Mutex<Registry>> = OnceLock::new();
    REG.get_or_init(|| {
        Mutex::new(Registry {
            regions: BTreeMap::new(),
            quarantine: VecDeque::new(),
        })
    })
}

fn lock_registry() -> std::sync::MutexGuard<'static, Registry> {
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

/// One allocation of simulated device memory (see the module docs). Freed on drop.
#[derive(Debug)]
pub(crate) struct SimAlloc {
    base: usize,
    map_len: usize,
    data: usize,
    bytes: usize,
    pool: Arc<PoolCounters>,
}

// SAFETY: the mapping is plain memory owned by this value; access is ordered by the device lock.
unsafe impl Send for SimAlloc {}
unsafe impl Sync for SimAlloc {}

impl SimAlloc {
    /// `bytes` bytes filled with 0xFF (zero bytes still get a mapping, with nothing readable).
    pub fn new(bytes: usize, pool: &Arc<PoolCounters>) -> Result<SimAlloc, String> {
        let padded = bytes
            .checked_next_multiple_of(ALIGN)
            .ok_or_else(|| format!("{bytes} bytes overflow the address space"))?;
        let data_len = padded.div_ceil(PAGE) * PAGE;
        let map_len = data_len
            .checked_add(2 * PAGE)
            .ok_or_else(|| format!("{bytes} bytes overflow the address space"))?;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {map_len} bytes failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let base = base as usize;
        if data_len > 0 {
            // SAFETY: the data pages lie inside the mapping just made.
            let r = unsafe {
                libc::mprotect(
                    (base + PAGE) as *mut libc::c_void,
                    data_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                // SAFETY: our own mapping, unmapped once.
                unsafe { libc::munmap(base as *mut libc::c_void, map_len) };
                return Err(format!("mprotect of {data_len} bytes failed: {e}"));
            }
        }
        let data = base + PAGE + data_len - padded;
        // SAFETY: data..data + padded is readable and writable.
        unsafe { std::ptr::write_bytes(data as *mut u8, 0xFF, padded) };
        lock_registry().regions.insert(
            base,
            Region {
                map_len,
                data,
                bytes,
                freed: false,
            },
        );
        pool.add(bytes as u64);
        Ok(SimAlloc {
            base,
            map_len,
            data,
            bytes,
            pool: pool.clone(),
        })
    }

    /// The address of the first byte (what kernels receive as the device address).
    pub fn address(&self) -> u64 {
        self.data as u64
    }

    pub fn ptr(&self) -> *mut u8 {
        self.data as *mut u8
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for SimAlloc {
    fn drop(&mut self) {
        self.pool
            .used
            .fetch_sub(self.bytes as u64, Ordering::Relaxed);
        let base = self.base as *mut libc::c_void;
        // SAFETY: our own mapping: its pages are dropped and made inaccessible (a failure leaves
        // them accessible, which only weakens the use-after-free check).
        unsafe {
            libc::madvise(base, self.map_len, libc::MADV_DONTNEED);
            libc::mprotect(base, self.map_len, libc::PROT_NONE);
        }
        let mut reg = lock_registry();
        if let Some(r) = reg.regions.get_mut(&self.base) {
            r.freed = true;
        }
        reg.quarantine.push_back((self.base, self.map_len));
        while reg.quarantine.len() > QUARANTINE_ENTRIES {
            let Some((old, len)) = reg.quarantine.pop_front() else {
                break;
            };
            reg.regions.remove(&old);
            // SAFETY: a quarantined mapping nothing refers to any more, unmapped once.
            unsafe { libc::munmap(old as *mut libc::c_void, len) };
        }
    }
}

/// What `addr` is relative to the simulated buffers: "3 bytes past the end of a 4096-byte
/// buffer", "byte 8 of a freed 4096-byte buffer (use after free)", or "an address outside every
/// simulated buffer". Called after a fault, outside the signal handler.
pub(crate) fn describe(addr: usize) -> String {
    let reg = lock_registry();
    let hit = reg
        .regions
        .range(..=addr)
        .next_back()
        .filter(|(base, r)| addr < *base + r.map_len);
    let Some((_, r)) = hit else {
        return "an address outside every simulated buffer".to_string();
    };
    let size = r.bytes;
    if r.freed {
        return match addr.checked_sub(r.data) {
            Some(off) if off < size => {
                format!("use after free: byte {off} of a freed {size}-byte buffer")
            }
            _ => format!("use after free: near a freed {size}-byte buffer"),
        };
    }
    if addr < r.data {
        format!(
            "{} bytes before the start of a {size}-byte buffer",
            r.data - addr
        )
    } else {
        let end = r.data + size;
        format!(
            "{} bytes past the end of a {size}-byte buffer",
            addr.saturating_sub(end)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_end_at_their_guard_page_and_are_described() {
        let pool = Arc::new(PoolCounters::default());
        let a = SimAlloc::new(4096, &pool).unwrap();
        assert_eq!(a.address() % ALIGN as u64, 0);
        assert_eq!((a.address() as usize + 4096) % PAGE, 0);
        // SAFETY: inside the buffer; fresh memory is 0xFF.
        assert_eq!(unsafe { *a.ptr().add(4095) }, 0xFF);
        let end = a.address() as usize + 4096;
        assert_eq!(
            describe(end + 4),
            "4 bytes past the end of a 4096-byte buffer"
        );
        assert_eq!(
            describe(a.address() as usize - 8),
            "8 bytes before the start of a 4096-byte buffer"
        );
        let b = SimAlloc::new(10, &pool).unwrap();
        assert_eq!(b.address() % ALIGN as u64, 0);
        assert_eq!(pool.used.load(Ordering::Relaxed), 4106);
        let addr = a.address() as usize;
        drop(a);
        assert_eq!(
            describe(addr + 8),
            "use after free: byte 8 of a freed 4096-byte buffer"
        );
        assert_eq!(pool.used.load(Ordering::Relaxed), 10);
        assert_eq!(pool.reserved.load(Ordering::Relaxed), 4106);
        pool.trim(0);
        assert_eq!(pool.reserved.load(Ordering::Relaxed), 10);
        drop(b);
        let z = SimAlloc::new(0, &pool).unwrap();
        assert_eq!(z.bytes(), 0);
    }
}
