//! Publishing into a broker: the demo's simulated fleet and replays go through real MQTT.
//!
//! QoS 1 with a bounded in-flight window; [`Publisher::finish`] returns once the broker has
//! acknowledged every message. Connection loss is retried: rumqttc resends unacknowledged
//! publishes on the resumed session ([`Publisher`]); the bulk [`BatchPublisher`] reconnects
//! and resends them itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::{BrokerUrl, IngestError};

/// A QoS 1 publisher with its eventloop on a task.
pub struct Publisher {
    client: AsyncClient,
    published: u64,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Connects (lazily) to a plain-TCP broker. `inflight` bounds unacknowledged publishes.
    pub fn start(broker: &BrokerUrl, client_id: &str, inflight: u16) -> Result<Self, IngestError> {
        if broker.tls {
            return Err(IngestError::Config(
                "publishing supports mqtt:// brokers only".into(),
            ));
        }
        let mut o = MqttOptions::new(client_id, &broker.host, broker.port);
        o.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(16 << 20, 16 << 20)
            .set_inflight(inflight.max(1))
            .set_pending_throttle(Duration::ZERO);
        let (client, mut eventloop) = AsyncClient::new(o, 4096);
        let acked = Arc::new(AtomicU64::new(0));
        let a = acked.clone();
        let name = broker.redacted();
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => failures = 0,
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(e) => {
                        tracing::warn!(broker = %name, error = %e, "publisher connection failed; retrying");
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(super::backoff_ms(
                            failures, 50, 2000,
                        )))
                        .await;
                    }
                }
            }
        });
        Ok(Publisher {
            client,
            published: 0,
            acked,
            task,
        })
    }

    /// Queues one message (waits while the request channel is full).
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), IngestError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| IngestError::Config(format!("publisher stopped: {e}")))?;
        self.published += 1;
        Ok(())
    }

    pub fn published(&self) -> u64 {
        self.published
    }

    /// Messages the broker has acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until the broker acknowledged everything published so far (at most `timeout`).
    pub async fn wait_all_acked(&self, timeout: Duration) -> Result<(), IngestError> {
        wait_acked(&self.acked, self.published, timeout).await
    }

    /// Waits until the broker acknowledged everything published (at most `timeout`), then
    /// disconnects. Returns how many were acknowledged.
    pub async fn finish(self, timeout: Duration) -> Result<u64, IngestError> {
        wait_acked(&self.acked, self.published, timeout).await?;
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
        Ok(self.acked.load(Ordering::Relaxed))
    }
}

/// A QoS 1 publisher for bulk replays: writes PUBLISH packets into one buffer and sends it
/// with one write per batch, with at most `inflight` unacknowledged. rumqttc's event loop
/// flushes the socket after every single publish (one syscall per message), which halves
/// the rate a replay can reach; this writes the same packets (rumqttc's encoder) in bulk.
///
/// Clean session, no keep-alive pings (a replay may pause longer than any keep-alive). A
/// lost connection is re-established (backoff up to [`RECONNECT_MAX_BACKOFF_MS`], for at most
/// `reconnect_for`) and every unacknowledged publish is sent again with DUP set, in the
/// order it was first sent: at-least-once across broker restarts. Past `reconnect_for` the
/// replay ends with an error that says how far it got.
pub struct BatchPublisher {
    broker: BrokerUrl,
    client_id: String,
    name: String,
    writer: tokio::net::tcp::OwnedWriteHalf,
    buf: bytes::BytesMut,
    next_pkid: u16,
    inflight: Arc<InFlight>,
    /// Window slots taken from `inflight.window` and not yet used.
    credit: u32,
    /// The window's size.
    window: u32,
    published: u64,
    reconnects: u64,
    reconnect_for: Duration,
    reader: tokio::task::JoinHandle<Result<(), IngestError>>,
    /// Signalled when this connection's reader ends (EOF or error).
    dead: Arc<tokio::sync::Notify>,
}

/// Longest wait for a quarter of a full window to come free before sending again.
const RESUME_WAIT: Duration = Duration::from_millis(1);
/// Bytes buffered before a write even when the window has room.
const BATCH_BYTES: usize = 256 << 10;
const MAX_PACKET: usize = 16 << 20;
/// Longest wait between two reconnect attempts.
pub const RECONNECT_MAX_BACKOFF_MS: u64 = 2000;
/// How long a replay keeps trying to reconnect before it gives up.
pub const DEFAULT_RECONNECT_FOR: Duration = Duration::from_secs(60);

