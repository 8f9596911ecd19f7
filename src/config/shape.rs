//! Reading the typed config out of the file's tree, with *every* shape
//! problem found in one go: unknown keys, values of the wrong type, names
//! that are not allowed, required keys that are missing. serde stops at the
//! first problem; this reads again after taking the bad key out (or, for a
//! required key, putting a stand-in value there, whose own problems are not
//! reported), until the config reads. Each problem is said in the
//! technician's words, with the nearest allowed name (`strsim`) for a typo.
//! Pure: a tree in, a config and problems out.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::env::{path_string, pointer, pointer_mut, Applied, Step};
use super::raw::Places;
use super::{Config, ConfigIssue, Place};

/// Most times the tree is read again; more problems than this in one file
/// are not all listed (a file that bad is not a config).
const MAX_READS: usize = 400;

/// What reading the tree gave.
#[derive(Debug)]
pub struct Shaped {
    /// `None` when a problem left no way to read the rest.
    pub config: Option<Config>,
    pub issues: Vec<ConfigIssue>,
    /// Key paths whose value in `config` is not the file's (left out or
    /// stood in for): other checks of these keys would only repeat a problem.
    pub silenced: Vec<String>,
}

/// Stand-ins for a required key that could not be read, tried in turn.
fn stand_in(n: usize) -> Option<Json> {
    Some(match n {
        0 => Json::String(String::new()),
        1 => Json::from(0),
        2 => Json::Bool(false),
        3 => Json::Array(Vec::new()),
        4 => Json::Object(Default::default()),
        _ => return None,
    })
}

