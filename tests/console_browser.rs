//! The console in a real browser: Debian's chromium, headless, driven by
//! Playwright (`playwright-core` from npm, tests/browser/console.mjs) against
//! a running agent on the simulated demo line. The line page shows every
//! machine; a machine silenced on the simulated line turns offline on the
//! page without a reload; the machine page draws its timeline. Screenshots
//! go to target/console-screenshots/. `./scripts/test` installs chromium
//! and playwright-core; without them this test fails saying so.
mod console_support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use console_support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn need(path: &str, what: &str) {
    assert!(
        Path::new(path).exists(),
        "{what} is missing ({path}): run ./scripts/test, which installs it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_line_live_and_draws_the_timeline_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    need(&chromium, "chromium (apt-get install chromium)");
    need(
        "tests/browser/node_modules/playwright-core/package.json",
        "playwright-core (npm install --prefix tests/browser)",
    );
    let node = ["/usr/bin/node", "/usr/local/bin/node"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("node is missing: apt-get install nodejs"));
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");

    let demo = DemoLine::start(4, 20.0, "").await;
    let ids: Vec<String> = demo.line.machines.iter().map(|m| m.id.clone()).collect();
    // The console answers before the browser starts.
    let _ = demo.get("/healthz").await;
    let mut child = tokio::process::Command::new(node)
        .arg("tests/browser/console.mjs")
        .arg(&demo.base)
        .arg(&shots)
        .args(&ids)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let mut said = Vec::new();
    let run = async {
        while let Some(line) = stdout.next_line().await.expect("read the script") {
            said.push(line.clone());
            if line.starts_with("line-shown") {
                demo.line.set_silent("sim02", true).expect("sim02 exists");
                stdin
                    .write_all(b"pulled sim02\n")
                    .await
                    .expect("tell the script");
                stdin.flush().await.expect("flush");
            }
        }
        child.wait().await.expect("node ends")
    };
    let status = tokio::time::timeout(Duration::from_secs(90), run).await;
    let mut errors = String::new();
    let _ = stderr.read_to_string(&mut errors).await;
    let status = status.unwrap_or_else(|_| {
        panic!("the browser test did not end in 90 s; it said {said:?}; stderr: {errors}")
    });
    assert!(
        status.success(),
        "the browser test failed: {errors}\nit said: {said:?}"
    );
    assert_eq!(
        said.first().map(String::as_str),
        Some(format!("line-shown {}", ids.len()).as_str())
    );
    assert!(said.iter().any(|l| l == "offline-shown sim02"), "{said:?}");
    assert!(
        said.iter().any(|l| l.starts_with("timeline-drawn ")),
        "{said:?}"
    );
    assert_eq!(said.last().map(String::as_str), Some("done"), "{said:?}");
    for shot in [
        "line.png",
        "line-offline.png",
        "machine.png",
        "orders.png",
        "gateway.png",
    ] {
        let len = std::fs::metadata(shots.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 0, "screenshot {shot} was taken");
    }
    demo.stop().await;
}
