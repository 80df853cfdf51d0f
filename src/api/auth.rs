//! Bearer tokens: creation, storage as hashes, constant-time checks, roles, and a brake on
//! guessing.
//!
//! A token is `wsk_` + 32 random bytes in hex. Only its SHA-256 is stored (in
//! `api-tokens.json` in the data directory, or in memory for `demo --serve`), so a copy of the
//! directory holds no usable token. A presented token is hashed and compared with every
//! stored hash in constant time (`subtle`), without an early exit, so neither the position
//! of a match nor the length of a common prefix shows in the timing. Tokens are never logged:
//! errors name the token's `name`, never its value.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// File in the data directory holding the token hashes.
pub const TOKENS_FILE: &str = "api-tokens.json";
const TOKEN_PREFIX: &str = "wsk_";
/// Failed authentications from one address per minute before it gets 429 (the default of
/// `[serve] max_auth_failures_per_min`).
pub const MAX_AUTH_FAILURES_PER_MIN: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything: fleet, devices, findings, alerts, SQL, metrics.
    Read,
    /// Also acknowledges and silences alerts.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Result<Role, AuthError> {
        match s {
            "read" | "read-only" | "readonly" => Ok(Role::Read),
            "operator" => Ok(Role::Operator),
            other => Err(AuthError::Invalid(format!(
                "unknown role {other:?}: use read or operator"
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a token file ({source}); fix or remove it")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// One stored token: who it is for, what it may do, and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token, lower-case hex.
    pub sha256: String,
    pub created_at: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The tokens a server accepts.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    entries: Vec<(TokenEntry, [u8; 32])>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random token (not stored anywhere yet).
pub fn generate() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Io {
        path: "the system's random source".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

impl Tokens {
    /// The tokens stored in `dir` (none when the file does not exist).
    pub fn load(dir: &Path) -> Result<Tokens, AuthError> {
        let mut t = Tokens::default();
        for e in read_file(dir)?.tokens {
            t.push(e)?;
        }
        Ok(t)
    }

    fn push(&mut self, e: TokenEntry) -> Result<(), AuthError> {
        let d = unhex(&e.sha256).ok_or_else(|| {
            AuthError::Invalid(format!("token {:?}: sha256 must be 64 hex digits", e.name))
        })?;
        self.entries.push((e, d));
        Ok(())
    }

    /// Accepts the token whose SHA-256 is `sha256_hex` (a config file's `[[serve.tokens]]`).
    pub fn add_hashed(
        &mut self,
        name: &str,
        role: Role,
        sha256_hex: &str,
    ) -> Result<(), AuthError> {
        self.push(TokenEntry {
            name: name.into(),
            role,
            sha256: sha256_hex.trim().to_lowercase(),
            created_at: String::new(),
        })
    }

    /// Accepts `token` in memory only (demo).
    pub fn add_ephemeral(&mut self, name: &str, role: Role, token: &str) {
        let d = digest(token);
        self.entries.push((
            TokenEntry {
                name: name.into(),
                role,
                sha256: hex(&d),
                created_at: String::new(),
            },
            d,
        ));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn entries(&self) -> impl Iterator<Item = &TokenEntry> {
        self.entries.iter().map(|(e, _)| e)
    }

    /// The caller `token` belongs to. Every stored hash is compared (constant time each,
    /// no early exit).
    pub fn check(&self, token: &str) -> Option<Caller> {
        let d = digest(token);
        let mut found: Option<&TokenEntry> = None;
        for (e, h) in &self.entries {
            if bool::from(h.ct_eq(&d)) {
                found = Some(e);
            }
        }
        found.map(|e| Caller {
            name: e.name.clone(),
            role: e.role,
        })
    }
}

fn read_file(dir: &Path) -> Result<TokenFile, AuthError> {
    let path = dir.join(TOKENS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| AuthError::Parse {
            path: path.display().to_string(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(source) => Err(AuthError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn write_file(dir: &Path, f: &TokenFile) -> Result<(), AuthError> {
    let path = dir.join(TOKENS_FILE);
    let io = |source| AuthError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let json = serde_json::to_vec_pretty(f).map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = dir.join(format!("{TOKENS_FILE}.tmp"));
    {
        use std::io::Write;
        let mut o = std::fs::File::create(&tmp).map_err(io)?;
        o.write_all(&json).map_err(io)?;
        o.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// Creates a token named `name` and stores its hash in `dir`; returns the token, which is
/// shown once and never again.
pub fn create(dir: &Path, name: &str, role: Role, now_ms: i64) -> Result<String, AuthError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return Err(AuthError::Invalid(format!(
            "token name {name:?}: use letters, digits and - _ . @"
        )));
    }
    let mut f = read_file(dir)?;
    if f.tokens.iter().any(|t| t.name == name) {
        return Err(AuthError::Invalid(format!(
            "a token named {name:?} exists; revoke it first or pick another name"
        )));
    }
    let token = generate()?;
    f.tokens.push(TokenEntry {
        name: name.into(),
        role,
        sha256: hex(&digest(&token)),
        created_at: crate::capture::format_rfc3339_ms(now_ms),
    });
    write_file(dir, &f)?;
    Ok(token)
}

/// Removes the token named `name`; false when there was none.
pub fn revoke(dir: &Path, name: &str) -> Result<bool, AuthError> {
    let mut f = read_file(dir)?;
    let before = f.tokens.len();
    f.tokens.retain(|t| t.name != name);
    if f.tokens.len() == before {
        return Ok(false);
    }
    write_file(dir, &f)?;
    Ok(true)
}

/// Counts failed authentications per address in one-minute windows.
#[derive(Debug)]
pub struct FailureBrake {
    per_min: u32,
    by_ip: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl Default for FailureBrake {
    fn default() -> Self {
        FailureBrake::new(MAX_AUTH_FAILURES_PER_MIN)
    }
}

impl FailureBrake {
    pub fn new(per_min: u32) -> FailureBrake {
        FailureBrake {
            per_min,
            by_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` has used up its failures for the current minute.
    pub fn blocked(&self, ip: IpAddr, now_ms: i64) -> bool {
        let m = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&ip)
            .is_some_and(|(win, n)| now_ms / 60_000 == *win && *n >= self.per_min)
    }

    pub fn failed(&self, ip: IpAddr, now_ms: i64) {
        let mut m = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let win = now_ms / 60_000;
        // Old windows go, so the map stays as small as the set of recent offenders; past
        // that (a flood from many addresses) it starts over rather than grow.
        if m.len() > 10_000 {
            m.retain(|_, (w, _)| *w == win);
            if m.len() > 10_000 {
                m.clear();
            }
        }
        let e = m.entry(ip).or_insert((win, 0));
        if e.0 != win {
            *e = (win, 0);
        }
        e.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_as_hashes_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let op = create(dir.path(), "alice", Role::Operator, 0).unwrap();
        let ro = create(dir.path(), "grafana", Role::Read, 0).unwrap();
        assert!(op.starts_with(TOKEN_PREFIX) && op.len() == TOKEN_PREFIX.len() + 64);
        let text = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!text.contains(&op) && !text.contains(&ro), "{text}");
        let t = Tokens::load(dir.path()).unwrap();
        assert_eq!(t.check(&op).unwrap().role, Role::Operator);
        assert_eq!(t.check(&ro).unwrap().name, "grafana");
        // One character changed, a prefix, empty: no caller.
        let mut changed = op.clone().into_bytes();
        let last = changed.len() - 1;
        changed[last] = if changed[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(t.check(&String::from_utf8(changed).unwrap()), None);
        assert_eq!(t.check(&op[..op.len() - 1]), None);
        assert_eq!(t.check(""), None);
        assert!(create(dir.path(), "alice", Role::Read, 0).is_err());
        assert!(create(dir.path(), "bad name", Role::Read, 0).is_err());
        assert!(revoke(dir.path(), "alice").unwrap());
        assert!(!revoke(dir.path(), "alice").unwrap());
        assert_eq!(Tokens::load(dir.path()).unwrap().check(&op), None);
    }

    #[test]
    fn the_brake_blocks_an_address_for_the_rest_of_its_minute() {
        let b = FailureBrake::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..MAX_AUTH_FAILURES_PER_MIN {
            assert!(!b.blocked(ip, 1_000));
            b.failed(ip, 1_000);
        }
        assert!(b.blocked(ip, 59_000));
        assert!(!b.blocked("127.0.0.2".parse().unwrap(), 59_000));
        assert!(!b.blocked(ip, 60_000));
    }
}
