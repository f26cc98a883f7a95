//! One property per rule of the broker contract.

use std::collections::HashSet;
use std::sync::Arc;

use agentwire_protocol::Seq;

#[cfg(doc)]
use crate::Subscriber;
use crate::broker::{Broker, StoredEvent};

use super::support::*;
use super::{Checked, Harness};

/// Per user, `seq` runs 1, 2, 3… without holes, independently of other users, and
/// history returns the events in that order.
pub async fn per_user_ordering<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let users = fresh_users("ordering", 3);
    let mut expected = vec![0u64; users.len()];
    for round in 0..30usize {
        let i = (round * 7 + round / 3) % users.len();
        let accepted = publish(&broker, &users[i], event(&users[i], round as u64, None)).await;
        expected[i] += 1;
        assert_eq!(
            accepted.seq,
            Seq(expected[i]),
            "user {} got a seq out of order",
            users[i]
        );
        assert!(
            !accepted.duplicate,
            "a fresh event was answered as a duplicate"
        );
    }
    for (user, &n) in users.iter().zip(&expected) {
        let h = history(&broker, user, Seq::ZERO, 1_000).await;
        assert_eq!(
            h.last_seq,
            Seq(n),
            "history of {user} reports the wrong last_seq"
        );
        assert_eq!(
            seqs(&h.events),
            (1..=n).collect::<Vec<_>>(),
            "history of {user}"
        );
        assert!(
            h.gap.is_none(),
            "history of {user} reports a gap: {:?}",
            h.gap
        );
        for e in &h.events {
            assert_frame_matches(user, e);
        }
    }
    Checked::Held
}

/// A publish without `event_id` gets a fresh one; one with an `event_id` keeps it.
pub async fn assigns_event_ids<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("ids");
    let mut ids = HashSet::new();
    for n in 0..10 {
        let a = publish(&broker, &user, event(&user, n, None)).await;
        assert!(
            ids.insert(a.event_id.clone()),
            "event_id {} assigned twice",
            a.event_id
        );
    }
    let own = fresh_event_id("own");
    let a = publish(&broker, &user, event(&user, 10, Some(own.clone()))).await;
    assert_eq!(a.event_id, own, "the publisher's event_id was not kept");
    let h = history(&broker, &user, Seq::ZERO, 1_000).await;
    assert_eq!(h.events.len(), 11);
    assert_eq!(h.events[10].event_id, own);
    Checked::Held
}

/// Publishing an `event_id` again answers the first acceptance (same `seq`, `ts`,
/// `event_id`, with `duplicate: true`), stores nothing and delivers nothing.
pub async fn dedupe_by_event_id<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("dedupe");
    let rec = Recorder::new();
    subscribe(&broker, &user, &rec).await;
    let x = fresh_event_id("x");
    let y = fresh_event_id("y");
    let first = publish(&broker, &user, event(&user, 1, Some(x.clone()))).await;
    let second = publish(&broker, &user, event(&user, 2, Some(y.clone()))).await;
    assert!(!first.duplicate && !second.duplicate);
    for _ in 0..3 {
        // A retry carries the same event (another one under the same id is a conflict,
        // see `digest_conflict`).
        let again = publish(&broker, &user, event(&user, 1, Some(x.clone()))).await;
        assert!(again.duplicate, "a repeated event_id was accepted again");
        assert_eq!(
            (again.seq, &again.event_id, again.ts, &again.epoch),
            (first.seq, &first.event_id, first.ts, &first.epoch),
            "a duplicate must answer the first acceptance"
        );
    }
    let third = publish(&broker, &user, event(&user, 3, None)).await;
    assert_eq!(third.seq, Seq(3), "a duplicate used up a seq");

    let h = history(&broker, &user, Seq::ZERO, 1_000).await;
    assert_eq!(seqs(&h.events), vec![1, 2, 3], "a duplicate was stored");
    assert_eq!(h.events[0].event_id, x);
    assert_eq!(h.events[0].ts, first.ts);

    rec.wait_for_seqs(&user, 3).await;
    rec.quiet().await;
    assert_eq!(rec.seqs(&user), vec![1, 2, 3], "a duplicate was delivered");
    unsubscribe(&broker, &user, &rec).await;
    Checked::Held
}

/// Many tasks publishing the same `event_id` at once: exactly one acceptance, and every
/// answer names it.
pub async fn concurrent_duplicates<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    const TASKS: usize = 8;
    let broker = Arc::new(broker);
    let user = fresh_user("dup-race");
    publish(&*broker, &user, event(&user, 0, None)).await;
    let id = fresh_event_id("race");
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (broker, user, id) = (broker.clone(), user.clone(), id.clone());
            tokio::spawn(async move { publish(&*broker, &user, event(&user, 1, Some(id))).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("publisher task panicked"));
    }
    let fresh: Vec<_> = answers.iter().filter(|a| !a.duplicate).collect();
    assert_eq!(
        fresh.len(),
        1,
        "one event_id accepted {} times",
        fresh.len()
    );
    for a in &answers {
        assert_eq!((a.seq, &a.event_id, a.ts), (Seq(2), &id, fresh[0].ts));
    }
    let h = history(&*broker, &user, Seq::ZERO, 1_000).await;
    assert_eq!(seqs(&h.events), vec![1, 2]);
    Checked::Held
}

