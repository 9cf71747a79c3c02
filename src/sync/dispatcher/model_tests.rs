//! The dispatcher against a model: random sequences of submissions,
//! exported records, watch windows and job completions (with follow-ups),
//! checked after every step and after draining.
//!
//! Properties:
//! - one job per lane at a time;
//! - every acknowledgement is delivered in exactly one job (coalesced syncs
//!   share one), and every exported record is either written or skipped,
//!   exactly once;
//! - an exported copy is never written for a key live traffic touched
//!   since the export began (the newest read wins);
//! - payload events of a lane run in the order they arrived;
//! - once every job completes and nothing new arrives, the dispatcher is
//!   idle.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use proptest::prelude::*;
use serde_json::json;

use super::{Dispatcher, Effects, Exported, Job, Work};
use crate::model::{Change, Key, TokenKind};

/// What an action does, over a handful of keys so lanes collide.
#[derive(Debug, Clone)]
enum Action {
    /// A live state change of client `k`.
    Sync(u8),
    /// A revocation of the authorization `(s, c)` (a payload; its lane is
    /// the authorization's).
    Revoke(u8),
    /// A live state change of the authorization `(s, c)`.
    SyncAuthz(u8),
    /// A token to resolve (its own lane every time).
    Resolve,
    /// An exported copy of client `k`.
    Export(u8),
    /// An export begins / ends.
    WatchBegin,
    WatchEnd,
    /// The `n`-th running job finishes, with a follow-up sync of client `k`.
    Finish(usize, Option<u8>),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0u8..3).prop_map(Action::Sync),
        2 => (0u8..2).prop_map(Action::Revoke),
        2 => (0u8..2).prop_map(Action::SyncAuthz),
        1 => Just(Action::Resolve),
        3 => (0u8..3).prop_map(Action::Export),
        1 => Just(Action::WatchBegin),
        1 => Just(Action::WatchEnd),
        6 => (0usize..8, proptest::option::of(0u8..3)).prop_map(|(n, f)| Action::Finish(n, f)),
    ]
}

fn client(k: u8) -> Key {
    Key::Client {
        client_id: format!("c{k}"),
    }
}

fn authz(k: u8) -> Key {
    Key::Authorization {
        subject: format!("s{k}"),
        client_id: "c".to_owned(),
    }
}

/// The model: what was sent in, what came out.
#[derive(Default)]
struct Model {
    next_ack: u64,
    next_reply: u64,
    /// Acks delivered, and how often.
    delivered: BTreeMap<u64, u32>,
    submitted: BTreeSet<u64>,
    /// Exported records written or skipped, and how often.
    settled_exports: BTreeMap<u64, u32>,
    exported: BTreeSet<u64>,
    /// Running jobs by lane.
    running: BTreeMap<String, (Job<u64, u64>, Option<Key>)>,
    /// Watching: the keys live work touched since the export began (plus
    /// those with live work queued or running when it began).
    watching: Option<HashSet<String>>,
    /// Keys with live work queued or running (to seed `watching`).
    live: BTreeMap<String, u32>,
    /// Revocation timestamps started per lane, to check their order.
    revocations: BTreeMap<String, u64>,
    next_timestamp: u64,
}

impl Model {
    fn ack(&mut self) -> u64 {
        self.next_ack += 1;
        self.submitted.insert(self.next_ack);
        self.next_ack
    }

    fn touched(&mut self, key: &Key) {
        if let Some(watching) = &mut self.watching {
            watching.insert(key.identity());
        }
    }

