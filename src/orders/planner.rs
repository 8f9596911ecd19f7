//! The planner's side of `{p}/orders/cmd`: what `linegate order send|hold|
//! resume|cancel` publishes, and which of the statuses on
//! `{p}/orders/status` answer it. It connects to the broker of the config's
//! `[uplink]` (URL, username and password, TLS) as a client of its own,
//! subscribes to the answers before it publishes (so none is missed),
//! publishes at QoS 1 and waits for one `accepted` or `rejected` per order
//! the message names. It never touches the gateway's store: the gateway
//! answers, this only listens.
//!
//! Matching (pure, [`Waiting`]): an order is answered by a status with its
//! `order_id` and no `command`; a command by one with its `order_id` and
//! `command`; a plan by the statuses with its `plan_id`, one per order (all
//! accepted or all rejected, contract v1.1), or a single rejection with
//! `order_id: null` when its orders cannot be read at all.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::Value;
use tokio::time::Instant;

use crate::config::Config;
use crate::orders::command::CommandKind;
use crate::uplink::tls;

/// Largest packet sent or taken (the agent announces the same over MQTT 5).
const MAX_PACKET_BYTES: usize = 4 * 1024 * 1024;

/// Why a message could not be sent or its answers did not come.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    #[error(
        "{0} has no [uplink] section: the planner commands reach the gateway through its broker"
    )]
    NoUplink(String),
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("uplink: {0}")]
    Uplink(#[from] crate::uplink::UplinkError),
    #[error("cannot reach the broker {broker} (uplink.url): {reason}")]
    Unreachable { broker: String, reason: String },
    #[error(
        "broker {broker} refused the subscription to {topic} (check the ACL of uplink.username)"
    )]
    SubscribeRefused { broker: String, topic: String },
    #[error("{0}")]
    NoAnswer(String),
}

/// What the message is, for matching its answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Order { order_id: String },
    Plan { plan_id: String, orders: usize },
    Command { kind: CommandKind, order_id: String },
}

impl Expect {
    /// Read what a message asks, to know its answers. Only what matching
    /// needs is checked here; the gateway checks everything else and
    /// answers `rejected` with the reason.
    pub fn of_message(message: &Value) -> Result<Expect, String> {
        let obj = message
            .as_object()
            .ok_or("the file must hold one JSON object: an order or a plan")?;
        let text = |key: &str| obj.get(key).and_then(Value::as_str).map(str::to_owned);
        match obj.get("type").and_then(Value::as_str) {
            Some("order") => Ok(Expect::Order {
                order_id: text("order_id").ok_or("an order needs a string `order_id`")?,
            }),
            Some("plan") => Ok(Expect::Plan {
                plan_id: text("plan_id").ok_or("a plan needs a string `plan_id`")?,
                orders: obj
                    .get("orders")
                    .and_then(Value::as_array)
                    .map_or(1, |a| a.len().max(1)),
            }),
            Some(other) => Err(format!(
                "`type` {other:?}: `order send` sends an order or a plan; use `order hold|resume|cancel ID` for commands"
            )),
            None => Err("missing string `type` (\"order\" or \"plan\")".into()),
        }
    }
}

/// The answers to one message, as they arrive.
#[derive(Debug, Clone)]
pub struct Waiting {
    expect: Expect,
    /// The statuses that answered, in arrival order.
    pub answers: Vec<Value>,
}

impl Waiting {
    pub fn new(expect: Expect) -> Waiting {
        Waiting {
            expect,
            answers: Vec::new(),
        }
    }

