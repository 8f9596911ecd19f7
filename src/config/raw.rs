//! The config file as text: TOML syntax, positions and numbers, the things
//! the typed config loses. It turns the text into a plain tree (the shape
//! check in `shape` reads the typed config out of it) and keeps, for every
//! key path (`machine[0].signal[2].address`), the line and column of the key
//! and of its value, so that every problem can be placed in the file.
//!
//! Invalid UTF-8 is reported with its line and column; every TOML syntax
//! error is reported at once, each with its position; a whole number too
//! large for 64 bits and a float that is `nan`, `inf` or overflows are
//! reported with their key path and position, and left out of the tree (a
//! `nan` limit must never pass as no limit at all). Pure: it only looks at
//! the text it is given.

use std::collections::HashMap;

use serde_json::Value as Json;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{ConfigIssue, Place};

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

/// Where a key and its value are written in the file.
#[derive(Debug, Clone, Copy)]
struct Spot {
    /// Position of the key itself (`None` for array items and the document).
    key: Option<(usize, usize)>,
    value: (usize, usize),
    /// The value as written (`"uint32"`, `[1, 2]`), short values only.
    written: Option<(usize, usize)>,
}

/// Where every key of a file is written. Found only when asked for (a
/// message to place): the walk that reads the file for the config records
/// nothing, and the first question walks the text again. A file without
/// mistakes never pays for it: at 1000 machines the map of every key's
/// place took as much memory as the parsed file itself.
#[derive(Debug, Default)]
pub struct Places {
    text: String,
    spots: std::sync::OnceLock<HashMap<String, Spot>>,
}

/// The path one level up: `machine[0].signal` of `machine[0].signal[1]`,
/// `machine[0]` of `machine[0].bus`, `""` at the top.
pub fn parent_path(path: &str) -> &str {
    if path.ends_with(']') {
        if let Some(i) = path.rfind('[') {
            return &path[..i];
        }
    }
    match path.rfind('.') {
        Some(i) => &path[..i],
        None => "",
    }
}

impl Places {
    fn spots(&self) -> &HashMap<String, Spot> {
        self.spots.get_or_init(|| {
            let (table, _) = DeTable::parse_recoverable(&self.text);
            let mut walk = Walk {
                text: &self.text,
                line_starts: line_starts(&self.text),
                spots: Some(HashMap::new()),
                issues: Vec::new(),
                left_out: Vec::new(),
            };
            let span = table.span();
            walk.note("", None, &span, None);
            walk.table(table.into_inner(), "");
            walk.spots.unwrap_or_default()
        })
    }

    /// Where `path` (or, if the file does not have it, its nearest
    /// ancestor) is written: the key when `key_first`, else its value.
    pub fn place(&self, path: &str, key_first: bool) -> Place {
        let mut p = path;
        loop {
            if let Some(spot) = self.spots().get(p) {
                let (line, column) = match (key_first, spot.key) {
                    (true, Some(k)) => k,
                    _ => spot.value,
                };
                return Place::File { line, column };
            }
            if p.is_empty() {
                return Place::Unknown;
            }
            p = parent_path(p);
        }
    }

    /// The value of `path` as written in the file, when it is short
    /// enough to quote in a message.
    pub fn written(&self, path: &str) -> Option<&str> {
        let (start, end) = self.spots().get(path)?.written?;
        self.text.get(start..end)
    }
}

/// The file as a plain tree, with what could not go into it.
#[derive(Debug)]
pub struct Tree {
    pub value: Json,
    pub places: Places,
    /// Numbers the config cannot hold, each placed.
    pub issues: Vec<ConfigIssue>,
    /// Key paths left out of `value` because of those issues.
    pub left_out: Vec<String>,
}

/// Parse `text`; every syntax error, placed, when it is not TOML.
///
/// A long file is read one `[[machine]]` (or `[[bus]]`...) at a time ([`parse_by_piece`]);
/// any doubt about that reading, and every mistake, goes to the reading of
/// the whole file, which places it.
pub fn parse(text: &str) -> Result<Tree, Vec<ConfigIssue>> {
    if let Some(value) = parse_by_piece(text) {
        return Ok(Tree {
            value,
            places: Places {
                text: text.to_string(),
                spots: std::sync::OnceLock::new(),
            },
            issues: Vec::new(),
            left_out: Vec::new(),
        });
    }
    parse_whole(text)
}