    /// Applies what the dispatcher answered, checking it.
    fn observe(&mut self, effects: Effects<u64, u64>) {
        for reply in effects.skipped {
            *self.settled_exports.entry(reply).or_default() += 1;
        }
        for (lane, job) in effects.start {
            assert!(
                !self.running.contains_key(&lane),
                "two jobs at once in lane {lane}"
            );
            let key = match &job {
                Job::Sync { key, acks } => {
                    for ack in acks {
                        *self.delivered.entry(*ack).or_default() += 1;
                    }
                    Some(key.clone())
                }
                Job::Payload(work) => {
                    for ack in &work.acks {
                        *self.delivered.entry(*ack).or_default() += 1;
                    }
                    if let Change::Revocation { timestamp, .. } = &work.change {
                        let last = self.revocations.insert(lane.clone(), *timestamp);
                        assert!(
                            last.is_none_or(|last| last < *timestamp),
                            "revocations of {lane} out of order"
                        );
                    }
                    None
                }
                Job::Backfill(item) => {
                    *self.settled_exports.entry(item.reply).or_default() += 1;
                    let identity = item.key.identity();
                    assert!(
                        !self
                            .watching
                            .as_ref()
                            .is_some_and(|live| live.contains(&identity)),
                        "an exported copy of {identity} written after live traffic touched it"
                    );
                    None
                }
            };
            self.running.insert(lane, (job, key));
        }
    }
}

fn run(actions: Vec<Action>) {
    let mut dispatcher: Dispatcher<u64, u64> = Dispatcher::default();
    let mut model = Model::default();
    for action in actions {
        match action {
            Action::Sync(k) | Action::SyncAuthz(k) => {
                let key = if matches!(action, Action::Sync(_)) {
                    client(k)
                } else {
                    authz(k)
                };
                model.touched(&key);
                *model.live.entry(key.identity()).or_default() += 1;
                let ack = model.ack();
                let effects = dispatcher.submit([Work {
                    change: Change::sync(key),
                    acks: vec![ack],
                }]);
                model.observe(effects);
            }
            Action::Revoke(k) => {
                let key = authz(k);
                model.touched(&key);
                model.next_timestamp += 1;
                let ack = model.ack();
                let effects = dispatcher.submit([Work {
                    change: Change::Revocation {
                        subject: Some(format!("s{k}")),
                        client_id: Some("c".to_owned()),
                        actor: None,
                        timestamp: model.next_timestamp,
                    },
                    acks: vec![ack],
                }]);
                model.observe(effects);
            }
            Action::Resolve => {
                let ack = model.ack();
                let effects = dispatcher.submit([Work {
                    change: Change::Resolve {
                        token: "t".to_owned(),
                        kind: TokenKind::Refresh,
                        from: None,
                    },
                    acks: vec![ack],
                }]);
                model.observe(effects);
            }
            Action::Export(k) => {
                model.next_reply += 1;
                model.exported.insert(model.next_reply);
                let effects = dispatcher.backfill(Exported {
                    key: client(k),
                    record: json!({"client_id": format!("c{k}")}),
                    reply: model.next_reply,
                });
                model.observe(effects);
            }
            Action::WatchBegin => {
                dispatcher.watch_begin();
                // Lanes with live work queued or running count as touched.
                let seed: HashSet<String> = model
                    .running
                    .iter()
                    .filter(|(_, (job, _))| !matches!(job, Job::Backfill(_)))
                    .map(|(lane, _)| lane.clone())
                    .chain(
                        model
                            .live
                            .iter()
                            .filter(|(_, n)| **n > 0)
                            .map(|(lane, _)| lane.clone()),
                    )
                    .collect();
                model.watching = Some(seed);
            }
            Action::WatchEnd => {
                dispatcher.watch_end();
                model.watching = None;
            }
            Action::Finish(n, follow_up) => {
                if model.running.is_empty() {
                    continue;
                }
                let lane = model
                    .running
                    .keys()
                    .nth(n % model.running.len())
                    .expect("not empty")
                    .clone();
                finish(&mut dispatcher, &mut model, lane, follow_up);
            }
        }
        assert_eq!(dispatcher.is_idle(), dispatcher.lanes() == 0);
    }
    // Drain.
    while let Some(lane) = model.running.keys().next().cloned() {
        finish(&mut dispatcher, &mut model, lane, None);
    }
    assert!(dispatcher.is_idle(), "work left after draining");
    assert_eq!(
        model.delivered.keys().copied().collect::<BTreeSet<_>>(),
        model.submitted,
        "an ack was never delivered"
    );
    assert!(
        model.delivered.values().all(|n| *n == 1),
        "an ack delivered twice"
    );
    assert_eq!(
        model
            .settled_exports
            .keys()
            .copied()
            .collect::<BTreeSet<_>>(),
        model.exported,
        "an exported record was neither written nor skipped"
    );
    assert!(
        model.settled_exports.values().all(|n| *n == 1),
        "an exported record settled twice"
    );
}

