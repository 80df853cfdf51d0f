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

    /// Waits until the broker acknowledged everything published (at most `timeout`), then
    /// disconnects. Returns how many were acknowledged.
    pub async fn finish(self, timeout: Duration) -> Result<u64, IngestError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.acked() < self.published {
            if tokio::time::Instant::now() >= deadline {
                return Err(IngestError::Config(format!(
                    "the broker acknowledged {} of {} published messages within {:?}",
                    self.acked(),
                    self.published,
                    timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
        Ok(self.acked.load(Ordering::Relaxed))
    }
}
