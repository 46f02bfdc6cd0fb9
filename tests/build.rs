//! The worker thin binary and these tests link LibTorch through surgery-worker: re-emit
//! the rpath to LibTorch's lib folder (GPU.md, point 1; needs torch-sys as a direct
//! dependency for DEP_TCH_LIBTORCH_LIB).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