/// `history(after, limit)` returns at most `limit` events, all with `seq > after`, in
/// order, with the stream's `last_seq`; nothing past the newest, and an empty stream for
/// a user never published to.
pub async fn history_ranges<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("ranges");
    let empty = history(&broker, &user, Seq::ZERO, 10).await;
    assert_eq!(
        empty.last_seq,
        Seq::ZERO,
        "a new user's stream is not empty"
    );
    assert!(empty.events.is_empty() && empty.gap.is_none());

    let mut accepted = Vec::new();
    for n in 0..20 {
        accepted.push(publish(&broker, &user, event(&user, n, None)).await);
    }
    let cases: [(u64, usize, Vec<u64>); 8] = [
        (0, 1_000, (1..=20).collect()),
        (0, 3, vec![1, 2, 3]),
        (5, 3, vec![6, 7, 8]),
        (17, 10, vec![18, 19, 20]),
        (19, 1, vec![20]),
        (20, 10, vec![]),
        (25, 10, vec![]),
        (4, 0, vec![]),
    ];
    for (after, limit, want) in cases {
        let h = history(&broker, &user, Seq(after), limit).await;
        assert_eq!(
            seqs(&h.events),
            want,
            "history(after {after}, limit {limit})"
        );
        assert_eq!(h.last_seq, Seq(20), "history(after {after}) last_seq");
        assert!(
            h.gap.is_none(),
            "history(after {after}): unexpected gap {:?}",
            h.gap
        );
        for e in &h.events {
            let a = &accepted[(e.seq.get() - 1) as usize];
            assert_eq!((&e.event_id, e.ts, &e.epoch), (&a.event_id, a.ts, &a.epoch));
            assert_frame_matches(&user, e);
        }
    }
    Checked::Held
}

/// With a broker that keeps at most `kept` events per user (see the module docs): history
/// reports what it no longer holds as a gap right after `after`, then the held events,
/// contiguous up to the newest.
pub async fn history_gaps<H: Harness>(harness: &H, kept: usize) -> Checked {
    let broker = harness.make_keeping(kept).await;
    assert!(
        kept >= 1,
        "history_gaps needs a broker that keeps at least one event"
    );
    let user = fresh_user("gaps");
    let total = 3 * kept as u64 + 2;
    for n in 0..total {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    let h = history(&broker, &user, Seq::ZERO, 1_000).await;
    assert_eq!(h.last_seq, Seq(total));
    let held = seqs(&h.events);
    assert!(
        !held.is_empty() && held.len() <= kept,
        "a broker keeping {kept} events holds {}",
        held.len()
    );
    let first_held = held[0];
    assert_eq!(
        held,
        (first_held..=total).collect::<Vec<_>>(),
        "held events are not contiguous"
    );
    assert_eq!(
        h.gap,
        Some((Seq(1), Seq(first_held - 1))),
        "gap of history(after 0)"
    );

    if first_held > 2 {
        let mid = history(&broker, &user, Seq(1), 1_000).await;
        assert_eq!(
            mid.gap,
            Some((Seq(2), Seq(first_held - 1))),
            "gap of history(after 1)"
        );
        assert_eq!(seqs(&mid.events), held);
    }
    let limited = history(&broker, &user, Seq::ZERO, 1).await;
    assert_eq!(limited.gap, h.gap, "a limit changes the gap");
    assert_eq!(seqs(&limited.events), vec![first_held]);

    let edge = history(&broker, &user, Seq(first_held - 1), 1_000).await;
    assert!(
        edge.gap.is_none(),
        "a gap reported where nothing is missing: {:?}",
        edge.gap
    );
    assert_eq!(seqs(&edge.events), held);
    let newest = history(&broker, &user, Seq(total), 1_000).await;
    assert!(newest.gap.is_none() && newest.events.is_empty());
    Checked::Held
}

/// While a stream lives (here: while it has a subscriber and events), its epoch does not
/// change; history, acceptances and stored events all name it, and history reports the
/// newest `seq`.
pub async fn epochs<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("epochs");
    let rec = Recorder::new();
    subscribe(&broker, &user, &rec).await;
    let first = publish(&broker, &user, event(&user, 0, None)).await;
    for n in 1..8 {
        let a = publish(&broker, &user, event(&user, n, None)).await;
        assert_eq!(
            a.epoch, first.epoch,
            "the epoch changed while the stream lived"
        );
        let h = history(&broker, &user, Seq(a.seq.get() - 1), 10).await;
        assert_eq!(
            (&h.epoch, h.last_seq),
            (&first.epoch, a.seq),
            "history after publish {n}"
        );
        assert_eq!(h.events.len(), 1);
        assert_eq!(h.events[0].epoch, first.epoch);
    }
    rec.wait_for_seqs(&user, 8).await;
    for (_, e) in rec.events().iter() {
        assert_eq!(
            e.epoch, first.epoch,
            "a delivered event names another epoch"
        );
    }
    let other = fresh_user("epochs-other");
    let o = publish(&broker, &other, event(&other, 0, None)).await;
    assert_eq!(o.seq, Seq(1));
    let h = history(&broker, &user, Seq::ZERO, 100).await;
    assert_eq!((&h.epoch, h.last_seq), (&first.epoch, Seq(8)));
    unsubscribe(&broker, &user, &rec).await;
    Checked::Held
}

