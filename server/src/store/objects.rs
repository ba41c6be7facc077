//! Snapshots in an S3-compatible bucket (`OBJECT_STORE_URL`), through `object_store` (the
//! Apache Arrow project's crate: S3, MinIO and other S3 APIs, with retries, timeouts and
//! request signing done once and well).
//!
//! The database stays the source of truth for what a room is: ops are committed there (acks
//! never wait for the bucket), and the `snapshots` row names the object holding the snapshot
//! (`object_key`, migration 0005) instead of holding the bytes. A compaction writes the object
//! first and the row after, so a row never names an object that was not written; the object
//! it replaces is deleted after the row moved on (if that delete fails, the object is left
//! behind, unreferenced: harmless, and listed under `rooms/` for a bucket lifecycle rule).
//! A bucket that cannot be reached delays compaction and fails loads of rooms whose snapshot
//! is there (`unavailable`, never a wrong or empty document) until it answers again.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig};

use crate::error::{Result, ServerError};
use crate::secret::Secret;

/// Where snapshots go (`OBJECT_STORE_*`).
#[derive(Debug, Clone)]
pub struct ObjectSettings {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// An S3-compatible endpoint (MinIO, moto, ...); AWS when unset.
    pub endpoint: Option<String>,
    /// The bucket's region.
    pub region: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key: Option<Secret>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_key: Option<Secret>,
    /// Bound on one request (connect and response); one retry after it.
    pub timeout: Duration,
}

/// The bucket and the prefix of every key.
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    timeout: Duration,
    describe: String,
}

/// Splits `s3://bucket/prefix` into the bucket and a prefix ending in `/` (or empty).
pub fn parse_url(url: &str) -> std::result::Result<(String, String), &'static str> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or("expected s3://bucket or s3://bucket/prefix")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid_bucket {
        return Err("the bucket name is 3-63 characters of a-z 0-9 - .");
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|s| s == "." || s == "..")
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
    {
        return Err("the prefix is path segments of A-Z a-z 0-9 - _ .");
    }
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_owned(), prefix))
}

/// The key of a room's snapshot at `op_seq`: unique per write (`nonce`), so a compaction
/// that lost a race never overwrites the object the winning row names. Room ids are
/// `A-Z a-z 0-9 _ - .`; the `r-` keeps `.` and `..` from being path segments.
pub fn snapshot_key(prefix: &str, room: &str, op_seq: u64, nonce: u64) -> String {
    format!("{prefix}rooms/r-{room}/snapshot-{op_seq:012}-{nonce:016x}.v2")
}

