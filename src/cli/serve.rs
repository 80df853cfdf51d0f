//! `serve` (the console and API over a data directory) and `token` (API tokens), plus the
//! settings `run --http` and `demo --serve` share with them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::api::{self, Limits, Role, ServeConfig, TlsFiles, Tokens};
use crate::clock::Clock;
use crate::config::{FileConfig, ServeFile};

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080, or `[serve] listen` of --config).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Also serve Arrow Flight SQL (read-only, same tokens) on ADDR, e.g. 127.0.0.1:50051.
    #[arg(long, value_name = "ADDR")]
    pub flight_listen: Option<SocketAddr>,
    /// TOML config file (its `[serve]` section).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTPS certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// HTTPS private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A device registry (CSV or Parquet) instead of devices.csv in the data directory.
    #[arg(long, value_name = "FILE")]
    pub devices: Option<PathBuf>,
    /// Do not evaluate the rules at start when the stored findings are older than the data
    /// (the fleet list then shows statuses as of the last `run` or `demo`).
    #[arg(long)]
    pub no_evaluate: bool,
    #[command(flatten)]
    pub rules: super::diagnose::RuleArgs,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; it is printed once, only its hash is stored (api-tokens.json).
    Create(TokenCreateArgs),
    /// List the tokens by name and role (never the tokens themselves).
    List,
    /// Revoke a token by name.
    Revoke(TokenRevokeArgs),
}

#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    /// Who or what the token is for (shown in logs and acks).
    #[arg(long)]
    pub name: String,
    /// `read` (everything but acks and silences) or `operator`.
    #[arg(long, value_enum, default_value = "read")]
    pub role: RoleArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Read,
    Operator,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Read => Role::Read,
            RoleArg::Operator => Role::Operator,
        }
    }
}

