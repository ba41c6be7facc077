//! What the SQLite and Postgres stores share: the SQL of the op log, written once (both accept
//! `$n` parameters, `octet_length` and a named subquery), and the Rust around it, as a macro
//! over each driver's connection type (sqlx's executors are typed per database). What differs
//! between the two, how a transaction starts and how a room is locked for a write, stays in
//! each store's file; the flows around the SQL (a load's retry when a compaction moved the
//! snapshot's object, a delete's objects) are functions in [`super`].

/// The room's snapshot: its state (empty when it lives in the bucket), op seq and object key.
pub(crate) const SNAPSHOT: &str =
    "SELECT state, op_seq, object_key FROM snapshots WHERE room_id = $1";

/// Every op of the room after seq `$2`, in order.
pub(crate) const OPS_AFTER: &str =
    "SELECT seq, op FROM ops WHERE room_id = $1 AND seq > $2 ORDER BY seq";

/// The ops of room `$2` after seq `$3` up to the first whose running total of bytes reaches
/// `$1`. Both databases read a blob's length without its bytes (SQLite from the record
/// header, Postgres from a TOASTed value's pointer), so the bound costs no op's bytes.
pub(crate) const OPS_AFTER_BOUNDED: &str = "SELECT seq, op FROM ops \
     WHERE room_id = $2 AND seq > $3 AND seq <= COALESCE(( \
       SELECT seq FROM (SELECT seq, SUM(octet_length(op)) OVER (ORDER BY seq) AS run \
         FROM ops WHERE room_id = $2 AND seq > $3) AS running \
       WHERE run >= $1 ORDER BY seq LIMIT 1), 9223372036854775807) \
     ORDER BY seq";

/// The bucket objects a room's snapshot and checkpoints name.
pub(crate) const OBJECT_KEYS: &str =
    "SELECT object_key FROM snapshots WHERE room_id = $1 AND object_key IS NOT NULL \
     UNION SELECT object_key FROM checkpoints WHERE room_id = $1 AND object_key IS NOT NULL";

/// Deletes a room's rows from every table that holds its document or history.
pub(crate) const DELETE_ROOM: [&str; 4] = [
    "DELETE FROM ops WHERE room_id = $1",
    "DELETE FROM snapshots WHERE room_id = $1",
    "DELETE FROM checkpoints WHERE room_id = $1",
    "DELETE FROM versions WHERE room_id = $1",
];

/// The room's snapshot seq and object key, read inside a compaction's write transaction.
pub(crate) const SNAPSHOT_SEQ: &str = "SELECT op_seq, object_key FROM snapshots WHERE room_id = $1";