/// What the publisher and its PUBACK reader share, across reconnects.
struct InFlight {
    /// One permit per message that may still be sent before an acknowledgement.
    window: tokio::sync::Semaphore,
    /// Every publish not yet acknowledged, encoded: pkid → (publish number, packet). The
    /// publish number orders resends; the map's size is what is outstanding.
    unacked: std::sync::Mutex<HashMap<u16, (u64, bytes::Bytes)>>,
}

impl InFlight {
    fn outstanding(&self) -> u64 {
        self.unacked.lock().map_or(0, |u| u.len() as u64)
    }
}

type Connection = (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
    bytes::BytesMut,
);

impl BatchPublisher {
    /// Connects to a plain-TCP broker and waits for its CONNACK.
    pub async fn connect(
        broker: &BrokerUrl,
        client_id: &str,
        inflight: u16,
    ) -> Result<Self, IngestError> {
        if broker.tls {
            return Err(IngestError::Config(
                "publishing supports mqtt:// brokers only".into(),
            ));
        }
        let name = broker.redacted();
        let (rd, wr, inbuf) = open(broker, client_id).await?;
        let shared = Arc::new(InFlight {
            window: tokio::sync::Semaphore::new(inflight.max(1) as usize),
            unacked: std::sync::Mutex::new(HashMap::new()),
        });
        let dead = Arc::new(tokio::sync::Notify::new());
        let reader = spawn_reader(rd, inbuf, name.clone(), shared.clone(), dead.clone());
        Ok(BatchPublisher {
            broker: broker.clone(),
            client_id: client_id.to_string(),
            name,
            writer: wr,
            buf: bytes::BytesMut::with_capacity(BATCH_BYTES * 2),
            next_pkid: 0,
            inflight: shared,
            credit: 0,
            window: u32::from(inflight.max(1)),
            published: 0,
            reconnects: 0,
            reconnect_for: DEFAULT_RECONNECT_FOR,
            reader,
            dead,
        })
    }

    /// How long to keep trying after the connection is lost (0: fail at once).
    pub fn set_reconnect_for(&mut self, d: Duration) {
        self.reconnect_for = d;
    }

    fn lost(&self, e: impl std::fmt::Display) -> IngestError {
        IngestError::Config(format!(
            "lost the connection to broker {} after {} messages ({} acknowledged): {e}",
            self.name,
            self.published,
            self.acked()
        ))
    }

