//! linegate: a factory line gateway.
//!
//! Data flows one way, through typed channels:
//!
//! ```text
//!  source (Modbus TCP/RTU, MQTT)  --Sample-->  machine::engine  --MachineEvent-->  store
//!                                                                                    |
//!  orders  <--order commands--  uplink (central MQTT broker)  <--outbox rows--------+
//!    |
//!    +--> order registers of a machine (the only writes the agent makes)
//! ```
//!
//! - [`config`]: the TOML file, loading and validation.
//! - [`source`]: southbound reads: Modbus buses and MQTT machine sources.
//! - [`machine`]: state derivation, counters, shift calendar, accounting.
//! - [`store`]: the SQLite file: state changes, periods, outbox, orders.
//! - [`uplink`]: the central broker: birth/will, outbox drain, order intake.
//! - [`orders`]: levelled work orders: intake, sequencing, safe dispatch.
//! - [`sparkplug`]: the gateway as a Sparkplug B edge node (its own connection).
//! - [`reload`]: what a SIGHUP reload changes (running config vs new one, pure).
//! - [`sim`]: simulated machines served over real Modbus TCP (demo, tests).
//! - [`console`]: the local web console, `/metrics`, `/healthz` (read-only).
//! - [`systemd`]: readiness, watchdog and journal logging under systemd.
//! - [`cli`]: the `linegate` command line.
//! - [`cadence`]: the wall-clock grid the agent's periodic work falls on.

pub mod agent;
pub mod cadence;
pub mod cli;
pub mod config;
pub mod console;
pub mod machine;
pub mod memory;
pub mod orders;
pub mod reload;
pub mod sim;
pub mod source;
pub mod sparkplug;
pub mod store;
pub mod systemd;
pub mod uplink;
