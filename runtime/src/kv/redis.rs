//! The shared backend: every tenant's keys in one Redis server, so that
//! several host replicas can run on the same state.
//!
//! Layout, per tenant `T` and bucket `B` (lengths in bytes, decimal):
//!
//! ```text
//! mssp:kv:{<len T>:T}:version              INCR counter: the version of every write of T
//! mssp:kv:{<len T>:T}:buckets              hash  B -> namespace prefix N (tenant_keys, drop_tenant)
//! N = mssp:kv:{<len T>:T}:<len B>:B
//! N:values                                 hash  key -> value bytes
//! N:versions                               hash  key -> version (decimal)
//! N:keys                                   sorted set, every member score 0 (ZRANGEBYLEX: byte order)
//! ```
//!
//! Tenant and bucket are length-prefixed, so no tenant, bucket or key string can
//! name another tenant's Redis keys, whatever separators it holds; keys are hash
//! fields and set members, never part of a Redis key name. A tenant's Redis keys
//! share the prefix up to its first `}`, hence one hash slot.
//!
//! Every write runs in one Lua script (atomic in Redis: "Redis guarantees the
//! script's atomic execution", <https://redis.io/docs/latest/develop/programmability/eval-intro/>):
//! it takes the next value of the tenant's counter as the key's version and writes
//! value, version and index together. Versions therefore never repeat for a tenant,
//! even across a delete and re-create or a `drop_tenant` (the counter is kept), so a
//! compare-and-swap by version has no ABA.
//!
//! [`KvBackend`] is a synchronous trait; the Redis client is async. `RedisKv` runs
//! its connection on a small tokio runtime of its own and a call waits for the
//! answer on a channel, so a caller on any thread blocks for one round trip, as it
//! blocks on SQLite's file, and never holds anything the Redis I/O needs: no
//! deadlock, whatever runtime the caller is on. On a worker of a multi-threaded
//! runtime the wait is `block_in_place`, so the worker's other tasks (other
//! tenants' invocations) move to another thread meanwhile (BENCHMARKS.md, issue 18:
//! the 1,000-tenant idle sweep on Redis went from 1.41 s to 0.89 s with it).

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, IntoConnectionInfo as _, RedisError, Script};

use super::{Fence, KvBackend, KvError, LeaseBackend, Namespace, RegistryBackend};
use crate::SecretString;

/// Where and how to reach the Redis server. `Debug` shows the URL redacted.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[user[:password]@]host[:port][/db]`, or `rediss://…` for TLS.
    pub url: String,
    /// The password, when it is not in the URL (e.g. read from a file); it
    /// replaces one in the URL.
    pub password: Option<SecretString>,
    /// PEM certificates trusted for `rediss://` instead of the system's roots
    /// (a private CA).
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password)
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

impl RedisOptions {
    /// Options for a URL alone (password in it or none, system CA roots).
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password: None,
            ca_pem: None,
        }
    }
}

/// The URL with its password (if any) replaced by `***`: what logs, errors and
/// `doctor` may show.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        // `redis://secret@host`: redis-rs reads a lone userinfo as the password.
        None => "***".to_string(),
    };
    format!("{}{user}{}", &url[..scheme_end], &url[scheme_end + at..])
}

/// A key-value backend on a Redis server shared by every replica.
pub struct RedisKv {
    conn: ConnectionManager,
    /// The runtime the connection lives on; `None` only while dropping.
    io: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    /// The URL as [`redact_url`] shows it, for error messages.
    target: String,
    scripts: Scripts,
}