/// Up to this many top-level `[[...]]` tables a file is read whole.
const PIECES_FROM: usize = 8;

/// The file read piece by piece: the text before the first top-level
/// array-of-tables header (`[[machine]]`, `[[bus]]`, `[[shift]]`), then each
/// such header with what follows it up to the next. The TOML parser holds a
/// token list and a tree for the text it reads, about 30 times the text's
/// size, so a 1000-machine file (1.3 MB) read whole took 40 MB at start,
/// more than the agent's whole steady state; read by piece it takes a
/// machine's worth.
///
/// `None` whenever the pieces might not say what the whole file says, and
/// then the whole file is read: a piece that is not valid TOML (a mistake,
/// or a header line inside a multi-line string, which leaves the piece
/// before it unterminated), a number the config cannot hold (its place and
/// key path are the whole file's to give), a piece whose header's array has
/// other than its one table, an array of tables that continues a key not
/// made by such headers (`bus = [...]`, then `[[bus]]`), or a table or key
/// that two pieces both define (TOML forbids it, or the later piece extends
/// the earlier one's table, as `[machine.state]` after a `[[bus]]` may:
/// either way the whole file decides).
fn parse_by_piece(text: &str) -> Option<Json> {
    let mut starts: Vec<(usize, Option<&str>)> = vec![(0, None)];
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if let Some(name) = array_table_header(line) {
            if at == 0 {
                starts[0].1 = Some(name);
            } else {
                starts.push((at, Some(name)));
            }
        }
        at += line.len();
    }
    if starts.len() <= PIECES_FROM {
        return None;
    }
    let mut top = serde_json::Map::new();
    // The keys made by headers: the only ones a later piece may add to.
    let mut arrays: Vec<&str> = Vec::new();
    for (i, &(start, header)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(text.len(), |&(next, _)| next);
        let piece = text.get(start..end)?;
        let (table, errors) = DeTable::parse_recoverable(piece);
        if !errors.is_empty() {
            return None;
        }
        let mut walk = Walk {
            text: piece,
            line_starts: line_starts(piece),
            spots: None,
            issues: Vec::new(),
            left_out: Vec::new(),
        };
        let Json::Object(map) = walk.table(table.into_inner(), "") else {
            return None;
        };
        if !walk.issues.is_empty() {
            return None;
        }
        for (key, value) in map {
            if header == Some(key.as_str()) {
                let Json::Array(one) = value else {
                    return None;
                };
                if one.len() != 1 {
                    return None;
                }
                match top.get_mut(&key) {
                    Some(Json::Array(items)) if arrays.contains(&key.as_str()) => items.extend(one),
                    Some(_) => return None,
                    None => {
                        arrays.extend(header);
                        top.insert(key, Json::Array(one));
                    }
                }
            } else if top.contains_key(&key) {
                return None;
            } else {
                top.insert(key, value);
            }
        }
    }
    Some(Json::Object(top))
}

/// The key of a top-level array-of-tables header line (`[[machine]]`,
/// maybe with a comment after it); `None` for any other line, a header
/// with a dotted or quoted key among them.
fn array_table_header(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix("[[")?;
    let end = rest.find("]]")?;
    let name = &rest[..end];
    let after = rest[end + 2..].trim();
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (bare && (after.is_empty() || after.starts_with('#'))).then_some(name)
}

