//! How deep shared types nest in a room's document, kept from the updates the room accepts.
//!
//! Nested shared types are what rich-text editors need (ProseMirror's `Y.XmlFragment` holds
//! elements holding elements and texts), but a chain of them is a way to kill the server:
//! deleting the outermost type makes yrs recurse once per level, and a few hundred thousand
//! levels overflow the stack, which aborts the process (see `doc/bounds.rs`). A chain needs
//! only one small item per level and can be built across many updates, so bounding one update
//! is not enough: the room must know the depth of whatever an update builds on.
//!
//! yrs does not say where an existing item sits (its store is private), and an update's bytes
//! name an item's parent only when the item has no neighbours; otherwise the item sits beside
//! its origin. So the room keeps, for every run of items it accepted, the depth of their
//! parent, and resolves each new item from the update itself or from that map. A run of items
//! typed one after another in one place is one entry.

use std::collections::{BTreeMap, HashMap};

use yrs::block::{ClientID, ID};

use super::bounds::{ItemInfo, Place};

/// Deepest nesting of shared types accepted from a client (root types are depth 0). Real
/// documents nest a few levels (a list in a list in a blockquote is six); yrs survives far
/// more than this.
pub(crate) const MAX_TYPE_DEPTH: u16 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    end: u32,
    /// Depth of the type the items sit in (0: a root).
    parent: u16,
    /// The items create shared types (each one deeper than `parent`).
    types: bool,
}

/// The depth of every accepted item's parent, by runs of clocks per client.
#[derive(Debug, Clone, Default)]
pub(crate) struct Depths {
    runs: HashMap<ClientID, BTreeMap<u32, Run>>,
}

/// Items of one update with the depth of their parents, ready for [`Depths::insert`].
#[derive(Debug, Default)]
pub(crate) struct Resolved(Vec<(ItemInfo, u16)>);

impl Depths {
    fn run(&self, id: &ID) -> Option<Run> {
        let (_, run) = self.runs.get(&id.client)?.range(..=id.clock).next_back()?;
        (id.clock < run.end).then_some(*run)
    }

    /// Where each item of an update sits, from the update itself and this map. `limit` refuses
    /// an update that would nest a type deeper (returned as `Err(depth)`); without one (state
    /// the room already holds) depths are only recorded.
    ///
    /// An item that refers to nothing known (an item the document has garbage-collected) is
    /// placed at depth 0: yrs garbage-collects such an item too, so it creates nothing.
    pub(crate) fn resolve(&self, items: &[ItemInfo], limit: Option<u16>) -> Result<Resolved, u16> {
        let mut local = Depths::default();
        let mut out = Vec::with_capacity(items.len());
        // Items waiting for the item they refer to, keyed by that id.
        let mut waiting: HashMap<ClientID, BTreeMap<u32, Vec<usize>>> = HashMap::new();
        let mut done = vec![false; items.len()];
        let mut ready: Vec<(usize, u16)> = Vec::new();

        let lookup = |local: &Depths, place: Place| -> Option<Option<u16>> {
            match place {
                Place::Root => Some(Some(0)),
                Place::In(id) => {
                    let run = local.run(&id).or_else(|| self.run(&id))?;
                    Some(run.types.then(|| run.parent.saturating_add(1)))
                }
                Place::Beside(id) => {
                    let run = local.run(&id).or_else(|| self.run(&id))?;
                    Some(Some(run.parent))
                }
            }
        };
        let target = |place: Place| match place {
            Place::Root => None,
            Place::In(id) | Place::Beside(id) => Some(id),
        };

        for (i, item) in items.iter().enumerate() {
            match lookup(&local, item.place) {
                Some(depth) => ready.push((i, depth.unwrap_or(0))),
                None => {
                    if let Some(id) = target(item.place) {
                        waiting
                            .entry(id.client)
                            .or_default()
                            .entry(id.clock)
                            .or_default()
                            .push(i);
                    }
                }
            }
            // Resolve what is ready now, and whatever it unblocks.
            while let Some((j, parent)) = ready.pop() {
                if done[j] {
                    continue;
                }
                done[j] = true;
                let it = items[j];
                if it.is_type {
                    if let Some(max) = limit {
                        if parent.saturating_add(1) > max {
                            return Err(parent.saturating_add(1));
                        }
                    }
                }
                local.insert_one(&it, parent);
                out.push((it, parent));
                if let Some(w) = waiting.get_mut(&it.id.client) {
                    let end = it.id.clock.saturating_add(it.len.max(1));
                    let woken: Vec<u32> = w.range(it.id.clock..end).map(|(c, _)| *c).collect();
                    for clock in woken {
                        for k in w.remove(&clock).unwrap_or_default() {
                            let depth = if it.is_type && matches!(items[k].place, Place::In(_)) {
                                parent.saturating_add(1)
                            } else if matches!(items[k].place, Place::In(_)) {
                                0
                            } else {
                                parent
                            };
                            ready.push((k, depth));
                        }
                    }
                }
            }
        }
        // Whatever still waits refers to nothing known.
        for (i, item) in items.iter().enumerate() {
            if !done[i] {
                out.push((*item, 0));
            }
        }
        Ok(Resolved(out))
    }

    /// Records resolved items (of an update the room accepted).
    pub(crate) fn insert(&mut self, resolved: Resolved) {
        for (item, parent) in resolved.0 {
            self.insert_one(&item, parent);
        }
    }

    fn insert_one(&mut self, item: &ItemInfo, parent: u16) {
        let len = item.len.max(1);
        let runs = self.runs.entry(item.id.client).or_default();
        let start = item.id.clock;
        let end = start.saturating_add(len);
        let run = Run {
            end,
            parent,
            types: item.is_type,
        };
        // Extend the run just before when it continues it.
        if let Some((_, prev)) = runs.range_mut(..start).next_back() {
            if prev.end == start && prev.parent == parent && prev.types == item.is_type {
                prev.end = end;
                return;
            }
        }
        runs.insert(start, run);
    }

    /// Runs kept (a measure of this map's memory).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.runs.values().map(BTreeMap::len).sum()
    }
}
