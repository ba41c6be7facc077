//! The webhook outbox (`webhook_outbox`, migration 0004): what [`crate::webhooks`] delivers.
//!
//! One row per room and event type. `document.changed` rows are written by `append`, in the
//! transaction that commits the ops they announce, so no crash can commit a change and lose its
//! event; while a row waits, later changes extend it (`last_seq`) and push its due time out by
//! the debounce, but never past `first_at + max_delay`. `room.loaded` / `room.unloaded` rows
//! keep the latest occurrence. A delivered row is deleted, or, if changes arrived while it was
//! in flight, kept for them. A failed one is retried at a later `due_at`; rows are never
//! dropped, and their number is bounded by three per room.

use async_trait::async_trait;

use crate::error::Result;

/// The event types.
pub const CHANGED: &str = "document.changed";
/// A room was loaded on an instance.
pub const LOADED: &str = "room.loaded";
/// A room was unloaded (idle, or the instance shut down).
pub const UNLOADED: &str = "room.unloaded";

/// When `document.changed` is due (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// After a room's latest change.
    pub debounce_ms: i64,
    /// At the latest after its first undelivered change.
    pub max_delay_ms: i64,
}

/// One outbox row, as claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The room.
    pub room: String,
    /// The event type ([`CHANGED`], [`LOADED`], [`UNLOADED`]).
    pub kind: String,
    /// The first change not yet delivered.
    pub first_seq: i64,
    /// The room's seq at the latest change (or at the load / unload).
    pub last_seq: i64,
    /// Unix ms of the first change (or of the load / unload).
    pub first_at: i64,
    /// Unix ms of the latest change.
    pub last_at: i64,
    /// Failed deliveries so far.
    pub attempts: i32,
}

/// The outbox, in each store.
#[async_trait]
pub trait WebhookStore {
    /// From now on, every `append` also records `document.changed` for its rooms.
    fn enable_webhooks(&self, timing: Timing);

    /// Records a room event ([`LOADED`], [`UNLOADED`]) at the room's `seq`.
    async fn webhook_event(&self, room: &str, kind: &'static str, seq: u64) -> Result<()>;

    /// Whether any row is due and not leased (a cheap read before [`Self::webhook_claim`]).
    async fn webhook_due(&self, now_ms: i64) -> Result<bool>;

    /// Leases up to `limit` due rows until `now_ms + lease_ms` (another instance skips them
    /// meanwhile) and returns them, oldest due first.
    async fn webhook_claim(&self, now_ms: i64, lease_ms: i64, limit: i64)
        -> Result<Vec<OutboxRow>>;

    /// `row` was delivered: delete it, or keep what changed since it was claimed.
    async fn webhook_done(&self, row: &OutboxRow, now_ms: i64) -> Result<()>;

    /// `row` failed: one more attempt, at `retry_at_ms`.
    async fn webhook_retry(&self, row: &OutboxRow, retry_at_ms: i64) -> Result<()>;

    /// Rows waiting (for the metric).
    async fn webhook_depth(&self) -> Result<i64>;
}

/// The `ON CONFLICT` part of the `document.changed` upsert `append` runs, after its `VALUES`
/// (room, kind, first_seq, last_seq, first_at, last_at, due_at, attempts, lease_until): a
/// waiting row grows, its due time moves to the new debounce but not past `first_at +
/// max_delay`; a row being retried keeps its retry time.
pub(crate) fn changed_conflict(max_delay_ms: i64) -> String {
    format!(
        " ON CONFLICT (room_id, kind) DO UPDATE SET \
           last_seq = excluded.last_seq, last_at = excluded.last_at, \
           due_at = CASE WHEN webhook_outbox.attempts > 0 THEN webhook_outbox.due_at \
                         WHEN excluded.due_at < webhook_outbox.first_at + {max_delay_ms} THEN excluded.due_at \
                         ELSE webhook_outbox.first_at + {max_delay_ms} END"
    )
}

pub(crate) const EVENT: &str = "INSERT INTO webhook_outbox \
     (room_id, kind, first_seq, last_seq, first_at, last_at, due_at, attempts, lease_until) \
     VALUES ($1, $2, $3, $3, $4, $4, $4, 0, 0) \
     ON CONFLICT (room_id, kind) DO UPDATE SET last_seq = excluded.last_seq, \
       last_at = excluded.last_at, \
       due_at = CASE WHEN webhook_outbox.attempts > 0 THEN webhook_outbox.due_at \
                     ELSE excluded.due_at END";
pub(crate) const DUE: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM webhook_outbox \
     WHERE due_at <= $1 AND lease_until <= $1 LIMIT 1) d";
