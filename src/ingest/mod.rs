//! The MQTT source: one persistent QoS 1 session, deliveries out, acks back in receive order.
//!
//! Contract:
//! - Subscribes with QoS 1 on a persistent session (`clean_session = false`, a stable client
//!   id) and hands every PUBLISH to the caller as a [`Delivery`] carrying an [`AckToken`].
//! - A PUBACK goes to the broker only when the caller returns the token, which the pipeline
//!   does after the store has made the message durable. Tokens must come back in delivery
//!   order; they are acked in that order.
//! - Acks belong to one connection. When a connection drops, tokens of the old connection are
//!   discarded when they come back (the broker redelivers those messages on the resumed
//!   session and the store drops the duplicates), so an ack can never land on a packet id the
//!   broker has since given to another message.
//! - The poll loop never blocks on the pipeline: deliveries go out on an unbounded channel,
//!   and memory is bounded by [`MqttConfig::max_pending_messages`] and
//!   [`MqttConfig::max_pending_bytes`] — at either, the loop stops polling (each poll yields
//!   at most one delivery), so TCP and the broker's in-flight window hold the rest.
//! - Connection failures reconnect with capped exponential backoff; refusals that retrying
//!   cannot fix (credentials, TLS trust, client id) end the source with one clear error.
//!   Secrets never appear in errors or logs.

mod metrics;
pub mod publish;
mod settings;
mod tls;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Outgoing, Packet, PubAck,
    QoS, StateError, SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::model::Message;

pub use metrics::{
    Counter, IngestMetrics, MetricsSnapshot, STATUS_FILE, read_status, write_status,
};
pub use settings::{BrokerUrl, MqttConfig, Secret, default_client_id};
pub use tls::pem_certs;

/// Errors that end the source (everything else is retried).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Config(String),
    #[error("broker {broker} refused the connection: {reason}")]
    Refused { broker: String, reason: String },
    #[error("TLS with broker {broker} failed: {reason}")]
    Tls { broker: String, reason: String },
    #[error(
        "broker {broker} refused the subscription to {topic:?} (is this client allowed to read it?)"
    )]
    Subscription { broker: String, topic: String },
}

/// One received message and the token that acks it.
#[derive(Debug)]
pub struct Delivery {
    pub message: Message,
    pub ack: AckToken,
}

/// Returned to the source once the message is durable. Opaque outside this module.
#[derive(Debug, Clone, Copy)]
pub struct AckToken {
    connection: u64,
    pkid: u16,
    qos: QoS,
    bytes: u32,
    received_at_ms: i64,
}

impl AckToken {
    /// When the message arrived (what ack latency is measured from).
    pub fn received_at_ms(&self) -> i64 {
        self.received_at_ms
    }
}

/// The caller's side of a running source: deliveries to read, and the task to join. The
/// matching [`AckSender`] comes from [`MqttSource::start`]; dropping it tells the source that
/// nothing more will become durable, and the source ends.
pub struct MqttSource {
    pub deliveries: mpsc::UnboundedReceiver<Delivery>,
    pub task: tokio::task::JoinHandle<Result<(), IngestError>>,
}

impl MqttSource {
    /// Starts the poll loop on the current runtime (it connects on its first poll). When
    /// `stop` turns true the source stops reading; it ends once every delivered token has
    /// come back and the acks are flushed, or once the [`AckSender`] is dropped.
    pub fn start(
        cfg: MqttConfig,
        metrics: Arc<IngestMetrics>,
        clock: Arc<dyn Clock>,
        stop: watch::Receiver<bool>,
    ) -> Result<(MqttSource, AckSender), IngestError> {
        let options = cfg.mqtt_options()?;
        // The request channel only carries the subscription and the disconnect: acks are
        // written by the poll loop directly (see `write_acks`).
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_connection_timeout(cfg.connect_timeout().as_secs());
        eventloop.set_network_options(net);
        let (dtx, drx) = mpsc::unbounded_channel();
        let (atx, arx) = mpsc::unbounded_channel();
        let lp = PollLoop {
            cfg,
            client,
            eventloop,
            deliveries: dtx,
            acks_in: arx,
            metrics,
            clock,
            stop,
            connection: 0,
            connected: false,
            ever_connected: false,
            outstanding_msgs: 0,
            outstanding_bytes: 0,
            to_ack: VecDeque::new(),
            failures: 0,
        };
        let task = tokio::spawn(lp.run());
        Ok((
            MqttSource {
                deliveries: drx,
                task,
            },
            AckSender(atx),
        ))
    }

