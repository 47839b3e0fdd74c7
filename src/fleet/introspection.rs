//! Positive introspection answers shared by every replica of a fleet
//! (`[store] share_introspection = true`): one replica's RFC 7662 call serves the others until
//! the answer's own expiry. The fleet implements auth's [`SharedAnswers`]: auth knows nothing of
//! Redis.

use std::time::Duration;

use async_trait::async_trait;

use super::RedisHandle;
use crate::auth::introspect::SharedAnswers;

/// The shared answers in the fleet's Redis, under `{key_prefix}`.
pub struct SharedIntrospection {
    redis: RedisHandle,
    prefix: String,
}

impl SharedIntrospection {
    pub fn new(redis: RedisHandle, key_prefix: &str) -> Self {
        SharedIntrospection {
            redis,
            prefix: key_prefix.to_owned(),
        }
    }
}

#[async_trait]
impl SharedAnswers for SharedIntrospection {
    async fn get(&self, key: &str) -> Option<String> {
        let key = format!("{}{key}", self.prefix);
        self.redis
            .run("introspection_get", |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await
            .ok()
            .flatten()
    }

    async fn put(&self, key: &str, members: String, ttl: Duration) {
        let key = format!("{}{key}", self.prefix);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .redis
            .run("introspection_put", |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&members)
                    .arg("PX")
                    .arg(ms)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
    }
}
