//! Password hashing: argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes), run on
//! blocking threads, a few at a time.
//!
//! Each hash costs tens of milliseconds of CPU and 19 MiB of memory, so hashing is bounded
//! twice: at most `threads` run at once, and at most `QUEUE` more wait; beyond that a login is
//! answered 503 at once instead of queueing without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use tokio::sync::Semaphore;

/// Hashes waiting for a thread, at most.
const QUEUE: usize = 64;

/// Longest password accepted (checked before hashing).
pub const MAX_PASSWORD_BYTES: usize = 256;

/// The hashing pool was full or its thread failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Bounded argon2id hashing.
#[derive(Clone)]
pub struct Hasher {
    running: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl Hasher {
    /// At most `threads` hashes at once.
    pub fn new(threads: usize) -> Hasher {
        Hasher {
            running: Arc::new(Semaphore::new(threads.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy);
        }
        let permit = self.running.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let permit = permit.map_err(|_| Busy)?;
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|_| Busy)?;
        Ok(out)
    }

    /// The PHC string of a new hash of `password` with a random salt.
    pub async fn hash(&self, password: String) -> Result<String, Busy> {
        self.run(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|_| Busy)
        })
        .await?
    }

    /// Whether `password` matches the stored PHC string. With no stored hash (an unknown
    /// user) a dummy hash is checked, so the answer takes as long either way.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, Busy> {
        self.run(move || {
            let known = stored.is_some();
            let stored = stored.unwrap_or_else(|| DUMMY.to_owned());
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return false;
            };
            let ok = Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            ok && known
        })
        .await
    }
}

/// An argon2id hash of a random string, verified against when the user does not exist.
const DUMMY: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$8lJ1zVdZx0P9Yr2vJ1b0m3iT2Jg1aXfLq0oQ3bq2u9I";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let h = Hasher::new(1);
        let stored = h.hash("correct horse".into()).await.unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(h
            .verify("correct horse".into(), Some(stored.clone()))
            .await
            .unwrap());
        assert!(!h.verify("wrong horse".into(), Some(stored)).await.unwrap());
        assert!(!h.verify("anything".into(), None).await.unwrap());
    }
}
