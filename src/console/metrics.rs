//! `/metrics`: the Prometheus (OpenMetrics) text of the agent's own
//! figures, encoded with `prometheus-client`. Nothing is counted here: a
//! scrape takes a copy of the counters where they live (the board, the
//! running buses, the uplink, the outbox, the order book, the watchdog
//! ledger) and encodes it, so `/metrics`, `linegate status` and the logs
//! agree. Every family is documented in docs/console.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{LiveBus, Sources};
use crate::agent::MachineBoard;
use crate::machine::history::MachineStatus;
use crate::machine::MachineState;
use crate::source::modbus::bus::LATENCY_BOUNDS_S;
use crate::uplink::outbox::OutboxCounts;
use crate::uplink::UplinkSnapshot;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything one scrape shows, copied at once.
#[derive(Debug)]
pub struct Scrape {
    pub gateway: String,
    pub site: String,
    /// Machine id → its bus, in config order.
    pub machines: Vec<(String, String)>,
    pub board: BTreeMap<String, MachineBoard>,
    pub statuses: Vec<MachineStatus>,
    pub buses: Vec<LiveBus>,
    pub outbox: OutboxCounts,
    pub uplink: UplinkSnapshot,
    pub uplink_configured: bool,
    pub orders: BTreeMap<&'static str, u64>,
    /// Loop name → beating.
    pub loops: Vec<(String, bool)>,
}

