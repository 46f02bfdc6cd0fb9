//! tch's link arguments do not reach the binaries and tests of dependent packages, so
//! re-emit an rpath to LibTorch's lib folder here (GPU.md, point 1). DEP_TCH_LIBTORCH_LIB
//! exists because torch-sys is a direct dependency of this package.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