/// Is `path` `under` or below it?
pub fn is_under(path: &str, under: &str) -> bool {
    path == under
        || path
            .strip_prefix(under)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

pub fn read(mut tree: Json, places: &Places, env: &[Applied], silenced: Vec<String>) -> Shaped {
    let mut out = Shaped {
        config: None,
        issues: Vec::new(),
        silenced,
    };
    // Key path -> which stand-in it has now.
    let mut standing: HashMap<String, usize> = HashMap::new();
    for _ in 0..MAX_READS {
        // From the tree by reference: a copy to consume was as big as the
        // tree, and the config's values were made in the holes the copy
        // left as it went, so the config lay spread over pages that could
        // not go back (at 1000 machines the RSS went 50.8 -> 35.9 MB with
        // this alone: BENCHMARKS.md, "Uplink cost", round 5).
        let err = match serde_path_to_error::deserialize::<_, Config>(&tree) {
            Ok(config) => {
                out.config = Some(config);
                return out;
            }
            Err(e) => e,
        };
        let Some(path) = steps(err.path()) else {
            out.issues.push(plain_issue(
                err.path().to_string(),
                err.into_inner().to_string(),
            ));
            return out;
        };
        let message = err.into_inner().to_string();
        let complaint = Complaint::parse(&message);
        let quiet = |p: &str, out: &Shaped| out.silenced.iter().any(|s| is_under(p, s));
        match &complaint {
            Complaint::UnknownKey { key, allowed } => {
                // The path is the table's, or the unknown key's own.
                let table = match pointer(&tree, &path) {
                    Some(Json::Object(m)) if m.contains_key(key) => path.clone(),
                    _ if path.last() == Some(&Step::Key(key.clone())) => {
                        path[..path.len() - 1].to_vec()
                    }
                    _ => path.clone(),
                };
                let at = join(&table, key);
                let removed = match pointer_mut(&mut tree, &table) {
                    Some(Json::Object(m)) => m.remove(key).is_some(),
                    _ => false,
                };
                if !quiet(&at, &out) {
                    let table_name = path_string(&table);
                    let where_ = if table_name.is_empty() {
                        "at the top level".to_string()
                    } else {
                        format!("in `{table_name}`")
                    };
                    let mut msg = format!("unknown key `{key}` {where_}");
                    match nearest(key, allowed) {
                        Some(near) => msg.push_str(&format!("; did you mean `{near}`?")),
                        None if !allowed.is_empty() => {
                            msg.push_str(&format!("; keys allowed here: {}", allowed.join(", ")))
                        }
                        None => {}
                    }
                    out.issues.push(issue(places, env, &at, msg, true));
                }
                if !removed {
                    return out;
                }
            }
            Complaint::Missing { key } => {
                let at = join(&path, key);
                if !quiet(&at, &out) {
                    let mut missing =
                        issue(places, env, &at, "is required, and missing".into(), false);
                    // Placed where its table starts.
                    missing.place = place(places, env, &path_string(&path), false);
                    out.issues.push(missing);
                    out.silenced.push(at.clone());
                }
                standing.insert(at.clone(), 0);
                let Some(Json::Object(m)) = pointer_mut(&mut tree, &path) else {
                    return out;
                };
                m.insert(key.clone(), stand_in(0).unwrap_or(Json::Null));
            }
            _ => {
                let at = path_string(&path);
                // A number (or list) given by the environment where the key takes text.
                if let Some(a) = env.iter().find(|a| a.path == at) {
                    let slot = pointer_mut(&mut tree, &path);
                    if complaint.expects_text() {
                        if let Some(slot) = slot.filter(|s| !s.is_string()) {
                            *slot = Json::String(a.raw.clone());
                            continue;
                        }
                    }
                }
                if let Some(n) = standing.get(&at).copied() {
                    // The stand-in was not the right kind: the next one.
                    let next = match &complaint {
                        Complaint::UnknownVariant { allowed, .. } if !allowed.is_empty() => {
                            // A guessed name: what else that entry says is not checked.
                            out.silenced.push(super::raw::parent_path(&at).to_string());
                            Some(Json::String(allowed[0].clone()))
                        }
                        _ => stand_in(n + 1),
                    };
                    let (Some(next), Some(slot)) = (next, pointer_mut(&mut tree, &path)) else {
                        return out;
                    };
                    *slot = next;
                    standing.insert(at, n + 1);
                    continue;
                }
                if !quiet(&at, &out) {
                    let key = at.rsplit('.').next().unwrap_or(&at);
                    let shown = match env.iter().find(|a| a.path == at) {
                        Some(a) => Some(format!("`{}={}`", a.variable, a.raw)),
                        None if at.ends_with(']') => places.written(&at).map(|w| format!("`{w}`")),
                        None => places.written(&at).map(|w| format!("`{key} = {w}`")),
                    };
                    let msg = complaint.explain(&at, shown);
                    out.issues.push(issue(places, env, &at, msg, false));
                }
                out.silenced.push(at.clone());
                match path.last() {
                    // A key: left out, so its default applies (or, if it
                    // is required, a stand-in on the next read).
                    Some(Step::Key(k)) => {
                        let parent = &path[..path.len() - 1];
                        let Some(Json::Object(m)) = pointer_mut(&mut tree, parent) else {
                            return out;
                        };
                        m.remove(k);
                    }
                    // An item of a list keeps its place with a stand-in.
                    Some(Step::Index(_)) => {
                        standing.insert(at, 0);
                        let (Some(slot), Some(first)) =
                            (pointer_mut(&mut tree, &path), stand_in(0))
                        else {
                            return out;
                        };
                        *slot = first;
                    }
                    None => return out,
                }
            }
        }
    }
    out
}

fn join(table: &[Step], key: &str) -> String {
    let mut p = table.to_vec();
    p.push(Step::Key(key.to_string()));
    path_string(&p)
}

fn steps(path: &serde_path_to_error::Path) -> Option<Vec<Step>> {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|s| match s {
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Map { key } | Segment::Enum { variant: key } => Some(Step::Key(key.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

fn plain_issue(key: String, message: String) -> ConfigIssue {
    ConfigIssue {
        key: if key == "." {
            "(top level)".into()
        } else {
            key
        },
        message,
        place: Place::Unknown,
    }
}

/// An issue about `key`, placed: by the environment variable that set it,
/// else where the file has it (its key when `key_first`, else its value).
pub fn issue(
    places: &Places,
    env: &[Applied],
    key: &str,
    message: String,
    key_first: bool,
) -> ConfigIssue {
    ConfigIssue {
        key: if key.is_empty() {
            "(top level)".into()
        } else {
            key.to_string()
        },
        message,
        place: place(places, env, key, key_first),
    }
}

pub fn place(places: &Places, env: &[Applied], key: &str, key_first: bool) -> Place {
    match env.iter().find(|a| is_under(key, &a.path)) {
        Some(a) => Place::Env {
            variable: a.variable.clone(),
        },
        None => places.place(key, key_first),
    }
}

/// The allowed name nearest to `given`, if it is near enough to be a typo.
pub fn nearest(given: &str, allowed: &[String]) -> Option<String> {
    let given = given.to_lowercase();
    // One inside the other, letters in order: `uint32` holds `u32`.
    let within = |a: &str, b: &str| {
        let mut rest = b.chars();
        a.len() >= 2 && a.chars().all(|c| rest.any(|d| d == c))
    };
    allowed
        .iter()
        .map(|a| {
            let a_low = a.to_lowercase();
            let score = strsim::jaro_winkler(&given, &a_low);
            let near = score >= 0.8 || within(&a_low, &given) || within(&given, &a_low);
            // The same first letter counts most: a typo rarely starts wrong.
            let same_start = given.chars().next() == a_low.chars().next();
            let rank = score + if same_start { 1.0 } else { 0.0 };
            (if near { rank } else { 0.0 }, a)
        })
        .filter(|(score, _)| *score > 0.0)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, a)| a.clone())
}

/// serde's message, taken apart.
#[derive(Debug, PartialEq)]
enum Complaint {
    UnknownKey {
        key: String,
        allowed: Vec<String>,
    },
    UnknownVariant {
        value: String,
        allowed: Vec<String>,
    },
    Missing {
        key: String,
    },
    /// `invalid type` (`got` a string, `expected` u64) or `invalid value` (out of range).
    Wrong {
        range: bool,
        got: String,
        expected: String,
    },
    Other(String),
}

/// The names between backticks in `text`.
fn ticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

impl Complaint {
    fn parse(message: &str) -> Complaint {
        let first = |rest: &str| ticked(rest).into_iter().next().unwrap_or_default();
        let allowed = |rest: &str| match rest.split_once(", expected") {
            Some((_, list)) => ticked(list),
            None => Vec::new(),
        };
        if let Some(rest) = message.strip_prefix("unknown field ") {
            return Complaint::UnknownKey {
                key: first(rest),
                allowed: allowed(rest),
            };
        }
        if let Some(rest) = message.strip_prefix("unknown variant ") {
            return Complaint::UnknownVariant {
                value: first(rest),
                allowed: allowed(rest),
            };
        }
        if let Some(rest) = message.strip_prefix("missing field ") {
            return Complaint::Missing { key: first(rest) };
        }
        for (prefix, range) in [("invalid type: ", false), ("invalid value: ", true)] {
            if let Some((got, expected)) = message
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_once(", expected "))
            {
                return Complaint::Wrong {
                    range,
                    got: got.to_string(),
                    expected: expected.to_string(),
                };
            }
        }
        Complaint::Other(message.to_string())
    }

    fn expects_text(&self) -> bool {
        matches!(self, Complaint::Wrong { expected, .. } if expected.contains("string"))
    }

    /// The problem in the technician's words, for the value at `path`
    /// (`shown` as the file or the environment has it: `` `poll_ms = "5"` ``).
    fn explain(&self, path: &str, shown: Option<String>) -> String {
        let field = path
            .rsplit(['.', '['])
            .next()
            .unwrap_or(path)
            .trim_end_matches(']');
        let field = if field.chars().all(|c| c.is_ascii_digit()) {
            format!("each item of `{}`", super::raw::parent_path(path))
        } else {
            format!("`{field}`")
        };
        let shown = |fallback: &str| shown.clone().unwrap_or_else(|| fallback.to_string());
        match self {
            Complaint::UnknownVariant { value, allowed } => {
                let what = variant_noun(path);
                let mut msg = format!("{} is not {what}", shown(&format!("{value:?}")));
                match nearest(value, allowed) {
                    Some(near) => msg.push_str(&format!("; did you mean `{near}`?")),
                    None => msg.push_str(&format!("; use one of: {}", allowed.join(", "))),
                }
                msg
            }
            Complaint::Wrong {
                range,
                got,
                expected,
            } => {
                if got == "map" && expected == "a sequence" {
                    let name = path.rsplit('.').next().unwrap_or(path);
                    return format!(
                        "{field} is a list of tables: write each entry as [[{name}]] (two brackets), not [{name}]"
                    );
                }
                let takes = expected_words(expected);
                if *range {
                    return format!(
                        "{} does not fit: {field} takes {takes}",
                        shown(&got_words(got))
                    );
                }
                let mut msg = format!(
                    "{} is {}, but {field} takes {takes}",
                    shown("the value"),
                    got_words(got)
                );
                let unquoted = got
                    .strip_prefix("string \"")
                    .and_then(|s| s.strip_suffix('"'))
                    .is_some_and(|s| {
                        s.trim().parse::<f64>().is_ok() || s == "true" || s == "false"
                    });
                if unquoted && !expected.contains("string") {
                    msg.push_str(": write it without quotes");
                } else if expected.starts_with("enum") || expected.contains("string") {
                    msg.push_str(": write it in quotes");
                }
                msg
            }
            Complaint::UnknownKey { key, .. } => format!("unknown key `{key}`"),
            Complaint::Missing { key } => format!("`{key}` is missing"),
            Complaint::Other(m) => m.clone(),
        }
    }
}

/// What a name-valued key is, for "is not ...".
fn variant_noun(path: &str) -> &'static str {
    let field = path.rsplit('.').next().unwrap_or(path);
    match field {
        "type" if path.contains(".signal[") => "a signal type",
        "type" => "a register type",
        "area" => "a Modbus area",
        "transport" => "a bus transport",
        "parity" => "a parity",
        "word_order" | "byte_order" => "an order (big or little)",
        "retained" => "a way to use retained messages",
        "protocol" => "an MQTT protocol version",
        _ => "an allowed value",
    }
}

/// serde's "expected ..." as the technician would say it.
fn expected_words(expected: &str) -> String {
    match expected {
        "u8" => "a whole number 0..=255".into(),
        "u16" => "a whole number 0..=65535".into(),
        "u32" => "a whole number 0..=4294967295".into(),
        "u64" => "a whole number, 0 or more".into(),
        "i64" | "i32" => "a whole number".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" => "text in quotes".into(),
        "a sequence" => "a list, e.g. [\"a\", \"b\"]".into(),
        "a map" => "a table".into(),
        e if e.starts_with("struct ") => "a table ([section] or { key = value })".into(),
        e if e.starts_with("enum ") || e.contains("variant") || e == "string or map" => {
            "one of its names, in quotes".into()
        }
        e => e.to_string(),
    }
}

/// serde's "invalid type: ..." as the technician would say it.
fn got_words(got: &str) -> String {
    let value = || ticked(got).into_iter().next();
    if let Some(s) = got.strip_prefix("string ") {
        format!("text {s}")
    } else if got.starts_with("integer") || got.starts_with("floating point") {
        match value() {
            Some(v) => format!("the number {v}"),
            None => "a number".into(),
        }
    } else if got.starts_with("boolean") {
        value().unwrap_or_else(|| "true or false".into())
    } else if got == "sequence" {
        "a list".into()
    } else if got == "map" {
        "a table".into()
    } else if got == "null" {
        "nothing".into()
    } else {
        got.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_are_taken_apart() {
        assert_eq!(
            Complaint::parse("unknown field `typ`, expected one of `name`, `type`"),
            Complaint::UnknownKey {
                key: "typ".into(),
                allowed: vec!["name".into(), "type".into()]
            }
        );
        assert_eq!(
            Complaint::parse("unknown variant `x`, expected `a` or `b`"),
            Complaint::UnknownVariant {
                value: "x".into(),
                allowed: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            Complaint::parse("missing field `id`"),
            Complaint::Missing { key: "id".into() }
        );
    }

    #[test]
    fn a_near_miss_gets_the_nearest_name_and_a_far_one_none() {
        let types: Vec<String> = ["bool", "u16", "i16", "u32", "i32", "u64", "f32", "string"]
            .map(String::from)
            .to_vec();
        assert_eq!(nearest("uint32", &types).as_deref(), Some("u32"));
        assert_eq!(nearest("Bool", &types).as_deref(), Some("bool"));
        assert_eq!(nearest("float", &types), None);
        let keys: Vec<String> = ["name", "area", "address", "type"]
            .map(String::from)
            .to_vec();
        assert_eq!(nearest("adress", &keys).as_deref(), Some("address"));
        assert_eq!(nearest("typ", &keys).as_deref(), Some("type"));
    }

    #[test]
    fn a_wrong_type_is_said_with_the_value_as_written() {
        let c = Complaint::parse("invalid type: string \"500\", expected u64");
        let m = c.explain("machine[0].poll_ms", Some("`poll_ms = \"500\"`".into()));
        assert_eq!(
            m,
            "`poll_ms = \"500\"` is text \"500\", but `poll_ms` takes a whole number, 0 or more: write it without quotes"
        );
        let c = Complaint::parse("invalid value: integer `70000`, expected u16");
        let m = c.explain(
            "machine[0].signal[1].address",
            Some("`address = 70000`".into()),
        );
        assert!(
            m.contains("`address = 70000` does not fit") && m.contains("0..=65535"),
            "{m}"
        );
        let c = Complaint::parse(
            "unknown variant `uint32`, expected one of `bool`, `u16`, `u32`, `string`",
        );
        assert_eq!(
            c.explain(
                "machine[0].signal[0].type",
                Some("`type = \"uint32\"`".into())
            ),
            "`type = \"uint32\"` is not a signal type; did you mean `u32`?"
        );
    }
}
