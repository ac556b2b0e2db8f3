//! `mssp-bridge backfill`: replays a window of Secure Endpoint history
//! through the tenant's normal, exactly-once pipeline.
//!
//! Guest contract: `POST /v1/backfill` (`Authorization: Bearer <tick_token>`,
//! body `{"since": <unix seconds>}`) answers 202 `{"accepted": true}`; each
//! following tick processes the window oldest first through the normal
//! dedup; `GET /v1/status` reports
//! `"backfill": {"since", "done", "events_seen", "incidents_opened"}`.
//! The host posts the request, then runs ticks until the guest reports done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::guest_api;
use mssp_runtime::{InvokeError, Runtime, Tenant};

/// Ticks that may fail in a row before the backfill gives up.
const MAX_FAILED_TICKS: u32 = 3;

/// Start of the window: `7d`, `12h`, `30m`, `90s`, or a UTC time
/// `2026-11-21T00:00:00Z`. Returns Unix seconds.
pub fn parse_since(text: &str, now: i64) -> anyhow::Result<i64> {
    let t = text.trim();
    if let Some(at) = crate::status_page::parse_iso(t).filter(|_| t.len() >= 19) {
        if at >= now {
            bail!("--since {t} is not in the past");
        }
        return Ok(at);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: i64 = digits.parse().map_err(|_| {
        anyhow!("--since {t:?}: expected e.g. 7d, 12h, 30m or 2026-11-21T00:00:00Z")
    })?;
    let unit_secs = match unit {
        "d" => 86_400,
        "h" => 3600,
        "m" => 60,
        "s" | "" => 1,
        _ => bail!("--since {t:?}: unit must be d, h, m or s"),
    };
    if n <= 0 {
        bail!("--since {t:?} must be a positive duration");
    }
    Ok(now - n.saturating_mul(unit_secs))
}

/// What a finished backfill did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub since: i64,
    pub ticks: u64,
    pub events_seen: u64,
    pub incidents_opened: u64,
}

/// The guest's `backfill` object of `GET /v1/status`.
async fn progress(runtime: &Arc<Runtime>, tenant: &Arc<Tenant>) -> anyhow::Result<Value> {
    let r = guest_api::get(runtime, tenant.clone(), "/v1/status").await?;
    if r.status != 200 {
        bail!("GET /v1/status answered {}", r.error_text());
    }
    match r.json.get("backfill") {
        Some(b) if b.is_object() => Ok(b.clone()),
        _ => bail!(
            "the guest accepted the backfill but GET /v1/status has no \"backfill\" object; update the bridge component"
        ),
    }
}

/// Asks the guest to backfill from `since`, then ticks until it is done,
/// showing progress on `bar`. Fails after `max_ticks` ticks.
pub async fn run(
    runtime: &Arc<Runtime>,
    tenant: Arc<Tenant>,
    since: i64,
    max_ticks: u64,
    bar: &ProgressBar,
) -> anyhow::Result<Summary> {
    let id = tenant.id.to_string();
    let token = tenant
        .config
        .get("tick_token")
        .map(|t| t.expose().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "tenant {id} has no tick_token: the backfill route needs it; set it: mssp-bridge tenant set {id} --secret-file tick_token=PATH"
            )
        })?;
    let r = guest_api::call(
        runtime,
        tenant.clone(),
        http::Method::POST,
        "/v1/backfill",
        Some(&token),
        Some(json!({ "since": since })),
    )
    .await?;
    match r.status {
        200 | 202 => {}
        404 => bail!(
            "tenant {id}: its bridge component has no backfill route (POST /v1/backfill answered 404: {}); build and deploy a component that supports backfill",
            r.error_text()
        ),
        401 | 403 => bail!(
            "tenant {id}: the backfill route refused the tick_token ({}); check the tenant's tick_token",
            r.error_text()
        ),
        _ => bail!("tenant {id}: POST /v1/backfill answered {}", r.error_text()),
    }
    tracing::info!(tenant = %id, since, "backfill accepted");
    let mut summary = Summary {
        since,
        ..Summary::default()
    };
    let mut failed_in_a_row = 0;
    loop {
        if summary.ticks >= max_ticks {
            bail!(
                "tenant {id}: backfill not done after {max_ticks} ticks ({} events seen so far); run it again or raise --max-ticks",
                summary.events_seen
            );
        }
        summary.ticks += 1;
        match runtime.tick(&tenant, crate::unix_ms() / 1000).await {
            Ok(()) => failed_in_a_row = 0,
            Err(e @ InvokeError::Guest { .. }) => {
                failed_in_a_row += 1;
                tracing::warn!(tenant = %id, tick = summary.ticks, "backfill tick failed: {e}");
                if failed_in_a_row >= MAX_FAILED_TICKS {
                    bail!(
                        "tenant {id}: {failed_in_a_row} backfill ticks failed in a row; last: {e}"
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => bail!("tenant {id}: backfill tick stopped: {e}"),
        }
        let p = progress(runtime, &tenant).await?;
        let n = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
        summary.events_seen = n("events_seen");
        summary.incidents_opened = n("incidents_opened");
        bar.set_position(summary.ticks);
        bar.set_message(format!(
            "{} events seen, {} incidents opened",
            summary.events_seen, summary.incidents_opened
        ));
        if p.get("done").and_then(Value::as_bool) == Some(true) {
            tracing::info!(
                tenant = %id,
                ticks = summary.ticks,
                events_seen = summary.events_seen,
                incidents_opened = summary.incidents_opened,
                "backfill done"
            );
            return Ok(summary);
        }
    }
}

/// A progress display on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(tenant: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template(
        "{spinner} backfill {prefix} [{elapsed_precise}] tick {pos} · {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_prefix(tenant.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// The command: backfill one tenant and print its summary.
pub async fn command(
    runtime: &Arc<Runtime>,
    tenant: Arc<Tenant>,
    since_text: &str,
    max_ticks: u64,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<Summary> {
    let now = (crate::unix_ms() / 1000) as i64;
    let since = parse_since(since_text, now)?;
    let started = Instant::now();
    let bar = progress_bar(&tenant.id);
    let id = tenant.id.to_string();
    let result = run(runtime, tenant, since, max_ticks, &bar).await;
    bar.finish_and_clear();
    let s = result?;
    writeln!(
        out,
        "backfill of {id} since {} ({since_text}): {} events seen, {} incidents opened, {} ticks, {:.1} s",
        crate::status_page::iso(since),
        s.events_seen,
        s.incidents_opened,
        s.ticks,
        started.elapsed().as_secs_f64()
    )?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_durations_or_utc_times() {
        let now = 1_800_000_000;
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400);
        assert_eq!(parse_since("12h", now).unwrap(), now - 12 * 3600);
        assert_eq!(parse_since("30m", now).unwrap(), now - 1800);
        assert_eq!(parse_since("90", now).unwrap(), now - 90);
        assert_eq!(
            parse_since("2026-11-21T00:00:00Z", now).unwrap(),
            1_795_219_200
        );
        for bad in ["", "7w", "-3d", "0d", "soon", "2099-01-01T00:00:00Z"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }
}
