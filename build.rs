//! Links the `linegate` executable as a position-dependent (non-PIE)
//! binary on Linux with glibc.
//!
//! Why: chrono-tz's zone tables hold about 30,000 pointers. In a PIE every
//! one of them is relocated at start, which turns the whole 1.1 MB table
//! into private, dirty memory in every process. Linked non-PIE, the table
//! stays a clean, shared, file-backed mapping of which only the pages in
//! use are ever read. The shared libraries, stack and heap are still
//! randomised. musl targets keep their static-pie default.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