    /// Waits for a poll loop to end and returns how it ended.
    pub async fn join(
        task: tokio::task::JoinHandle<Result<(), IngestError>>,
    ) -> Result<(), IngestError> {
        task.await
            .unwrap_or_else(|e| Err(IngestError::Config(format!("MQTT poll loop panicked: {e}"))))
    }
}

/// Returns ack tokens to the source.
#[derive(Clone)]
pub struct AckSender(mpsc::UnboundedSender<Vec<AckToken>>);

impl AckSender {
    /// Hands back tokens whose messages are durable, in delivery order.
    pub fn ack(&self, tokens: Vec<AckToken>) {
        if !tokens.is_empty() {
            // A closed source has already dropped its connection: nothing left to ack.
            let _ = self.0.send(tokens);
        }
    }
}

struct PollLoop {
    cfg: MqttConfig,
    client: AsyncClient,
    eventloop: EventLoop,
    deliveries: mpsc::UnboundedSender<Delivery>,
    acks_in: mpsc::UnboundedReceiver<Vec<AckToken>>,
    metrics: Arc<IngestMetrics>,
    clock: Arc<dyn Clock>,
    stop: watch::Receiver<bool>,
    /// Counts connections; tokens carry the one they arrived on.
    connection: u64,
    connected: bool,
    ever_connected: bool,
    /// Delivered and not yet returned.
    outstanding_msgs: usize,
    outstanding_bytes: usize,
    /// Returned tokens of the live connection whose PUBACKs are not yet written.
    to_ack: VecDeque<AckToken>,
    /// Consecutive failed connection attempts (drives the backoff).
    failures: u32,
}

enum Step {
    Event(Result<Event, ConnectionError>),
    Acks(Option<Vec<AckToken>>),
    Stop,
}

impl PollLoop {
    async fn run(mut self) -> Result<(), IngestError> {
        let mut acks_open = true;
        let mut stop_seen = false;
        loop {
            if let Err(e) = self.write_acks().await {
                self.on_error(e).await?;
                continue;
            }
            let stopping = stop_seen || *self.stop.borrow();
            if stopping && self.outstanding_msgs == 0 {
                break;
            }
            if !acks_open {
                // Nothing more can become durable: whatever was not acked will be redelivered.
                break;
            }
            let full = self.outstanding_msgs >= self.cfg.max_pending_messages
                || self.outstanding_bytes >= self.cfg.max_pending_bytes;
            // Each poll yields at most one delivery, so not polling while the window is full
            // makes it a hard bound. Acks do not need polls: they are written directly.
            let want_poll = !stopping && !full;
            self.metrics.set_paused(full && !stopping);
            let step = tokio::select! {
                biased;
                a = self.acks_in.recv(), if acks_open => Step::Acks(a),
                _ = self.stop.changed(), if !stopping => Step::Stop,
                // Dropping a pending poll when acks arrive is safe here: reads keep partial
                // frames in the codec buffer, and with manual acks the read path writes nothing.
                e = self.eventloop.poll(), if want_poll => Step::Event(e),
                else => break,
            };
            match step {
                Step::Acks(Some(tokens)) => self.returned(tokens),
                Step::Acks(None) => acks_open = false,
                // A dropped sender also means stop.
                Step::Stop => {
                    stop_seen = stop_seen || self.stop.has_changed().is_err() || *self.stop.borrow()
                }
                Step::Event(Ok(ev)) => self.on_event(ev)?,
                Step::Event(Err(e)) => self.on_error(e).await?,
            }
        }
        self.disconnect().await;
        Ok(())
    }

    fn returned(&mut self, tokens: Vec<AckToken>) {
        for t in tokens {
            self.outstanding_msgs = self.outstanding_msgs.saturating_sub(1);
            self.outstanding_bytes = self.outstanding_bytes.saturating_sub(t.bytes as usize);
            if t.connection != self.connection || !self.connected {
                // Its connection is gone; the broker redelivers it and dedup absorbs the copy.
                self.metrics.acks_dropped_stale.inc();
                continue;
            }
            if t.qos == QoS::AtMostOnce {
                continue;
            }
            self.to_ack.push_back(t);
        }
        self.metrics
            .set_pending(self.outstanding_msgs, self.outstanding_bytes);
    }

