//! Compiles every src/bpf/<tool>.bpf.c into a libbpf-rs skeleton, OUT_DIR/<tool>.skel.rs.

use std::env;
use std::fs;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let vmlinux_dir = PathBuf::from("vmlinux").join(&arch);
    assert!(
        vmlinux_dir.join("vmlinux.h").exists(),
        "no vmlinux/{arch}/vmlinux.h: generate it with `make vmlinux` on a {arch} machine"
    );
    // libbpf-rs's clang flag for the target: __TARGET_ARCH_x86, __TARGET_ARCH_arm64, ...
    let target_arch = match arch.as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        "powerpc64" => "powerpc",
        "s390x" => "s390",
        "riscv64" => "riscv",
        other => other,
    };

    println!("cargo:rerun-if-changed=src/bpf");
    println!("cargo:rerun-if-changed={}", vmlinux_dir.display());

    let mut sources: Vec<PathBuf> = fs::read_dir("src/bpf")
        .expect("src/bpf is readable")
        .map(|entry| entry.expect("src/bpf entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();

    for source in sources {
        let file_name = source.file_name().unwrap().to_string_lossy().into_owned();
        let tool = file_name.trim_end_matches(".bpf.c");
        SkeletonBuilder::new()
            .source(&source)
            .clang_args([
                "-Wall".into(),
                "-Werror".into(),
                "-O2".into(),
                // v3: atomic fetch-and-add (BPF_FETCH, Linux 5.12+) and 32-bit jumps
                "-mcpu=v3".into(),
                "-g".into(),
                format!("-D__TARGET_ARCH_{target_arch}"),
                format!("-I{}", vmlinux_dir.display()),
                "-Isrc/bpf".into(),
            ])
            .build_and_generate(out_dir.join(format!("{tool}.skel.rs")))
            .unwrap_or_else(|err| panic!("building the BPF skeleton of {file_name}: {err:#}"));
    }
}
