//! Levelled work orders.

pub mod book;

use tokio::sync::oneshot;

/// One message from `{p}/orders/cmd`, handed over by the uplink. The uplink
/// acknowledges it to the broker only when `committed` fires, i.e. after
/// the order (or its rejection) is committed to SQLite.
#[derive(Debug)]
pub struct OrderMessage {
    pub payload: Vec<u8>,
    pub committed: oneshot::Sender<()>,
}
