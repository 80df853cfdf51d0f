"""wallscope's rule pack against DuckDB: same SQL, same Parquet files.

Runs, in one invocation, on one store:

1. ``wallscope -v diagnose --store DIR --no-builtin-rules --rules
   RULES``: the whole pack over the whole store, timed with the wall
   clock (process start, reading the store, planning, the shared
   views, every rule, printing the findings). Its ``-v`` log gives the
   time of each shared view and rule, its output the findings per
   rule. A large fleet is evaluated in shards of about SHARD_ROWS
   vitals rows (src/rules/engine.rs; 2 M rows: 5 shards for 1,000
   chargers x 24 h at 10 s), each with its own views; the per-view
   and per-rule times are sums over the shards. It runs up to 3 rules
   at once, so its per-rule times overlap.
2. DuckDB in this process, in one go over the whole fleet (no shards):
   the store's tables as views over the Parquet files the store's
   manifest lists, ``fleet_<table>`` = ``<table>`` (a whole-store
   evaluation reads the same rows), ``devices`` an empty registry, the
   four shared views of src/rules/views.rs materialized as tables in
   build order, then each rule's SQL, one at a time, all rows fetched.
   Its end-to-end time covers connecting, planning, reading the
   Parquet files, the views and the rules; it leaves out starting
   Python and importing duckdb.

The SQL is translated mechanically, with these rewrites and settings
only (the rules' logic is unchanged):

- ``CAST(ts AS BIGINT)`` -> ``epoch_ms(ts)``: DuckDB cannot cast a
  timestamp to BIGINT.
- ``first_value(x ORDER BY y)`` / ``last_value(...)`` aggregates ->
  ``first`` / ``last`` (in DuckDB ``first_value`` is a window function
  only).
- ``median(x)`` -> ``df_median(x)``, a macro: DataFusion's median of
  integers is an integer (the middle pair's sum halved, truncated),
  DuckDB's a DOUBLE.
- Decimal literals (``60000.0``) -> DOUBLE: DataFusion reads them as
  Float64, DuckDB as DECIMAL.
- ``a * b`` of two integer literals -> ``a::BIGINT * b``: DataFusion
  types integer literals as Int64, DuckDB folds them as INT32 and
  fails on overflow (``30 * 86400000``).
- ``SET integer_division = true``: DataFusion's ``/`` on integers
  truncates. DuckDB's float ``/`` then fails on a zero divisor, hence
  ``SET error_on_division_by_zero = false``: NULL where DataFusion
  gives inf or NaN. In this pack that changes a result only where no
  condition excludes a zero divisor: terminal_overheat's
  ``/ c.pre_grid_v`` (a 0 V reading before a closure), and summaries.
- ``SET default_null_order = 'nulls_last_on_asc_first_on_desc'``:
  DataFusion's null ordering.

Parameters are substituted as wallscope does: each rule's ``[params]``
defaults, then ``${eval_start_ms}`` / ``${eval_end_ms}`` = the oldest
telemetry time and the newest + 1 (vitals, lifetime, wifi), as in a
whole-store run.

Both engines find the Parquet files in the page cache: each is read
once before either runs. The store must be compacted (no rows in the
WAL), hold Parquet files for every table and no device registry
(``devices.csv``); the script checks. Other processes' CPU time during
each run is printed: more than a few CPU-seconds means contention.

Run (pip install duckdb; the issue's setup is 2 cores):

    wallscope simulate --devices 1000 --duration 24h --seed 5 \\
        --out /tmp/b/cap.jsonl
    wallscope import --data-dir /tmp/b/store /tmp/b/cap.jsonl
    python3 benches/duckdb_rules.py --store /tmp/b/store \\
        --wallscope target/release/wallscope

(``import`` exits 1 there: the simulator's firmware quirks make dead
letters.) Target: wallscope no slower than DuckDB on its own rules,
i.e. the printed ratio wallscope / DuckDB <= 1.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
TELEMETRY = ("vitals", "lifetime", "wifi", "version")
STORED = TELEMETRY + ("dead_letters",)

# src/model.rs devices_schema(): the registry, empty in this benchmark.
DEVICES_DDL = """CREATE TABLE devices (
  device_id VARCHAR NOT NULL, service_type VARCHAR, breaker_a DOUBLE,
  max_current_a DOUBLE, part_number VARCHAR, site VARCHAR,
  installer VARCHAR, commissioned_at VARCHAR, firmware_version VARCHAR)"""

# DataFusion's median: an integer for integers (mean of the middle pair,
# truncated), else DuckDB's.
MEDIAN_MACRO = """CREATE MACRO
  df_median(x BIGINT) AS CAST(trunc(median(x)) AS BIGINT),
  (x DOUBLE) AS median(x)"""

# src/rules/engine.rs time_span(): the evaluated range of a whole store.
TIME_SPAN = """SELECT MIN(t), MAX(t) FROM (
  SELECT CAST(ts AS BIGINT) AS t FROM vitals
  UNION ALL SELECT CAST(ts AS BIGINT) FROM lifetime
  UNION ALL SELECT CAST(ts AS BIGINT) FROM wifi)"""

# String literals, quoted identifiers and comments: never rewritten.
OPAQUE = re.compile(r"('(?:[^']|'')*'|\"[^\"]*\"|--[^\n]*)")
REWRITES = [
    (re.compile(r"\bCAST\(\s*((?:\w+\.)?ts)\s+AS\s+BIGINT\s*\)", re.I),
     r"epoch_ms(\1)"),
    (re.compile(r"\b(first|last)_value\((?=[^()]*\bORDER\s+BY\b)", re.I),
     r"\1("),
    (re.compile(r"\bmedian\(", re.I), "df_median("),
    (re.compile(r"(?<![\w.])(\d+\.\d+)(?![\w.])"), r"\1::DOUBLE"),
    (re.compile(r"(?<![\w.])(\d+)(?=\s*\*\s*\d+(?![\w.]))"), r"\1::BIGINT"),
]

LOG_TIMING = re.compile(r"step=(view|rule) (\w+) ms=(\d+)")
LOG_SHARDS = re.compile(r"shards=(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
FINDING = re.compile(r"^F\d\d .*\[(\w+)\]$")
FOOTER_SECS = re.compile(r"\(([\d.]+) s\)$")


def to_duckdb(sql):
    """The SQL in DuckDB's dialect (the module docstring's rewrites)."""
    parts = OPAQUE.split(sql)
    for i in range(0, len(parts), 2):
        for pattern, repl in REWRITES:
            parts[i] = pattern.sub(repl, parts[i])
    return "".join(parts)


def sql_literal(value):
    """A [params] value as wallscope writes it (spec.rs literal())."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + value.replace("'", "''") + "'"


