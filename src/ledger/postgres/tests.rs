//! Claims among invocations, against a real server.

use super::*;
use crate::ledger::SentItem;

fn point(timestamp: i64, point_key: i64) -> Claim {
    Claim { timestamp, point_key }
}

#[tokio::test]
async fn a_point_is_held_by_one_invocation_until_marked_released_or_lapsed() {
    let target = testing::fresh_database().await;
    let mut a = PgLedger::open(&target, Duration::from_secs(60)).await.unwrap();
    let mut b = PgLedger::open(&target, Duration::from_secs(60)).await.unwrap();
    assert_eq!(a.claim(&[point(1, 10), point(1, 11), point(1, 10)], 1_000).await.unwrap(), [true, true, true]);
    assert_eq!(
        b.claim(&[point(1, 10), point(2, 10)], 1_000).await.unwrap(),
        [false, true],
        "the same key at another second is another point"
    );
    assert_eq!(a.claim(&[point(1, 10)], 2_000).await.unwrap(), [true], "a holder claims again");
    // Marked points are given back in bulk (release_marked); releasing gives points back.
    let item = SentItem { key: "k", point_key: 10, timestamp: 1, gauges: [None; 3], tallies: [0; 2] };
    a.mark_sent(&[item], 3_000).await.unwrap();
    assert_eq!(b.claim(&[point(1, 10)], 3_000).await.unwrap(), [false], "kept until given back in bulk");
    a.release_marked().await.unwrap();
    assert_eq!(b.claim(&[point(1, 10), point(1, 11)], 3_000).await.unwrap(), [true, false]);
    a.release(&[point(1, 11)]).await.unwrap();
    assert_eq!(b.claim(&[point(1, 11)], 3_000).await.unwrap(), [true]);
    // A holder that died: its claims lapse when its lease ends, not before.
    let mut c = PgLedger::open(&target, Duration::from_secs(60)).await.unwrap();
    assert_eq!(c.claim(&[point(1, 10)], 3_000).await.unwrap(), [false]);
    std::mem::forget(b);
    assert_eq!(c.claim(&[point(1, 10)], 3_000 + 59_000).await.unwrap(), [false]);
    assert_eq!(c.claim(&[point(1, 10)], 3_000 + 61_000).await.unwrap(), [true]);
}

#[tokio::test]
async fn a_mark_redone_after_a_lost_answer_changes_nothing() {
    let target = testing::fresh_database().await;
    let mut ledger = PgLedger::open(&target, Duration::from_secs(60)).await.unwrap();
    let item = |key| SentItem { key, point_key: 10, timestamp: 1, gauges: [Some(5.0), None, None], tallies: [1, 0] };
    ledger.mark_sent(&[item("a")], 1_000).await.unwrap();
    // "a" again (its COPY fails on the key, the batch goes in skipping it), with "b" new.
    ledger.mark_sent(&[item("a"), item("b")], 2_000).await.unwrap();
    assert_eq!(ledger.states(&["a", "b", "c"]).await.unwrap(), [KeyState::Sent, KeyState::Sent, KeyState::Unknown]);
    let sent = ledger.sent_points(&[(1, 10)]).await.unwrap();
    assert_eq!(sent[&10].count, 2, "one row per key: {sent:?}");
}

#[tokio::test]
async fn a_ledger_of_schema_1_is_migrated() {
    let target = testing::fresh_database().await;
    let (client, connection) = target.config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move { drop(connection.await) });
    client
        .batch_execute(&format!(
            "CREATE TABLE workflow_metrics_schema (version bigint NOT NULL); INSERT INTO workflow_metrics_schema VALUES (1); {}",
            schema::MIGRATIONS[0]
        ))
        .await
        .unwrap();
    client.execute("INSERT INTO sent_metrics VALUES ('kept', 1, 2, 3, NULL)", &[]).await.unwrap();
    let mut ledger = PgLedger::open(&target, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ledger.states(&["kept"]).await.unwrap(), [KeyState::Sent]);
    let version: i64 = client.query_one("SELECT version FROM workflow_metrics_schema", &[]).await.unwrap().get(0);
    assert_eq!(version, PG_SCHEMA_VERSION);
    let index: Option<String> = client.query_one("SELECT to_regclass('claims_owner')::text", &[]).await.unwrap().get(0);
    assert_eq!(index, None, "schema 2 drops the index on claims' owners");
    let collations: Vec<String> = client
        .query(
            "SELECT table_name || '.' || column_name || ' ' || coalesce(collation_name, 'default')
             FROM information_schema.columns WHERE column_name IN ('run_key', 'scope') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        collations,
        ["cursors.scope C", "sent_metrics.run_key C", "skipped_runs.run_key C"],
        "schema 3 compares keys byte by byte"
    );
}