    /// Writes PUBACKs for every returned token of the live connection straight onto the
    /// connection, then flushes once: one syscall per committed batch instead of one per
    /// message (rumqttc flushes each ack request on its own). With manual acks rumqttc keeps
    /// no state for incoming QoS 1 packet ids, so writing them here leaves its state exact.
    /// Only this task touches the event loop, so the connection cannot change underneath.
    async fn write_acks(&mut self) -> Result<(), ConnectionError> {
        if self.to_ack.is_empty() {
            return Ok(());
        }
        let Some(net) = self.eventloop.network.as_mut() else {
            // Not connected: the broker redelivers these on the resumed session.
            self.metrics
                .acks_dropped_stale
                .add(self.to_ack.len() as u64);
            self.to_ack.clear();
            return Ok(());
        };
        let n = self.to_ack.len() as u64;
        let acks = &mut self.to_ack;
        let write = async {
            for t in acks.drain(..) {
                net.write(Packet::PubAck(PubAck::new(t.pkid))).await?;
            }
            net.flush().await
        };
        match tokio::time::timeout(self.cfg.connect_timeout(), write).await {
            Ok(Ok(())) => {
                self.metrics.acked.add(n);
                Ok(())
            }
            Ok(Err(e)) => Err(ConnectionError::MqttState(e)),
            Err(_) => Err(ConnectionError::FlushTimeout),
        }
    }

