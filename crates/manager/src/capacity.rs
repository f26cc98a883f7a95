//! Giving back the capacity of maps whose entries left: hash maps never shrink on removal,
//! so a map that once held a crowd keeps its slots after the crowd has gone.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};

/// Smallest capacity [`give_back_map_capacity`] shrinks a map from: below it a map keeps
/// what it has, which costs little.
pub(crate) const MAP_KEEP_CAPACITY: usize = 64;

/// Gives back most of a map's capacity once it holds less than a quarter of it, shrinking
/// to twice what it holds, and all of it once the map is empty. Hash maps never shrink on
/// removal: without this a shard that once held a crowd of users keeps their slots after
/// they have all left. The quarter and the half keep it from thrashing — after a shrink
/// the map must halve again before the next, or double before it grows — so the work,
/// proportional to the capacity, is paid for by the inserts that grew it. An empty map
/// keeps no table at all: a table allocated while a burst's memory was in use would
/// otherwise keep the allocator's page under it resident long after the burst, for a map
/// that holds nothing (the next insert allocates a small one). Called once per map per
/// sweep. Returns whether it shrank.
pub(crate) fn give_back_map_capacity<K, V, S>(map: &mut HashMap<K, V, S>) -> bool
where
    K: Eq + Hash,
    S: BuildHasher,
{
    let cap = map.capacity();
    if map.is_empty() && cap > 0 {
        map.shrink_to(0);
        return map.capacity() < cap;
    }
    if cap <= MAP_KEEP_CAPACITY || map.len() * 4 >= cap {
        return false;
    }
    map.shrink_to((map.len() * 2).max(MAP_KEEP_CAPACITY / 2));
    map.capacity() < cap
}

/// Frees the root node an emptied B-tree still holds (removing a tree's last element
/// leaves its root allocated), for the reason an empty map keeps no table
/// ([`give_back_map_capacity`]). Called once per tree per sweep.
pub(crate) fn give_back_empty_tree<K, V>(tree: &mut BTreeMap<K, V>) {
    if tree.is_empty() {
        *tree = BTreeMap::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foldhash::HashMap;

    #[test]
    fn a_map_shrinks_only_once_it_is_a_quarter_full() {
        // Filled by inserts alone: removals leave tombstones, which `capacity` does not
        // count, so a map emptied by `retain` would report a capacity that depends on
        // where its (randomly seeded) hashes put the removed entries.
        let mut map: HashMap<u32, u32> =
            HashMap::with_capacity_and_hasher(1_000, Default::default());
        map.extend((0..500).map(|i| (i, i)));
        let full = map.capacity();
        assert!(!give_back_map_capacity(&mut map));
        assert_eq!(map.capacity(), full);
        map.retain(|k, _| *k < 400);
        assert!(give_back_map_capacity(&mut map));
        assert!(map.capacity() >= 800 && map.capacity() < full);
        // Just shrunk: it shrinks again only after halving once more.
        assert!(!give_back_map_capacity(&mut map));
        map.retain(|k, _| *k < 10);
        assert!(give_back_map_capacity(&mut map));
        assert!(map.capacity() <= MAP_KEEP_CAPACITY);
        // A small map keeps its table while it holds anything, and none once empty.
        assert!(!give_back_map_capacity(&mut map));
        map.clear();
        assert!(give_back_map_capacity(&mut map));
        assert_eq!(map.capacity(), 0);
        assert!(!give_back_map_capacity(&mut map));
    }
}
