//! Isolation and completeness, as properties: under random schedules of connects (each
//! resume mode), disconnects, resumes and emits for several users, every connection gets
//! exactly the events of its own user from where its stream started to the newest,
//! strictly increasing, and nothing of anyone else's — over the in-memory broker and over
//! `LatencyBroker`, whose deliveries arrive late.
//!
//! A model on the side says, for each connection, where its stream starts and which
//! `replay_gap` it must see; the user's newest `seq` is the model's count of emits.

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentwire_manager::conformance::LatencyBroker;
use agentwire_manager::{
    Broker, ConnectOptions, HeartbeatPolicy, HistoryConfig, InMemoryBroker, ManagerConfig, Resume,
    UnifiedWebSocketManager,
};
use agentwire_protocol::{Epoch, Seq};
use proptest::prelude::*;
use support::*;

const USERS: usize = 5;
const MAX_CONNS: usize = 3;

#[derive(Debug, Clone)]
enum Mode {
    FromHistoryStart,
    LiveOnly,
    /// Resume `back` events before the newest, in the current epoch.
    After {
        back: u64,
    },
    /// Resume at `last_seq` of an epoch the broker never had.
    StaleEpoch {
        last_seq: u64,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Connect {
        user: usize,
        mode: Mode,
    },
    Disconnect {
        user: usize,
        pick: usize,
    },
    /// Drop a connection and reconnect where it stood, minus `back`.
    Resume {
        user: usize,
        pick: usize,
        back: u64,
    },
    Emit {
        user: usize,
        count: u64,
    },
    /// Drain every connection of the user and check it so far.
    Check {
        user: usize,
    },
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::FromHistoryStart),
        Just(Mode::LiveOnly),
        (0..6u64).prop_map(|back| Mode::After { back }),
        (0..6u64).prop_map(|last_seq| Mode::StaleEpoch { last_seq }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..USERS, mode()).prop_map(|(user, mode)| Op::Connect { user, mode }),
        1 => (0..USERS, any::<usize>()).prop_map(|(user, pick)| Op::Disconnect { user, pick }),
        1 => (0..USERS, any::<usize>(), 0..4u64)
            .prop_map(|(user, pick, back)| Op::Resume { user, pick, back }),
        4 => (0..USERS, 1..=3u64).prop_map(|(user, count)| Op::Emit { user, count }),
        1 => (0..USERS).prop_map(|user| Op::Check { user }),
    ]
}

/// One connection and what the model expects of it.
struct Tracked {
    client: Client,
    user: usize,
    /// Its stream starts after this seq.
    start: u64,
    gaps: Vec<(u64, u64)>,
    /// `Some` when the `resumed` flag is determined.
    resumed: Option<bool>,
}

#[derive(Default)]
struct UserModel {
    newest: u64,
    epoch: Option<Epoch>,
}

struct World {
    m: UnifiedWebSocketManager,
    users: Vec<agentwire_protocol::UserId>,
    model: Vec<UserModel>,
    conns: Vec<Tracked>,
}

