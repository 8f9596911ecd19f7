//! Signal positions: for a consumer that keeps per-signal state in a list of
//! its own, where each position of the last [`SignalNames`] table it saw
//! stands in that list.
//!
//! This module owns the last table (its `Arc`) and, for each of its
//! positions, the index of that signal in the owner's list, or none until
//! the owner says. A reading with the same table as the last one (a bus
//! hands every poll of a machine the same `Arc`) finds its index without
//! comparing, or even reading, names; another table (an MQTT message brings
//! its own) forgets every index, and each is learnt again from its name the
//! first time it is asked for. It never holds the owner's list, never
//! compares names itself (the owner's closure does) and never allocates on
//! a poll with the same table. An owner whose list moves (an entry inserted
//! before others) must [`forget`](SignalPositions::forget) the indices.

use std::sync::Arc;

use super::SignalNames;

/// No index known for a position.
const NONE: u32 = u32::MAX;

/// The last names table seen, and each of its positions' index in the
/// owner's list.
#[derive(Debug, Clone, Default)]
pub struct SignalPositions {
    table: SignalNames,
    /// Per position of `table`, the index in the owner's list (`NONE`
    /// until known).
    index: Vec<u32>,
}

impl SignalPositions {
    /// Follow `table`: `true` when it is another table than the last one
    /// (then no index is known), `false` when it is the same `Arc` (every
    /// index is kept, and nothing is allocated).
    pub fn follow(&mut self, table: &SignalNames) -> bool {
        if Arc::ptr_eq(&self.table, table) {
            return false;
        }
        self.table = table.clone();
        self.index.clear();
        self.index.resize(table.len(), NONE);
        true
    }

    /// The table followed: its names, by position.
    pub fn table(&self) -> &SignalNames {
        &self.table
    }

    /// The index known for `position`, if any.
    pub fn get(&self, position: usize) -> Option<usize> {
        match self.index.get(position) {
            Some(&i) if i != NONE => Some(i as usize),
            _ => None,
        }
    }

    /// The index for `position`: the one known, or else the one `find`
    /// gives for the name at that position, then known. `None` for a
    /// position outside the table or a name `find` does not have.
    pub fn get_or_find(
        &mut self,
        position: usize,
        find: impl FnOnce(&Arc<str>) -> Option<usize>,
    ) -> Option<usize> {
        if let Some(i) = self.get(position) {
            return Some(i);
        }
        let i = find(self.table.get(position)?)?;
        self.set(position, i);
        Some(i)
    }

    /// Know `index` for `position` (a position outside the table is
    /// ignored).
    pub fn set(&mut self, position: usize, index: usize) {
        if let (Some(slot), Ok(i)) = (self.index.get_mut(position), u32::try_from(index)) {
            *slot = i;
        }
    }

