//! A real `redis-server` for the tests: started on a free loopback port with a
//! folder of its own (append-only file on, snapshots off), stopped on drop.
//! Optionally with a password (`requirepass`) or TLS only (a CA and a server
//! certificate for `localhost` made with the `openssl` command in its folder).

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to get the server when it is missing (CI's `.ci/run` does this).
const INSTALL: &str = "redis-server is not installed: `apt-get install -y redis-server` \
                       (Debian's package; `.ci/run` installs it)";

/// A `redis-server` process owned by a test.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// Arguments after `--dir` and `--logfile`, the same at every start.
    args: Vec<String>,
    tls: bool,
}

/// The line `redis-server` logs once it serves (after replaying its files).
const READY: &str = "Ready to accept connections";

impl RedisServer {
    /// Starts a server (`appendfsync everysec`, Redis's default).
    ///
    /// Panics with how to install it when `redis-server` is missing, and with
    /// its log when it does not answer `PING` within 10 s: a test that needs
    /// Redis fails, it is never skipped.
    pub fn start() -> Self {
        Self::start_with(&[], false)
    }

    /// Starts a server that syncs its append-only file on every write
    /// (`appendfsync always`): whatever it acknowledged survives `kill -9`.
    pub fn start_durable() -> Self {
        Self::start_with(&["--appendfsync", "always"], false)
    }

    /// Starts a server that refuses every command until `AUTH password`.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(&["--requirepass", password], false)
    }

    /// Starts a server that speaks TLS only, with a certificate for `localhost`
    /// signed by a CA of its own ([`RedisServer::ca_pem`]).
    pub fn start_tls() -> Self {
        Self::start_with(&[], true)
    }

    fn start_with(args: &[&str], tls: bool) -> Self {
        // A free port can be taken by another test's server between our look and
        // redis-server's bind: then it exits, and we try another port.
        for _ in 0..5 {
            let mut server = Self::spawn_on_free_port(args, tls);
            if server.ready(0) {
                return server;
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        panic!(
            "redis-server did not start on any of 5 free ports (see its log in the test's temp folder)"
        );
    }

    fn spawn_on_free_port(args: &[&str], tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if tls {
            make_certificates(dir.path());
            let file = |name: &str| dir.path().join(name).display().to_string();
            args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                file("server.pem"),
                "--tls-key-file".into(),
                file("server.key"),
                "--tls-ca-cert-file".into(),
                file("ca.pem"),
                "--tls-auth-clients".into(),
                "no".into(),
            ]);
        } else {
            args.extend(["--port".into(), port.to_string()]);
        }
        let child = spawn(dir.path(), &args);
        Self {
            child,
            port,
            dir,
            args,
            tls,
        }
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://localhost:<port>` for TLS.
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// The CA certificate (PEM) that signed a TLS server's certificate.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.pem")).expect("a TLS server's CA")
    }

    /// Kills the server with SIGKILL (no shutdown, no final save) and starts it
    /// again on the same port and folder, replaying its append-only file.
    pub fn crash_and_restart(&mut self) {
        // SIGKILL: `Child::kill` on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let started = self.log().matches(READY).count();
        self.child = spawn(self.dir.path(), &self.args);
        self.wait_ready(started);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Whether the log says "ready" more than `before` times within 10 s (`false` at
    /// once when the server exited, e.g. its port was taken).
    fn ready(&mut self, before: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().matches(READY).count() > before {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// As [`RedisServer::ready`], failing the test with the server's log.
    fn wait_ready(&mut self, before: usize) {
        if self.ready(before) {
            return;
        }
        panic!(
            "redis-server on port {} was not ready within 10 s; its log:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, args: &[String]) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL}"),
        Err(e) => panic!("starting redis-server: {e}"),
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it,
/// in `dir` (`ca.pem`, `server.pem`, `server.key`), made with `openssl`.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("running openssl (the TLS tests need it): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=mssp test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"],
        &ec[..],
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("writing server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}