/// How long one command may wait for its answer before it fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl RedisKv {
    /// Connects (and checks the server answers `PING`).
    ///
    /// Errors: a malformed URL, an unreadable CA file's contents, a server that
    /// cannot be reached or refuses the credentials — each naming the redacted URL.
    pub fn connect(options: &RedisOptions) -> anyhow::Result<Self> {
        let target = redact_url(&options.url);
        let mut info = options
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| anyhow::anyhow!("store url {target}: {e}"))?;
        if let Some(password) = &options.password {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(settings);
        }
        let client = match &options.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| anyhow::anyhow!("store url {target}: {e}"))?;
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mssp-redis-io")
            .enable_all()
            .build()?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(4)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let handle = io.handle().clone();
        let connected = wait_on(&handle, async move {
            let mut conn = ConnectionManager::new_with_config(client, config).await?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        });
        let conn = match connected {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                io.shutdown_background();
                anyhow::bail!("Redis at {target} does not answer: {e}");
            }
            Err(e) => {
                io.shutdown_background();
                anyhow::bail!("Redis at {target}: {e}");
            }
        };
        Ok(Self {
            conn,
            io: Some(io),
            handle,
            target,
            scripts: Scripts::new(),
        })
    }

    /// Runs one Redis exchange on the connection's runtime and waits for it;
    /// sends it a second time when the first failed and `again` says so (the
    /// connection manager reconnects meanwhile).
    fn exchange<T, F>(
        &self,
        op: impl Fn(ConnectionManager) -> F,
        again: impl Fn(&RedisError) -> bool,
    ) -> Result<T, KvError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, RedisError>> + Send + 'static,
    {
        let answer = match wait_on(&self.handle, op(self.conn.clone())) {
            Ok(Err(e)) if again(&e) => wait_on(&self.handle, op(self.conn.clone())),
            first => first,
        };
        let failed =
            |e: &dyn std::fmt::Display| KvError::Backend(format!("Redis at {}: {e}", self.target));
        match answer {
            // A write made under a lease no longer held (`write_lua!`'s fence check).
            Ok(Err(e)) if e.code() == Some("FENCED") => Err(KvError::Fenced),
            Ok(answer) => answer.map_err(|e| failed(&e)),
            Err(e) => Err(failed(&e)),
        }
    }

    /// [`RedisKv::exchange`], again after a lost connection: for operations whose
    /// repetition changes nothing a caller can tell (reads, `set`, `delete`).
    fn run_again_if_lost<T, F>(&self, op: impl Fn(ConnectionManager) -> F) -> Result<T, KvError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, RedisError>> + Send + 'static,
    {
        self.exchange(op, |e| e.is_unrecoverable_error() || e.is_io_error())
    }

    /// [`RedisKv::exchange`], again only when the first try never reached the
    /// server (connection refused while reconnecting): for `swap` and
    /// `increment`, which must not apply twice.
    fn run_unless_sent<T, F>(&self, op: impl Fn(ConnectionManager) -> F) -> Result<T, KvError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, RedisError>> + Send + 'static,
    {
        self.exchange(op, RedisError::is_connection_refusal)
    }
}

impl Drop for RedisKv {
    fn drop(&mut self) {
        // A runtime may not be dropped (blocking) inside another's async context.
        if let Some(io) = self.io.take() {
            io.shutdown_background();
        }
    }
}

/// Spawns `fut` on `handle` and waits for its output on a plain channel, so the
/// calling thread may belong to any runtime (or none).
fn wait_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, &'static str> {
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        // The caller is waiting on `rx`; it cannot have gone away.
        let _ = tx.send(fut.await);
    });
    let wait = || {
        rx.recv()
            .map_err(|_| "the Redis connection's runtime stopped")
    };
    // On a worker of a multi-threaded runtime (the host's), hand the worker's
    // other tasks to another thread while this one waits, so other tenants'
    // invocations go on during the round trip. Not possible (and not needed) on
    // a current-thread runtime or outside any runtime.
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

/// Redis key names of one tenant and one namespace.
struct Names {
    counter: String,
    buckets: String,
    lease: String,
    prefix: String,
}

impl Names {
    fn tenant_prefix(tenant: &str) -> String {
        format!("mssp:kv:{{{}:{tenant}}}", tenant.len())
    }

    fn of(ns: &Namespace) -> Self {
        let t = Self::tenant_prefix(&ns.tenant);
        Self {
            counter: format!("{t}:version"),
            buckets: format!("{t}:buckets"),
            lease: format!("{t}:lease"),
            prefix: format!("{t}:{}:{}", ns.bucket.len(), ns.bucket),
        }
    }

    /// The tenant's lease (`<token>:<holder>`, expiring) and its token counter; in the
    /// tenant's hash slot, so a write script can check the lease atomically.
    fn lease_of(tenant: &str) -> (String, String) {
        let t = Self::tenant_prefix(tenant);
        (format!("{t}:lease"), format!("{t}:lease_seq"))
    }

    fn values(&self) -> String {
        format!("{}:values", self.prefix)
    }
    fn versions(&self) -> String {
        format!("{}:versions", self.prefix)
    }
    fn keys(&self) -> String {
        format!("{}:keys", self.prefix)
    }
}