impl World {
    fn of_user(&self, user: usize) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&i| self.conns[i].user == user)
            .collect()
    }

    async fn connect(&mut self, user: usize, mode: Mode) {
        if self.of_user(user).len() >= MAX_CONNS {
            return;
        }
        let model = &self.model[user];
        let stale: Epoch = "e_stale".parse().expect("epoch");
        let (resume, start, gaps, resumed) = match (mode, &model.epoch) {
            (Mode::FromHistoryStart, _) => (Resume::FromHistoryStart, 0, vec![], Some(false)),
            (Mode::LiveOnly, _) => (Resume::LiveOnly, model.newest, vec![], Some(false)),
            (Mode::After { back }, Some(epoch)) => {
                let k = model.newest.saturating_sub(back);
                let resume = Resume::After {
                    last_seq: Seq(k),
                    epoch: epoch.clone(),
                };
                (resume, k, vec![], Some(true))
            }
            // No event yet, so no epoch to resume in: an unknown one at 0 voids nothing.
            (Mode::After { .. }, None) => {
                let resume = Resume::After {
                    last_seq: Seq::ZERO,
                    epoch: stale,
                };
                (resume, 0, vec![], Some(false))
            }
            (Mode::StaleEpoch { last_seq }, _) => {
                let gaps = if last_seq > 0 {
                    vec![(1, last_seq)]
                } else {
                    vec![]
                };
                let resume = Resume::After {
                    last_seq: Seq(last_seq),
                    epoch: stale,
                };
                (resume, 0, gaps, Some(false))
            }
        };
        let conn = self
            .m
            .connect_user(self.users[user].clone(), ConnectOptions { resume })
            .await
            .expect("connect");
        self.conns.push(Tracked {
            client: Client::new(conn),
            user,
            start,
            gaps,
            resumed,
        });
    }

    async fn emit(&mut self, user: usize, count: u64) {
        for _ in 0..count {
            let u = &self.users[user];
            let model = &mut self.model[user];
            let a = self
                .m
                .emit_critical_event(u, custom(u, model.newest + 1))
                .await
                .expect("emit");
            model.newest += 1;
            assert_eq!(a.seq.get(), model.newest, "seq of {u}");
            match &model.epoch {
                Some(e) => assert_eq!(&a.epoch, e, "the epoch of {u} changed"),
                None => model.epoch = Some(a.epoch.clone()),
            }
        }
    }

    /// Drains connection `i` up to its user's newest seq and checks everything it got.
    async fn verify(&mut self, i: usize) {
        let t = &mut self.conns[i];
        let model = &self.model[t.user];
        let u = &self.users[t.user];
        // Completeness: a delivery path that drops events makes this wait time out (and
        // one that drops some makes the equality below fail).
        t.client
            .until("connection_established", |c| !c.frames.is_empty())
            .await;
        if model.newest > t.start {
            t.client.until_seq(model.newest).await;
        }
        let hello = t.client.hello();
        assert_eq!(&hello.user_id, u);
        if let Some(resumed) = t.resumed {
            assert_eq!(
                hello.resumed, resumed,
                "resumed flag of a connection of {u}"
            );
        }
        let expected: Vec<u64> = (t.start + 1..=model.newest).collect();
        if !expected.is_empty()
            && let Some(epoch) = &model.epoch
        {
            assert_eq!(&hello.epoch, epoch, "epoch of a connection of {u}");
        }
        // Isolation: every event names this connection's user…
        t.client.assert_only_events_of(u);
        // …and the seqs are exactly its stream: no other user's, no duplicate, no hole.
        assert_eq!(t.client.seqs(), expected, "stream of a connection of {u}");
        assert_eq!(
            t.client.gaps(),
            t.gaps,
            "replay gaps of a connection of {u}"
        );
        assert_eq!(t.client.closed, None, "a connection of {u} was closed");
    }

    async fn take(&mut self, user: usize, pick: usize) -> Option<Tracked> {
        let mine = self.of_user(user);
        if mine.is_empty() {
            return None;
        }
        let i = mine[pick % mine.len()];
        self.verify(i).await;
        Some(self.conns.remove(i))
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Connect { user, mode } => self.connect(user, mode).await,
            Op::Emit { user, count } => self.emit(user, count).await,
            Op::Disconnect { user, pick } => {
                if let Some(t) = self.take(user, pick).await {
                    if pick % 2 == 0 {
                        t.client.conn.disconnect();
                    }
                    drop(t);
                }
            }
            Op::Resume { user, pick, back } => {
                let Some(t) = self.take(user, pick).await else {
                    return;
                };
                let k = t.client.last_seq().saturating_sub(back);
                let epoch = t.client.hello().epoch.clone();
                drop(t);
                let conn = self
                    .m
                    .connect_user(self.users[user].clone(), after(k, &epoch))
                    .await
                    .expect("reconnect");
                // With events the epoch is fixed, so the resume is clean. Without, the
                // stream may have been dropped and remade with the connection: either
                // flag is right.
                let resumed = self.model[user].epoch.is_some().then_some(true);
                self.conns.push(Tracked {
                    client: Client::new(conn),
                    user,
                    start: k,
                    gaps: vec![],
                    resumed,
                });
            }
            Op::Check { user } => {
                for i in self.of_user(user) {
                    self.verify(i).await;
                }
            }
        }
    }
}

async fn run_schedule(broker: Arc<dyn Broker>, ops: Vec<Op>) {
    let config = ManagerConfig {
        heartbeat: HeartbeatPolicy {
            interval: Duration::from_secs(86_400),
            timeout: Duration::from_secs(60),
        },
        replay_page: 4,
        ..ManagerConfig::default()
    };
    let mut world = World {
        m: UnifiedWebSocketManager::new(config, broker),
        users: (0..USERS).map(|i| user(&format!("user-{i}"))).collect(),
        model: (0..USERS).map(|_| UserModel::default()).collect(),
        conns: Vec::new(),
    };
    for op in ops {
        world.apply(op).await;
    }
    for i in 0..world.conns.len() {
        world.verify(i).await;
    }
    // Late deliveries would have arrived by now; none may be extra.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..world.conns.len() {
        world.conns[i].client.drain_ready().await;
        world.verify(i).await;
    }
    assert_eq!(world.m.get_stats().connections, world.conns.len());
}

fn history() -> HistoryConfig {
    HistoryConfig {
        max_age: Duration::from_secs(86_400),
        ..HistoryConfig::default()
    }
}

fn block_on(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(f);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_connection_gets_exactly_its_users_stream(ops in prop::collection::vec(op(), 1..=60)) {
        block_on(run_schedule(Arc::new(InMemoryBroker::new(history())), ops));
    }

    #[test]
    fn every_connection_gets_exactly_its_users_stream_over_a_latent_broker(
        ops in prop::collection::vec(op(), 1..=60)
    ) {
        block_on(run_schedule(Arc::new(LatencyBroker::new(InMemoryBroker::new(history()))), ops));
    }
}
