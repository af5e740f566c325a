//! Lays out the drover binary's code: see src/cold.ld.

fn main() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cold.ld");
    println!("cargo:rerun-if-changed=src/cold.ld");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}
