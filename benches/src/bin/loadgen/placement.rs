//! Which server process (node) each connection and each publish request goes to, when the
//! generator loads several (`--server A --server B …`).

use serde::{Deserialize, Serialize};

/// How connections and publishes are spread over the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Placement {
    /// Connection `i` (counted over all users) on node `i mod N`, so a user's connections
    /// sit on different nodes; a lane's batches go to the nodes in turn.
    #[default]
    RoundRobin,
    /// Every connection and every batch on a node drawn at random (seeded per run).
    Random,
    /// User `u`'s connections and publishes all on node `u mod N`: each node only delivers
    /// what it accepted itself, so nodes that share nothing (`--broker memory`, reference
    /// hubs) can be loaded together.
    Pinned,
}

/// A 64-bit mix (splitmix64's finalizer): cheap, and every input bit moves every output
/// bit, so consecutive indexes draw unrelated nodes.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Placement {
    /// The node of connection `conn` (0-based, counted over all of the generator's
    /// connections) of user `user`, among `nodes`.
    pub(crate) fn conn_node(self, nodes: usize, seed: u64, user: u32, conn: u64) -> usize {
        let n = nodes.max(1) as u64;
        (match self {
            Placement::RoundRobin => conn % n,
            Placement::Random => mix(seed ^ conn) % n,
            Placement::Pinned => u64::from(user) % n,
        }) as usize
    }

    /// The publisher lanes to use for `lanes` asked: pinned needs a multiple of the node
    /// count, so that a lane's users (user `u` is on lane `u mod lanes`) share one node.
    pub(crate) fn lanes(self, lanes: u32, nodes: usize) -> u32 {
        let n = nodes.max(1) as u32;
        match self {
            Placement::Pinned => lanes.max(1).div_ceil(n) * n,
            _ => lanes.max(1),
        }
    }

    /// The node of lane `lane`'s `batch`-th request.
    pub(crate) fn batch_node(self, nodes: usize, seed: u64, lane: u32, batch: u64) -> usize {
        let n = nodes.max(1) as u64;
        (match self {
            Placement::RoundRobin => (u64::from(lane) + batch) % n,
            Placement::Random => mix(seed ^ mix(u64::from(lane)) ^ batch.rotate_left(32)) % n,
            Placement::Pinned => u64::from(lane) % n,
        }) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_lanes_publish_only_to_their_users_node() {
        for nodes in 1..=4usize {
            for asked in 1..=9u32 {
                let lanes = Placement::Pinned.lanes(asked, nodes);
                assert!(lanes >= asked && lanes.is_multiple_of(nodes as u32));
                for user in 0..200u32 {
                    let lane = user % lanes;
                    for batch in 0..5 {
                        assert_eq!(
                            Placement::Pinned.batch_node(nodes, 7, lane, batch),
                            Placement::Pinned.conn_node(nodes, 7, user, u64::from(user) * 2),
                            "{nodes} nodes, {lanes} lanes, user {user}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn round_robin_puts_a_users_connections_on_different_nodes() {
        let nodes: Vec<usize> = (0..2u64)
            .map(|c| Placement::RoundRobin.conn_node(2, 0, 5, 5 * 2 + c))
            .collect();
        assert_eq!(nodes, [0, 1]);
        let batches: Vec<usize> = (0..4)
            .map(|b| Placement::RoundRobin.batch_node(2, 0, 1, b))
            .collect();
        assert_eq!(batches, [1, 0, 1, 0]);
    }

    #[test]
    fn random_uses_every_node_about_evenly() {
        for nodes in [2usize, 3] {
            let mut conns = vec![0u32; nodes];
            let mut batches = vec![0u32; nodes];
            for i in 0..3_000u64 {
                conns[Placement::Random.conn_node(nodes, 42, 0, i)] += 1;
                batches[Placement::Random.batch_node(nodes, 42, (i % 4) as u32, i / 4)] += 1;
            }
            let even = 3_000 / nodes as u32;
            for counts in [&conns, &batches] {
                assert!(
                    counts
                        .iter()
                        .all(|&c| c > even * 8 / 10 && c < even * 12 / 10),
                    "{counts:?}"
                );
            }
        }
    }
}
