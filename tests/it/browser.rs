//! The dashboard in headless Chromium (Debian's `chromium` and `chromium-driver`, which
//! `./scripts/test` installs): the device page of a simulated F01 charger shows plots with
//! data, the F01 finding with its steps, and a drag across a plot zooms the range; the fleet
//! page lists the chargers. Screenshots go to `$CARGO_TARGET_TMPDIR/screenshots/`.
//!
//! Driven over the W3C WebDriver protocol (plain JSON over HTTP to chromedriver), so the
//! test needs no client library.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::api::{Server, token};
use crate::harness::{free_port, run, stderr};

struct Driver {
    child: Child,
    base: String,
    session: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self
            .rt
            .block_on(async { self.http.delete(url).send().await });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// WebDriver speaks JSON both ways.
async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    let b = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("POST {url}: {e}: {}", String::from_utf8_lossy(&b)))
}

impl Driver {
    fn start() -> Option<Driver> {
        let (Some(driver), Some(browser)) = (which("chromedriver"), which("chromium")) else {
            assert!(
                std::env::var_os("WALLSCOPE_SKIP_BROWSER").is_some(),
                "the browser test needs Debian's chromium and chromium-driver (./scripts/test installs them; WALLSCOPE_SKIP_BROWSER=1 skips this test)"
            );
            return None;
        };
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let http = {
            let _in = rt.enter();
            super::api::client(None)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = rt
                .block_on(async { http.get(format!("{base}/status")).send().await })
                .is_ok();
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1300"],
            },
        }}});
        let r = rt.block_on(post_json(&http, &format!("{base}/session"), &caps));
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Some(Driver {
            child,
            base,
            session,
            rt,
            http,
        })
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let r = match method {
            "GET" => self.rt.block_on(async {
                let b = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                serde_json::from_slice::<Value>(&b).unwrap()
            }),
            _ => self.rt.block_on(post_json(&self.http, &url, &body)),
        };
        if r["value"].get("error").is_some() {
            panic!("WebDriver {path}: {}", r["value"]);
        }
        r["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Polls `script` (which returns a value) until `ok` holds or 60 s pass.
    fn wait_for(&self, what: &str, script: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.js(script);
            if ok(&v) {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.js("return document.body.innerText.slice(0, 2000)");
                panic!("timed out waiting for {what}: last {v}; page: {page}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&self, to: &Path) {
        use base64::Engine;
        let b64 = self.cmd("GET", "/screenshot", json!({}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
        eprintln!("screenshot: {}", to.display());
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|x| x.as_str())
            .unwrap()
            .to_string()
    }
}

#[test]
fn the_device_page_shows_plots_the_f01_finding_and_zooms() {
    let Some(d) = Driver::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cap = tmp.path().join("fleet.jsonl");
    let o = run(
        tmp.path(),
        &[
            "simulate",
            "--devices",
            "4",
            "--duration",
            "2d",
            "--seed",
            "11",
            "--fault",
            "F01",
            "--poll-interval",
            "10s",
            "--no-quirks",
            "--out",
            cap.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let labels = std::fs::read_to_string(tmp.path().join("labels.csv")).unwrap();
    let f01 = labels
        .lines()
        .find(|l| l.contains("F01"))
        .and_then(|l| l.split(',').next())
        .unwrap()
        .to_string();
    let data = tmp.path().join("data");
    let o = run(&data, &["import", cap.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(tmp.path().join("devices.csv"), data.join("devices.csv")).unwrap();
    let t = token(&data, "browser", "operator");
    let s = Server::start(&data, &[]);

    // The token arrives in the address, as `demo --serve` prints it, and leaves it at once.
    d.go(&format!("{}/#token={t}", s.base));
    d.wait_for(
        "the fleet page",
        "return document.querySelectorAll('#devices tbody tr').length",
        |v| v.as_u64() == Some(4),
    );
    // The server evaluates the rules over the imported store at start; the page follows.
    d.wait_for(
        "the F01 charger counted as faulted",
        "const t = document.querySelector('.tile.faulted[data-status=\"faulted\"] b'); return t ? +t.textContent : -1",
        |v| v.as_i64() == Some(1),
    );
    let hash = d.js("return location.hash");
    assert!(!hash.as_str().unwrap().contains("token"), "{hash}");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    d.screenshot(&shots.join("fleet.png"));

    d.js(&format!("location.hash = '#/device/{f01}'; return 1"));
    let points = d.wait_for(
        "five plots with data",
        "return Array.from(document.querySelectorAll('.plot[data-points]')).map(e => +e.dataset.points)",
        |v| v.as_array().is_some_and(|a| a.len() == 5 && a.iter().all(|x| x.as_u64() > Some(0))),
    );
    eprintln!("points per plot: {points}");
    let steps = d.wait_for(
        "the F01 finding with its steps",
        "const f = document.querySelector('.finding[data-fault=\"F01\"]'); return f ? f.querySelectorAll('.steps li').length : 0",
        |v| v.as_u64() >= Some(2),
    );
    assert!(steps.as_u64() >= Some(2));
    let text = d.js("return document.querySelector('.finding[data-fault=\"F01\"]').innerText");
    assert!(
        text.as_str().unwrap().to_lowercase().contains("customer"),
        "{text}"
    );
    d.screenshot(&shots.join("device.png"));

    // Zoom: drag across the first plot; the range narrows and the plots refill.
    let before =
        d.js("const r = document.getElementById('range').dataset; return [+r.from, +r.to]");
    let over = d.element(".plot .u-over");
    let origin = json!({"element-6066-11e4-a52e-4f735466cecf": over});
    d.cmd(
        "POST",
        "/actions",
        json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
            {"type": "pointerMove", "duration": 0, "origin": origin, "x": -200, "y": 0},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerMove", "duration": 200, "origin": origin, "x": 100, "y": 0},
            {"type": "pointerUp", "button": 0},
        ]}]}),
    );
    let after = d.wait_for(
        "the zoomed range",
        "const r = document.getElementById('range').dataset; return [+r.from, +r.to]",
        |v| v != &before,
    );
    let span = |v: &Value| v[1].as_f64().unwrap() - v[0].as_f64().unwrap();
    assert!(
        span(&after) < span(&before) / 2.0,
        "zoom {before} → {after}"
    );
    d.wait_for(
        "plots refilled after the zoom",
        "return Array.from(document.querySelectorAll('.plot[data-points]')).map(e => +e.dataset.points)",
        |v| v.as_array().is_some_and(|a| a.len() == 5 && a.iter().any(|x| x.as_u64() > Some(0))),
    );
    d.screenshot(&shots.join("device-zoomed.png"));
}
