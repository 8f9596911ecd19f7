//! `/metrics`: the Prometheus (OpenMetrics) text of the agent's own
//! figures, encoded with `prometheus-client`. Nothing is counted here: a
//! scrape takes a copy of the counters where they live (the board, the
//! running buses, the uplink, the outbox, the order book, the watchdog
//! ledger) and encodes it, so `/metrics`, `linegate status` and the logs
//! agree. Every family is documented in docs/console.md.

use std::collections::BTreeMap;
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

/// The text of one scrape.
pub fn encode(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Copy everything a scrape shows.
pub async fn scrape(s: &Sources) -> Result<Scrape, crate::store::StoreError> {
    let (statuses, rows, outbox) = s
        .store
        .call(|c| {
            Ok((
                crate::machine::history::current(c)?,
                crate::orders::book::list(c, None)?,
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
        orders: super::api::count_by_state(&rows),
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
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `GET /metrics`: OpenMetrics when the scraper asks for it (Prometheus
/// does), else the classic text format.
pub async fn metrics(State(s): State<Arc<Sources>>, headers: axum::http::HeaderMap) -> Response {
    let text = match scrape(&s).await {
        Ok(scrape) => encode(scrape),
        Err(e) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response();
        }
    };
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match text {
        Ok(text) if openmetrics => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(text) => (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            to_prometheus_text(&text),
        )
            .into_response(),
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