/// Many tasks publishing to one user at once: the seqs handed out are exactly
/// `1..=tasks*events`, each task's own publishes get increasing seqs, and a subscriber
/// sees the whole stream in order.
pub async fn concurrent_publishers<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    const TASKS: u64 = 8;
    const EACH: u64 = 25;
    let broker = Arc::new(broker);
    let user = fresh_user("concurrent");
    let rec = Recorder::new();
    subscribe(&*broker, &user, &rec).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (broker, user) = (broker.clone(), user.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for n in 0..EACH {
                    let a = publish(&*broker, &user, event(&user, t * 1_000 + n, None)).await;
                    mine.push(a.seq.get());
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let mine = t.await.expect("publisher task panicked");
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "one task's seqs went back: {mine:?}"
        );
        all.extend(mine);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=TASKS * EACH).collect::<Vec<_>>(),
        "seqs of concurrent publishes"
    );
    rec.wait_for_seqs(&user, TASKS * EACH).await;
    rec.quiet().await;
    assert_eq!(
        rec.seqs(&user),
        (1..=TASKS * EACH).collect::<Vec<_>>(),
        "delivered stream"
    );
    unsubscribe(&*broker, &user, &rec).await;
    Checked::Held
}

/// A subscriber gets every event of its user exactly once, in `seq` order, as the same
/// frame history holds.
pub async fn delivers_in_order_exactly_once<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("delivery");
    let rec = Recorder::new();
    subscribe(&broker, &user, &rec).await;
    for n in 0..50 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    rec.wait_for_seqs(&user, 50).await;
    rec.quiet().await;
    assert_eq!(rec.seqs(&user), (1..=50).collect::<Vec<_>>());
    let h = history(&broker, &user, Seq::ZERO, 1_000).await;
    let delivered: Vec<StoredEvent> = rec.events().iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(delivered, h.events, "delivered events differ from history");
    unsubscribe(&broker, &user, &rec).await;
    Checked::Held
}

/// Subscriptions are counted per (user, subscriber): subscribed twice, a subscriber gets
/// each event once and stays subscribed until unsubscribed twice.
pub async fn refcounted_subscriptions<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("refcount");
    let rec = Recorder::new();
    let control = Recorder::new();
    subscribe(&broker, &user, &control).await;
    subscribe(&broker, &user, &rec).await;
    subscribe(&broker, &user, &rec).await;
    for n in 0..5 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    rec.wait_for_seqs(&user, 5).await;
    unsubscribe(&broker, &user, &rec).await;
    for n in 5..10 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    rec.wait_for_seqs(&user, 10).await;
    unsubscribe(&broker, &user, &rec).await;
    for n in 10..15 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    control.wait_for_seqs(&user, 15).await;
    rec.quiet().await;
    assert_eq!(
        rec.seqs(&user),
        (1..=10).collect::<Vec<_>>(),
        "subscribed twice: each event once, and nothing after the second unsubscribe"
    );
    // One unsubscribe more than subscribes is a no-op, as is one for an unknown user.
    unsubscribe(&broker, &user, &rec).await;
    unsubscribe(&broker, &fresh_user("refcount-unknown"), &rec).await;
    unsubscribe(&broker, &user, &control).await;
    Checked::Held
}

/// A subscriber that unsubscribed, or never subscribed, gets nothing.
pub async fn unsubscribed_gets_nothing<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("unsubscribed");
    let gone = Recorder::new();
    let never = Recorder::new();
    let control = Recorder::new();
    subscribe(&broker, &user, &control).await;
    subscribe(&broker, &user, &gone).await;
    unsubscribe(&broker, &user, &gone).await;
    unsubscribe(&broker, &user, &never).await;
    for n in 0..10 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    control.wait_for_seqs(&user, 10).await;
    gone.quiet().await;
    assert!(
        gone.events().is_empty(),
        "an unsubscribed subscriber got events"
    );
    assert!(
        never.events().is_empty(),
        "a subscriber that never subscribed got events"
    );
    unsubscribe(&broker, &user, &control).await;
    Checked::Held
}

