//! The `alerts` table: every transition of every alert, one row each, stored as one Parquet
//! file replaced durably (temp file, fsync, rename) whenever transitions are added or a
//! notification is assigned. The file is both the history and the outbox: a row with a
//! `notification_id` belongs to that notification, and a sink's delivered log says which
//! notifications it has sent (see `sink`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};

use super::lifecycle::State;
use crate::model::{ALERTS_FILE, alerts_schema};

/// One transition of one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    pub alert_id: String,
    pub rule: String,
    /// `fault` or `trend`.
    pub kind: String,
    pub key: String,
    pub device_id: Option<String>,
    pub fault: Option<String>,
    pub state: State,
    pub at_ms: i64,
    pub started_ms: i64,
    pub severity: String,
    pub owner: String,
    pub title: String,
    pub summary: String,
    /// Labels as a sorted map (site, installer, firmware_version, part_number, …).
    pub labels: BTreeMap<String, String>,
    pub evidence: String,
    pub steps: String,
    pub inhibited_by: Option<String>,
    pub silenced_by: Option<String>,
    pub notification_id: Option<String>,
    pub recorded_ms: i64,
}

impl AlertRow {
    /// Whether a notification is due for this transition (firing and resolved are sent;
    /// pending and cancelled only recorded) and it is not muted.
    pub fn wants_notification(&self) -> bool {
        matches!(self.state, State::Firing | State::Resolved)
            && self.inhibited_by.is_none()
            && self.silenced_by.is_none()
    }

    pub fn labels_json(&self) -> String {
        serde_json::to_string(&self.labels).unwrap_or_else(|_| "{}".into())
    }

    /// The row as a JSON object (the form notifications and `alerts show --json` carry).
    pub fn to_json(&self) -> serde_json::Value {
        let raw = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
        serde_json::json!({
            "alert_id": self.alert_id,
            "rule": self.rule,
            "kind": self.kind,
            "key": self.key,
            "device_id": self.device_id,
            "fault": self.fault,
            "state": self.state.as_str(),
            "at": crate::capture::format_rfc3339_ms(self.at_ms),
            "started_at": crate::capture::format_rfc3339_ms(self.started_ms),
            "severity": self.severity,
            "owner": self.owner,
            "title": self.title,
            "summary": self.summary,
            "labels": self.labels,
            "evidence": raw(&self.evidence),
            "steps": raw(&self.steps),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("alerts file {path}: {source}")]
    File {
        path: String,
        source: crate::store::files::FileError,
    },
    #[error("alerts file {path}: {problem}")]
    Bad { path: String, problem: String },
}

pub fn to_batch(rows: &[AlertRow]) -> RecordBatch {
    let s = |f: &dyn Fn(&AlertRow) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let o = |f: &dyn Fn(&AlertRow) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from_iter(rows.iter().map(f)))
    };
    let t = |f: &dyn Fn(&AlertRow) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"),
        )
    };
    let cols = vec![
        s(&|r| r.alert_id.clone()),
        s(&|r| r.rule.clone()),
        s(&|r| r.kind.clone()),
        s(&|r| r.key.clone()),
        o(&|r| r.device_id.clone()),
        o(&|r| r.fault.clone()),
        s(&|r| r.state.as_str().into()),
        t(&|r| r.at_ms),
        t(&|r| r.started_ms),
        s(&|r| r.severity.clone()),
        s(&|r| r.owner.clone()),
        s(&|r| r.title.clone()),
        s(&|r| r.summary.clone()),
        s(&|r| r.labels_json()),
        s(&|r| r.evidence.clone()),
        s(&|r| r.steps.clone()),
        o(&|r| r.inhibited_by.clone()),
        o(&|r| r.silenced_by.clone()),
        o(&|r| r.notification_id.clone()),
        t(&|r| r.recorded_ms),
    ];
    // The columns match the schema by construction.
    RecordBatch::try_new(alerts_schema(), cols).expect("alerts batch matches its schema")
}

