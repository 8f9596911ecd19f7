//! Intake of one message from `{p}/orders/cmd`: bytes in, a typed, checked
//! [`Command`] or the [`Rejection`]s to answer with. Also the one place that
//! turns an order's values into register writes ([`release_writes`]), so the
//! same limits decide both whether an order is accepted and what reaches the
//! machine: only the registers of the machine's `[machine.orders]` section,
//! only values inside their type's range and the configured `min`/`max`.
//!
//! Pure: no I/O, no clock, never panics on any input. Checks that need the
//! order book (revision lower than one already seen, hold of an unknown
//! order) are made by `book`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::config::{
    is_valid_id, Area, Config, DataType, Endian, OrderRegister, OrderRegistersConfig,
};
use crate::source::modbus::{RegisterWrite, WriteData};

/// Largest payload accepted on `orders/cmd`; larger ones are rejected unread.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most orders in one plan.
pub const MAX_PLAN_ORDERS: usize = 1000;

/// One work order as the planner sent it, checked against the machine's config.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkOrder {
    pub order_id: String,
    pub revision: u32,
    pub machine: String,
    pub product: String,
    pub quantity: u32,
    pub due: Option<DateTime<Utc>>,
    /// Release order on the machine; `None` sorts after every given sequence.
    pub sequence: Option<i64>,
    pub ideal_cycle_s: Option<f64>,
    /// Parameter name → JSON number or bool, each known to the machine and in range.
    pub params: BTreeMap<String, Value>,
}

/// Several orders sent together.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub plan_id: String,
    /// `"level": true`: the agent levels the plan (heijunka) before releasing it.
    pub level: bool,
    /// Pack-out quantity: levelling counts in pitches of this many parts.
    pub pitch: Option<u32>,
    pub orders: Vec<WorkOrder>,
}

/// What a command on an existing order asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Hold,
    Resume,
    Cancel,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Hold => "hold",
            CommandKind::Resume => "resume",
            CommandKind::Cancel => "cancel",
        }
    }
}

/// One message of `orders/cmd`, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Order(WorkOrder),
    Plan(Plan),
    /// `hold`, `resume` or `cancel` of an order (its latest revision).
    OnOrder {
        kind: CommandKind,
        order_id: String,
    },
}

/// One `rejected` answer: whatever identity could be read, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub order_id: Option<String>,
    pub revision: Option<u32>,
    pub machine: Option<String>,
    pub plan_id: Option<String>,
    /// Set when the message was a hold/resume/cancel command.
    pub command: Option<CommandKind>,
    pub reason: String,
}

impl Rejection {
    fn bare(reason: impl Into<String>) -> Rejection {
        Rejection {
            order_id: None,
            revision: None,
            machine: None,
            plan_id: None,
            command: None,
            reason: reason.into(),
        }
    }
}

/// Parse and check one message. `Err` is never empty: one rejection per
/// order that could be told apart (a plan is accepted or rejected as a
/// whole), or one with `order_id: None` when none could.
pub fn parse(payload: &[u8], config: &Config) -> Result<Command, Vec<Rejection>> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(vec![Rejection::bare(format!(
            "payload of {} bytes is larger than the {} bytes allowed",
            payload.len(),
            MAX_PAYLOAD_BYTES
        ))]);
    }
    let value: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return Err(vec![Rejection::bare(format!("not JSON: {e}"))]),
    };
    let Value::Object(obj) = value else {
        return Err(vec![Rejection::bare(format!(
            "expected a JSON object, got {}",
            kind_of(&value)
        ))]);
    };
    let kind = match obj.get("type") {
        None => {
            return Err(vec![ident_rejection(
                &obj,
                "missing field `type` (one of order, plan, hold, resume, cancel)".into(),
            )])
        }
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(vec![ident_rejection(
                &obj,
                format!("`type` must be a string, got {}", kind_of(other)),
            )])
        }
    };
    match kind {
        "order" => parse_order(&obj, config, None)
            .map(Command::Order)
            .map_err(|r| vec![r]),
        "plan" => parse_plan(&obj, config).map(Command::Plan),
        "hold" => parse_on_order(&obj, CommandKind::Hold),
        "resume" => parse_on_order(&obj, CommandKind::Resume),
        "cancel" => parse_on_order(&obj, CommandKind::Cancel),
        other => Err(vec![ident_rejection(
            &obj,
            format!("unknown `type` {other:?} (one of order, plan, hold, resume, cancel)"),
        )]),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A rejection carrying whatever identity the object offers, valid or not.
fn ident_rejection(obj: &Map<String, Value>, reason: String) -> Rejection {
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    Rejection {
        order_id: text("order_id").map(|s| truncate(&s)),
        revision: obj
            .get("revision")
            .and_then(Value::as_u64)
            .and_then(|r| u32::try_from(r).ok()),
        machine: text("machine").map(|s| truncate(&s)),
        plan_id: text("plan_id").map(|s| truncate(&s)),
        command: None,
        reason,
    }
}

/// Identity echoed back in a rejection is capped, so a huge bogus id cannot
/// bloat every answer.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn unknown_keys(obj: &Map<String, Value>, allowed: &[&str]) -> Option<String> {
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    if unknown.is_empty() {
        None
    } else {
        Some(format!(
            "unknown field(s) {} (allowed: {})",
            unknown.join(", "),
            allowed.join(", ")
        ))
    }
}

