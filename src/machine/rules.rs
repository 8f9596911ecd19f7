//! State rules: boolean expressions over a machine's signals that say when it
//! is down, in setup or running. Compiled once from the config with `evalexpr`.
//!
//! Each signal enters a rule with the type its config declares, whatever the
//! source delivered: `bool` signals are booleans, integer signals without
//! scale or offset are integers, scaled and float signals are floats, strings
//! are strings. So `spindle_rpm > 0` works for integer and float signals
//! alike, and a rule that checks at load time also works at run time. The
//! check evaluates every rule twice, with all signals "zero" (false, 0, 0.0,
//! "") and all "one" (true, 1, 1.0, "x"): a rule that does not give
//! true/false, mixes types or calls an unknown function is a config error.
//!
//! Derivation walks `down`, `setup`, `running` in that order and takes the
//! first rule that holds; none holding is `idle`. A rule that reads a signal
//! whose read failed cannot be decided; if such a rule comes before the first
//! one that holds, the state is [`Derived::Unknown`] and the accounting keeps
//! the state it had (a failed read of one signal is not evidence of a change,
//! and the machine did answer, so it is not offline either).
//!
//! Never reads devices or clocks; pure functions of config and values.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use evalexpr::{
    build_operator_tree, Context, DefaultNumericTypes, EvalexprError, EvalexprResult, Node,
    Operator, Value as EvalValue,
};

use crate::config::{DataType, SignalConfig, StateRulesConfig};
use crate::machine::MachineState;
use crate::source::{Reading, Value};

/// A problem with one rule, for config validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    /// `running`, `down`, `setup` or `reason`.
    pub rule: String,
    pub message: String,
}

/// Every problem in a machine's state rules (unknown signal, syntax error, type error).
pub fn check(rules: &StateRulesConfig, signals: &[SignalConfig]) -> Vec<RuleProblem> {
    match StateRules::compile(Some(rules), signals) {
        Ok(_) => Vec::new(),
        Err(problems) => problems,
    }
}

/// How a signal's value enters a rule (from its declared type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalKind {
    Bool,
    Int,
    Float,
    Text,
}

impl EvalKind {
    pub fn of(signal: &SignalConfig) -> EvalKind {
        let unscaled = signal.scale == 1.0 && signal.offset == 0.0;
        match signal.data_type {
            DataType::Bool => EvalKind::Bool,
            DataType::U16
            | DataType::I16
            | DataType::U32
            | DataType::I32
            | DataType::U64
            | DataType::I64
                if unscaled =>
            {
                EvalKind::Int
            }
            DataType::String => EvalKind::Text,
            _ => EvalKind::Float,
        }
    }

    fn probe(self, one: bool) -> EvalValue {
        match (self, one) {
            (EvalKind::Bool, o) => EvalValue::Boolean(o),
            (EvalKind::Int, o) => EvalValue::Int(i64::from(o)),
            (EvalKind::Float, o) => EvalValue::Float(if o { 1.0 } else { 0.0 }),
            (EvalKind::Text, o) => EvalValue::String(if o { "x".into() } else { String::new() }),
        }
    }

    /// The source's value as this kind; `None` when it cannot be one (unknown).
    pub fn convert(self, v: &Value) -> Option<EvalValue> {
        Some(match (self, v) {
            (EvalKind::Bool, Value::Bool(b)) => EvalValue::Boolean(*b),
            (EvalKind::Bool, Value::Text(t)) => EvalValue::Boolean(t.parse::<bool>().ok()?),
            (EvalKind::Bool, other) => EvalValue::Boolean(other.as_f64()? != 0.0),
            (EvalKind::Int, Value::Bool(b)) => EvalValue::Int(i64::from(*b)),
            (EvalKind::Int, Value::Int(i)) => EvalValue::Int(*i),
            (EvalKind::Int, Value::UInt(u)) => match i64::try_from(*u) {
                Ok(i) => EvalValue::Int(i),
                Err(_) => EvalValue::Float(*u as f64),
            },
            (EvalKind::Int, Value::Float(f)) => {
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    EvalValue::Int(*f as i64)
                } else {
                    EvalValue::Float(*f)
                }
            }
            (EvalKind::Int, Value::Text(t)) => EvalValue::Int(t.trim().parse().ok()?),
            (EvalKind::Float, Value::Text(t)) => EvalValue::Float(t.trim().parse().ok()?),
            (EvalKind::Float, other) => EvalValue::Float(other.as_f64()?),
            (EvalKind::Text, Value::Text(t)) => EvalValue::String(t.clone()),
            (EvalKind::Text, other) => EvalValue::String(other.to_string()),
        })
    }
}

