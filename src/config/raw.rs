//! The config file as text, before the `config` crate reads it: the checks
//! that need the file's own bytes and positions, which the `config` crate
//! loses. Invalid UTF-8 is reported with its line and column; a whole number
//! too large for 64 bits and a float that is `nan`, `inf` or overflows are
//! reported with their key path and position (the `config` crate would say
//! only "number too large", and a `nan` limit would pass through it as no
//! limit at all); so is an environment override of `nan` or `inf`. Pure: it
//! only looks at the text it is given.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::ConfigIssue;

/// Line and column (both from 1) of byte `offset` in `text`.
pub fn line_column(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Columns count characters, not bytes (the part before is valid UTF-8).
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// The file's bytes as text, or where the first byte that is not UTF-8 is.
pub fn utf8_text(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let (line, column) = line_column(bytes, at);
        format!(
            "line {line}, column {column}: byte 0x{:02X} is not UTF-8 text; save the file as UTF-8",
            bytes.get(at).copied().unwrap_or(0)
        )
    })
}

/// Numbers in `text` that the config cannot hold, each with its key path
/// (`machine[0].orders.quantity.max`) and position. A file that is not valid
/// TOML gives no issues here: the `config` crate reports its syntax error
/// with a position of its own.
pub fn number_issues(text: &str) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    if let Ok(table) = DeTable::parse(text) {
        walk_table(text, table.get_ref(), "", &mut issues);
    }
    issues
}

/// Environment overrides whose value would be read as a number that is not
/// finite (`nan`, `inf`), each named by its variable.
pub fn env_number_issues<'a>(
    overrides: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<ConfigIssue> {
    overrides
        .into_iter()
        .filter(|(_, v)| v.trim().parse::<f64>().is_ok_and(|f| !f.is_finite()))
        .map(|(k, v)| ConfigIssue {
            key: k.clone(),
            message: format!(
                "environment override {v:?} is not a finite number; every number in the config must be finite"
            ),
        })
        .collect()
}

fn walk_table(text: &str, table: &DeTable<'_>, path: &str, issues: &mut Vec<ConfigIssue>) {
    for (key, value) in table.iter() {
        let key = key.get_ref();
        let path = if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        };
        walk_value(text, value, &path, issues);
    }
}

fn walk_value(text: &str, value: &Spanned<DeValue<'_>>, path: &str, issues: &mut Vec<ConfigIssue>) {
    let at = || {
        let (line, column) = line_column(text.as_bytes(), value.span().start);
        format!("line {line}, column {column}")
    };
    match value.get_ref() {
        DeValue::Integer(i) => {
            if i64::from_str_radix(i.as_str(), i.radix()).is_err() {
                let (what, bound) = if i.as_str().starts_with('-') {
                    ("small", format!("down to {}", i64::MIN))
                } else {
                    ("large", format!("up to {}", i64::MAX))
                };
                issues.push(ConfigIssue {
                    key: path.to_string(),
                    message: format!(
                        "{}: {} is too {what} for any setting (whole numbers go {bound})",
                        at(),
                        &text[value.span()],
                    ),
                });
            }
        }
        DeValue::Float(f) => {
            let finite = f.as_str().parse::<f64>().is_ok_and(f64::is_finite);
            if !finite {
                issues.push(ConfigIssue {
                    key: path.to_string(),
                    message: format!(
                        "{}: {} is not a finite number; every number in the config must be finite",
                        at(),
                        &text[value.span()]
                    ),
                });
            }
        }
        DeValue::Array(items) => {
            for (n, item) in items.iter().enumerate() {
                walk_value(text, item, &format!("{path}[{n}]"), issues);
            }
        }
        DeValue::Table(t) => walk_table(text, t, path, issues),
        DeValue::String(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        assert_eq!(line_column(b"ab\ncd", 0), (1, 1));
        assert_eq!(line_column(b"ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ä\nxé=".as_bytes(), 6), (2, 3));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_placed() {
        let e = utf8_text(b"[gateway]\nid = \"g\xff\"\n".to_vec()).unwrap_err();
        assert!(e.contains("line 2, column 8"), "{e}");
        assert!(e.contains("0xFF"), "{e}");
    }

    #[test]
    fn numbers_that_do_not_fit_are_named_with_their_key_and_line() {
        let text = "[[bus]]\nid = \"a\"\ntimeout_ms = 99999999999999999999\ndelay_ms = -99999999999999999999\n\
                    [[machine]]\n[machine.orders]\nquantity = { max = inf, min = 1.0 }\n\
                    params = { speed = { max = nan } }\n[[machine]]\nx = [1.0, -inf]\n";
        let issues = number_issues(text);
        let mut keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bus[0].delay_ms",
                "bus[0].timeout_ms",
                "machine[0].orders.params.speed.max",
                "machine[0].orders.quantity.max",
                "machine[1].x[1]",
            ]
        );
        let of = |key: &str| {
            issues
                .iter()
                .find(|i| i.key == key)
                .unwrap()
                .message
                .clone()
        };
        assert!(
            of("bus[0].timeout_ms").contains("line 3, column 14"),
            "{issues:?}"
        );
        assert!(of("bus[0].delay_ms").contains("too small"), "{issues:?}");
        assert!(
            of("machine[0].orders.quantity.max").contains("inf is not a finite number"),
            "{issues:?}"
        );
    }
}