    /// Take a status from `{p}/orders/status` if it answers the message.
    /// Returns whether it did.
    pub fn offer(&mut self, status: &Value) -> bool {
        let state = status.get("state").and_then(Value::as_str);
        if !matches!(state, Some("accepted") | Some("rejected")) {
            return false;
        }
        let order_id = status.get("order_id").and_then(Value::as_str);
        let command = status.get("command").and_then(Value::as_str);
        let plan_id = status.get("plan_id").and_then(Value::as_str);
        let ours = match &self.expect {
            Expect::Order { order_id: id } => {
                command.is_none()
                    && plan_id.is_none()
                    && match order_id {
                        Some(o) => o == id,
                        // An id the gateway could not read: its reason quotes it.
                        None => status
                            .get("reason")
                            .and_then(Value::as_str)
                            .is_some_and(|r| r.contains(&format!("{id:?}"))),
                    }
            }
            Expect::Plan { plan_id: id, .. } => command.is_none() && plan_id == Some(id.as_str()),
            Expect::Command { kind, order_id: id } => {
                command == Some(kind.as_str()) && order_id == Some(id.as_str())
            }
        };
        if ours {
            self.answers.push(status.clone());
        }
        ours
    }

    /// Every answer is in. A plan rejected as a whole may answer with a
    /// single rejection (`order_id: null`): that ends it too.
    pub fn complete(&self) -> bool {
        match &self.expect {
            Expect::Plan { orders, .. } => {
                self.answers.len() >= *orders
                    || self.answers.iter().any(|a| {
                        a.get("order_id").is_some_and(Value::is_null)
                            && a.get("state").and_then(Value::as_str) == Some("rejected")
                            && a.get("reason")
                                .and_then(Value::as_str)
                                .is_some_and(|r| !r.contains("orders["))
                    })
            }
            _ => !self.answers.is_empty(),
        }
    }

    /// How many answers are expected.
    pub fn expected(&self) -> usize {
        match &self.expect {
            Expect::Plan { orders, .. } => *orders,
            _ => 1,
        }
    }

    /// Some answer is a rejection.
    pub fn rejected(&self) -> bool {
        self.answers
            .iter()
            .any(|a| a.get("state").and_then(Value::as_str) == Some("rejected"))
    }
}

/// One line for an answer: `accepted WO-1 (revision 1)`, `rejected WO-2: why`.
pub fn describe(answer: &Value) -> String {
    let s = |k: &str| answer.get(k).and_then(Value::as_str);
    let state = s("state").unwrap_or("?");
    let who = match (s("order_id"), s("plan_id")) {
        (Some(o), _) => o.to_owned(),
        (None, Some(p)) => format!("plan {p}"),
        (None, None) => "(no order id)".into(),
    };
    let mut line = format!("{state} {who}");
    if let Some(rev) = answer.get("revision").and_then(Value::as_u64) {
        line.push_str(&format!(" (revision {rev})"));
    }
    if let Some(c) = s("command") {
        line.push_str(&format!(" [{c}]"));
    }
    if let Some(r) = s("reason") {
        line.push_str(&format!(": {r}"));
    }
    line
}

/// How to talk to the broker, from the config.
fn options(config: &Config, config_file: &str) -> Result<(MqttOptions, String), PlannerError> {
    let u = config
        .uplink
        .as_ref()
        .ok_or_else(|| PlannerError::NoUplink(config_file.to_owned()))?;
    let addr = tls::parse_url(&u.url)?;
    let broker = format!("{}:{}", addr.host, addr.port);
    let client_id = format!(
        "linegate-planner-{}-{}",
        config.gateway.id,
        std::process::id()
    );
    let mut o = MqttOptions::new(client_id, &addr.host, addr.port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if addr.tls {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls::client_config(u)?)),
        ));
    }
    match (&u.username, tls::password(u)?) {
        (Some(user), p) => {
            o.set_credentials(user, p.unwrap_or_default());
        }
        (None, Some(_)) => return Err(crate::uplink::UplinkError::PasswordWithoutUser.into()),
        (None, None) => {}
    }
    Ok((o, broker))
}

/// What [`send`] saw.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub waiting: Waiting,
    /// The gateway's retained status (`{p}/status`), if the broker had one.
    pub gateway_status: Option<Value>,
}

