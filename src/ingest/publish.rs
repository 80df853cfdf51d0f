//! Publishing into a broker: the demo's simulated fleet and replays go through real MQTT.
//!
//! QoS 1 with a bounded in-flight window; [`Publisher::finish`] returns once the broker has
//! acknowledged every message. Connection loss is retried: rumqttc resends unacknowledged
//! publishes on the resumed session.

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
        wait_acked(&self.acked, self.published, timeout, || Ok(())).await
    }

    /// Waits until the broker acknowledged everything published (at most `timeout`), then
    /// disconnects. Returns how many were acknowledged.
    pub async fn finish(self, timeout: Duration) -> Result<u64, IngestError> {
        wait_acked(&self.acked, self.published, timeout, || Ok(())).await?;
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
/// Clean session, no keep-alive pings (a replay may pause longer than any keep-alive), and
/// no reconnect: a lost connection ends the replay with an error that says how far it got.
pub struct BatchPublisher {
    writer: tokio::net::tcp::OwnedWriteHalf,
    buf: bytes::BytesMut,
    next_pkid: u16,
    window: Arc<tokio::sync::Semaphore>,
    acked: Arc<AtomicU64>,
    published: u64,
    reader: tokio::task::JoinHandle<Result<(), IngestError>>,
    broker: String,
}

/// Bytes buffered before a write even when the window has room.
const BATCH_BYTES: usize = 256 << 10;
const MAX_PACKET: usize = 16 << 20;

impl BatchPublisher {
    /// Connects to a plain-TCP broker and waits for its CONNACK.
    pub async fn connect(
        broker: &BrokerUrl,
        client_id: &str,
        inflight: u16,
    ) -> Result<Self, IngestError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let name = broker.redacted();
        if broker.tls {
            return Err(IngestError::Config(
                "publishing supports mqtt:// brokers only".into(),
            ));
        }
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
        let mut buf = bytes::BytesMut::with_capacity(BATCH_BYTES * 2);
        rumqttc::Packet::Connect(connect)
            .write(&mut buf, MAX_PACKET)
            .map_err(|e| IngestError::Config(format!("encoding CONNECT: {e}")))?;
        wr.write_all(&buf).await.map_err(io)?;
        buf.clear();
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
            rumqttc::Packet::ConnAck(a) if a.code == rumqttc::ConnectReturnCode::Success => {}
            rumqttc::Packet::ConnAck(a) => {
                return Err(IngestError::Refused {
                    broker: name,
                    reason: format!("{:?}", a.code),
                });
            }
            other => {
                return Err(IngestError::Config(format!(
                    "broker {name} answered CONNECT with {other:?}"
                )));
            }
        }
        let window = Arc::new(tokio::sync::Semaphore::new(inflight.max(1) as usize));
        let acked = Arc::new(AtomicU64::new(0));
        let (w, a, n) = (window.clone(), acked.clone(), name.clone());
        let reader = tokio::spawn(async move {
            loop {
                match rumqttc::Packet::read(&mut inbuf, MAX_PACKET) {
                    Ok(rumqttc::Packet::PubAck(_)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        w.add_permits(1);
                    }
                    Ok(_) => {}
                    Err(rumqttc::Error::InsufficientBytes(_)) => {
                        // Without spare room `read_buf` reads 64 bytes at a time.
                        inbuf.reserve(64 << 10);
                        match rd.read_buf(&mut inbuf).await {
                            Ok(0) => return Ok(()),
                            Ok(_) => {}
                            Err(e) => {
                                return Err(IngestError::Config(format!("broker {n}: {e}")));
                            }
                        }
                    }
                    Err(e) => return Err(IngestError::Config(format!("broker {n}: {e}"))),
                }
            }
        });
        Ok(BatchPublisher {
            writer: wr,
            buf,
            next_pkid: 0,
            window,
            acked,
            published: 0,
            reader,
            broker: name,
        })
    }

    fn lost(&self, e: impl std::fmt::Display) -> IngestError {
        IngestError::Config(format!(
            "lost the connection to broker {} after {} messages ({} acknowledged): {e}",
            self.broker,
            self.published,
            self.acked()
        ))
    }

    /// Queues one message; sends the buffer when it is large or the window is full.
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), IngestError> {
        let permit = match self.window.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // The window is full: what is buffered must go out for acks to come back.
                self.flush().await?;
                self.window
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| self.lost(e))?
            }
        };
        permit.forget(); // returned by the reader, one per PUBACK
        self.next_pkid = self.next_pkid % u16::MAX + 1;
        let mut p = rumqttc::Publish::new(topic, QoS::AtLeastOnce, payload);
        p.pkid = self.next_pkid;
        rumqttc::Packet::Publish(p)
            .write(&mut self.buf, MAX_PACKET)
            .map_err(|e| IngestError::Config(format!("encoding PUBLISH on {topic}: {e}")))?;
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
        if self.reader.is_finished() {
            return Err(self.lost("the broker closed the connection"));
        }
        let r = self.writer.write_all(&self.buf).await;
        self.buf.clear();
        r.map_err(|e| self.lost(e))
    }

    pub fn published(&self) -> u64 {
        self.published
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Sends the rest, waits until the broker acknowledged everything (at most `timeout`),
    /// then disconnects. Returns how many were acknowledged.
    pub async fn finish(mut self, timeout: Duration) -> Result<u64, IngestError> {
        use tokio::io::AsyncWriteExt;
        self.flush().await?;
        wait_acked(&self.acked, self.published, timeout, || {
            if self.reader.is_finished() {
                Err(self.lost("the broker closed the connection"))
            } else {
                Ok(())
            }
        })
        .await?;
        let mut bye = bytes::BytesMut::new();
        let _ = rumqttc::Packet::Disconnect.write(&mut bye, MAX_PACKET);
        let _ = self.writer.write_all(&bye).await;
        let _ = self.writer.shutdown().await;
        self.reader.abort();
        Ok(self.acked())
    }
}

/// Waits until `acked` reaches `published` (at most `timeout`); `alive` reports a connection
/// that can no longer deliver acks.
async fn wait_acked(
    acked: &AtomicU64,
    published: u64,
    timeout: Duration,
    alive: impl Fn() -> Result<(), IngestError>,
) -> Result<(), IngestError> {
    let deadline = tokio::time::Instant::now() + timeout;
    while acked.load(Ordering::Relaxed) < published {
        alive()?;
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