type Labels = Vec<(&'static str, String)>;

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        family.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// `name` without `_total`: the encoder adds it to every sample.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let machine = |id: &str| -> Labels { vec![("machine", id.to_owned())] };
        gauge(
            &mut e,
            "linegate_info",
            "The agent: always 1, its version and identity in the labels.",
            [(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                    ("gateway", self.gateway.clone()),
                    ("site", self.site.clone()),
                ],
                1i64,
            )],
        )?;
        let boards: Vec<(&str, MachineBoard)> = self
            .machines
            .iter()
            .map(|(id, _)| (id.as_str(), self.board.get(id).cloned().unwrap_or_default()))
            .collect();
        gauge(
            &mut e,
            "linegate_machine_state",
            "1 for the state each machine is in now, 0 for the others.",
            boards.iter().flat_map(|(id, b)| {
                MachineState::ALL.iter().map(move |s| {
                    (
                        vec![
                            ("machine", (*id).to_owned()),
                            ("state", s.as_str().to_owned()),
                        ],
                        i64::from(b.state == Some(*s)),
                    )
                })
            }),
        )?;
        let period = |id: &str| {
            self.statuses
                .iter()
                .find(|s| s.machine == id)
                .and_then(|s| s.period.as_ref())
        };
        gauge(
            &mut e,
            "linegate_machine_period_state_seconds",
            "Seconds of the current accounting period each machine spent in each state so far.",
            boards
                .iter()
                .filter_map(|(id, _)| period(id).map(|p| (*id, p)))
                .flat_map(|(id, p)| {
                    let s = p.seconds;
                    [
                        ("running", s.running),
                        ("setup", s.setup),
                        ("down", s.down),
                        ("idle", s.idle),
                        ("planned_stop", s.planned_stop),
                        ("offline", s.offline),
                    ]
                    .map(|(state, v)| {
                        (
                            vec![("machine", id.to_owned()), ("state", state.to_owned())],
                            v,
                        )
                    })
                }),
        )?;
        gauge(
            &mut e,
            "linegate_machine_period_parts",
            "Parts of the current accounting period so far, by kind (produced, good, scrap).",
            boards
                .iter()
                .filter_map(|(id, _)| period(id).map(|p| (*id, p)))
                .flat_map(|(id, p)| {
                    let c = p.counts;
                    [
                        ("produced", c.produced),
                        ("good", c.good),
                        ("scrap", c.scrap),
                    ]
                    .map(|(kind, v)| {
                        (
                            vec![("machine", id.to_owned()), ("kind", kind.to_owned())],
                            v as i64,
                        )
                    })
                }),
        )?;
        gauge(
            &mut e,
            "linegate_machine_period_kpi_ratio",
            "ISO 22400 figures of the current accounting period so far (0..1); absent while undefined.",
            boards.iter().filter_map(|(id, _)| period(id).map(|p| (*id, p))).flat_map(|(id, p)| {
                let k = p.kpi;
                [
                    ("availability", k.availability),
                    ("performance", k.performance),
                    ("quality", k.quality),
                    ("oee", k.oee),
                ]
                .into_iter()
                .filter_map(move |(kpi, v)| {
                    v.map(|v| (vec![("machine", id.to_owned()), ("kpi", kpi.to_owned())], v))
                })
            }),
        )?;
        counter(
            &mut e,
            "linegate_machine_parts",
            "Parts each machine made since the agent started tracking it (across counter wraps and resets).",
            boards.iter().map(|(id, b)| (machine(id), b.produced_total)),
        )?;
        counter(
            &mut e,
            "linegate_machine_good_parts",
            "Good parts each machine made since the agent started tracking it.",
            boards.iter().map(|(id, b)| (machine(id), b.good_total)),
        )?;
        counter(
            &mut e,
            "linegate_machine_polls",
            "Polls (or MQTT messages) of each machine since the agent started.",
            boards.iter().map(|(id, b)| (machine(id), b.reads)),
        )?;
        counter(
            &mut e,
            "linegate_machine_failed_polls",
            "Polls of each machine that got no usable answer since the agent started.",
            boards.iter().map(|(id, b)| (machine(id), b.failed_reads)),
        )?;
        let bus = |b: &LiveBus| -> Labels {
            vec![
                ("bus", b.counts.bus.clone()),
                ("transport", b.counts.transport.clone()),
            ]
        };
        let modbus: Vec<&LiveBus> = self.buses.iter().filter(|b| b.latency.is_some()).collect();
        for (name, key, help) in [
            (
                "linegate_bus_requests",
                "requests",
                "Modbus requests sent on each bus (reads and writes).",
            ),
            (
                "linegate_bus_errors",
                "errors",
                "Modbus requests or connects that failed on each bus, timeouts included.",
            ),
            (
                "linegate_bus_timeouts",
                "timeouts",
                "Modbus requests on each bus that got no reply within timeout_ms.",
            ),
            (
                "linegate_bus_reconnects",
                "reconnects",
                "Connections of each Modbus bus opened again after one was dropped.",
            ),
        ] {
            counter(
                &mut e,
                name,
                help,
                modbus.iter().map(|b| (bus(b), b.counts.get(key))),
            )?;
        }
        counter(
            &mut e,
            "linegate_bus_mqtt_connections",
            "Connections each MQTT machine bus made to its broker.",
            self.buses
                .iter()
                .filter(|b| b.latency.is_none())
                .map(|b| (bus(b), b.counts.get("connections"))),
        )?;
        {
            let mut family = e.encode_descriptor(
                "linegate_bus_reply_seconds",
                "How long each Modbus bus took to answer a request (replies and exceptions; timeouts are not in it).",
                None,
                MetricType::Histogram,
            )?;
            for b in &modbus {
                let Some(l) = &b.latency else { continue };
                let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_S
                    .iter()
                    .copied()
                    .zip(l.buckets.iter().copied())
                    .collect();
                buckets.push((f64::INFINITY, l.buckets.last().copied().unwrap_or(0)));
                let labels: Labels = vec![("bus", b.counts.bus.clone())];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(l.sum_s, l.count, &buckets, None)?;
            }
        }
        let none = || -> Labels { Vec::new() };
        gauge(
            &mut e,
            "linegate_outbox_depth_messages",
            "Messages waiting in the outbox for the central broker's PUBACK.",
            [(none(), self.outbox.depth as i64)],
        )?;
        gauge(
            &mut e,
            "linegate_outbox_bytes",
            "Bytes the waiting messages charge against store.outbox_max_mb.",
            [(none(), self.outbox.bytes as i64)],
        )?;
        gauge(
            &mut e,
            "linegate_outbox_max_bytes",
            "The outbox cap (store.outbox_max_mb) in bytes.",
            [(none(), self.outbox.max_bytes as i64)],
        )?;
        counter(
            &mut e,
            "linegate_outbox_dropped_telemetry",
            "Telemetry messages dropped because the outbox was full or the disk short of space, since the store was created.",
            [(none(), self.outbox.dropped)],
        )?;
        gauge(
            &mut e,
            "linegate_uplink_connected",
            "1 while the uplink is connected to the central broker, else 0 (also 0 without an [uplink]).",
            [(none(), i64::from(self.uplink_configured && self.uplink.connected))],
        )?;
        counter(
            &mut e,
            "linegate_uplink_sent_messages",
            "Messages handed to the central broker since the agent started (resends included).",
            [(none(), self.uplink.sent)],
        )?;
        counter(
            &mut e,
            "linegate_uplink_acked_messages",
            "Messages the central broker acknowledged (PUBACK) since the agent started.",
            [(none(), self.uplink.acked)],
        )?;
        counter(
            &mut e,
            "linegate_uplink_reconnects",
            "Connections to the central broker after the first, since the agent started.",
            [(none(), self.uplink.reconnects)],
        )?;
        gauge(
            &mut e,
            "linegate_orders",
            "Work orders in the book by state (latest revision of each).",
            self.orders
                .iter()
                .map(|(state, n)| (vec![("state", (*state).to_owned())], *n as i64)),
        )?;
        gauge(
            &mut e,
            "linegate_loop_beating",
            "1 for each loop the watchdog watches that beats, 0 for one gone silent (/healthz answers 503).",
            self.loops
                .iter()
                .map(|(name, ok)| (vec![("loop", name.clone())], i64::from(*ok))),
        )?;
        Ok(())
    }
}