/// Two subscribers of one user both get every event, in order.
pub async fn every_subscriber_gets_everything<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("two-subscribers");
    let a = Recorder::new();
    let b = Recorder::new();
    subscribe(&broker, &user, &a).await;
    subscribe(&broker, &user, &b).await;
    for n in 0..30 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    a.wait_for_seqs(&user, 30).await;
    b.wait_for_seqs(&user, 30).await;
    a.quiet().await;
    assert_eq!(a.seqs(&user), (1..=30).collect::<Vec<_>>());
    assert_eq!(b.seqs(&user), (1..=30).collect::<Vec<_>>());
    unsubscribe(&broker, &user, &a).await;
    unsubscribe(&broker, &user, &b).await;
    Checked::Held
}

/// A subscriber of user A never gets user B's events, whatever the interleaving; one
/// subscriber of two users gets each user's stream, each in order.
pub async fn subscribers_see_only_their_user<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let users = fresh_users("isolation", 3);
    let only_a = Recorder::new();
    let only_b = Recorder::new();
    let both = Recorder::new();
    subscribe(&broker, &users[0], &only_a).await;
    subscribe(&broker, &users[1], &only_b).await;
    subscribe(&broker, &users[0], &both).await;
    subscribe(&broker, &users[1], &both).await;
    let mut counts = [0u64; 3];
    for n in 0..45u64 {
        let i = (n * 5 % 7 % 3) as usize;
        publish(&broker, &users[i], event(&users[i], n, None)).await;
        counts[i] += 1;
    }
    only_a.wait_for_seqs(&users[0], counts[0]).await;
    only_b.wait_for_seqs(&users[1], counts[1]).await;
    both.wait_for_seqs(&users[0], counts[0]).await;
    both.wait_for_seqs(&users[1], counts[1]).await;
    only_a.quiet().await;
    for (rec, mine) in [(&only_a, &users[0]), (&only_b, &users[1])] {
        for (user, e) in rec.events().iter() {
            assert_eq!(user, mine, "delivered under another user's name");
            assert_frame_matches(mine, e);
        }
        let idx = users.iter().position(|u| u == mine).unwrap_or(0);
        assert_eq!(rec.seqs(mine), (1..=counts[idx]).collect::<Vec<_>>());
    }
    assert_eq!(both.seqs(&users[0]), (1..=counts[0]).collect::<Vec<_>>());
    assert_eq!(both.seqs(&users[1]), (1..=counts[1]).collect::<Vec<_>>());
    for (user, e) in both.events().iter() {
        assert_frame_matches(user, e);
    }
    assert!(
        both.seqs(&users[2]).is_empty(),
        "got events of a user not subscribed to"
    );
    for (user, rec) in [
        (&users[0], &only_a),
        (&users[1], &only_b),
        (&users[0], &both),
        (&users[1], &both),
    ] {
        unsubscribe(&broker, user, rec).await;
    }
    Checked::Held
}

/// Rule 4: a broker whose subscriptions broke restores them and then calls
/// [`Subscriber::resync`] for each subscribed user (and no other); from then on every
/// event is delivered again, in order, and history holds every event, including those
/// whose delivery was lost.
pub async fn resync_after_dropped_subscription<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("resync");
    let bystander = fresh_user("resync-bystander");
    let rec = Recorder::new();
    subscribe(&broker, &user, &rec).await;
    for n in 0..5 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    rec.wait_for_seqs(&user, 5).await;
    if let Err(why) = harness.break_subscriptions(&broker).await {
        unsubscribe(&broker, &user, &rec).await;
        return Checked::Unsupported(why);
    }
    // Published while the subscription is broken or being restored: delivered or not.
    for n in 5..10 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    publish(&broker, &bystander, event(&bystander, 0, None)).await;
    rec.wait_for_resync(&user).await;
    for n in 10..15 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    rec.wait_for_seqs(&user, 15).await;
    rec.quiet().await;
    let got = rec.seqs(&user);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "deliveries around a broken subscription went back or repeated: {got:?}"
    );
    for seq in (1..=5).chain(11..=15) {
        assert!(
            got.contains(&seq),
            "seq {seq} was not delivered, though it was accepted while the subscription was whole: {got:?}"
        );
    }
    assert!(
        rec.resyncs().iter().all(|u| *u == user),
        "resync named a user the subscriber is not subscribed to: {:?}",
        rec.resyncs()
    );
    let h = history(&broker, &user, Seq::ZERO, 1_000).await;
    assert_eq!(
        seqs(&h.events),
        (1..=15).collect::<Vec<_>>(),
        "history lacks events accepted while the subscription was broken"
    );
    unsubscribe(&broker, &user, &rec).await;
    Checked::Held
}

