//! Compiles every kernel file through NVRTC for sm_80 and sm_90 (to machine code, so ptxas runs
//! too) and checks the Rust side against the result: every kernel a wrapper can launch is an
//! entry of its file's PTX for both, and every op code Rust mirrors is defined with the same value. NVRTC needs no GPU;
//! CI installs it from the `nvidia-cuda-nvrtc` wheel. Without the library the tests are skipped
//! with a message (or fail, when `COTMAE_REQUIRE_NVRTC` is set).

use cuda::nvrtc::{arch, compile, kernels, ptx_entries, KernelFile};
use std::collections::{BTreeMap, BTreeSet};

/// True when NVRTC can be loaded; otherwise prints why the test is skipped, or fails when
/// `COTMAE_REQUIRE_NVRTC` is set (CI sets it, so a missing NVRTC cannot pass silently).
fn nvrtc_or_skip() -> bool {
    match cuda::nvrtc::nvrtc_available() {
        Ok(()) => true,
        Err(e) if std::env::var_os("COTMAE_REQUIRE_NVRTC").is_some() => {
            panic!("COTMAE_REQUIRE_NVRTC is set: {e}")
        }
        Err(e) => {
            eprintln!("SKIP: {e}");
            false
        }
    }
}

/// Runs `f` on every kernel file, two files at a time (NVRTC is thread-safe).
fn for_each_file<R: Send>(f: impl Fn(&'static KernelFile) -> R + Sync) -> Vec<(&'static str, R)> {
    let files: Vec<&'static KernelFile> = kernels::ALL.to_vec();
    let (a, b) = files.split_at(files.len() / 2);
    std::thread::scope(|s| {
        let f = &f;
        let left = s.spawn(move || a.iter().map(|k| (k.name, f(k))).collect::<Vec<_>>());
        let mut right: Vec<_> = b.iter().map(|k| (k.name, f(k))).collect();
        let mut all = left.join().expect("compile thread");
        all.append(&mut right);
        all
    })
}

#[test]
fn nvrtc_compiles_every_kernel() {
    if !nvrtc_or_skip() {
        return;
    }
    let (major, minor) = cuda::nvrtc::nvrtc_version().unwrap();
    eprintln!("NVRTC {major}.{minor}");
    let targets = [(8, 0), (9, 0)];
    let results = for_each_file(|file| targets.map(|cc| (cc, compile(file, cc))));
    let mut failures = Vec::new();
    let mut entries: BTreeMap<(&str, (u32, u32)), BTreeSet<String>> = BTreeMap::new();
    for (name, per_target) in results {
        for (cc, r) in per_target {
            match r {
                Ok(code) => {
                    assert!(
                        code.cubin.len() > 100,
                        "{name}.cu for {}: {} bytes",
                        arch(cc),
                        code.cubin.len()
                    );
                    entries.insert((name, cc), ptx_entries(&code.ptx).into_iter().collect());
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "kernel files that do not compile:\n{}",
        failures.join("\n\n")
    );
    // Every kernel the wrappers launch exists in its file.
    let mut missing = Vec::new();
    for (file, kernel) in cuda::ops::kernel_names() {
        for cc in targets {
            if !entries[&(file.name, cc)].contains(&kernel) {
                missing.push(format!("{}.cu ({}): {kernel}", file.name, arch(cc)));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "kernels the Rust wrappers launch but the files lack:\n{}",
        missing.join("\n")
    );
    // And every file defines entries (so a file whose macros expand to nothing is caught).
    for ((name, cc), e) in &entries {
        assert!(
            !e.is_empty(),
            "{name}.cu defines no kernel for {}",
            arch(*cc)
        );
    }
}

#[test]
fn op_codes_match_between_rust_and_cuda() {
    for (file, text) in cuda::ops::mirrored_constants() {
        assert!(
            file.source.contains(&text),
            "{}.cu does not contain `{text}`, which its Rust wrapper assumes",
            file.name
        );
    }
}

#[test]
fn every_kernel_file_documents_what_layout_and_launch() {
    for file in kernels::ALL {
        let head: String = file
            .source
            .lines()
            .take_while(|l| l.starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            head.starts_with(&format!("// {}.cu: ", file.name)),
            "{}.cu: header must start with its name",
            file.name
        );
        for section in ["Computes", "Layout", "Launch"] {
            assert!(
                head.contains(section),
                "{}.cu: header lacks a {section} section",
                file.name
            );
        }
        assert!(
            file.source.contains("#include \"common.cuh\""),
            "{}.cu: does not include common.cuh",
            file.name
        );
    }
}

#[test]
fn a_failed_compile_reports_the_nvrtc_log() {
    if !nvrtc_or_skip() {
        return;
    }
    static BROKEN: KernelFile = KernelFile {
        name: "broken",
        source: "#include \"common.cuh\"\nextern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }\n",
    };
    let e = compile(&BROKEN, (8, 0)).unwrap_err().to_string();
    assert!(e.contains("broken") && e.contains("sm_80"), "{e}");
    assert!(
        e.contains("undefined_name"),
        "the error should carry NVRTC's log: {e}"
    );
}
