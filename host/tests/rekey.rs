//! `mssp-bridge rekey`, interrupted as a crash would: SIGKILL at random moments of a
//! re-seal of many tenants and the shared accounts they use leaves every tenant and
//! account readable under exactly one of the two master keys (the old one before the
//! commit, the new one after — never a mix), and running it again finishes the job.

mod common;
use common::component;
use common::serve::Bridge;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mssp_bridge::accounts::{Account, AccountSettings};
use mssp_bridge::secrets::{MasterKey, SecretString};
use mssp_bridge::tenants::{TenantSettings, TenantStore};

const TENANTS: usize = 400;
/// Shared accounts: XDR organisations and ServiceNow instances, half of each used by
/// tenants.
const ACCOUNTS: usize = 8;
/// Tenants and accounts: each must open under exactly one key.
const ALL: usize = TENANTS + ACCOUNTS;

fn key(text: &str) -> MasterKey {
    MasterKey::parse(text, "test").expect("a valid key")
}

/// Which of the two keys opens each tenant (with the accounts it uses) and each
/// account: (old only, new only, both, neither).
fn census(store: &TenantStore, old: &MasterKey, new: &MasterKey) -> (usize, usize, usize, usize) {
    let mut c = (0, 0, 0, 0);
    let accounts = store.accounts().expect("accounts listed");
    assert_eq!(accounts.len(), ACCOUNTS);
    let opens = |k: &MasterKey, id: &str, account: bool| {
        if account {
            store.open_account(k, id).is_ok()
        } else {
            store.resolve(k, id).is_ok()
        }
    };
    let tenants = store.list().expect("tenants listed");
    let all = tenants
        .into_iter()
        .map(|(id, _)| (id, false))
        .chain(accounts.into_iter().map(|a| (a.name, true)));
    for (id, account) in all {
        match (opens(old, &id, account), opens(new, &id, account)) {
            (true, false) => c.0 += 1,
            (false, true) => c.1 += 1,
            (true, true) => c.2 += 1,
            (false, false) => c.3 += 1,
        }
    }
    c
}

