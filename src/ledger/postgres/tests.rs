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