/// The Lua every mutating script starts with. The fence check: a write made under a
/// lease (ARGV[5] = `<token>:<holder>`, `""` for none) is refused with `FENCED`, before
/// anything is written, unless the tenant's lease (KEYS[6]) is still exactly that one.
/// Then `write`: the tenant's next version, value, version, index entry and bucket
/// registration, all in one script.
/// KEYS: values, versions, keys, counter, buckets, lease. ARGV: key, value, bucket,
/// prefix, fence.
macro_rules! write_lua {
    () => {
        "if ARGV[5] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[5] then
           return redis.error_reply('FENCED the tenant lease is no longer held')
         end
         local function write(value)
           local version = redis.call('INCR', KEYS[4])
           redis.call('HSET', KEYS[1], ARGV[1], value)
           redis.call('HSET', KEYS[2], ARGV[1], version)
           redis.call('ZADD', KEYS[3], 0, ARGV[1])
           redis.call('HSET', KEYS[5], ARGV[3], ARGV[4])
           return version
         end
        "
    };
}

/// The scripts, loaded by hash on first use (redis-rs sends `EVALSHA`, then
/// `EVAL` when the server does not know the script, e.g. after a restart).
struct Scripts {
    set: Script,
    swap: Script,
    increment: Script,
    delete: Script,
    drop_tenant: Script,
    leases: LeaseScripts,
}

/// The lease scripts (one tenant's lease and token counter share its hash slot).
struct LeaseScripts {
    acquire: Script,
    renew: Script,
    release: Script,
    heartbeat: Script,
    /// KEYS: registry image, version. ARGV: image, expected version. Answers the new
    /// version, or 0 when the version moved.
    registry_store: Script,
}

impl LeaseScripts {
    fn new() -> Self {
        Self {
            // KEYS: lease, token counter. ARGV: holder, ttl ms. A token is taken from
            // the counter only when the lease is free, so tokens only grow.
            acquire: Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then return false end
                 local token = redis.call('INCR', KEYS[2])
                 redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
                 return token",
            ),
            // KEYS: lease. ARGV: the lease value held, ttl ms.
            renew: Script::new(
                "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
                 redis.call('PEXPIRE', KEYS[1], ARGV[2])
                 return 1",
            ),
            // KEYS: lease. ARGV: the lease value held.
            release: Script::new(
                "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
                 redis.call('DEL', KEYS[1])
                 return 1",
            ),
            // KEYS: the live replicas (sorted set, score = expiry in ms by the server's
            // clock, so replicas' clocks never matter). ARGV: replica, ttl ms.
            heartbeat: Script::new(
                "local t = redis.call('TIME')
                 local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                 redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
                 redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
                 return redis.call('ZRANGE', KEYS[1], 0, -1)",
            ),
            registry_store: Script::new(
                "local current = tonumber(redis.call('GET', KEYS[2]) or '0')
                 if current ~= tonumber(ARGV[2]) then return 0 end
                 redis.call('SET', KEYS[1], ARGV[1])
                 return redis.call('INCR', KEYS[2])",
            ),
        }
    }
}

/// The sorted set of live replicas.
const REPLICAS_KEY: &str = "mssp:replicas";
/// The application's registry image and its version (one hash slot).
const REGISTRY_IMAGE_KEY: &str = "mssp:{registry}:image";
const REGISTRY_VERSION_KEY: &str = "mssp:{registry}:version";

fn ttl_ms(ttl: Duration) -> Vec<u8> {
    ttl.as_millis().max(1).to_string().into_bytes()
}