#[test]
fn rekey_killed_at_random_moments_leaves_each_tenant_under_exactly_one_key() {
    let bridge = Bridge::with_settings("warn", &component(), "");
    let old_text = bridge.master_key.clone();
    let old = key(&old_text);
    let new_text = MasterKey::generate();
    let new = key(&new_text);
    {
        let store = TenantStore::open(&bridge.db()).expect("database");
        for i in 0..ACCOUNTS {
            let (kind, key, secret) = if i % 2 == 0 {
                (
                    Account::Xdr,
                    "xdr_client_secret",
                    format!("xdr-shared-{i}-5e1a"),
                )
            } else {
                (
                    Account::Snow,
                    "snow_password",
                    format!("snow-shared-{i}-90b4"),
                )
            };
            let mut settings = AccountSettings::default();
            let urls: &[(&str, &str)] = match kind {
                Account::Xdr => &[
                    ("xdr_auth_url", "https://visibility.amp.cisco.com"),
                    ("xdr_api_url", "https://private.intel.amp.cisco.com"),
                    ("xdr_client_id", "mssp"),
                ],
                Account::Snow => &[
                    ("snow_base_url", "https://mssp.service-now.com"),
                    ("snow_user", "bridge"),
                ],
            };
            for (k, v) in urls {
                settings.set(kind, k, v).expect("an account key");
            }
            let secrets = BTreeMap::from([(key.to_string(), SecretString::new(secret))]);
            store
                .put_account(&old, &format!("shared-{i}"), kind, settings, secrets, false)
                .expect("account stored");
        }
        for i in 0..TENANTS {
            let id = format!("customer-{i:04}");
            let config: BTreeMap<String, String> = [
                ("customer_name", format!("Customer {i}")),
                ("amp_base_url", "https://api.amp.cisco.com".to_string()),
                ("amp_client_id", format!("amp-{i}")),
                (
                    "xdr_auth_url",
                    "https://visibility.amp.cisco.com".to_string(),
                ),
                (
                    "xdr_api_url",
                    "https://private.intel.amp.cisco.com".to_string(),
                ),
                ("xdr_client_id", format!("xdr-{i}")),
                ("snow_base_url", "https://acme.service-now.com".to_string()),
                ("snow_user", format!("snow-{i}")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let mut secrets: BTreeMap<String, SecretString> = [
                ("amp_api_key", format!("amp-key-{i}-7f3e")),
                ("xdr_client_secret", format!("xdr-secret-{i}-19c2")),
                ("snow_password", format!("snow-pass-{i}-44d0")),
                ("callback_key", "Y2FsbGJhY2sta2V5LTAxMjM0NQ==".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), SecretString::new(v)))
            .collect();
            let mut settings = TenantSettings {
                config,
                ..TenantSettings::default()
            };
            // Every tenth uses a shared XDR organisation instead of its own keys.
            if i % 10 == 0 {
                for k in ["xdr_auth_url", "xdr_api_url", "xdr_client_id"] {
                    settings.config.remove(k);
                }
                secrets.remove("xdr_client_secret");
                settings
                    .accounts
                    .insert(Account::Xdr, format!("shared-{}", i % (ACCOUNTS / 2) * 2));
            }
            store
                .put(&old, &id, settings, secrets, false)
                .expect("tenant stored");
        }
    }
    let rekey = || {
        let mut c = bridge.command();
        c.arg("rekey").env("MSSP_NEW_MASTER_KEY", &new_text);
        c
    };

    // How long an uninterrupted run takes (then back to the old key in-process), to
    // place the kills over the whole of a run.
    let t0 = Instant::now();
    let out = rekey().output().expect("rekey runs");
    let full = t0.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        let store = TenantStore::open(&bridge.db()).expect("database");
        assert_eq!(census(&store, &old, &new), (0, ALL, 0, 0));
        store.rekey(&new, &old).expect("back to the old key");
    }
    println!("an uninterrupted rekey of {TENANTS} tenants: {full:?}");

    let mut rng_state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let (mut before_commit, mut after_commit) = (0, 0);
    for trial in 0..16 {
        let store = TenantStore::open(&bridge.db()).expect("database");
        if census(&store, &old, &new).1 == ALL {
            // A previous trial finished; start the next from the old key again.
            store.rekey(&new, &old).expect("back to the old key");
        }
        drop(store);
        let window = full.as_micros() as u64 * 5 / 4 + 1;
        let delay = Duration::from_micros(next() % window);
        let mut child = rekey()
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("rekey starts");
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let store = TenantStore::open(&bridge.db()).expect("database");
        let (only_old, only_new, both, neither) = census(&store, &old, &new);
        println!(
            "trial {trial}: killed after {delay:?}: {only_old} under the old key, {only_new} under the new"
        );
        assert_eq!(
            (both, neither),
            (0, 0),
            "every tenant and account opens under exactly one key"
        );
        assert!(
            only_old == ALL || only_new == ALL,
            "all under one key, never a mix: {only_old} old, {only_new} new"
        );
        if only_new == ALL {
            after_commit += 1;
        } else {
            before_commit += 1;
        }
    }
    println!("rekey kills: {before_commit} before the commit, {after_commit} after");

    // A rerun finishes the job, and a second rerun changes nothing.
    let out = rekey().output().expect("rekey runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let store = TenantStore::open(&bridge.db()).expect("database");
    assert_eq!(census(&store, &old, &new), (0, ALL, 0, 0), "{said}");
    let again = rekey().output().expect("rekey runs");
    let said = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(
        said.contains(&format!(
            "re-sealed 0 tenant(s) under the new master key ({TENANTS} already were) and 0 account(s) ({ACCOUNTS} already were)"
        )),
        "{said}"
    );
    // Secrets survive the round trips, and neither key is ever printed.
    let t = store.resolve(&new, "customer-0007").expect("opens");
    assert_eq!(
        t.config.get("amp_api_key").map(SecretString::expose),
        Some("amp-key-7-7f3e")
    );
    let t = store.resolve(&new, "customer-0020").expect("opens");
    assert_eq!(
        t.config.get("xdr_client_secret").map(SecretString::expose),
        Some("xdr-shared-0-5e1a"),
        "a tenant's shared account re-sealed with it"
    );
    let snow = store.open_account(&new, "shared-3").expect("opens");
    assert_eq!(
        snow.secrets.get("snow_password").map(SecretString::expose),
        Some("snow-shared-3-90b4")
    );
    for text in [&said, &String::from_utf8_lossy(&again.stderr).into_owned()] {
        assert!(!text.contains(&new_text) && !text.contains(&old_text));
    }
    // A wrong current key changes nothing and says which tenant it could not open.
    let wrong = bridge
        .command()
        .arg("rekey")
        .env("MSSP_MASTER_KEY", MasterKey::generate())
        .env("MSSP_NEW_MASTER_KEY", MasterKey::generate())
        .output()
        .expect("runs");
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr)
            .contains("neither the current nor the new master key"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert_eq!(census(&store, &old, &new), (0, ALL, 0, 0));
}