/// Publish `payload` to `{p}/orders/cmd` and wait up to `timeout` for its
/// answers. Err when the broker cannot be reached, refuses us, or the
/// answers do not all come in time (the message may still reach the
/// gateway: the broker has it once this says "delivered").
pub async fn send(
    config: &Config,
    config_file: &str,
    payload: Vec<u8>,
    expect: Expect,
    timeout: Duration,
) -> Result<Outcome, PlannerError> {
    let (options, broker) = options(config, config_file)?;
    let prefix = config.topic_prefix();
    let cmd_topic = format!("{prefix}/{}", crate::uplink::message::ORDERS_CMD_SUFFIX);
    let status_topic = format!("{prefix}/orders/status");
    let gateway_topic = format!("{prefix}/{}", crate::uplink::message::STATUS_SUFFIX);
    let (client, mut events) = AsyncClient::new(options, 16);
    let deadline = Instant::now() + timeout;
    let mut waiting = Waiting::new(expect);
    let mut gateway_status = None;
    let mut delivered = false;
    let mut subscribed = false;
    let mut connected = false;
    // After a plan's first rejection, a short wait for the rest of its answers.
    let mut grace: Option<Instant> = None;
    let unreachable = |reason: String| PlannerError::Unreachable {
        broker: broker.clone(),
        reason,
    };
    loop {
        if waiting.complete() {
            break;
        }
        let until = grace.map_or(deadline, |g| g.min(deadline));
        let event = match tokio::time::timeout_at(until, events.poll()).await {
            Err(_) if grace.is_some() && Instant::now() < deadline => break,
            Err(_) => {
                let _ = client.try_disconnect();
                let status = describe_gateway(gateway_status.as_ref());
                return Err(PlannerError::NoAnswer(if !connected {
                    format!("cannot reach the broker {broker} (uplink.url): no CONNACK within {timeout:?}")
                } else if !delivered {
                    format!("the broker {broker} did not acknowledge the message on {cmd_topic} within {timeout:?}")
                } else {
                    format!(
                        "no answer from gateway {} within {timeout:?} ({} of {} answer(s)); the broker has the message on {cmd_topic} and the gateway takes it when it connects; gateway status: {status}",
                        config.gateway.id,
                        waiting.answers.len(),
                        waiting.expected(),
                    )
                }));
            }
            Ok(Err(e)) => {
                let _ = client.try_disconnect();
                return Err(unreachable(e.to_string()));
            }
            Ok(Ok(ev)) => ev,
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                connected = true;
                client
                    .subscribe_many([
                        rumqttc::SubscribeFilter::new(status_topic.clone(), QoS::AtLeastOnce),
                        rumqttc::SubscribeFilter::new(gateway_topic.clone(), QoS::AtLeastOnce),
                    ])
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                if let Some(i) = ack
                    .return_codes
                    .iter()
                    .position(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    let _ = client.try_disconnect();
                    return Err(PlannerError::SubscribeRefused {
                        broker,
                        topic: if i == 0 { status_topic } else { gateway_topic },
                    });
                }
                if !subscribed {
                    subscribed = true;
                    client
                        .publish(cmd_topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                        .await
                        .map_err(|e| unreachable(e.to_string()))?;
                }
            }
            Event::Incoming(Packet::PubAck(_)) => delivered = true,
            Event::Incoming(Packet::Publish(p)) => {
                let Ok(body) = serde_json::from_slice::<Value>(&p.payload) else {
                    continue;
                };
                if p.topic == gateway_topic {
                    gateway_status = Some(body);
                } else if p.topic == status_topic
                    && subscribed
                    && waiting.offer(&body)
                    && waiting.rejected()
                    && grace.is_none()
                {
                    grace = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    // Let the DISCONNECT go out (bounded).
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(ev) = events.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    Ok(Outcome {
        waiting,
        gateway_status,
    })
}

/// The gateway's retained status in a few words.
pub fn describe_gateway(status: Option<&Value>) -> String {
    match status {
        None => "unknown (no retained status on the broker)".into(),
        Some(s) => match s.get("online").and_then(Value::as_bool) {
            Some(true) => "online".into(),
            Some(false) => format!(
                "offline since {}",
                s.get("ts").and_then(Value::as_str).unwrap_or("?")
            ),
            None => "unreadable".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_order_is_answered_by_its_own_accepted_and_nothing_else() {
        let expect = Expect::of_message(&json!({"type": "order", "order_id": "WO-1"}));
        let mut w = Waiting::new(expect.clone().unwrap_or_else(|e| panic!("{e}")));
        assert!(!w.offer(&json!({"order_id": "WO-1", "state": "queued"})));
        assert!(!w.offer(&json!({"order_id": "WO-2", "state": "accepted"})));
        assert!(!w.offer(&json!({"order_id": "WO-1", "state": "accepted", "command": "hold"})));
        assert!(!w.complete());
        assert!(w.offer(&json!({"order_id": "WO-1", "state": "accepted", "revision": 1})));
        assert!(w.complete() && !w.rejected());
    }

    #[test]
    fn a_plan_waits_for_one_answer_per_order_or_a_single_whole_plan_rejection() {
        let msg = json!({"type": "plan", "plan_id": "HJ-1", "orders": [{}, {}, {}]});
        let mut w = Waiting::new(Expect::of_message(&msg).unwrap_or_else(|e| panic!("{e}")));
        for id in ["A", "B"] {
            assert!(w.offer(&json!({"order_id": id, "plan_id": "HJ-1", "state": "accepted"})));
        }
        assert!(!w.complete());
        assert!(w.offer(&json!({"order_id": "C", "plan_id": "HJ-1", "state": "accepted"})));
        assert!(w.complete());

        let mut w = Waiting::new(Expect::of_message(&msg).unwrap_or_else(|e| panic!("{e}")));
        assert!(w.offer(
            &json!({"order_id": null, "plan_id": "HJ-1", "state": "rejected",
                                 "reason": "plan HJ-1: unknown field(s) x"})
        ));
        assert!(w.complete() && w.rejected());

        // An order named by its place is one answer of several, not the end.
        let mut w = Waiting::new(Expect::of_message(&msg).unwrap_or_else(|e| panic!("{e}")));
        assert!(w.offer(
            &json!({"order_id": null, "plan_id": "HJ-1", "state": "rejected",
                                 "reason": "plan HJ-1: orders[2]: missing field `order_id`"})
        ));
        assert!(!w.complete());
    }

    #[test]
    fn a_command_is_answered_by_the_status_naming_it() {
        let mut w = Waiting::new(Expect::Command {
            kind: CommandKind::Hold,
            order_id: "WO-1".into(),
        });
        assert!(!w.offer(&json!({"order_id": "WO-1", "state": "accepted"})));
        assert!(!w.offer(&json!({"order_id": "WO-1", "state": "accepted", "command": "cancel"})));
        assert!(w.offer(
            &json!({"order_id": "WO-1", "state": "rejected", "command": "hold",
                                 "reason": "hold: order WO-1 is already held"})
        ));
        assert!(w.complete() && w.rejected());
        assert_eq!(
            describe(&w.answers[0]),
            "rejected WO-1 [hold]: hold: order WO-1 is already held"
        );
    }

    #[test]
    fn what_cannot_be_matched_is_refused_before_sending() {
        assert!(Expect::of_message(&json!([1])).is_err());
        assert!(Expect::of_message(&json!({"type": "order"})).is_err());
        assert!(Expect::of_message(&json!({"type": "hold", "order_id": "X"})).is_err());
        assert!(Expect::of_message(&json!({"type": "plan", "orders": []})).is_err());
    }
}