impl Scripts {
    fn new() -> Self {
        Self {
            set: Script::new(concat!(write_lua!(), "return write(ARGV[2])")),
            // ARGV[6]: the expected version, "" for "absent".
            swap: Script::new(concat!(
                write_lua!(),
                "local current = redis.call('HGET', KEYS[2], ARGV[1]) or ''
                 if current ~= ARGV[6] then return 0 end
                 write(ARGV[2])
                 return 1"
            )),
            // Little-endian i64 arithmetic in two 32-bit halves: Lua numbers are
            // doubles, exact only to 2^53. ARGV[6]: the delta's low half (unsigned),
            // ARGV[7]: its high half (signed). Answers {0, low, high} on success,
            // {1} when the value is not 8 bytes, {2} on overflow.
            increment: Script::new(concat!(
                write_lua!(),
                "local current = redis.call('HGET', KEYS[1], ARGV[1])
                 local lo, hi = 0, 0
                 if current then
                   if #current ~= 8 then return {1} end
                   local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(current, 1, 8)
                   lo = b1 + b2 * 256 + b3 * 65536 + b4 * 16777216
                   hi = b5 + b6 * 256 + b7 * 65536 + b8 * 16777216
                   if hi >= 2147483648 then hi = hi - 4294967296 end
                 end
                 lo = lo + tonumber(ARGV[6])
                 local carry = 0
                 if lo >= 4294967296 then lo = lo - 4294967296; carry = 1 end
                 hi = hi + tonumber(ARGV[7]) + carry
                 if hi > 2147483647 or hi < -2147483648 then return {2} end
                 local uhi = hi
                 if uhi < 0 then uhi = uhi + 4294967296 end
                 local function le(n)
                   return string.char(n % 256, math.floor(n / 256) % 256,
                     math.floor(n / 65536) % 256, math.floor(n / 16777216) % 256)
                 end
                 write(le(lo) .. le(uhi))
                 return {0, lo, hi}"
            )),
            // KEYS: values, versions, keys, lease. ARGV: key, fence (as `write_lua!`).
            delete: Script::new(
                "if ARGV[2] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[2] then
                   return redis.error_reply('FENCED the tenant lease is no longer held')
                 end
                 redis.call('HDEL', KEYS[1], ARGV[1])
                 redis.call('HDEL', KEYS[2], ARGV[1])
                 redis.call('ZREM', KEYS[3], ARGV[1])
                 return 0",
            ),
            // KEYS: the tenant's buckets hash. The namespaces' keys are named by
            // the hash's values; all share the tenant's hash slot. The version
            // counter stays, so versions never repeat for this tenant.
            drop_tenant: Script::new(
                "for _, prefix in ipairs(redis.call('HVALS', KEYS[1])) do
                   redis.call('DEL', prefix .. ':values', prefix .. ':versions', prefix .. ':keys')
                 end
                 redis.call('DEL', KEYS[1])
                 return 0",
            ),
            leases: LeaseScripts::new(),
        }
    }
}

