//! Test support shared by the integration tests: a real Mosquitto broker on a
//! free loopback port that a test can stop and start again.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn mosquitto_binary() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("mosquitto is not installed: run ./scripts/test (it installs it) or apt-get install mosquitto");
}

/// A Mosquitto broker owned by one test. Killed when dropped.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra_config: String,
}

impl Mosquitto {
    /// A plain broker on a free port.
    pub fn start() -> Mosquitto {
        Self::start_with("")
    }

    /// A broker with extra lines for its config file. `{dir}` in them is
    /// replaced by the broker's own temporary folder (for certificates).
    pub fn start_with(extra_config: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = Mosquitto {
            port: free_port(),
            dir,
            child: None,
            extra_config: extra_config.to_string(),
        };
        m.resume();
        m
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stop the broker (SIGKILL: an abrupt outage, as when a network dies).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the broker again on the same port.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let conf = self.dir.path().join("mosquitto.conf");
        let extra = self
            .extra_config
            .replace("{dir}", &self.dir.path().display().to_string());
        let text = if extra.contains("listener") {
            format!("persistence false\nlog_dest stderr\n{extra}\n")
        } else {
            format!(
                "persistence false\nlog_dest stderr\nlistener {} 127.0.0.1\nallow_anonymous true\n{extra}\n",
                self.port
            )
        };
        std::fs::write(&conf, text.replace("{port}", &self.port.to_string())).expect("write conf");
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).expect("log");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log =
            std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default();
        panic!(
            "mosquitto did not listen on {} within 10 s:\n{log}",
            self.port
        );
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
