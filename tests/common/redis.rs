//! A private `redis-server` for one test, for the Redis backend's tests.
//!
//! Each [`RedisServer`] runs in a fresh directory of its own (a
//! [`TempDir`]): its Unix socket, its log and, with
//! [`Persistence::AppendFsyncAlways`], its append-only file are there and
//! nowhere else. It is a directory apart from every drover's: a test that
//! SIGKILLs a drover and then everything running inside that drover's
//! directory ([`super::kill_marked`]) must not take Redis down with it.
//!
//! The server is never daemonized: it is a child of the test, started with
//! [`Command`], ready once a `PING` on its socket is answered `PONG` (a
//! condition with a generous deadline, no fixed sleep), and SIGKILLed when
//! the [`RedisServer`] is dropped, also when the test panicked.
//! [`RedisServer::shutdown`] stops it the way an operator would (`SHUTDOWN`,
//! which syncs the append-only file), and [`RedisServer::start_again`]
//! brings it back on the same socket and directory.
//!
//! A missing `redis-server` fails the test with what to install: the
//! Redis tests are never skipped silently.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{DEADLINE, TempDir};

/// Fails the test, saying what to install, unless `redis-server` and
/// `redis-cli` run.
pub fn redis_available() {
    for tool in ["redis-server", "redis-cli"] {
        let runs = Command::new(tool)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            runs,
            "`{tool}` is not installed (or does not run): the Redis backend is tested against a \
             real Redis. Install the Debian package `redis-server` (`apt-get install redis-server`; \
             it provides redis-server, redis-cli and redis-benchmark). CI installs it in .ci/run."
        );
    }
}

/// What a [`RedisServer`] keeps on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing: `--save "" --appendonly no`.
    None,
    /// `--appendonly yes --appendfsync always`: every write is fsynced to
    /// the append-only file before Redis answers it, so a write Redis
    /// acknowledged survives a `SHUTDOWN` (and a crash) of Redis.
    AppendFsyncAlways,
}

/// How to start a [`RedisServer`].
#[derive(Clone, Debug)]
pub struct Options {
    pub persistence: Persistence,
    /// Also listen on a free loopback TCP port (see [`RedisServer::port`]);
    /// by default only the Unix socket is open (`--port 0`).
    pub tcp: bool,
    /// With [`Options::tcp`]: the port speaks TLS only (`--tls-port`),
    /// with the certificate `server.pem`, its key `server.key` and the CA
    /// `ca.pem` of this directory ([`make_certificates`]).
    pub tls: Option<PathBuf>,
    /// More `redis-server` arguments, after the defaults (a later
    /// directive wins), e.g. `--user NAME on >PASSWORD ~* &* +@all`.
    pub args: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            persistence: Persistence::None,
            tcp: false,
            tls: None,
            args: Vec::new(),
        }
    }
}

/// A `redis-server` child of the test on a Unix socket in its own
/// directory; SIGKILLed on drop.
pub struct RedisServer {
    child: Option<Child>,
    socket: PathBuf,
    port: Option<u16>,
    options: Options,
    // Last: the directory is removed after the server is gone.
    dir: TempDir,
}

impl RedisServer {
    /// A server without persistence, in a fresh directory named after `name`.
    pub fn start(name: &str) -> RedisServer {
        RedisServer::start_with(name, Options::default())
    }

    /// A server with `--appendonly yes --appendfsync always`.
    pub fn start_durable(name: &str) -> RedisServer {
        RedisServer::start_with(
            name,
            Options {
                persistence: Persistence::AppendFsyncAlways,
                ..Options::default()
            },
        )
    }

