//! Links the crate to the libtorch that torch-sys found, so binaries, tests and examples run
//! without `LD_LIBRARY_PATH`, and compiles the small C++ shim for what tch does not wrap
//! (autocast with a chosen dtype, channels_last memory format) and the c10d process groups
//! (csrc/dist.cpp; NCCL only where the CUDA and NCCL headers of the nvidia wheels are found).
use std::path::PathBuf;

fn main() {
    // cargo-fuzz builds with `--cfg fuzzing` (see src/panics.rs).
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
    // Without this, a build without the shim below would rerun on any change in the package.
    println!("cargo:rerun-if-changed=build.rs");
    // Without the `torch` feature the crate is the decoders alone: no libtorch, no shim.
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    for f in ["guard.h", "shim.cpp", "dist.cpp", "dist_nccl.cpp", "dist_nccl_missing.cpp", "gloo-decls"] {
        println!("cargo:rerun-if-changed=csrc/{f}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .map(PathBuf::from)
        .expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB: run `make venv` or set LIBTORCH");
    let root = lib.parent().expect("libtorch lib dir has a parent").to_path_buf();

    // The wheel's version, recorded in run configurations (`chess::LIBTORCH_VERSION`).
    let version = std::fs::read_to_string(root.join("version.py"))
        .ok()
        .and_then(|v| {
            v.lines()
                .find_map(|l| Some(l.strip_prefix("__version__ = ")?.trim_matches(['\'', '"']).to_string()))
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CHESS_LIBTORCH_VERSION={version}");
    println!("cargo:rerun-if-changed={}", root.join("version.py").display());

    // rpath: the binaries find libtorch where it was at build time.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // No symbol of libtorch_cuda is referenced, so the linker would drop it and libtorch would
    // never register its CUDA backend: keep it explicitly. On CPU-only machines it still loads.
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-lc10_cuda,--as-needed");
        println!("cargo:rustc-cfg=chess_has_cuda_lib");
    }
    println!("cargo:rustc-check-cfg=cfg(chess_has_cuda_lib)");

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include("csrc/gloo-decls")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/shim.cpp")
        .file("csrc/dist.cpp");
    match nccl_includes(&root) {
        Some(dirs) if lib.join("libtorch_cuda.so").exists() => {
            build.includes(dirs).file("csrc/dist_nccl.cpp");
            println!("cargo:rustc-cfg=chess_has_nccl");
        }
        _ => {
            build.file("csrc/dist_nccl_missing.cpp");
        }
    }
    println!("cargo:rustc-check-cfg=cfg(chess_has_nccl)");
    build.compile("chess_shim");
}

/// Include folders for ProcessGroupNCCL.hpp: CUDA runtime, NCCL, and the two header-only wheels
/// torch does not pull in (`crt/host_config.h`, `nv/target`), all beside torch in site-packages.
fn nccl_includes(torch_root: &std::path::Path) -> Option<Vec<PathBuf>> {
    // `.venv/torch` is a link into site-packages: resolve it before looking beside it.
    let nvidia = std::fs::canonicalize(torch_root).ok()?.parent()?.join("nvidia");
    let cu13 = nvidia.join("cu13/include");
    let dirs = vec![cu13.clone(), nvidia.join("nccl/include"), cu13.join("cccl")];
    let needed =
        [cu13.join("cuda_runtime_api.h"), nvidia.join("nccl/include/nccl.h"), cu13.join("crt/host_config.h")];
    needed.iter().all(|f| f.exists()).then_some(dirs)
}
