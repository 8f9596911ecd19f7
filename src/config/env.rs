//! Environment overrides: `LINEGATE_<SECTION>__<KEY>=value` sets one key of
//! the file before it is read, e.g. `LINEGATE_GATEWAY__ID=gw-line3`. Keys
//! are matched without regard to case (environment names are upper case,
//! config keys lower case). Inside a list of tables (`[[machine]]`,
//! `[[bus]]`, `[[machine.signal]]`, `[[shifts.shift]]`) the entry is named
//! by its `id` (or, for signals and shifts, its `name`), with `-` and `.`
//! written as `_`: `LINEGATE_MACHINE__PRESS07__POLL_MS=500`,
//! `LINEGATE_MACHINE__PRESS07__SIGNAL__PART_COUNT__ADDRESS=101`. An override
//! only changes entries the file has; it cannot add a machine or a bus.
//!
//! The value is read as TOML when it is one (`500`, `true`, `["2026-12-25"]`,
//! `"quoted text"`) and as plain text otherwise (`gw-line3`); a number where
//! the key takes text is taken as its text. An empty value is no override.
//! Every problem names the variable. Pure: the variables are given to it.

use serde_json::Value as Json;

use super::raw::env_value;
use super::{ConfigIssue, Place, ENV_PREFIX};

/// One override applied to the tree.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The key path it set, e.g. `machine[0].poll_ms`.
    pub path: String,
    pub variable: String,
    /// The value as given.
    pub raw: String,
}

/// Keys whose value is a list of tables, each named by its id or name.
const LISTS_OF_TABLES: [&str; 5] = ["bus", "machine", "signal", "shift", "break"];

/// Apply `vars` (name, value) to `tree`, in name order. Returns what was
/// applied and every override that could not be.
pub fn apply(tree: &mut Json, vars: &[(String, String)]) -> (Vec<Applied>, Vec<ConfigIssue>) {
    let mut vars: Vec<&(String, String)> = vars.iter().collect();
    vars.sort();
    let mut applied = Vec::new();
    let mut issues = Vec::new();
    for (variable, raw) in vars {
        if raw.is_empty() {
            continue;
        }
        let Some(rest) = variable
            .strip_prefix(ENV_PREFIX)
            .and_then(|r| r.strip_prefix('_'))
        else {
            continue;
        };
        let segments: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        let issue = |key: &str, message: String| ConfigIssue {
            key: if key.is_empty() {
                "(top level)".into()
            } else {
                key.to_string()
            },
            message,
            place: Place::Env {
                variable: variable.clone(),
            },
        };
        // Tables made on the way stay only if the override is used.
        let before = tree.clone();
        match set(tree, &segments, variable) {
            Ok(path) => match env_value(raw) {
                Ok(value) => {
                    if let Some(slot) = pointer_mut(tree, &path) {
                        *slot = value;
                    }
                    applied.push(Applied {
                        path: path_string(&path),
                        variable: variable.clone(),
                        raw: raw.clone(),
                    });
                }
                Err(message) => {
                    *tree = before;
                    issues.push(issue(&path_string(&path), message));
                }
            },
            Err((key, message)) => {
                *tree = before;
                issues.push(issue(&key, message));
            }
        }
    }
    (applied, issues)
}

/// One step of a key path in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