    pub fn start_with(name: &str, options: Options) -> RedisServer {
        redis_available();
        let dir = TempDir::new(&format!("{name}-redis"));
        let socket = dir.path().join("redis.sock");
        // sun_path holds 108 bytes with its NUL.
        assert!(
            socket.as_os_str().len() < 108,
            "the Redis socket path {} is too long for a Unix socket; set TMPDIR to a shorter directory",
            socket.display()
        );
        let mut server = RedisServer {
            child: None,
            socket,
            port: None,
            options,
            dir,
        };
        // A free port can be taken by someone else between our probe and
        // Redis's bind: a few tries with a new port each.
        for _ in 0..5 {
            if server.options.tcp {
                server.port = Some(free_port());
            }
            if server.spawn_and_wait() {
                return server;
            }
        }
        panic!(
            "redis-server could not start on a free port after 5 tries; its log:\n{}",
            server.log()
        );
    }

    /// `unix:///DIR/redis.sock`, the URL drover is given.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The loopback TCP port, with [`Options::tcp`].
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// What the server logged so far (its `--logfile`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Runs `redis-cli -s SOCKET ARGS...` and returns its output without
    /// the trailing newline. An error reply is output too (`ERR ...`,
    /// redis-cli exits 0 for it); a redis-cli that fails (no server)
    /// fails the test.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_owned()
    }

    /// `SHUTDOWN`, then waits (within the deadline) for the server to exit
    /// and reaps it. With the append-only file on, everything Redis
    /// acknowledged is on disk when it is gone.
    pub fn shutdown(&mut self) {
        let child = self.child.as_mut().expect("redis-server is not running");
        let mut conn = UnixStream::connect(&self.socket).expect("connect to redis-server");
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        conn.write_all(&resp(&["SHUTDOWN"])).expect("send SHUTDOWN");
        // A successful SHUTDOWN has no reply: the connection just ends.
        let mut reply = String::new();
        let _ = BufReader::new(&conn).read_line(&mut reply);
        assert!(
            !reply.starts_with('-'),
            "redis-server refused SHUTDOWN: {reply}"
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for redis-server") {
                assert!(
                    status.success(),
                    "redis-server exited with {status} on SHUTDOWN; its log:\n{}",
                    self.log()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not exit within {DEADLINE:?} of SHUTDOWN; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10)); // poll interval of a condition wait
        }
        self.child = None;
    }

    /// Starts the server again, on the same socket, port and directory (and
    /// so the same append-only file), after [`RedisServer::shutdown`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        assert!(
            self.spawn_and_wait(),
            "redis-server did not start again; its log:\n{}",
            self.log()
        );
    }

    /// Starts redis-server and waits until it answers PING; false if it
    /// exited during its start (its log says why).
    fn spawn_and_wait(&mut self) -> bool {
        let dir = self.dir.path();
        let mut cmd = Command::new("redis-server");
        let port = self.port.map_or("0".to_owned(), |p| p.to_string());
        match &self.options.tls {
            None => cmd.args(["--port", &port]),
            Some(certs) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(certs.join("server.pem"))
                .arg("--tls-key-file")
                .arg(certs.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(certs.join("ca.pem")),
        };
        cmd.args(["--bind", "127.0.0.1", "--unixsocket"])
            .arg(&self.socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(["--daemonize", "no", "--save", ""]);
        match self.options.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::AppendFsyncAlways => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always"])
            }
        };
        cmd.args(&self.options.args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("start redis-server"));
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            if ping(&self.socket) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on {} within {DEADLINE:?}; its log:\n{}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10)); // poll interval of a condition wait
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// True when the server on `socket` answers PING with PONG (not while it
/// is still loading its append-only file, when it answers `-LOADING`).
fn ping(socket: &Path) -> bool {
    let Ok(mut conn) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    if conn.write_all(&resp(&["PING"])).is_err() {
        return false;
    }
    let mut reply = String::new();
    BufReader::new(&conn).read_line(&mut reply).is_ok() && reply == "+PONG\r\n"
}

/// A command as a RESP array of bulk strings.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// A loopback TCP port nobody listens on right now.
/// Writes into `dir` a private CA (`ca.pem`) and a server certificate it
/// signed for `localhost` and 127.0.0.1 (`server.pem`, key `server.key`),
/// with `openssl` (it comes with Debian's `openssl` package).
pub fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl (install the Debian package `openssl`)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=drover test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}
