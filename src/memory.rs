//! Gives the heap's freed memory back to the system.
//!
//! glibc's malloc keeps what the agent frees for later use: a console page,
//! a `/metrics` scrape or a burst of historical rows leaves its buffers
//! behind as resident memory that nothing reuses for a long time (measured:
//! a browser tab and a scrape for 20 s added 0.8 MB that stayed; a trim
//! gave it all back: BENCHMARKS.md, "Uplink cost", round 3). This module owns the
//! trim and when it happens: a short while after the console has answered
//! (`freed_soon`, coalesced) and once a minute. It must not allocate for
//! anyone or decide anything else; on other C libraries it does nothing.
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Set by whoever has just freed a lot (the console after a response).
static FREED: Notify = Notify::const_new();

/// How long after a `freed_soon` the trim runs: the response's buffers are
/// dropped once hyper has written them, and requests come in bursts (a page
/// and its assets), one trim for the burst.
const SETTLE: Duration = Duration::from_millis(200);

/// The trim of the quiet times: the uplink's drain, reloads, the recorder.
const EVERY: Duration = Duration::from_secs(60);

/// Asks for a trim soon. Cheap: a flag, taken once by the trim task.
pub fn freed_soon() {
    FREED.notify_one();
}

/// Returns the heap's free pages to the system now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes glibc's arena locks itself; it frees only
    // pages that no allocation holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims after each `freed_soon` (a burst counts once) and every minute,
/// until `stop`.
pub async fn run_trims(stop: CancellationToken) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => trim(),
            _ = FREED.notified() => {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(SETTLE) => trim(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_trim_task_takes_a_burst_of_requests_and_ends_on_stop() {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_trims(stop.clone()));
        for _ in 0..10 {
            freed_soon();
        }
        tokio::time::sleep(SETTLE * 3).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the trim task ends on stop")
            .expect("the trim task does not panic");
    }

    #[test]
    fn a_trim_gives_back_freed_memory_and_keeps_live_allocations() {
        let kept: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 4096]).collect();
        drop((0..2048).map(|_| vec![7u8; 4096]).collect::<Vec<_>>());
        trim();
        assert!(kept
            .iter()
            .enumerate()
            .all(|(i, v)| v.iter().all(|&b| b == i as u8)));
    }
}
