//! The uplink to the central MQTT broker.

pub mod outbox;
