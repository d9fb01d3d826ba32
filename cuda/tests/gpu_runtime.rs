//! The runtime around the kernels: finding CUDA (a clear error, never a panic, where it is
//! missing), memory round trips, the stream-ordered pool, the status word kernels report bad
//! input through, and event timers. Tests that need a GPU skip with a message when there is none.

use cuda::testing::{current_test, serial_gpu_or_skip};
use cuda::{Error, Gpu};

#[test]
fn missing_cuda_is_an_error_not_a_panic() {
    match cuda::availability() {
        Ok(devices) => {
            // A GPU machine: devices are listed, and an ordinal past them is a clear error.
            assert!(!devices.is_empty());
            for (i, d) in devices.iter().enumerate() {
                assert_eq!(d.ordinal, i);
                assert!(d.compute_capability.0 >= 3 && d.total_memory > 0, "{d:?}");
            }
            let e = Gpu::new(devices.len())
                .err()
                .expect("no such device")
                .to_string();
            assert!(
                e.contains(&format!("no CUDA device {}", devices.len())),
                "{e}"
            );
        }
        Err(e) => {
            // No driver, library or device: every entry point says so.
            assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
            let msg = e.to_string();
            assert!(msg.starts_with("CUDA is not available: "), "{msg}");
            assert!(Gpu::new(0).is_err());
            assert!(cuda::gpu(0).is_err());
            eprintln!("SKIP (GPU part): {msg}");
        }
    }
}

#[test]
fn upload_download_copy_and_zeros_round_trip() {
    let Some((gpu, _serial)) = serial_gpu_or_skip(&current_test()) else {
        return;
    };
    let data: Vec<f32> = (0..10_001).map(|i| (i as f32).sin()).collect();
    let a = gpu.upload(&data).unwrap();
    assert_eq!(gpu.download(&a).unwrap(), data);
    let mut b = gpu.zeros::<f32>(20_000).unwrap();
    gpu.copy(&a, 5, &mut b, 100, 9_000).unwrap();
    let got = gpu.download(&b).unwrap();
    assert!(got[..100].iter().all(|&v| v == 0.0));
    assert_eq!(&got[100..9_100], &data[5..9_005]);
    assert!(got[9_100..].iter().all(|&v| v == 0.0));
    assert_eq!(gpu.download_range(&a, 10, 3).unwrap(), &data[10..13]);
    // Out-of-range requests are errors naming the op, not faults.
    let e = gpu
        .copy(&a, 9_000, &mut b, 0, 2_000)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("copy:"), "{e}");
    assert!(gpu.download_range(&a, 10_000, 2).is_err());
    let mut c = gpu.upload(&[7u8; 33]).unwrap();
    gpu.upload_into(&[1, 2, 3], &mut c, 30).unwrap();
    gpu.fill_zeros(&mut b).unwrap();
    assert!(gpu.download(&b).unwrap().iter().all(|&v| v == 0.0));
    let cv = gpu.download(&c).unwrap();
    assert_eq!((&cv[..30], &cv[30..]), (&[7u8; 30][..], &[1u8, 2, 3][..]));
}

#[test]
fn the_pool_keeps_freed_memory_for_reuse() {
    let Some((gpu, _serial)) = serial_gpu_or_skip(&current_test()) else {
        return;
    };
    let bytes = 64 << 20;
    {
        let _a = gpu.alloc::<u8>(bytes).unwrap();
    }
    gpu.synchronize().unwrap();
    let after_free = gpu.pool_usage().unwrap();
    // Freed memory stays reserved (release threshold "never"), so reallocating it is free.
    assert!(after_free.reserved >= bytes as u64, "{after_free:?}");
    let _b = gpu.alloc::<u8>(bytes).unwrap();
    gpu.synchronize().unwrap();
    let again = gpu.pool_usage().unwrap();
    assert_eq!(
        again.reserved, after_free.reserved,
        "no new reservation for a reused size"
    );
    assert!(again.used >= bytes as u64);
}

#[test]
fn kernel_errors_surface_through_check_status() {
    let Some((gpu, _serial)) = serial_gpu_or_skip(&current_test()) else {
        return;
    };
    gpu.check_status().unwrap();
    let table = gpu.upload(&[1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let ids = gpu.upload(&[1i64, 7, 0]).unwrap();
    let out =
        cuda::ops::embedding::embedding(&gpu, (&table).into(), 2, 2, (&ids).into(), 3).unwrap();
    let e = gpu.check_status().unwrap_err().to_string();
    assert!(e.contains("index 7 is out of range"), "{e}");
    // The bad row is zeros, the others are gathered; the report is cleared once read.
    assert_eq!(
        gpu.download(&out).unwrap(),
        vec![3.0, 4.0, 0.0, 0.0, 1.0, 2.0]
    );
    gpu.check_status().unwrap();
}

#[test]
fn timers_measure_stream_work() {
    let Some((gpu, _serial)) = serial_gpu_or_skip(&current_test()) else {
        return;
    };
    // The simulator runs a thread in tens of nanoseconds: a smaller tensor there.
    let n = if gpu.is_simulated() { 1 << 16 } else { 1 << 24 };
    let x = gpu.zeros::<f32>(n).unwrap();
    let timer = gpu.timer().unwrap();
    for _ in 0..10 {
        cuda::ops::activation::gelu(&gpu, (&x).into(), n).unwrap();
    }
    timer.stop().unwrap();
    let ms = timer.elapsed_ms().unwrap();
    assert!(ms > 0.0 && ms < 10_000.0, "{ms} ms");
}

#[test]
fn every_kernel_file_loads_on_the_device() {
    let Some((gpu, _serial)) = serial_gpu_or_skip(&current_test()) else {
        return;
    };
    gpu.load_all_kernels().unwrap();
    for (file, name) in cuda::ops::kernel_names() {
        gpu.function(file, &name)
            .unwrap_or_else(|e| panic!("{}.cu {name}: {e}", file.name));
    }
}