fn get_id(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(format!("missing field `{key}`")),
        Some(Value::String(s)) if is_valid_id(s) => Ok(s.clone()),
        Some(Value::String(s)) => Err(format!(
            "`{key}` {:?} is not a valid id: use 1 to 64 of A-Z a-z 0-9 _ . -",
            truncate(s)
        )),
        Some(other) => Err(format!("`{key}` must be a string, got {}", kind_of(other))),
    }
}

const ORDER_KEYS: &[&str] = &[
    "type",
    "order_id",
    "revision",
    "machine",
    "product",
    "quantity",
    "due",
    "sequence",
    "ideal_cycle_s",
    "params",
];

/// One order object; `plan_machine` is the plan's default machine.
fn parse_order(
    obj: &Map<String, Value>,
    config: &Config,
    plan_machine: Option<&str>,
) -> Result<WorkOrder, Rejection> {
    let fail = |reason: String| Err(ident_rejection(obj, reason));
    let order_id = match get_id(obj, "order_id") {
        Ok(id) => id,
        Err(e) => return fail(e),
    };
    let name = format!("order {order_id}");
    if let Some(e) = unknown_keys(obj, ORDER_KEYS) {
        return fail(format!("{name}: {e}"));
    }
    let revision = match obj.get("revision") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64().and_then(|r| u32::try_from(r).ok()) {
            Some(r) => r,
            None => {
                return fail(format!(
                    "{name}: `revision` must be a whole number 0..=4294967295, got {v}"
                ))
            }
        },
    };
    let machine = match (obj.get("machine"), plan_machine) {
        (None | Some(Value::Null), Some(m)) => m.to_owned(),
        _ => match get_id(obj, "machine") {
            Ok(m) => m,
            Err(e) => return fail(format!("{name}: {e}")),
        },
    };
    let regs = match machine_orders(config, &machine) {
        Ok(r) => r,
        Err(e) => return fail(format!("{name}: {e}")),
    };
    let product = match get_id(obj, "product") {
        Ok(p) => p,
        Err(e) => return fail(format!("{name}: {e}")),
    };
    if !regs.product_code.map.contains_key(&product) {
        let known: Vec<&str> = regs.product_code.map.keys().map(String::as_str).collect();
        return fail(format!(
            "{name}: machine {machine} does not know product {product:?} (known: {})",
            known.join(", ")
        ));
    }
    let quantity = match obj.get("quantity") {
        None | Some(Value::Null) => return fail(format!("{name}: missing field `quantity`")),
        Some(v) => match v.as_i64() {
            Some(q) if q <= 0 => return fail(format!("{name}: quantity {q} must be positive")),
            Some(q) if q > i64::from(regs.max_quantity) => {
                return fail(format!(
                    "{name}: quantity {q} is above machine {machine}'s max_quantity {}",
                    regs.max_quantity
                ))
            }
            Some(q) => q as u32,
            None if v.is_number() && v.as_f64().is_some_and(|f| f <= 0.0) => {
                return fail(format!("{name}: quantity {v} must be positive"))
            }
            None if v.is_number() => {
                return fail(format!(
                    "{name}: quantity {v} must be a whole number 1..={}",
                    regs.max_quantity
                ))
            }
            None => {
                return fail(format!(
                    "{name}: `quantity` must be a number, got {}",
                    kind_of(v)
                ))
            }
        },
    };
    let due = match obj.get("due") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => {
                return fail(format!(
                    "{name}: `due` {:?} is not an RFC 3339 time ({e})",
                    truncate(s)
                ))
            }
        },
        Some(other) => {
            return fail(format!(
                "{name}: `due` must be an RFC 3339 string, got {}",
                kind_of(other)
            ))
        }
    };
    let sequence = match obj.get("sequence") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(s) => Some(s),
            None => {
                return fail(format!(
                    "{name}: `sequence` must be a whole number, got {v}"
                ))
            }
        },
    };
    let ideal_cycle_s = match obj.get("ideal_cycle_s") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(c) if c > 0.0 && c <= crate::config::MAX_IDEAL_CYCLE_S => Some(c),
            _ => {
                let most = crate::config::MAX_IDEAL_CYCLE_S;
                return fail(format!(
                    "{name}: `ideal_cycle_s` must be seconds above 0 and up to {most}, got {v}"
                ));
            }
        },
    };
    let params = match obj.get("params") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(p)) => p.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(other) => {
            return fail(format!(
                "{name}: `params` must be an object, got {}",
                kind_of(other)
            ))
        }
    };
    let order = WorkOrder {
        order_id,
        revision,
        machine,
        product,
        quantity,
        due,
        sequence,
        ideal_cycle_s,
        params,
    };
    // Every value the order would write is encoded once here, so an order
    // whose values do not fit its registers never gets accepted.
    if let Err(e) = release_writes(regs, 1, &order.product, order.quantity, &order.params) {
        return fail(format!("{name}: {e}"));
    }
    Ok(order)
}