/// The latest known value of each signal of one machine, as rules see them
/// (the engine keeps only the signals its rules read: [`SignalValues::read_by`]).
/// A signal whose last read failed has no value (rules that use it are unknown).
#[derive(Debug, Clone, Default)]
pub struct SignalValues {
    // Looked up for every signal of every sample, once: a fast hash (the
    // keys are the config's signal names, not input from outside). Each
    // signal's kind and its last value share one entry.
    signals: FxHashMap<String, (EvalKind, Option<EvalValue>)>,
}

impl SignalValues {
    pub fn new(signals: &[SignalConfig]) -> Self {
        SignalValues {
            signals: signals
                .iter()
                .map(|s| (s.name.clone(), (EvalKind::of(s), None)))
                .collect(),
        }
    }

    /// Like [`SignalValues::new`], keeping only the signals `rules` read:
    /// the others would be converted and stored on every poll for nothing.
    pub fn read_by(signals: &[SignalConfig], rules: &StateRules) -> Self {
        let read = rules.signals_read();
        SignalValues {
            signals: signals
                .iter()
                .filter(|s| read.contains(s.name.as_str()))
                .map(|s| (s.name.clone(), (EvalKind::of(s), None)))
                .collect(),
        }
    }

    /// Whether it keeps no signal at all (the rules read none).
    pub fn is_empty(&self) -> bool {
        self.signals.is_empty()
    }

    /// Take one reading: a value replaces the last one, an error forgets it.
    /// Signals it does not keep are ignored.
    pub fn update(&mut self, name: &str, reading: &Reading) {
        let Some((kind, value)) = self.signals.get_mut(name) else {
            return;
        };
        *value = reading.as_ref().ok().and_then(|v| kind.convert(v));
    }

    pub fn get(&self, name: &str) -> Option<&EvalValue> {
        self.signals.get(name).and_then(|(_, v)| v.as_ref())
    }

    /// Forget every value (the machine went offline).
    pub fn clear(&mut self) {
        for (_, value) in self.signals.values_mut() {
            *value = None;
        }
    }

    /// Set a signal's value as if read (for probing rules).
    fn set(&mut self, name: &str, v: EvalValue) {
        if let Some((_, value)) = self.signals.get_mut(name) {
            *value = Some(v);
        }
    }

    /// Approximate heap bytes held (for the memory benchmark).
    pub fn heap_bytes(&self) -> usize {
        let per = std::mem::size_of::<(String, (EvalKind, Option<EvalValue>))>() + 1;
        self.signals.capacity() * per + self.signals.keys().map(|k| k.len()).sum::<usize>()
    }
}

impl Context for SignalValues {
    type NumericTypes = DefaultNumericTypes;

    fn get_value(&self, identifier: &str) -> Option<&EvalValue> {
        self.get(identifier)
    }

    fn call_function(&self, identifier: &str, _argument: &EvalValue) -> EvalexprResult<EvalValue> {
        Err(EvalexprError::FunctionIdentifierNotFound(
            identifier.to_string(),
        ))
    }

    fn are_builtin_functions_disabled(&self) -> bool {
        false
    }