    /// Re-establishes the connection after `why` and sends every unacknowledged publish
    /// again (DUP set), oldest first. Fails once `reconnect_for` has passed, or at once when
    /// the broker refuses the connection (it will not change its mind).
    async fn reconnect(&mut self, why: String) -> Result<(), IngestError> {
        use tokio::io::AsyncWriteExt;
        self.reader.abort();
        self.buf.clear(); // everything buffered is in `unacked` and goes out again below
        let deadline = tokio::time::Instant::now() + self.reconnect_for;
        tracing::warn!(broker = %self.name, published = self.published, acked = self.acked(),
            error = %why, "replay lost its broker connection; reconnecting");
        let mut attempt = 0u32;
        let mut last = why.clone();
        loop {
            if attempt > 0 {
                let wait = super::backoff_ms(attempt, 50, RECONNECT_MAX_BACKOFF_MS);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.lost(format!(
                    "{why}; not reconnected within {} s (last error: {last})",
                    self.reconnect_for.as_secs()
                )));
            }
            attempt += 1;
            let (rd, wr, inbuf) = match open(&self.broker, &self.client_id).await {
                Ok(c) => c,
                Err(e @ IngestError::Refused { .. }) => return Err(e),
                Err(e) => {
                    tracing::debug!(broker = %self.name, attempt, error = %e, "reconnect failed");
                    last = e.to_string();
                    continue;
                }
            };
            self.writer = wr;
            self.dead = Arc::new(tokio::sync::Notify::new());
            self.reader = spawn_reader(
                rd,
                inbuf,
                self.name.clone(),
                self.inflight.clone(),
                self.dead.clone(),
            );
            let mut resend: Vec<(u64, bytes::Bytes)> = self
                .inflight
                .unacked
                .lock()
                .map_err(|_| self.lost("publisher state poisoned"))?
                .values()
                .cloned()
                .collect();
            resend.sort_unstable_by_key(|(seq, _)| *seq);
            for (_, p) in &resend {
                let at = self.buf.len();
                self.buf.extend_from_slice(p);
                self.buf[at] |= 0x08; // DUP: a redelivery (MQTT 3.1.1 §3.3.1.1)
            }
            let r = self.writer.write_all(&self.buf).await;
            self.buf.clear();
            match r {
                Ok(()) => {
                    self.reconnects += 1;
                    tracing::info!(broker = %self.name, resent = resend.len(), attempt,
                        "replay reconnected");
                    return Ok(());
                }
                Err(e) => {
                    self.reader.abort();
                    last = e.to_string();
                }
            }
        }
    }

    /// Adds every free window slot to `credit`.
    fn take_free_slots(&mut self) {
        let free = self.inflight.window.available_permits() as u32;
        if free > 0
            && let Ok(p) = self.inflight.window.try_acquire_many(free)
        {
            p.forget();
            self.credit += free;
        }
    }

    /// Queues one message; sends the buffer when it is large or the window is full.
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), IngestError> {
        // A window slot is given back by the reader, one per PUBACK: permits are forgotten
        // once taken, and taken in bulk — every free slot at once.
        if self.credit == 0 {
            self.take_free_slots();
        }
        while self.credit == 0 {
            // The window is full: what is buffered must go out for acks to come back. The
            // reader frees slots once per read (all the acks it brought), and the wait
            // below takes them all, so one wake and one write carry many messages.
            self.flush().await?;
            let (inflight, dead) = (self.inflight.clone(), self.dead.clone());
            tokio::select! {
                p = inflight.window.acquire() => {
                    p.map_err(|e| self.lost(e))?.forget();
                    self.credit = 1;
                    // Resume at a low-water mark, not at the first ack: when acks trickle
                    // in one read at a time, resuming at once settles into one small write
                    // per wake, which costs the broker twice the CPU per message. The wait
                    // for a quarter of the window is short because a broker with Nagle's
                    // algorithm on (Mosquitto's default) holds its PUBACKs until our next
                    // segment acknowledges the last one.
                    let want = (self.window / 4).saturating_sub(1);
                    if want > 0
                        && let Ok(Ok(p)) =
                            tokio::time::timeout(RESUME_WAIT, inflight.window.acquire_many(want))
                                .await
                    {
                        p.forget();
                        self.credit += want;
                    }
                    self.take_free_slots();
                }
                _ = dead.notified() => {
                    self.reconnect("the broker closed the connection".into()).await?;
                }
            }
        }
        self.credit -= 1;
        self.next_pkid = self.next_pkid % u16::MAX + 1;
        let mut p = rumqttc::Publish::new(topic, QoS::AtLeastOnce, payload);
        p.pkid = self.next_pkid;
        let at = self.buf.len();
        rumqttc::Packet::Publish(p)
            .write(&mut self.buf, MAX_PACKET)
            .map_err(|e| IngestError::Config(format!("encoding PUBLISH on {topic}: {e}")))?;
        let packet = bytes::Bytes::copy_from_slice(&self.buf[at..]);
        self.inflight
            .unacked
            .lock()
            .map_err(|_| self.lost("publisher state poisoned"))?
            .insert(self.next_pkid, (self.published, packet));
        self.published += 1;
        if self.buf.len() >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what is buffered (call before waiting on anything else).
    pub async fn flush(&mut self) -> Result<(), IngestError> {
        use tokio::io::AsyncWriteExt;
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = if self.reader.is_finished() {
            Err("the broker closed the connection".to_string())
        } else {
            self.writer
                .write_all(&self.buf)
                .await
                .map_err(|e| e.to_string())
        };
        self.buf.clear();
        match r {
            Ok(()) => Ok(()),
            Err(why) => self.reconnect(why).await,
        }
    }

    pub fn published(&self) -> u64 {
        self.published
    }

    pub fn acked(&self) -> u64 {
        self.published - self.inflight.outstanding()
    }

    /// Times the connection was lost and re-established.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Sends the rest, waits until the broker acknowledged everything (at most `timeout`),
    /// then disconnects. Returns how many were acknowledged.
    pub async fn finish(mut self, timeout: Duration) -> Result<u64, IngestError> {
        use tokio::io::AsyncWriteExt;
        self.flush().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.acked() < self.published {
            if self.reader.is_finished() {
                self.reconnect("the broker closed the connection".into())
                    .await?;
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(IngestError::Config(format!(
                    "the broker acknowledged {} of {} published messages within {timeout:?}",
                    self.acked(),
                    self.published
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut bye = bytes::BytesMut::new();
        let _ = rumqttc::Packet::Disconnect.write(&mut bye, MAX_PACKET);
        let _ = self.writer.write_all(&bye).await;
        let _ = self.writer.shutdown().await;
        self.reader.abort();
        Ok(self.acked())
    }
}

/// Opens a TCP connection, sends CONNECT (clean session, the longest keep-alive) and waits
/// for a successful CONNACK.
async fn open(broker: &BrokerUrl, client_id: &str) -> Result<Connection, IngestError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let name = broker.redacted();
    let io = |e: std::io::Error| IngestError::Config(format!("broker {name}: {e}"));
    let stream = tokio::net::TcpStream::connect((broker.host.as_str(), broker.port))
        .await
        .map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let (mut rd, mut wr) = stream.into_split();
    let mut connect = rumqttc::Connect::new(client_id);
    // The longest keep-alive there is (18 h), not 0: this publisher sends no PINGREQs,
    // and rumqttd (the embedded broker) refuses a CONNECT without keep-alive.
    connect.keep_alive = u16::MAX;
    connect.clean_session = true;
    let mut buf = bytes::BytesMut::new();
    rumqttc::Packet::Connect(connect)
        .write(&mut buf, MAX_PACKET)
        .map_err(|e| IngestError::Config(format!("encoding CONNECT: {e}")))?;
    wr.write_all(&buf).await.map_err(io)?;
    let mut inbuf = bytes::BytesMut::with_capacity(64 << 10);
    let connack = loop {
        match rumqttc::Packet::read(&mut inbuf, MAX_PACKET) {
            Ok(p) => break p,
            Err(rumqttc::Error::InsufficientBytes(_)) => {
                if rd.read_buf(&mut inbuf).await.map_err(io)? == 0 {
                    return Err(IngestError::Config(format!(
                        "broker {name} closed the connection before CONNACK"
                    )));
                }
            }
            Err(e) => return Err(IngestError::Config(format!("broker {name}: {e}"))),
        }
    };
    match connack {
        rumqttc::Packet::ConnAck(a) if a.code == rumqttc::ConnectReturnCode::Success => {
            Ok((rd, wr, inbuf))
        }
        rumqttc::Packet::ConnAck(a) => Err(IngestError::Refused {
            broker: name,
            reason: format!("{:?}", a.code),
        }),
        other => Err(IngestError::Config(format!(
            "broker {name} answered CONNECT with {other:?}"
        ))),
    }
}

/// Reads PUBACKs: each one for a publish still unacknowledged frees one window slot (a
/// duplicate ack, possible after a resend, frees none). Signals `dead` when it ends.
fn spawn_reader(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut inbuf: bytes::BytesMut,
    name: String,
    inflight: Arc<InFlight>,
    dead: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<Result<(), IngestError>> {
    use tokio::io::AsyncReadExt;
    tokio::spawn(async move {
        // Slots freed by the acks of one read, given back together: one wake of the
        // publisher per read, not one per ack (which cost a context switch per message).
        let mut freed = 0usize;
        let r = loop {
            match rumqttc::Packet::read(&mut inbuf, MAX_PACKET) {
                Ok(rumqttc::Packet::PubAck(a)) => {
                    let known = inflight
                        .unacked
                        .lock()
                        .is_ok_and(|mut u| u.remove(&a.pkid).is_some());
                    if known {
                        freed += 1;
                    }
                }
                Ok(_) => {}
                Err(rumqttc::Error::InsufficientBytes(_)) => {
                    if freed > 0 {
                        inflight.window.add_permits(std::mem::take(&mut freed));
                    }
                    // Without spare room `read_buf` reads 64 bytes at a time.
                    inbuf.reserve(64 << 10);
                    match rd.read_buf(&mut inbuf).await {
                        Ok(0) => break Ok(()),
                        Ok(_) => {}
                        Err(e) => break Err(IngestError::Config(format!("broker {name}: {e}"))),
                    }
                }
                Err(e) => break Err(IngestError::Config(format!("broker {name}: {e}"))),
            }
        };
        inflight.window.add_permits(freed);
        dead.notify_one();
        r
    })
}

/// Waits until `acked` reaches `published` (at most `timeout`).
async fn wait_acked(
    acked: &AtomicU64,
    published: u64,
    timeout: Duration,
) -> Result<(), IngestError> {
    let deadline = tokio::time::Instant::now() + timeout;
    while acked.load(Ordering::Relaxed) < published {
        if tokio::time::Instant::now() >= deadline {
            return Err(IngestError::Config(format!(
                "the broker acknowledged {} of {published} published messages within {timeout:?}",
                acked.load(Ordering::Relaxed)
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}
