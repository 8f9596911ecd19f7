//! State rules: boolean expressions over a machine's signals that say when it
//! is down, in setup or running. Compiled once from the config with `evalexpr`.

use crate::config::{SignalConfig, StateRulesConfig};

/// A problem with one rule, for config validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    /// `running`, `down`, `setup` or `reason`.
    pub rule: String,
    pub message: String,
}

/// Every problem in a machine's state rules (unknown signal, syntax error, type error).
pub fn check(_rules: &StateRulesConfig, _signals: &[SignalConfig]) -> Vec<RuleProblem> {
    Vec::new()
}