fn from_batch(b: &RecordBatch, path: &str) -> Result<Vec<AlertRow>, TableError> {
    let bad = |problem: String| TableError::Bad {
        path: path.to_string(),
        problem,
    };
    let col = |name: &str| -> Result<ArrayRef, TableError> {
        b.column_by_name(name)
            .cloned()
            .ok_or_else(|| bad(format!("no column {name}")))
    };
    let text = |name: &str| -> Result<StringArray, TableError> {
        let a = arrow::compute::cast(&col(name)?, &arrow::datatypes::DataType::Utf8)
            .map_err(|e| bad(e.to_string()))?;
        a.as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| bad(format!("{name} is not text")))
    };
    let ts = |name: &str| -> Result<TimestampMillisecondArray, TableError> {
        col(name)?
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .cloned()
            .ok_or_else(|| bad(format!("{name} is not a timestamp")))
    };
    let opt = |a: &StringArray, r: usize| a.is_valid(r).then(|| a.value(r).to_string());
    let (id, rule, kind, key, dev, fault, state) = (
        text("alert_id")?,
        text("rule")?,
        text("kind")?,
        text("key")?,
        text("device_id")?,
        text("fault")?,
        text("state")?,
    );
    let (sev, owner, title, summary, labels, ev, steps) = (
        text("severity")?,
        text("owner")?,
        text("title")?,
        text("summary")?,
        text("labels")?,
        text("evidence")?,
        text("steps")?,
    );
    let (inh, sil, note) = (
        text("inhibited_by")?,
        text("silenced_by")?,
        text("notification_id")?,
    );
    let (at, started, recorded) = (ts("at")?, ts("started_at")?, ts("recorded_at")?);
    let mut out = Vec::with_capacity(b.num_rows());
    for r in 0..b.num_rows() {
        out.push(AlertRow {
            alert_id: id.value(r).into(),
            rule: rule.value(r).into(),
            kind: kind.value(r).into(),
            key: key.value(r).into(),
            device_id: opt(&dev, r),
            fault: opt(&fault, r),
            state: State::parse(state.value(r))
                .ok_or_else(|| bad(format!("unknown state {:?}", state.value(r))))?,
            at_ms: at.value(r),
            started_ms: started.value(r),
            severity: sev.value(r).into(),
            owner: owner.value(r).into(),
            title: title.value(r).into(),
            summary: summary.value(r).into(),
            labels: serde_json::from_str(labels.value(r))
                .map_err(|e| bad(format!("labels: {e}")))?,
            evidence: ev.value(r).into(),
            steps: steps.value(r).into(),
            inhibited_by: opt(&inh, r),
            silenced_by: opt(&sil, r),
            notification_id: opt(&note, r),
            recorded_ms: recorded.value(r),
        });
    }
    Ok(out)
}

/// The transitions stored in a data directory (none before the first evaluation).
pub fn load(dir: &Path) -> Result<Vec<AlertRow>, TableError> {
    let path = dir.join(ALERTS_FILE);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let shown = path.display().to_string();
    let batches =
        crate::store::files::read_parquet(&path, None).map_err(|source| TableError::File {
            path: shown.clone(),
            source,
        })?;
    let mut out = Vec::new();
    for b in &batches {
        out.extend(from_batch(b, &shown)?);
    }
    Ok(out)
}

/// Replaces the stored transitions durably.
pub fn save(dir: &Path, rows: &[AlertRow]) -> Result<(), TableError> {
    let path = dir.join(ALERTS_FILE);
    crate::store::files::write_batch_durable(&to_batch(rows), &path).map_err(|source| {
        TableError::File {
            path: path.display().to_string(),
            source,
        }
    })?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn row(id: &str, state: State, at: i64) -> AlertRow {
        AlertRow {
            alert_id: id.into(),
            rule: "handle_overtemp".into(),
            kind: "fault".into(),
            key: "wc0001".into(),
            device_id: Some("wc0001".into()),
            fault: Some("F06".into()),
            state,
            at_ms: at,
            started_ms: 0,
            severity: "major".into(),
            owner: "customer".into(),
            title: "t".into(),
            summary: "s".into(),
            labels: [("site".to_string(), "S1".to_string())].into(),
            evidence: "{\"max_c\":81.5}".into(),
            steps: "[]".into(),
            inhibited_by: None,
            silenced_by: Some("S-1".into()),
            notification_id: None,
            recorded_ms: 5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::row;
    use super::*;

    #[test]
    fn round_trips_through_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![row("A1", State::Firing, 10), row("A1", State::Resolved, 20)];
        save(dir.path(), &rows).unwrap();
        assert_eq!(load(dir.path()).unwrap(), rows);
    }
}
