//! 1. tch's link arguments do not reach the binaries and tests of dependent packages, so
//!    re-emit an rpath to LibTorch's lib folder here (GPU.md, point 1). DEP_TCH_LIBTORCH_LIB
//!    exists because torch-sys is a direct dependency of this package.
//! 2. The fused hybrid attention's autograd Function (src/attention/fused/autograd.cpp) is
//!    C++ against LibTorch's headers, built the way torch-sys builds its own wrapper. It
//!    needs LibTorch's CPU headers only, so the worker still builds without CUDA.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=src/attention/fused/autograd.cpp");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports LibTorch's lib folder");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let root = std::path::Path::new(&lib)
        .parent()
        .expect("LibTorch's lib folder has a parent")
        .to_path_buf();
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/attention/fused/autograd.cpp")
        .compile("surgery_fused");
}
