//! Giving back the capacity of maps whose entries left: hash maps never shrink on removal,
//! so a map that once held a crowd keeps its slots after the crowd has gone.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Smallest capacity [`give_back_map_capacity`] shrinks a map from: below it a map keeps
/// what it has, which costs little.
pub(crate) const MAP_KEEP_CAPACITY: usize = 64;

/// Gives back most of a map's capacity once it holds less than a quarter of it, shrinking
/// to twice what it holds. Hash maps never shrink on removal: without this a shard that
/// once held a crowd of users keeps their slots after they have all left. The quarter and
/// the half keep it from thrashing — after a shrink the map must halve again before the
/// next, or double before it grows — so the work, proportional to the capacity, is paid
/// for by the inserts that grew it. Called once per map per sweep. Returns whether it
/// shrank.
pub(crate) fn give_back_map_capacity<K, V, S>(map: &mut HashMap<K, V, S>) -> bool
where
    K: Eq + Hash,
    S: BuildHasher,
{
    let cap = map.capacity();
    if cap <= MAP_KEEP_CAPACITY || map.len() * 4 >= cap {
        return false;
    }
    map.shrink_to((map.len() * 2).max(MAP_KEEP_CAPACITY / 2));
    map.capacity() < cap
}

#[cfg(test)]
mod tests {
    use super::*;
    use foldhash::HashMap;

    #[test]
    fn a_map_shrinks_only_once_it_is_a_quarter_full() {
        let mut map: HashMap<u32, u32> = (0..1_000).map(|i| (i, i)).collect();
        map.retain(|k, _| *k < 500);
        let full = map.capacity();
        assert!(!give_back_map_capacity(&mut map));
        assert_eq!(map.capacity(), full);
        map.retain(|k, _| *k < 400);
        assert!(give_back_map_capacity(&mut map));
        assert!(map.capacity() >= 800 && map.capacity() < full);
        // Just shrunk: it shrinks again only after halving once more.
        assert!(!give_back_map_capacity(&mut map));
        map.clear();
        assert!(give_back_map_capacity(&mut map));
        assert!(map.capacity() <= MAP_KEEP_CAPACITY);
    }
}
