//! The broker harness itself works: start, stop, start again on the same port.
mod common;

#[test]
fn broker_can_be_stopped_and_started_on_the_same_port() {
    let mut b = common::Mosquitto::start();
    assert!(std::net::TcpStream::connect(("127.0.0.1", b.port)).is_ok());
    b.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", b.port)).is_err());
    b.resume();
    assert!(std::net::TcpStream::connect(("127.0.0.1", b.port)).is_ok());
}
