//! The operator's status page, loaded in a real headless browser (Debian's
//! `chromium`): the overview shows each tenant with its last tick, lag and
//! open incidents; an incident page shows its timeline and its links into
//! XDR, ServiceNow and the Secure Endpoint console. Customer-controlled text
//! is escaped, never rendered as markup.

use std::path::Path;
use std::process::Command;

use mssp_e2e::{CustomerSpec, World, get};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The DOM of `url` after Chromium loaded it.
async fn dump_dom(url: String) -> String {
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        // `timeout` only guards against a hung browser; nothing is timed.
        let out = Command::new("timeout")
            .arg("120")
            .arg(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chromium failed on {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_reads_tenants_and_an_incident_timeline_in_the_browser() {
    if !Path::new(CHROMIUM).exists() {
        println!("skipped: chromium not installed (apt-get install -y chromium)");
        return;
    }
    let w = World::start().await.unwrap();
    let acme = w.customer(
        "acme",
        CustomerSpec::default()
            .with("customer_name", "Acme <b>Bold</b> & Sons")
            .with("amp_console_url", "https://console.eu.amp.cisco.com")
            .with("containment", "isolate"),
    );
    // globex protects its read routes with a bearer token: the host's pages
    // read through the guest with it.
    let globex = w.customer(
        "globex",
        CustomerSpec::default().with("read_token", "readtoken-globex-77aa"),
    );
    // A customer whose configuration was mistyped.
    let initech = w.customer(
        "initech",
        CustomerSpec::default().with("containment", "quarantine"),
    );
    for _ in 0..2 {
        assert!(
            w.tick(&initech).await.is_err(),
            "a bad config fails the tick"
        );
    }
    w.publish(&acme, 21, 6);
    for _ in 0..2 {
        w.tick(&acme).await.unwrap();
        w.tick(&globex).await.unwrap();
    }
    let listed = get(&w.host.url("/tenants/acme/v1/incidents"))
        .await
        .unwrap()
        .json();
    let incidents = listed["incidents"].as_array().unwrap().clone();
    assert!(!incidents.is_empty(), "the detections became incidents");
    let first = &incidents[0];
    let key = first["key"].as_str().unwrap();
    let number = first["snow_number"].as_str().unwrap();
    let sys_id = first["snow_sys_id"].as_str().unwrap();

    let overview = dump_dom(w.host.url("/")).await;
    assert!(overview.contains("mssp-bridge — 3 tenants"), "{overview}");
    let broken = overview
        .split("<tr>")
        .find(|row| row.contains("/ui/tenants/initech"))
        .unwrap();
    assert!(broken.contains("0 ok / 2 failed"), "{broken}");
    assert!(
        broken.contains("config key \"containment\" must be none, move or isolate"),
        "the configuration error is on the tenant's row: {broken}"
    );
    assert!(broken.contains("last tick failed"), "{broken}");
    // The customer's name is text, not markup.
    assert!(
        overview.contains("Acme &lt;b&gt;Bold&lt;/b&gt; &amp; Sons"),
        "{overview}"
    );
    assert!(!overview.contains("<b>Bold</b>"), "{overview}");
    assert!(overview.contains("GLOBEX Corp"), "{overview}");
    assert!(
        overview.contains(&format!("acme — {} open incident", incidents.len())),
        "{overview}"
    );
    assert!(overview.contains("globex — 0 open incidents"), "{overview}");
    assert!(
        overview.contains("2 ok / 0 failed"),
        "ticks per tenant: {overview}"
    );
    assert!(
        overview.contains(&format!("{n} open / {n}", n = incidents.len())),
        "{overview}"
    );
    assert!(
        overview.contains(&format!("· {} opened · 0 closed", incidents.len())),
        "counters since the host started: {overview}"
    );
    assert!(
        overview.contains(key) && overview.contains(number),
        "{overview}"
    );
    assert!(
        overview.contains(&format!("href=\"/ui/tenants/acme/incidents/{key}\"")),
        "{overview}"
    );

    let page = dump_dom(w.host.url(&format!("/ui/tenants/acme/incidents/{key}"))).await;
    assert!(
        page.contains(&format!("Incident <code>{key}</code>")),
        "{page}"
    );
    assert!(page.contains("Timeline"), "{page}");
    for step in ["xdr", "snow"] {
        assert!(page.contains(step), "timeline mentions {step}: {page}");
    }
    assert!(
        page.contains(&format!(
            "href=\"{}/nav_to.do?uri=incident.do?sys_id={sys_id}\"",
            w.sim.snow_url()
        )),
        "{page}"
    );
    let guid = &acme.computers;
    assert!(
        guid.iter().any(|g| page.contains(&format!(
            "href=\"https://console.eu.amp.cisco.com/computers/{g}/trajectory2\""
        ))),
        "{page}"
    );
    assert!(page.contains(first["xdr_url"].as_str().unwrap()), "{page}");

    let tenant = dump_dom(w.host.url("/ui/tenants/acme")).await;
    assert!(
        tenant.contains(&format!("{} incidents", incidents.len())),
        "{tenant}"
    );

    let missing = get(&w.host.url("/ui/tenants/acme/incidents/no-such-key"))
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
    assert!(missing.text().contains("no incident no-such-key"));
}
