//! The state engine following a reloaded config in place: a machine that
//! stays keeps its state, `since` and open period (also when its own rules
//! change); a removed one ends `offline` with the reload's reason from its
//! last good read; an added one starts; a new period length restarts every
//! machine from where it stands. Samples are played by the test, which is
//! the record of what each machine did.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use linegate::config::Config;
use linegate::machine::engine::{engine_channel, machine_views, run_engine, Reconfigure};
use linegate::machine::{MachineEvent, MachineState, StateChange};
use linegate::reload::REMOVED_REASON;
use linegate::source::{Readings, Sample, SampleContent, Value};
use linegate::systemd::Liveness;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn machine(id: &str, running: &str) -> String {
    format!(
        "\n[[machine]]\nid = \"{id}\"\nbus = \"cell-a\"\npoll_ms = 100\n\n\
         [[machine.signal]]\nname = \"cycle_active\"\narea = \"coil\"\naddress = 0\ntype = \"bool\"\n\n\
         [machine.state]\nrunning = \"{running}\"\n"
    )
}

fn config(period_minutes: u32, machines: &[String]) -> Arc<Config> {
    let text = format!(
        "[gateway]\nid = \"gw1\"\nsite = \"site1\"\n\n[accounting]\nperiod_minutes = {period_minutes}\n\n\
         [[bus]]\nid = \"cell-a\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\n{}",
        machines.concat()
    );
    Arc::new(Config::from_toml(&text, Path::new("reload.toml")).unwrap_or_else(|e| panic!("{e}")))
}

fn running(machine: &str, on: bool) -> Sample {
    let readings: Readings = [("cycle_active".to_string(), Ok(Value::Bool(on)))]
        .into_iter()
        .collect();
    Sample {
        machine: machine.into(),
        at: Utc::now(),
        mono: Instant::now(),
        content: SampleContent::Signals(readings),
    }
}

fn changes(events: &[MachineEvent], machine: &str) -> Vec<StateChange> {
    events
        .iter()
        .filter_map(|e| match e {
            MachineEvent::State(c) if c.machine == machine => Some(c.clone()),
            _ => None,
        })
        .collect()
}

struct Engine {
    samples: mpsc::Sender<Sample>,
    events: mpsc::Receiver<MachineEvent>,
    handle: linegate::machine::engine::EngineHandle,
    views: HashMap<String, tokio::sync::watch::Receiver<linegate::machine::MachineView>>,
    seen: Vec<MachineEvent>,
}

impl Engine {
    fn start(config: &Arc<Config>) -> Engine {
        let (samples, sample_rx) = mpsc::channel(64);
        let (event_tx, events) = mpsc::channel(4096);
        let (view_tx, views) = machine_views(config, Utc::now());
        let (handle, commands) = engine_channel();
        tokio::spawn(run_engine(
            config.clone(),
            Vec::new(),
            sample_rx,
            event_tx,
            view_tx,
            commands,
            Liveness::new().register("state engine"),
            CancellationToken::new(),
        ));
        Engine {
            samples,
            events,
            handle,
            views,
            seen: Vec::new(),
        }
    }

    async fn read(&mut self, machine: &str, on: bool) {
        self.samples
            .send(running(machine, on))
            .await
            .expect("engine runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.drain();
    }

    fn drain(&mut self) -> Vec<MachineEvent> {
        let mut new = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            new.push(e);
        }
        self.seen.extend(new.clone());
        new
    }

    async fn reconfigure(
        &mut self,
        config: &Arc<Config>,
        added: &[&str],
    ) -> linegate::machine::engine::Reconfigured {
        let (mut views_tx, mut views_rx) = machine_views(config, Utc::now());
        views_tx.retain(|id, _| added.contains(&id.as_str()));
        views_rx.retain(|id, _| added.contains(&id.as_str()));
        self.views.extend(views_rx);
        let done = self
            .handle
            .reconfigure(Reconfigure {
                config: config.clone(),
                views: views_tx,
                resume: Vec::new(),
                removed_reason: REMOVED_REASON.into(),
            })
            .await
            .expect("the engine answers");
        tokio::time::sleep(Duration::from_millis(20)).await;
        done
    }
}