fn parse_whole(text: &str) -> Result<Tree, Vec<ConfigIssue>> {
    let (table, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        let mut errors: Vec<&toml::de::Error> = errors.iter().collect();
        errors.sort_by_key(|e| e.span().map_or(0, |s| s.start));
        return Err(errors
            .into_iter()
            .map(|e| {
                let (line, column) = line_column(text.as_bytes(), e.span().map_or(0, |s| s.start));
                ConfigIssue {
                    key: "(syntax)".into(),
                    message: format!("not valid TOML: {}", e.message().trim_end()),
                    place: Place::File { line, column },
                }
            })
            .fold(Vec::new(), |mut unique: Vec<ConfigIssue>, issue| {
                // Recovery can report one spot twice.
                if !unique.contains(&issue) {
                    unique.push(issue);
                }
                unique
            }));
    }
    let mut walk = Walk {
        text,
        line_starts: line_starts(text),
        spots: None,
        issues: Vec::new(),
        left_out: Vec::new(),
    };
    let span = table.span();
    walk.note("", None, &span, None);
    // The walk consumes the parsed tree as it builds the value: a table's
    // nodes are freed as they are read, so the two are not both whole in
    // memory (a 1000-machine file parses to tens of megabytes).
    let value = walk.table(table.into_inner(), "");
    Ok(Tree {
        value,
        places: Places {
            text: text.to_string(),
            spots: std::sync::OnceLock::new(),
        },
        issues: walk.issues,
        left_out: walk.left_out,
    })
}

/// A value given in an environment override, as TOML (`5`, `true`,
/// `["a", "b"]`, `"quoted"`) or else as plain text (`gw-line3`). `Err` for a
/// number that is not finite.
pub fn env_value(raw: &str) -> Result<Json, String> {
    let trimmed = raw.trim();
    let Ok(value) = DeValue::parse(trimmed) else {
        return Ok(Json::String(raw.to_string()));
    };
    // A time or date is meant as written (`06:00`, not TOML's `06:00:00`).
    if matches!(value.get_ref(), DeValue::Datetime(_)) {
        return Ok(Json::String(raw.to_string()));
    }
    let mut walk = Walk {
        text: trimmed,
        line_starts: line_starts(trimmed),
        spots: None,
        issues: Vec::new(),
        left_out: Vec::new(),
    };
    let json = walk.value(value, "");
    match walk.issues.first() {
        Some(_) => Err(format!(
            "{raw:?} is not a finite number; every number in the config must be finite"
        )),
        None => Ok(json.unwrap_or(Json::String(raw.to_string()))),
    }
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

struct Walk<'t> {
    text: &'t str,
    /// Byte offset where each line starts (the first is 0).
    line_starts: Vec<usize>,
    /// Every key's place, when this walk records them ([`Places`]).
    spots: Option<HashMap<String, Spot>>,
    issues: Vec<ConfigIssue>,
    left_out: Vec<String>,
}

