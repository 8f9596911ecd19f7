//! `memory::release_start_pages` in a process of its own (the one test
//! here): the release must not race another thread loading a library, so it
//! does not run beside the library's other tests.

/// After the release less of the test binary's files is resident, and code,
/// tables the loader relocated (a vtable, a static of string slices) and
/// libc still work.
#[cfg(target_os = "linux")]
#[test]
fn releasing_the_start_pages_lowers_file_backed_memory_and_the_program_runs_on() {
    fn rss_file_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
    static NAMES: &[&str] = &["running", "idle", "down"];
    let shown: Box<dyn std::fmt::Display> = Box::new(42u32);
    let before = rss_file_kb();
    let released = linegate::memory::release_start_pages().expect("the release runs");
    let after = rss_file_kb();
    assert!(released > 0, "nothing was released");
    assert!(after < before, "file-backed RSS {before} kB -> {after} kB");
    assert_eq!(NAMES.join(","), "running,idle,down");
    assert_eq!(shown.to_string(), "42");
    let config = linegate::config::Config::from_toml(
        include_str!("../configs/linegate.toml"),
        std::path::Path::new("linegate.toml"),
    );
    assert!(
        config.is_ok(),
        "the reference config still loads after the release"
    );
    assert!(std::fs::metadata(std::env::temp_dir()).is_ok());
}