/// Deletes the row if nothing changed since it was claimed.
pub(crate) const DONE: &str = "DELETE FROM webhook_outbox \
     WHERE room_id = $1 AND kind = $2 AND last_seq = $3 AND last_at = $4";
/// Keeps what changed while the row was in flight, due by the usual rule.
pub(crate) const DONE_KEEP: &str = "UPDATE webhook_outbox SET first_seq = $3 + 1, first_at = $4, \
     attempts = 0, lease_until = 0, \
     due_at = CASE WHEN last_at + $5 < $4 + $6 THEN last_at + $5 ELSE $4 + $6 END \
     WHERE room_id = $1 AND kind = $2";
pub(crate) const RETRY: &str = "UPDATE webhook_outbox SET attempts = attempts + 1, due_at = $3, \
     lease_until = 0 WHERE room_id = $1 AND kind = $2";
pub(crate) const DEPTH: &str = "SELECT COUNT(*) FROM webhook_outbox";
pub(crate) const CLAIM_SQLITE: &str = "UPDATE webhook_outbox SET lease_until = $1 \
     WHERE rowid IN (SELECT rowid FROM webhook_outbox WHERE due_at <= $2 AND lease_until <= $2 \
                     ORDER BY due_at LIMIT $3) \
     RETURNING room_id, kind, first_seq, last_seq, first_at, last_at, attempts";
/// `SKIP LOCKED`: instances claiming at once take different rows.
pub(crate) const CLAIM_POSTGRES: &str = "UPDATE webhook_outbox o SET lease_until = $1 \
     FROM (SELECT room_id, kind FROM webhook_outbox WHERE due_at <= $2 AND lease_until <= $2 \
           ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) d \
     WHERE o.room_id = d.room_id AND o.kind = d.kind \
     RETURNING o.room_id, o.kind, o.first_seq, o.last_seq, o.first_at, o.last_at, o.attempts";

/// One `document.changed` upsert for a group commit's rooms, `(room, first_seq, last_seq)`,
/// committed `now_ms`: one statement per group whatever the number of rooms.
pub(crate) fn changed_upsert<DB: sqlx::Database>(
    rooms: &[(&str, i64, i64)],
    now_ms: i64,
    timing: Timing,
) -> sqlx::QueryBuilder<DB>
where
    for<'t> &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i32: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::QueryBuilder::new(
        "INSERT INTO webhook_outbox \
         (room_id, kind, first_seq, last_seq, first_at, last_at, due_at, attempts, lease_until) ",
    );
    q.push_values(rooms, |mut row, (room, first, last)| {
        row.push_bind(*room)
            .push_bind(CHANGED)
            .push_bind(*first)
            .push_bind(*last)
            .push_bind(now_ms)
            .push_bind(now_ms)
            .push_bind(now_ms + timing.debounce_ms)
            .push_bind(0i32)
            .push_bind(0i64);
    });
    q.push(changed_conflict(timing.max_delay_ms));
    q
}

/// Reads a claimed row.
pub(crate) fn row<R: sqlx::Row>(r: &R) -> std::result::Result<OutboxRow, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(OutboxRow {
        room: r.try_get("room_id")?,
        kind: r.try_get("kind")?,
        first_seq: r.try_get("first_seq")?,
        last_seq: r.try_get("last_seq")?,
        first_at: r.try_get("first_at")?,
        last_at: r.try_get("last_at")?,
        attempts: r.try_get("attempts")?,
    })
}

