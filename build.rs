//! Compiles the built-in rule packs into the binary, so `wallscope` works from any
//! directory: the fault rules (`rules/*.toml`) and the trend rules (`rules/trends/*.toml`).
//! Operators add their own with `--rules DIR`.

use std::fmt::Write;
use std::path::{Path, PathBuf};

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    embed(&manifest.join("rules"), &out_dir.join("builtin_rules.rs"));
    embed(
        &manifest.join("rules").join("trends"),
        &out_dir.join("builtin_trends.rs"),
    );
}

/// Writes `pub static BUILTIN: &[(name, text)]` for the `*.toml` files of `dir`.
fn embed(dir: &Path, dest: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = String::from("pub static BUILTIN: &[(&str, &str)] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            f.display().to_string()
        );
    }
    out.push_str("];\n");
    std::fs::write(dest, out).expect("write the embedded rule list");
}
