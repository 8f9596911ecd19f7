//! `[sparkplug]` in the config: defaults, and every mistake named by its key.

use std::path::Path;

use linegate::config::{Config, ConfigError};

const BASE: &str = r#"
[gateway]
id = "gw-line2"
site = "plant1"
data_dir = "/tmp/x"

[[bus]]
id = "cell-a"
transport = "tcp"
address = "127.0.0.1:502"

[[machine]]
id = "press07"
bus = "cell-a"

[[machine.signal]]
name = "part_count"
area = "holding"
address = 100
type = "u32"
"#;

const UPLINK: &str =
    "\n[uplink]\nurl = \"mqtt://central.example:1883\"\nusername = \"gw\"\npassword_env = \"PW\"\n";

fn load(extra: &str) -> Result<Config, ConfigError> {
    Config::from_toml(&format!("{BASE}{extra}"), Path::new("test.toml"))
}

fn error_of(extra: &str) -> String {
    match load(extra) {
        Ok(_) => panic!("config should have been refused:\n{extra}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_edge_node_defaults_to_the_gateway_id_and_the_uplinks_broker_and_credentials() {
    let c = load(&format!("{UPLINK}\n[sparkplug]\ngroup_id = \"line2\"\n")).expect("loads");
    let sp = c.sparkplug.as_ref().expect("sparkplug");
    assert_eq!(linegate::sparkplug::edge_node_id(&c, sp), "gw-line2");
    let broker = linegate::sparkplug::broker(&c, sp).expect("broker");
    assert_eq!(broker.url, "mqtt://central.example:1883");
    assert_eq!(broker.username.as_deref(), Some("gw"));
    assert_eq!(broker.password_env.as_deref(), Some("PW"));
    assert_eq!(sp.keepalive_s, 30);
}

#[test]
fn an_own_url_takes_only_the_edge_nodes_own_credentials() {
    let c = load(&format!(
        "{UPLINK}\n[sparkplug]\ngroup_id = \"line2\"\nurl = \"mqtt://scada:1883\"\nusername = \"sp\"\n"
    ))
    .expect("loads");
    let sp = c.sparkplug.as_ref().expect("sparkplug");
    let broker = linegate::sparkplug::broker(&c, sp).expect("broker");
    assert_eq!(broker.url, "mqtt://scada:1883");
    assert_eq!(broker.username.as_deref(), Some("sp"));
    assert_eq!(broker.password_env, None);
    // Alone, without [uplink].
    assert!(load("\n[sparkplug]\ngroup_id = \"line2\"\nurl = \"mqtt://scada:1883\"\n").is_ok());
}

#[test]
fn without_uplink_or_url_the_error_names_sparkplug_url() {
    let e = error_of("\n[sparkplug]\ngroup_id = \"line2\"\n");
    assert!(e.contains("sparkplug.url"), "{e}");
}

#[test]
fn ids_with_topic_characters_are_refused_by_key() {
    let e = error_of(&format!(
        "{UPLINK}\n[sparkplug]\ngroup_id = \"line/2\"\nedge_node_id = \"gw+\"\nprimary_host_id = \"\"\n"
    ));
    for key in [
        "sparkplug.group_id",
        "sparkplug.edge_node_id",
        "sparkplug.primary_host_id",
    ] {
        assert!(e.contains(key), "{key} not named in: {e}");
    }
}

#[test]
fn an_empty_or_shared_client_id_is_refused() {
    let e = error_of(&format!(
        "{UPLINK}\n[sparkplug]\ngroup_id = \"l\"\nclient_id = \"\"\n"
    ));
    assert!(e.contains("sparkplug.client_id"), "{e}");
    let e = error_of(&format!(
        "{UPLINK}\n[sparkplug]\ngroup_id = \"l\"\nclient_id = \"linegate-gw-line2\"\n"
    ));
    assert!(
        e.contains("sparkplug.client_id") && e.contains("uplink"),
        "{e}"
    );
}

#[test]
fn credentials_without_an_own_url_are_refused() {
    let e = error_of(&format!(
        "{UPLINK}\n[sparkplug]\ngroup_id = \"l\"\nusername = \"x\"\n"
    ));
    assert!(
        e.contains("sparkplug.username") && e.contains("sparkplug.url"),
        "{e}"
    );
}

#[test]
fn bounds_and_unknown_keys_are_named() {
    let e = error_of(&format!(
        "{UPLINK}\n[sparkplug]\ngroup_id = \"l\"\nkeepalive_s = 1\nhistory_max_rows = 0\n"
    ));
    assert!(
        e.contains("sparkplug.keepalive_s") && e.contains("sparkplug.history_max_rows"),
        "{e}"
    );
    let e = error_of(&format!(
        "{UPLINK}\n[sparkplug]\ngroup_id = \"l\"\ngrup = 1\n"
    ));
    assert!(e.contains("grup"), "{e}");
}
