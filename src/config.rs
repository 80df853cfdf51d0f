//! User-facing settings: parsing of durations and sizes as users write them.
//!
//! Raw input is validated into typed values here, before library code sees it, with errors
//! that say what to write instead. [`FileConfig`] is the TOML file `wallscope run --config`
//! reads: every setting with its unit in its name; command-line flags override it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The TOML configuration file. Unknown keys are errors (a typo must not silently fall back
/// to a default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub mqtt: MqttFile,
    #[serde(default)]
    pub batch: BatchFile,
    #[serde(default)]
    pub store: StoreFile,
    #[serde(default)]
    pub alerts: AlertsFile,
    #[serde(default)]
    pub serve: ServeFile,
}

/// `[serve]`: the HTTP API and dashboard (`serve`, `run --http`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// Address to listen on (default 127.0.0.1:8080; loopback unless you say otherwise).
    pub listen: Option<String>,
    /// Arrow Flight SQL address (off unless set).
    pub flight_listen: Option<String>,
    /// HTTPS: certificate chain and private key (PEM). Both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Rows `POST /api/v1/sql` returns at most.
    pub sql_row_limit: Option<usize>,
    pub query_memory_limit_mb: Option<usize>,
    /// Disk one API query may spill to (sorts, aggregates) before it fails.
    pub query_spill_limit_mb: Option<u64>,
    pub query_timeout_s: Option<u64>,
    pub max_concurrent_queries: Option<usize>,
    pub max_concurrent_queries_per_token: Option<usize>,
    pub query_threads: Option<usize>,
    pub max_body_bytes: Option<usize>,
    /// Failed authentications one address may make per minute before it gets 429.
    pub max_auth_failures_per_min: Option<u32>,
    /// Tokens besides `api-tokens.json` (`token create`), given by their SHA-256 so the
    /// config holds nothing usable: `printf %s "$TOKEN" | sha256sum`.
    #[serde(default)]
    pub tokens: Vec<TokenFile>,
}

/// `[[serve.tokens]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub name: String,
    /// `read` or `operator`.
    pub role: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
}

/// `[alerts]`: how findings and trends become alerts and where notifications go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    /// Fault alerts: how long an episode must last before its alert fires.
    pub for_s: Option<u64>,
    /// Fault alerts: how long the fault must stay away before the alert resolves.
    pub clear_after_s: Option<u64>,
    pub keep_firing_for_s: Option<u64>,
    /// Per fault rule id: `[alerts.rules.handle_overtemp] for_s = 600`.
    #[serde(default)]
    pub rules: std::collections::BTreeMap<String, AlertPolicyFile>,
    /// Labels (`site`, `installer`, `firmware_version`, `part_number`) or `rule`, `fault`,
    /// `device_id`, `severity` that put transitions into one notification.
    pub group_by: Option<Vec<String>>,
    pub group_wait_ms: Option<i64>,
    /// Replaces the default inhibition (a site grid alert mutes its chargers' F14/F15/F16).
    pub inhibit: Option<Vec<InhibitFile>>,
    /// Directories of extra trend rules (`*.toml`).
    #[serde(default)]
    pub trend_rules_dirs: Vec<PathBuf>,
    /// Leave out the built-in trend rules.
    #[serde(default)]
    pub no_builtin_trends: bool,
    #[serde(default)]
    pub sinks: Vec<SinkFile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertPolicyFile {
    pub for_s: Option<u64>,
    pub clear_after_s: Option<u64>,
    pub keep_firing_for_s: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitFile {
    /// The rule whose alert mutes others.
    pub source: String,
    /// Rule ids or fault codes it mutes.
    pub targets: Vec<String>,
    /// Labels both must share (e.g. `["site"]`).
    #[serde(default)]
    pub equal: Vec<String>,
}

/// `[[alerts.sinks]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkFile {
    pub name: String,
    /// `file`, `webhook` or `mqtt`.
    pub kind: String,
    /// file: where to append JSON lines (relative paths are under the data directory).
    pub path: Option<PathBuf>,
    /// webhook: `http://` or `https://` URL.
    pub url: Option<String>,
    /// webhook: a file holding the HMAC secret (first line).
    pub secret_file: Option<PathBuf>,
    pub timeout_ms: Option<u64>,
    /// mqtt: broker URL (default: the ingest broker) and topic.
    pub broker: Option<String>,
    pub topic: Option<String>,
    pub max_backlog: Option<usize>,
    pub backoff_min_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttFile {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub broker: Option<String>,
    pub topics: Option<Vec<String>>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// A file holding the password (first line); keeps it out of the config and of `ps`.
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub keep_alive_s: Option<u64>,
    pub connect_timeout_s: Option<u64>,
    pub max_packet_bytes: Option<usize>,
    pub reconnect_min_ms: Option<u64>,
    pub reconnect_max_ms: Option<u64>,
    pub max_pending_messages: Option<usize>,
    pub max_pending_bytes: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    /// The longest a received message waits before its batch is committed (and acked).
    pub flush_interval_ms: Option<i64>,
    pub max_rows: Option<usize>,
    pub max_bytes: Option<usize>,
    pub status_interval_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub wal_segment_bytes: Option<u64>,
    pub compact_after_rows: Option<usize>,
    pub compact_after_ms: Option<i64>,
}

impl FileConfig {
    /// Reads and parses a config file; errors name the file and the offending key.
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }
}

/// Reads a password file: the first line, without its line ending.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("password file {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Parses a duration like `500ms`, `10s`, `30m`, `24h`, `7d` into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {s:?} needs a unit: ms, s, m, h or d (e.g. 24h)"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} must start with a number (e.g. 30m)"))?;
    let scale = match unit {
        "ms" => 1.0,
        "s" => 1e3,
        "m" | "min" => 60e3,
        "h" => 3600e3,
        "d" => 86_400e3,
        "w" => 7.0 * 86_400e3,
        _ => {
            return Err(format!(
                "duration {s:?}: unknown unit {unit:?} (use ms, s, m, h, d or w)"
            ));
        }
    };
    let ms = n * scale;
    if !(ms.is_finite() && (0.0..1e15).contains(&ms)) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(ms.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("24h"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1500));
        assert_eq!(parse_duration_ms("7d"), Ok(604_800_000));
        assert!(parse_duration_ms("24").is_err());
        assert!(parse_duration_ms("h").is_err());
        assert!(parse_duration_ms("3x").is_err());
    }

    #[test]
    fn config_file_rejects_typos() {
        let ok: FileConfig = toml::from_str(
            "[mqtt]\nbroker = \"mqtt://h:1\"\nmax_pending_messages = 10\n[batch]\nflush_interval_ms = 20\n",
        )
        .unwrap();
        assert_eq!(ok.mqtt.max_pending_messages, Some(10));
        assert_eq!(ok.batch.flush_interval_ms, Some(20));
        let example: FileConfig =
            toml::from_str(include_str!("../docs/wallscope.example.toml")).unwrap();
        assert_eq!(example.mqtt.max_pending_messages, Some(100_000));
        assert_eq!(example.batch.flush_interval_ms, Some(50));
        let bad = toml::from_str::<FileConfig>("[mqtt]\nbrokr = \"x\"\n").unwrap_err();
        assert!(bad.to_string().contains("brokr"), "{bad}");
    }
}
