//! A finding: one episode of one fault on one device, with its evidence and steps — and
//! the `findings` table that stores them.
//!
//! An episode is identified by (rule, device) and its time span. Storing merges a new
//! finding into a stored one of the same rule and device whose span it overlaps, so an
//! ongoing episode seen again by a later evaluation is extended, never repeated.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use serde_json::Value;

use super::spec::{Severity, Step};
use crate::capture::format_rfc3339_ms;
use crate::model::{FINDINGS_FILE, findings_schema};

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub rule: String,
    pub fault: String,
    pub device_id: String,
    pub first_ms: i64,
    pub last_ms: i64,
    pub severity: Severity,
    pub class: String,
    pub owner: String,
    pub title: String,
    pub summary: String,
    /// Evidence values in the rule's column order.
    pub evidence: Vec<(String, Value)>,
    pub steps: Vec<Step>,
    /// Event time of the evaluation that first reported the episode.
    pub detected_ms: i64,
}

impl Finding {
    pub fn evidence_json(&self) -> String {
        // serde_json's map sorts keys; write in the rule's order instead.
        let mut s = String::from("{");
        for (i, (k, v)) in self.evidence.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&Value::String(k.clone()).to_string());
            s.push(':');
            s.push_str(&v.to_string());
        }
        s.push('}');
        s
    }

    pub fn steps_json(&self) -> String {
        serde_json::to_string(&self.steps).unwrap_or_else(|_| "[]".into())
    }

    /// The stable JSON Lines form `diagnose --json` prints (documented in rules/README.md).
    pub fn to_json_line(&self) -> String {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| serde_json::json!({"who": s.who.as_str(), "text": s.text}))
            .collect();
        // Keys in a fixed order, so diffs of the output stay readable.
        let fields: [(&str, Value); 11] = [
            ("device_id", self.device_id.clone().into()),
            ("fault", self.fault.clone().into()),
            ("rule", self.rule.clone().into()),
            ("severity", self.severity.as_str().into()),
            ("title", self.title.clone().into()),
            ("class", self.class.clone().into()),
            ("owner", self.owner.clone().into()),
            ("first_ts", format_rfc3339_ms(self.first_ms).into()),
            ("last_ts", format_rfc3339_ms(self.last_ms).into()),
            ("summary", self.summary.clone().into()),
            ("steps", Value::Array(steps)),
        ];
        let mut s = String::from("{");
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&Value::String((*k).into()).to_string());
            s.push(':');
            s.push_str(&v.to_string());
            if *k == "summary" {
                // Evidence keeps the rule's column order, which serde_json's map would sort.
                s.push_str(",\"evidence\":");
                s.push_str(&self.evidence_json());
            }
        }
        s.push('}');
        s
    }

    /// True when `other` is the same episode (same rule and device, spans touching).
    fn same_episode(&self, other: &Finding) -> bool {
        self.rule == other.rule
            && self.device_id == other.device_id
            && other.first_ms <= self.last_ms
            && other.last_ms >= self.first_ms
    }
}

/// Most severe first; then the safety rank of the fault; then the earliest.
pub fn sort_for_people(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        let rank = |f: &Finding| super::faults::fault(&f.fault).map_or(9, |x| x.rank);
        b.severity
            .cmp(&a.severity)
            .then(rank(a).cmp(&rank(b)))
            .then(a.device_id.cmp(&b.device_id))
            .then(a.first_ms.cmp(&b.first_ms))
            .then(a.rule.cmp(&b.rule))
    });
}

/// Merges `new` into `stored`: an overlapping episode of the same rule and device is
/// extended (its evidence replaced by the newer evaluation's, its severity the higher of
/// the two); anything else is appended. Returns how many were appended.
pub fn merge(stored: &mut Vec<Finding>, new: Vec<Finding>) -> usize {
    let mut appended = 0;
    for n in new {
        if let Some(old) = stored.iter_mut().find(|o| o.same_episode(&n)) {
            let detected = old.detected_ms.min(n.detected_ms);
            let first = old.first_ms.min(n.first_ms);
            let last = old.last_ms.max(n.last_ms);
            let severity = old.severity.max(n.severity);
            *old = n;
            old.first_ms = first;
            old.last_ms = last;
            old.severity = severity;
            old.detected_ms = detected;
        } else {
            stored.push(n);
            appended += 1;
        }
    }
    stored.sort_by(|a, b| {
        (a.device_id.as_str(), a.first_ms, a.rule.as_str()).cmp(&(
            b.device_id.as_str(),
            b.first_ms,
            b.rule.as_str(),
        ))
    });
    appended
}