/// Rules 2 and 3 together, as the manager relies on them: subscribers that join while
/// events are being published — subscribe, then read history to its end — see every
/// `seq` exactly once: history up to where they stopped reading, then deliveries after
/// it, with no gap and no repeat.
pub async fn concurrent_publish_vs_subscribe_history<H: Harness>(harness: &H) -> Checked {
    const EVENTS: u64 = 200;
    const JOINERS: usize = 8;
    const PAGE: usize = 16;
    let broker = Arc::new(harness.make().await);
    let user = fresh_user("join-race");
    let publisher = {
        let (broker, user) = (broker.clone(), user.clone());
        tokio::spawn(async move {
            for n in 0..EVENTS {
                publish(&*broker, &user, event(&user, n, None)).await;
                if n % 4 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let joiners: Vec<_> = (0..JOINERS)
        .map(|j| {
            let (broker, user) = (broker.clone(), user.clone());
            tokio::spawn(async move {
                for _ in 0..j * 5 {
                    tokio::task::yield_now().await;
                }
                let rec = Recorder::new();
                subscribe(&*broker, &user, &rec).await;
                let mut from_history = Vec::new();
                let mut after = Seq::ZERO;
                loop {
                    let h = history(&*broker, &user, after, PAGE).await;
                    assert!(h.gap.is_none(), "a gap in ample history: {:?}", h.gap);
                    from_history.extend(seqs(&h.events));
                    if let Some(e) = h.events.last() {
                        after = e.seq;
                    }
                    if after >= h.last_seq {
                        break;
                    }
                }
                (rec, from_history, after)
            })
        })
        .collect();
    publisher.await.expect("publisher task panicked");
    for joiner in joiners {
        let (rec, from_history, after) = joiner.await.expect("joiner task panicked");
        if after.get() < EVENTS {
            rec.wait_for_seqs(&user, EVENTS).await;
        }
        rec.quiet().await;
        let live: Vec<u64> = rec
            .seqs(&user)
            .into_iter()
            .filter(|&s| s > after.get())
            .collect();
        assert!(
            live.windows(2).all(|w| w[0] < w[1]),
            "deliveries repeated or went back: {live:?}"
        );
        let mut all = from_history.clone();
        all.extend(&live);
        assert_eq!(
            all,
            (1..=EVENTS).collect::<Vec<_>>(),
            "history up to seq {after} then deliveries after it do not cover the stream once"
        );
        unsubscribe(&*broker, &user, &rec).await;
    }
    Checked::Held
}

/// Lets the broker's clock reach `at` (a point on tokio's clock), if it has not yet.
async fn advance_to<H: Harness>(harness: &H, at: tokio::time::Instant) {
    let now = now();
    if at > now {
        harness.advance(at - now).await;
    }
}

/// Rule 7 by expiry: a stream whose events and ids all expired (with no subscriber)
/// starts again at `seq` 1 under a new epoch, and its old ids are forgotten.
pub async fn epoch_restart<H: Harness>(harness: &H) -> Checked {
    let max_age = harness.clock_slack() * 20;
    let broker = match harness.make_aging(max_age, max_age).await {
        Ok(b) => b,
        Err(why) => return Checked::Unsupported(why),
    };
    let user = fresh_user("restart");
    let id = fresh_event_id("old");
    let first = publish(&broker, &user, event(&user, 0, Some(id.clone()))).await;
    for n in 1..3 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    let h = history(&broker, &user, Seq::ZERO, 100).await;
    assert_eq!((&h.epoch, h.last_seq), (&first.epoch, Seq(3)));

    harness.advance(max_age + harness.clock_slack()).await;
    broker.sweep();
    let anew = publish(&broker, &user, event(&user, 3, None)).await;
    assert_eq!(
        anew.seq,
        Seq(1),
        "an expired stream did not start again at seq 1"
    );
    assert_ne!(
        anew.epoch, first.epoch,
        "an expired stream started again under its old epoch"
    );
    let h = history(&broker, &user, Seq::ZERO, 100).await;
    assert_eq!((&h.epoch, h.last_seq), (&anew.epoch, Seq(1)));
    assert_eq!(seqs(&h.events), vec![1]);
    assert!(h.gap.is_none(), "a new stream reports a gap: {:?}", h.gap);
    assert!(
        lookup(&broker, &user, &id).await.is_none(),
        "an id of the expired stream is still remembered"
    );
    let again = publish(&broker, &user, event(&user, 0, Some(id))).await;
    assert!(
        !again.duplicate && again.seq == Seq(2),
        "an id of the expired stream was answered as a duplicate"
    );
    Checked::Held
}

/// Rule 7 when the store is lost: the stream starts again at `seq` 1 under a new epoch,
/// and a subscriber whose subscription was kept (or restored) gets the new epoch's events.
pub async fn wipe_restarts_epoch<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("wipe");
    let rec = Recorder::new();
    subscribe(&broker, &user, &rec).await;
    let mut old = None;
    for n in 0..3 {
        old = Some(publish(&broker, &user, event(&user, n, None)).await);
    }
    rec.wait_for_seqs(&user, 3).await;
    let old_epoch = old.map(|a| a.epoch);
    if let Err(why) = harness.wipe(&broker).await {
        unsubscribe(&broker, &user, &rec).await;
        return Checked::Unsupported(why);
    }
    let anew = publish(&broker, &user, event(&user, 3, None)).await;
    assert_eq!(
        anew.seq,
        Seq(1),
        "a wiped stream did not start again at seq 1"
    );
    assert_ne!(
        Some(&anew.epoch),
        old_epoch.as_ref(),
        "a wiped stream kept its epoch"
    );
    let epoch = anew.epoch.clone();
    rec.wait_until("the new epoch's first event", |got| {
        got.iter().any(|(u, e)| *u == user && e.epoch == epoch)
    })
    .await;
    let events = rec.events().clone();
    let fresh: Vec<u64> = events
        .iter()
        .filter(|(u, e)| *u == user && e.epoch == anew.epoch)
        .map(|(_, e)| e.seq.get())
        .collect();
    assert_eq!(fresh, vec![1], "deliveries of the new epoch");
    let h = history(&broker, &user, Seq::ZERO, 100).await;
    assert_eq!((&h.epoch, h.last_seq), (&anew.epoch, Seq(1)));
    unsubscribe(&broker, &user, &rec).await;
    Checked::Held
}

/// Rule 5 at the edges of the dedupe window: an id is recognised — by publish and lookup —
/// until the window after its acceptance has passed, even after its event left history; a
/// different event under it is a conflict meanwhile; after the window the same event is
/// accepted anew.
pub async fn dedupe_window_edges<H: Harness>(harness: &H) -> Checked {
    let slack = harness.clock_slack();
    let (max_age, window) = (slack * 10, slack * 30);
    let broker = match harness.make_aging(max_age, window).await {
        Ok(b) => b,
        Err(why) => return Checked::Unsupported(why),
    };
    let user = fresh_user("window");
    let x = fresh_event_id("edge");
    let start = now();
    let first = publish(&broker, &user, event(&user, 1, Some(x.clone()))).await;
    let returned = now();

    advance_to(harness, start + max_age + slack).await;
    broker.sweep();
    let h = history(&broker, &user, Seq::ZERO, 100).await;
    assert!(
        h.events.is_empty(),
        "an event older than max_age is still in history"
    );
    // Inside the window: a different event under the id is a conflict.
    match broker
        .publish(&user, other_event(&user, 1, Some(x.clone())))
        .await
    {
        Err(crate::BrokerError::Conflict { event_id, seq }) => {
            assert_eq!((event_id, seq), (x.clone(), first.seq));
        }
        other => panic!("another event under an id inside the window: {other:?}"),
    }
    // Keeps the stream (and its epoch) alive past the first id's window.
    let keeper = publish(&broker, &user, event(&user, 2, None)).await;
    assert_eq!(keeper.seq, Seq(2));

    advance_to(harness, returned + window - slack).await;
    let inside = lookup(&broker, &user, &x).await;
    assert_eq!(
        inside.map(|a| (a.seq, a.event_id, a.ts, a.epoch, a.duplicate)),
        Some((first.seq, x.clone(), first.ts, first.epoch.clone(), true)),
        "lookup just inside the window"
    );
    let again = publish(&broker, &user, event(&user, 1, Some(x.clone()))).await;
    assert!(
        again.duplicate && again.seq == first.seq,
        "a retry just inside the window was accepted again"
    );

    advance_to(harness, start + window + slack * 2).await;
    broker.sweep();
    assert!(
        lookup(&broker, &user, &x).await.is_none(),
        "an id is remembered past the dedupe window"
    );
    let anew = publish(&broker, &user, event(&user, 1, Some(x))).await;
    assert!(
        !anew.duplicate && (anew.seq, &anew.epoch) == (Seq(3), &first.epoch),
        "after the window the event was not accepted anew: {anew:?}"
    );
    Checked::Held
}

/// Rule 8 by age: events older than the history's max age leave it, reported as a gap;
/// younger ones stay, and the stream goes on under its epoch.
pub async fn age_trim<H: Harness>(harness: &H) -> Checked {
    let slack = harness.clock_slack();
    let max_age = slack * 20;
    let broker = match harness.make_aging(max_age, max_age).await {
        Ok(b) => b,
        Err(why) => return Checked::Unsupported(why),
    };
    let user = fresh_user("age");
    let first = publish(&broker, &user, event(&user, 0, None)).await;
    for n in 1..3 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    let old_done = now();
    harness.advance(max_age / 2).await;
    for n in 3..6 {
        publish(&broker, &user, event(&user, n, None)).await;
    }
    advance_to(harness, old_done + max_age + slack).await;
    broker.sweep();
    let h = history(&broker, &user, Seq::ZERO, 100).await;
    assert_eq!(
        seqs(&h.events),
        vec![4, 5, 6],
        "history after the old events aged"
    );
    assert_eq!(h.gap, Some((Seq(1), Seq(3))), "the aged events as a gap");
    assert_eq!((&h.epoch, h.last_seq), (&first.epoch, Seq(6)));
    let next = publish(&broker, &user, event(&user, 6, None)).await;
    assert_eq!((next.seq, &next.epoch), (Seq(7), &first.epoch));
    Checked::Held
}

/// Rule 2 under races: tasks subscribe and unsubscribe one subscriber at once (counted per
/// user and subscriber) while events are published; every event a task published while it
/// held a subscription reaches the subscriber, each event at most once, and once every
/// subscription is undone nothing accepted afterwards does. Then, round after round, one
/// unsubscribe is still under way while another subscription of the subscriber is made,
/// holds an event and is undone: that event reaches it too, whichever call ends first.
pub async fn subscribe_unsubscribe_races<H: Harness>(harness: &H) -> Checked {
    const TASKS: u64 = 6;
    const ROUNDS: u64 = 8;
    const OVERLAPS: u64 = 16;
    let broker = Arc::new(harness.make().await);
    let user = fresh_user("sub-race");
    let shared = Recorder::new();
    let control = Recorder::new();
    subscribe(&*broker, &user, &control).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (broker, user, shared) = (broker.clone(), user.clone(), shared.clone());
            tokio::spawn(async move {
                let mut held = Vec::new();
                for r in 0..ROUNDS {
                    subscribe(&*broker, &user, &shared).await;
                    let a = publish(&*broker, &user, event(&user, t * 100 + r, None)).await;
                    held.push(a.seq.get());
                    unsubscribe(&*broker, &user, &shared).await;
                    // Published with no subscription of this task: delivered or not.
                    publish(&*broker, &user, event(&user, t * 100 + 50 + r, None)).await;
                }
                held
            })
        })
        .collect();
    let mut expected = Vec::new();
    for t in tasks {
        expected.extend(t.await.expect("task panicked"));
    }
    for r in 0..OVERLAPS {
        subscribe(&*broker, &user, &shared).await;
        let other = async {
            subscribe(&*broker, &user, &shared).await;
            let a = publish(&*broker, &user, event(&user, 1_000 + r, None)).await;
            unsubscribe(&*broker, &user, &shared).await;
            a.seq.get()
        };
        let ((), held) = tokio::join!(unsubscribe(&*broker, &user, &shared), other);
        expected.push(held);
    }
    let total = TASKS * ROUNDS * 2 + OVERLAPS;
    control.wait_for_seqs(&user, total).await;
    shared.quiet().await;
    let got = shared.seqs(&user);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "deliveries repeated or went back: {got:?}"
    );
    for seq in &expected {
        assert!(
            got.contains(seq),
            "seq {seq}, accepted while subscribed, was not delivered"
        );
    }
    for n in 0..5 {
        publish(&*broker, &user, event(&user, 10_000 + n, None)).await;
    }
    control.wait_for_seqs(&user, total + 5).await;
    shared.quiet().await;
    assert!(
        shared.seqs(&user).iter().all(|&s| s <= total),
        "delivered after every subscription was undone"
    );
    unsubscribe(&*broker, &user, &control).await;
    Checked::Held
}

