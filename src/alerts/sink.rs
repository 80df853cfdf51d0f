//! Notification sinks: a JSON Lines file, a webhook (HTTP POST, HMAC-SHA256 signature), an
//! MQTT topic (QoS 1). Delivery is at least once from the durable outbox — the `alerts`
//! table's rows that carry a notification id — and each sink keeps an append-only log of
//! what it delivered (`alerts/sinks/<name>.log`, fsynced per line). A restart re-reads
//! both and delivers what the log lacks; a notification is sent again only when the process
//! died between the delivery and its log line, and then with the same idempotency key.
//!
//! Each sink runs on its own task with its own queue: one that is down retries with capped
//! exponential backoff and never blocks ingest, the rule engine or the other sinks. Its
//! backlog is bounded (`max_backlog`): past it, the oldest notifications are dropped,
//! logged as dropped and counted — the alerts themselves stay in the table.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::table::AlertRow;
use crate::ingest::BrokerUrl;

/// Where a sink delivers.
#[derive(Debug, Clone)]
pub enum Target {
    /// Appends one JSON object per line and fsyncs it.
    File { path: PathBuf },
    /// POSTs the JSON body; `secret` signs it (`X-Wallscope-Signature: sha256=<hex>`).
    Webhook {
        url: String,
        secret: Option<String>,
        timeout_ms: u64,
    },
    /// Publishes the JSON body with QoS 1 and waits for the broker's PUBACK.
    Mqtt {
        broker: BrokerUrl,
        topic: String,
        client_id: String,
    },
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Names the delivered log; letters, digits, '-' and '_'.
    pub name: String,
    pub target: Target,
    pub max_backlog: usize,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
}

/// A sink's counters.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dropped: AtomicU64,
    /// Refused by the receiver for good (an HTTP 4xx other than 408 and 429, three times).
    pub rejected: AtomicU64,
    pub backlog: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {name}: {problem}")]
    Config { name: String, problem: String },
    #[error("sink {name}: delivered log {path}: {source}")]
    Log {
        name: String,
        path: String,
        source: std::io::Error,
    },
}

/// One notification: an idempotency key and the JSON body every sink sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: String,
    pub body: String,
}

/// The notifications in `rows`, in the order they were assigned.
pub fn notifications(rows: &[AlertRow]) -> Vec<Notification> {
    let mut order: Vec<&str> = Vec::new();
    let mut members: std::collections::HashMap<&str, Vec<&AlertRow>> = Default::default();
    for r in rows {
        if let Some(id) = r.notification_id.as_deref() {
            let m = members.entry(id).or_default();
            if m.is_empty() {
                order.push(id);
            }
            m.push(r);
        }
    }
    order
        .into_iter()
        .map(|id| Notification {
            id: id.to_string(),
            body: body(id, &members[id]),
        })
        .collect()
}

/// The JSON body: the group's common labels and every transition in it.
pub fn body(id: &str, rows: &[&AlertRow]) -> String {
    let first = rows[0];
    let common: std::collections::BTreeMap<&String, &String> = first
        .labels
        .iter()
        .filter(|(k, v)| rows.iter().all(|r| r.labels.get(*k) == Some(*v)))
        .collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let summary = if rows.len() == 1 {
        format!(
            "[{}] {} — {}: {}",
            first.state.as_str(),
            first.key,
            first.title,
            first.summary
        )
    } else {
        format!(
            "[{}] {} × {} ({}{})",
            first.state.as_str(),
            rows.len(),
            first.title,
            keys.iter().take(5).copied().collect::<Vec<_>>().join(", "),
            if keys.len() > 5 { ", …" } else { "" }
        )
    };
    serde_json::json!({
        "notification_id": id,
        "idempotency_key": id,
        "state": first.state.as_str(),
        "rule": first.rule,
        "severity": rows.iter().map(|r| r.severity.as_str()).max_by_key(|s| crate::rules::Severity::parse(s)).unwrap_or("info"),
        "summary": summary,
        "labels": common,
        "alerts": rows.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
    })
    .to_string()
}

/// A running sink.
pub struct SinkHandle {
    pub name: String,
    pub metrics: Arc<SinkMetrics>,
    tx: mpsc::UnboundedSender<Vec<Notification>>,
    task: tokio::task::JoinHandle<()>,
}

impl SinkHandle {
    /// Queues notifications (those already delivered are skipped by the sink).
    pub fn send(&self, n: Vec<Notification>) {
        let _ = self.tx.send(n);
    }

    /// Stops taking new work and gives the backlog `grace` to drain; what is left stays in
    /// the outbox for the next run.
    pub async fn close(self, grace: Duration) {
        drop(self.tx);
        let mut task = self.task;
        if tokio::time::timeout(grace + Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        let left = self.metrics.backlog.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(sink = %self.name, left, "sink stopped with notifications undelivered; the next run delivers them");
        }
    }
}