#[derive(Debug, thiserror::Error)]
pub enum FindingsError {
    #[error("findings file {path}: {source}")]
    File {
        path: String,
        source: crate::store::files::FileError,
    },
    #[error("findings file {path}: {problem}")]
    Bad { path: String, problem: String },
}

/// The findings as an Arrow batch of `model::findings_schema()`.
pub fn to_batch(findings: &[Finding]) -> RecordBatch {
    let s = |f: &dyn Fn(&Finding) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(findings.iter().map(f)))
    };
    let t = |f: &dyn Fn(&Finding) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMillisecondArray::from_iter_values(findings.iter().map(f))
                .with_timezone("UTC"),
        )
    };
    let cols = vec![
        s(&|f| f.rule.clone()),
        s(&|f| f.fault.clone()),
        s(&|f| f.device_id.clone()),
        t(&|f| f.first_ms),
        t(&|f| f.last_ms),
        s(&|f| f.severity.as_str().into()),
        s(&|f| f.class.clone()),
        s(&|f| f.owner.clone()),
        s(&|f| f.title.clone()),
        s(&|f| f.summary.clone()),
        s(&|f| f.evidence_json()),
        s(&|f| f.steps_json()),
        t(&|f| f.detected_ms),
    ];
    // The columns match the schema by construction.
    RecordBatch::try_new(findings_schema(), cols).expect("findings batch matches its schema")
}

fn from_batch(b: &RecordBatch, path: &str) -> Result<Vec<Finding>, FindingsError> {
    let bad = |problem: String| FindingsError::Bad {
        path: path.to_string(),
        problem,
    };
    let col = |name: &str| -> Result<ArrayRef, FindingsError> {
        b.column_by_name(name)
            .cloned()
            .ok_or_else(|| bad(format!("no column {name}")))
    };
    let text = |name: &str| -> Result<StringArray, FindingsError> {
        let a = arrow::compute::cast(&col(name)?, &arrow::datatypes::DataType::Utf8)
            .map_err(|e| bad(e.to_string()))?;
        a.as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| bad(format!("{name} is not text")))
    };
    let ts = |name: &str| -> Result<TimestampMillisecondArray, FindingsError> {
        col(name)?
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .cloned()
            .ok_or_else(|| bad(format!("{name} is not a timestamp")))
    };
    let (rule, fault, device, sev, class, owner, title, summary, ev, steps) = (
        text("rule")?,
        text("fault")?,
        text("device_id")?,
        text("severity")?,
        text("class")?,
        text("owner")?,
        text("title")?,
        text("summary")?,
        text("evidence")?,
        text("steps")?,
    );
    let (first, last, detected) = (ts("first_ts")?, ts("last_ts")?, ts("detected_at")?);
    let mut out = Vec::with_capacity(b.num_rows());
    for r in 0..b.num_rows() {
        let evidence: serde_json::Map<String, Value> =
            serde_json::from_str(ev.value(r)).map_err(|e| bad(format!("evidence: {e}")))?;
        out.push(Finding {
            rule: rule.value(r).into(),
            fault: fault.value(r).into(),
            device_id: device.value(r).into(),
            first_ms: first.value(r),
            last_ms: last.value(r),
            severity: Severity::parse(sev.value(r))
                .ok_or_else(|| bad(format!("unknown severity {:?}", sev.value(r))))?,
            class: class.value(r).into(),
            owner: owner.value(r).into(),
            title: title.value(r).into(),
            summary: summary.value(r).into(),
            evidence: evidence.into_iter().collect(),
            steps: serde_json::from_str(steps.value(r)).map_err(|e| bad(format!("steps: {e}")))?,
            detected_ms: detected.value(r),
        });
    }
    Ok(out)
}

/// The findings stored in a data directory (none when the file does not exist yet).
pub fn load(dir: &Path) -> Result<Vec<Finding>, FindingsError> {
    let path = dir.join(FINDINGS_FILE);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let shown = path.display().to_string();
    let batches =
        crate::store::files::read_parquet(&path, None).map_err(|source| FindingsError::File {
            path: shown.clone(),
            source,
        })?;
    let mut out = Vec::new();
    for b in &batches {
        out.extend(from_batch(b, &shown)?);
    }
    Ok(out)
}

/// Replaces the stored findings durably (temp file, fsync, rename, fsync directory).
pub fn save(dir: &Path, findings: &[Finding]) -> Result<(), FindingsError> {
    let path = dir.join(FINDINGS_FILE);
    crate::store::files::write_batch_durable(&to_batch(findings), &path).map_err(|source| {
        FindingsError::File {
            path: path.display().to_string(),
            source,
        }
    })?;
    Ok(())
}