    /// Know no index any more, keeping the table: for an owner whose list
    /// moved, so that each position is found by name again.
    pub fn forget(&mut self) {
        self.index.fill(NONE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(names: &[&str]) -> SignalNames {
        Arc::new(names.iter().map(|&n| Arc::from(n)).collect())
    }

    /// An owner whose list is sorted by name, as the console board's is:
    /// a new signal is inserted in its place and moves those after it.
    #[derive(Default)]
    struct Sorted {
        positions: SignalPositions,
        list: Vec<Arc<str>>,
        /// How many times a name was looked for in `list`.
        searches: usize,
    }

    impl Sorted {
        /// The name found in `list` for each position read, as it was
        /// found (a new signal is added).
        fn read(&mut self, table: &SignalNames, read: &[usize]) -> Vec<Arc<str>> {
            self.positions.follow(table);
            let mut found = Vec::new();
            for &position in read {
                let (list, searches) = (&self.list, &mut self.searches);
                let known = self.positions.get_or_find(position, |name| {
                    *searches += 1;
                    list.binary_search(name).ok()
                });
                let i = match known {
                    Some(i) => i,
                    None => {
                        let Some(name) = self.positions.table().get(position).cloned() else {
                            continue;
                        };
                        let Err(i) = self.list.binary_search(&name) else {
                            continue;
                        };
                        self.list.insert(i, name);
                        self.positions.forget();
                        self.positions.set(position, i);
                        i
                    }
                };
                found.extend(self.list.get(i).cloned());
            }
            self.assert_every_known_index_names_its_signal();
            found
        }

        /// The classic bug: an index left pointing where its signal was
        /// before an insertion moved it.
        fn assert_every_known_index_names_its_signal(&self) {
            for (position, name) in self.positions.table().iter().enumerate() {
                if let Some(i) = self.positions.get(position) {
                    assert_eq!(self.list.get(i), Some(name), "position {position}");
                }
            }
        }
    }

    fn names(found: &[Arc<str>]) -> Vec<&str> {
        found.iter().map(|n| &**n).collect()
    }

    #[test]
    fn the_same_table_finds_every_index_without_a_search() {
        let bus = table(&["speed", "count", "state"]);
        let mut owner = Sorted::default();
        let first = owner.read(&bus, &[2, 0, 1]);
        assert_eq!(names(&first), ["state", "speed", "count"]);
        // The insertions of the first poll left only the last one known.
        owner.read(&bus, &[2, 0, 1]);
        let searches = owner.searches;
        assert!(!owner.positions.follow(&bus), "the same table is not new");
        for _ in 0..3 {
            let again = owner.read(&bus, &[2, 0, 1]);
            assert_eq!(names(&again), ["state", "speed", "count"]);
        }
        assert_eq!(owner.searches, searches, "no name looked for");
        assert_eq!(
            [0, 1, 2].map(|p| owner.positions.get(p)),
            [Some(1), Some(0), Some(2)]
        );
    }

    #[test]
    fn a_new_table_in_another_order_is_learnt_by_name() {
        let mut positions = SignalPositions::default();
        let list: Vec<Arc<str>> = vec!["a".into(), "b".into(), "c".into()];
        let find = |name: &Arc<str>| list.iter().position(|n| n == name);
        let first = table(&["a", "b", "c"]);
        assert!(positions.follow(&first));
        assert_eq!(positions.get_or_find(2, find), Some(2));
        assert_eq!(positions.get(2), Some(2));
        let other = table(&["c", "a", "b"]);
        assert!(positions.follow(&other));
        assert!(Arc::ptr_eq(positions.table(), &other));
        assert_eq!(positions.get(0), None, "another table knows no index");
        assert_eq!(positions.get_or_find(0, find), Some(2));
        assert_eq!(positions.get_or_find(1, find), Some(0));
        assert_eq!(positions.get_or_find(2, find), Some(1));
        // Known now: `find` is not asked again.
        assert_eq!(positions.get_or_find(0, |_| None), Some(2));
        // An equal table in another `Arc` is another table.
        assert!(positions.follow(&table(&["c", "a", "b"])));
        assert_eq!(positions.get(0), None);
    }

    #[test]
    fn a_name_the_owner_does_not_have_stays_unknown_until_set() {
        let mut positions = SignalPositions::default();
        let list: Vec<Arc<str>> = vec!["a".into()];
        let find = |name: &Arc<str>| list.iter().position(|n| n == name);
        positions.follow(&table(&["a", "new"]));
        assert_eq!(positions.get_or_find(1, find), None);
        assert_eq!(positions.get(1), None);
        // The owner adds it, then says where.
        positions.set(1, 1);
        assert_eq!(positions.get_or_find(1, |_| None), Some(1));
        assert_eq!(positions.get(0), None, "the other position untouched");
        // Outside the table: nothing to find, nothing kept.
        assert_eq!(positions.get_or_find(2, |_| Some(0)), None);
        positions.set(2, 0);
        assert_eq!(positions.get(2), None);
    }

    #[test]
    fn an_insertion_that_moves_the_owners_list_leaves_no_index_behind() {
        let bus = table(&["d", "b"]);
        let mut owner = Sorted::default();
        // "b" goes before "d", read just before it in the same poll.
        let first = owner.read(&bus, &[0, 1]);
        assert_eq!(names(&first), ["d", "b"]);
        assert_eq!(owner.positions.get(0), None, "\"d\" moved: forgotten");
        assert_eq!(names(&owner.read(&bus, &[0, 1])), ["d", "b"]);
        assert_eq!(owner.positions.get(0), Some(1));
        // "a" goes first, read between the others: both move on.
        let wider = table(&["d", "a", "b"]);
        assert_eq!(names(&owner.read(&wider, &[0, 1, 2])), ["d", "a", "b"]);
        assert_eq!(names(&owner.read(&wider, &[0, 1, 2])), ["d", "a", "b"]);
        assert_eq!(
            [0, 1, 2].map(|p| owner.positions.get(p)),
            [Some(2), Some(0), Some(1)]
        );
        // A signal added at the end moves nothing, but is forgotten all
        // the same: found again by name, to the same places.
        let longer = table(&["d", "a", "b", "e"]);
        assert_eq!(
            names(&owner.read(&longer, &[0, 1, 2, 3])),
            ["d", "a", "b", "e"]
        );
        owner.read(&longer, &[0, 1, 2, 3]);
        assert_eq!(
            [0, 1, 2, 3].map(|p| owner.positions.get(p)),
            [Some(2), Some(0), Some(1), Some(3)]
        );
    }

    #[test]
    fn switching_between_a_bus_table_and_an_mqtt_table_relearns_each_time() {
        let bus = table(&["count", "speed", "temp"]);
        let mut owner = Sorted::default();
        for round in 0..3 {
            let b = owner.read(&bus, &[0, 1, 2]);
            assert_eq!(names(&b), ["count", "speed", "temp"]);
            // Each MQTT message brings a table of its own; the first one
            // brings "alarm", which goes before the bus's signals.
            let mqtt = table(&["temp", "alarm"]);
            let m = owner.read(&mqtt, &[1, 0]);
            assert_eq!(names(&m), ["alarm", "temp"], "round {round}");
        }
        assert_eq!(names(&owner.list), ["alarm", "count", "speed", "temp"]);
        // Back on the bus's table, nothing of the message's is kept.
        assert!(owner.positions.follow(&bus));
        assert!(!owner.positions.follow(&bus));
        assert_eq!(owner.positions.get(0), None);
        assert_eq!(names(&owner.read(&bus, &[2])), ["temp"]);
        assert_eq!(owner.positions.get(2), Some(3));
    }
}
