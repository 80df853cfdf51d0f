//! Operator actions: acknowledgements and silences, in an append-only JSON Lines log
//! (`alerts/actions.jsonl`). The CLI (and later the API) appends one line per action and
//! fsyncs it; the engine re-reads the log before it assigns notifications, so an action
//! taken while `run` is running applies at once, and every action survives restarts. A
//! half-written last line (a crash mid-append) is skipped, never fatal.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::table::AlertRow;
use crate::model::ALERT_ACTIONS_FILE;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    /// Someone has taken the alert in hand. Shown by `alerts list`; changes no notification.
    Ack {
        alert_id: String,
        by: String,
        at_ms: i64,
        #[serde(default)]
        note: String,
    },
    /// No notifications for matching alerts between `from_ms` and `until_ms` (wall clock);
    /// their transitions are still recorded, marked `silenced_by`.
    Silence {
        id: String,
        #[serde(default)]
        device: Option<String>,
        /// A rule id or a fault code (`F07`).
        #[serde(default)]
        rule: Option<String>,
        from_ms: i64,
        until_ms: i64,
        by: String,
        reason: String,
    },
}

impl Action {
    pub fn at_ms(&self) -> i64 {
        match self {
            Action::Ack { at_ms, .. } => *at_ms,
            Action::Silence { from_ms, .. } => *from_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// An action a person asked for that cannot be taken as asked (the text says why).
    #[error("{0}")]
    Invalid(String),
    #[error("no alert {0:?} here")]
    UnknownAlert(String),
}

/// A silence as an operator asks for it (CLI `alerts silence`, API `POST /silences`).
#[derive(Debug, Clone)]
pub struct SilenceRequest {
    pub device: Option<String>,
    /// A rule id or a fault code.
    pub rule: Option<String>,
    pub for_ms: i64,
    pub by: String,
    pub reason: String,
}

/// Checks and records a silence starting at `now_ms`; returns what was stored.
pub fn silence(dir: &Path, req: SilenceRequest, now_ms: i64) -> Result<Action, ActionError> {
    if req.device.is_none() && req.rule.is_none() {
        return Err(ActionError::Invalid(
            "a silence needs a device, a rule or both (a silence of everything would hide the next real fault)".into(),
        ));
    }
    if req.reason.trim().is_empty() {
        return Err(ActionError::Invalid(
            "a silence needs a reason (it is shown with every muted alert)".into(),
        ));
    }
    if req.for_ms <= 0 {
        return Err(ActionError::Invalid(
            "a silence must last longer than zero".into(),
        ));
    }
    let id = format!(
        "S{}",
        &super::alert_id(
            req.rule.as_deref().unwrap_or(""),
            req.device.as_deref().unwrap_or(""),
            now_ms
        )[1..]
    );
    let action = Action::Silence {
        id,
        device: req.device,
        rule: req.rule,
        from_ms: now_ms,
        until_ms: now_ms.saturating_add(req.for_ms),
        by: req.by,
        reason: req.reason,
    };
    append(dir, &action)?;
    Ok(action)
}

/// Records that `by` has taken alert `alert_id` in hand; the alert must exist in `rows`.
pub fn ack(
    dir: &Path,
    rows: &[AlertRow],
    alert_id: &str,
    by: &str,
    note: &str,
    now_ms: i64,
) -> Result<Action, ActionError> {
    if !rows.iter().any(|r| r.alert_id == alert_id) {
        return Err(ActionError::UnknownAlert(alert_id.into()));
    }
    let action = Action::Ack {
        alert_id: alert_id.into(),
        by: by.into(),
        at_ms: now_ms,
        note: note.into(),
    };
    append(dir, &action)?;
    Ok(action)
}

/// The log as read: the actions, and how many lines could not be read.
#[derive(Debug, Clone, Default)]
pub struct Actions {
    pub list: Vec<Action>,
    pub unreadable_lines: usize,
}

impl Actions {
    /// The silence muting `row` at wall-clock `now_ms`, if any.
    pub fn silence_for(&self, row: &AlertRow, now_ms: i64) -> Option<&str> {
        self.list.iter().find_map(|a| match a {
            Action::Silence {
                id,
                device,
                rule,
                from_ms,
                until_ms,
                ..
            } if (*from_ms..*until_ms).contains(&now_ms)
                && device
                    .as_ref()
                    .is_none_or(|d| row.device_id.as_ref() == Some(d) || &row.key == d)
                && rule
                    .as_ref()
                    .is_none_or(|r| &row.rule == r || row.fault.as_ref() == Some(r)) =>
            {
                Some(id.as_str())
            }
            _ => None,
        })
    }

    /// Acks of `alert_id`, oldest first.
    pub fn acks_of<'a>(&'a self, alert_id: &'a str) -> impl Iterator<Item = &'a Action> + 'a {
        self.list
            .iter()
            .filter(move |a| matches!(a, Action::Ack { alert_id: id, .. } if id == alert_id))
    }
}

/// Reads the log (empty when there is none yet).
pub fn load(dir: &Path) -> Result<Actions, ActionError> {
    let path = dir.join(ALERT_ACTIONS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Actions::default()),
        Err(source) => {
            return Err(ActionError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let mut out = Actions::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Action>(line) {
            Ok(a) => out.list.push(a),
            Err(_) => out.unreadable_lines += 1,
        }
    }
    Ok(out)
}

/// Appends one action and fsyncs it before returning.
pub fn append(dir: &Path, action: &Action) -> Result<(), ActionError> {
    let path = dir.join(ALERT_ACTIONS_FILE);
    let io = |source| ActionError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        crate::store::files::create_dir_durable(parent)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
    }
    let mut line = serde_json::to_string(action).map_err(|e| io(std::io::Error::other(e)))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&path)
        .map_err(io)?;
    // After a crash mid-append the log ends in a torn line: start on a fresh line, or this
    // action would be glued to the fragment and lost with it.
    let len = f.metadata().map_err(io)?.len();
    if len > 0 {
        use std::io::{Read, Seek, SeekFrom};
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1)).map_err(io)?;
        f.read_exact(&mut last).map_err(io)?;
        if last[0] != b'\n' {
            line.insert(0, '\n');
        }
    }
    // One write of a whole line: concurrent appenders (CLI and API) never interleave.
    f.write_all(line.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::lifecycle::State;

    #[test]
    fn silences_match_device_and_rule_within_their_window() {
        let dir = tempfile::tempdir().unwrap();
        let s = Action::Silence {
            id: "S1".into(),
            device: Some("wc0001".into()),
            rule: Some("F06".into()),
            from_ms: 100,
            until_ms: 200,
            by: "ops".into(),
            reason: "customer informed".into(),
        };
        append(dir.path(), &s).unwrap();
        // A torn last line is skipped.
        let p = dir.path().join(ALERT_ACTIONS_FILE);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"action\":\"ack\",\"al").unwrap();
        let a = load(dir.path()).unwrap();
        assert_eq!(a.list, vec![s]);
        assert_eq!(a.unreadable_lines, 1);
        let row = crate::alerts::table::tests_support::row("A1", State::Firing, 0);
        assert_eq!(a.silence_for(&row, 150), Some("S1"));
        assert_eq!(a.silence_for(&row, 250), None);
        let other = AlertRow {
            device_id: Some("wc0002".into()),
            key: "wc0002".into(),
            ..row
        };
        assert_eq!(a.silence_for(&other, 150), None);
        // The next action after the torn line is kept.
        let ack = Action::Ack {
            alert_id: "A1".into(),
            by: "ops".into(),
            at_ms: 300,
            note: String::new(),
        };
        append(dir.path(), &ack).unwrap();
        let a = load(dir.path()).unwrap();
        assert_eq!(a.list.last(), Some(&ack));
        assert_eq!(a.unreadable_lines, 1);
    }

    #[test]
    fn silences_and_acks_are_checked_before_they_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let req = |device: Option<&str>, reason: &str, for_ms| SilenceRequest {
            device: device.map(String::from),
            rule: None,
            for_ms,
            by: "ops".into(),
            reason: reason.into(),
        };
        for bad in [
            req(None, "x", 1),
            req(Some("wc1"), " ", 1),
            req(Some("wc1"), "x", 0),
        ] {
            assert!(matches!(
                silence(dir.path(), bad, 0),
                Err(ActionError::Invalid(_))
            ));
        }
        let s = silence(dir.path(), req(Some("wc1"), "customer told", 60_000), 1_000).unwrap();
        assert!(matches!(
            &s,
            Action::Silence {
                until_ms: 61_000,
                ..
            }
        ));
        let row = crate::alerts::table::tests_support::row("A1", State::Firing, 0);
        assert!(matches!(
            ack(dir.path(), std::slice::from_ref(&row), "A2", "ops", "", 5),
            Err(ActionError::UnknownAlert(_))
        ));
        ack(dir.path(), &[row], "A1", "ops", "on it", 5).unwrap();
        assert_eq!(load(dir.path()).unwrap().list.len(), 2);
    }
}