/// The two text formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, what Prometheus asks for.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4 ([`ClassicText`]).
    Classic,
}

/// The length of the last scrape's text: the next one is written into a
/// buffer of about that size at once, not one doubled four times over
/// (a scrape at 50 machines is about 140 KB).
static LAST_LEN: AtomicUsize = AtomicUsize::new(0);

/// The text of one scrape, in the format asked for. The classic text is
/// written as the encoder goes, not converted from a finished OpenMetrics
/// text: one copy of the text is alive at a time.
pub fn encode(scrape: Scrape, format: Format) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let last = LAST_LEN.load(Ordering::Relaxed);
    let mut text = String::with_capacity(last + last / 16);
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry)?,
        Format::Classic => {
            let mut classic = ClassicText::new(&mut text);
            prometheus_client::encoding::text::encode(&mut classic, &registry)?;
            classic.finish();
        }
    }
    LAST_LEN.store(text.len(), Ordering::Relaxed);
    Ok(text)
}

/// Copy everything a scrape shows.
pub async fn scrape(s: &Sources) -> Result<Scrape, crate::store::StoreError> {
    let (statuses, orders, outbox) = s
        .store
        .call(|c| {
            Ok((
                crate::machine::history::current(c)?,
                crate::orders::book::count_by_state(c)?,
                crate::uplink::outbox::counts(c)?,
            ))
        })
        .await?;
    let config = s.config.borrow().clone();
    let silent = s.liveness.silent(
        tokio::time::Instant::now(),
        super::api::max_silence(&config),
    );
    let board = match s.board.lock() {
        Ok(b) => b.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    Ok(Scrape {
        gateway: config.gateway.id.clone(),
        site: config.gateway.site.clone(),
        machines: config
            .machine
            .iter()
            .map(|m| (m.id.clone(), m.bus.clone()))
            .collect(),
        board,
        statuses,
        buses: (s.buses)(),
        outbox,
        uplink: s.uplink.snapshot(),
        uplink_configured: config.uplink.is_some(),
        orders,
        loops: s
            .liveness
            .registered()
            .into_iter()
            .map(|name| {
                let ok = !silent.contains(&name);
                (name, ok)
            })
            .collect(),
    })
}

/// The content type of the classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text:
/// the same samples; a counter family's `HELP`/`TYPE` lines name it with
/// its `_total` suffix (as its samples are), and the `# EOF` and `# UNIT`
/// lines, which 0.0.4 does not have, are left out. For scrapers that do not
/// ask for OpenMetrics (`promtool check metrics`, curl, older Prometheus).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + openmetrics.len() / 16);
    let mut classic = ClassicText::new(&mut out);
    // Writing to a String cannot fail.
    let _ = classic.write_str(openmetrics);
    classic.finish();
    out
}

/// A writer that turns OpenMetrics text into the classic format line by
/// line as it is written ([`to_prometheus_text`] says what changes). A
/// family's `HELP` line is held until its `TYPE` line says whether it is a
/// counter (the encoder writes `HELP`, `TYPE`, then `UNIT`); nothing else is
/// kept but the line being written.
pub struct ClassicText<'a> {
    out: &'a mut String,
    line: String,
    help: Option<String>,
}