    fn set_builtin_functions_disabled(&mut self, disabled: bool) -> EvalexprResult<()> {
        if disabled {
            Err(EvalexprError::BuiltinFunctionsCannotBeDisabled)
        } else {
            Ok(())
        }
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    state: MachineState,
    tree: Node,
}

/// The reason signal and its table of texts.
#[derive(Debug, Clone)]
struct ReasonRule {
    signal: String,
    texts: BTreeMap<String, String>,
    fault_codes: Vec<i64>,
}

/// What the rules say about one moment.
#[derive(Debug, Clone, PartialEq)]
pub enum Derived {
    Known {
        state: MachineState,
        /// Only for `down` and `setup`: the reason signal's value and its text.
        reason: Option<String>,
        /// A `down` whose reason is a fault (counts as a failure).
        fault: bool,
    },
    /// A rule that matters reads a signal without a value.
    Unknown,
}

/// A machine's compiled state rules.
#[derive(Debug, Clone)]
pub struct StateRules {
    rules: Vec<Rule>,
    reason: Option<ReasonRule>,
    /// A state shorter than this is not a state.
    pub min_dwell_ms: u64,
}

/// Arithmetic failures at the probe values (division by zero, overflow) are
/// not mistakes in the rule; everything else is.
fn is_probe_accident(e: &EvalexprError) -> bool {
    matches!(
        e,
        EvalexprError::AdditionError { .. }
            | EvalexprError::SubtractionError { .. }
            | EvalexprError::NegationError { .. }
            | EvalexprError::MultiplicationError { .. }
            | EvalexprError::DivisionError { .. }
            | EvalexprError::ModulationError { .. }
            | EvalexprError::OutOfBoundsAccess
            | EvalexprError::IntFromUsize { .. }
            | EvalexprError::IntIntoUsize { .. }
    )
}

fn type_name(v: &EvalValue) -> &'static str {
    match v {
        EvalValue::String(_) => "a string",
        EvalValue::Float(_) => "a float",
        EvalValue::Int(_) => "an integer",
        EvalValue::Boolean(_) => "a boolean",
        EvalValue::Tuple(_) => "a tuple",
        EvalValue::Empty => "nothing",
    }
}

/// A parse error of a rule, in the technician's words (never the
/// expression library's own: "Tried to append a node to a leaf node").
fn syntax_words(e: &EvalexprError) -> String {
    match e {
        EvalexprError::AppendedToLeafNode | EvalexprError::MissingOperatorOutsideOfBrace => {
            "two values stand side by side with no operator between them (e.g. `mode 2`: write `mode == 2`)".into()
        }
        EvalexprError::WrongOperatorArgumentAmount { .. } => {
            "an operator has no value on one side (`a &&` needs another value: `a && b`)".into()
        }
        EvalexprError::UnmatchedLBrace => "a `(` is never closed".into(),
        EvalexprError::UnmatchedRBrace => "a `)` has no `(` before it".into(),
        EvalexprError::UnmatchedDoubleQuote => "a `\"` is never closed".into(),
        EvalexprError::UnmatchedPartialToken { .. } => {
            "a lone `&`, `|` or `=`: write `&&`, `||` or `==`".into()
        }
        EvalexprError::IllegalEscapeSequence(_) => "a `\\` in a text that is not `\\\\` or `\\\"`".into(),
        _ => "use signal names, numbers, \"text\", == != < > <= >=, && || !, + - * / % and ( )".into(),
    }
}

/// The signal a rule is, when it is nothing but one signal (`down = "alarm"`).
fn single_signal(tree: &Node) -> Option<&str> {
    let mut node = tree;
    loop {
        match (node.operator(), node.children()) {
            (Operator::RootNode, [only]) => node = only,
            (Operator::VariableIdentifierRead { identifier }, _) => return Some(identifier),
            _ => return None,
        }
    }
}

/// What kind of value an operator needs.
#[derive(Clone, Copy, PartialEq)]
enum Needs {
    TrueFalse,
    Number,
    NumberOrText,
}

