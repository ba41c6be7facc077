//! The history side of the store: committed ops with their time and author, checkpoints, and
//! named versions. Rows only: what they mean (the state at a seq, a diff, a restore, blame) is
//! computed by `concord_engine::history`.
//!
//! Both stores run the same SQL (`$N` placeholders work for SQLite too), so the statements
//! live here once and [`history_impl!`] expands them for each store type, as the accounts
//! directory does.

use async_trait::async_trait;

use crate::error::Result;

/// A committed op with what history needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRow {
    /// Room seq.
    pub seq: u64,
    /// v2 update bytes.
    pub op: Vec<u8>,
    /// Commit time, unix ms (0 for ops committed before history was kept).
    pub committed_at: i64,
    /// Who sent it, if known.
    pub author: Option<String>,
    /// The room seq its sender had seen when it made it, if the sender said.
    pub base_seq: Option<u64>,
}

/// What rebuilding a room at a seq starts from: the latest checkpoint at or below it and the
/// ops after that checkpoint up to the seq.
#[derive(Debug, Clone, Default)]
pub struct PastRows {
    /// The checkpoint's full state and seq (`None`: start from the empty document at 0).
    pub checkpoint: Option<(Vec<u8>, u64)>,
    /// Ops after the checkpoint up to the seq asked for, in order.
    pub ops: Vec<OpRow>,
}

/// A named version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Version {
    /// Stable id, unique across rooms.
    pub id: i64,
    /// What the author called it.
    pub label: String,
    /// Who saved it.
    pub author: String,
    /// The last op it covers.
    pub op_seq: u64,
    /// When it was saved, unix ms.
    pub created_at: i64,
}

/// How history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// A checkpoint is written when this many ops were committed since the last one, so any
    /// point is at most this many ops from a full state.
    pub checkpoint_ops: u64,
    /// Ops committed longer ago than this, and behind the oldest version, are folded into a
    /// checkpoint and dropped (`None`: keep everything).
    pub retention_ms: Option<i64>,
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        HistoryPolicy {
            checkpoint_ops: 1000,
            retention_ms: None,
        }
    }
}

/// Reading (and, for versions, writing) a room's history.
#[async_trait]
pub trait HistoryStore {
    /// The highest committed seq of the room (0 if none).
    async fn head_seq(&self, room: &str) -> Result<u64>;

    /// The lowest seq whose past can still be rebuilt (0 unless retention folded ops away).
    async fn history_floor(&self, room: &str) -> Result<u64>;

    /// The rows to rebuild the room at `seq` (`seq` at most the head).
    async fn past(&self, room: &str, seq: u64) -> Result<PastRows>;

    /// Every op with `from <= seq <= to`, in order.
    async fn op_rows(&self, room: &str, from: u64, to: u64) -> Result<Vec<OpRow>>;

    /// The last seq committed at or before `time_ms` (0 if none).
    async fn seq_at_time(&self, room: &str, time_ms: i64) -> Result<u64>;

    /// Saves a version; returns its id.
    async fn create_version(
        &self,
        room: &str,
        label: &str,
        author: &str,
        state: &[u8],
        op_seq: u64,
        now_ms: i64,
    ) -> Result<i64>;

    /// The room's versions, oldest first.
    async fn versions(&self, room: &str) -> Result<Vec<Version>>;

    /// One version of the room with its state.
    async fn version(&self, room: &str, id: i64) -> Result<Option<(Version, Vec<u8>)>>;
}

/// The last op kept, or the snapshot's seq when retention dropped every op.
pub(crate) const HEAD_SEQ: &str = "SELECT CASE WHEN o > s THEN o ELSE s END FROM (SELECT \
     COALESCE((SELECT MAX(seq) FROM ops WHERE room_id = $1), 0) AS o, \
     COALESCE((SELECT op_seq FROM snapshots WHERE room_id = $1), 0) AS s) AS h";