impl<'a> ClassicText<'a> {
    pub fn new(out: &'a mut String) -> Self {
        ClassicText {
            out,
            line: String::new(),
            help: None,
        }
    }

    /// Write out what is still held (a last line without its newline).
    pub fn finish(mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.take_line(&line);
        }
        self.flush_help();
    }

    fn flush_help(&mut self) {
        if let Some(help) = self.help.take() {
            self.out.push_str(&help);
            self.out.push('\n');
        }
    }

    fn take_line(&mut self, line: &str) {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            return;
        }
        if line.starts_with("# HELP ") {
            self.flush_help();
            self.help = Some(line.to_owned());
            return;
        }
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|l| l.strip_suffix(" counter"))
        {
            if let Some(help) = self.help.take() {
                match help
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.split_once(' '))
                    .filter(|(n, _)| *n == name)
                {
                    Some((_, tail)) => {
                        self.out.push_str("# HELP ");
                        self.out.push_str(name);
                        self.out.push_str("_total ");
                        self.out.push_str(tail);
                        self.out.push('\n');
                    }
                    None => {
                        self.out.push_str(&help);
                        self.out.push('\n');
                    }
                }
            }
            self.out.push_str("# TYPE ");
            self.out.push_str(name);
            self.out.push_str("_total counter\n");
            return;
        }
        self.flush_help();
        self.out.push_str(line);
        self.out.push('\n');
    }
}

impl std::fmt::Write for ClassicText<'_> {
    fn write_str(&mut self, mut s: &str) -> std::fmt::Result {
        while let Some((head, rest)) = s.split_once('\n') {
            if self.line.is_empty() {
                self.take_line(head);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.push_str(head);
                self.take_line(&line);
                line.clear();
                self.line = line;
            }
            s = rest;
        }
        self.line.push_str(s);
        Ok(())
    }
}

/// `GET /metrics`: OpenMetrics when the scraper asks for it (Prometheus
/// does), else the classic text format.
pub async fn metrics(State(s): State<Arc<Sources>>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (format, content_type) = if openmetrics {
        (Format::OpenMetrics, CONTENT_TYPE)
    } else {
        (Format::Classic, PROMETHEUS_TEXT)
    };
    let text = match scrape(&s).await {
        Ok(scrape) => encode(scrape, format),
        Err(e) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response();
        }
    };
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_is_the_same_however_the_encoder_cuts_its_writes() {
        let om = "# HELP a_parts Parts made.\n# TYPE a_parts counter\n# UNIT a_parts parts\n\
                  a_parts_total{machine=\"m\"} 3\n# HELP b_depth Depth.\n# TYPE b_depth gauge\n\
                  b_depth 2\n# HELP c_lone Help without its type.\n# HELP d_x D.\n# TYPE d_x counter\n\
                  d_x_total 1\n# EOF\n";
        let whole = to_prometheus_text(om);
        assert_eq!(
            whole,
            "# HELP a_parts_total Parts made.\n# TYPE a_parts_total counter\n\
             a_parts_total{machine=\"m\"} 3\n# HELP b_depth Depth.\n# TYPE b_depth gauge\n\
             b_depth 2\n# HELP c_lone Help without its type.\n# HELP d_x_total D.\n\
             # TYPE d_x_total counter\nd_x_total 1\n"
        );
        for piece in [1, 2, 3, 7, 13, 64] {
            let mut out = String::new();
            let mut classic = ClassicText::new(&mut out);
            let bytes: Vec<char> = om.chars().collect();
            for chunk in bytes.chunks(piece) {
                classic
                    .write_str(&chunk.iter().collect::<String>())
                    .unwrap();
            }
            classic.finish();
            assert_eq!(out, whole, "written {piece} characters at a time");
        }
        // The last line without its newline still comes out.
        assert_eq!(to_prometheus_text("b_depth 2"), "b_depth 2\n");
    }

    #[test]
    fn the_classic_text_names_counter_families_with_total_and_drops_eof() {
        let om = "# HELP a_parts Parts.\n# TYPE a_parts counter\na_parts_total{machine=\"m\"} 3\n\
                  # HELP b_depth Depth.\n# TYPE b_depth gauge\nb_depth 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_parts_total Parts.\n# TYPE a_parts_total counter\na_parts_total{machine=\"m\"} 3\n\
             # HELP b_depth Depth.\n# TYPE b_depth gauge\nb_depth 2\n"
        );
    }
}
