//! The connection to the fleet's Redis: one multiplexed connection per process, shared by every
//! session store and the shared introspection answers, found either at a fixed address or
//! through Redis Sentinel (which names the current primary, and a new one after a failover).
//!
//! Every operation is bounded by `[store] timeout` and counted by `op` when it fails. A direct
//! connection reconnects by itself (short, capped back-off). Through Sentinel a failed or
//! refused operation (the old primary gone, or demoted and answering `READONLY`) drops the
//! connection, and the next operation asks the sentinels for the primary again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, ErrorKind, RedisError};
use tokio::sync::Mutex;

use crate::config::{RedisConfig, RedisTarget};
use crate::metrics::Metrics;
use crate::net::redact_error;

use super::version;

/// Why the store could not be used. Its text never holds a password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

/// How the process reaches Redis.
enum Target {
    Direct(Client),
    Sentinel(Mutex<SentinelClient>),
}

/// A lazily connected, shared Redis connection (cheap to clone).
#[derive(Clone)]
pub struct RedisHandle {
    target: Arc<Target>,
    /// The current connection; `None` until the first use, and after a Sentinel failure.
    conn: Arc<Mutex<Option<ConnectionManager>>>,
    timeout: Duration,
    metrics: Metrics,
    /// The address for logs and errors, password redacted.
    shown: Arc<str>,
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RedisHandle").field(&self.shown).finish()
    }
}

impl RedisHandle {
    pub fn new(cfg: &RedisConfig, metrics: Metrics) -> Result<Self, StoreError> {
        let target = match &cfg.target {
            RedisTarget::Url(url) => Target::Direct(
                Client::open(url.expose())
                    .map_err(|e| StoreError::Unavailable(redact_error(&e)))?,
            ),
            RedisTarget::Sentinel {
                sentinels,
                master,
                node,
            } => {
                let info = SentinelNodeConnectionInfo {
                    tls_mode: node.tls.then_some(redis::TlsMode::Secure),
                    redis_connection_info: Some(redis::RedisConnectionInfo {
                        db: node.db,
                        username: node.username.clone(),
                        password: node.password.as_ref().map(|p| p.expose().to_owned()),
                        ..Default::default()
                    }),
                };
                let addrs: Vec<String> = sentinels.iter().map(|s| format!("redis://{s}")).collect();
                Target::Sentinel(Mutex::new(
                    SentinelClient::build(
                        addrs,
                        master.clone(),
                        Some(info),
                        SentinelServerType::Master,
                    )
                    .map_err(|e| StoreError::Unavailable(redact_error(&e)))?,
                ))
            }
        };
        Ok(RedisHandle {
            target: Arc::new(target),
            conn: Arc::new(Mutex::new(None)),
            timeout: cfg.timeout,
            metrics,
            shown: cfg.target.redacted().into(),
        })
    }

    /// The Redis address for logs, with any password replaced by `***`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A client for the current primary.
    async fn client(&self) -> Result<Client, StoreError> {
        match &*self.target {
            Target::Direct(c) => Ok(c.clone()),
            Target::Sentinel(s) => {
                let mut s = s.lock().await;
                tokio::time::timeout(self.timeout * 4, s.async_get_client())
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable("no sentinel answered in time".to_owned())
                    })?
                    .map_err(|e| StoreError::Unavailable(redact_error(&e)))
            }
        }
    }

    /// A new connection to the current primary, with `response_timeout` (longer for a
    /// connection that blocks in `BLPOP`).
    pub async fn connect(
        &self,
        response_timeout: Duration,
    ) -> Result<ConnectionManager, StoreError> {
        let client = self.client().await?;
        // Reconnect quickly once Redis is back: short, capped back-off.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(response_timeout)
            .set_factor(50)
            .set_max_delay(500)
            .set_number_of_retries(6);
        let mut conn = tokio::time::timeout(
            self.timeout * 4,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| StoreError::Unavailable("connect timed out".to_owned()))?
        .map_err(|e| StoreError::Unavailable(redact_error(&e)))?;
        self.check_version(&mut conn).await?;
        Ok(conn)
    }

    /// Refuses a server older than [`version::OLDEST`], once per connection (a failover's new
    /// primary is checked too). A server that will not answer `INFO` is not refused for it:
    /// some managed services restrict it.
    async fn check_version(&self, conn: &mut ConnectionManager) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        match tokio::time::timeout(self.timeout, cmd.query_async::<String>(conn)).await {
            Ok(Ok(info)) => version::check(&info).map_err(|e| {
                tracing::error!(redis = %self.shown, "{e}");
                StoreError::Unavailable(e)
            }),
            Ok(Err(e)) => {
                tracing::debug!(redis = %self.shown, error = %redact_error(&e), "INFO refused; the Redis version is not checked");
                Ok(())
            }
            Err(_) => Err(StoreError::Unavailable("INFO timed out".to_owned())),
        }
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = self.connect(self.timeout).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// After a failure through Sentinel the primary may have moved: ask again next time.
    async fn forget(&self, e: &StoreError, broken: bool) {
        if broken && matches!(&*self.target, Target::Sentinel(_)) {
            tracing::debug!(error = %e, "dropping the Redis connection; the primary is looked up again");
            *self.conn.lock().await = None;
        }
    }

    /// Runs one store operation with the timeout, counting failures by `op`.
    pub async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let result = match self.conn().await {
            Ok(conn) => match tokio::time::timeout(self.timeout, f(conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    let broken = is_broken(&e);
                    let err = StoreError::Unavailable(redact_error(&e));
                    self.forget(&err, broken).await;
                    Err(err)
                }
                Err(_) => {
                    let err = StoreError::Unavailable(format!("{op} timed out"));
                    self.forget(&err, true).await;
                    Err(err)
                }
            },
            Err(e) => Err(e),
        };
        self.metrics
            .store_operation(op, started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics.store_error(op);
            tracing::warn!(op, redis = %self.shown, error = %e, "session store operation failed");
        }
        result
    }
}

/// A connection that may be to the wrong (or a dead) server: the primary moved or went away.
fn is_broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.kind(), ErrorKind::ReadOnly | ErrorKind::MasterDown)
        || e.code() == Some("READONLY")
}
