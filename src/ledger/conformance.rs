//! The behaviour every ledger backend promises, as one suite of tests. A backend joins it with
//! one line in `backends()`; the dry-run overlay runs it too, over an empty real ledger. The
//! PostgreSQL backend runs against a real server, a fresh database per test (see
//! `postgres::testing`): its absence fails the suite, it is never skipped.

use std::path::Path;
use std::time::Duration;

use super::{KeyState, Ledger, Overlay, PgLedger, SentItem, SkipReason, SkippedItem, SqliteLedger};
use crate::metrics::SentPoint;

const BACKENDS: [&str; 4] = ["sqlite", "overlay over sqlite", "postgres", "overlay over postgres"];

/// A backend as a fresh, empty ledger (in `dir` for files).
async fn backend(name: &str, dir: &Path) -> Box<dyn Ledger> {
    match name {
        "sqlite" => Box::new(SqliteLedger::open(&dir.join("ledger.db"), Duration::ZERO).unwrap()),
        "overlay over sqlite" => {
            let path = dir.join("real.db");
            drop(SqliteLedger::open(&path, Duration::ZERO).unwrap());
            let base = SqliteLedger::open_read_only(&path).unwrap().expect("created above");
            Box::new(Overlay::new(Some(Box::new(base)), Box::new(SqliteLedger::open_in_memory().unwrap())))
        }
        "postgres" => {
            let target = super::postgres::testing::fresh_database().await;
            Box::new(PgLedger::open(&target, Duration::from_secs(60)).await.unwrap())
        }
        "overlay over postgres" => {
            let target = super::postgres::testing::fresh_database().await;
            drop(PgLedger::open(&target, Duration::from_secs(60)).await.unwrap());
            let base = PgLedger::open_read_only(&target).await.unwrap().expect("created above");
            Box::new(Overlay::new(Some(Box::new(base)), Box::new(SqliteLedger::open_in_memory().unwrap())))
        }
        other => panic!("no backend {other}"),
    }
}

/// Runs `check` against every backend, naming the backend in a failure.
async fn for_each_backend(check: impl AsyncFn(&mut dyn Ledger)) {
    for name in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = backend(name, dir.path()).await;
        eprintln!("backend: {name}");
        check(ledger.as_mut()).await;
    }
}

fn sent(key: &str, point_key: i64) -> SentItem<'_> {
    SentItem { key, point_key, timestamp: 100, gauges: [None; 3], tallies: [0; 2] }
}

fn skipped(key: &str) -> SkippedItem<'_> {
    SkippedItem { key, completed_at: 5 }
}

#[tokio::test]
async fn marks_and_looks_up_in_bulk() {
    for_each_backend(async |ledger| {
        ledger.mark_sent(&[sent("a", 1), sent("b", 1), sent("c", 2)], 0).await.unwrap();
        ledger.record_skipped(&[skipped("d")], SkipReason::TooOld, 0).await.unwrap();
        // More keys than SQLite's default variable limit (32766), in one call.
        let many: Vec<String> = (0..40_000).map(|i| format!("k{i}")).collect();
        let mut keys: Vec<&str> = many.iter().map(String::as_str).collect();
        keys.extend(["a", "d", "zz", "a"]);
        let states = ledger.states(&keys).await.unwrap();
        assert_eq!(states.len(), keys.len());
        assert!(states[..40_000].iter().all(|state| *state == KeyState::Unknown));
        assert_eq!(&states[40_000..], [KeyState::Sent, KeyState::SkippedTooOld, KeyState::Unknown, KeyState::Sent]);
        let points = ledger.sent_points(&[(100, 1), (100, 2), (100, 3), (100, 1), (99, 2)]).await.unwrap();
        let counts: std::collections::BTreeMap<i64, u32> = points.iter().map(|(key, p)| (*key, p.count)).collect();
        assert_eq!(counts, [(1, 2), (2, 1)].into());
        // Marking a too-old item as sent moves it.
        ledger.mark_sent(&[sent("d", 9)], 0).await.unwrap();
        let counts = ledger.counts().await.unwrap();
        assert_eq!((counts.sent, counts.too_old, counts.dead), (4, 0, 0));
    })
    .await;
}

#[tokio::test]
async fn marking_twice_keeps_one_row_per_key() {
    for_each_backend(async |ledger| {
        let keys: Vec<String> = (0..601).map(|i| format!("o/r:{i}:1")).collect();
        let items: Vec<SentItem<'_>> = keys.iter().map(|key| sent(key, 7)).collect();
        ledger.mark_sent(&items[..300], 0).await.unwrap();
        ledger.mark_sent(&items, 0).await.unwrap();
        assert_eq!(ledger.counts().await.unwrap().sent, 601);
        assert_eq!(ledger.sent_points(&[(100, 7)]).await.unwrap()[&7].count, 601);
        assert_eq!(ledger.keys(KeyState::Sent).await.unwrap().len(), 601);
    })
    .await;
}

