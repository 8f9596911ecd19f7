//! Two link settings for the `linegate` executable on Linux.
//!
//! 1. Position-dependent (non-PIE) on glibc. chrono-tz's zone tables hold
//!    about 30,000 pointers. In a PIE every one of them is relocated at
//!    start, which turns the whole 1.1 MB table into private, dirty memory
//!    in every process. Linked non-PIE, the table stays a clean, shared,
//!    file-backed mapping of which only the pages in use are ever read. The
//!    shared libraries, stack and heap are still randomised. musl targets
//!    keep their static-pie default.
//!
//! 2. Hot code first (release builds). The functions listed in
//!    `build/hot-functions.txt` (made by `scripts/hot-code` under callgrind)
//!    are placed side by side in their own output section `.text.hot`, ahead
//!    of the rest of the code. The kernel maps a binary's code in 64 KB
//!    around each page touched ("fault-around"), so the 1.6 MB the agent runs,
//!    spread over 5 MB of code, made nearly all 5 MB resident; packed, the
//!    pages around hot code are hot code too. The list holds names without
//!    Rust's per-build hashes, as linker-script wildcards, so one list serves
//!    every profile, target and dependency version; a name that no longer
//!    exists matches nothing, a new function is linked with the rest. The
//!    script only adds a section (`INSERT BEFORE .text`): the linker's own
//!    layout stays. `LINEGATE_HOT_CODE=0` links without it (to measure);
//!    `LINEGATE_LINK_MAP=path` has the linker write its map there.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/hot-functions.txt");
    println!("cargo:rerun-if-env-changed=LINEGATE_HOT_CODE");
    println!("cargo:rerun-if-env-changed=LINEGATE_LINK_MAP");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    // LINEGATE_LINK_MAP=path: the linker writes where it put every section
    // (to see which functions a process's resident pages hold).
    if let Ok(map) = std::env::var("LINEGATE_LINK_MAP") {
        println!("cargo:rustc-link-arg-bins=-Wl,-Map={map}");
    }
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let wanted = std::env::var("LINEGATE_HOT_CODE").as_deref() != Ok("0");
    if os == "linux" && release && wanted {
        if let Some(script) = hot_code_script(Path::new("build/hot-functions.txt")) {
            println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
        }
    }
}

/// Writes the linker script for the hot list into OUT_DIR; `None` (and a
/// plain link) when there is no list or it cannot be written.
fn hot_code_script(list: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(list).ok()?;
    let mut script = String::from("SECTIONS\n{\n  .text.hot :\n  {\n");
    let mut count = 0;
    for name in text.lines().map(str::trim) {
        // What scripts/hot-code writes; anything else (a comment, a stray
        // character a linker script would read as syntax) is left out.
        let plain = |c: char| c.is_ascii_alphanumeric() || "_.$*".contains(c);
        if name.is_empty() || name.starts_with('#') || !name.chars().all(plain) {
            continue;
        }
        // LLVM puts a function it deems cold in `.text.unlikely.NAME`.
        let _ = writeln!(script, "    *(.text.{name} .text.unlikely.{name})");
        count += 1;
    }
    if count == 0 {
        return None;
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    let path = PathBuf::from(std::env::var_os("OUT_DIR")?).join("hot-code.ld");
    std::fs::write(&path, script).ok()?;
    Some(path)
}