/// The first operator (innermost first) of `tree` that is given a value
/// of the wrong kind at the probe values: which signal (or part of the
/// rule), what it is, what the operator needs. `None` if none is found.
fn kind_problem(tree: &Node, probe: &SignalValues, signals: &[SignalConfig]) -> Option<String> {
    for child in tree.children() {
        if let Some(p) = kind_problem(child, probe, signals) {
            return Some(p);
        }
    }
    let (symbol, needs) = match tree.operator() {
        Operator::And => ("&&", Needs::TrueFalse),
        Operator::Or => ("||", Needs::TrueFalse),
        Operator::Not => ("!", Needs::TrueFalse),
        Operator::Gt => (">", Needs::Number),
        Operator::Lt => ("<", Needs::Number),
        Operator::Geq => (">=", Needs::Number),
        Operator::Leq => ("<=", Needs::Number),
        Operator::Sub => ("-", Needs::Number),
        Operator::Neg => ("-", Needs::Number),
        Operator::Mul => ("*", Needs::Number),
        Operator::Div => ("/", Needs::Number),
        Operator::Mod => ("%", Needs::Number),
        Operator::Exp => ("^", Needs::Number),
        Operator::Add => ("+", Needs::NumberOrText),
        _ => return None,
    };
    for child in tree.children() {
        let Ok(value) = child.eval_with_context(probe) else {
            continue;
        };
        let fits = matches!(
            (needs, &value),
            (Needs::TrueFalse, EvalValue::Boolean(_))
                | (
                    Needs::Number | Needs::NumberOrText,
                    EvalValue::Int(_) | EvalValue::Float(_)
                )
                | (Needs::NumberOrText, EvalValue::String(_))
        );
        if fits {
            continue;
        }
        let needed = match needs {
            Needs::TrueFalse => format!("`{symbol}` needs true/false"),
            Needs::Number => format!("`{symbol}` needs numbers"),
            Needs::NumberOrText => format!("`{symbol}` needs numbers (or text)"),
        };
        let Some(name) = single_signal(child) else {
            return Some(format!(
                "a part of it gives {}, but {needed}",
                type_name(&value)
            ));
        };
        let declared = signals
            .iter()
            .find(|s| s.name == name)
            .map(|s| format!(" (type {})", s.data_type))
            .unwrap_or_default();
        let hint = match (needs, &value) {
            (Needs::TrueFalse, EvalValue::String(_)) => {
                format!("compare it, e.g. `{name} == \"AUTO\"`")
            }
            (Needs::TrueFalse, _) => format!("compare it, e.g. `{name} != 0`"),
            (_, EvalValue::Boolean(_)) => {
                format!("a bool signal is true/false already: write `{name}` or `!{name}`")
            }
            (_, EvalValue::String(_)) => {
                format!("compare text with == or !=, e.g. `{name} == \"AUTO\"`")
            }
            _ => "check the signal's type".into(),
        };
        return Some(format!(
            "signal `{name}` is {}{declared}, but {needed}: {hint}",
            type_name(&value)
        ));
    }
    None
}

