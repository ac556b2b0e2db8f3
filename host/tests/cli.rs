//! The `mssp-bridge` command line, run as a user would run it.

use std::process::Command;

fn bridge(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mssp-bridge"));
    c.current_dir(dir)
        .env_remove("MSSP_MASTER_KEY")
        .env("RUST_LOG", "debug");
    c
}

fn keygen(dir: &std::path::Path) -> String {
    let out = bridge(dir).arg("keygen").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn tenant_add_seals_secrets_and_never_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let secrets = [
        ("amp_api_key", "amp-key-7f3a9c1e55d0"),
        ("xdr_client_secret", "xdr-secret-b81d2e4c"),
        ("snow_password", "snow-pass-04c9e1aa"),
        ("callback_key", "Y2FsbGJhY2sta2V5LTEyMzQ1Njc4"),
    ];
    std::fs::write(dir.path().join("amp.key"), secrets[0].1).unwrap();
    let mut add = bridge(dir.path());
    add.env("MSSP_MASTER_KEY", &key)
        .env("XDR_SECRET", secrets[1].1)
        .env("CALLBACK_KEY", secrets[3].1)
        .args(["tenant", "add", "acme"])
        .args(["--set", "customer_name=Acme Corp"])
        .args(["--set", "amp_base_url=https://api.eu.amp.cisco.com"])
        .args(["--set", &format!("snow_password={}", secrets[2].1)])
        .args(["--secret-file", "amp_api_key=amp.key"])
        .args(["--secret-env", "xdr_client_secret=XDR_SECRET"])
        .args(["--secret-env", "callback_key=CALLBACK_KEY"]);
    let out = add.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut printed = Vec::new();
    for args in [&["tenant", "list"][..], &["tenant", "show", "acme"][..]] {
        let out = bridge(dir.path()).args(args).output().unwrap();
        assert!(out.status.success());
        printed.extend(out.stdout);
        printed.extend(out.stderr);
    }
    let shown = String::from_utf8_lossy(&printed);
    assert!(shown.contains("customer_name = Acme Corp"), "{shown}");
    assert!(shown.contains("amp_api_key = <secret, sealed>"), "{shown}");

    let mut db = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.to_string_lossy().contains("mssp-bridge.db") {
            db.extend(std::fs::read(&p).unwrap());
        }
    }
    assert!(!db.is_empty(), "the database was written");
    for (name, value) in secrets {
        let hit = |hay: &[u8]| hay.windows(value.len()).any(|w| w == value.as_bytes());
        assert!(!hit(&db), "{name} is in the database in clear");
        assert!(!hit(&printed), "{name} was printed");
    }
}

#[test]
fn a_missing_or_wrong_master_key_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = bridge(dir.path())
        .args(["tenant", "add", "acme", "--set", "customer_name=A"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MSSP_MASTER_KEY") && err.contains("keygen"),
        "{err}"
    );

    let out = bridge(dir.path())
        .env("MSSP_MASTER_KEY", "not base64!")
        .args(["tenant", "add", "acme", "--set", "customer_name=A"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 bytes"));

    let k1 = keygen(dir.path());
    let out = bridge(dir.path())
        .env("MSSP_MASTER_KEY", &k1)
        .args(["tenant", "add", "acme", "--set", "customer_name=A"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let k2 = keygen(dir.path());
    let out = bridge(dir.path())
        .env("MSSP_MASTER_KEY", &k2)
        .args(["tick", "acme"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong master key"), "{err}");
}