/// 0 while the first op is kept; else the oldest checkpoint (retention folded the ops before
/// it away, or the room was compacted before history was kept).
pub(crate) const FLOOR: &str = "SELECT CASE \
     WHEN EXISTS (SELECT 1 FROM ops WHERE room_id = $1 AND seq = 1) THEN 0 \
     ELSE COALESCE((SELECT MIN(seq) FROM checkpoints WHERE room_id = $1), 0) END";
pub(crate) const CHECKPOINT_AT: &str = "SELECT state, seq, object_key FROM checkpoints \
     WHERE room_id = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1";
pub(crate) const OPS_BETWEEN: &str = "SELECT seq, op, committed_at, author, base_seq FROM ops \
     WHERE room_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq";
pub(crate) const SEQ_AT_TIME: &str =
    "SELECT COALESCE((SELECT MAX(seq) FROM ops WHERE room_id = $1 AND committed_at <= $2), 0)";
pub(crate) const CREATE_VERSION: &str = "INSERT INTO versions \
     (room_id, label, author, state, op_seq, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
pub(crate) const VERSIONS: &str = "SELECT id, label, author, op_seq, created_at FROM versions \
     WHERE room_id = $1 ORDER BY id";
pub(crate) const VERSION: &str =
    "SELECT id, label, author, op_seq, created_at, state FROM versions \
     WHERE room_id = $1 AND id = $2";

// Compaction's history upkeep (in its write transaction).
pub(crate) const LAST_CHECKPOINT: &str =
    "SELECT COALESCE((SELECT MAX(seq) FROM checkpoints WHERE room_id = $1), 0)";
pub(crate) const INSERT_CHECKPOINT: &str =
    "INSERT INTO checkpoints (room_id, seq, state, object_key) VALUES ($1, $2, $3, $4) \
     ON CONFLICT DO NOTHING";
/// Objects of the checkpoints retention is about to drop.
pub(crate) const PRUNED_OBJECTS: &str = "SELECT object_key FROM checkpoints \
     WHERE room_id = $1 AND seq < $2 AND object_key IS NOT NULL";
/// Whether a checkpoint still names an object (then a replaced snapshot's object stays).
pub(crate) const OBJECT_IN_HISTORY: &str =
    "SELECT COUNT(*) FROM checkpoints WHERE room_id = $1 AND object_key = $2";
/// The checkpoint up to which retention may drop history: the latest one at or below both the
/// last op older than the window and the oldest version.
pub(crate) const PRUNE_BASE: &str = "SELECT COALESCE((SELECT MAX(c.seq) FROM checkpoints c \
     WHERE c.room_id = $1 \
       AND c.seq <= COALESCE((SELECT MAX(seq) FROM ops WHERE room_id = $1 AND committed_at < $2), 0) \
       AND c.seq <= COALESCE((SELECT MIN(op_seq) FROM versions WHERE room_id = $1), c.seq)), 0)";
pub(crate) const PRUNE_OPS: &str = "DELETE FROM ops WHERE room_id = $1 AND seq <= $2";
pub(crate) const PRUNE_CHECKPOINTS: &str =
    "DELETE FROM checkpoints WHERE room_id = $1 AND seq < $2";