#[derive(Args, Debug)]
pub struct TokenRevokeArgs {
    pub name: String,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Query limits: defaults, then `[serve]` of the config file.
pub(super) fn limits(f: &ServeFile) -> anyhow::Result<Limits> {
    let mut l = Limits::default();
    if let Some(v) = f.sql_row_limit {
        l.sql_row_limit = v;
    }
    if let Some(v) = f.query_memory_limit_mb {
        l.query_memory_limit_bytes = v << 20;
    }
    if let Some(v) = f.query_spill_limit_mb {
        l.query_spill_limit_bytes = v << 20;
    }
    if let Some(v) = f.query_timeout_s {
        l.query_timeout_ms = v * 1000;
    }
    if let Some(v) = f.max_concurrent_queries {
        l.max_concurrent_queries = v;
    }
    if let Some(v) = f.max_concurrent_queries_per_token {
        l.max_concurrent_queries_per_token = v;
    }
    if let Some(v) = f.query_threads {
        l.query_threads = v;
    }
    if let Some(v) = f.max_body_bytes {
        l.max_body_bytes = v;
    }
    if let Some(v) = f.max_auth_failures_per_min {
        l.max_auth_failures_per_min = v;
    }
    for (name, v) in [
        ("sql_row_limit", l.sql_row_limit),
        ("query_memory_limit_mb", l.query_memory_limit_bytes),
        ("query_timeout_s", l.query_timeout_ms as usize),
        ("max_concurrent_queries", l.max_concurrent_queries),
        (
            "max_concurrent_queries_per_token",
            l.max_concurrent_queries_per_token,
        ),
        ("query_threads", l.query_threads),
        ("max_body_bytes", l.max_body_bytes),
        (
            "max_auth_failures_per_min",
            l.max_auth_failures_per_min as usize,
        ),
    ] {
        if v == 0 {
            bail!("[serve] {name} must be above zero");
        }
    }
    Ok(l)
}

/// Everything `serve` needs from its arguments; `listen` overrides both flag and file.
pub(super) fn serve_config(
    data_dir: &Path,
    a: &ServeArgs,
    file: &FileConfig,
    listen: Option<SocketAddr>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<ServeConfig> {
    let f = &file.serve;
    let listen = match listen.or(a.listen) {
        Some(l) => l,
        None => f
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse()
            .map_err(|e| {
                anyhow::anyhow!("[serve] listen: {e} (write host:port, e.g. 127.0.0.1:8080)")
            })?,
    };
    let tls = match (
        a.tls_cert.clone().or_else(|| f.tls_cert_file.clone()),
        a.tls_key.clone().or_else(|| f.tls_key_file.clone()),
    ) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => bail!("HTTPS needs both a certificate and a key (tls_cert_file and tls_key_file)"),
    };
    let flight_listen = match a.flight_listen {
        Some(l) => Some(l),
        None => f
            .flight_listen
            .as_deref()
            .map(|s| {
                s.parse().map_err(|e| {
                    anyhow::anyhow!(
                        "[serve] flight_listen: {e} (write host:port, e.g. 127.0.0.1:50051)"
                    )
                })
            })
            .transpose()?,
    };
    if let Some(f) = flight_listen
        && !f.ip().is_loopback()
        && tls.is_none()
    {
        bail!(
            "Flight SQL without TLS listens on loopback only ({f} is not): set tls_cert_file and tls_key_file (Flight uses the same certificate)"
        );
    }
    // Checked here so a broken token file stops the start with one clear line.
    Tokens::load(data_dir)?;
    let mut extra_tokens = Tokens::default();
    for t in &f.tokens {
        let role = Role::parse(&t.role)
            .map_err(|e| anyhow::anyhow!("[[serve.tokens]] {:?}: {e}", t.name))?;
        extra_tokens
            .add_hashed(&t.name, role, &t.sha256)
            .map_err(|e| anyhow::anyhow!("[[serve.tokens]]: {e}"))?;
    }
    Ok(ServeConfig {
        listen,
        flight_listen,
        data_dir: data_dir.to_path_buf(),
        extra_tokens,
        tls,
        limits: limits(f)?,
        pack: a.rules.load()?,
        registry: a.devices.clone(),
        evaluate_at_start: !a.no_evaluate,
        clock,
    })
}

/// Prints where the console is and how to get in.
pub(super) fn print_banner(server: &api::Server, url_token: Option<&str>) {
    let scheme = if server.https { "https" } else { "http" };
    let base = format!("{scheme}://{}", server.addr);
    match url_token {
        Some(t) => println!("console: {base}/#token={t}"),
        None => {
            println!("console: {base}/   API: {base}/api/v1/openapi.json   metrics: {base}/metrics")
        }
    }
    if let Some(f) = server.flight_addr {
        let scheme = if server.https { "grpc+tls" } else { "grpc" };
        println!("flight sql: {scheme}://{f}");
    }
    let tokens = server.tokens();
    if tokens == 0 {
        eprintln!(
            "note: no API tokens yet, so every request but /healthz gets 401; create one with `wallscope token create --name NAME --role operator`"
        );
    } else {
        eprintln!("{tokens} API token(s) accepted");
    }
    if !server.addr.ip().is_loopback() && !server.https {
        eprintln!(
            "warning: listening on {} without TLS: tokens cross the network in the clear (set tls_cert_file/tls_key_file)",
            server.addr
        );
    }
}

/// Waits for SIGINT or SIGTERM.
pub(super) async fn until_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub fn cmd_serve(
    data_dir: &Path,
    a: ServeArgs,
    clock: Arc<dyn Clock>,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    if !data_dir.exists() {
        bail!(
            "data directory {} does not exist: import data first (wallscope import …), start `wallscope run --http ADDR`, or pass --data-dir",
            data_dir.display()
        );
    }
    let file = match &a.config {
        Some(p) => FileConfig::load(p).map_err(anyhow::Error::msg)?,
        None => FileConfig::default(),
    };
    let cfg = serve_config(data_dir, &a, &file, None, clock)?;
    rt.block_on(async move {
        let server = api::start(cfg).await?;
        print_banner(&server, None);
        until_signal().await;
        eprintln!("stopping: finishing requests in flight");
        server.stop().await?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn cmd_token(
    data_dir: &Path,
    c: TokenCommand,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<ExitCode> {
    match c {
        TokenCommand::Create(a) => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let role: Role = a.role.into();
            let t = api::auth::create(data_dir, &a.name, role, clock.now_ms())?;
            eprintln!(
                "created {} token {:?}; it is shown once, only its hash is kept in {}",
                role.as_str(),
                a.name,
                data_dir.join(api::auth::TOKENS_FILE).display()
            );
            println!("{t}");
        }
        TokenCommand::List => {
            let t = Tokens::load(data_dir)?;
            if t.is_empty() {
                println!(
                    "no tokens; `wallscope token create --name NAME --role operator` makes one"
                );
            }
            for e in t.entries() {
                println!(
                    "{:<24} {:<9} created {}",
                    e.name,
                    e.role.as_str(),
                    e.created_at
                );
            }
        }
        TokenCommand::Revoke(a) => {
            if !api::auth::revoke(data_dir, &a.name)? {
                bail!(
                    "no token named {:?}; `wallscope token list` shows them",
                    a.name
                );
            }
            println!(
                "revoked {:?} (running servers stop accepting it within a second)",
                a.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
