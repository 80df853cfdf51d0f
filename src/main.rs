//! `wallscope`: parse arguments, start tracing, run, map errors to an exit code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: decode builds fresh Arrow buffers per batch and
/// DataFusion allocates per operator; glibc hands big freed blocks back to the kernel and
/// page-faults them in again (decode measured 0.87 M → 1.11 M msg/s/core with mimalloc,
/// arrow-json 0.51 → 0.59 M). DataFusion's own CLI makes the same choice.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, `mi_option_e`: 15 in v2 and v3), which
/// libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The crate's one unsafe call: mimalloc has no safe API for its options.
#[allow(unsafe_code)]
fn set_purge_delay(ms: i64) {
    // `long` is 32 bits on some targets: a delay beyond it means never.
    let ms = std::ffi::c_long::try_from(ms).unwrap_or(-1);
    // SAFETY: stores one option value; called first thing in `main`, before any other
    // thread exists (mi_option_set is not thread safe). mimalloc reads it at each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
}

fn main() -> ExitCode {
    let cli = wallscope::cli::Cli::parse();
    // Freed pages handed back to the kernel are faulted in zeroed again on their next use:
    // batch commands keep them, live evaluation for a minute (`Command::purge_delay_ms`).
    // MIMALLOC_PURGE_DELAY still overrides.
    if let Some(ms) = cli.command.purge_delay_ms()
        && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none()
    {
        set_purge_delay(ms);
    }
    let default = match cli.verbose {
        // The embedded broker narrates every connection; keep it to problems.
        0 => "warn,rumqttd=off",
        1 => "info,rumqttd=error",
        _ => "debug,rumqttd=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match wallscope::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line per error, so scripts and logs get one record each.
            let text = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {}", text.trim_end());
            ExitCode::from(2)
        }
    }
}