fn finish(
    dispatcher: &mut Dispatcher<u64, u64>,
    model: &mut Model,
    lane: String,
    follow_up: Option<u8>,
) {
    let (job, key) = model.running.remove(&lane).expect("running");
    if let (Job::Sync { .. }, Some(key)) = (&job, &key) {
        let live = model.live.entry(key.identity()).or_default();
        *live = 0;
    }
    // A follow-up inherits the job's acks (they settle when it is done):
    // modelled as fresh acks so the count stays exact.
    let follow_ups: Vec<Work<u64>> = follow_up
        .map(|k| {
            let key = client(k);
            model.touched(&key);
            *model.live.entry(key.identity()).or_default() += 1;
            Work {
                change: Change::sync(key),
                acks: vec![model.ack()],
            }
        })
        .into_iter()
        .collect();
    let effects = dispatcher.done(lane, follow_ups);
    model.observe(effects);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_dispatcher_agrees_with_the_model(actions in proptest::collection::vec(action(), 0..120)) {
        run(actions);
    }
}

#[test]
fn changes_of_one_record_share_a_lane() {
    let mut dispatcher: Dispatcher<u64, u64> = Dispatcher::default();
    let authz = Key::Authorization {
        subject: "alice".into(),
        client_id: "app".into(),
    };
    let revocation = Change::Revocation {
        subject: Some("alice".into()),
        client_id: Some("app".into()),
        actor: None,
        timestamp: 1,
    };
    assert_eq!(
        dispatcher.lane_of(&Change::sync(authz)),
        dispatcher.lane_of(&revocation)
    );
    let a = Change::sync(Key::Session {
        sid: "K.hmac1".into(),
    });
    let b = Change::sync(Key::Session {
        sid: "K.hmac2".into(),
    });
    assert_eq!(dispatcher.lane_of(&a), dispatcher.lane_of(&b));
    let resolve = Change::Resolve {
        token: "secret-token".into(),
        kind: TokenKind::Refresh,
        from: None,
    };
    let first = dispatcher.lane_of(&resolve);
    assert!(!first.contains("secret-token"));
    assert_ne!(
        first,
        dispatcher.lane_of(&resolve),
        "resolutions never coalesce"
    );
}

#[test]
fn state_changes_coalesce_and_payloads_queue_behind_the_running_job() {
    let mut dispatcher: Dispatcher<u64, u64> = Dispatcher::default();
    let key = client(0);
    let first = dispatcher.submit([Work {
        change: Change::sync(key.clone()),
        acks: vec![1],
    }]);
    assert_eq!(first.start.len(), 1);
    // Two more while the first runs: one more sync afterwards, with both acks.
    for ack in [2, 3] {
        let effects = dispatcher.submit([Work {
            change: Change::sync(key.clone()),
            acks: vec![ack],
        }]);
        assert!(effects.start.is_empty());
    }
    assert!(dispatcher.is_busy(&key.identity()));
    let next = dispatcher.done(key.identity(), Vec::new());
    match &next.start[..] {
        [(_, Job::Sync { acks, .. })] => assert_eq!(acks, &vec![2, 3]),
        other => panic!("expected one coalesced sync, got {other:?}"),
    }
    let done = dispatcher.done(key.identity(), Vec::new());
    assert!(done.start.is_empty());
    assert!(dispatcher.is_idle());
}
