//! The `linegate` command line: parses arguments, sets up logging and runs one
//! command. Commands only call into the library; they hold no logic of their
//! own beyond formatting what they print. Errors are `anyhow` here, at the edge.

mod commands;
mod docs;
mod table;
mod tui;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// linegate: reads the machines of a factory line over Modbus and MQTT,
/// derives their true state and utilisation, reports upstream and dispatches
/// levelled work orders.
#[derive(Debug, Parser)]
#[command(name = "linegate", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct ConfigArg {
    /// Config file. Default: $LINEGATE_CONFIG, else /etc/linegate/linegate.toml.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (what systemd starts).
    Run(ConfigArg),
    /// Run the agent on a built-in simulated line and show a live screen (q, Esc or Ctrl-C quit). Needs nothing installed.
    Demo(DemoArgs),
    /// Serve simulated machines as Modbus TCP servers on loopback.
    Simulate(SimulateArgs),
    /// Check a config file: report every problem at once, and show the read plan.
    CheckConfig(ConfigArg),
    /// Read every configured machine once and print the decoded values as JSON.
    Read(ReadArgs),
    /// Show each machine's state and the current period's utilisation (from the store).
    Status(StatusArgs),
    /// Print closed utilisation periods from the store.
    Report(ReportArgs),
    /// List work orders and their states.
    Orders(OrdersArgs),
    /// Send an order, a plan or a command to the gateway through its broker
    /// (the config's uplink section) and print the gateway's answers.
    Order(OrderArgs),
    /// Print a shell completion script to stdout (the package installs them).
    #[command(hide = true)]
    Completions(docs::CompletionsArgs),
    /// Write the man pages (linegate.1, linegate-COMMAND.1) into a directory.
    #[command(hide = true)]
    Man(docs::ManArgs),
    /// Live screen of a running agent (from its store, read only): state,
    /// reason, OEE, parts and order per machine, the uplink and its backlog.
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub struct OrderArgs {
    #[command(subcommand)]
    pub action: OrderAction,
}

#[derive(Debug, Subcommand)]
pub enum OrderAction {
    /// Publish ORDER.json or PLAN.json to {p}/orders/cmd and wait for one
    /// answer per order. Exit 1 when one is rejected, 2 on no answer.
    Send(OrderSendArgs),
    /// Hold an order (it is not released, or stopped on its machine).
    Hold(OrderIdArgs),
    /// Put a held order back in its queue.
    Resume(OrderIdArgs),
    /// Cancel an order.
    Cancel(OrderIdArgs),
}

#[derive(Debug, Args)]
pub struct OrderSendArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// A JSON file holding one order or one plan (docs/orders.md).
    #[arg(value_name = "ORDER.json|PLAN.json")]
    pub file: PathBuf,
    #[command(flatten)]
    pub wait: AnswerArgs,
}

#[derive(Debug, Args)]
pub struct OrderIdArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The order's `order_id`.
    #[arg(value_name = "ID")]
    pub order_id: String,
    #[command(flatten)]
    pub wait: AnswerArgs,
}

#[derive(Debug, Args)]
pub struct AnswerArgs {
    /// How long to wait for the answers, seconds.
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub timeout_s: u64,
    /// Print the answers as they came (one status JSON per line).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many simulated machines.
    #[arg(long, default_value_t = 4)]
    pub machines: usize,
    /// Seed of the simulated schedules (same seed, same line).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Time compression of the simulated schedules (1 = real time).
    #[arg(long, default_value_t = 10.0)]
    pub speed: f64,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "S")]
    pub seconds: Option<u64>,
    /// Print log lines instead of the live screen.
    #[arg(long)]
    pub no_table: bool,
    /// Accounting period in minutes for the demo (short, to see periods close).
    #[arg(long, default_value_t = 1)]
    pub period_minutes: u32,
    /// Also report to this MQTT broker, e.g. mqtt://127.0.0.1:1883.
    #[arg(long, value_name = "URL")]
    pub uplink: Option<String>,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// How many simulated machines (sim01, sim02, ...).
    #[arg(long, default_value_t = 4)]
    pub machines: usize,
    /// TCP port of the first machine; machine N (1, 2, ...) listens on
    /// base_port + N - 1 on 127.0.0.1. 0 picks free ports.
    #[arg(long, default_value_t = 5020)]
    pub base_port: u16,
    /// Seed of the simulated schedules (same seed, same line).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Time compression of the simulated schedules (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Append the ground truth (state changes) as JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Write a linegate config for the simulated line to this file.
    #[arg(long, value_name = "FILE")]
    pub write_config: Option<PathBuf>,
    /// data_dir of the written config.
    #[arg(long, value_name = "DIR", default_value = "./linegate-data")]
    pub data_dir: PathBuf,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "S")]
    pub seconds: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Read once and exit (the only mode).
    #[arg(long)]
    pub once: bool,
    /// Only this machine.
    #[arg(long, value_name = "ID")]
    pub machine: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only the buses' counters, one line per bus (with --json: an object
    /// `{"buses": [...]}`; the machines' array of plain --json is unchanged).
    #[arg(long)]
    pub buses: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this machine (one neither configured nor in the store is an error).
    #[arg(long, value_name = "ID")]
    pub machine: Option<String>,
    /// Periods ending after this time (RFC 3339, e.g. 2026-11-26T06:00:00Z).
    #[arg(long, value_name = "T")]
    pub from: Option<String>,
    /// Periods starting before this time (RFC 3339).
    #[arg(long, value_name = "T")]
    pub to: Option<String>,
    /// One JSON object per period, the contract's fields (times in UTC).
    #[arg(long)]
    pub json: bool,
    /// Times in UTC instead of the site's gateway.timezone.
    #[arg(long)]
    pub utc: bool,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Refresh every this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval_ms: u64,
    /// Print the screen once as plain lines and exit.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct OrdersArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only the orders of this machine.
    #[arg(long, value_name = "ID")]
    pub machine: Option<String>,
    /// A JSON array of orders (fields in docs/orders.md, "linegate orders").
    #[arg(long)]
    pub json: bool,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("linegate: {e:#}");
            ExitCode::from(2)
        }
    }
}
