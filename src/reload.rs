//! What a reload changes: the difference between the running config and a
//! new one, section by section, as a [`ReloadPlan`] the agent carries out.
//!
//! Pure: two configs in, a plan out; no task is touched here. The rules:
//! - a machine whose `[[machine]]` section is the same keeps its state
//!   engine entry (state, timeline, open periods); one whose section changed
//!   keeps them too where the accounting settings allow (see the engine), a
//!   removed one ends `offline` with [`REMOVED_REASON`], an added one starts;
//! - a bus is restarted when its `[[bus]]` section or the sections of the
//!   machines on it changed (its poll plans are built from them), stopped
//!   when it is gone or has no machine left, started when it is new;
//! - the uplink is restarted (a new connection, a new birth) only when
//!   `[uplink]` or the gateway's identity (`gateway.id`, `gateway.site`,
//!   which make the topic prefix) changed;
//! - the order task is restarted when a machine or a bus changed (it holds
//!   each machine's interlock and write channel).
//!
//! `gateway.data_dir` moves only on a restart (the store stays open); the
//! agent warns about it.

use std::collections::BTreeSet;

use crate::config::{BusConfig, Config, MachineConfig};

/// The final `offline` reason of a machine removed from the config by a reload.
pub const REMOVED_REASON: &str = "removed from config by reload";

/// What a reload does, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Machines only the new config has.
    pub machines_added: BTreeSet<String>,
    /// Machines only the running config has.
    pub machines_removed: BTreeSet<String>,
    /// Machines in both whose section differs.
    pub machines_changed: BTreeSet<String>,
    /// Buses to stop (gone, or changed: they are started again below).
    pub buses_stopped: BTreeSet<String>,
    /// Buses to start (new, or changed).
    pub buses_started: BTreeSet<String>,
    /// `[uplink]` or the gateway's identity changed: reconnect.
    pub uplink_restarted: bool,
    /// Settings every machine's accounting uses changed (`[accounting]`,
    /// `[shifts]`, `gateway.timezone`).
    pub accounting_changed: bool,
    /// Anything else differs (`[store]`): applied without a restart.
    pub other_changed: bool,
}

impl ReloadPlan {
    /// Nothing differs: nothing is stopped, started or told.
    pub fn is_empty(&self) -> bool {
        *self == ReloadPlan::default()
    }

    /// Machines or buses differ: the order task follows.
    pub fn machines_or_buses_changed(&self) -> bool {
        !(self.machines_added.is_empty()
            && self.machines_removed.is_empty()
            && self.machines_changed.is_empty()
            && self.buses_stopped.is_empty()
            && self.buses_started.is_empty())
    }
}

/// The machines of `config` on bus `id`, in config order.
fn machines_on<'a>(config: &'a Config, id: &str) -> Vec<&'a MachineConfig> {
    config
        .machine
        .iter()
        .filter(|m| m.bus == id)
        .map(|m| &**m)
        .collect()
}

fn bus<'a>(config: &'a Config, id: &str) -> Option<&'a BusConfig> {
    config.bus.iter().find(|b| b.id == id)
}

/// The buses of `config` that have a task: those with a machine.
fn running_buses(config: &Config) -> BTreeSet<String> {
    config
        .bus
        .iter()
        .filter(|b| !machines_on(config, &b.id).is_empty())
        .map(|b| b.id.clone())
        .collect()
}

