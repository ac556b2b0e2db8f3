//! A real `redis-server` for the tests: started on a free loopback port with a
//! folder of its own (append-only file on, snapshots off), stopped on drop.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
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
    fsync_always: bool,
}

impl RedisServer {
    /// Starts a server (`appendfsync everysec`, Redis's default).
    ///
    /// Panics with how to install it when `redis-server` is missing, and with
    /// its log when it does not answer `PING` within 10 s: a test that needs
    /// Redis fails, it is never skipped.
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), false)
    }

    /// Starts a server that syncs its append-only file on every write
    /// (`appendfsync always`): whatever it acknowledged survives `kill -9`.
    pub fn start_durable() -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), true)
    }

    fn start_in(dir: tempfile::TempDir, fsync_always: bool) -> Self {
        let port = free_port();
        let child = spawn(dir.path(), port, fsync_always);
        let server = Self {
            child,
            port,
            dir,
            fsync_always,
        };
        server.wait_ready();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL (no shutdown, no final save) and starts it
    /// again on the same port and folder, replaying its append-only file.
    pub fn crash_and_restart(&mut self) {
        // SIGKILL: `Child::kill` on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.dir.path(), self.port, self.fsync_always);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        panic!(
            "redis-server on port {} did not answer PING within 10 s; its log:\n{log}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, port: u16, fsync_always: bool) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .args([
            "--appendfsync",
            if fsync_always { "always" } else { "everysec" },
        ])
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

/// Whether a server on `port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}