/// Implements [`HistoryStore`] for a store type with `pool` and `timeouts` fields.
macro_rules! history_impl {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::history::HistoryStore for $store {
            async fn head_seq(&self, room: &str) -> $crate::error::Result<u64> {
                use $crate::store::history as h;
                self.timeouts
                    .bound("history", async {
                        let seq: i64 = sqlx::query_scalar(h::HEAD_SEQ)
                            .bind(room)
                            .fetch_one(&self.pool)
                            .await?;
                        Ok($crate::store::seq_from_db(seq))
                    })
                    .await
            }

            async fn history_floor(&self, room: &str) -> $crate::error::Result<u64> {
                use $crate::store::history as h;
                self.timeouts
                    .bound("history", async {
                        let seq: i64 = sqlx::query_scalar(h::FLOOR)
                            .bind(room)
                            .fetch_one(&self.pool)
                            .await?;
                        Ok($crate::store::seq_from_db(seq))
                    })
                    .await
            }

            async fn past(
                &self,
                room: &str,
                seq: u64,
            ) -> $crate::error::Result<$crate::store::history::PastRows> {
                use sqlx::Row;
                use $crate::store::history as h;
                self.timeouts
                    .bound("history", async {
                        // One transaction: a compaction pruning meanwhile is seen whole or not.
                        let mut tx = self.pool.begin().await?;
                        let checkpoint = sqlx::query(h::CHECKPOINT_AT)
                            .bind(room)
                            .bind($crate::store::seq_to_db(seq))
                            .fetch_optional(&mut *tx)
                            .await?
                            .map(|row| -> std::result::Result<_, sqlx::Error> {
                                let state: Vec<u8> = row.try_get(0)?;
                                let at: i64 = row.try_get(1)?;
                                let key: Option<String> = row.try_get(2)?;
                                Ok((state, $crate::store::seq_from_db(at), key))
                            })
                            .transpose()?;
                        let from = checkpoint.as_ref().map_or(0, |(_, s, _)| *s) + 1;
                        let rows = sqlx::query(h::OPS_BETWEEN)
                            .bind(room)
                            .bind($crate::store::seq_to_db(from))
                            .bind($crate::store::seq_to_db(seq))
                            .fetch_all(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        let ops = rows
                            .into_iter()
                            .map(h::op_row)
                            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
                        // A checkpoint in the bucket is read after the transaction: a prune
                        // that deletes it meanwhile fails this read (retry), never a wrong one.
                        let checkpoint = match checkpoint {
                            Some((state, at, key)) => {
                                let objects = self.objects.get();
                                $crate::store::objects::resolve(objects, Some(state), key)
                                    .await?
                                    .map(|state| (state, at))
                            }
                            None => None,
                        };
                        Ok(h::PastRows { checkpoint, ops })
                    })
                    .await
            }

            async fn op_rows(
                &self,
                room: &str,
                from: u64,
                to: u64,
            ) -> $crate::error::Result<Vec<$crate::store::history::OpRow>> {
                use $crate::store::history as h;
                self.timeouts
                    .bound("history", async {
                        let rows = sqlx::query(h::OPS_BETWEEN)
                            .bind(room)
                            .bind($crate::store::seq_to_db(from))
                            .bind($crate::store::seq_to_db(to))
                            .fetch_all(&self.pool)
                            .await?;
                        Ok(rows
                            .into_iter()
                            .map(h::op_row)
                            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?)
                    })
                    .await
            }

            async fn seq_at_time(&self, room: &str, time_ms: i64) -> $crate::error::Result<u64> {
                use $crate::store::history as h;
                self.timeouts
                    .bound("history", async {
                        let seq: i64 = sqlx::query_scalar(h::SEQ_AT_TIME)
                            .bind(room)
                            .bind(time_ms)
                            .fetch_one(&self.pool)
                            .await?;
                        Ok($crate::store::seq_from_db(seq))
                    })
                    .await
            }

            async fn create_version(
                &self,
                room: &str,
                label: &str,
                author: &str,
                state: &[u8],
                op_seq: u64,
                now_ms: i64,
            ) -> $crate::error::Result<i64> {
                use $crate::store::history as h;
                self.timeouts
                    .bound("history", async {
                        Ok(sqlx::query_scalar(h::CREATE_VERSION)
                            .bind(room)
                            .bind(label)
                            .bind(author)
                            .bind(state)
                            .bind($crate::store::seq_to_db(op_seq))
                            .bind(now_ms)
                            .fetch_one(&self.pool)
                            .await?)
                    })
                    .await
            }

            async fn versions(
                &self,
                room: &str,
            ) -> $crate::error::Result<Vec<$crate::store::history::Version>> {
                use $crate::store::history as h;
                self.timeouts
                    .bound("history", async {
                        let rows = sqlx::query(h::VERSIONS)
                            .bind(room)
                            .fetch_all(&self.pool)
                            .await?;
                        Ok(rows
                            .into_iter()
                            .map(|row| h::version_row(&row))
                            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?)
                    })
                    .await
            }

            async fn version(
                &self,
                room: &str,
                id: i64,
            ) -> $crate::error::Result<Option<($crate::store::history::Version, Vec<u8>)>> {
                use sqlx::Row;
                use $crate::store::history as h;
                self.timeouts
                    .bound("history", async {
                        let row = sqlx::query(h::VERSION)
                            .bind(room)
                            .bind(id)
                            .fetch_optional(&self.pool)
                            .await?;
                        Ok(match row {
                            Some(row) => Some((h::version_row(&row)?, row.try_get(5)?)),
                            None => None,
                        })
                    })
                    .await
            }
        }
    };
}
pub(crate) use history_impl;

