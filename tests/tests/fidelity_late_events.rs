//! Issue 14, finding 4: late events. Secure Endpoint's `GET /v1/events` filters and
//! orders by the event's own `timestamp` (`start_date`), not by when the event reached
//! the cloud, so an endpoint that was offline and reconnects delivers events that lie
//! behind the bridge's watermark. Inside the late-arrival window
//! (`late_window_seconds`, default one hour) they become incidents once, on a quiet
//! tenant and on a busy one, and are counted (tick report `events_late`, counters,
//! `mssp_events_late_total`); older ones are missed, as documented.

use mssp_e2e::{Customer, CustomerSpec, World, get, unix_now};

const THREAT_DETECTED: u64 = 1_090_519_054;

/// One Threat Detected event on the customer's first computer, `age` seconds old,
/// as it reaches the cloud now (late).
fn late_detection(w: &World, c: &Customer, age: i64) -> mssp_sim::Event {
    let mut e = w
        .detection(c, &c.computers[0], &[THREAT_DETECTED])
        .remove(0);
    let ts = unix_now() - age;
    e.timestamp = ts;
    e.date = mssp_sim::Event::new(e.id, THREAT_DETECTED, ts).date;
    e
}

async fn status(w: &World, c: &Customer) -> serde_json::Value {
    get(&w.host.url(&format!("/tenants/{}/v1/status", c.id)))
        .await
        .unwrap()
        .json()
}

async fn tick(w: &World, c: &Customer) -> serde_json::Value {
    w.tick(c).await.expect("tick");
    let s = status(w, c).await;
    assert_ne!(s["last_tick"]["outcome"], "failed", "{s}");
    s["last_tick"].clone()
}

/// The next two ticks re-read the window (the late event is inside it) and take in
/// nothing new: exactly once.
async fn two_ticks_add_nothing(w: &World, c: &Customer) {
    for _ in 0..2 {
        let r = tick(w, c).await;
        assert_eq!(
            (r["events_new"].as_u64(), r["events_late"].as_u64()),
            (Some(0), Some(0)),
            "{r}"
        );
    }
}

