//! The least any poller can do for `scripts/bench-poll`'s job, as a floor to
//! measure the agent against on the same machine in the same run: one
//! connection per machine, and once a second a Modbus TCP "read 20 holding
//! registers" on each, all sent at once, the replies awaited with poll(2) and
//! summed. No decoding by type, no state, no store, no async runtime.
//!
//!   cargo run --release --example poll_floor -- BASE_PORT MACHINES SECONDS
//!
//! Prints the replies it got (every 10 s so far, and at the end), so a run
//! that read nothing is seen as such.
//! Used by `BENCH_FLOOR=1 scripts/bench-poll`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const REQUEST_LEN: usize = 12;
const REPLY_LEN: usize = 9 + 2 * 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, machines, seconds] = args.as_slice() else {
        return Err("usage: poll_floor BASE_PORT MACHINES SECONDS".into());
    };
    let base: u16 = base.parse()?;
    let machines: u16 = machines.parse()?;
    let seconds: u64 = seconds.parse()?;
    let mut links = Vec::new();
    for i in 0..machines {
        let stream = TcpStream::connect(("127.0.0.1", base + i))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        links.push(stream);
    }
    let start = Instant::now();
    let mut due = start;
    let (mut replies, mut sum, mut transaction) = (0u64, 0u64, 0u16);
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        due += Duration::from_secs(1);
        transaction = transaction.wrapping_add(1);
        if transaction % 10 == 0 {
            // Seen by `BENCH_ALONGSIDE=1 scripts/bench-poll`, which stops it
            // before it ends.
            println!("replies so far: {replies} in {} rounds", transaction - 1);
        }
        let t = transaction.to_be_bytes();
        let request: [u8; REQUEST_LEN] = [t[0], t[1], 0, 0, 0, 6, 1, 3, 0, 0, 0, 20];
        for link in &mut links {
            link.write_all(&request)?;
        }
        let mut got = vec![0usize; links.len()];
        let mut buffers = vec![[0u8; REPLY_LEN]; links.len()];
        let deadline = Instant::now() + Duration::from_millis(500);
        while got.iter().any(|&g| g < REPLY_LEN) && Instant::now() < deadline {
            let mut fds: Vec<libc::pollfd> = links
                .iter()
                .zip(&got)
                .filter(|(_, &g)| g < REPLY_LEN)
                .map(|(l, _)| libc::pollfd {
                    fd: l.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 500) };
            if ready <= 0 {
                break;
            }
            for (i, link) in links.iter_mut().enumerate() {
                if got[i] >= REPLY_LEN {
                    continue;
                }
                match link.read(&mut buffers[i][got[i]..]) {
                    Ok(n) => got[i] += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                if got[i] == REPLY_LEN {
                    replies += 1;
                    sum += buffers[i][9..]
                        .chunks_exact(2)
                        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
                        .sum::<u64>();
                }
            }
        }
    }
    println!("replies: {replies} (register sum {sum})");
    Ok(())
}
