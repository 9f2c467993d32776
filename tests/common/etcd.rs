//! A real etcd for integration tests (Debian's `etcd-server`): one member on free loopback
//! ports with its data in a temp dir. Dropping it stops the process and removes the files; a
//! watchdog does the same if the test process dies first.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::cluster::free_port;

const ETCD: &str = "/usr/bin/etcd";
/// Bring-up takes well under a second here; 30 s covers a loaded CI machine.
const BOUND: Duration = Duration::from_secs(30);

/// A running single-member etcd.
pub struct Etcd {
    child: Child,
    watchdog: Child,
    dir: PathBuf,
    port: u16,
}

impl Etcd {
    /// Starts etcd on a free port and waits (bounded) until `/health` answers 200.
    pub fn start() -> Etcd {
        Etcd::start_on(free_port())
    }

    /// Starts etcd with its client URL on `port` (e.g. one a proxy already points at).
    pub fn start_on(port: u16) -> Etcd {
        let peer = free_port();
        let dir = std::env::temp_dir().join(format!("pgdecomp-etcd-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create etcd temp dir");
        let log = std::fs::File::create(dir.join("etcd.log")).expect("create etcd log");
        let client_url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(ETCD)
            .args(["--name", "fleet-test", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("fleet-test={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {ETCD} (apt package etcd-server): {e}"));
        let watchdog = watchdog(child.id(), &dir);
        let etcd = Etcd {
            child,
            watchdog,
            dir,
            port,
        };
        etcd.wait_healthy();
        etcd
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + BOUND;
        while !health_ok(self.port) {
            if Instant::now() > deadline {
                panic!("etcd not healthy after {BOUND:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The client URL, as `[fleet] etcd` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }
}

/// `GET /health` answers 200 with `"health":"true"`.
fn health_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200")
}

/// Kills `pid` and removes `dir` once this test process is gone.
fn watchdog(pid: u32, dir: &std::path::Path) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .args([
            "-c",
            r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; kill -9 "$2" 2>/dev/null; rm -rf "$3""#,
            "pgdecomp-etcd-watchdog",
        ])
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn etcd watchdog")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