/// `mssp_events_late_total` of one tenant.
async fn late_metric(w: &World, c: &Customer) -> u64 {
    let text = get(&w.host.url("/metrics")).await.unwrap().text();
    let prefix = format!("mssp_events_late_total{{tenant=\"{}\"}} ", c.id);
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

fn push(w: &World, c: &Customer, events: Vec<mssp_sim::Event>) {
    w.sim
        .amp()
        .push_events(&c.amp_client_id, events)
        .expect("push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_tenant_an_event_arriving_25_minutes_late_becomes_one_incident_counted_late() {
    let w = World::start().await.unwrap();
    let acme = w.customer("acme", CustomerSpec::default());
    // Nothing upstream: an empty poll, after which the watermark follows the clock.
    let first = tick(&w, &acme).await;
    assert_eq!(first["events_fetched"], 0);
    // A laptop that was offline reconnects: its detection is 25 minutes old.
    let late = late_detection(&w, &acme, 1_500);
    push(&w, &acme, vec![late.clone()]);

    let r = tick(&w, &acme).await;

    assert_eq!(r["events_new"], 1, "the late event was fetched: {r}");
    assert_eq!(r["events_late"], 1, "and counted as late: {r}");
    assert_eq!(w.xdr_incidents_of(&acme).len(), 1, "one XDR incident");
    assert_eq!(
        w.snow_incidents_of(&acme).len(),
        1,
        "one ServiceNow incident"
    );
    assert_eq!(late_metric(&w, &acme).await, 1, "mssp_events_late_total");
    assert_eq!(status(&w, &acme).await["counters"]["events_late"], 1);
    // Once: the following ticks read it again (it is inside the window) and add nothing.
    two_ticks_add_nothing(&w, &acme).await;
    assert_eq!(w.xdr_incidents_of(&acme).len(), 1);
    assert_eq!(w.snow_incidents_of(&acme).len(), 1);
    assert_eq!(late_metric(&w, &acme).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_tenant_a_late_event_below_hundreds_of_known_ones_is_taken_in_exactly_once() {
    let w = World::start().await.unwrap();
    let acme = w.customer("acme", CustomerSpec::default());
    // A busy tenant: 700 events of one detection over the last 50 minutes, more than
    // one page (500) holds.
    let template = w
        .detection(&acme, &acme.computers[0], &[THREAT_DETECTED])
        .remove(0);
    let now = unix_now();
    let busy: Vec<mssp_sim::Event> = (0..700)
        .map(|i| {
            let mut e = template.clone();
            e.id = w.sim.amp().next_event_id();
            e.timestamp = now - 3_000 + i * 4;
            e.date = mssp_sim::Event::new(e.id, THREAT_DETECTED, e.timestamp).date;
            e
        })
        .collect();
    push(&w, &acme, busy);
    for _ in 0..4 {
        if tick(&w, &acme).await["backlog"] != true {
            break;
        }
    }
    let idle = tick(&w, &acme).await;
    assert_eq!(idle["events_new"], 0, "{idle}");
    assert_eq!(
        w.xdr_incidents_of(&acme).len(),
        1,
        "one detection, one incident"
    );
    let incidents_before = w.xdr_incidents_of(&acme).len();
    let snow_before = w.snow_incidents_of(&acme).len();
    // The late event lies below 324 events already read.
    push(&w, &acme, vec![late_detection(&w, &acme, 1_500)]);

    let r = tick(&w, &acme).await;

    assert_eq!(
        (r["events_new"].as_u64(), r["events_late"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(w.xdr_incidents_of(&acme).len(), incidents_before + 1);
    assert_eq!(w.snow_incidents_of(&acme).len(), snow_before + 1);
    two_ticks_add_nothing(&w, &acme).await;
    assert_eq!(
        w.xdr_incidents_of(&acme).len(),
        incidents_before + 1,
        "exactly once"
    );
    assert_eq!(
        w.snow_incidents_of(&acme).len(),
        snow_before + 1,
        "exactly once"
    );
    assert_eq!(late_metric(&w, &acme).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_older_than_the_window_is_not_fetched_and_the_window_is_per_tenant() {
    let w = World::start().await.unwrap();
    // Same late event for three tenants: default window (1 h), a short one (15 min),
    // a long one (3 h); and one event two hours late for the default window.
    let default = w.customer("default-window", CustomerSpec::default());
    let short = w.customer(
        "short-window",
        CustomerSpec::default().with("late_window_seconds", "900"),
    );
    // (Its first run looks back as far: no query reaches before the first run's start.)
    let long = w.customer(
        "long-window",
        CustomerSpec::default()
            .with("late_window_seconds", "10800")
            .with("lookback_seconds", "10800"),
    );
    for c in [&default, &short, &long] {
        tick(&w, c).await;
    }
    push(&w, &short, vec![late_detection(&w, &short, 1_500)]);
    push(&w, &long, vec![late_detection(&w, &long, 2 * 3_600)]);
    push(&w, &default, vec![late_detection(&w, &default, 2 * 3_600)]);
    for c in [&default, &short, &long] {
        tick(&w, c).await;
    }
    // 25 minutes late is beyond a 15-minute window: missed (documented).
    assert_eq!(w.xdr_incidents_of(&short).len(), 0);
    // Two hours late: caught by the 3-hour window, missed by the default hour.
    assert_eq!(w.xdr_incidents_of(&long).len(), 1);
    assert_eq!(late_metric(&w, &long).await, 1);
    assert_eq!(
        w.xdr_incidents_of(&default).len(),
        0,
        "older than the window: not fetched"
    );
    let r = status(&w, &default).await["last_tick"].clone();
    assert_eq!(r["events_fetched"], 0, "{r}");
}
