//! MQTT settings: the broker address, identity, credentials and limits, validated before any
//! connection is tried. Units are in the names; secrets are redacted in every rendering.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{MqttOptions, Transport};

use super::{IngestError, tls};

/// A string that must not be printed (passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`; user info in the URL is accepted and
/// moved into the credentials, never kept in what is displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    /// Parses a broker URL; returns it with any user name and password it carried.
    pub fn parse(s: &str) -> Result<(BrokerUrl, Option<String>, Option<Secret>), IngestError> {
        let bad = |why: &str| {
            IngestError::Config(format!(
                "broker {:?}: {why} (expected mqtt://host:port or mqtts://host:port)",
                redact_userinfo(s)
            ))
        };
        let u = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
        let tls = match u.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" | "tls" => true,
            other => return Err(bad(&format!("unsupported scheme {other:?}"))),
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !(u.path().is_empty() || u.path() == "/") || u.query().is_some() {
            return Err(bad("a broker URL has no path or query"));
        }
        let port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
        let user = (!u.username().is_empty()).then(|| decode_pct(u.username()));
        let pass = u.password().map(|p| Secret::new(decode_pct(p)));
        Ok((BrokerUrl { tls, host, port }, user, pass))
    }

    /// The address for logs and errors.
    pub fn redacted(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// URL user info is percent-encoded (`s%40cret`); credentials are the decoded text.
fn decode_pct(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `scheme://user:pass@host` → `scheme://***@host` for error messages.
fn redact_userinfo(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(a), Some(b)) if b > a => format!("{}://***@{}", &s[..a], &s[b + 1..]),
        _ => s.to_string(),
    }
}

/// Everything the MQTT source needs.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub broker: BrokerUrl,
    pub topics: Vec<String>,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// CA certificates (PEM) that sign the broker's certificate; system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub keep_alive_s: u64,
    pub connect_timeout_s: u64,
    /// Largest packet accepted. rumqttc's default (10 KiB) would reject real payloads and,
    /// since a rejected packet kills the connection, be redelivered forever.
    pub max_packet_bytes: usize,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Messages delivered but not yet durable+acked before the source stops reading.
    pub max_pending_messages: usize,
    pub max_pending_bytes: usize,
}

impl MqttConfig {
    /// Defaults for a broker, with a client id derived from this host and `data_dir`.
    pub fn new(broker: BrokerUrl, data_dir: &Path) -> Self {
        MqttConfig {
            broker,
            topics: vec!["wc/+/+".into()],
            client_id: default_client_id(data_dir),
            username: None,
            password: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive_s: 30,
            connect_timeout_s: 10,
            max_packet_bytes: 16 << 20,
            reconnect_min_ms: 100,
            reconnect_max_ms: 10_000,
            max_pending_messages: 100_000,
            max_pending_bytes: 256 << 20,
        }
    }

    /// Checks the settings and builds rumqttc's options (reads TLS files).
    pub fn mqtt_options(&self) -> Result<MqttOptions, IngestError> {
        if self.client_id.is_empty() {
            return Err(IngestError::Config(
                "an empty client id would make the broker drop our session on every disconnect; leave --client-id unset for the stable default or give a name".into(),
            ));
        }
        if self.client_id.len() > 128 {
            return Err(IngestError::Config(
                "client id is longer than 128 characters".into(),
            ));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.is_empty()) {
            return Err(IngestError::Config(
                "at least one non-empty topic filter is needed".into(),
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(IngestError::Config(
                "a password was given without a user name".into(),
            ));
        }
        if self.max_pending_messages == 0 || self.max_pending_bytes == 0 {
            return Err(IngestError::Config(
                "max_pending_messages and max_pending_bytes must be above zero".into(),
            ));
        }
        if !self.broker.tls
            && (self.ca_file.is_some()
                || self.client_cert_file.is_some()
                || self.client_key_file.is_some())
        {
            return Err(IngestError::Config(format!(
                "TLS files were given but the broker URL {} is plain mqtt://; use mqtts://",
                self.broker
            )));
        }
        let mut o = MqttOptions::new(&self.client_id, &self.broker.host, self.broker.port);
        o.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(self.keep_alive_s.max(5)))
            .set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes)
            .set_inflight(100)
            .set_pending_throttle(Duration::ZERO);
        if let Some(u) = &self.username {
            let p = self.password.as_ref().map(|p| p.expose()).unwrap_or("");
            o.set_credentials(u.clone(), p.to_string());
        }
        if self.broker.tls {
            let cfg = tls::client_config(
                self.ca_file.as_deref(),
                self.client_cert_file.as_deref(),
                self.client_key_file.as_deref(),
            )?;
            o.set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(cfg),
            ));
        }
        Ok(o)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_s.max(1))
    }
}

/// `wallscope-<host>-<8 hex of the data directory>`: stable across restarts of the same
/// ingester, distinct for two ingesters on one host.
pub fn default_client_id(data_dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let h = xxhash_rust::xxh3::xxh3_64(dir.as_os_str().as_encoded_bytes());
    format!(
        "wallscope-{}-{:08x}",
        if host.is_empty() { "host" } else { &host },
        h as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let (b, u, p) = BrokerUrl::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((b.tls, b.host.as_str(), b.port), (false, "127.0.0.1", 1884));
        assert!(u.is_none() && p.is_none());
        let (b, u, p) = BrokerUrl::parse("mqtts://ingest:s%40cret@broker.example").unwrap();
        assert_eq!((b.tls, b.port), (true, 8883));
        assert_eq!(u.as_deref(), Some("ingest"));
        assert_eq!(p.unwrap().expose(), "s@cret");
        assert_eq!(b.redacted(), "mqtts://broker.example:8883");
        for bad in ["http://x", "mqtt://", "mqtt://h/path", "nonsense"] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
        let e = BrokerUrl::parse("ftp://user:hunter2@h")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn client_ids_are_stable_and_empty_is_refused() {
        let a = default_client_id(Path::new("/tmp/a"));
        assert_eq!(a, default_client_id(Path::new("/tmp/a")));
        assert_ne!(a, default_client_id(Path::new("/tmp/b")));
        let (b, _, _) = BrokerUrl::parse("mqtt://127.0.0.1:1").unwrap();
        let mut c = MqttConfig::new(b, Path::new("/tmp/a"));
        assert!(c.mqtt_options().is_ok());
        c.client_id.clear();
        assert!(c.mqtt_options().is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let (b, _, _) = BrokerUrl::parse("mqtt://127.0.0.1:1").unwrap();
        let mut c = MqttConfig::new(b, Path::new("/tmp/a"));
        c.username = Some("u".into());
        c.password = Some(s);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