/// Rule 9: a batch is accepted in order with consecutive seqs and delivered so; a
/// duplicate in it answers its first acceptance and takes no seq; another event under an
/// id — stored before or earlier in the batch — refuses the whole batch, storing and
/// delivering nothing; one user's batches published at once do not interleave.
pub async fn publish_many_batches<H: Harness>(harness: &H) -> Checked {
    let broker = Arc::new(harness.make().await);
    let user = fresh_user("batch");
    let rec = Recorder::new();
    subscribe(&*broker, &user, &rec).await;
    let x = fresh_event_id("x");
    let y = fresh_event_id("y");
    publish(&*broker, &user, event(&user, 0, Some(x.clone()))).await;
    let batch = vec![
        event(&user, 1, None),
        event(&user, 2, Some(y.clone())),
        event(&user, 0, Some(x.clone())),
        event(&user, 2, Some(y.clone())),
        event(&user, 3, None),
    ];
    let answers = publish_many(&*broker, &user, batch).await;
    let got: Vec<(u64, bool)> = answers.iter().map(|a| (a.seq.get(), a.duplicate)).collect();
    assert_eq!(
        got,
        vec![(2, false), (3, false), (1, true), (3, true), (4, false)],
        "answers of a batch with duplicates"
    );
    assert_eq!((&answers[1].event_id, &answers[2].event_id), (&y, &x));

    let z = fresh_event_id("z");
    let refused = vec![
        event(&user, 4, Some(z.clone())),
        event(&user, 5, None),
        other_event(&user, 0, Some(x.clone())),
    ];
    match broker.publish_many(&user, refused).await {
        Err(e) => {
            assert!(
                e.accepted.is_empty(),
                "a refused batch accepted {:?}",
                e.accepted
            );
            assert_eq!(
                e.error,
                crate::BrokerError::Conflict {
                    event_id: x.clone(),
                    seq: Seq(1)
                }
            );
        }
        Ok(a) => panic!("a batch reusing an id for another event was accepted: {a:?}"),
    }
    let w = fresh_event_id("w");
    let within = vec![
        event(&user, 6, Some(w.clone())),
        other_event(&user, 6, Some(w.clone())),
    ];
    match broker.publish_many(&user, within).await {
        Err(e) => assert!(
            matches!(&e.error, crate::BrokerError::Conflict { event_id, .. } if *event_id == w)
                && e.accepted.is_empty(),
            "{e:?}"
        ),
        Ok(a) => panic!("a batch using one id for two events was accepted: {a:?}"),
    }
    assert!(
        lookup(&*broker, &user, &z).await.is_none(),
        "a refused batch stored an id"
    );
    assert!(
        lookup(&*broker, &user, &w).await.is_none(),
        "a refused batch stored an id"
    );
    let h = history(&*broker, &user, Seq::ZERO, 1_000).await;
    assert_eq!(
        seqs(&h.events),
        vec![1, 2, 3, 4],
        "a refused batch stored events"
    );

    const TASKS: u64 = 4;
    const SIZE: u64 = 10;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (broker, user) = (broker.clone(), user.clone());
            tokio::spawn(async move {
                let batch = (0..SIZE).map(|n| event(&user, 100 * t + n, None)).collect();
                publish_many(&*broker, &user, batch).await
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let answers = t.await.expect("task panicked");
        let s: Vec<u64> = answers.iter().map(|a| a.seq.get()).collect();
        assert!(
            s.windows(2).all(|w| w[1] == w[0] + 1),
            "a batch's seqs are not consecutive: {s:?}"
        );
        all.extend(s);
    }
    all.sort_unstable();
    let last = 4 + TASKS * SIZE;
    assert_eq!(all, (5..=last).collect::<Vec<_>>());
    rec.wait_for_seqs(&user, last).await;
    rec.quiet().await;
    assert_eq!(
        rec.seqs(&user),
        (1..=last).collect::<Vec<_>>(),
        "delivered stream"
    );
    unsubscribe(&*broker, &user, &rec).await;
    Checked::Held
}

/// Rule 5 through [`crate::Broker::lookup`]: an id answers its first acceptance (own ids
/// and assigned ones alike), an unknown id nothing; ids belong to their user's stream.
pub async fn lookup_by_event_id<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let (a, b) = (fresh_user("lookup-a"), fresh_user("lookup-b"));
    let x = fresh_event_id("x");
    assert!(
        lookup(&broker, &a, &x).await.is_none(),
        "an unknown id was found"
    );
    let first = publish(&broker, &a, event(&a, 0, Some(x.clone()))).await;
    let assigned = publish(&broker, &a, event(&a, 1, None)).await;
    for acc in [&first, &assigned] {
        let found = lookup(&broker, &a, &acc.event_id).await;
        assert_eq!(
            found,
            Some(crate::Accepted {
                duplicate: true,
                ..acc.clone()
            }),
            "lookup of {}",
            acc.event_id
        );
    }
    assert!(
        lookup(&broker, &b, &x).await.is_none(),
        "an id was found in another user's stream"
    );
    let theirs = publish(&broker, &b, event(&b, 0, Some(x.clone()))).await;
    assert!(
        !theirs.duplicate && theirs.seq == Seq(1),
        "one user's id deduplicated another user's event"
    );
    Checked::Held
}