#[tokio::test]
async fn sent_points_keep_the_largest_gauges_and_sum_the_tallies() {
    for_each_backend(async |ledger| {
        let item = |key, gauges, tallies| SentItem { key, point_key: 4, timestamp: 100, gauges, tallies };
        ledger
            .mark_sent(
                &[item("a", [Some(10.0), None, None], [1, 0]), item("b", [Some(30.0), Some(2.5), None], [1, 1])],
                0,
            )
            .await
            .unwrap();
        ledger
            .mark_sent(&[item("c", [Some(20.0), Some(0.0), None], [0, 0]), item("d", [None; 3], [0, 1])], 0)
            .await
            .unwrap();
        let points = ledger.sent_points(&[(100, 4), (101, 4)]).await.unwrap();
        assert_eq!(points[&4], SentPoint { count: 4, gauges: [Some(30.0), Some(2.5), None], tallies: [2, 2] });
        // The same point key at another second is another point.
        ledger.unmark(&["b"]).await.unwrap();
        let points = ledger.sent_points(&[(100, 4)]).await.unwrap();
        assert_eq!(points[&4], SentPoint { count: 3, gauges: [Some(20.0), Some(0.0), None], tallies: [1, 1] });
        assert!(ledger.sent_points(&[(101, 5)]).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn unmarked_items_are_unknown_again() {
    for_each_backend(async |ledger| {
        ledger.mark_sent(&[sent("a", 1), sent("b", 1)], 0).await.unwrap();
        ledger.unmark(&["a", "never"]).await.unwrap();
        assert_eq!(ledger.states(&["a", "b"]).await.unwrap(), [KeyState::Unknown, KeyState::Sent]);
    })
    .await;
}

#[tokio::test]
async fn dead_letters_are_skipped_until_requeued() {
    for_each_backend(async |ledger| {
        let detail = "{\"errors\":[\"bad\"]}";
        ledger.record_skipped(&[skipped("a"), skipped("b")], SkipReason::Dead { detail }, 5).await.unwrap();
        assert_eq!(ledger.states(&["a", "c"]).await.unwrap(), [KeyState::Dead, KeyState::Unknown]);
        let dead = ledger.dead_letters().await.unwrap();
        assert_eq!(dead.iter().map(|letter| letter.key.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(dead.iter().all(|letter| letter.detail == detail && letter.recorded_at == 5));
        // Too old does not overwrite a dead letter; a dead letter overwrites too old.
        ledger.record_skipped(&[skipped("a")], SkipReason::TooOld, 6).await.unwrap();
        ledger.record_skipped(&[skipped("o")], SkipReason::TooOld, 6).await.unwrap();
        ledger.record_skipped(&[skipped("o")], SkipReason::Dead { detail: "x" }, 7).await.unwrap();
        assert_eq!(ledger.states(&["a", "o"]).await.unwrap(), [KeyState::Dead, KeyState::Dead]);
        assert_eq!(ledger.keys(KeyState::Dead).await.unwrap(), ["a", "b", "o"]);
        assert_eq!(ledger.requeue(Some(&["a".to_owned(), "zz".to_owned()])).await.unwrap(), 1);
        assert_eq!(ledger.states(&["a", "b"]).await.unwrap(), [KeyState::Unknown, KeyState::Dead]);
        assert_eq!(ledger.requeue(None).await.unwrap(), 2);
        assert!(ledger.dead_letters().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn counts_and_lists_keep_states_apart() {
    for_each_backend(async |ledger| {
        ledger.mark_sent(&[sent("s1", 1), sent("s2", 2)], 0).await.unwrap();
        ledger.record_skipped(&[skipped("t1")], SkipReason::TooOld, 0).await.unwrap();
        ledger
            .record_skipped(&[skipped("d1"), skipped("d2"), skipped("d3")], SkipReason::Dead { detail: "x" }, 0)
            .await
            .unwrap();
        let counts = ledger.counts().await.unwrap();
        assert_eq!((counts.sent, counts.too_old, counts.dead), (2, 1, 3));
        assert_eq!(ledger.keys(KeyState::Sent).await.unwrap(), ["s1", "s2"]);
        assert_eq!(ledger.keys(KeyState::SkippedTooOld).await.unwrap(), ["t1"]);
        assert!(ledger.keys(KeyState::Unknown).await.unwrap().is_empty());
        ledger.verify().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn cursors_are_kept_per_scope() {
    for_each_backend(async |ledger| {
        assert_eq!(ledger.cursor("octo/repo").await.unwrap(), None);
        ledger.save_cursor("octo/repo", "2026-12-01T00:00:00Z", 1).await.unwrap();
        ledger.save_cursor("octo/other", "a", 1).await.unwrap();
        ledger.save_cursor("octo/repo", "2026-12-02T00:00:00Z", 2).await.unwrap();
        assert_eq!(ledger.cursor("octo/repo").await.unwrap().as_deref(), Some("2026-12-02T00:00:00Z"));
        assert_eq!(ledger.cursor("octo/other").await.unwrap().as_deref(), Some("a"));
        ledger.save_cursor("octo_x/y", "b", 3).await.unwrap();
        let cursors = ledger.cursors("octo/").await.unwrap();
        assert_eq!(cursors.len(), 2, "{cursors:?}");
        assert_eq!(cursors["octo/repo"], "2026-12-02T00:00:00Z");
        assert_eq!(ledger.cursors("octo_").await.unwrap().len(), 1, "_ is not a wildcard");
        assert!(ledger.cursors("none/").await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn export_pages_in_key_order_and_import_rebuilds_the_same_ledger() {
    use super::ExportRow;
    for_each_backend(async |ledger| {
        let item = |key, timestamp, gauges, tallies| SentItem { key, point_key: 7, timestamp, gauges, tallies };
        ledger
            .mark_sent(&[item("c", 100, [Some(3.0), None, None], [1, 0]), item("a", 100, [None; 3], [0; 2])], 10)
            .await
            .unwrap();
        ledger.mark_sent(&[item("b", 200, [Some(1.5), Some(0.5), None], [0, 2])], 20).await.unwrap();
        ledger.record_skipped(&[skipped("t")], SkipReason::TooOld, 30).await.unwrap();
        ledger
            .record_skipped(&[skipped("d")], SkipReason::Dead { detail: "{\"errors\":[\"bad\"]}" }, 40)
            .await
            .unwrap();
        ledger.save_cursor("octo/repo", "{\"low\":5}", 50).await.unwrap();
        // Pages of two, in key order, each after the last key of the one before.
        let first = ledger.sent_rows(None, 2).await.unwrap();
        let keys = |rows: &[ExportRow]| -> Vec<String> {
            rows.iter()
                .map(|row| match row {
                    ExportRow::Sent { key, .. } | ExportRow::Skipped { key, .. } => key.clone(),
                    ExportRow::Cursor { scope, .. } => scope.clone(),
                })
                .collect()
        };
        assert_eq!(keys(&first), ["a", "b"]);
        let second = ledger.sent_rows(Some("b"), 2).await.unwrap();
        assert_eq!(keys(&second), ["c"]);
        assert!(ledger.sent_rows(Some("c"), 2).await.unwrap().is_empty());
        let skipped_rows = ledger.skipped_rows().await.unwrap();
        assert_eq!(keys(&skipped_rows), ["d", "t"]);
        // Into a fresh ledger: the same states, points, dead letters and cursors. Twice: no change.
        let mut rows: Vec<ExportRow> = first.into_iter().chain(second).chain(skipped_rows).collect();
        rows.push(ExportRow::Cursor { scope: "octo/repo".into(), cursor: "{\"low\":5}".into() });
        let mut copy = SqliteLedger::open_in_memory().unwrap();
        assert_eq!(super::import_rows(&mut copy, &rows).await.unwrap().unwrap(), (3, 2, 1));
        assert_eq!(super::import_rows(&mut copy, &rows).await.unwrap().unwrap(), (3, 2, 1));
        for state in [KeyState::Sent, KeyState::SkippedTooOld, KeyState::Dead] {
            assert_eq!(copy.keys(state).await.unwrap(), ledger.keys(state).await.unwrap(), "{state:?}");
        }
        let points = [(100, 7), (200, 7)];
        assert_eq!(copy.sent_points(&points).await.unwrap(), ledger.sent_points(&points).await.unwrap());
        assert_eq!(copy.dead_letters().await.unwrap(), ledger.dead_letters().await.unwrap());
        assert_eq!(copy.cursors("").await.unwrap(), ledger.cursors("").await.unwrap());
        let bad = [ExportRow::Skipped {
            key: "x".into(),
            reason: "lost".into(),
            completed_at: 0,
            recorded_at: 0,
            detail: None,
        }];
        assert!(super::import_rows(&mut copy, &bad).await.unwrap().is_err());
    })
    .await;
}