#[tokio::test]
async fn machines_that_stay_keep_their_state_and_period_while_removed_and_added_ones_end_and_start()
{
    let (press, mill) = (
        machine("press07", "cycle_active"),
        machine("mill02", "cycle_active"),
    );
    let before = config(15, &[press.clone(), mill.clone()]);
    let mut engine = Engine::start(&before);
    for _ in 0..3 {
        engine.read("press07", true).await;
        engine.read("mill02", false).await;
    }
    let press_since = engine.views["press07"].borrow().since;
    assert_eq!(
        engine.views["press07"].borrow().state,
        MachineState::Running
    );
    let last_mill_read = Utc::now();
    let period_before = engine.handle.snapshot().await.expect("snapshots");

    // The same config: nothing happens. (The engine's tick, on the line's
    // wall-clock cadence, may fall in here at any time and send its marks
    // and snapshots: those are not the reload's.)
    let done = engine.reconfigure(&before, &[]).await;
    assert!(done.removed.is_empty() && done.added.is_empty() && done.restarted.is_empty());
    let events = engine.drain();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, MachineEvent::State(_) | MachineEvent::Period(_))),
        "an unchanged config sends no state change and no period: {events:?}"
    );

    // mill02 out, lathe3 in, press07 unchanged.
    let after = config(15, &[press.clone(), machine("lathe3", "cycle_active")]);
    let done = engine.reconfigure(&after, &["lathe3"]).await;
    let events = engine.drain();
    assert!(
        changes(&events, "press07").is_empty(),
        "press07 untouched: {events:?}"
    );
    assert_eq!(engine.views["press07"].borrow().since, press_since);
    let mill = changes(&events, "mill02");
    assert_eq!(mill.len(), 1, "{mill:?}");
    assert_eq!(mill[0].state, MachineState::Offline);
    assert_eq!(mill[0].reason.as_deref(), Some(REMOVED_REASON));
    assert!(
        mill[0].since <= last_mill_read,
        "offline from its last good read"
    );
    assert_eq!(done.removed.len(), 1);
    assert_eq!(done.removed[0].0, "mill02");
    assert_eq!(done.removed[0].1.state, MachineState::Offline);
    let lathe = changes(&events, "lathe3");
    assert_eq!(lathe.len(), 1);
    assert_eq!(lathe[0].state, MachineState::Offline);
    engine.read("lathe3", true).await;
    engine.read("press07", true).await;
    assert_eq!(engine.views["lathe3"].borrow().state, MachineState::Running);
    let snaps = engine.handle.snapshot().await.expect("snapshots");
    let ids: Vec<&str> = snaps.iter().map(|(id, _)| id.as_str()).collect();
    assert!(ids.contains(&"press07") && ids.contains(&"lathe3") && !ids.contains(&"mill02"));
    // press07's open period went on: same start, more running time, no offline.
    let old = period_before
        .iter()
        .find(|(id, _)| id == "press07")
        .expect("press07");
    let new = snaps
        .iter()
        .find(|(id, _)| id == "press07")
        .expect("press07");
    let (old_p, new_p) = (
        old.1.interval_so_far().expect("open period"),
        new.1.interval_so_far().expect("open period"),
    );
    assert_eq!(old_p.start, new_p.start);
    assert!(new_p.seconds.running > old_p.seconds.running);
    assert_eq!(new_p.seconds.offline, old_p.seconds.offline);

    // press07's rule changes: it follows it at its next read, with its
    // period kept.
    let inverted = config(
        15,
        &[
            machine("press07", "cycle_active == false"),
            machine("lathe3", "cycle_active"),
        ],
    );
    let done = engine.reconfigure(&inverted, &[]).await;
    assert_eq!(done.kept, vec!["press07".to_string()]);
    assert!(changes(&engine.drain(), "press07").is_empty());
    engine.read("press07", true).await;
    let press = changes(&engine.seen, "press07");
    let last = press.last().expect("a change");
    assert_eq!(last.state, MachineState::Idle, "the new rule: {press:?}");
    assert_eq!(last.prev, Some(MachineState::Running));

    // A new period length: every machine starts again from where it stands.
    let longer = config(
        60,
        &[
            machine("press07", "cycle_active == false"),
            machine("lathe3", "cycle_active"),
        ],
    );
    let done = engine.reconfigure(&longer, &[]).await;
    let mut restarted = done.restarted.clone();
    restarted.sort();
    assert_eq!(restarted, vec!["lathe3".to_string(), "press07".to_string()]);
}