/// Implements [`WebhookStore`] for a store type with `pool`, `timeouts` and `webhooks` fields
/// and an `outbox_writer()` method giving the pool that writes (SQLite: behind its one-writer
/// lock, so outbox writes queue with the committer instead of sleeping in SQLite's busy
/// handler). `$claim` is the store's claim statement.
macro_rules! webhook_impl {
    ($store:ty, $claim:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::webhooks::WebhookStore for $store {
            fn enable_webhooks(&self, timing: $crate::store::webhooks::Timing) {
                let _ = self.webhooks.set(timing);
            }

            async fn webhook_event(
                &self,
                room: &str,
                kind: &'static str,
                seq: u64,
            ) -> $crate::error::Result<()> {
                self.timeouts
                    .bound("webhook outbox", async {
                        let writer = self.outbox_writer().await;
                        let conn = &*writer;
                        sqlx::query($crate::store::webhooks::EVENT)
                            .bind(room)
                            .bind(kind)
                            .bind($crate::store::seq_to_db(seq))
                            .bind($crate::store::now_unix_ms())
                            .execute(conn)
                            .await?;
                        Ok(())
                    })
                    .await
            }

            async fn webhook_due(&self, now_ms: i64) -> $crate::error::Result<bool> {
                self.timeouts
                    .bound("webhook outbox", async {
                        let n: i64 = sqlx::query_scalar($crate::store::webhooks::DUE)
                            .bind(now_ms)
                            .fetch_one(&self.pool)
                            .await?;
                        Ok(n > 0)
                    })
                    .await
            }

            async fn webhook_claim(
                &self,
                now_ms: i64,
                lease_ms: i64,
                limit: i64,
            ) -> $crate::error::Result<Vec<$crate::store::webhooks::OutboxRow>> {
                self.timeouts
                    .bound("webhook outbox", async {
                        let writer = self.outbox_writer().await;
                        let conn = &*writer;
                        let rows = sqlx::query($claim)
                            .bind(now_ms + lease_ms)
                            .bind(now_ms)
                            .bind(limit)
                            .fetch_all(conn)
                            .await?;
                        Ok(rows
                            .iter()
                            .map($crate::store::webhooks::row)
                            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?)
                    })
                    .await
            }

            async fn webhook_done(
                &self,
                row: &$crate::store::webhooks::OutboxRow,
                now_ms: i64,
            ) -> $crate::error::Result<()> {
                let timing =
                    self.webhooks
                        .get()
                        .copied()
                        .unwrap_or($crate::store::webhooks::Timing {
                            debounce_ms: 0,
                            max_delay_ms: 0,
                        });
                self.timeouts
                    .bound("webhook outbox", async {
                        let writer = self.outbox_writer().await;
                        let conn = &*writer;
                        let deleted = sqlx::query($crate::store::webhooks::DONE)
                            .bind(&row.room)
                            .bind(&row.kind)
                            .bind(row.last_seq)
                            .bind(row.last_at)
                            .execute(conn)
                            .await?
                            .rows_affected();
                        if deleted == 0 {
                            sqlx::query($crate::store::webhooks::DONE_KEEP)
                                .bind(&row.room)
                                .bind(&row.kind)
                                .bind(row.last_seq)
                                .bind(now_ms)
                                .bind(timing.debounce_ms)
                                .bind(timing.max_delay_ms)
                                .execute(conn)
                                .await?;
                        }
                        Ok(())
                    })
                    .await
            }

            async fn webhook_retry(
                &self,
                row: &$crate::store::webhooks::OutboxRow,
                retry_at_ms: i64,
            ) -> $crate::error::Result<()> {
                self.timeouts
                    .bound("webhook outbox", async {
                        let writer = self.outbox_writer().await;
                        let conn = &*writer;
                        sqlx::query($crate::store::webhooks::RETRY)
                            .bind(&row.room)
                            .bind(&row.kind)
                            .bind(retry_at_ms)
                            .execute(conn)
                            .await?;
                        Ok(())
                    })
                    .await
            }

            async fn webhook_depth(&self) -> $crate::error::Result<i64> {
                self.timeouts
                    .bound("webhook outbox", async {
                        Ok(sqlx::query_scalar($crate::store::webhooks::DEPTH)
                            .fetch_one(&self.pool)
                            .await?)
                    })
                    .await
            }
        }
    };
}
pub(crate) use webhook_impl;
