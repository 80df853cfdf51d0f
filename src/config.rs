//! User-facing settings: parsing of durations and sizes as users write them.
//!
//! Raw input is validated into typed values here, before library code sees it, with errors
//! that say what to write instead.

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
}