pub fn path_string(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Key(k) if s.is_empty() => s.push_str(k),
            Step::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

pub fn pointer_mut<'a>(mut node: &'a mut Json, path: &[Step]) -> Option<&'a mut Json> {
    for step in path {
        node = match (step, node) {
            (Step::Key(k), Json::Object(m)) => m.get_mut(k)?,
            (Step::Index(i), Json::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

pub fn pointer<'a>(mut node: &'a Json, path: &[Step]) -> Option<&'a Json> {
    for step in path {
        node = match (step, node) {
            (Step::Key(k), Json::Object(m)) => m.get(k)?,
            (Step::Index(i), Json::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// How an entry of a list is named in a variable: its id, upper case, `-` and `.` as `_`.
fn env_name(id: &str) -> String {
    id.to_uppercase().replace(['-', '.'], "_")
}

/// The id (or name) of a table in a list.
fn entry_id(entry: &Json) -> Option<&str> {
    entry
        .get("id")
        .or_else(|| entry.get("name"))
        .and_then(Json::as_str)
}

/// Walk `segments` down `tree`, creating tables where the file has none;
/// the path of the key to set, or (key path, why not).
fn set(
    tree: &mut Json,
    segments: &[String],
    variable: &str,
) -> Result<Vec<Step>, (String, String)> {
    let mut path: Vec<Step> = Vec::new();
    let mut node = tree;
    let mut n = 0;
    while n < segments.len() {
        let seg = &segments[n];
        let last = n + 1 == segments.len();
        let here = path_string(&path);
        node = match node {
            Json::Object(map) => {
                let key = map
                    .keys()
                    .find(|k| k.to_lowercase() == *seg)
                    .cloned()
                    .unwrap_or_else(|| seg.clone());
                let is_list = LISTS_OF_TABLES.contains(&key.as_str());
                path.push(Step::Key(key.clone()));
                if last {
                    map.entry(key).or_insert(Json::Null);
                    return Ok(path);
                }
                let empty = if is_list {
                    Json::Array(Vec::new())
                } else {
                    Json::Object(Default::default())
                };
                map.entry(key).or_insert(empty)
            }
            Json::Array(items) => {
                let wanted = seg.replace(['-', '.'], "_");
                let matches: Vec<usize> = items
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        entry_id(e).is_some_and(|id| {
                            id.to_lowercase() == *seg
                                || id.to_lowercase().replace(['-', '.'], "_") == wanted
                        })
                    })
                    .map(|(i, _)| i)
                    .collect();
                let ids: Vec<&str> = items.iter().filter_map(entry_id).collect();
                let before = variable
                    .rsplitn(segments.len() - n + 1, "__")
                    .last()
                    .unwrap_or(variable);
                // Ending here, the segment is a key (`MACHINE__POLL_MS`); with
                // more after it, a mistyped id (`MACHINE__PRESS08__POLL_MS`).
                let skip = if last { n } else { n + 1 };
                let after: Vec<String> =
                    segments[skip..].iter().map(|s| s.to_uppercase()).collect();
                match matches.as_slice() {
                    [i] => {
                        path.push(Step::Index(*i));
                        if last {
                            return Err((
                                path_string(&path),
                                format!(
                                    "names a whole entry of `{here}`, not one of its keys: add the key, e.g. {variable}__POLL_MS"
                                ),
                            ));
                        }
                        &mut items[*i]
                    }
                    [] => {
                        let example = match ids.first() {
                            Some(id) => format!("{before}__{}__{}", env_name(id), after.join("__")),
                            None => format!("{before}__<ID>__{}", after.join("__")),
                        };
                        let listed = if ids.is_empty() {
                            "the file has none".to_string()
                        } else {
                            format!("ids in the file: {}", ids.join(", "))
                        };
                        let message = if last {
                            format!(
                                "`{here}` is a list ([[{here}]]): name the entry by its id, e.g. {example} ({listed})"
                            )
                        } else {
                            format!(
                                "no entry of `{here}` has the id {seg:?} ({listed}): name an entry by its id, e.g. {example}; an override cannot add an entry"
                            )
                        };
                        return Err((here.clone(), message));
                    }
                    several => {
                        let names: Vec<&str> =
                            several.iter().filter_map(|i| entry_id(&items[*i])).collect();
                        return Err((
                            here.clone(),
                            format!(
                                "{seg:?} names more than one entry of `{here}` ({}): give them ids that differ in more than case, '-' or '.'",
                                names.join(", ")
                            ),
                        ));
                    }
                }
            }
            _ => {
                return Err((
                    here.clone(),
                    format!("`{here}` is a single value, not a section: {variable} cannot set a key inside it"),
                ))
            }
        };
        n += 1;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tree() -> Json {
        json!({
            "gateway": {"id": "gw"},
            "machine": [
                {"id": "press07", "signal": [{"name": "part_count", "address": 100}]},
                {"id": "oven-2"}
            ]
        })
    }

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_section_key_is_set_with_its_value_read_as_toml() {
        let mut t = tree();
        let (applied, issues) = apply(
            &mut t,
            &vars(&[
                ("LINEGATE_GATEWAY__ID", "gw-line3"),
                ("LINEGATE_STORE__RESERVE_MB", "0"),
            ]),
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(t["gateway"]["id"], "gw-line3");
        assert_eq!(t["store"]["reserve_mb"], 0);
        assert_eq!(applied[0].path, "gateway.id");
    }

    #[test]
    fn entries_of_a_list_are_named_by_their_id() {
        let mut t = tree();
        let (applied, issues) = apply(
            &mut t,
            &vars(&[
                ("LINEGATE_MACHINE__PRESS07__POLL_MS", "250"),
                ("LINEGATE_MACHINE__OVEN_2__UNIT", "3"),
                (
                    "LINEGATE_MACHINE__PRESS07__SIGNAL__PART_COUNT__ADDRESS",
                    "101",
                ),
            ]),
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(t["machine"][0]["poll_ms"], 250);
        assert_eq!(t["machine"][1]["unit"], 3);
        assert_eq!(t["machine"][0]["signal"][0]["address"], 101);
        let paths: Vec<&str> = applied.iter().map(|a| a.path.as_str()).collect();
        assert!(paths.contains(&"machine[0].signal[0].address"), "{paths:?}");
    }

    #[test]
    fn a_list_key_without_an_entry_id_is_refused_with_an_example() {
        let mut t = tree();
        let (applied, issues) = apply(&mut t, &vars(&[("LINEGATE_MACHINE__POLL_MS", "5")]));
        assert!(applied.is_empty());
        assert_eq!(issues.len(), 1);
        let i = &issues[0];
        assert_eq!(
            i.place,
            Place::Env {
                variable: "LINEGATE_MACHINE__POLL_MS".into()
            }
        );
        assert!(
            i.message.contains("LINEGATE_MACHINE__PRESS07__POLL_MS"),
            "{}",
            i.message
        );
        assert!(i.message.contains("press07, oven-2"), "{}", i.message);
        assert_eq!(t, tree(), "nothing changed");
    }

    #[test]
    fn an_override_cannot_reach_inside_a_value_or_add_an_entry() {
        let mut t = tree();
        let (_, issues) = apply(
            &mut t,
            &vars(&[
                ("LINEGATE_GATEWAY__ID__X", "1"),
                ("LINEGATE_BUS__CELL_A__ADDRESS", "x:502"),
                ("LINEGATE_MACHINE__PRESS07", "1"),
            ]),
        );
        assert_eq!(issues.len(), 3, "{issues:?}");
        assert!(issues.iter().any(|i| i.message.contains("single value")));
        assert!(issues
            .iter()
            .any(|i| i.message.contains("the file has none")));
        assert!(issues.iter().any(|i| i.message.contains("whole entry")));
    }
}
