//! Compact JSON writing in the charger's own number style (fixed decimals per field,
//! `-0.0` kept where the firmware prints it), straight into a reused `String`.
//!
//! `serde_json` would re-order nothing but would print `110.1` where the charger prints
//! `110.100`, and would allocate per message; this writer does neither.

fn push_u64(buf: &mut String, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &b in &tmp[i..] {
        buf.push(char::from(b));
    }
}

fn push_i64(buf: &mut String, v: i64) {
    if v < 0 {
        buf.push('-');
    }
    push_u64(buf, v.unsigned_abs());
}

/// `v` with exactly `decimals` digits after the point. Negative values that round to zero
/// print as `-0.0`, as the firmware does for pilot readings.
fn push_fixed(buf: &mut String, v: f64, decimals: u32) {
    let v = if v.is_finite() { v } else { 0.0 };
    let scale = 10u64.pow(decimals);
    if v < 0.0 {
        buf.push('-');
    }
    // Telemetry values are far below 2^53, the clamp only keeps the cast well-defined.
    let r = (v.abs() * scale as f64).round().min(9.0e15) as u64;
    push_u64(buf, r / scale);
    if decimals > 0 {
        buf.push('.');
        let frac = r % scale;
        let mut div = scale / 10;
        while div > 0 {
            buf.push(char::from(b'0' + ((frac / div) % 10) as u8));
            div /= 10;
        }
    }
}

pub(crate) fn push_envelope_head(buf: &mut String, ts: i64, seq: u64) {
    buf.push_str("{\"ts\":");
    push_i64(buf, ts);
    buf.push_str(",\"seq\":");
    push_u64(buf, seq);
    buf.push_str(",\"data\":");
}

/// Writes one JSON object field by field. A field whose key equals `skip` is left out, which
/// is how the "missing optional field" quirk is produced without a second code path.
pub(crate) struct Obj<'a> {
    buf: &'a mut String,
    first: bool,
    skip: &'a str,
}

impl<'a> Obj<'a> {
    pub(crate) fn new(buf: &'a mut String, skip: &'a str) -> Self {
        buf.push('{');
        Obj {
            buf,
            first: true,
            skip,
        }
    }

    fn key(&mut self, k: &str) -> bool {
        if k == self.skip {
            return false;
        }
        if !self.first {
            self.buf.push(',');
        }
        self.first = false;
        self.buf.push('"');
        self.buf.push_str(k);
        self.buf.push_str("\":");
        true
    }

    pub(crate) fn fixed(&mut self, k: &str, v: f64, decimals: u32) -> &mut Self {
        if self.key(k) {
            push_fixed(self.buf, v, decimals);
        }
        self
    }

    pub(crate) fn int(&mut self, k: &str, v: i64) -> &mut Self {
        if self.key(k) {
            push_i64(self.buf, v);
        }
        self
    }

    pub(crate) fn boolean(&mut self, k: &str, v: bool) -> &mut Self {
        if self.key(k) {
            self.buf.push_str(if v { "true" } else { "false" });
        }
        self
    }

    /// A string known to need no escaping (ids, base64, versions, addresses).
    pub(crate) fn text(&mut self, k: &str, v: &str) -> &mut Self {
        if self.key(k) {
            self.buf.push('"');
            self.buf.push_str(v);
            self.buf.push('"');
        }
        self
    }

    /// A value written verbatim: the firmware's bare `nan` is not JSON, and that is the point.
    pub(crate) fn raw(&mut self, k: &str, v: &str) -> &mut Self {
        if self.key(k) {
            self.buf.push_str(v);
        }
        self
    }

    pub(crate) fn ints(&mut self, k: &str, vs: &[u8]) -> &mut Self {
        if self.key(k) {
            self.buf.push('[');
            for (i, v) in vs.iter().enumerate() {
                if i > 0 {
                    self.buf.push(',');
                }
                push_u64(self.buf, u64::from(*v));
            }
            self.buf.push(']');
        }
        self
    }

    pub(crate) fn close(&mut self) {
        self.buf.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(v: f64, d: u32) -> String {
        let mut s = String::new();
        push_fixed(&mut s, v, d);
        s
    }

    #[test]
    fn numbers_print_like_the_firmware() {
        assert_eq!(fixed(246.3, 1), "246.3");
        assert_eq!(fixed(240.0, 1), "240.0");
        assert_eq!(fixed(59.8, 3), "59.800");
        assert_eq!(fixed(110.1, 3), "110.100");
        assert_eq!(fixed(-0.04, 1), "-0.0");
        assert_eq!(fixed(-11.9, 1), "-11.9");
        assert_eq!(fixed(0.05, 1), "0.1");
        assert_eq!(fixed(f64::NAN, 1), "0.0");
        let mut s = String::new();
        push_i64(&mut s, -83);
        push_u64(&mut s, 0);
        assert_eq!(s, "-830");
    }

    #[test]
    fn object_skips_and_orders_fields() {
        let mut s = String::new();
        Obj::new(&mut s, "b")
            .boolean("a", true)
            .int("b", 1)
            .ints("c", &[4, 8])
            .text("d", "x")
            .close();
        assert_eq!(s, r#"{"a":true,"c":[4,8],"d":"x"}"#);
    }
}