impl Objects {
    /// Opens the bucket (no request yet: see [`Objects::ping`]).
    pub fn open(s: &ObjectSettings) -> Result<Objects> {
        let bad = |reason: String| ServerError::Config {
            name: "OBJECT_STORE_URL",
            value: s.url.clone(),
            reason,
        };
        let (bucket, prefix) = parse_url(&s.url).map_err(|r| bad(r.to_owned()))?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(&s.region)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(s.timeout)
                    .with_connect_timeout(s.timeout),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_millis(500),
                    base: 2.0,
                },
                max_retries: 1,
                retry_timeout: s.timeout * 2,
            });
        if let Some(endpoint) = &s.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(k) = &s.access_key {
            builder = builder.with_access_key_id(k.expose());
        }
        if let Some(k) = &s.secret_key {
            builder = builder.with_secret_access_key(k.expose());
        }
        let store = builder
            .build()
            .map_err(|e| bad(format!("cannot configure the bucket: {}", safe(&e))))?;
        Ok(Objects {
            store: Arc::new(store),
            describe: format!(
                "s3://{bucket}/{prefix}{}",
                s.endpoint
                    .as_deref()
                    .map(|e| format!(" at {}", crate::secret::redact_url(e)))
                    .unwrap_or_default()
            ),
            prefix,
            timeout: s.timeout,
        })
    }

    /// For the startup log.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// The key of a new snapshot object.
    pub fn new_snapshot_key(&self, room: &str, op_seq: u64) -> String {
        snapshot_key(&self.prefix, room, op_seq, rand::random())
    }

    /// Each call, retries included, within twice the timeout and a margin.
    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout * 3, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(object_store::Error::NotFound { .. })) => Err(ServerError::Objects {
                what,
                reason: "not found".to_owned(),
            }),
            Ok(Err(e)) => Err(ServerError::Objects {
                what,
                reason: safe(&e),
            }),
            Err(_) => Err(ServerError::Objects {
                what,
                reason: "timed out".to_owned(),
            }),
        }
    }

    /// Writes an object.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let path = Path::from(key);
        self.bounded("put", self.store.put(&path, PutPayload::from(bytes)))
            .await
            .map(|_| ())
    }

    /// Reads an object.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = Path::from(key);
        self.bounded("get", async {
            let got = self.store.get(&path).await?;
            got.bytes().await
        })
        .await
        .map(|b| b.to_vec())
    }

    /// Deletes an object; failures are logged, not returned (an object left behind is
    /// unreferenced and harmless).
    pub async fn delete(&self, key: &str) {
        let path = Path::from(key);
        if let Err(e) = self.bounded("delete", self.store.delete(&path)).await {
            tracing::warn!(key, error = %e, "object store: delete failed; the object is left behind");
        }
    }

    /// Whether the bucket answers: a HEAD of a key that need not exist (not found is fine).
    pub async fn ping(&self) -> Result<()> {
        // A listing, not a HEAD of some key: S3 answers a HEAD in a missing bucket with the
        // same bare 404 as a missing key, so a deleted or misspelled bucket looked ready while
        // every compaction failed. Listing a missing bucket is an error; an empty one is not.
        let prefix = Path::from(format!("{}concord-ping", self.prefix));
        self.bounded("ping", self.store.list_with_delimiter(Some(&prefix)))
            .await
            .map(|_| ())
    }
}

/// The snapshot a row describes: its inline bytes, or the object it names, read from the
/// bucket. A row naming an object while no bucket is configured is an error, not an empty
/// room.
pub(crate) async fn resolve(
    objects: Option<&Arc<Objects>>,
    inline: Option<Vec<u8>>,
    key: Option<String>,
) -> Result<Option<Vec<u8>>> {
    match (key, objects) {
        (None, _) => Ok(inline),
        (Some(key), Some(objects)) => objects.get(&key).await.map(Some),
        (Some(_), None) => Err(ServerError::Objects {
            what: "get",
            reason: "a snapshot is in object storage but OBJECT_STORE_URL is not set".to_owned(),
        }),
    }
}

/// Whether `e` says an object was not there (replaced by a concurrent compaction: read the
/// row again).
pub(crate) fn is_not_found(e: &ServerError) -> bool {
    matches!(e, ServerError::Objects { reason, .. } if reason == "not found")
}

/// The error's text with anything that looks like a credential removed (object_store errors
/// name URLs and S3 error codes, not keys, but a signed URL's query could carry one).
fn safe(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let text = match text.find("X-Amz-") {
        Some(i) => format!("{}…", &text[..i]),
        None => text,
    };
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        assert_eq!(
            parse_url("s3://concord").unwrap(),
            ("concord".into(), "".into())
        );
        assert_eq!(
            parse_url("s3://my-bucket.eu/prod/concord/").unwrap(),
            ("my-bucket.eu".into(), "prod/concord/".into())
        );
        for bad in [
            "http://bucket",
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://bucket/../x",
            "s3://bucket/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_keep_rooms_apart_and_dots_out_of_segments() {
        let k = snapshot_key("p/", "..", 42, 0xab);
        assert_eq!(k, "p/rooms/r-../snapshot-000000000042-00000000000000ab.v2");
        assert!(Path::parse(&k).is_ok(), "{k}");
        assert_ne!(snapshot_key("", "a", 1, 1), snapshot_key("", "a", 1, 2));
    }
}
