//! Config loading: every mistake a technician can make gives an error that
//! names the key and says what is allowed.

use std::path::Path;

use linegate::config::{Config, ConfigError};

const GOOD: &str = r#"
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
unit = 1

[[machine.signal]]
name = "part_count"
area = "holding"
address = 100
type = "u32"

[[machine.signal]]
name = "running"
area = "coil"
address = 0
type = "bool"
"#;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"))
}

fn error_of(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("config should have been refused:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_good_config_loads() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.machine[0].signal.len(), 2);
    assert_eq!(
        c.machine[0].signal[0].data_type,
        linegate::config::DataType::U32
    );
}

#[test]
fn a_typo_key_is_named_with_its_path() {
    let e = error_of(&GOOD.replace("type = \"u32\"", "typ = \"u32\""));
    assert!(
        e.contains("test.toml:21:1: `machine[0].signal[0].typ`"),
        "{e}"
    );
    assert!(e.contains("unknown key `typ`"), "{e}");
    assert!(e.contains("did you mean `type`?"), "{e}");
}

#[test]
fn a_bad_type_names_the_allowed_types() {
    let e = error_of(&GOOD.replace("type = \"u32\"", "type = \"uint32\""));
    assert!(e.contains("machine[0].signal[0].type"), "{e}");
    assert!(e.contains("u32"), "{e}");
}

#[test]
fn an_unknown_bus_is_named() {
    let e = error_of(&GOOD.replace("bus = \"cell-a\"", "bus = \"cell-b\""));
    assert!(e.contains("machine[0].bus"), "{e}");
    assert!(e.contains("\"cell-b\""), "{e}");
    assert!(e.contains("cell-a"), "{e}");
}

#[test]
fn overlapping_signals_are_refused() {
    let text = format!(
        "{GOOD}\n[[machine.signal]]\nname = \"speed\"\narea = \"holding\"\naddress = 101\ntype = \"u16\"\n"
    );
    let e = error_of(&text);
    assert!(e.contains("machine[0].signal[2].address"), "{e}");
    assert!(e.contains("overlaps signal \"part_count\""), "{e}");
}

#[test]
fn a_type_that_does_not_fit_its_area_is_refused() {
    let e = error_of(&GOOD.replace("type = \"bool\"", "type = \"u16\""));
    assert!(e.contains("machine[0].signal[1].type"), "{e}");
    assert!(e.contains("does not fit area coil"), "{e}");
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = GOOD
        .replace("id = \"gw-line2\"", "id = \"gw line2\"")
        .replace("bus = \"cell-a\"", "bus = \"nope\"");
    let e = error_of(&text);
    assert!(e.contains("gateway.id"), "{e}");
    assert!(e.contains("machine[0].bus"), "{e}");
}

#[test]
fn orders_on_a_machine_of_an_mqtt_bus_are_refused() {
    let text = r#"
[gateway]
id = "gw"
site = "s"

[[bus]]
id = "plc"
transport = "mqtt"
address = "mqtt://127.0.0.1:1883"

[[machine]]
id = "oven2"
bus = "plc"

[[machine.signal]]
name = "count"
topic = "plc/oven2/count"

[machine.counters]
produced = "count"

[machine.orders]
order_number = { area = "holding", address = 200, type = "u32" }
product_code = { area = "holding", address = 202, map = { "P-1" = 1 } }
quantity = { area = "holding", address = 203 }
start = { area = "coil", address = 10 }
max_quantity = 10
"#;
    let e = error_of(text);
    assert!(e.contains("machine[0].orders"), "{e}");
    assert!(e.contains("mqtt bus"), "{e}");
}

// ---------------------------------------------------------------------------
// Through the real binary: `check-config` is the systemd unit's
// `ExecStartPre`, so what it lets through is what runs.

/// A gateway with one machine that takes orders, for the limits below.
const ORDERS: &str = r#"
[gateway]
id = "gw"
site = "s"
data_dir = "/nonexistent/linegate-test"

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

[machine.counters]
produced = "part_count"
ideal_cycle_s = 9.5

[machine.orders]
order_number = { area = "holding", address = 200, type = "u32" }
product_code = { area = "holding", address = 202, type = "u16", map = { "P-1" = 11 } }
quantity = { area = "holding", address = 203, type = "u16", max = 5000 }
start = { area = "coil", address = 10 }
max_quantity = 5000
params = { recipe = { area = "holding", address = 204, type = "u16", min = 1, max = 40 } }
"#;

/// What `linegate check-config` said about this file: (passed, stdout, stderr).
fn check_config_bytes(bytes: &[u8], env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("linegate.toml");
    std::fs::write(&file, bytes).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_linegate"));
    cmd.arg("check-config").arg("-c").arg(&file);
    for (k, _) in std::env::vars() {
        if k.starts_with("LINEGATE") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("the linegate binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// check-config must refuse `text`; its error output.
fn refused(text: &str) -> String {
    let (ok, stdout, stderr) = check_config_bytes(text.as_bytes(), &[]);
    assert!(!ok, "check-config passed a bad config:\n{text}\n{stdout}");
    assert!(!stdout.contains(": ok"), "{stdout}");
    stderr
}

#[test]
fn check_config_passes_the_order_fixture() {
    let (ok, stdout, stderr) = check_config_bytes(ORDERS.as_bytes(), &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
}

#[test]
fn order_limits_must_be_finite_and_fit_their_register() {
    for (from, to, key, says) in [
        (
            "min = 1, max = 40",
            "min = 1, max = nan",
            "machine[0].orders.params.recipe.max",
            "not a finite number",
        ),
        (
            "type = \"u16\", max = 5000",
            "type = \"u16\", max = inf",
            "machine[0].orders.quantity.max",
            "not a finite number",
        ),
        (
            "type = \"u16\", max = 5000",
            "type = \"u16\", max = -1",
            "machine[0].orders.quantity.max",
            "0..=65535",
        ),
        (
            "type = \"u16\", max = 5000",
            "type = \"u16\", max = 1e30",
            "machine[0].orders.quantity.max",
            "does not fit a u16 register",
        ),
        (
            "min = 1, max = 40",
            "min = 41, max = 40",
            "machine[0].orders.params.recipe.max",
            "below min 41",
        ),
        (
            "\"P-1\" = 11",
            "\"P-1\" = 65536",
            "machine[0].orders.product_code.map.P-1",
            "0..=65535",
        ),
        (
            "\"P-1\" = 11",
            "\"P-1\" = -1",
            "machine[0].orders.product_code.map.P-1",
            "0..=65535",
        ),
        (
            "max_quantity = 5000",
            "max_quantity = 100000",
            "machine[0].orders.max_quantity",
            "up to 5000",
        ),
        (
            "ideal_cycle_s = 9.5",
            "ideal_cycle_s = nan",
            "machine[0].counters.ideal_cycle_s",
            "not a finite number",
        ),
        (
            "ideal_cycle_s = 9.5",
            "ideal_cycle_s = inf",
            "machine[0].counters.ideal_cycle_s",
            "not a finite number",
        ),
        (
            "ideal_cycle_s = 9.5",
            "ideal_cycle_s = 1e308",
            "machine[0].counters.ideal_cycle_s",
            "up to 86400",
        ),
    ] {
        assert!(ORDERS.contains(from), "{from}");
        let e = refused(&ORDERS.replace(from, to));
        assert!(e.contains(&format!("`{key}`")), "{to}: names {key}: {e}");
        assert!(e.contains(says), "{to}: says {says:?}: {e}");
    }
}

#[test]
fn a_number_too_large_is_named_with_its_key_and_line() {
    let text = GOOD.replace(
        "address = \"127.0.0.1:502\"",
        "address = \"127.0.0.1:502\"\ntimeout_ms = 99999999999999999999",
    );
    let e = refused(&text);
    assert!(e.contains("`bus[0].timeout_ms`"), "{e}");
    assert!(
        e.contains("linegate.toml:11:14: `bus[0].timeout_ms`"),
        "{e}"
    );
    assert!(e.contains("99999999999999999999 is too large"), "{e}");
}

#[test]
fn bytes_that_are_not_utf8_are_placed_by_line_and_column() {
    let mut bytes = GOOD.as_bytes().to_vec();
    let at = GOOD.find("gw-line2").unwrap() + 2;
    bytes[at] = 0xFF;
    let (ok, _, e) = check_config_bytes(&bytes, &[]);
    assert!(!ok);
    assert!(e.contains("line 3, column 9"), "{e}");
    assert!(e.contains("0xFF is not UTF-8"), "{e}");
}

/// GOOD with an `[uplink]` section of these lines.
fn with_uplink(lines: &str) -> String {
    format!("{GOOD}\n[uplink]\n{lines}\n")
}

#[test]
fn an_empty_uplink_client_id_is_refused() {
    let e = refused(&with_uplink(
        "url = \"mqtt://127.0.0.1:1883\"\nclient_id = \"\"",
    ));
    assert!(e.contains("`uplink.client_id`"), "{e}");
    assert!(e.contains("non-empty"), "{e}");
}

#[test]
fn tls_files_with_a_plaintext_url_are_refused() {
    let e = refused(&with_uplink(
        "url = \"mqtt://127.0.0.1:1883\"\nca_file = \"/etc/ssl/ca.pem\"\n\
         client_cert_file = \"/etc/c.pem\"\nclient_key_file = \"/etc/k.pem\"",
    ));
    for key in [
        "uplink.ca_file",
        "uplink.client_cert_file",
        "uplink.client_key_file",
    ] {
        assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
    }
    assert!(e.contains("use mqtts://"), "{e}");
}

#[test]
fn a_password_without_a_username_is_refused() {
    let e = refused(&with_uplink(
        "url = \"mqtts://127.0.0.1:8883\"\npassword_env = \"LINEGATE_TEST_PW\"",
    ));
    assert!(e.contains("`uplink.username`"), "{e}");
}

#[test]
fn a_password_over_plaintext_passes_with_a_warning() {
    let text = with_uplink(
        "url = \"mqtt://127.0.0.1:1883\"\nusername = \"gw\"\npassword_env = \"LINEGATE_TEST_PW\"",
    );
    let (ok, stdout, stderr) = check_config_bytes(text.as_bytes(), &[("LINEGATE_TEST_PW", "x")]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(stderr.contains("warning"), "{stderr}");
    assert!(stderr.contains("in clear"), "{stderr}");
}

#[test]
fn credential_files_that_are_missing_or_empty_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let newline = dir.path().join("newline");
    std::fs::write(&newline, "\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let p = |p: &Path| p.display().to_string();
    for (lines, key, file) in [
        (
            format!("ca_file = {:?}", p(&missing)),
            "uplink.ca_file",
            p(&missing),
        ),
        (
            format!("ca_file = {:?}", p(&empty)),
            "uplink.ca_file",
            p(&empty),
        ),
        (
            format!(
                "client_cert_file = {:?}\nclient_key_file = {:?}",
                p(&missing),
                p(&empty)
            ),
            "uplink.client_cert_file",
            p(&missing),
        ),
        (
            format!("username = \"gw\"\npassword_file = {:?}", p(&missing)),
            "uplink.password_file",
            p(&missing),
        ),
        (
            format!("username = \"gw\"\npassword_file = {:?}", p(&newline)),
            "uplink.password_file",
            p(&newline),
        ),
    ] {
        let e = refused(&with_uplink(&format!(
            "url = \"mqtts://127.0.0.1:8883\"\n{lines}"
        )));
        assert!(
            e.contains(key) && e.contains(&file),
            "{lines}: names {key} and {file}: {e}"
        );
    }
}

#[test]
fn an_environment_override_of_nan_is_named_by_its_variable() {
    let (ok, stdout, e) = check_config_bytes(
        ORDERS.as_bytes(),
        &[("LINEGATE_STORE__OUTBOX_MAX_MB", "nan")],
    );
    assert!(!ok, "{stdout}");
    assert!(
        e.contains("LINEGATE_STORE__OUTBOX_MAX_MB (environment): `store.outbox_max_mb`"),
        "{e}"
    );
    assert!(e.contains("not a finite number"), "{e}");
}

#[test]
fn mqtt_payload_limit_and_retained_policy_are_checked_with_their_keys() {
    let mqtt = GOOD.replace(
        "transport = \"tcp\"\naddress = \"127.0.0.1:502\"",
        "transport = \"mqtt\"\naddress = \"mqtt://127.0.0.1:1883\"\nmax_payload_bytes = 0\nretained = \"timestamped\"",
    );
    let e = error_of(&mqtt);
    assert!(e.contains("bus[0].max_payload_bytes"), "{e}");
    assert!(e.contains("bus[0].timestamp_pointer"), "{e}");
    let e = error_of(&mqtt.replace(
        "retained = \"timestamped\"",
        "retained = \"timestamped\"\ntimestamp_pointer = \"ts\"",
    ));
    assert!(
        e.contains("bus[0].timestamp_pointer") && e.contains("JSON pointer"),
        "{e}"
    );
    let e = error_of(&mqtt.replace("retained = \"timestamped\"", "retained = \"always\""));
    assert!(e.contains("retained"), "{e}");
    assert!(e.contains("ignore") && e.contains("timestamped"), "{e}");
}

#[test]
fn a_steady_retry_phase_longer_than_a_day_is_refused_by_name() {
    let text = GOOD.replace(
        "address = \"127.0.0.1:502\"",
        "address = \"127.0.0.1:502\"\nbackoff_after_ms = 90000000",
    );
    let e = error_of(&text);
    assert!(e.contains("bus[0].backoff_after_ms"), "{e}");
    assert!(e.contains("above a day"), "{e}");
    let ok = GOOD.replace(
        "address = \"127.0.0.1:502\"",
        "address = \"127.0.0.1:502\"\nbackoff_after_ms = 0",
    );
    assert_eq!(load(&ok).unwrap().bus[0].backoff_after_ms, 0);
}

#[test]
fn a_store_reserve_beyond_its_bound_is_named() {
    let e = error_of(&format!("{GOOD}\n[store]\nreserve_mb = 5000\n"));
    assert!(e.contains("store.reserve_mb"), "{e}");
    assert!(e.contains("4096"), "{e}");
    let c = load(&format!("{GOOD}\n[store]\nreserve_mb = 0\n")).unwrap();
    assert_eq!(c.store.reserve_mb, 0, "0 turns the reserve off");
    assert_eq!(load(GOOD).unwrap().store.reserve_mb, 16, "the default");
}

// ---------------------------------------------------------------------------
// Every mistake in one run: `check-config` on a file with many, plus
// environment overrides.

/// GOOD with one mistake of each kind; (line, column, key, what it says).
const MANY_MISTAKES: &str = r#"
[gateway]
id = "gw-line2"
site = "plant1"
data_dir = "/tmp/x"
timezon = "Europe/Berlin"

[[bus]]
id = "cell-a"
transport = "tcp"
address = "127.0.0.1:502"
timeout_ms = "500"

[[machine]]
id = "press07"
bus = "cell-a"
unit = 1

[[machine.signal]]
name = "part_count"
area = "holding"
address = 40101
type = "uint32"

[[machine.signal]]
name = "running"
area = "coils"
address = 0
type = "bool"

[[machine.signal]]
name = "mode"
area = "holding"
address = 300

[machine.state]
running = "running && mode"
down = "mode 2"
"#;

#[test]
fn check_config_reports_every_mistake_at_once_with_line_column_key_and_suggestion() {
    let (ok, stdout, e) = check_config_bytes(
        MANY_MISTAKES.as_bytes(),
        &[
            ("LINEGATE_MACHINE__POLL_MS", "5"),
            ("LINEGATE_MACHINE__PRESS07__UNIT", "abc"),
        ],
    );
    assert!(!ok, "{stdout}");
    for (at, key, says) in [
        (":6:1: ", "gateway.timezon", "did you mean `timezone`?"),
        (
            ":12:14: ",
            "bus[0].timeout_ms",
            "`timeout_ms = \"500\"` is text \"500\", but `timeout_ms` takes a whole number, 0 or more: write it without quotes",
        ),
        (
            ":23:8: ",
            "machine[0].signal[0].type",
            "`type = \"uint32\"` is not a signal type; did you mean `u32`?",
        ),
        (
            ":27:8: ",
            "machine[0].signal[1].area",
            "`area = \"coils\"` is not a Modbus area; did you mean `coil`?",
        ),
        (
            ":37:11: ",
            "machine[0].state.running",
            "signal `mode` is an integer (type u16), but `&&` needs true/false",
        ),
        (
            ":38:8: ",
            "machine[0].state.down",
            "two values stand side by side with no operator between them",
        ),
        (
            "LINEGATE_MACHINE__POLL_MS (environment): ",
            "machine",
            "name the entry by its id, e.g. LINEGATE_MACHINE__PRESS07__POLL_MS",
        ),
        (
            "LINEGATE_MACHINE__PRESS07__UNIT (environment): ",
            "machine[0].unit",
            "`LINEGATE_MACHINE__PRESS07__UNIT=abc` is text \"abc\", but `unit` takes a whole number 0..=255",
        ),
        (
            ":22:11: warning: ",
            "machine[0].signal[0].address",
            "holding 40101 looks like a 1-based number from a manual",
        ),
    ] {
        let line = e
            .lines()
            .find(|l| l.contains(&format!("`{key}`")))
            .unwrap_or_else(|| panic!("no line about {key}:\n{e}"));
        assert!(line.contains(&format!("{at}`{key}`: ")), "{key} at {at}: {line}");
        assert!(line.contains(says), "{key} says {says:?}: {line}");
    }
    assert!(e.contains(": 8 problem(s):"), "{e}");
    assert!(e.contains("and 1 warning(s):"), "{e}");
    for internal in [
        "unknown variant",
        "unknown field",
        "invalid type",
        "leaf node",
        "Value::",
    ] {
        assert!(!e.contains(internal), "leaks {internal:?}:\n{e}");
    }
}

#[test]
fn environment_overrides_reach_list_entries_by_id_and_errors_name_the_variable() {
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let loaded = Config::from_toml_with_env(
        GOOD,
        Path::new("test.toml"),
        &env(&[
            ("LINEGATE_MACHINE__PRESS07__POLL_MS", "250"),
            (
                "LINEGATE_MACHINE__PRESS07__SIGNAL__PART_COUNT__ADDRESS",
                "102",
            ),
            ("LINEGATE_BUS__CELL_A__ADDRESS", "10.0.0.7:502"),
            ("LINEGATE_GATEWAY__ID", "123"),
            ("LINEGATE_GATEWAY__TIMEZONE", "Europe/Berlin"),
        ]),
    )
    .unwrap();
    let c = loaded.config;
    assert_eq!(c.machine[0].poll_ms, 250);
    assert_eq!(c.machine[0].signal[0].address, Some(102));
    assert_eq!(c.bus[0].address.as_deref(), Some("10.0.0.7:502"));
    assert_eq!(c.gateway.id, "123", "a number where text goes is its text");
    assert_eq!(c.gateway.timezone, "Europe/Berlin");

    let e = Config::from_toml_with_env(
        GOOD,
        Path::new("test.toml"),
        &env(&[
            ("LINEGATE_MACHINE__PRESS07__POLL_MS", "0"),
            ("LINEGATE_MACHINE__PRESS08__POLL_MS", "5"),
            ("LINEGATE_GATEWAY__IDD", "x"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("LINEGATE_MACHINE__PRESS07__POLL_MS (environment): `machine[0].poll_ms`: must be above 0"),
        "{e}"
    );
    assert!(
        e.contains("LINEGATE_MACHINE__PRESS08__POLL_MS (environment): `machine`")
            && e.contains(
                "no entry of `machine` has the id \"press08\" (ids in the file: press07)"
            )
            && e.contains("e.g. LINEGATE_MACHINE__PRESS07__POLL_MS;"),
        "{e}"
    );
    assert!(
        e.contains("LINEGATE_GATEWAY__IDD (environment): `gateway.idd`: unknown key `idd` in `gateway`; did you mean `id`?"),
        "{e}"
    );
    assert!(
        !e.contains("  - test.toml:"),
        "no problem is placed in the file: {e}"
    );
}

#[test]
fn a_1_based_manual_address_passes_check_config_with_a_warning_that_says_the_0_based_one() {
    let text = GOOD.replace(
        "address = 100\ntype = \"u32\"",
        "address = 40001\ntype = \"u32\"",
    );
    let (ok, stdout, stderr) = check_config_bytes(text.as_bytes(), &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(
        stderr.contains(":20:11: warning: `machine[0].signal[0].address`: holding 40001 looks like a 1-based number")
            && stderr.contains("address = 0"),
        "{stderr}"
    );
}

#[test]
fn a_bad_required_key_does_not_hide_the_problems_after_it() {
    let text = GOOD
        .replace("transport = \"tcp\"", "transport = \"modbus\"")
        .replace("unit = 1", "unit = 0")
        .replace("[[machine]]\nid = \"press07\"\n", "[[machine]]\n");
    let e = error_of(&text);
    assert!(
        e.contains("`bus[0].transport`: `transport = \"modbus\"` is not a bus transport; use one of: tcp, rtu, mqtt"),
        "{e}"
    );
    assert!(
        e.contains("`machine[0].id`: is required, and missing"),
        "{e}"
    );
    assert!(
        e.contains("`machine[0].unit`: unit 0 is the Modbus broadcast address"),
        "{e}"
    );
    assert!(
        !e.contains("not a valid id"),
        "the stand-in id is not reported: {e}"
    );
}

/// Every one-line mistake in the reference config (the line gone, or its
/// value replaced by one of another kind): loading ends, and either the
/// config loads or every problem has a key path and a place in the file
/// (or the environment), and none repeats serde's own words.
#[test]
fn every_one_line_mistake_in_the_reference_config_is_placed_and_named() {
    let reference = include_str!("../configs/linegate.toml");
    let lines: Vec<&str> = reference.lines().collect();
    let mut refused = 0;
    for (n, line) in lines.iter().enumerate() {
        let Some((key, value)) = line.split_once(" = ").filter(|_| !line.starts_with('#')) else {
            continue;
        };
        // The value of the other kind: text for a number, a number for text.
        let wrong = if value.starts_with('"') {
            format!("{key} = 7")
        } else {
            format!("{key} = \"x\"")
        };
        for replaced in [None, Some(wrong)] {
            let mut text: Vec<&str> = lines.clone();
            let replaced_line;
            match &replaced {
                None => {
                    text.remove(n);
                }
                Some(r) => {
                    replaced_line = r.clone();
                    text[n] = &replaced_line;
                }
            }
            let text = text.join("\n");
            match Config::from_toml(&text, Path::new("linegate.toml")) {
                Ok(_) => {}
                Err(ConfigError::Invalid { issues, .. }) => {
                    refused += 1;
                    assert!(!issues.is_empty(), "line {}: no issue", n + 1);
                    for i in &issues {
                        assert!(!i.key.is_empty(), "line {}: {i}", n + 1);
                        assert_ne!(
                            i.place,
                            linegate::config::Place::Unknown,
                            "line {}: {i}",
                            n + 1
                        );
                        for serde in [
                            "unknown variant",
                            "unknown field",
                            "invalid type",
                            "missing field",
                        ] {
                            assert!(!i.message.contains(serde), "line {}: {i}", n + 1);
                        }
                    }
                }
                Err(other) => panic!("line {}: {other}", n + 1),
            }
        }
    }
    assert!(refused > 100, "the mistakes were refused ({refused})");
}

#[test]
fn a_single_bracket_list_entry_says_to_write_two_brackets() {
    let e = error_of(&GOOD.replace("[[machine]]", "[machine]"));
    assert!(
        e.contains("`machine`: `machine` is a list of tables: write each entry as [[machine]] (two brackets), not [machine]"),
        "{e}"
    );
}

#[test]
fn forecast_settings_out_of_range_are_named_by_key_all_at_once() {
    let e = error_of(&format!(
        "{GOOD}\n[forecast]\nevery_ms = 10\nmove_s = -1.0\nmove_pct = 150.0\nmin_interval_ms = 100000000\nhistory_h = 0\ncapacity_horizon_h = 500\ncapacity_move_s = -5.0\n"
    ));
    for key in [
        "forecast.every_ms",
        "forecast.move_s",
        "forecast.move_pct",
        "forecast.min_interval_ms",
        "forecast.history_h",
        "forecast.capacity_horizon_h",
        "forecast.capacity_move_s",
    ] {
        assert!(e.contains(key), "{key} not named in:\n{e}");
    }
    let e = error_of(&format!("{GOOD}\n[forecast]\nmove_minutes = 2\n"));
    assert!(e.contains("move_minutes"), "{e}");
    let c = load(GOOD).unwrap();
    assert_eq!(c.forecast.every_ms, 5000, "the default");
    assert_eq!(c.forecast.capacity_horizon_h, 24, "the default");
}