/// An `ops` row from [`OPS_BETWEEN`].
pub(crate) fn op_row<R>(row: R) -> std::result::Result<OpRow, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(OpRow {
        seq: super::seq_from_db(row.try_get(0)?),
        op: row.try_get(1)?,
        committed_at: row.try_get(2)?,
        author: row.try_get(3)?,
        base_seq: row.try_get::<Option<i64>, _>(4)?.map(super::seq_from_db),
    })
}

/// A `versions` row from [`VERSIONS`] or [`VERSION`].
pub(crate) fn version_row<R>(row: &R) -> std::result::Result<Version, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Version {
        id: row.try_get(0)?,
        label: row.try_get(1)?,
        author: row.try_get(2)?,
        op_seq: super::seq_from_db(row.try_get(3)?),
        created_at: row.try_get(4)?,
    })
}

/// Defines `keep_history`, compaction's history upkeep inside its write transaction, for one
/// driver's connection type: a checkpoint when `checkpoint_ops` ops passed since the last one,
/// and with a retention window, the ops and checkpoints behind the newest checkpoint that is
/// older than the window and the oldest version are dropped.
macro_rules! keep_history_impl {
    ($conn:ty) => {
        async fn keep_history(
            tx: &mut $conn,
            room: &str,
            op_seq: i64,
            state: &[u8],
            object_key: Option<&str>,
            policy: &$crate::store::history::HistoryPolicy,
        ) -> $crate::error::Result<Vec<String>> {
            use $crate::store::history as h;
            let last: i64 = sqlx::query_scalar(h::LAST_CHECKPOINT)
                .bind(room)
                .fetch_one(&mut *tx)
                .await?;
            let every = i64::try_from(policy.checkpoint_ops.max(1)).unwrap_or(i64::MAX);
            if op_seq - last >= every {
                // With a bucket, the checkpoint names the snapshot's object (the same state).
                sqlx::query(h::INSERT_CHECKPOINT)
                    .bind(room)
                    .bind(op_seq)
                    .bind(if object_key.is_some() { &[][..] } else { state })
                    .bind(object_key)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut pruned = Vec::new();
            if let Some(retention) = policy.retention_ms {
                let cutoff = $crate::store::now_unix_ms().saturating_sub(retention);
                let base: i64 = sqlx::query_scalar(h::PRUNE_BASE)
                    .bind(room)
                    .bind(cutoff)
                    .fetch_one(&mut *tx)
                    .await?;
                if base > 0 {
                    sqlx::query(h::PRUNE_OPS)
                        .bind(room)
                        .bind(base)
                        .execute(&mut *tx)
                        .await?;
                    pruned = sqlx::query_scalar(h::PRUNED_OBJECTS)
                        .bind(room)
                        .bind(base)
                        .fetch_all(&mut *tx)
                        .await?;
                    sqlx::query(h::PRUNE_CHECKPOINTS)
                        .bind(room)
                        .bind(base)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            Ok(pruned)
        }
    };
}
pub(crate) use keep_history_impl;
