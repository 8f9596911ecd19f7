//! Levelled work orders: intake from `{p}/orders/cmd`, sequencing, safe
//! dispatch to a machine's order registers, and tracking to done.
//!
//! - [`command`]: bytes → a checked command or the rejections to answer (pure).
//! - [`level`]: heijunka, Miltenburg's product-level rule (pure).
//! - [`book`]: the orders in SQLite and their state machine; every change
//!   and its status message in one transaction.
//! - [`dispatch`]: the task: intake, interlock, release writes, progress.
//! - [`waiting`]: what a queued order waits for, by the interlock (pure).
//! - [`scorecard`]: the delivery scorecard per shift and day (pure);
//!   [`scorecard_task`] publishes it.
//! - [`planner`]: the planner's client (`linegate order ...`).
//! - [`forecast`]: when each open order will be done, at risk or not (pure).
//! - [`capacity`]: a machine's free planned time over a horizon (pure).
//! - [`outlook`]: forecasts and capacity from the store to the outbox.
//!
//! Orders never write anything but the registers of a machine's
//! `[machine.orders]` section, and never send MQTT themselves: statuses go
//! to the outbox.

pub mod book;
pub mod capacity;
pub mod command;
pub mod dispatch;
pub mod forecast;
pub mod level;
pub mod outlook;
pub mod planner;
pub mod scorecard;
pub mod scorecard_task;
pub mod waiting;

use tokio::sync::oneshot;

pub use dispatch::{run_orders, run_orders_with, DispatchOptions};

/// One message from `{p}/orders/cmd`, handed over by the uplink. The uplink
/// acknowledges it to the broker only when `committed` fires, i.e. after
/// the order (or its rejection) is committed to SQLite.
#[derive(Debug)]
pub struct OrderMessage {
    pub payload: Vec<u8>,
    pub committed: oneshot::Sender<()>,
}
