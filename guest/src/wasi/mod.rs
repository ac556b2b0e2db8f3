//! The WASI shell: the `ports` traits over wasi:http, wasi:keyvalue, wasi:config,
//! wasi:clocks and wasi:random, and the two exports. Compiled for wasm32 only.

mod http;
mod incoming;

use mssp_contract::access::Access;

use crate::config::{Config, ConfigError};
use crate::ports::{Clock, Kv, KvError, Ports};

wit_bindgen::generate!({ path: "../wit", world: "mssp:bridge/bridge", generate_all });

use wasi::clocks::{monotonic_clock, wall_clock};
use wasi::keyvalue::{atomics, store};

struct Component;

export!(Component);

impl Guest for Component {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        let cfg = read_config().map_err(|e| Error::Other(e.to_string()))?;
        let mut shell = Shell::open(&cfg).map_err(|e| Error::Other(e.to_string()))?;
        let mut ports = shell.ports();
        let report = crate::pipeline::run_tick(&mut ports, &cfg);
        log_report(&report);
        if report.outcome == "failed" {
            return Err(Error::Other(
                report.detail.unwrap_or_else(|| "tick failed".into()),
            ));
        }
        Ok(())
    }
}

/// One line per invocation that did upstream work (a tick, by cron or by the
/// tick route; a closing callback), for the host's log and counters. The
/// report never holds a secret.
fn log_report(report: &crate::report::TickReport) {
    eprintln!(
        "mssp-bridge tick: {}",
        serde_json::to_string(report).unwrap_or_default()
    );
}

/// Every config key at once (one host call), validated. A host without `get-all`
/// support is asked key by key; a key that cannot be read is reported as such.
fn read_config() -> Result<Config, ConfigError> {
    config_from(config_get_all())
}

/// The configuration and who may use the read routes, from the same one `get-all`
/// (the read access holds even when the configuration is refused).
fn read_config_and_access() -> (Result<Config, ConfigError>, Access) {
    let all = config_get_all();
    let access = match &all {
        Ok(pairs) => Access::from_config(&|k| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        }),
        Err(_) => Access::from_config(&|k| wasi::config::store::get(k).ok().flatten()),
    };
    (config_from(all), access)
}

fn describe(e: wasi::config::store::Error) -> String {
    use wasi::config::store::Error;
    match e {
        Error::Upstream(m) => format!("config source: {m}"),
        Error::Io(m) => format!("config I/O: {m}"),
    }
}

fn config_get_all() -> Result<Vec<(String, String)>, String> {
    wasi::config::store::get_all().map_err(describe)
}

fn config_from(all: Result<Vec<(String, String)>, String>) -> Result<Config, ConfigError> {
    Config::from_all_or_each(all, &|k| wasi::config::store::get(k).map_err(describe))
}

/// The live capabilities of one invocation.
struct Shell {
    http: http::WasiHttp,
    kv: WasiKv,
    clock: WasiClock,
}

impl Shell {
    fn open(cfg: &Config) -> Result<Shell, KvError> {
        Ok(Shell {
            http: http::WasiHttp::new(cfg.http_timeout_ms),
            kv: WasiKv::open()?,
            clock: WasiClock,
        })
    }

    /// Without a valid config there is no timeout to use; routes that need no upstream
    /// still work.
    fn open_default() -> Result<Shell, KvError> {
        Ok(Shell {
            http: http::WasiHttp::new(10_000),
            kv: WasiKv::open()?,
            clock: WasiClock,
        })
    }

    fn ports(&mut self) -> Ports<'_> {
        Ports {
            http: &mut self.http,
            kv: &mut self.kv,
            clock: &mut self.clock,
        }
    }
}

fn kv_error(e: store::Error) -> KvError {
    KvError(match e {
        store::Error::NoSuchStore => "no such store".into(),
        store::Error::AccessDenied => "access denied".into(),
        store::Error::Other(m) => m,
    })
}

struct WasiKv {
    bucket: store::Bucket,
}

impl WasiKv {
    fn open() -> Result<WasiKv, KvError> {
        store::open(mssp_contract::report::BUCKET)
            .map(|bucket| WasiKv { bucket })
            .map_err(|e| KvError(format!("opening bucket \"default\": {}", kv_error(e).0)))
    }
}

impl Kv for WasiKv {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.bucket.get(key).map_err(kv_error)
    }

    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.bucket.set(key, value).map_err(kv_error)
    }

    fn delete(&mut self, key: &str) -> Result<(), KvError> {
        self.bucket.delete(key).map_err(kv_error)
    }

    fn list_keys(&mut self, prefix: &str) -> Result<Vec<String>, KvError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.bucket.list_keys(cursor.as_deref()).map_err(kv_error)?;
            out.extend(page.keys.into_iter().filter(|k| k.starts_with(prefix)));
            match page.cursor {
                Some(c) if Some(&c) != cursor.as_ref() => cursor = Some(c),
                _ => return Ok(out),
            }
        }
    }

    fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, KvError> {
        let cas = atomics::Cas::new(&self.bucket, key).map_err(kv_error)?;
        if cas.current().map_err(kv_error)?.as_deref() != expected {
            return Ok(false);
        }
        match atomics::swap(cas, new) {
            Ok(()) => Ok(true),
            Err(atomics::CasError::CasFailed(_)) => Ok(false),
            Err(atomics::CasError::StoreError(e)) => Err(kv_error(e)),
        }
    }
}

struct WasiClock;

impl Clock for WasiClock {
    fn now_ms(&self) -> i64 {
        let t = wall_clock::now();
        (t.seconds as i64) * 1000 + i64::from(t.nanoseconds / 1_000_000)
    }

    fn monotonic_ms(&self) -> u64 {
        monotonic_clock::now() / 1_000_000
    }

    fn monotonic_ns(&self) -> u64 {
        monotonic_clock::now()
    }

    fn sleep_ms(&mut self, ms: u64) {
        monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)).block();
    }

    fn random_u64(&mut self) -> u64 {
        wasi::random::random::get_random_u64()
    }
}
