//! Heijunka: turns the orders of a plan into a levelled mixed-model release
//! sequence, so every product's cumulative output stays close to its even
//! share instead of coming in bursts.
//!
//! The rule is Miltenburg's product-level heuristic: with demand `d_i` of
//! product `i` and total `D`, slot `k` (1..=D) goes to the product with the
//! largest `k*d_i - D*x_i` (`x_i`: slots product `i` already has), ties by
//! earliest due, then product id. All arithmetic is integer (i128), so the
//! sequence is exact and deterministic. Demand counts orders, or pitches
//! (`ceil(quantity / pitch)` per order) when the plan gives a pack-out
//! quantity. Orders are the unit that is released: the orders of one product
//! take that product's slots in their own (sequence, due, given) order, and
//! an order is released at its first slot.
//!
//! Guarantee (proved in [`product_sequence`], asserted by the property
//! tests): no product ever runs ahead of its share by a full slot,
//! `x_i - k*d_i/D <= 1 - 1/n`, and none falls behind by more than
//! `(n-1)^2/n` slots (`n` products); for two products both are `1/2`.
//!
//! Pure: no I/O, no clock.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};

use crate::orders::command::WorkOrder;

/// Most slots a levelled plan may have (bounds the work of levelling).
pub const MAX_SLOTS: u64 = 100_000;

/// Demand of one product in a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductDemand {
    pub product: String,
    /// Slots (orders or pitches) this product needs.
    pub units: u64,
    /// Earliest due of the product's orders; `None` sorts last.
    pub due: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    #[error("levelling needs {slots} slots, at most {max} allowed: give a larger `pitch`")]
    TooManySlots { slots: u64, max: u64 },
}

/// Order of two products on a tie: earliest due first (none last), then id.
fn tie_order(a: &ProductDemand, b: &ProductDemand) -> Ordering {
    match (a.due, b.due) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
    .then_with(|| a.product.cmp(&b.product))
}

/// The levelled product sequence: for each slot k = 1..=D, the index into
/// `demands` of the product it goes to.
///
/// Why the bounds hold: before slot k, the deficits `k*d_i - D*x_i` sum to
/// `D` (since `sum x_i = k-1`), so the largest is at least `D/n`. The chosen
/// product's lead after the slot, `D*x_i - k*d_i = D - deficit`, is thus at
/// most `D - D/n`; a product not chosen only loses lead. The leads of all
/// products sum to zero after every slot, so a deficit is at most the sum
/// of the other `n-1` leads: `(n-1)(1-1/n)` slots. A product with all its
/// slots has deficit `d_i(k-D) <= 0`, so it is never chosen over one with
/// a positive deficit, and every product gets exactly its `d_i` slots.
pub fn product_sequence(demands: &[ProductDemand]) -> Vec<usize> {
    let total: u64 = demands.iter().map(|d| d.units).sum();
    let d_total = i128::from(total);
    let mut placed = vec![0u64; demands.len()];
    let mut out = Vec::with_capacity(total as usize);
    for k in 1..=d_total {
        let mut best: Option<(usize, i128)> = None;
        for (i, d) in demands.iter().enumerate() {
            if placed[i] >= d.units {
                continue;
            }
            let score = k * i128::from(d.units) - d_total * i128::from(placed[i]);
            best = match best {
                None => Some((i, score)),
                Some((j, s)) => {
                    if score > s || (score == s && tie_order(d, &demands[j]) == Ordering::Less) {
                        Some((i, score))
                    } else {
                        Some((j, s))
                    }
                }
            };
        }
        match best {
            Some((i, _)) => {
                placed[i] += 1;
                out.push(i);
            }
            None => break,
        }
    }
    out
}

/// Slots one order takes: 1, or its pitches when a pitch is given.
pub fn units_of(quantity: u32, pitch: Option<u32>) -> u64 {
    match pitch {
        Some(p) if p > 0 => u64::from(quantity).div_ceil(u64::from(p)),
        _ => 1,
    }
}

/// Reject a plan whose levelling would be too large to compute.
pub fn check_plan_size(orders: &[WorkOrder], pitch: Option<u32>) -> Result<(), LevelError> {
    let slots: u64 = orders.iter().map(|o| units_of(o.quantity, pitch)).sum();
    if slots > MAX_SLOTS {
        Err(LevelError::TooManySlots {
            slots,
            max: MAX_SLOTS,
        })
    } else {
        Ok(())
    }
}

