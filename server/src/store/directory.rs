//! The accounts directory: users, documents and grants (`CONCORD_AUTH=accounts`).
//!
//! It decides *who* may touch a room, never *how* the room changes: nothing here reads or
//! writes a document's content except [`Directory::delete_doc`], which removes a deleted
//! document's rows with it.
//!
//! Both stores run the same SQL (sqlx accepts `$N` placeholders for SQLite as well), so the
//! statements live here once and [`directory_impl!`] expands them for each store type.

use async_trait::async_trait;

use crate::auth::access::Role;
use crate::error::Result;

/// A user as others see them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    /// Stable id (`u_…`), the `sub` of the user's tokens.
    pub id: String,
    /// Display and login name, unique regardless of case.
    pub name: String,
}

/// A user with their password hash, for login only.
#[derive(Debug, Clone)]
pub struct Account {
    /// Who.
    pub user: User,
    /// argon2id in PHC string format.
    pub password_hash: String,
}

/// A document: a room with an owner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DocInfo {
    /// The room id.
    pub id: String,
    /// Shown in lists.
    pub title: String,
    /// Who created it; the only one who may share or delete it.
    pub owner: User,
}

/// What a user is to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DocRole {
    /// Granted read access.
    Read,
    /// Granted write access.
    Write,
    /// Created it.
    Owner,
}

impl DocRole {
    /// The name used in the REST API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DocRole::Read => "read",
            DocRole::Write => "write",
            DocRole::Owner => "owner",
        }
    }

    /// What this lets a connection do in the room.
    pub fn room_role(self) -> Role {
        match self {
            DocRole::Read => Role::Read,
            DocRole::Write | DocRole::Owner => Role::Write,
        }
    }

    pub(crate) fn parse(s: &str) -> Option<DocRole> {
        match s {
            "read" => Some(DocRole::Read),
            "write" => Some(DocRole::Write),
            "owner" => Some(DocRole::Owner),
            _ => None,
        }
    }
}

/// Storage of accounts, documents and grants. Every call is bounded by the store's timeouts.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Adds a user; `false` if the name (folded to `name_key`) is taken.
    async fn create_user(&self, user: &User, name_key: &str, hash: &str, now: i64) -> Result<bool>;
    /// The account with this folded name, for login.
    async fn account(&self, name_key: &str) -> Result<Option<Account>>;
    /// A user by id.
    async fn user(&self, id: &str) -> Result<Option<User>>;
    /// Users whose folded name matches the LIKE `pattern` (escape character `\`).
    async fn search_users(&self, pattern: &str, limit: i64) -> Result<Vec<User>>;
    /// Adds a document; `false` if the id is taken by a document or by existing room data.
    async fn create_doc(&self, doc: &DocInfo, now: i64) -> Result<bool>;
    /// A document by id.
    async fn doc(&self, id: &str) -> Result<Option<DocInfo>>;
    /// Documents the user owns or was granted, with their role, by title.
    async fn docs_for(&self, user: &str, limit: i64) -> Result<Vec<(DocInfo, DocRole)>>;
    /// The user's role on the document, if any.
    async fn role(&self, doc: &str, user: &str) -> Result<Option<DocRole>>;
    /// Who was granted what on the document (the owner not included).
    async fn grants(&self, doc: &str) -> Result<Vec<(User, Role)>>;
    /// Grants `role` (insert or change).
    async fn set_grant(&self, doc: &str, user: &str, role: Role) -> Result<()>;
    /// Revokes a grant; `false` if there was none.
    async fn remove_grant(&self, doc: &str, user: &str) -> Result<bool>;
    /// Deletes the document, its grants and its room's snapshot and ops, in one transaction;
    /// `false` if there was no such document.
    async fn delete_doc(&self, doc: &str) -> Result<bool>;
}

pub(crate) const CREATE_USER: &str =
    "INSERT INTO users (id, name, name_key, password_hash, created_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name_key) DO NOTHING";
pub(crate) const ACCOUNT: &str = "SELECT id, name, password_hash FROM users WHERE name_key = $1";
pub(crate) const USER: &str = "SELECT id, name FROM users WHERE id = $1";
pub(crate) const SEARCH_USERS: &str =
    "SELECT id, name FROM users WHERE name_key LIKE $1 ESCAPE '\\' ORDER BY name_key LIMIT $2";
pub(crate) const ROOM_HAS_DATA: &str = "SELECT 1 FROM snapshots WHERE room_id = $1 \
     UNION ALL SELECT 1 FROM ops WHERE room_id = $1 LIMIT 1";
pub(crate) const CREATE_DOC: &str = "INSERT INTO documents (id, title, owner_id, created_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING";
pub(crate) const DOC: &str = "SELECT d.id, d.title, u.id, u.name FROM documents d \
     JOIN users u ON u.id = d.owner_id WHERE d.id = $1";
