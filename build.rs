//! Lays out the drover binary's code: see src/hot.ld and src/cold.ld.

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // hot.ld first: a function both name goes where the first script puts it.
    for script in ["hot.ld", "cold.ld"] {
        println!("cargo:rerun-if-changed=src/{script}");
        println!(
            "cargo:rustc-link-arg-bins=-Wl,-T,{}",
            dir.join(script).display()
        );
    }
}