/// The `[machine.orders]` section of a machine, or why there is none.
pub fn machine_orders<'c>(
    config: &'c Config,
    machine: &str,
) -> Result<&'c OrderRegistersConfig, String> {
    match config.machine(machine) {
        None => {
            let known: Vec<&str> = config.machine.iter().map(|m| m.id.as_str()).collect();
            Err(format!(
                "unknown machine {machine:?} (known: {})",
                known.join(", ")
            ))
        }
        Some(m) => m.orders.as_ref().ok_or_else(|| {
            format!("machine {machine} takes no orders (its config has no [machine.orders])")
        }),
    }
}

const PLAN_KEYS: &[&str] = &["type", "plan_id", "machine", "level", "pitch", "orders"];

/// A plan is answered as a whole (contract v1.1): one answer per order it
/// holds, all accepted or all rejected with the reason naming the order at
/// fault, or a single rejection with `order_id: null` and the `plan_id` when
/// its orders cannot be read at all.
fn parse_plan(obj: &Map<String, Value>, config: &Config) -> Result<Plan, Vec<Rejection>> {
    // The plan itself is at fault: one answer, about no order.
    let whole = |reason: String| {
        Err(vec![Rejection {
            order_id: None,
            revision: None,
            ..ident_rejection(obj, reason)
        }])
    };
    let plan_id = match get_id(obj, "plan_id") {
        Ok(p) => p,
        Err(e) => return whole(format!("plan: {e}")),
    };
    let name = format!("plan {plan_id}");
    if let Some(e) = unknown_keys(obj, PLAN_KEYS) {
        return whole(format!("{name}: {e}"));
    }
    let level = match obj.get("level") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return whole(format!(
                "{name}: `level` must be a bool, got {}",
                kind_of(other)
            ))
        }
    };
    let pitch = match obj.get("pitch") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|p| u32::try_from(p).ok()) {
            Some(p) if p > 0 => Some(p),
            _ => {
                return whole(format!(
                    "{name}: `pitch` must be a positive whole number of parts, got {v}"
                ))
            }
        },
    };
    let plan_machine = match obj.get("machine") {
        None | Some(Value::Null) => None,
        Some(_) => match get_id(obj, "machine") {
            Ok(m) => Some(m),
            Err(e) => return whole(format!("{name}: {e}")),
        },
    };
    let items = match obj.get("orders") {
        None | Some(Value::Null) => return whole(format!("{name}: missing field `orders`")),
        Some(Value::Array(a)) if a.is_empty() => {
            return whole(format!("{name}: `orders` is empty"))
        }
        Some(Value::Array(a)) if a.len() > MAX_PLAN_ORDERS => {
            return whole(format!(
                "{name}: {} orders, at most {MAX_PLAN_ORDERS} per plan",
                a.len()
            ))
        }
        Some(Value::Array(a)) => a,
        Some(other) => {
            return whole(format!(
                "{name}: `orders` must be an array, got {}",
                kind_of(other)
            ))
        }
    };

    let mut results: Vec<Result<WorkOrder, Rejection>> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        results.push(match item {
            Value::Object(o) => match o.get("type") {
                None | Some(Value::Null) => parse_order(o, config, plan_machine.as_deref()),
                Some(Value::String(t)) if t == "order" => {
                    parse_order(o, config, plan_machine.as_deref())
                }
                Some(other) => Err(ident_rejection(
                    o,
                    format!("orders[{i}]: `type` inside a plan must be \"order\", got {other}"),
                )),
            },
            other => Err(Rejection::bare(format!(
                "orders[{i}] must be an object, got {}",
                kind_of(other)
            ))),
        });
        // An order without a valid id is named by its place in the plan.
        if let Some(Err(e)) = results.last_mut() {
            if !e.reason.starts_with("order") {
                e.reason = format!("orders[{i}]: {}", e.reason);
            }
        }
    }
    if results
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.order_id.is_none()))
    {
        let first = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .map(|e| e.reason.clone())
            .unwrap_or_default();
        return whole(format!("{name}: none of its orders can be read ({first})"));
    }
    // The same order twice in one plan is a planning error, not idempotency.
    let mut seen = BTreeSet::new();
    let mut duplicate = None;
    for o in results.iter().flatten() {
        if !seen.insert(o.order_id.clone()) {
            duplicate = Some(o.order_id.clone());
        }
    }
    let first_problem = results
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| e.reason.clone()))
        .or_else(|| duplicate.map(|d| format!("order {d} appears twice in the plan")));
    let orders: Vec<WorkOrder> = match first_problem {
        None => results.into_iter().flatten().collect(),
        Some(problem) => {
            let rejections = results
                .into_iter()
                .map(|r| {
                    let mut rej = match r {
                        Ok(o) => Rejection {
                            order_id: Some(o.order_id),
                            revision: Some(o.revision),
                            machine: Some(o.machine),
                            plan_id: None,
                            command: None,
                            reason: format!("{name} rejected as a whole: {problem}"),
                        },
                        Err(mut e) => {
                            e.reason = format!("{name}: {}", e.reason);
                            e
                        }
                    };
                    rej.plan_id = Some(plan_id.clone());
                    rej
                })
                .collect();
            return Err(rejections);
        }
    };
    if level {
        if let Err(e) = crate::orders::level::check_plan_size(&orders, pitch) {
            return Err(orders
                .iter()
                .map(|o| Rejection {
                    order_id: Some(o.order_id.clone()),
                    revision: Some(o.revision),
                    machine: Some(o.machine.clone()),
                    plan_id: Some(plan_id.clone()),
                    command: None,
                    reason: format!("{name}: {e}"),
                })
                .collect());
        }
    }
    Ok(Plan {
        plan_id,
        level,
        pitch,
        orders,
    })
}