    fn on_event(&mut self, ev: Event) -> Result<(), IngestError> {
        match ev {
            Event::Incoming(Packet::Publish(p)) => {
                let bytes = p.payload.len();
                let received_at_ms = self.clock.now_ms();
                let token = AckToken {
                    connection: self.connection,
                    pkid: p.pkid,
                    qos: p.qos,
                    bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
                    received_at_ms,
                };
                self.metrics.received.inc();
                self.metrics.received_bytes.add(bytes as u64);
                if p.dup {
                    self.metrics.redelivered.inc();
                }
                self.outstanding_msgs += 1;
                self.outstanding_bytes += bytes;
                self.metrics
                    .set_pending(self.outstanding_msgs, self.outstanding_bytes);
                let message = Message {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                    received_at_ms,
                    recorded: false,
                };
                if self
                    .deliveries
                    .send(Delivery {
                        message,
                        ack: token,
                    })
                    .is_err()
                {
                    // The pipeline has gone; the unacked message stays with the broker.
                    self.outstanding_msgs -= 1;
                    self.outstanding_bytes -= bytes;
                }
            }
            Event::Incoming(Packet::ConnAck(ack)) => {
                self.connected = true;
                self.failures = 0;
                self.metrics.connections.inc();
                let broker = self.cfg.broker.redacted();
                if ack.session_present {
                    tracing::info!(%broker, client_id = %self.cfg.client_id, "connected; session resumed");
                } else {
                    self.metrics.sessions_lost.inc();
                    if self.ever_connected {
                        tracing::warn!(%broker, client_id = %self.cfg.client_id,
                            "broker has no session for us after a reconnect: messages published while we were away may be lost");
                    } else {
                        tracing::info!(%broker, client_id = %self.cfg.client_id,
                            "connected; the broker started a new session (expected on the first run of this client id, otherwise messages queued for us may have been lost)");
                    }
                    // A new session has no subscriptions: restore them.
                    let topics = self
                        .cfg
                        .topics
                        .iter()
                        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    if self.client.try_subscribe_many(topics).is_err() {
                        return Err(IngestError::Config(
                            "could not queue the subscription request".into(),
                        ));
                    }
                }
                self.ever_connected = true;
            }
            Event::Incoming(Packet::SubAck(s)) => {
                for (code, topic) in s.return_codes.iter().zip(&self.cfg.topics) {
                    if matches!(code, SubscribeReasonCode::Failure) {
                        return Err(IngestError::Subscription {
                            broker: self.cfg.broker.redacted(),
                            topic: topic.clone(),
                        });
                    }
                }
                self.metrics.subscriptions.inc();
                tracing::info!(topics = ?self.cfg.topics, "subscribed with QoS 1");
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_error(&mut self, e: ConnectionError) -> Result<(), IngestError> {
        let was_connected = self.connected;
        self.connected = false;
        self.connection += 1;
        // Acks not yet written belong to the dead connection.
        self.to_ack.clear();
        // A failed ack write leaves rumqttc's connection in place: drop it so the next poll
        // reconnects (rumqttc does the same itself for errors inside `poll`).
        if self.eventloop.network.is_some() {
            self.eventloop.clean();
        }
        // Publishes read before the failure but not yet handed out belong to the dead
        // connection; the broker redelivers them on the resumed session.
        self.eventloop.state.events.clear();
        if let Some(fatal) = self.fatal(&e) {
            return Err(fatal);
        }
        if matches!(e, ConnectionError::RequestsDone) {
            // Cannot happen while we hold the client; never spin on it.
            return Err(IngestError::Config("the MQTT client stopped".into()));
        }
        let broker = self.cfg.broker.redacted();
        let detail = describe(&e);
        if was_connected {
            self.metrics.reconnects.inc();
            tracing::warn!(%broker, error = %detail, "connection lost; reconnecting");
        } else {
            tracing::warn!(%broker, error = %detail, attempt = self.failures + 1, "cannot connect; retrying");
        }
        if matches!(
            e,
            ConnectionError::MqttState(StateError::Deserialization(
                rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
            ))
        ) {
            tracing::error!(
                max_packet_bytes = self.cfg.max_packet_bytes,
                "the broker sent a packet larger than max_packet_bytes; it will be redelivered forever: raise max_packet_bytes or set the broker's message_size_limit below it"
            );
        }
        let delay = backoff_ms(
            self.failures,
            self.cfg.reconnect_min_ms,
            self.cfg.reconnect_max_ms,
        );
        self.failures = self.failures.saturating_add(1);
        // Keep taking returned tokens while we wait, so the window drains.
        let sleep = tokio::time::sleep(Duration::from_millis(delay));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                a = self.acks_in.recv() => match a {
                    Some(t) => self.returned(t),
                    None => break,
                },
                _ = self.stop.changed() => break,
            }
        }
        Ok(())
    }

    fn fatal(&self, e: &ConnectionError) -> Option<IngestError> {
        let broker = self.cfg.broker.redacted();
        match e {
            ConnectionError::ConnectionRefused(code) => {
                let reason = match code {
                    ConnectReturnCode::BadUserNamePassword => {
                        "bad user name or password (check --username and the password setting)"
                    }
                    ConnectReturnCode::NotAuthorized => {
                        "not authorised (check the credentials or the broker's ACL)"
                    }
                    ConnectReturnCode::BadClientId => {
                        "client id rejected (set a shorter one with --client-id)"
                    }
                    ConnectReturnCode::RefusedProtocolVersion => {
                        "MQTT 3.1.1 is not supported by this broker"
                    }
                    // The broker is up but busy: worth retrying.
                    ConnectReturnCode::ServiceUnavailable | ConnectReturnCode::Success => {
                        return None;
                    }
                };
                Some(IngestError::Refused {
                    broker,
                    reason: reason.into(),
                })
            }
            ConnectionError::Tls(t) => {
                tls::classify(t).map(|reason| IngestError::Tls { broker, reason })
            }
            _ => None,
        }
    }

    /// Writes the last acks, then says goodbye so the broker keeps the session.
    async fn disconnect(&mut self) {
        if self.connected
            && let Err(e) = self.write_acks().await
        {
            tracing::warn!(error = %describe(&e), "could not write the last acks; the broker will redeliver those messages");
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        if self.connected && self.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout_at(deadline, async {
                loop {
                    match self.eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        self.metrics.set_paused(false);
    }
}

/// Capped exponential backoff: `min * 2^failures`, at most `max`.
pub fn backoff_ms(failures: u32, min_ms: u64, max_ms: u64) -> u64 {
    let f = failures.min(20);
    min_ms
        .saturating_mul(1u64 << f)
        .min(max_ms)
        .max(min_ms.min(max_ms))
}

/// A connection error as one line, without anything secret (rumqttc errors carry none).
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused (is the broker running and listening there?)".into()
        }
        ConnectionError::NetworkTimeout => "timed out connecting".into(),
        ConnectionError::Tls(t) => format!("TLS: {t}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(0, 100, 10_000), 100);
        assert_eq!(backoff_ms(1, 100, 10_000), 200);
        assert_eq!(backoff_ms(3, 100, 10_000), 800);
        assert_eq!(backoff_ms(10, 100, 10_000), 10_000);
        assert_eq!(backoff_ms(u32::MAX, 100, 10_000), 10_000);
    }
}