def load_rules(rules_dir):
    """(id, SQL with [params] put in) per *.toml, by file name."""
    rules = []
    for path in sorted(rules_dir.glob("*.toml")):
        spec = tomllib.loads(path.read_text())
        sql = spec["sql"]
        for name, value in spec.get("params", {}).items():
            sql = sql.replace("${" + name + "}", sql_literal(value))
        rules.append((spec["id"], sql))
    return rules


def load_views(views_rs):
    """(name, SQL) of the shared views in build order, from views.rs."""
    text = views_rs.read_text()
    consts = dict(re.findall(r'const (\w+): &str = r#"(.*?)"#;', text, re.S))
    order = re.search(r"pub const VIEWS[^=]*= \[(.*?)\];", text, re.S)
    pairs = re.findall(r'\("(\w+)", (\w+)\)', order.group(1))
    return [(name, consts[const]) for name, const in pairs]


def manifest_files(store):
    """The manifest, and {table: [paths]} of the files it lists."""
    manifest = json.loads((store / "manifest.json").read_text())
    files = {t: [] for t in STORED}
    for entry in manifest["files"]:
        files[entry["table"]].append(str(store / entry["path"]))
    empty = [t for t, paths in files.items() if not paths]
    if empty:
        sys.exit(f"{store}: no Parquet files for {', '.join(empty)}, so "
                 "DuckDB cannot know their columns (simulate with the "
                 "firmware quirks on)")
    return files, manifest


def check_store(store, wallscope, manifest):
    """Rows per table; refuses a WAL tail or a registry in the store."""
    if (store / "devices.csv").exists():
        sys.exit(f"{store}/devices.csv: the benchmark runs with no registry")
    counts = " UNION ALL ".join(
        f"SELECT '{t}', COUNT(*) FROM {t}" for t in STORED)
    out = subprocess.run(
        [wallscope, "sql", "--data-dir", str(store), "--format", "csv",
         counts],
        capture_output=True, text=True, check=True,
    ).stdout
    seen = {}
    for row in out.splitlines()[1:]:
        table, rows = row.split(",")
        seen[table] = int(rows)
    for table in STORED:
        listed = sum(f["rows"] for f in manifest["files"]
                     if f["table"] == table)
        if seen[table] != listed:
            sys.exit(f"{table}: wallscope reads {seen[table]} rows, the "
                     f"manifest's Parquet files {listed}: compact first")
    return seen