fn parse_on_order(obj: &Map<String, Value>, kind: CommandKind) -> Result<Command, Vec<Rejection>> {
    let fail = |reason: String| {
        let mut r = ident_rejection(obj, reason);
        r.command = Some(kind);
        Err(vec![r])
    };
    let order_id = match get_id(obj, "order_id") {
        Ok(id) => id,
        Err(e) => return fail(format!("{}: {e}", kind.as_str())),
    };
    if let Some(e) = unknown_keys(obj, &["type", "order_id"]) {
        return fail(format!("{} of order {order_id}: {e}", kind.as_str()));
    }
    Ok(Command::OnOrder { kind, order_id })
}

/// One register write of a release, with the name it has in the config.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedWrite {
    /// `order_number`, `product_code`, `quantity`, `params.<name>` or `start`.
    pub name: String,
    pub write: RegisterWrite,
    /// The value as the order gave it (for the audit trail).
    pub value: String,
}

/// The writes that release an order, in the order they are made: order
/// number, product code, quantity, parameters, and last the start bit (so a
/// machine never starts on half-written values). Every value is checked
/// against its register's type range and configured `min`/`max`.
pub fn release_writes(
    regs: &OrderRegistersConfig,
    order_number: u64,
    product: &str,
    quantity: u32,
    params: &BTreeMap<String, Value>,
) -> Result<Vec<NamedWrite>, String> {
    let mut out = Vec::new();
    let mut push = |name: String, reg: &OrderRegister, value: &Value| -> Result<(), String> {
        let data = encode(reg, value).map_err(|e| format!("{name}: {e}"))?;
        out.push(NamedWrite {
            name,
            write: RegisterWrite {
                area: reg.area,
                address: reg.address,
                data,
            },
            value: value.to_string(),
        });
        Ok(())
    };
    push(
        "order_number".into(),
        &regs.order_number,
        &Value::from(order_number),
    )?;
    let code = regs
        .product_code
        .map
        .get(product)
        .ok_or_else(|| format!("product {product:?} is not in the product_code map"))?;
    push(
        "product_code".into(),
        &regs.product_code,
        &Value::from(*code),
    )?;
    push("quantity".into(), &regs.quantity, &Value::from(quantity))?;
    for (name, value) in params {
        let Some(reg) = regs.params.get(name) else {
            let known: Vec<&str> = regs.params.keys().map(String::as_str).collect();
            return Err(format!(
                "unknown parameter {name:?} (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        };
        push(format!("parameter {name}"), reg, value)?;
    }
    push("start".into(), &regs.start, &Value::Bool(true))?;
    Ok(out)
}

/// The write that stops a machine on its order (hold, cancel): start = false.
pub fn stop_write(regs: &OrderRegistersConfig) -> Result<NamedWrite, String> {
    let data = encode(&regs.start, &Value::Bool(false)).map_err(|e| format!("start: {e}"))?;
    Ok(NamedWrite {
        name: "start".into(),
        write: RegisterWrite {
            area: regs.start.area,
            address: regs.start.address,
            data,
        },
        value: "false".into(),
    })
}

/// The order number the machine is given: the book's arrival number, folded
/// into the register's range (1..=max) so a small register never overflows.
pub fn order_number_for(regs: &OrderRegistersConfig, arrival: u64) -> u64 {
    let type_max: u64 = match regs.order_number.data_type {
        DataType::U16 => u64::from(u16::MAX),
        DataType::I16 => i16::MAX as u64,
        DataType::U32 => u64::from(u32::MAX),
        DataType::I32 | DataType::F32 => i32::MAX as u64,
        DataType::Bool => 1,
        _ => i64::MAX as u64,
    };
    let cap = match regs.order_number.max {
        Some(m) if m >= 1.0 && (m as u64) < type_max => m as u64,
        _ => type_max,
    };
    (arrival.saturating_sub(1) % cap.max(1)) + 1
}

/// Encode one value into what its register holds; reject values outside the
/// type's range or the register's `min`/`max`.
pub fn encode(reg: &OrderRegister, value: &Value) -> Result<WriteData, String> {
    // Bools are 1/0 to numeric registers.
    let num: f64 = match value {
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number"))?,
        other => return Err(format!("must be a number or bool, got {}", kind_of(other))),
    };
    let int: Option<i128> = match value {
        Value::Bool(b) => Some(i128::from(u8::from(*b))),
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        _ => None,
    };
    let range = |lo: f64, hi: f64| -> String {
        let lo = reg.min.map_or(lo, |m| m.max(lo));
        let hi = reg.max.map_or(hi, |m| m.min(hi));
        format!("{lo}..={hi}")
    };
    let (type_lo, type_hi): (f64, f64) = match reg.data_type {
        DataType::Bool => (0.0, 1.0),
        DataType::U16 => (0.0, 65535.0),
        DataType::I16 => (-32768.0, 32767.0),
        DataType::U32 => (0.0, 4294967295.0),
        DataType::I32 => (-2147483648.0, 2147483647.0),
        DataType::U64 => (0.0, u64::MAX as f64),
        DataType::I64 => (i64::MIN as f64, i64::MAX as f64),
        DataType::F32 => (f32::MIN as f64, f32::MAX as f64),
        DataType::F64 => (f64::MIN, f64::MAX),
        DataType::String => return Err("strings cannot be written by orders".into()),
    };
    let integral = !matches!(reg.data_type, DataType::F32 | DataType::F64);
    if integral && int.is_none() {
        return Err(format!(
            "{value} is not a whole number ({} register, allowed {})",
            reg.data_type,
            range(type_lo, type_hi)
        ));
    }
    let outside = num < type_lo
        || num > type_hi
        || reg.min.is_some_and(|m| num < m)
        || reg.max.is_some_and(|m| num > m)
        || !num.is_finite();
    if outside {
        return Err(format!(
            "{value} is outside the allowed range {}",
            range(type_lo, type_hi)
        ));
    }
    if reg.area == Area::Coil {
        return match int {
            Some(0) => Ok(WriteData::Coil(false)),
            Some(1) => Ok(WriteData::Coil(true)),
            _ => Err(format!("{value} is not a bit (0/1, false/true)")),
        };
    }
    let i = int.unwrap_or(0);
    // Big-endian bytes of the value, in 16-bit words, most significant first.
    let bytes: Vec<u8> = match reg.data_type {
        DataType::Bool | DataType::U16 => (i as u16).to_be_bytes().to_vec(),
        DataType::I16 => (i as i16).to_be_bytes().to_vec(),
        DataType::U32 => (i as u32).to_be_bytes().to_vec(),
        DataType::I32 => (i as i32).to_be_bytes().to_vec(),
        DataType::U64 => (i as u64).to_be_bytes().to_vec(),
        DataType::I64 => (i as i64).to_be_bytes().to_vec(),
        DataType::F32 => (num as f32).to_be_bytes().to_vec(),
        DataType::F64 => num.to_be_bytes().to_vec(),
        DataType::String => return Err("strings cannot be written by orders".into()),
    };
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| match reg.byte_order {
            Endian::Big => u16::from_be_bytes([c[0], c[1]]),
            Endian::Little => u16::from_le_bytes([c[0], c[1]]),
        })
        .collect();
    if reg.word_order == Endian::Little {
        words.reverse();
    }
    Ok(WriteData::Registers(words))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(area: Area, data_type: DataType) -> OrderRegister {
        OrderRegister {
            area,
            address: 0,
            data_type,
            word_order: Endian::Big,
            byte_order: Endian::Big,
            min: None,
            max: None,
            map: BTreeMap::new(),
        }
    }

    #[test]
    fn a_u32_is_written_most_significant_word_first() {
        let r = reg(Area::Holding, DataType::U32);
        assert_eq!(
            encode(&r, &Value::from(0x0001_0002u32)),
            Ok(WriteData::Registers(vec![1, 2]))
        );
        let mut little = r.clone();
        little.word_order = Endian::Little;
        assert_eq!(
            encode(&little, &Value::from(0x0001_0002u32)),
            Ok(WriteData::Registers(vec![2, 1]))
        );
    }

    #[test]
    fn values_outside_the_type_or_configured_range_are_refused() {
        let mut r = reg(Area::Holding, DataType::U16);
        assert!(encode(&r, &Value::from(70000)).is_err());
        assert!(encode(&r, &Value::from(-1)).is_err());
        assert!(encode(&r, &Value::from(1.5)).is_err());
        r.max = Some(100.0);
        let e = encode(&r, &Value::from(101)).unwrap_err();
        assert!(e.contains("0..=100"), "{e}");
        assert_eq!(
            encode(&r, &Value::from(100)),
            Ok(WriteData::Registers(vec![100]))
        );
    }

    #[test]
    fn a_coil_takes_only_a_bit() {
        let r = reg(Area::Coil, DataType::Bool);
        assert_eq!(encode(&r, &Value::Bool(true)), Ok(WriteData::Coil(true)));
        assert_eq!(encode(&r, &Value::from(0)), Ok(WriteData::Coil(false)));
        assert!(encode(&r, &Value::from(2)).is_err());
    }

    #[test]
    fn order_numbers_fold_into_a_small_register() {
        let mut regs = OrderRegistersConfig {
            order_number: reg(Area::Holding, DataType::U16),
            product_code: reg(Area::Holding, DataType::U16),
            quantity: reg(Area::Holding, DataType::U16),
            start: reg(Area::Coil, DataType::Bool),
            max_quantity: 10,
            params: BTreeMap::new(),
        };
        assert_eq!(order_number_for(&regs, 1), 1);
        assert_eq!(order_number_for(&regs, 65535), 65535);
        assert_eq!(order_number_for(&regs, 65536), 1);
        regs.order_number.max = Some(999.0);
        assert_eq!(order_number_for(&regs, 1000), 1);
    }
}