/// Rule 6: another event under an accepted id is refused with a conflict naming the
/// first acceptance; nothing is stored or delivered, no seq is used, and the id keeps
/// answering its first event.
pub async fn digest_conflict<H: Harness>(harness: &H) -> Checked {
    let broker = harness.make().await;
    let user = fresh_user("conflict");
    let rec = Recorder::new();
    subscribe(&broker, &user, &rec).await;
    let x = fresh_event_id("x");
    let first = publish(&broker, &user, event(&user, 1, Some(x.clone()))).await;
    publish(&broker, &user, event(&user, 2, None)).await;
    match broker
        .publish(&user, other_event(&user, 1, Some(x.clone())))
        .await
    {
        Err(e) => {
            assert!(!e.is_transient(), "a conflict is final: {e:?}");
            assert_eq!(
                e,
                crate::BrokerError::Conflict {
                    event_id: x.clone(),
                    seq: first.seq
                }
            );
        }
        Ok(a) => panic!("another event under an accepted id was answered {a:?}"),
    }
    let third = publish(&broker, &user, event(&user, 3, None)).await;
    assert_eq!(third.seq, Seq(3), "a refused event used up a seq");
    let h = history(&broker, &user, Seq::ZERO, 100).await;
    assert_eq!(seqs(&h.events), vec![1, 2, 3]);
    assert_eq!(h.events[0].event_id, x);
    assert_frame_matches(&user, &h.events[0]);
    rec.wait_for_seqs(&user, 3).await;
    rec.quiet().await;
    assert_eq!(
        rec.seqs(&user),
        vec![1, 2, 3],
        "a refused event was delivered"
    );
    let delivered = rec.events()[0].1.clone();
    assert_eq!(delivered, h.events[0], "the first event's frame changed");
    let found = lookup(&broker, &user, &x).await.map(|a| a.seq);
    assert_eq!(found, Some(first.seq));
    let again = publish(&broker, &user, event(&user, 1, Some(x))).await;
    assert!(again.duplicate && again.seq == first.seq);
    unsubscribe(&broker, &user, &rec).await;
    Checked::Held
}