/// What going from `old` to `new` takes. Both are valid configs.
pub fn plan_reload(old: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    let old_ids: BTreeSet<&str> = old.machine.iter().map(|m| m.id.as_str()).collect();
    let new_ids: BTreeSet<&str> = new.machine.iter().map(|m| m.id.as_str()).collect();
    for m in &new.machine {
        match old.machine(&m.id) {
            None => {
                plan.machines_added.insert(m.id.clone());
            }
            Some(was) if *was != **m => {
                plan.machines_changed.insert(m.id.clone());
            }
            Some(_) => {}
        }
    }
    for id in old_ids.difference(&new_ids) {
        plan.machines_removed.insert((*id).to_string());
    }

    let (old_buses, new_buses) = (running_buses(old), running_buses(new));
    for id in old_buses.union(&new_buses) {
        let same = bus(old, id) == bus(new, id) && machines_on(old, id) == machines_on(new, id);
        if same && old_buses.contains(id) && new_buses.contains(id) {
            continue;
        }
        if old_buses.contains(id) {
            plan.buses_stopped.insert(id.clone());
        }
        if new_buses.contains(id) {
            plan.buses_started.insert(id.clone());
        }
    }

    plan.uplink_restarted = old.uplink != new.uplink
        || old.gateway.id != new.gateway.id
        || old.gateway.site != new.gateway.site;
    plan.accounting_changed = old.accounting != new.accounting
        || old.shifts != new.shifts
        || old.gateway.timezone != new.gateway.timezone;
    plan.other_changed = old.store != new.store || old.gateway.data_dir != new.gateway.data_dir;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[gateway]
id = "gw1"
site = "site1"

[[bus]]
id = "cell-a"
transport = "tcp"
address = "127.0.0.1:502"

[[bus]]
id = "cell-b"
transport = "tcp"
address = "127.0.0.1:503"

[[machine]]
id = "press07"
bus = "cell-a"
unit = 1

[[machine.signal]]
name = "running"
area = "coil"
address = 0
type = "bool"

[[machine]]
id = "mill02"
bus = "cell-b"
unit = 1

[[machine.signal]]
name = "running"
area = "coil"
address = 0
type = "bool"

[uplink]
url = "mqtt://127.0.0.1:1883"
"#;

    fn config(text: &str) -> Config {
        Config::from_toml(text, Path::new("reload.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_same_config_again_changes_nothing() {
        let plan = plan_reload(&config(BASE), &config(BASE));
        assert!(plan.is_empty(), "{plan:?}");
        assert!(!plan.machines_or_buses_changed());
    }

    #[test]
    fn a_changed_machine_restarts_only_its_bus_and_keeps_the_uplink() {
        let new = BASE.replacen("address = 0", "address = 4", 1);
        let plan = plan_reload(&config(BASE), &config(&new));
        assert_eq!(plan.machines_changed, set(&["press07"]));
        assert_eq!(plan.buses_stopped, set(&["cell-a"]));
        assert_eq!(plan.buses_started, set(&["cell-a"]));
        assert!(plan.machines_added.is_empty() && plan.machines_removed.is_empty());
        assert!(!plan.uplink_restarted && !plan.accounting_changed);
    }

    #[test]
    fn a_changed_bus_restarts_that_bus_and_changes_no_machine() {
        let new = BASE.replacen("127.0.0.1:503", "127.0.0.1:504", 1);
        let plan = plan_reload(&config(BASE), &config(&new));
        assert_eq!(plan.buses_stopped, set(&["cell-b"]));
        assert_eq!(plan.buses_started, set(&["cell-b"]));
        assert!(plan.machines_changed.is_empty());
        assert!(plan.machines_or_buses_changed());
    }

    #[test]
    fn a_removed_machine_stops_its_bus_when_the_bus_is_left_empty() {
        let cut = BASE.find("[[machine]]\nid = \"mill02\"").expect("mill02");
        let end = BASE.find("[uplink]").expect("uplink");
        let new = format!("{}{}", &BASE[..cut], &BASE[end..]);
        let plan = plan_reload(&config(BASE), &config(&new));
        assert_eq!(plan.machines_removed, set(&["mill02"]));
        assert_eq!(plan.buses_stopped, set(&["cell-b"]));
        assert!(plan.buses_started.is_empty());
        assert!(!plan.uplink_restarted);
    }

    #[test]
    fn an_added_machine_starts_and_restarts_the_bus_it_joins() {
        let new = format!(
            "{}\n[[machine]]\nid = \"lathe3\"\nbus = \"cell-b\"\nunit = 2\n\n\
             [[machine.signal]]\nname = \"running\"\narea = \"coil\"\naddress = 0\ntype = \"bool\"\n",
            BASE.replace("[uplink]\nurl = \"mqtt://127.0.0.1:1883\"\n", "")
        )
        .replace("[[bus]]\nid = \"cell-a\"", "[uplink]\nurl = \"mqtt://127.0.0.1:1883\"\n\n[[bus]]\nid = \"cell-a\"");
        let plan = plan_reload(&config(BASE), &config(&new));
        assert_eq!(plan.machines_added, set(&["lathe3"]));
        assert_eq!(plan.buses_started, set(&["cell-b"]));
        assert_eq!(plan.buses_stopped, set(&["cell-b"]));
        assert!(!plan.uplink_restarted, "{plan:?}");
    }

    #[test]
    fn the_uplink_restarts_for_its_own_section_or_the_gateways_identity_only() {
        let heartbeat = BASE.replace(
            "url = \"mqtt://127.0.0.1:1883\"",
            "url = \"mqtt://127.0.0.1:1883\"\nheartbeat_s = 30",
        );
        let plan = plan_reload(&config(BASE), &config(&heartbeat));
        assert!(plan.uplink_restarted);
        assert!(!plan.machines_or_buses_changed());
        let renamed = BASE.replace("id = \"gw1\"", "id = \"gw2\"");
        assert!(plan_reload(&config(BASE), &config(&renamed)).uplink_restarted);
        let zone = BASE.replace(
            "site = \"site1\"",
            "site = \"site1\"\ntimezone = \"Europe/Berlin\"",
        );
        let plan = plan_reload(&config(BASE), &config(&zone));
        assert!(!plan.uplink_restarted && plan.accounting_changed);
    }
}
