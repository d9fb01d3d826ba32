//! Keeping freed memory for the next step's tensors.
//!
//! A training step allocates the same tensors every step (activations, gradients, packed GEMM
//! operands) and frees them all before the next. With glibc's defaults a buffer of 128 KiB or
//! more may come straight from `mmap` and go back to the kernel on `free`, and the heap's free
//! top is handed back (`brk`) once it passes a threshold; either way the next step's buffer is
//! fresh pages, and the first write to each 4 KiB page is a page fault the kernel has to zero.
//! glibc raises its mmap threshold as it sees big buffers freed, but the heap trimming keeps
//! returning memory, so which step pays depends on the allocation order: `cotmae
//! train-retriever` on the demo's data took 1.7 million faults and 4.4 s of system time in a
//! 7.5 s run under `--bf16`, 0.5 million under f32
//! (`docs/perf/2026-12-06-cpu-page-faults-heap-session9.txt`).
//!
//! [`keep_freed_memory`] tells glibc to serve buffers below 32 MiB from the heap and never to
//! trim it: freed pages stay mapped and are handed to the next allocation already faulted in
//! (32 thousand faults, 0.5 s of system time in the same run). The price is that the process
//! keeps its peak heap until it exits, which is what a training loop reaches again every step
//! anyway. Buffers of 32 MiB and more still come from `mmap` (their faults are small next to
//! the work done on them). Binaries call it once at the start of `main`; a library should not
//! change the allocator of the program that links it, so nothing in `tensor` calls it.

/// glibc `mallopt` parameters (malloc.h).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_TRIM_THRESHOLD: libc::c_int = -1;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_MMAP_THRESHOLD: libc::c_int = -3;

/// Buffers at least this big still come from `mmap` (glibc's largest allowed threshold on 64-bit).
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Keeps freed heap memory mapped for reuse (module doc). Returns whether the allocator took the
/// settings (false on a C library other than glibc, where this does nothing).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's tuning; any value is accepted or refused.
        unsafe {
            libc::mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Minor page faults this thread has taken so far.
    fn thread_faults() -> i64 {
        // SAFETY: getrusage writes one rusage into the zeroed struct.
        unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
            u.ru_minflt
        }
    }

    /// Faults taken while allocating, writing and freeing an 8 MiB buffer.
    fn faults_of_one_buffer() -> i64 {
        let before = thread_faults();
        let buf = std::hint::black_box(vec![1u8; 8 << 20]);
        drop(buf);
        thread_faults() - before
    }

    #[test]
    fn a_freed_buffer_comes_back_without_page_faults() {
        assert!(keep_freed_memory(), "glibc refused the settings");
        faults_of_one_buffer(); // the first one maps the pages
                                // 8 MiB is 2048 pages: with the memory kept, the second buffer reuses faulted-in pages.
        let again = faults_of_one_buffer();
        assert!(
            again < 64,
            "{again} page faults for a buffer of reused memory"
        );
    }
}