/// Order of an order within its product: sequence, then due (none last), then as given.
fn order_key(o: &WorkOrder) -> (bool, i64, bool, Option<DateTime<Utc>>) {
    (
        o.sequence.is_none(),
        o.sequence.unwrap_or(0),
        o.due.is_none(),
        o.due,
    )
}

/// The levelled release sequence of `orders`: indices into `orders`, each
/// exactly once. Orders of several machines are levelled per machine and
/// the per-machine sequences are concatenated in order of machine id (each
/// machine releases on its own).
pub fn level_orders(orders: &[WorkOrder], pitch: Option<u32>) -> Result<Vec<usize>, LevelError> {
    check_plan_size(orders, pitch)?;
    let mut machines: Vec<&str> = orders.iter().map(|o| o.machine.as_str()).collect();
    machines.sort_unstable();
    machines.dedup();
    let mut out = Vec::with_capacity(orders.len());
    for machine in machines {
        // Products of this machine, each with its orders in their own order.
        let mut products: Vec<(ProductDemand, Vec<usize>)> = Vec::new();
        for (idx, o) in orders
            .iter()
            .enumerate()
            .filter(|(_, o)| o.machine == machine)
        {
            let units = units_of(o.quantity, pitch);
            match products.iter_mut().find(|(d, _)| d.product == o.product) {
                Some((d, list)) => {
                    d.units += units;
                    d.due = match (d.due, o.due) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    list.push(idx);
                }
                None => products.push((
                    ProductDemand {
                        product: o.product.clone(),
                        units,
                        due: o.due,
                    },
                    vec![idx],
                )),
            }
        }
        for (_, list) in &mut products {
            list.sort_by(|a, b| {
                order_key(&orders[*a])
                    .cmp(&order_key(&orders[*b]))
                    .then(a.cmp(b))
            });
        }
        let demands: Vec<ProductDemand> = products.iter().map(|(d, _)| d.clone()).collect();
        let slots = product_sequence(&demands);
        // Walk each product's slots; an order is released at its first slot.
        let mut next_order = vec![0usize; products.len()];
        let mut left_in_order = vec![0u64; products.len()];
        for p in slots {
            if left_in_order[p] == 0 {
                let list = &products[p].1;
                if let Some(&idx) = list.get(next_order[p]) {
                    out.push(idx);
                    left_in_order[p] = units_of(orders[idx].quantity, pitch);
                    next_order[p] += 1;
                }
            }
            left_in_order[p] = left_in_order[p].saturating_sub(1);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn demand(product: &str, units: u64) -> ProductDemand {
        ProductDemand {
            product: product.into(),
            units,
            due: None,
        }
    }

    fn names(demands: &[ProductDemand], seq: &[usize]) -> String {
        seq.iter()
            .map(|&i| demands[i].product.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn order(id: &str, product: &str, quantity: u32) -> WorkOrder {
        WorkOrder {
            order_id: id.into(),
            revision: 1,
            machine: "m1".into(),
            product: product.into(),
            quantity,
            due: None,
            sequence: None,
            ideal_cycle_s: None,
            params: Default::default(),
        }
    }

    #[test]
    fn demand_four_two_one_gives_the_textbook_sequence() {
        let d = [demand("A", 4), demand("B", 2), demand("C", 1)];
        assert_eq!(names(&d, &product_sequence(&d)), "A B A C A B A");
    }

    #[test]
    fn equal_demand_alternates_and_ties_go_to_the_lower_product_id() {
        let d = [demand("B", 2), demand("A", 2)];
        assert_eq!(names(&d, &product_sequence(&d)), "A B A B");
    }

    #[test]
    fn ties_go_to_the_earlier_due_before_the_product_id() {
        let due = DateTime::parse_from_rfc3339("2026-11-26T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let d = [
            demand("A", 1),
            ProductDemand {
                product: "B".into(),
                units: 1,
                due: Some(due),
            },
        ];
        assert_eq!(names(&d, &product_sequence(&d)), "B A");
    }

    #[test]
    fn three_to_one_spreads_the_single_product() {
        let d = [demand("A", 3), demand("B", 1)];
        // k=1: A 3, B 1 -> A; k=2: A 2, B 2 -> tie -> A; k=3: A 1, B 3 -> B.
        assert_eq!(names(&d, &product_sequence(&d)), "A A B A");
    }

    #[test]
    fn orders_of_one_product_keep_their_own_sequence() {
        let mut a1 = order("a1", "A", 10);
        a1.sequence = Some(2);
        let mut a2 = order("a2", "A", 10);
        a2.sequence = Some(1);
        let b = order("b", "B", 10);
        let orders = [a1, a2, b];
        let seq = level_orders(&orders, None).unwrap();
        let ids: Vec<&str> = seq.iter().map(|&i| orders[i].order_id.as_str()).collect();
        assert_eq!(ids, ["a2", "b", "a1"]);
    }

    #[test]
    fn with_a_pitch_demand_counts_pack_outs_and_an_order_takes_its_pitches() {
        // A: one order of 4 pitches; B: two orders of 1 pitch each; pitch 10.
        // Product sequence over 6 slots (A=4, B=2): A B A A B A.
        let orders = [
            order("a", "A", 40),
            order("b1", "B", 10),
            order("b2", "B", 5),
        ];
        let seq = level_orders(&orders, Some(10)).unwrap();
        let ids: Vec<&str> = seq.iter().map(|&i| orders[i].order_id.as_str()).collect();
        assert_eq!(ids, ["a", "b1", "b2"]);
        let d = [demand("A", 4), demand("B", 2)];
        assert_eq!(names(&d, &product_sequence(&d)), "A B A A B A");
    }

    #[test]
    fn a_plan_too_large_to_level_is_refused() {
        let orders = [order("a", "A", 5000), order("b", "B", 5000)];
        assert!(level_orders(&orders, Some(1)).is_ok());
        let many: Vec<WorkOrder> = (0..30)
            .map(|i| order(&format!("o{i}"), "A", 5000))
            .collect();
        assert_eq!(
            level_orders(&many, Some(1)),
            Err(LevelError::TooManySlots {
                slots: 150_000,
                max: MAX_SLOTS
            })
        );
    }

    proptest! {
        #[test]
        fn every_product_gets_its_demand_and_stays_within_the_proved_bounds(
            units in proptest::collection::vec(1u64..40, 1..8)
        ) {
            let demands: Vec<ProductDemand> = units
                .iter()
                .enumerate()
                .map(|(i, &u)| demand(&format!("P{i}"), u))
                .collect();
            let seq = product_sequence(&demands);
            let n = demands.len() as i128;
            let d_total: i128 = units.iter().map(|&u| u as i128).sum();
            prop_assert_eq!(seq.len() as i128, d_total);
            let mut x = vec![0i128; demands.len()];
            for (k0, &p) in seq.iter().enumerate() {
                x[p] += 1;
                let k = k0 as i128 + 1;
                for (i, d) in demands.iter().enumerate() {
                    // lead_i = x_i - k d_i / D, scaled by D*n to stay integer.
                    let lead = n * (d_total * x[i] - k * d.units as i128);
                    prop_assert!(lead <= d_total * (n - 1), "lead {lead} at k={k} product {i}");
                    prop_assert!(-lead <= d_total * (n - 1) * (n - 1),
                        "deficit {} at k={k} product {i}", -lead);
                    if n <= 2 {
                        prop_assert!(2 * lead.abs() <= d_total * n, "two products stay within 1/2");
                    }
                }
            }
            for (i, d) in demands.iter().enumerate() {
                prop_assert_eq!(x[i], d.units as i128);
            }
        }

        #[test]
        fn every_order_of_a_random_plan_is_placed_exactly_once(
            spec in proptest::collection::vec((0u8..5, 1u32..200, proptest::option::of(0i64..20), 0u8..2), 1..40),
            pitch in proptest::option::of(1u32..50),
        ) {
            let orders: Vec<WorkOrder> = spec
                .iter()
                .enumerate()
                .map(|(i, &(p, q, s, m))| {
                    let mut o = order(&format!("o{i}"), &format!("P{p}"), q);
                    o.sequence = s;
                    o.machine = format!("m{m}");
                    o
                })
                .collect();
            let seq = level_orders(&orders, pitch).unwrap();
            let mut sorted = seq.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..orders.len()).collect::<Vec<_>>());
            // Within a product of a machine, orders keep their own order.
            for a in 0..seq.len() {
                for b in a + 1..seq.len() {
                    let (oa, ob) = (&orders[seq[a]], &orders[seq[b]]);
                    if oa.product == ob.product && oa.machine == ob.machine {
                        prop_assert!(order_key(oa) <= order_key(ob));
                    }
                }
            }
        }
    }
}