impl Walk<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        // Lines found once: every key of a long file is placed.
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        let column = self
            .text
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }

    fn note(
        &mut self,
        path: &str,
        key: Option<&std::ops::Range<usize>>,
        value: &std::ops::Range<usize>,
        value_kind: Option<&DeValue<'_>>,
    ) {
        if self.spots.is_none() {
            return;
        }
        let short = value.end.saturating_sub(value.start) <= 80
            && !matches!(value_kind, Some(DeValue::Table(_)) | None);
        let spot = Spot {
            key: key.map(|k| self.position(k.start)),
            value: self.position(value.start),
            written: short.then_some((value.start, value.end)),
        };
        // A table header seen again (`[[machine]]`, then `[machine.state]`)
        // keeps its first place.
        if let Some(spots) = &mut self.spots {
            spots.entry(path.to_string()).or_insert(spot);
        }
    }

    fn table(&mut self, table: DeTable<'_>, path: &str) -> Json {
        let mut map = serde_json::Map::new();
        for (key, value) in table {
            let name = key.get_ref();
            let child = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            self.note(
                &child,
                Some(&key.span()),
                &value.span(),
                Some(value.get_ref()),
            );
            let name = name.to_string();
            if let Some(v) = self.value(value, &child) {
                map.insert(name, v);
            }
        }
        Json::Object(map)
    }

    /// `None`: a number the config cannot hold (reported, left out).
    fn value(&mut self, value: Spanned<DeValue<'_>>, path: &str) -> Option<Json> {
        let span = value.span();
        let (line, column) = self.position(span.start);
        // The value as written, for messages (not copied for every value:
        // a table's or an array's text is most of the file).
        let text = self.text;
        let written = || text.get(span.clone()).unwrap_or("").to_string();
        let refuse = |this: &mut Self, message: String| {
            this.issues.push(ConfigIssue {
                key: path.to_string(),
                message,
                place: Place::File { line, column },
            });
            this.left_out.push(path.to_string());
            None
        };
        match value.into_inner() {
            DeValue::Integer(i) => {
                match i64::from_str_radix(i.as_str(), i.radix()) {
                    Ok(n) => Some(Json::from(n)),
                    Err(_) => {
                        let (what, bound) = if i.as_str().starts_with('-') {
                            ("small", format!("down to {}", i64::MIN))
                        } else {
                            ("large", format!("up to {}", i64::MAX))
                        };
                        let written = written();
                        refuse(
                        self,
                        format!("{written} is too {what} for any setting (whole numbers go {bound})"),
                    )
                    }
                }
            }
            DeValue::Float(f) => match f
                .as_str()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                Some(n) => Some(Json::Number(n)),
                None => refuse(
                    self,
                    format!(
                        "{} is not a finite number; every number in the config must be finite",
                        written()
                    ),
                ),
            },
            DeValue::String(s) => Some(Json::String(s.to_string())),
            DeValue::Boolean(b) => Some(Json::Bool(b)),
            // Dates and times are read as written (`holidays = [2026-12-25]`, `start = 06:00`).
            DeValue::Datetime(_) => Some(Json::String(written())),
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (n, item) in items.into_iter().enumerate() {
                    let child = format!("{path}[{n}]");
                    self.note(&child, None, &item.span(), Some(item.get_ref()));
                    // An item left out stays as a hole, so the others keep their index.
                    out.push(self.value(item, &child).unwrap_or(Json::Null));
                }
                Some(Json::Array(out))
            }
            DeValue::Table(t) => Some(self.table(t, path)),
        }
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
        let tree = parse(text).unwrap();
        let issues = tree.issues;
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
        let of = |key: &str| issues.iter().find(|i| i.key == key).unwrap().clone();
        assert_eq!(
            of("bus[0].timeout_ms").place,
            Place::File {
                line: 3,
                column: 14
            }
        );
        assert!(of("bus[0].delay_ms").message.contains("too small"));
        assert!(of("machine[0].orders.quantity.max")
            .message
            .contains("inf is not a finite number"));
        // Left out of the tree; the array keeps its other item in place.
        assert!(tree.value["bus"][0].get("timeout_ms").is_none());
        assert_eq!(
            tree.value["machine"][1]["x"],
            serde_json::json!([1.0, null])
        );
        let dates = parse("d = [2026-12-25]\nt = 06:00\n").unwrap().value;
        assert_eq!(
            dates,
            serde_json::json!({"d": ["2026-12-25"], "t": "06:00"})
        );
    }

    #[test]
    fn every_syntax_error_is_placed() {
        let issues = parse("[gateway]\nid = \"a\"\nid = \"b\"\n[bus\n").unwrap_err();
        assert!(issues.len() >= 2, "{issues:?}");
        assert_eq!(issues[0].place, Place::File { line: 3, column: 1 });
        assert!(issues[0].message.contains("duplicate key"), "{issues:?}");
    }

    #[test]
    fn keys_values_and_array_tables_are_placed() {
        let text = "[gateway]\nid = \"g\"\n\n[[machine]]\nid = \"m\"\n[[machine.signal]]\nname = \"a\"\ntype = \"uint32\"\n";
        let p = parse(text).unwrap().places;
        assert_eq!(
            p.place("machine[0].signal[0].type", true),
            Place::File { line: 8, column: 1 }
        );
        assert_eq!(
            p.place("machine[0].signal[0].type", false),
            Place::File { line: 8, column: 8 }
        );
        assert_eq!(p.written("machine[0].signal[0].type"), Some("\"uint32\""));
        // Not in the file: its nearest ancestor.
        assert_eq!(
            p.place("machine[0].signal[0].scale", true),
            p.place("machine[0].signal[0]", false)
        );
        assert!(matches!(
            p.place("machine[0]", false),
            Place::File { line: 4 | 5, .. }
        ));
    }

    #[test]
    fn positions_of_the_walk_are_those_of_line_column() {
        let text = "a = 1\n\n[t]\nä = \"é\"\nb = [1,\n  2]\n";
        let walk = Walk {
            text,
            line_starts: line_starts(text),
            spots: None,
            issues: Vec::new(),
            left_out: Vec::new(),
        };
        for offset in 0..=text.len() {
            if text.is_char_boundary(offset) {
                assert_eq!(
                    walk.position(offset),
                    line_column(text.as_bytes(), offset),
                    "{offset}"
                );
            }
        }
    }

    #[test]
    fn environment_values_are_toml_or_text() {
        assert_eq!(env_value("5").unwrap(), serde_json::json!(5));
        assert_eq!(
            env_value("gw-line3").unwrap(),
            serde_json::json!("gw-line3")
        );
        assert_eq!(env_value("[1, 2]").unwrap(), serde_json::json!([1, 2]));
        assert_eq!(env_value("06:00").unwrap(), serde_json::json!("06:00"));
        assert!(env_value("nan")
            .unwrap_err()
            .contains("not a finite number"));
    }

    /// A line of `n` machines, each with two signals and a state table,
    /// with `before` at the top of the file and `after` at its end.
    fn line_of(n: usize, before: &str, after: &str) -> String {
        let mut text = format!("{before}\n[gateway]\nid = \"gw\"\n\n[[bus]]\nid = \"b\"\n");
        for i in 0..n {
            text.push_str(&format!(
                "\n[[machine]] # number {i}\nid = \"m{i}\"\nbus = \"b\"\n\
                 [machine.state]\nrunning = \"speed > 0\"\n\
                 [[machine.signal]]\nname = \"speed\"\naddress = {i}\nscale = 0.5\n\
                 [[machine.signal]]\nname = \"count\"\naddress = {}\nwhen = 2026-12-01T06:00:00Z\n",
                i + 1
            ));
        }
        text.push_str(after);
        text
    }

    #[test]
    fn a_long_file_read_by_machine_is_the_file_read_whole() {
        for (before, after) in [
            ("", ""),
            (
                "# a line",
                "\n[uplink]\nurl = \"mqtt://x\"\n[uplink.tls]\nca = \"a\"\n",
            ),
            ("[store]\nreserve_mb = 1", "\n[[shift]]\nname = \"early\"\n"),
        ] {
            let text = line_of(20, before, after);
            let by_machine = parse_by_piece(&text).expect("read by machine");
            let whole = parse_whole(&text).unwrap().value;
            assert_eq!(by_machine, whole, "{before:?} {after:?}");
            assert_eq!(by_machine["machine"].as_array().unwrap().len(), 20);
            assert_eq!(by_machine["machine"][19]["signal"][1]["address"], 20);
            assert_eq!(
                by_machine["machine"][19]["signal"][1]["when"],
                "2026-12-01T06:00:00Z"
            );
            assert_eq!(parse(&text).unwrap().value, by_machine);
        }
        // Written on Windows: CRLF line ends read the same by piece.
        let crlf = line_of(12, "# a line", "").replace('\n', "\r\n");
        assert_eq!(
            parse_by_piece(&crlf).expect("read by piece"),
            parse_whole(&crlf).unwrap().value
        );
        // A file that begins with its first machine.
        let text = line_of(12, "", "");
        let text = &text[text.find("[[machine]]").unwrap()..];
        assert_eq!(
            parse_by_piece(text).expect("read by machine"),
            parse_whole(text).unwrap().value
        );
    }

    #[test]
    fn what_the_pieces_might_misread_is_read_whole() {
        // A `[[machine]]` line inside a multi-line string, basic or literal.
        let text = line_of(10, "note = \"\"\"\n[[machine]]\n\"\"\"", "");
        assert_eq!(parse_by_piece(&text), None);
        assert_eq!(parse(&text).unwrap().value["note"], "[[machine]]\n");
        let text = line_of(10, "", "\nnote = '''\n[[machine]]\nid = 'x'\n'''\n");
        assert_eq!(parse_by_piece(&text), None);
        let whole = parse(&text).unwrap().value;
        assert_eq!(whole["machine"].as_array().unwrap().len(), 10);
        assert_eq!(
            whole["machine"][9]["signal"][1]["note"],
            "[[machine]]\nid = 'x'\n"
        );
        // A table two pieces define: TOML's error, placed in the whole file.
        let text = line_of(10, "[uplink]\nurl = \"a\"", "\n[uplink]\nurl = \"b\"\n");
        assert_eq!(parse_by_piece(&text), None);
        let issues = parse(&text).unwrap_err();
        assert!(
            matches!(issues[0].place, Place::File { line, .. } if line > 100),
            "{issues:?}"
        );
        // A table the last piece extends: legal TOML, read whole.
        let text = line_of(10, "[uplink]\nurl = \"a\"", "\n[uplink.tls]\nca = \"c\"\n");
        assert_eq!(parse_by_piece(&text), None);
        assert_eq!(parse(&text).unwrap().value["uplink"]["tls"]["ca"], "c");
        // `machine` defined before the first `[[machine]]`.
        let text = line_of(10, "machine = []", "");
        assert_eq!(parse_by_piece(&text), None);
        assert!(parse(&text).is_err());
        // A number the config cannot hold: its key path counts the machines
        // of the whole file.
        let text = line_of(10, "", "").replace("address = 7\n", "address = 99999999999999999999\n");
        assert_eq!(parse_by_piece(&text), None);
        let tree = parse(&text).unwrap();
        assert_eq!(tree.issues[0].key, "machine[6].signal[1].address");
        // A syntax error in the ninth machine: placed in the whole file.
        let text = line_of(10, "", "").replace("id = \"m8\"", "id = \"m8");
        assert_eq!(parse_by_piece(&text), None);
        let line = text.lines().position(|l| l == "id = \"m8").unwrap() + 1;
        let issues = parse(&text).unwrap_err();
        assert!(
            matches!(issues[0].place, Place::File { line: l, .. } if l == line),
            "{issues:?}"
        );
        // `bus = [...]`, then `[[bus]]`: TOML's error.
        let text = line_of(10, "bus = [{ id = \"a\" }]", "");
        assert_eq!(parse_by_piece(&text), None);
        assert!(parse(&text).is_err());
        // A machine's table after the next bus: legal TOML, read whole.
        let text = line_of(10, "", "\n[[bus]]\nid = \"c\"\n[machine.orders]\nmax = 1\n");
        assert_eq!(parse_by_piece(&text), None);
        assert_eq!(
            parse(&text).unwrap().value["machine"][9]["orders"]["max"],
            1
        );
        // A short file is read whole (a bus, then the machines).
        assert_eq!(parse_by_piece(&line_of(PIECES_FROM - 2, "", "")), None);
        assert!(parse_by_piece(&line_of(PIECES_FROM - 1, "", "")).is_some());
    }

    #[test]
    fn the_shipped_configs_read_by_piece_are_the_files_read_whole() {
        for text in [
            include_str!("../../configs/linegate.toml"),
            include_str!("../../configs/demo.toml"),
        ] {
            let whole = parse_whole(text).unwrap().value;
            if let Some(by_piece) = parse_by_piece(text) {
                assert_eq!(by_piece, whole);
            }
            assert_eq!(parse(text).unwrap().value, whole);
        }
    }

    #[test]
    fn buses_and_machines_taking_turns_are_read_by_piece() {
        let mut text = String::from("[gateway]\nid = \"gw\"\n");
        for i in 0..30 {
            text.push_str(&format!(
                "\n[[bus]]\nid = \"b{i}\"\naddress = \"127.0.0.1:{}\"\n\
                 \n[[machine]]\nid = \"m{i}\"\nbus = \"b{i}\"\n\
                 [[machine.signal]]\nname = \"r0\"\naddress = 0\n",
                20000 + i
            ));
        }
        text.push_str("\n[uplink]\nurl = \"mqtt://127.0.0.1:1883\"\n");
        let by_piece = parse_by_piece(&text).expect("read by piece");
        assert_eq!(by_piece, parse_whole(&text).unwrap().value);
        assert_eq!(by_piece["bus"][29]["id"], "b29");
        assert_eq!(by_piece["machine"][29]["signal"][0]["name"], "r0");
    }
}