/// Directory (in the data directory) of the sinks' delivered logs.
pub const SINKS_DIR: &str = "alerts/sinks";

fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(SINKS_DIR).join(format!("{name}.log"))
}

/// The ids a sink's log records as done (delivered, dropped or rejected).
pub fn read_log(dir: &Path, name: &str) -> std::io::Result<HashSet<String>> {
    match std::fs::read_to_string(log_path(dir, name)) {
        Ok(t) => Ok(t
            .lines()
            .filter_map(|l| l.split('\t').next())
            .filter(|id| id.starts_with('N') && id.len() == 17)
            .map(String::from)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e),
    }
}

/// Starts a sink: it first takes everything in `outbox` its log does not record, then what
/// [`SinkHandle::send`] brings. A sink added to a data directory with history
/// (`skip_history` and no log yet) starts from now: the outbox is logged as skipped rather
/// than sent, so a new webhook does not receive a year of notifications.
pub fn spawn(
    cfg: SinkConfig,
    dir: &Path,
    outbox: Vec<Notification>,
    skip_history: bool,
) -> Result<SinkHandle, SinkError> {
    let name = cfg.name.clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(SinkError::Config {
            name,
            problem: "a sink name uses letters, digits, '-' and '_' only".into(),
        });
    }
    let path = log_path(dir, &name);
    let log_err = |source: std::io::Error| SinkError::Log {
        name: name.clone(),
        path: path.display().to_string(),
        source,
    };
    let fresh = !path.exists();
    let mut done = read_log(dir, &name).map_err(log_err)?;
    if let Some(parent) = path.parent() {
        crate::store::files::create_dir_durable(parent)
            .map_err(|e| log_err(std::io::Error::other(e.to_string())))?;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(log_err)?;
    let mut outbox = outbox;
    if fresh && skip_history && !outbox.is_empty() {
        let mut lines = String::new();
        for n in outbox.drain(..) {
            lines.push_str(&format!("{}\tskipped\n", n.id));
            done.insert(n.id);
        }
        log.write_all(lines.as_bytes())
            .and_then(|_| log.sync_data())
            .map_err(log_err)?;
    }
    let deliver = Deliver::new(&cfg).map_err(|problem| SinkError::Config {
        name: name.clone(),
        problem,
    })?;
    let metrics = Arc::new(SinkMetrics::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(outbox);
    let task = tokio::spawn(worker(cfg, deliver, log, done, rx, metrics.clone()));
    Ok(SinkHandle {
        name,
        metrics,
        tx,
        task,
    })
}

enum Outcome {
    Delivered,
    /// Worth retrying (network, 5xx, 408, 429, a broker that does not ack).
    Retry(String),
    /// The receiver refuses it (a 4xx): retried a few times, then logged as rejected.
    Refused(String),
}

async fn worker(
    cfg: SinkConfig,
    mut deliver: Deliver,
    mut log: std::fs::File,
    mut done: HashSet<String>,
    mut rx: mpsc::UnboundedReceiver<Vec<Notification>>,
    m: Arc<SinkMetrics>,
) {
    let name = cfg.name.clone();
    let mut queue: VecDeque<Notification> = VecDeque::new();
    let mut queued: HashSet<String> = HashSet::new();
    let mut open = true;
    let mut failures = 0u32;
    let mut refusals = 0u32;
    let record = |log: &mut std::fs::File, id: &str, what: &str| {
        let line = format!("{id}\t{what}\n");
        if let Err(e) = log.write_all(line.as_bytes()).and_then(|_| log.sync_data()) {
            tracing::error!(sink = %name, error = %e, "cannot write the delivered log");
        }
    };
    loop {
        // Take whatever has arrived.
        loop {
            match rx.try_recv() {
                Ok(v) => {
                    for n in v {
                        if !done.contains(&n.id) && queued.insert(n.id.clone()) {
                            queue.push_back(n);
                        }
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        while queue.len() > cfg.max_backlog.max(1) {
            if let Some(n) = queue.pop_front() {
                queued.remove(&n.id);
                record(&mut log, &n.id, "dropped");
                done.insert(n.id);
                m.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = %cfg.name, "backlog over {}: dropped the oldest notification", cfg.max_backlog);
            }
        }
        m.backlog.store(queue.len() as u64, Ordering::Relaxed);
        let Some(n) = queue.front().cloned() else {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(v) => {
                    for n in v {
                        if !done.contains(&n.id) && queued.insert(n.id.clone()) {
                            queue.push_back(n);
                        }
                    }
                }
                None => return,
            }
            continue;
        };
        let outcome = deliver.send(&n).await;
        let failed = match outcome {
            Outcome::Delivered => {
                record(&mut log, &n.id, "delivered");
                m.delivered.fetch_add(1, Ordering::Relaxed);
                None
            }
            Outcome::Refused(why) if refusals >= 2 => {
                record(&mut log, &n.id, "rejected");
                m.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sink = %cfg.name, notification = %n.id, reason = %why, "the receiver refused the notification three times; giving up on it");
                None
            }
            Outcome::Refused(why) => {
                refusals += 1;
                Some(why)
            }
            Outcome::Retry(why) => Some(why),
        };
        match failed {
            None => {
                queue.pop_front();
                queued.remove(&n.id);
                done.insert(n.id);
                failures = 0;
                refusals = 0;
            }
            Some(why) => {
                failures += 1;
                m.failed_attempts.fetch_add(1, Ordering::Relaxed);
                let wait =
                    crate::ingest::backoff_ms(failures, cfg.backoff_min_ms, cfg.backoff_max_ms);
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(sink = %cfg.name, error = %why, attempt = failures, retry_in_ms = wait, "notification delivery failed; retrying");
                }
                if !open {
                    return; // closing: what is left stays in the outbox
                }
                // Keep taking new notifications while waiting, so the queue (not the
                // channel) holds the backlog and its bound applies.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    v = rx.recv() => match v {
                        Some(v) => for n in v {
                            if !done.contains(&n.id) && queued.insert(n.id.clone()) {
                                queue.push_back(n);
                            }
                        },
                        None => open = false,
                    },
                }
            }
        }
    }
}

