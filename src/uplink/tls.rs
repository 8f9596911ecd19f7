//! Where the broker is and how to prove who we are: the `uplink.url`, the
//! rustls client configuration (ring provider, no OpenSSL, no aws-lc) and
//! the password. Every error names the config key and the file or variable
//! at fault. Nothing here opens a network connection.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::UplinkConfig;

use super::UplinkError;

/// The broker address from `uplink.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS.
    pub tls: bool,
}

/// Parse `mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (8883).
pub fn parse_url(url: &str) -> Result<BrokerAddr, UplinkError> {
    let bad = |reason: &str| UplinkError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad("must start with mqtt:// or mqtts://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('@') {
        return Err(bad(
            "only host and port are allowed (no path, query or user)",
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed '[' in host"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad("unexpected text after ']'")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("port must be a number from 1 to 65535"))?,
    };
    Ok(BrokerAddr {
        host: host.to_string(),
        port,
        tls,
    })
}

/// The rustls configuration for `mqtts://`: the CA bundle of `ca_file` (or
/// the system's roots) and, when both files are set, a client certificate.
pub fn client_config(cfg: &UplinkConfig) -> Result<ClientConfig, UplinkError> {
    // The process-wide default too, for any rustls user that asks for it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs = read_certs(path, "uplink.ca_file")?;
            for c in certs {
                roots.add(c).map_err(|e| UplinkError::CaFile {
                    path: path.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(UplinkError::Tls(
                    "no system CA certificates found: set uplink.ca_file to the broker's CA (PEM)"
                        .into(),
                ));
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UplinkError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&cfg.client_cert_file, &cfg.client_key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "uplink.client_cert_file")?;
            let key_der = read_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| UplinkError::ClientCert {
                    path: cert.clone(),
                    reason: format!(
                        "does not match uplink.client_key_file {}: {e}",
                        key.display()
                    ),
                })
        }
        (Some(cert), None) => Err(UplinkError::ClientCert {
            path: cert.clone(),
            reason: "uplink.client_key_file is missing (a client certificate needs its key)".into(),
        }),
        (None, Some(key)) => Err(UplinkError::ClientKey {
            path: key.clone(),
            reason: "uplink.client_cert_file is missing (a key needs its certificate)".into(),
        }),
    }
}

fn read_certs(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, UplinkError> {
    let err = |reason: String| match key {
        "uplink.ca_file" => UplinkError::CaFile {
            path: path.to_path_buf(),
            reason,
        },
        _ => UplinkError::ClientCert {
            path: path.to_path_buf(),
            reason,
        },
    };
    let file = File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(
            "no certificate in it (expected PEM blocks '-----BEGIN CERTIFICATE-----')".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, UplinkError> {
    let err = |reason: String| UplinkError::ClientKey {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| err(format!("not valid PEM: {e}")))?
        .ok_or_else(|| err("no private key in it (expected PEM 'BEGIN PRIVATE KEY')".into()))
}

/// The password from `password_file` (trailing newline removed) or
/// `password_env`; `None` when neither is set.
pub fn password(cfg: &UplinkConfig) -> Result<Option<String>, UplinkError> {
    if let Some(path) = &cfg.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| UplinkError::PasswordFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            return Err(UplinkError::PasswordFile {
                path: path.clone(),
                reason: "the file is empty (it should hold the password)".into(),
            });
        }
        return Ok(Some(text.to_string()));
    }
    if let Some(name) = &cfg.password_env {
        return match std::env::var(name) {
            Ok(v) => Ok(Some(v)),
            Err(_) => Err(UplinkError::PasswordEnv { name: name.clone() }),
        };
    }
    Ok(None)
}

/// Used by error messages: the CA file in use, or the system roots.
pub fn ca_description(cfg: &UplinkConfig) -> String {
    cfg.ca_file
        .as_ref()
        .map(|p: &PathBuf| format!("uplink.ca_file {}", p.display()))
        .unwrap_or_else(|| "the system's CA certificates".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_tls() {
        assert_eq!(
            parse_url("mqtts://broker.example:8884").unwrap(),
            BrokerAddr {
                host: "broker.example".into(),
                port: 8884,
                tls: true
            }
        );
        assert_eq!(parse_url("mqtt://10.0.0.5").unwrap().port, 1883);
        assert_eq!(parse_url("mqtts://h/").unwrap().port, 8883);
        assert_eq!(parse_url("mqtt://[::1]:1999").unwrap().host, "::1");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, words) in [
            ("http://x", "mqtt://"),
            ("mqtt://x:99999", "port"),
            ("mqtt://x/topic", "path"),
            ("mqtt://", "no host"),
        ] {
            let e = parse_url(url).unwrap_err().to_string();
            assert!(e.contains(words) && e.contains(url), "{url}: {e}");
        }
    }
}
