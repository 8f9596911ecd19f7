//! TLS to the broker with rustls: a test CA, a server certificate and a
//! client certificate generated here; Mosquitto requires the client
//! certificate. Wrong or missing certificates give errors naming the file.

mod common;
mod uplink_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use linegate::uplink::outbox::MessageClass;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use uplink_support::*;

const LONG: Duration = Duration::from_secs(30);

/// A CA and the PEM files it signed, in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn make_ca(dir: &Path, name: &str) -> (PathBuf, CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("linegate test CA {name}"),
    );
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (write(dir, &format!("{name}.pem"), &cert.pem()), params, key)
}

fn pki(dir: &Path) -> Pki {
    let (ca, ca_params, ca_key) = make_ca(dir, "ca");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gw1");
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    Pki {
        ca,
        server_cert: write(dir, "server.pem", &server.pem()),
        server_key: write(dir, "server.key", &server_key.serialize_pem()),
        client_cert: write(dir, "client.pem", &client.pem()),
        client_key: write(dir, "client.key", &client_key.serialize_pem()),
    }
}

/// Mosquitto with a TLS listener on its port (client certificate required)
/// and a plain listener on `plain` for the checking subscriber.
fn tls_broker(p: &Pki, plain: u16) -> common::Mosquitto {
    common::Mosquitto::start_with(&format!(
        "listener {{port}} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
         listener {plain} 127.0.0.1\nallow_anonymous true\n",
        p.ca.display(),
        p.server_cert.display(),
        p.server_key.display(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_over_tls_with_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let p = pki(certs.path());
    let plain = common::free_port();
    let broker = tls_broker(&p, plain);
    let sub = Subscriber::start(plain, "checker").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = uplink_config(&format!("mqtts://127.0.0.1:{}", broker.port));
    cfg.ca_file = Some(p.ca.clone());
    cfg.client_cert_file = Some(p.client_cert.clone());
    cfg.client_key_file = Some(p.client_key.clone());
    let agent = Agent::start(cfg, open_store(dir.path()));
    let seq = agent.enqueue(MessageClass::Durable, 1).await;
    wait_for("message over TLS", LONG, || {
        sub.data_by_seq().contains_key(&seq)
    })
    .await;
    assert!(agent.stats.snapshot().connected);
    assert!(sub.seen().iter().any(|m| m.online() == Some(true)));
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_signed_by_another_ca_is_refused_with_a_clear_error() {
    let certs = tempfile::tempdir().unwrap();
    let p = pki(certs.path());
    let (other_ca, _, _) = make_ca(certs.path(), "other");
    let broker = tls_broker(&p, common::free_port());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = uplink_config(&format!("mqtts://127.0.0.1:{}", broker.port));
    cfg.ca_file = Some(other_ca.clone());
    cfg.client_cert_file = Some(p.client_cert.clone());
    cfg.client_key_file = Some(p.client_key.clone());
    let agent = Agent::start(cfg, open_store(dir.path()));
    wait_for("a TLS error", LONG, || agent.stats.last_error().is_some()).await;
    let e = agent.stats.last_error().unwrap();
    assert!(e.contains("TLS"), "{e}");
    assert!(
        e.contains("UnknownIssuer") || e.contains("invalid peer certificate"),
        "{e}"
    );
    assert!(
        e.contains(&other_ca.display().to_string()),
        "names the CA file: {e}"
    );
    assert!(!agent.stats.snapshot().connected);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn missing_or_bad_certificate_files_are_named_in_the_error() {
    let certs = tempfile::tempdir().unwrap();
    let p = pki(certs.path());
    let garbage = write(certs.path(), "garbage.pem", "not a certificate\n");
    let missing = certs.path().join("nope.pem");
    let base = || {
        let mut c = uplink_config("mqtts://127.0.0.1:8883");
        c.ca_file = Some(p.ca.clone());
        c
    };
    let cases = [
        (
            {
                let mut c = base();
                c.ca_file = Some(missing.clone());
                c
            },
            "uplink.ca_file",
            missing.clone(),
        ),
        (
            {
                let mut c = base();
                c.ca_file = Some(garbage.clone());
                c
            },
            "uplink.ca_file",
            garbage.clone(),
        ),
        (
            {
                let mut c = base();
                c.client_cert_file = Some(garbage.clone());
                c.client_key_file = Some(p.client_key.clone());
                c
            },
            "uplink.client_cert_file",
            garbage.clone(),
        ),
        (
            {
                let mut c = base();
                c.client_cert_file = Some(p.client_cert.clone());
                c.client_key_file = Some(p.ca.clone());
                c
            },
            "uplink.client_key_file",
            p.ca.clone(),
        ),
        (
            {
                let mut c = base();
                c.client_cert_file = Some(p.client_cert.clone());
                c.client_key_file = Some(p.server_key.clone());
                c
            },
            "uplink.client_cert_file",
            p.client_cert.clone(),
        ),
    ];
    for (cfg, key, file) in cases {
        let problems = linegate::uplink::check(&cfg);
        assert_eq!(problems.len(), 1, "{key}: {problems:?}");
        let e = problems[0].to_string();
        assert!(
            e.contains(key) && e.contains(&file.display().to_string()),
            "{key}: {e}"
        );
    }
    // At run time such a file fails the connection attempt, named in the
    // uplink's error, and the uplink keeps trying (the file may be rotated in).
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base();
    cfg.ca_file = Some(missing.clone());
    let agent = Agent::start(cfg, open_store(dir.path()));
    wait_for("the missing CA file in the uplink's error", LONG, || {
        agent
            .stats
            .last_error()
            .is_some_and(|e| e.contains("uplink.ca_file") && e.contains("nope.pem"))
    })
    .await;
    assert!(!agent.task.is_finished(), "the uplink must keep trying");
    agent.stop().await.unwrap();
}