#[tokio::test]
async fn the_end_gives_back_every_claim_of_the_invocation_and_its_siblings() {
    let target = testing::fresh_database().await;
    let mut a = PgLedger::open(&target, Duration::from_secs(60)).await.unwrap();
    let mut b = PgLedger::open(&target, Duration::from_secs(60)).await.unwrap();
    // Marked or released by key: the count reaches zero and the end need not ask by owner.
    assert_eq!(a.claim(&[point(1, 1), point(1, 2)], 1_000).await.unwrap(), [true, true]);
    let item = SentItem { key: "k1", point_key: 1, timestamp: 1, gauges: [None; 3], tallies: [0; 2] };
    a.mark_sent(&[item], 1_000).await.unwrap();
    a.release(&[point(1, 2)]).await.unwrap();
    assert_eq!(a.holding.load(Ordering::Relaxed), 1, "the marked point is still held");
    a.release_all().await.unwrap();
    assert_eq!(a.holding.load(Ordering::Relaxed), 0);
    assert_eq!(b.claim(&[point(1, 1), point(1, 2)], 1_000).await.unwrap(), [true, true]);
    b.release_all().await.unwrap();
    // A claim renewed counts twice and one taken by a sibling counts too: the end finds them.
    let mut sibling = a.sibling().unwrap();
    assert_eq!(a.claim(&[point(2, 1)], 2_000).await.unwrap(), [true]);
    assert_eq!(a.claim(&[point(2, 1)], 2_000).await.unwrap(), [true]);
    assert_eq!(sibling.claim(&[point(2, 2)], 2_000).await.unwrap(), [true]);
    a.release(&[point(2, 1)]).await.unwrap();
    assert!(a.holding.load(Ordering::Relaxed) > 0, "the count never falls below what is held");
    a.release_all().await.unwrap();
    assert_eq!(b.claim(&[point(2, 1), point(2, 2)], 2_000).await.unwrap(), [true, true]);
}

#[tokio::test]
async fn the_ledger_s_settings_join_the_url_s_own_options_and_opening_reads_its_state() {
    let mut target = testing::fresh_database().await;
    target.config.options("-c statement_timeout=12345");
    let mut ledger = PgLedger::open(&target, Duration::from_secs(60)).await.unwrap();
    assert!(ledger.empty_at_open && !ledger.may_have_skipped.load(Ordering::Relaxed), "a new ledger is empty");
    let client = &ledger.conn.as_ref().expect("opening connected").client;
    let row = client
        .query_one(
            "SELECT current_setting('statement_timeout'), current_setting('jit'), current_setting('enable_seqscan')",
            &[],
        )
        .await
        .unwrap();
    let settings: Vec<String> = (0..3).map(|index| row.get(index)).collect();
    assert_eq!(settings, ["12345ms", "off", "off"]);
    // What opening reads: whether anything was sent, and whether skipped_runs holds rows.
    let item = SentItem { key: "k", point_key: 1, timestamp: 1, gauges: [None; 3], tallies: [0; 2] };
    ledger.mark_sent(&[item], 1_000).await.unwrap();
    let reopened = PgLedger::open(&target, Duration::from_secs(60)).await.unwrap();
    assert!(!reopened.empty_at_open && !reopened.may_have_skipped.load(Ordering::Relaxed));
    let old = crate::ledger::SkippedItem { key: "old", completed_at: 1 };
    ledger.record_skipped(&[old], crate::ledger::SkipReason::TooOld, 1_000).await.unwrap();
    let reopened = PgLedger::open(&target, Duration::from_secs(60)).await.unwrap();
    assert!(reopened.may_have_skipped.load(Ordering::Relaxed));
}