enum Deliver {
    File {
        path: PathBuf,
        file: Option<std::fs::File>,
    },
    Webhook {
        client: reqwest::Client,
        url: String,
        secret: Option<String>,
    },
    Mqtt {
        publisher: crate::ingest::publish::Publisher,
        topic: String,
    },
}

impl Deliver {
    fn new(cfg: &SinkConfig) -> Result<Deliver, String> {
        Ok(match &cfg.target {
            Target::File { path } => Deliver::File {
                path: path.clone(),
                file: None,
            },
            Target::Webhook {
                url,
                secret,
                timeout_ms,
            } => {
                let parsed = url::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!("url {url:?}: use http:// or https://"));
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let client = reqwest::Client::builder()
                    .use_preconfigured_tls(tls)
                    .timeout(Duration::from_millis(*timeout_ms))
                    .user_agent(concat!("wallscope/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| e.to_string())?;
                Deliver::Webhook {
                    client,
                    url: url.clone(),
                    secret: secret.clone(),
                }
            }
            Target::Mqtt {
                broker,
                topic,
                client_id,
            } => Deliver::Mqtt {
                publisher: crate::ingest::publish::Publisher::start(broker, client_id, 16)
                    .map_err(|e| e.to_string())?,
                topic: topic.clone(),
            },
        })
    }

    async fn send(&mut self, n: &Notification) -> Outcome {
        match self {
            Deliver::File { path, file } => {
                let r = (|| -> std::io::Result<()> {
                    if file.is_none() {
                        if let Some(p) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                            std::fs::create_dir_all(p)?;
                        }
                        *file = Some(
                            std::fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&*path)?,
                        );
                    }
                    let f = file
                        .as_mut()
                        .ok_or_else(|| std::io::Error::other("no file"))?;
                    let mut line = n.body.clone();
                    line.push('\n');
                    let len = f.metadata()?.len();
                    // A failed write is cut back, so the retry never leaves a torn line.
                    f.write_all(line.as_bytes())
                        .and_then(|_| f.sync_data())
                        .inspect_err(|_| {
                            let _ = f.set_len(len);
                        })
                })();
                match r {
                    Ok(()) => Outcome::Delivered,
                    Err(e) => {
                        *file = None;
                        Outcome::Retry(format!("{}: {e}", path.display()))
                    }
                }
            }
            Deliver::Webhook {
                client,
                url,
                secret,
            } => {
                let mut req = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .header("idempotency-key", &n.id)
                    .body(n.body.clone());
                if let Some(s) = secret {
                    req = req.header("x-wallscope-signature", signature(s, n.body.as_bytes()));
                }
                match req.send().await {
                    Ok(resp) => {
                        let st = resp.status();
                        if st.is_success() {
                            Outcome::Delivered
                        } else if st.is_client_error() && st.as_u16() != 408 && st.as_u16() != 429 {
                            Outcome::Refused(format!("HTTP {st}"))
                        } else {
                            Outcome::Retry(format!("HTTP {st}"))
                        }
                    }
                    Err(e) => Outcome::Retry(e.to_string()),
                }
            }
            Deliver::Mqtt { publisher, topic } => {
                if let Err(e) = publisher.publish(topic, n.body.clone().into_bytes()).await {
                    return Outcome::Retry(e.to_string());
                }
                match publisher.wait_all_acked(Duration::from_secs(10)).await {
                    Ok(()) => Outcome::Delivered,
                    // rumqttc resends the unacked publish on reconnect; the retry publishes
                    // again with the same key, which the receiver deduplicates.
                    Err(e) => Outcome::Retry(e.to_string()),
                }
            }
        }
    }
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`: the receiver recomputes it to trust the body.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in tag {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        // HMAC-SHA256 test vector: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