/// `read_room`, `ops_after_in`, `record_changes`, `delete_rows` and `replace_snapshot` for a
/// driver's connection type; `$now` is how its database says "now" for `updated_at` (the one
/// piece of SQL that differs).
macro_rules! op_log_impl {
    ($conn:ty, $now:literal) => {
        /// The in-transaction half of a compaction's write: `None` if another compaction moved
        /// the snapshot since `snapshot_seq` was read (its work is kept), else the new snapshot
        /// row (inline `state`, or naming `new_key` in the bucket), the history it keeps, and
        /// the objects no row names any more (deleted once the transaction commits).
        async fn replace_snapshot(
            tx: &mut $conn,
            room: &str,
            history: &$crate::store::history::HistoryPolicy,
            (snapshot_seq, op_seq): (i64, i64),
            state: &[u8],
            new_key: Option<&str>,
        ) -> $crate::error::Result<Option<Vec<String>>> {
            use $crate::store::sql;
            let current: Option<(i64, Option<String>)> = sqlx::query_as(sql::SNAPSHOT_SEQ)
                .bind(room)
                .fetch_optional(&mut *tx)
                .await?;
            let (current_seq, old_key) = current.unwrap_or((0, None));
            if current_seq != snapshot_seq {
                return Ok(None);
            }
            sqlx::query(concat!(
                "INSERT INTO snapshots (room_id, state, op_seq, updated_at, object_key) \
                 VALUES ($1, $2, $3, ",
                $now,
                ", $4) ON CONFLICT (room_id) DO UPDATE SET state = EXCLUDED.state, \
                 op_seq = EXCLUDED.op_seq, updated_at = EXCLUDED.updated_at, \
                 object_key = EXCLUDED.object_key"
            ))
            .bind(room)
            .bind(if new_key.is_some() { &[][..] } else { state })
            .bind(op_seq)
            .bind(new_key)
            .execute(&mut *tx)
            .await?;
            let mut unreferenced =
                keep_history(&mut *tx, room, op_seq, state, new_key, history).await?;
            // The replaced snapshot's object goes, unless a checkpoint still names it.
            if let Some(old) = old_key {
                let named: i64 = sqlx::query_scalar($crate::store::history::OBJECT_IN_HISTORY)
                    .bind(room)
                    .bind(&old)
                    .fetch_one(&mut *tx)
                    .await?;
                if named == 0 {
                    unreferenced.push(old);
                }
            }
            Ok(Some(unreferenced))
        }

        /// The room's snapshot (state, op seq, object key) and the ops after it (at most
        /// `max_bytes` of them), inside the caller's transaction.
        async fn read_room(
            tx: &mut $conn,
            room: &str,
            max_bytes: usize,
        ) -> $crate::error::Result<$crate::store::CompactionRead> {
            use sqlx::Row;
            use $crate::store::sql;
            let snapshot = sqlx::query(sql::SNAPSHOT)
                .bind(room)
                .fetch_optional(&mut *tx)
                .await?;
            let (snapshot, snapshot_seq, key) = match snapshot {
                Some(row) => (
                    Some(row.try_get::<Vec<u8>, _>(0)?),
                    row.try_get::<i64, _>(1)?,
                    row.try_get::<Option<String>, _>(2)?,
                ),
                None => (None, 0, None),
            };
            let query = if max_bytes == usize::MAX {
                sqlx::query(sql::OPS_AFTER)
            } else {
                sqlx::query(sql::OPS_AFTER_BOUNDED)
                    .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
            };
            let ops = query
                .bind(room)
                .bind(snapshot_seq)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            Ok((snapshot, snapshot_seq, ops, key))
        }

        /// Every op of `room` after `after`, read from `conn`.
        async fn ops_after_in(
            conn: &mut $conn,
            room: &str,
            after: u64,
        ) -> $crate::error::Result<Vec<(u64, Vec<u8>)>> {
            use sqlx::Row;
            use $crate::store::{seq_from_db, seq_to_db, sql};
            Ok(sqlx::query(sql::OPS_AFTER)
                .bind(room)
                .bind(seq_to_db(after))
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .map(|row| Ok((seq_from_db(row.try_get(0)?), row.try_get(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        }

        /// Records `document.changed` for the rooms of a group commit (`firsts`: each room's
        /// first seq), inside its transaction, when webhooks are on.
        async fn record_changes(
            tx: &mut $conn,
            timing: Option<&$crate::store::webhooks::Timing>,
            batch: &[$crate::store::Append],
            firsts: &[u64],
        ) -> $crate::error::Result<()> {
            let Some(timing) = timing else {
                return Ok(());
            };
            let rooms: Vec<(&str, i64, i64)> = batch
                .iter()
                .zip(firsts)
                .filter(|(a, _)| !a.updates.is_empty())
                .map(|(a, &first)| {
                    let first = $crate::store::seq_to_db(first);
                    (a.room.as_str(), first, first + a.updates.len() as i64 - 1)
                })
                .collect();
            // Far below either database's parameter limit.
            for chunk in rooms.chunks(256) {
                let now = $crate::store::now_unix_ms();
                $crate::store::webhooks::changed_upsert(chunk, now, *timing)
                    .build()
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        }

        /// Deletes every row of `room` inside the caller's write transaction: whether there
        /// were any, and the bucket objects they named (deleted once the rows are gone).
        async fn delete_rows(
            tx: &mut $conn,
            room: &str,
        ) -> $crate::error::Result<(bool, Vec<String>)> {
            use $crate::store::sql;
            let keys: Vec<String> = sqlx::query_scalar(sql::OBJECT_KEYS)
                .bind(room)
                .fetch_all(&mut *tx)
                .await?;
            let mut deleted = 0;
            for statement in sql::DELETE_ROOM {
                deleted += sqlx::query(statement)
                    .bind(room)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            Ok((deleted > 0, keys))
        }
    };
}

pub(crate) use op_log_impl;

/// The [`super::Store`] of a SQL store, the same for both: the store gives its description,
/// `PARALLEL_COMMITS` and `PARALLEL_LOADS`, `read_tx` (one consistent read of the op log and
/// the snapshots, never blocking commits), `write_tx(room)` (a transaction that owns the room
/// for a write: the lock it holds, if any, and the transaction) and `append_unbounded` (the
/// group commit, whose SQL differs); `op_log_impl!` gives the statements.
macro_rules! store_impl {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn describe(&self) -> String {
                self.description()
            }

            fn parallel_commits(&self) -> usize {
                Self::PARALLEL_COMMITS
            }

            fn parallel_loads(&self) -> usize {
                Self::PARALLEL_LOADS
            }

            fn timeouts(&self) -> $crate::store::StoreTimeouts {
                self.timeouts
            }

            async fn load(&self, room: &str) -> $crate::error::Result<$crate::store::Loaded> {
                let read = || async {
                    let mut tx = self.read_tx().await?;
                    let read = read_room(&mut tx, room, usize::MAX).await?;
                    tx.commit().await?;
                    Ok(read)
                };
                let load = $crate::store::load_resolving(self.objects.get(), read);
                self.timeouts.bound("load", load).await
            }

            async fn ops_after(
                &self,
                room: &str,
                after: u64,
            ) -> $crate::error::Result<Vec<(u64, Vec<u8>)>> {
                self.timeouts
                    .bound("ops_after", async {
                        let mut conn = self.pool.acquire().await?;
                        ops_after_in(&mut conn, room, after).await
                    })
                    .await
            }

            async fn append(
                &self,
                batch: &[$crate::store::Append],
            ) -> $crate::error::Result<Vec<u64>> {
                self.append_unbounded(batch)
                    .await
                    .map_err(|e| self.timeouts.classify("commit", e))
            }

            async fn compact(
                &self,
                room: &str,
                history: &$crate::store::history::HistoryPolicy,
                folds: &$crate::store::Folds,
            ) -> $crate::error::Result<Option<(Vec<u8>, u64)>> {
                let read = async {
                    let mut tx = self.read_tx().await?;
                    let read = read_room(&mut tx, room, folds.max_bytes()).await?;
                    tx.commit().await?;
                    Ok(read)
                };
                $crate::store::compact_in_turn(
                    self.timeouts,
                    self.objects.get(),
                    folds,
                    room,
                    read,
                    |snapshot_seq, op_seq, state| {
                        self.compact_write(room, history, (snapshot_seq, op_seq), state)
                    },
                )
                .await
            }

            fn use_objects(&self, objects: std::sync::Arc<$crate::store::objects::Objects>) {
                let _ = self.objects.set(objects);
            }

            async fn delete_room(&self, room: &str) -> $crate::error::Result<bool> {
                self.timeouts
                    .bound("delete", async {
                        // The room's lock (if the store takes one) ends with the block.
                        let (deleted, keys) = {
                            let (_lock, mut tx) = self.write_tx(room).await?;
                            let deleted = delete_rows(&mut tx, room).await?;
                            tx.commit().await?;
                            deleted
                        };
                        $crate::store::delete_objects(self.objects.get(), keys).await;
                        Ok(deleted)
                    })
                    .await
            }

            /// The database, and the bucket when snapshots live there.
            async fn ping(&self) -> $crate::error::Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                if let Some(o) = self.objects.get() {
                    o.ping().await?;
                }
                Ok(())
            }
        }

        impl $store {
            /// The end of a compaction: the new snapshot (object first), history kept, if the
            /// snapshot is still the one that was read at `snapshot_seq`.
            async fn compact_write(
                &self,
                room: &str,
                history: &$crate::store::history::HistoryPolicy,
                (snapshot_seq, op_seq): (i64, i64),
                state: Vec<u8>,
            ) -> $crate::error::Result<Option<(Vec<u8>, u64)>> {
                let objects = self.objects.get();
                let new_key = $crate::store::put_snapshot(objects, room, op_seq, &state).await?;
                // The room's lock (if the store takes one) ends with the block.
                let replaced = {
                    let (_lock, mut tx) = self.write_tx(room).await?;
                    let seqs = (snapshot_seq, op_seq);
                    let key = new_key.as_deref();
                    let replaced =
                        replace_snapshot(&mut tx, room, history, seqs, &state, key).await?;
                    // Rolled back (dropped) when another compaction moved the snapshot.
                    if replaced.is_some() {
                        tx.commit().await?;
                    }
                    replaced
                };
                $crate::store::compacted(objects, replaced, new_key, state, op_seq).await
            }
        }
    };
}

pub(crate) use store_impl;
