//! What a queued order waits for, in the words of the dispatch interlock
//! (`dispatch::consider`): a machine gets its next order only when no order
//! is on it (released or running), the order is the first of its queue
//! (sequence, then due, then arrival) and the machine is `idle` or `setup`.
//! Pure: `linegate orders` passes the book's rows and the machine's last
//! known state; nothing here reads the store or the clock.

use crate::machine::MachineState;
use crate::orders::book::{OrderRow, OrderState};

/// Why `order` is not on its machine yet, or `None` when it is not waiting
/// (not queued or held). `on_machine` is the order released or running on
/// the same machine, `ahead` the queued orders released before it,
/// `machine` the machine's last known state (`None`: never seen).
pub fn waits_for(
    order: &OrderRow,
    on_machine: Option<&OrderRow>,
    ahead: &[&OrderRow],
    machine: Option<MachineState>,
) -> Option<String> {
    match order.state {
        OrderState::Held => {
            return Some("held by command; resume puts it back in the queue".into())
        }
        OrderState::Queued => {}
        _ => return None,
    }
    if let Some(current) = on_machine {
        return Some(format!(
            "order {} is on the machine ({}); released after it completes, is held or cancelled",
            current.order_id, current.state
        ));
    }
    if let Some(first) = ahead.first() {
        return Some(format!(
            "{} order(s) ahead in the queue, next {}",
            ahead.len(),
            first.order_id
        ));
    }
    Some(match machine {
        None => "machine not seen yet; released when idle or in setup".into(),
        Some(MachineState::Offline) => {
            "machine is offline; released when it answers and is idle or in setup".into()
        }
        Some(MachineState::PlannedStop) => {
            "machine is in a planned stop (shift calendar); released when idle or in setup".into()
        }
        Some(MachineState::Idle | MachineState::Setup) => {
            "next to release; the agent releases it at its next look (is it running?)".into()
        }
        Some(s) => format!("machine is {s}; released when idle or in setup"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::book::Counts;
    use std::collections::BTreeMap;

    fn row(id: &str, state: OrderState) -> OrderRow {
        OrderRow {
            order_id: id.into(),
            revision: 1,
            arrival: 1,
            machine: "press07".into(),
            product: "P".into(),
            quantity: 3,
            due: None,
            sequence: None,
            plan_id: None,
            plan_pos: None,
            ideal_cycle_s: None,
            params: BTreeMap::new(),
            state,
            reason: None,
            superseded: false,
            progress: Counts::default(),
            done: Counts::default(),
            base: None,
            released_at: None,
            actual_start: None,
            actual_end: None,
            started_rank: None,
            late_reported: false,
            reported_at: None,
        }
    }

    #[test]
    fn a_queued_order_waits_first_for_the_order_on_the_machine_then_its_queue_then_the_state() {
        let me = row("WO-3", OrderState::Queued);
        let current = row("WO-1", OrderState::Running);
        let ahead = row("WO-2", OrderState::Queued);
        let said = |on: Option<&OrderRow>, ahead: &[&OrderRow], m| {
            waits_for(&me, on, ahead, m).unwrap_or_default()
        };
        assert_eq!(
            said(Some(&current), &[&ahead], Some(MachineState::Running)),
            "order WO-1 is on the machine (running); released after it completes, is held or cancelled"
        );
        assert_eq!(
            said(None, &[&ahead], Some(MachineState::Idle)),
            "1 order(s) ahead in the queue, next WO-2"
        );
        assert_eq!(
            said(None, &[], Some(MachineState::Running)),
            "machine is running; released when idle or in setup"
        );
        assert_eq!(
            said(None, &[], Some(MachineState::PlannedStop)),
            "machine is in a planned stop (shift calendar); released when idle or in setup"
        );
        assert_eq!(
            said(None, &[], Some(MachineState::Offline)),
            "machine is offline; released when it answers and is idle or in setup"
        );
        assert!(said(None, &[], Some(MachineState::Setup)).starts_with("next to release"));
        assert!(said(None, &[], None).starts_with("machine not seen yet"));
    }

    #[test]
    fn orders_on_the_machine_or_finished_wait_for_nothing() {
        for s in [
            OrderState::Running,
            OrderState::Released,
            OrderState::Completed,
            OrderState::Cancelled,
        ] {
            assert_eq!(
                waits_for(&row("WO-1", s), None, &[], Some(MachineState::Idle)),
                None
            );
        }
        assert!(waits_for(&row("WO-1", OrderState::Held), None, &[], None).is_some());
    }
}
