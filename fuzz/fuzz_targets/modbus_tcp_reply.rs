//! Modbus TCP replies, served by a loopback server to `linegate read
//! --once` (`linegate::source::modbus::read_once`): the daemon's own link,
//! tokio-modbus's TCP frame decoding, the reply checks and the decoding into
//! signal values, over a real socket.
//!
//! Input: a list of replies, one per request the agent sends, each
//! `[flags][length][bytes]`. With flags bit 0 clear the bytes are a PDU
//! (function code and data) and the server wraps it in a correct MBAP
//! header (the request's transaction id, protocol 0, length, unit), so the
//! fuzzer reaches the PDU decoding at once; with it set they go out as they
//! are, header and all. Flags bit 1 closes the connection after the reply.
//! When the replies run out the server hangs up.
//!
//! Properties: no panic and no hang (every request ends within the bus
//! timeout); a decoded float is finite; a bit signal decodes to a bool;
//! every signal of the machine has a reading or an error.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use linegate::config::Config;
use linegate::source::modbus::read_once;
use linegate::source::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    config: Config,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut config = Config::from_toml(
            include_str!("../configs/modbus.toml"),
            Path::new("modbus.toml"),
        )
        .expect("the fuzz config is valid");
        // The TCP machine only: the serial one has its own target.
        config.machine.truncate(1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Fixture { runtime, config }
    })
}

/// One reply as the input gives it.
struct Reply {
    raw: bool,
    close: bool,
    bytes: Vec<u8>,
}

fn replies(mut data: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while let [flags, len, rest @ ..] = data {
        let n = usize::from(*len).min(rest.len());
        out.push(Reply {
            raw: flags & 1 != 0,
            close: flags & 2 != 0,
            bytes: rest[..n].to_vec(),
        });
        data = &rest[n..];
    }
    out
}

/// Serve `replies` in order, one per request, over as many connections as
/// the agent opens; hang up when they run out.
async fn serve(listener: TcpListener, replies: Vec<Reply>) {
    let mut replies = replies.into_iter();
    'accept: while let Ok((mut stream, _)) = listener.accept().await {
        loop {
            let mut header = [0u8; 7];
            if stream.read_exact(&mut header).await.is_err() {
                continue 'accept;
            }
            let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
            let mut pdu = vec![0u8; len.saturating_sub(1)];
            if stream.read_exact(&mut pdu).await.is_err() {
                continue 'accept;
            }
            let Some(reply) = replies.next() else {
                return;
            };
            let mut frame = Vec::new();
            if !reply.raw {
                frame.extend_from_slice(&header[..4]);
                let n = u16::try_from(reply.bytes.len() + 1).unwrap_or(u16::MAX);
                frame.extend_from_slice(&n.to_be_bytes());
                frame.push(header[6]);
            }
            frame.extend_from_slice(&reply.bytes);
            if stream.write_all(&frame).await.is_err() || reply.close {
                continue 'accept;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    fixture.runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address = listener.local_addr().expect("its address").to_string();
        let mut config = fixture.config.clone();
        config.bus[0].address = Some(address);
        let server = tokio::spawn(serve(listener, replies(data)));
        let readouts = read_once(&config, None)
            .await
            .expect("the machine is configured");
        server.abort();
        let _ = server.await;
        let machine = &config.machine[0];
        let readout = readouts.get(&machine.id).expect("a readout of the machine");
        for signal in &machine.signal {
            let reading = readout
                .signals
                .get(&signal.name)
                .unwrap_or_else(|| panic!("{}: no reading and no error", signal.name));
            match reading {
                Ok(Value::Float(x)) => assert!(x.is_finite(), "{}: {x} is not finite", signal.name),
                Ok(v) if signal.area.is_some_and(|a| a.is_bits()) => {
                    assert!(
                        matches!(v, Value::Bool(_)),
                        "{}: bit signal gave {v:?}",
                        signal.name
                    )
                }
                _ => {}
            }
        }
    });
});