/// One script call with owned keys and arguments, so it can move to the
/// connection's runtime and be sent again after a reconnect.
#[derive(Clone)]
struct Call {
    script: Script,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl Call {
    /// A write script's call: the six keys and five arguments of `write_lua!`,
    /// then `extra` arguments.
    fn write(script: &Script, ns: &Namespace, key: &str, value: &[u8], extra: &[&[u8]]) -> Self {
        let names = Names::of(ns);
        let mut args = vec![
            key.as_bytes().to_vec(),
            value.to_vec(),
            ns.bucket.as_bytes().to_vec(),
            names.prefix.as_bytes().to_vec(),
            fence_arg(ns),
        ];
        args.extend(extra.iter().map(|a| a.to_vec()));
        Self {
            script: script.clone(),
            keys: vec![
                names.values(),
                names.versions(),
                names.keys(),
                names.counter,
                names.buckets,
                names.lease,
            ],
            args,
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        self,
        mut conn: ConnectionManager,
    ) -> Result<T, RedisError> {
        let mut call = self.script.prepare_invoke();
        for key in &self.keys {
            call.key(key);
        }
        for arg in &self.args {
            call.arg(arg.as_slice());
        }
        call.invoke_async(&mut conn).await
    }
}

/// The fence argument of a write script: the lease value it was made under, or `""`.
fn fence_arg(ns: &Namespace) -> Vec<u8> {
    ns.fence
        .as_ref()
        .map(|f| f.value().into_bytes())
        .unwrap_or_default()
}

fn parse_version(text: &str) -> Result<u64, RedisError> {
    text.parse().map_err(|_| {
        RedisError::from((
            redis::ErrorKind::Parse,
            "a stored version is not a number",
            text.to_string(),
        ))
    })
}

impl KvBackend for RedisKv {
    fn get(&self, ns: &Namespace, key: &str) -> Result<Option<(Vec<u8>, u64)>, KvError> {
        let names = Names::of(ns);
        let (values, versions) = (names.values(), names.versions());
        let key = key.to_string();
        self.run_again_if_lost(|mut c| {
            let (values, versions, key) = (values.clone(), versions.clone(), key.clone());
            async move {
                // MULTI/EXEC: value and version from the same moment.
                let (value, version): (Option<Vec<u8>>, Option<String>) = redis::pipe()
                    .atomic()
                    .hget(&values, &key)
                    .hget(&versions, &key)
                    .query_async(&mut c)
                    .await?;
                match (value, version) {
                    (Some(value), Some(version)) => Ok(Some((value, parse_version(&version)?))),
                    _ => Ok(None),
                }
            }
        })
    }

    fn set(&self, ns: &Namespace, key: &str, value: &[u8]) -> Result<(), KvError> {
        let call = Call::write(&self.scripts.set, ns, key, value, &[]);
        self.run_again_if_lost(|c| call.clone().invoke::<u64>(c))
            .map(drop)
    }

    fn delete(&self, ns: &Namespace, key: &str) -> Result<(), KvError> {
        let names = Names::of(ns);
        let call = Call {
            script: self.scripts.delete.clone(),
            keys: vec![names.values(), names.versions(), names.keys(), names.lease],
            args: vec![key.as_bytes().to_vec(), fence_arg(ns)],
        };
        self.run_again_if_lost(|c| call.clone().invoke::<i64>(c))
            .map(drop)
    }

    fn list_keys(
        &self,
        ns: &Namespace,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, KvError> {
        let index = Names::of(ns).keys();
        // ZRANGEBYLEX compares members byte by byte (memcmp), as SQLite's BINARY
        // collation compares UTF-8 text: https://redis.io/docs/latest/commands/zrangebylex/
        let start: Vec<u8> = match after {
            Some(after) => [b"(".as_slice(), after.as_bytes()].concat(),
            None => b"-".to_vec(),
        };
        let limit = isize::try_from(limit).unwrap_or(isize::MAX);
        self.run_again_if_lost(|mut c| {
            let (index, start) = (index.clone(), start.clone());
            async move {
                c.zrangebylex_limit(&index, start.as_slice(), "+", 0, limit)
                    .await
            }
        })
    }

    fn increment(&self, ns: &Namespace, key: &str, delta: i64) -> Result<i64, KvError> {
        let low = (delta as u64 & 0xffff_ffff).to_string();
        let high = (delta >> 32).to_string();
        let call = Call::write(
            &self.scripts.increment,
            ns,
            key,
            b"",
            &[low.as_bytes(), high.as_bytes()],
        );
        let answer: Vec<i64> = self.run_unless_sent(|c| call.clone().invoke(c))?;
        match answer.as_slice() {
            [0, low, high] => Ok((high << 32) | low),
            [1] => Err(KvError::Invalid(format!(
                "increment: the value at {key:?} is not a 64-bit integer"
            ))),
            [2] => Err(KvError::Invalid(format!(
                "increment: {key:?} would overflow"
            ))),
            other => Err(KvError::Backend(format!(
                "Redis at {}: unexpected increment answer {other:?}",
                self.target
            ))),
        }
    }

    fn swap(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        let expected = expected.map(|v| v.to_string()).unwrap_or_default();
        let call = Call::write(&self.scripts.swap, ns, key, value, &[expected.as_bytes()]);
        let wrote: i64 = self.run_unless_sent(|c| call.clone().invoke(c))?;
        Ok(wrote == 1)
    }

    fn tenant_keys(&self, tenant: &str) -> Result<Vec<(String, String)>, KvError> {
        let buckets = format!("{}:buckets", Names::tenant_prefix(tenant));
        let mut namespaces: Vec<(String, String)> = self.run_again_if_lost(|mut c| {
            let buckets = buckets.clone();
            async move { c.hgetall(&buckets).await }
        })?;
        namespaces.sort();
        let mut out = Vec::new();
        for (bucket, prefix) in namespaces {
            let index = format!("{prefix}:keys");
            let keys: Vec<String> = self.run_again_if_lost(|mut c| {
                let index = index.clone();
                async move { c.zrangebylex(&index, "-", "+").await }
            })?;
            out.extend(keys.into_iter().map(|k| (bucket.clone(), k)));
        }
        Ok(out)
    }

    fn drop_tenant(&self, tenant: &str) -> Result<(), KvError> {
        let call = Call {
            script: self.scripts.drop_tenant.clone(),
            keys: vec![format!("{}:buckets", Names::tenant_prefix(tenant))],
            args: Vec::new(),
        };
        self.run_again_if_lost(|c| call.clone().invoke::<i64>(c))
            .map(drop)
    }

    fn leases(&self) -> Option<&dyn LeaseBackend> {
        Some(self)
    }

    fn registry(&self) -> Option<&dyn RegistryBackend> {
        Some(self)
    }
}

impl RedisKv {
    /// Runs a lease script once (a lease operation is never sent twice: a lost answer is
    /// an error, and the caller's next round decides again).
    fn lease_call<T: redis::FromRedisValue + Send + 'static>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
    ) -> Result<T, KvError> {
        let call = Call {
            script: script.clone(),
            keys,
            args,
        };
        self.run_unless_sent(|c| call.clone().invoke(c))
    }
}

impl LeaseBackend for RedisKv {
    fn acquire(&self, tenant: &str, holder: &str, ttl: Duration) -> Result<Option<Fence>, KvError> {
        let (lease, seq) = Names::lease_of(tenant);
        let token: Option<u64> = self.lease_call(
            &self.scripts.leases.acquire,
            vec![lease, seq],
            vec![holder.as_bytes().to_vec(), ttl_ms(ttl)],
        )?;
        Ok(token.map(|token| Fence {
            token,
            holder: holder.into(),
        }))
    }

    fn renew(&self, tenant: &str, fence: &Fence, ttl: Duration) -> Result<bool, KvError> {
        let (lease, _) = Names::lease_of(tenant);
        let kept: i64 = self.lease_call(
            &self.scripts.leases.renew,
            vec![lease],
            vec![fence.value().into_bytes(), ttl_ms(ttl)],
        )?;
        Ok(kept == 1)
    }

    fn release(&self, tenant: &str, fence: &Fence) -> Result<bool, KvError> {
        let (lease, _) = Names::lease_of(tenant);
        let released: i64 = self.lease_call(
            &self.scripts.leases.release,
            vec![lease],
            vec![fence.value().into_bytes()],
        )?;
        Ok(released == 1)
    }

    fn holder(&self, tenant: &str) -> Result<Option<Fence>, KvError> {
        let (lease, _) = Names::lease_of(tenant);
        let value: Option<String> = self.run_again_if_lost(|mut c| {
            let lease = lease.clone();
            async move { c.get(&lease).await }
        })?;
        Ok(value.as_deref().and_then(Fence::parse))
    }

    fn heartbeat(&self, replica: &str, ttl: Duration) -> Result<Vec<String>, KvError> {
        let mut live: Vec<String> = self.lease_call(
            &self.scripts.leases.heartbeat,
            vec![REPLICAS_KEY.to_string()],
            vec![replica.as_bytes().to_vec(), ttl_ms(ttl)],
        )?;
        live.sort();
        Ok(live)
    }

    fn leave(&self, replica: &str) -> Result<(), KvError> {
        let replica = replica.to_string();
        self.run_again_if_lost(|mut c| {
            let replica = replica.clone();
            async move { c.zrem::<_, _, i64>(REPLICAS_KEY, &replica).await }
        })
        .map(drop)
    }
}

impl RegistryBackend for RedisKv {
    fn load(&self) -> Result<Option<(Vec<u8>, u64)>, KvError> {
        let (image, version): (Option<Vec<u8>>, Option<u64>) =
            self.run_again_if_lost(|mut c| async move {
                // MULTI/EXEC: the image and its version from the same moment.
                redis::pipe()
                    .atomic()
                    .get(REGISTRY_IMAGE_KEY)
                    .get(REGISTRY_VERSION_KEY)
                    .query_async(&mut c)
                    .await
            })?;
        Ok(image.zip(version))
    }

    fn version(&self) -> Result<u64, KvError> {
        let version: Option<u64> =
            self.run_again_if_lost(|mut c| async move { c.get(REGISTRY_VERSION_KEY).await })?;
        Ok(version.unwrap_or(0))
    }

    fn store(&self, image: &[u8], expected: u64) -> Result<Option<u64>, KvError> {
        let written: u64 = self.lease_call(
            &self.scripts.leases.registry_store,
            vec![
                REGISTRY_IMAGE_KEY.to_string(),
                REGISTRY_VERSION_KEY.to_string(),
            ],
            vec![image.to_vec(), expected.to_string().into_bytes()],
        )?;
        Ok((written != 0).then_some(written))
    }
}