/// When no operator could be pinned down: what kinds the rule's signals are.
fn fallback_kind_words(e: &EvalexprError, signals: &[SignalConfig]) -> String {
    let of = |kinds: &[EvalKind]| {
        let names: Vec<&str> = signals
            .iter()
            .filter(|s| kinds.contains(&EvalKind::of(s)))
            .map(|s| s.name.as_str())
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let what = match e {
        EvalexprError::FunctionIdentifierNotFound(f) => {
            return format!("`{f}(...)` is not a function a rule can use")
        }
        EvalexprError::WrongFunctionArgumentAmount { .. } => {
            return "a function is given the wrong number of values".into()
        }
        _ => "it mixes true/false, numbers and text where they do not go together",
    };
    format!(
        "{what} (true/false signals: {}; number signals: {}; text signals: {})",
        of(&[EvalKind::Bool]),
        of(&[EvalKind::Int, EvalKind::Float]),
        of(&[EvalKind::Text])
    )
}

impl StateRules {
    /// Compile a machine's rules; without `[machine.state]` the machine is
    /// `idle` whenever it can be read. Returns every problem found.
    pub fn compile(
        cfg: Option<&StateRulesConfig>,
        signals: &[SignalConfig],
    ) -> Result<StateRules, Vec<RuleProblem>> {
        let Some(cfg) = cfg else {
            return Ok(StateRules {
                rules: Vec::new(),
                reason: None,
                min_dwell_ms: 0,
            });
        };
        let mut problems = Vec::new();
        let known: Vec<&str> = signals.iter().map(|s| s.name.as_str()).collect();
        let known_list = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        let mut zero = SignalValues::new(signals);
        let mut one = SignalValues::new(signals);
        for s in signals {
            let kind = EvalKind::of(s);
            zero.set(&s.name, kind.probe(false));
            one.set(&s.name, kind.probe(true));
        }

        let mut rules = Vec::new();
        for (name, state, text) in [
            ("down", MachineState::Down, &cfg.down),
            ("setup", MachineState::Setup, &cfg.setup),
            ("running", MachineState::Running, &cfg.running),
        ] {
            let Some(text) = text else { continue };
            let mut problem = |message: String| {
                problems.push(RuleProblem {
                    rule: name.into(),
                    message,
                })
            };
            let tree = match build_operator_tree::<DefaultNumericTypes>(text) {
                Ok(t) => t,
                Err(e) => {
                    problem(format!(
                        "rule {name} = {text:?} is not an expression: {}",
                        syntax_words(&e)
                    ));
                    continue;
                }
            };
            if let Some(w) = tree.iter_write_variable_identifiers().next() {
                problem(format!(
                    "rule {name} = {text:?} assigns to `{w}`; a rule only reads signals (compare with ==)"
                ));
                continue;
            }
            let mut unknown: Vec<&str> = tree
                .iter_read_variable_identifiers()
                .filter(|v| !known.contains(v))
                .collect();
            unknown.dedup();
            if !unknown.is_empty() {
                for u in unknown {
                    problem(format!(
                        "rule {name} = {text:?} uses unknown signal `{u}` (signals of this machine: {known_list})"
                    ));
                }
                continue;
            }
            let mut typed = true;
            for probe in [&zero, &one] {
                match tree.eval_with_context(probe) {
                    Ok(EvalValue::Boolean(_)) => {}
                    Ok(other) => {
                        let what = match single_signal(&tree) {
                            Some(s) => {
                                format!("signal `{s}` alone, which is {}", type_name(&other))
                            }
                            None => type_name(&other).to_string(),
                        };
                        let example = single_signal(&tree).unwrap_or("x");
                        problem(format!(
                            "rule {name} = {text:?} gives {what} instead of true/false; compare it, e.g. `{example} != 0`"
                        ));
                        typed = false;
                    }
                    Err(e) if is_probe_accident(&e) => {}
                    Err(e @ EvalexprError::WrongOperatorArgumentAmount { .. }) => {
                        problem(format!(
                            "rule {name} = {text:?} is not an expression: {}",
                            syntax_words(&e)
                        ));
                        typed = false;
                    }
                    Err(EvalexprError::FunctionIdentifierNotFound(f))
                        if known.contains(&f.as_str()) =>
                    {
                        // `cycle_active mode` reads as a call of `cycle_active`.
                        problem(format!(
                            "rule {name} = {text:?} is not an expression: {}",
                            syntax_words(&EvalexprError::AppendedToLeafNode)
                        ));
                        typed = false;
                    }
                    Err(e) => {
                        let why = kind_problem(&tree, probe, signals)
                            .unwrap_or_else(|| fallback_kind_words(&e, signals));
                        problem(format!("rule {name} = {text:?} has a type error: {why}"));
                        typed = false;
                    }
                }
                if !typed {
                    break;
                }
            }
            if typed {
                rules.push(Rule { state, tree });
            }
        }

        let mut reason = None;
        if let Some(signal) = &cfg.reason {
            if known.contains(&signal.as_str()) {
                reason = Some(ReasonRule {
                    signal: signal.clone(),
                    texts: cfg.reasons.clone(),
                    fault_codes: cfg.fault_codes.clone(),
                });
            } else {
                problems.push(RuleProblem {
                    rule: "reason".into(),
                    message: format!(
                        "reason names unknown signal `{signal}` (signals of this machine: {known_list})"
                    ),
                });
            }
        } else if !cfg.reasons.is_empty() || !cfg.fault_codes.is_empty() {
            problems.push(RuleProblem {
                rule: "reason".into(),
                message: "reasons and fault_codes need reason = \"<signal>\", the signal holding the code".into(),
            });
        }

        if problems.is_empty() {
            Ok(StateRules {
                rules,
                reason,
                min_dwell_ms: cfg.min_dwell_ms,
            })
        } else {
            Err(problems)
        }
    }

    /// The names of the signals the rules and the reason read.
    pub fn signals_read(&self) -> std::collections::BTreeSet<&str> {
        self.rules
            .iter()
            .flat_map(|r| r.tree.iter_read_variable_identifiers())
            .chain(self.reason.as_ref().map(|r| r.signal.as_str()))
            .collect()
    }

    /// The state the signals show now (without offline and planned stop,
    /// which the accounting adds).
    pub fn derive(&self, values: &SignalValues) -> Derived {
        for rule in &self.rules {
            match rule.tree.eval_with_context(values) {
                Ok(EvalValue::Boolean(true)) => {
                    let (reason, fault) = match rule.state {
                        MachineState::Down | MachineState::Setup => self.reason(values),
                        _ => (None, false),
                    };
                    return Derived::Known {
                        state: rule.state,
                        reason,
                        fault: fault && rule.state == MachineState::Down,
                    };
                }
                Ok(EvalValue::Boolean(false)) => {}
                // A missing value, or arithmetic on odd values: cannot decide.
                _ => return Derived::Unknown,
            }
        }
        Derived::Known {
            state: MachineState::Idle,
            reason: None,
            fault: false,
        }
    }

    /// Reason text and whether it is a fault.
    fn reason(&self, values: &SignalValues) -> (Option<String>, bool) {
        let Some(r) = &self.reason else {
            return (None, false);
        };
        let code = match values.get(&r.signal) {
            Some(EvalValue::Int(i)) => Some(*i),
            Some(EvalValue::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
            Some(EvalValue::Boolean(b)) => Some(i64::from(*b)),
            _ => None,
        };
        let key = match (code, values.get(&r.signal)) {
            (Some(0), _) => return (None, false),
            (Some(c), _) => c.to_string(),
            (None, Some(EvalValue::String(s))) if !s.trim().is_empty() => s.trim().to_string(),
            (None, Some(EvalValue::Float(f))) => f.to_string(),
            _ => return (None, false),
        };
        let text = match r.texts.get(&key) {
            Some(t) => format!("{} {key}: {t}", r.signal),
            None => format!("{} {key}", r.signal),
        };
        let fault = if r.fault_codes.is_empty() {
            true
        } else {
            code.is_some_and(|c| r.fault_codes.contains(&c))
        };
        (Some(text), fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(name: &str, t: DataType) -> SignalConfig {
        SignalConfig {
            name: name.into(),
            area: None,
            address: None,
            data_type: t,
            word_order: Default::default(),
            byte_order: Default::default(),
            scale: 1.0,
            offset: 0.0,
            bit: None,
            length: None,
            topic: None,
            pointer: None,
            deadband: 0.0,
        }
    }

    fn signals() -> Vec<SignalConfig> {
        let mut rpm = sig("spindle_rpm", DataType::U16);
        rpm.scale = 0.1;
        vec![
            sig("cycle_active", DataType::Bool),
            rpm,
            sig("alarm_code", DataType::U16),
            sig("mode", DataType::I16),
        ]
    }

    fn rules(running: &str, down: &str, setup: &str) -> StateRulesConfig {
        StateRulesConfig {
            running: Some(running.into()),
            down: Some(down.into()),
            setup: Some(setup.into()),
            reason: Some("alarm_code".into()),
            reasons: [("17".to_string(), "door open".to_string())].into(),
            fault_codes: vec![],
            min_dwell_ms: 0,
        }
    }

    fn good() -> StateRulesConfig {
        rules(
            "cycle_active && spindle_rpm > 0",
            "alarm_code != 0",
            "mode == 2",
        )
    }

    fn set(v: &mut SignalValues, name: &str, value: Value) {
        v.update(name, &Ok(value));
    }

    #[test]
    fn good_rules_have_no_problems() {
        assert!(check(&good(), &signals()).is_empty());
    }

    #[test]
    fn an_unknown_signal_is_named_with_its_rule() {
        let p = check(
            &rules(
                "cycle_active && spindle_rmp > 0",
                "alarm_code != 0",
                "mode == 2",
            ),
            &signals(),
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].rule, "running");
        assert!(p[0].message.contains("`spindle_rmp`"), "{}", p[0].message);
    }

    #[test]
    fn a_syntax_error_is_reported() {
        let p = check(
            &rules("cycle_active &&", "alarm_code != 0", "mode == 2"),
            &signals(),
        );
        assert_eq!(p[0].rule, "running");
        assert!(
            p[0].message.contains("not an expression"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn a_rule_that_gives_a_number_is_a_type_error() {
        let p = check(
            &rules("cycle_active", "alarm_code", "mode == 2"),
            &signals(),
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].rule, "down");
        assert!(
            p[0].message.contains("an integer instead of true/false"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn mixing_a_number_into_a_boolean_operator_is_a_type_error() {
        let p = check(
            &rules(
                "cycle_active && spindle_rpm",
                "alarm_code != 0",
                "mode == 2",
            ),
            &signals(),
        );
        assert_eq!(p[0].rule, "running");
        assert!(p[0].message.contains("type error"), "{}", p[0].message);
    }

    #[test]
    fn expression_errors_say_which_signal_and_what_was_expected_not_the_library_internals() {
        for (running, says) in [
            (
                "cycle_active && spindle_rpm",
                "signal `spindle_rpm` is a float (type u16), but `&&` needs true/false: compare it, e.g. `spindle_rpm != 0`",
            ),
            (
                "cycle_active > 0",
                "signal `cycle_active` is a boolean (type bool), but `>` needs numbers: a bool signal is true/false already",
            ),
            ("!mode", "signal `mode` is an integer (type i16), but `!` needs true/false"),
            ("cycle_active mode", "two values stand side by side with no operator"),
            ("cycle_active &&", "an operator has no value on one side"),
            ("(mode == 2", "a `(` is never closed"),
            ("mode == 2)", "a `)` has no `(`"),
            ("cycle_active & mode == 1", "a lone `&`, `|` or `=`"),
        ] {
            let p = check(&rules(running, "alarm_code != 0", "mode == 2"), &signals());
            assert_eq!(p.len(), 1, "{running}: {p:?}");
            let m = &p[0].message;
            assert!(m.contains(says), "{running}: {m}");
            for internal in ["leaf node", "Value::", "Expected a", "Int(", "Boolean("] {
                assert!(!m.contains(internal), "{running}: leaks {internal:?}: {m}");
            }
        }
        let p = check(
            &rules("cycle_active", "alarm_code", "mode == 2"),
            &signals(),
        );
        assert!(
            p[0].message
                .contains("gives signal `alarm_code` alone, which is an integer")
                && p[0].message.contains("`alarm_code != 0`"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn an_assignment_is_refused() {
        let p = check(
            &rules("cycle_active", "alarm_code = 1", "mode == 2"),
            &signals(),
        );
        assert_eq!(p[0].rule, "down");
        assert!(p[0].message.contains("assigns"), "{}", p[0].message);
    }

    #[test]
    fn a_reason_naming_an_unknown_signal_is_reported() {
        let mut r = good();
        r.reason = Some("alarm".into());
        let p = check(&r, &signals());
        assert_eq!(p[0].rule, "reason");
        assert!(p[0].message.contains("`alarm`"));
    }

    #[test]
    fn division_by_zero_at_the_probe_is_not_a_problem() {
        assert!(check(
            &rules("spindle_rpm / mode > 1", "alarm_code != 0", "mode == 2"),
            &signals()
        )
        .is_empty());
    }

    #[test]
    fn only_the_signals_the_rules_read_are_kept() {
        let mut all = signals();
        all.push(sig("coolant_temp", DataType::U16));
        // `mode` is read by no rule and is not the reason signal.
        let cfg = rules(
            "cycle_active && spindle_rpm > 0",
            "alarm_code != 0",
            "false",
        );
        let r = StateRules::compile(Some(&cfg), &all).unwrap();
        assert_eq!(
            r.signals_read().into_iter().collect::<Vec<_>>(),
            ["alarm_code", "cycle_active", "spindle_rpm"]
        );
        let mut v = SignalValues::read_by(&all, &r);
        for name in [
            "cycle_active",
            "spindle_rpm",
            "alarm_code",
            "mode",
            "coolant_temp",
        ] {
            set(&mut v, name, Value::Int(1));
        }
        assert!(v.get("mode").is_none() && v.get("coolant_temp").is_none());
        assert_eq!(v.get("alarm_code"), Some(&EvalValue::Int(1)));
        // Kept values are enough to derive the state.
        assert!(matches!(
            r.derive(&v),
            Derived::Known {
                state: MachineState::Down,
                ..
            }
        ));
        // Without rules, nothing is kept.
        let none = StateRules::compile(None, &all).unwrap();
        assert!(SignalValues::read_by(&all, &none).is_empty());
    }

    #[test]
    fn the_first_rule_that_holds_wins_in_order_down_setup_running() {
        let r = StateRules::compile(Some(&good()), &signals()).unwrap();
        let mut v = SignalValues::new(&signals());
        set(&mut v, "cycle_active", Value::Bool(true));
        set(&mut v, "spindle_rpm", Value::Float(120.0));
        set(&mut v, "alarm_code", Value::Int(0));
        set(&mut v, "mode", Value::Int(1));
        assert_eq!(
            r.derive(&v),
            Derived::Known {
                state: MachineState::Running,
                reason: None,
                fault: false
            }
        );
        set(&mut v, "mode", Value::Int(2));
        assert!(matches!(
            r.derive(&v),
            Derived::Known {
                state: MachineState::Setup,
                ..
            }
        ));
        set(&mut v, "alarm_code", Value::Int(17));
        assert_eq!(
            r.derive(&v),
            Derived::Known {
                state: MachineState::Down,
                reason: Some("alarm_code 17: door open".into()),
                fault: true
            }
        );
        set(&mut v, "alarm_code", Value::Int(0));
        set(&mut v, "mode", Value::Int(1));
        set(&mut v, "cycle_active", Value::Bool(false));
        assert!(matches!(
            r.derive(&v),
            Derived::Known {
                state: MachineState::Idle,
                ..
            }
        ));
    }

    #[test]
    fn an_integer_source_value_works_in_a_float_signal_rule() {
        let r = StateRules::compile(Some(&good()), &signals()).unwrap();
        let mut v = SignalValues::new(&signals());
        set(&mut v, "cycle_active", Value::Int(1));
        set(&mut v, "spindle_rpm", Value::Int(5));
        set(&mut v, "alarm_code", Value::Float(0.0));
        set(&mut v, "mode", Value::Int(0));
        assert!(matches!(
            r.derive(&v),
            Derived::Known {
                state: MachineState::Running,
                ..
            }
        ));
    }

    #[test]
    fn a_failed_read_makes_the_state_unknown_until_a_rule_holds() {
        let r = StateRules::compile(Some(&good()), &signals()).unwrap();
        let mut v = SignalValues::new(&signals());
        set(&mut v, "cycle_active", Value::Bool(true));
        set(&mut v, "spindle_rpm", Value::Float(120.0));
        set(&mut v, "mode", Value::Int(1));
        v.update(
            "alarm_code",
            &Err(crate::source::SignalError::NoReply("timeout".into())),
        );
        assert_eq!(r.derive(&v), Derived::Unknown);
    }

    #[test]
    fn fault_codes_decide_failures() {
        let mut cfg = good();
        cfg.fault_codes = vec![17];
        let r = StateRules::compile(Some(&cfg), &signals()).unwrap();
        let mut v = SignalValues::new(&signals());
        set(&mut v, "cycle_active", Value::Bool(false));
        set(&mut v, "spindle_rpm", Value::Float(0.0));
        set(&mut v, "mode", Value::Int(1));
        set(&mut v, "alarm_code", Value::Int(4));
        assert_eq!(
            r.derive(&v),
            Derived::Known {
                state: MachineState::Down,
                reason: Some("alarm_code 4".into()),
                fault: false
            }
        );
    }
}