pub(crate) const DOCS_FOR: &str = "SELECT d.id, d.title, u.id, u.name, 'owner' FROM documents d \
     JOIN users u ON u.id = d.owner_id WHERE d.owner_id = $1 \
     UNION ALL SELECT d.id, d.title, u.id, u.name, g.role FROM grants g \
     JOIN documents d ON d.id = g.doc_id JOIN users u ON u.id = d.owner_id \
     WHERE g.user_id = $1 ORDER BY 2, 1 LIMIT $2";
pub(crate) const ROLE: &str = "SELECT 'owner' FROM documents WHERE id = $1 AND owner_id = $2 \
     UNION ALL SELECT role FROM grants WHERE doc_id = $1 AND user_id = $2";
pub(crate) const GRANTS: &str = "SELECT u.id, u.name, g.role FROM grants g \
     JOIN users u ON u.id = g.user_id WHERE g.doc_id = $1 ORDER BY u.name_key";
pub(crate) const SET_GRANT: &str =
    "INSERT INTO grants (doc_id, user_id, role) VALUES ($1, $2, $3) \
     ON CONFLICT (doc_id, user_id) DO UPDATE SET role = excluded.role";
pub(crate) const REMOVE_GRANT: &str = "DELETE FROM grants WHERE doc_id = $1 AND user_id = $2";
pub(crate) const DELETE_GRANTS: &str = "DELETE FROM grants WHERE doc_id = $1";
pub(crate) const DELETE_DOC: &str = "DELETE FROM documents WHERE id = $1";
pub(crate) const DELETE_OPS: &str = "DELETE FROM ops WHERE room_id = $1";
pub(crate) const DELETE_SNAPSHOT: &str = "DELETE FROM snapshots WHERE room_id = $1";
/// History goes with the document.
pub(crate) const DELETE_HISTORY: [&str; 2] = [
    "DELETE FROM checkpoints WHERE room_id = $1",
    "DELETE FROM versions WHERE room_id = $1",
];