def warm_page_cache(files):
    for paths in files.values():
        for path in paths:
            Path(path).read_bytes()


def busy_cpu_s():
    """CPU seconds the machine has been busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, fields)
    busy = user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_s():
    """CPU seconds of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def with_others_cpu(run, *args):
    """run(*args), plus other processes' CPU seconds meanwhile."""
    cpu0, own0 = busy_cpu_s(), own_cpu_s()
    result = run(*args)
    others = busy_cpu_s() - cpu0 - (own_cpu_s() - own0)
    result["others_cpu_s"] = max(others, 0.0)
    return result


def run_wallscope(wallscope, store, rules_dir):
    """Runs diagnose: wall and own time, timings, findings."""
    cmd = [wallscope, "-v", "diagnose", "--store", str(store),
           "--no-builtin-rules", "--rules", str(rules_dir)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    footer = stdout.rstrip().splitlines()[-1] if stdout.strip() else ""
    own = FOOTER_SECS.search(footer)
    if proc.returncode != 0 or not own:
        sys.exit(f"{' '.join(cmd)} failed:\n{footer}\n{stderr}")
    timings = {}
    for kind, name, took in LOG_TIMING.findall(ANSI.sub("", stderr)):
        timings[(kind, name)] = int(took) / 1000
    shards = LOG_SHARDS.search(ANSI.sub("", stderr))
    findings = {}
    for line in stdout.splitlines():
        match = FINDING.match(line)
        if match:
            findings[match.group(1)] = findings.get(match.group(1), 0) + 1
    return {
        "cmd": cmd,
        "wall_s": wall,
        "own_s": float(own.group(1)),
        "footer": footer,
        "shards": shards.group(1) if shards else "?",
        "timings": timings,
        "findings": findings,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def run_duckdb(files, views, rules, threads):
    """Runs the views and the rules: times (s), rows, failures."""
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET integer_division = true")
    con.execute("SET error_on_division_by_zero = false")
    con.execute(
        "SET default_null_order = 'nulls_last_on_asc_first_on_desc'")
    con.execute(MEDIAN_MACRO)
    for table, paths in files.items():
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet({paths!r})")
    for table in TELEMETRY:
        con.execute(f"CREATE VIEW fleet_{table} AS SELECT * FROM {table}")
    con.execute(DEVICES_DDL)
    start_ms, end_ms = con.execute(to_duckdb(TIME_SPAN)).fetchone()
    end_ms += 1
    out = {"setup_s": time.perf_counter() - started,
           "eval_ms": (start_ms, end_ms),
           "views": {}, "rules": {}, "failed": {}}
    for name, sql in views:
        sql = f"CREATE TABLE {name} AS {to_duckdb(sql)}"
        t0 = time.perf_counter()
        con.execute(sql)
        took = time.perf_counter() - t0
        rows = con.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]
        out["views"][name] = (took, rows)
    for rule_id, sql in rules:
        sql = sql.replace("${eval_start_ms}", str(start_ms))
        sql = to_duckdb(sql.replace("${eval_end_ms}", str(end_ms)))
        t0 = time.perf_counter()
        try:
            cur = con.execute(sql)
            rows = cur.fetchall()
        except duckdb.Error as e:
            out["failed"][rule_id] = str(e).splitlines()[0]
            continue
        took = time.perf_counter() - t0
        names = [d[0] for d in cur.description]
        keys = [names.index(c) for c in ("device_id", "first_ts", "last_ts")]
        # wallscope skips rows without these (engine.rs extract()).
        kept = sum(all(row[k] is not None for k in keys) for row in rows)
        out["rules"][rule_id] = (took, len(rows), kept)
    out["total_s"] = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mb"] = usage.ru_maxrss / 1024
    con.close()
    return out


def ms(seconds):
    return f"{seconds * 1000:.0f}"


def report(store, counts, ws, dk, views, rules):
    """Prints the views, the rules, the totals and the ratio."""
    row = "{:<26}{:>13}{:>11}{:>10}{:>13}"
    print(f"store {store}: "
          + ", ".join(f"{t} {counts[t]:,}" for t in STORED))
    print("wallscope: " + " ".join(ws["cmd"]))
    print(f"  shards: {ws['shards']} (? = this binary's -v log omits them)")
    print(f"  {ws['footer']}")
    print(f"duckdb {duckdb.__version__}: the whole fleet in one go, "
          f"eval range {dk['eval_ms'][0]}..{dk['eval_ms'][1]} ms")
    print()
    print(row.format("view", "wallscope ms", "duckdb ms", "", "duckdb rows"))
    for name, _ in views:
        took, rows = dk["views"][name]
        ws_s = ws["timings"].get(("view", name))
        print(row.format(name, ms(ws_s) if ws_s is not None else "",
                         ms(took), "", f"{rows:,}"))
    print()
    print(row.format("rule", "wallscope ms", "duckdb ms", "findings",
                     "duckdb rows"))
    for rule_id, _ in rules:
        ws_s = ws["timings"].get(("rule", rule_id))
        ws_ms = ms(ws_s) if ws_s is not None else ""
        found = ws["findings"].get(rule_id, 0)
        if rule_id in dk["failed"]:
            print(row.format(rule_id, ws_ms, "failed", found, "")
                  + "  " + dk["failed"][rule_id])
            continue
        took, rows, kept = dk["rules"][rule_id]
        shown = f"{rows}" if rows == kept else f"{kept} of {rows}"
        flag = "" if kept == found else "  <- differs"
        print(row.format(rule_id, ws_ms, ms(took), found, shown) + flag)
    print()

    def ws_sum(kind):
        return ms(sum(s for (k, _), s in ws["timings"].items() if k == kind))

    total = "{:<26}{:>13}{:>11}"
    print(total.format("totals", "wallscope", "duckdb"))
    print(total.format("setup ms (tables, range)", "", ms(dk["setup_s"])))
    print(total.format("views ms", ws_sum("view"),
                       ms(sum(t for t, _ in dk["views"].values()))))
    print(total.format("rules ms (sum)", ws_sum("rule"),
                       ms(sum(t for t, _, _ in dk["rules"].values()))))
    print(total.format("evaluation ms (in-process)", ms(ws["own_s"]),
                       ms(dk["total_s"])))
    print(total.format("end to end ms", ms(ws["wall_s"]), ms(dk["total_s"])))
    print(total.format("peak RSS MB", f"{ws['peak_rss_mb']:.0f}",
                       f"{dk['peak_rss_mb']:.0f}"))
    print(total.format("other processes CPU-s", f"{ws['others_cpu_s']:.1f}",
                       f"{dk['others_cpu_s']:.1f}"))
    print()
    print("wallscope end to end: the diagnose process (start, store, views,")
    print("  rules, printed findings); in-process: its footer's time.")
    print("duckdb: connect, Parquet views, range, views, rules, rows fetched;")
    print("  Python start and import duckdb left out.")
    print("wallscope's view and rule times sum over its shards, and rule")
    print("  times overlap (3 at once); duckdb runs one rule at a time.")
    print("Other processes' CPU-s above a few: contention, rerun when idle.")
    ratio = ws["wall_s"] / dk["total_s"]
    print(f"ratio wallscope / duckdb, end to end: {ratio:.2f}")
    if dk["failed"]:
        print(f"not comparable: {len(dk['failed'])} rule(s) failed in DuckDB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True,
                    help="a compacted wallscope data directory")
    ap.add_argument("--wallscope", required=True,
                    help="the wallscope binary")
    ap.add_argument("--rules", type=Path, default=REPO / "rules",
                    help="the rule files (*.toml) both engines run")
    ap.add_argument("--views", type=Path,
                    default=REPO / "src" / "rules" / "views.rs",
                    help="the shared views' SQL (src/rules/views.rs)")
    ap.add_argument("--threads", type=int, default=2,
                    help="DuckDB threads (wallscope uses every core)")
    args = ap.parse_args()

    files, manifest = manifest_files(args.store)
    counts = check_store(args.store, args.wallscope, manifest)
    views = load_views(args.views)
    rules = load_rules(args.rules)
    warm_page_cache(files)
    ws = with_others_cpu(run_wallscope, args.wallscope, args.store,
                         args.rules)
    dk = with_others_cpu(run_duckdb, files, views, rules, args.threads)
    report(args.store, counts, ws, dk, views, rules)


if __name__ == "__main__":
    main()
