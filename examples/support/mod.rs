//! Shared by the end-to-end benchmarks: a private Mosquitto and the release binary.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Mosquitto on a free loopback port, killed when dropped.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn mosquitto(dir: &Path) -> Mosquitto {
    let port = wallscope::broker::free_port("127.0.0.1").unwrap();
    let conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
         max_inflight_messages 0\npersistence false\nuser root\n"
    );
    std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Mosquitto { child, port }
}

/// The release `wallscope` binary beside the running example.
pub fn wallscope_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("wallscope")
}