/// Escapes `%`, `_` and `\` so user text matches literally inside a LIKE pattern.
pub fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Implements [`Directory`] for a store type with `pool` and `timeouts` fields.
macro_rules! directory_impl {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::directory::Directory for $store {
            async fn create_user(
                &self,
                user: &$crate::store::directory::User,
                name_key: &str,
                hash: &str,
                now: i64,
            ) -> $crate::error::Result<bool> {
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        let done = sqlx::query(d::CREATE_USER)
                            .bind(&user.id)
                            .bind(&user.name)
                            .bind(name_key)
                            .bind(hash)
                            .bind(now)
                            .execute(&self.pool)
                            .await?;
                        Ok(done.rows_affected() == 1)
                    })
                    .await
            }

            async fn account(
                &self,
                name_key: &str,
            ) -> $crate::error::Result<Option<$crate::store::directory::Account>> {
                use sqlx::Row;
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        let row = sqlx::query(d::ACCOUNT)
                            .bind(name_key)
                            .fetch_optional(&self.pool)
                            .await?;
                        Ok(match row {
                            Some(row) => Some(d::Account {
                                user: d::User {
                                    id: row.try_get(0)?,
                                    name: row.try_get(1)?,
                                },
                                password_hash: row.try_get(2)?,
                            }),
                            None => None,
                        })
                    })
                    .await
            }

            async fn user(
                &self,
                id: &str,
            ) -> $crate::error::Result<Option<$crate::store::directory::User>> {
                use sqlx::Row;
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        let row = sqlx::query(d::USER)
                            .bind(id)
                            .fetch_optional(&self.pool)
                            .await?;
                        Ok(match row {
                            Some(row) => Some(d::User {
                                id: row.try_get(0)?,
                                name: row.try_get(1)?,
                            }),
                            None => None,
                        })
                    })
                    .await
            }

            async fn search_users(
                &self,
                pattern: &str,
                limit: i64,
            ) -> $crate::error::Result<Vec<$crate::store::directory::User>> {
                use sqlx::Row;
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        let rows = sqlx::query(d::SEARCH_USERS)
                            .bind(pattern)
                            .bind(limit)
                            .fetch_all(&self.pool)
                            .await?;
                        rows.into_iter()
                            .map(|row| {
                                Ok(d::User {
                                    id: row.try_get(0)?,
                                    name: row.try_get(1)?,
                                })
                            })
                            .collect()
                    })
                    .await
            }

            async fn create_doc(
                &self,
                doc: &$crate::store::directory::DocInfo,
                now: i64,
            ) -> $crate::error::Result<bool> {
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        let data = sqlx::query(d::ROOM_HAS_DATA)
                            .bind(&doc.id)
                            .fetch_optional(&self.pool)
                            .await?;
                        if data.is_some() {
                            return Ok(false);
                        }
                        let done = sqlx::query(d::CREATE_DOC)
                            .bind(&doc.id)
                            .bind(&doc.title)
                            .bind(&doc.owner.id)
                            .bind(now)
                            .execute(&self.pool)
                            .await?;
                        Ok(done.rows_affected() == 1)
                    })
                    .await
            }

            async fn doc(
                &self,
                id: &str,
            ) -> $crate::error::Result<Option<$crate::store::directory::DocInfo>> {
                use sqlx::Row;
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        let row = sqlx::query(d::DOC)
                            .bind(id)
                            .fetch_optional(&self.pool)
                            .await?;
                        Ok(match row {
                            Some(row) => Some(d::DocInfo {
                                id: row.try_get(0)?,
                                title: row.try_get(1)?,
                                owner: d::User {
                                    id: row.try_get(2)?,
                                    name: row.try_get(3)?,
                                },
                            }),
                            None => None,
                        })
                    })
                    .await
            }

            async fn docs_for(
                &self,
                user: &str,
                limit: i64,
            ) -> $crate::error::Result<
                Vec<(
                    $crate::store::directory::DocInfo,
                    $crate::store::directory::DocRole,
                )>,
            > {
                use sqlx::Row;
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        let rows = sqlx::query(d::DOCS_FOR)
                            .bind(user)
                            .bind(limit)
                            .fetch_all(&self.pool)
                            .await?;
                        let mut out = Vec::with_capacity(rows.len());
                        for row in rows {
                            let role: String = row.try_get(4)?;
                            let Some(role) = d::DocRole::parse(&role) else {
                                continue;
                            };
                            out.push((
                                d::DocInfo {
                                    id: row.try_get(0)?,
                                    title: row.try_get(1)?,
                                    owner: d::User {
                                        id: row.try_get(2)?,
                                        name: row.try_get(3)?,
                                    },
                                },
                                role,
                            ));
                        }
                        Ok(out)
                    })
                    .await
            }

            async fn role(
                &self,
                doc: &str,
                user: &str,
            ) -> $crate::error::Result<Option<$crate::store::directory::DocRole>> {
                use sqlx::Row;
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        let rows = sqlx::query(d::ROLE)
                            .bind(doc)
                            .bind(user)
                            .fetch_all(&self.pool)
                            .await?;
                        let mut best = None;
                        for row in rows {
                            let role: String = row.try_get(0)?;
                            best = best.max(d::DocRole::parse(&role));
                        }
                        Ok(best)
                    })
                    .await
            }

            async fn grants(
                &self,
                doc: &str,
            ) -> $crate::error::Result<
                Vec<($crate::store::directory::User, $crate::auth::access::Role)>,
            > {
                use sqlx::Row;
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        let rows = sqlx::query(d::GRANTS)
                            .bind(doc)
                            .fetch_all(&self.pool)
                            .await?;
                        let mut out = Vec::with_capacity(rows.len());
                        for row in rows {
                            let role: String = row.try_get(2)?;
                            let Some(role) = $crate::auth::access::Role::parse(&role) else {
                                continue;
                            };
                            let user = d::User {
                                id: row.try_get(0)?,
                                name: row.try_get(1)?,
                            };
                            out.push((user, role));
                        }
                        Ok(out)
                    })
                    .await
            }

            async fn set_grant(
                &self,
                doc: &str,
                user: &str,
                role: $crate::auth::access::Role,
            ) -> $crate::error::Result<()> {
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        sqlx::query(d::SET_GRANT)
                            .bind(doc)
                            .bind(user)
                            .bind(role.as_str())
                            .execute(&self.pool)
                            .await?;
                        Ok(())
                    })
                    .await
            }

            async fn remove_grant(&self, doc: &str, user: &str) -> $crate::error::Result<bool> {
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        let done = sqlx::query(d::REMOVE_GRANT)
                            .bind(doc)
                            .bind(user)
                            .execute(&self.pool)
                            .await?;
                        Ok(done.rows_affected() > 0)
                    })
                    .await
            }

            async fn delete_doc(&self, doc: &str) -> $crate::error::Result<bool> {
                use $crate::store::directory as d;
                self.timeouts
                    .bound("directory", async {
                        let mut tx = self.pool.begin().await?;
                        sqlx::query(d::DELETE_GRANTS)
                            .bind(doc)
                            .execute(&mut *tx)
                            .await?;
                        let done = sqlx::query(d::DELETE_DOC)
                            .bind(doc)
                            .execute(&mut *tx)
                            .await?;
                        if done.rows_affected() == 0 {
                            return Ok(false);
                        }
                        sqlx::query(d::DELETE_OPS)
                            .bind(doc)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query(d::DELETE_SNAPSHOT)
                            .bind(doc)
                            .execute(&mut *tx)
                            .await?;
                        for statement in d::DELETE_HISTORY {
                            sqlx::query(statement).bind(doc).execute(&mut *tx).await?;
                        }
                        tx.commit().await?;
                        Ok(true)
                    })
                    .await
            }
        }
    };
}
pub(crate) use directory_impl;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_metacharacters_are_escaped() {
        assert_eq!(like_escape("a%b_c\\d"), "a\\%b\\_c\\\\d");
        assert_eq!(
            like_escape("'; DROP TABLE users; --"),
            "'; DROP TABLE users; --"
        );
    }
}
