//! Keeps the layering of docs/ARCHITECTURE.md honest: a module may only name modules of a
//! lower layer (or itself). Reads every `crate::<module>` reference in src/.

use std::path::Path;

fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "model" | "clock" | "capture" => 0,
        "config" | "decode" | "sim" => 1,
        "batch" => 2,
        "store" | "source" | "registry" | "ingest" | "broker" => 3,
        "query" => 4,
        "rules" => 5,
        "alerts" => 6,
        "pipeline" => 7,
        "api" => 8,
        "cli" => 9,
        _ => return None,
    })
}

fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_only_depend_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut violations = Vec::new();
    for f in files {
        let m = module_of(&f, &src);
        let Some(own) = layer(&m) else { continue };
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + 7..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if let Some(l) = layer(&name)
                    && name != m
                    && l >= own
                {
                    violations.push(format!(
                        "{}:{}: `{m}` (layer {own}) uses `{name}` (layer {l})",
                        f.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}
