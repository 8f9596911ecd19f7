//! Bad state rules are config errors that name the machine and the rule.

use std::path::Path;

use linegate::config::{Config, ConfigError};

fn config(rules: &str) -> String {
    format!(
        r#"
[gateway]
id = "gw-line2"
site = "plant1"

[[bus]]
id = "cell-a"
transport = "tcp"
address = "127.0.0.1:502"

[[machine]]
id = "press07"
bus = "cell-a"

[[machine.signal]]
name = "cycle_active"
area = "coil"
address = 0
type = "bool"

[[machine.signal]]
name = "spindle_rpm"
area = "holding"
address = 10
type = "f32"

[[machine.signal]]
name = "alarm_code"
area = "holding"
address = 20

[[machine.signal]]
name = "mode"
area = "holding"
address = 21

[machine.state]
{rules}
"#
    )
}

fn issues(rules: &str) -> Vec<(String, String)> {
    match Config::from_toml(&config(rules), Path::new("line2.toml")) {
        Ok(_) => panic!("rules should have been refused:\n{rules}"),
        Err(ConfigError::Invalid { issues, .. }) => {
            issues.into_iter().map(|i| (i.key, i.message)).collect()
        }
        Err(other) => panic!("expected validation issues, got {other}"),
    }
}

const GOOD: &str = r#"
running = "cycle_active && spindle_rpm > 0"
down = "alarm_code != 0"
setup = "mode == 2"
reason = "alarm_code"
reasons = { "17" = "door open" }
min_dwell_ms = 2000
"#;

#[test]
fn the_example_rules_of_the_issue_load() {
    let c = Config::from_toml(&config(GOOD), Path::new("line2.toml")).unwrap();
    assert_eq!(c.machine[0].state.as_ref().unwrap().min_dwell_ms, 2000);
}

#[test]
fn an_unknown_signal_names_machine_rule_and_signal() {
    let i = issues(&GOOD.replace("spindle_rpm > 0", "spindle_speed > 0"));
    assert_eq!(i.len(), 1, "{i:?}");
    assert_eq!(i[0].0, "machine[0].state.running");
    assert!(i[0].1.contains("\"press07\""), "{}", i[0].1);
    assert!(i[0].1.contains("`spindle_speed`"), "{}", i[0].1);
    let text = Config::from_toml(
        &config(&GOOD.replace("spindle_rpm > 0", "spindle_speed > 0")),
        Path::new("line2.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        text.contains("line2.toml") && text.contains("machine[0].state.running"),
        "{text}"
    );
}

#[test]
fn a_syntax_error_names_machine_and_rule() {
    let i = issues(&GOOD.replace("\"mode == 2\"", "\"mode == (2\""));
    assert_eq!(i[0].0, "machine[0].state.setup");
    assert!(
        i[0].1.contains("press07") && i[0].1.contains("not an expression"),
        "{}",
        i[0].1
    );
}

#[test]
fn a_rule_that_is_a_number_is_a_type_error() {
    let i = issues(&GOOD.replace("\"alarm_code != 0\"", "\"alarm_code + 1\""));
    assert_eq!(i[0].0, "machine[0].state.down");
    assert!(i[0].1.contains("instead of true/false"), "{}", i[0].1);
}

#[test]
fn comparing_a_bool_with_a_number_is_a_type_error() {
    let i = issues(&GOOD.replace("cycle_active && spindle_rpm > 0", "cycle_active > 0"));
    assert_eq!(i[0].0, "machine[0].state.running");
    assert!(i[0].1.contains("type error"), "{}", i[0].1);
}

#[test]
fn a_reason_naming_an_unknown_signal_is_refused() {
    let i = issues(&GOOD.replace("reason = \"alarm_code\"", "reason = \"alarm\""));
    assert_eq!(i[0].0, "machine[0].state.reason");
    assert!(i[0].1.contains("`alarm`"));
}

#[test]
fn every_bad_rule_is_reported_at_once() {
    let i = issues(
        r#"
running = "cycle_active &&"
down = "alarm"
setup = "mode"
"#,
    );
    let keys: Vec<&str> = i.iter().map(|(k, _)| k.as_str()).collect();
    // In file order, each placed on its line.
    assert_eq!(
        keys,
        vec![
            "machine[0].state.running",
            "machine[0].state.down",
            "machine[0].state.setup",
        ]
    );
}
