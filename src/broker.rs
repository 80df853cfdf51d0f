//! The embedded MQTT broker (rumqttd) for `wallscope demo` and `run --embedded-broker`.
//!
//! Plain TCP on the address given (loopback by default), QoS 1, persistent sessions, payloads
//! up to 16 MiB. It keeps messages in memory only: it exists so a fresh machine needs nothing
//! installed, not to replace a production broker.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker: cannot find a free port on {0}: {1}")]
    NoPort(String, std::io::Error),
    #[error("embedded broker: {0}")]
    Start(String),
    #[error("embedded broker did not start listening on {0} within 10 s (is the address in use?)")]
    NotListening(SocketAddr),
}

/// A running embedded broker; it lives until the process exits.
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
}

impl EmbeddedBroker {
    /// `mqtt://host:port` for clients.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// A free TCP port on `host` (the OS picks it; a short race with other binders remains,
/// which the readiness check below turns into a clear error).
pub fn free_port(host: &str) -> Result<u16, BrokerError> {
    let l = TcpListener::bind((host, 0)).map_err(|e| BrokerError::NoPort(host.into(), e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BrokerError::NoPort(host.into(), e))
}

/// Starts rumqttd on `addr` (port 0: a free loopback port) and waits until it accepts
/// connections.
pub fn start(addr: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
    let addr = if addr.port() == 0 {
        SocketAddr::new(addr.ip(), free_port(&addr.ip().to_string())?)
    } else {
        addr
    };
    let config = config_for(addr);
    std::thread::Builder::new()
        .name("wallscope-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| BrokerError::Start(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(EmbeddedBroker { addr });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening(addr))
}

fn config_for(addr: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 16 << 20,
        // The subscriber's window: acks come after an fsync, so a small window caps the rate
        // at window / commit latency.
        max_inflight_count: 10_000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "wallscope-embedded".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let router = rumqttd::RouterConfig {
        max_connections: 1024,
        max_outgoing_packet_count: 10_000,
        // Messages wait in memory segments until every subscriber read them; 1 GiB in all.
        max_segment_size: 128 << 20,
        max_segment_count: 8,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let mut v4 = HashMap::new();
    v4.insert("1".to_string(), server);
    rumqttd::Config {
        id: 0,
        router,
        v4: Some(v4),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}
