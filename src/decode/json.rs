//! A JSON scanner shaped for charger payloads: flat objects of numbers, bools, short strings
//! and short arrays, ~600 bytes, fields nearly always in the firmware's order.
//!
//! General-purpose parsers build a value tree or go through serde's visitor machinery; this
//! one walks the bytes once and hands each value to the caller as it passes, which is what
//! lets the decoder reach ~1 M messages/s/core. It accepts the firmware's bare `nan` (and
//! `inf`/`-inf`) as a "no reading" token. It never panics and never recurses: nesting is
//! tracked with a counter and bounded by the caller's depth limit.

/// A scan failure: what went wrong and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub kind: ScanErrorKind,
    pub offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanErrorKind {
    /// Input ended inside a value.
    Truncated,
    /// Something other than valid JSON.
    Syntax(&'static str),
    TooDeep,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ScanErrorKind::Truncated => write!(f, "JSON ends early at byte {}", self.offset),
            ScanErrorKind::Syntax(what) => {
                write!(f, "invalid JSON at byte {}: {what}", self.offset)
            }
            ScanErrorKind::TooDeep => write!(f, "JSON nested too deeply at byte {}", self.offset),
        }
    }
}

/// A parsed JSON number: always as f64, and as i64 when it is written as an integer that fits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number {
    pub f: f64,
    pub i: Option<i64>,
}

/// Exact powers of ten representable in an f64 (10^22 is the largest).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

const POW10_U64: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

/// The run of ASCII digits at `b[i..]`, read as one little-endian word: its value and
/// length, when it is 1–7 digits long and a full word is available (so the byte after the
/// run is in bounds).
#[inline(always)]
fn digits8(b: &[u8], i: usize) -> Option<(u64, usize)> {
    let w: [u8; 8] = b.get(i..i + 8)?.try_into().ok()?;
    let x = u64::from_le_bytes(w);
    // Per byte: c - '0' (wrapping), then "> 9" as the top bit of (c - '0') + 0x76, or the
    // top bit of c - '0' itself for bytes below '0' or above 0x89. Borrows and carries only
    // cross from a non-digit byte into the bytes after it, past the first non-digit, which
    // is all this looks for.
    let d = x.wrapping_sub(0x3030_3030_3030_3030);
    let non_digit = (d | d.wrapping_add(0x7676_7676_7676_7676)) & 0x8080_8080_8080_8080;
    let n = (non_digit.trailing_zeros() / 8) as usize;
    if n == 0 || n == 8 {
        return None;
    }
    // Keep the n digit values, moved to the top so the empty low bytes read as leading
    // zeros; then pairs, quads and the whole word, as in simdjson's eight-digit parse.
    let v = (d & 0x0F0F_0F0F_0F0F_0F0F) << (8 * (8 - n));
    let v = (v.wrapping_mul(2561)) >> 8;
    let v = ((v & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601)) >> 16;
    let v = ((v & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001)) >> 32;
    Some((v, n))
}

pub struct Cursor<'a> {
    pub b: &'a [u8],
    pub i: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Cursor { b, i: 0 }
    }

    fn err<T>(&self, kind: ScanErrorKind) -> Result<T, ScanError> {
        Err(ScanError {
            kind,
            offset: self.i,
        })
    }

    fn syntax<T>(&self, what: &'static str) -> Result<T, ScanError> {
        if self.i >= self.b.len() {
            self.err(ScanErrorKind::Truncated)
        } else {
            self.err(ScanErrorKind::Syntax(what))
        }
    }

    #[inline]
    pub fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    pub fn at_end(&self) -> bool {
        self.i >= self.b.len()
    }

    #[inline]
    pub fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    pub fn expect(&mut self, c: u8, what: &'static str) -> Result<(), ScanError> {
        self.ws();
        if self.eat(c) {
            Ok(())
        } else {
            self.syntax(what)
        }
    }

    /// Scans a string starting at `"`; returns the raw bytes between the quotes and whether
    /// they contain escapes. Charger strings are short (keys, ids), so a plain byte loop that
    /// checks quote, backslash and control characters in one pass beats a SIMD search.
    #[inline]
    pub fn raw_string(&mut self) -> Result<(&'a [u8], bool), ScanError> {
        if !self.eat(b'"') {
            return self.syntax("expected a string");
        }
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let mut escaped = false;
        while i < b.len() {
            let c = b[i];
            if c == b'"' {
                self.i = i + 1;
                return Ok((&b[start..i], escaped));
            }
            if c == b'\\' {
                escaped = true;
                match b.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                    Some(b'u') => match b.get(i + 2..i + 6) {
                        Some(h) if h.iter().all(u8::is_ascii_hexdigit) => i += 6,
                        Some(_) => {
                            self.i = i;
                            return self.err(ScanErrorKind::Syntax("invalid \\u escape"));
                        }
                        None => break,
                    },
                    Some(_) => {
                        self.i = i;
                        return self.err(ScanErrorKind::Syntax("invalid escape"));
                    }
                    None => break,
                }
                continue;
            }
            if c < 0x20 {
                self.i = i;
                return self.err(ScanErrorKind::Syntax("control character in string"));
            }
            i += 1;
        }
        self.i = b.len();
        self.err(ScanErrorKind::Truncated)
    }

    /// Scans a string and appends its unescaped text to `out`.
    pub fn string_into(&mut self, out: &mut String) -> Result<(), ScanError> {
        out.push_str(self.text(&mut String::new())?);
        Ok(())
    }

    /// Scans a string and appends its unescaped text to `out` as UTF-8 bytes; `scratch`
    /// is unescaping space for the rare string with escapes.
    #[inline]
    pub fn string_into_bytes(
        &mut self,
        out: &mut Vec<u8>,
        scratch: &mut String,
    ) -> Result<(), ScanError> {
        out.extend_from_slice(self.text(scratch)?.as_bytes());
        Ok(())
    }

    /// Scans a string: its text borrowed from the input when it has no escapes, else
    /// unescaped into `scratch`.
    #[inline]
    fn text<'s>(&mut self, scratch: &'s mut String) -> Result<&'s str, ScanError>
    where
        'a: 's,
    {
        let at = self.i;
        let (raw, escaped) = self.raw_string()?;
        let bad = |what| ScanError {
            kind: ScanErrorKind::Syntax(what),
            offset: at,
        };
        if !escaped {
            // Text is kept, so it is checked here (the payload as a whole is not).
            return std::str::from_utf8(raw).map_err(|_| bad("invalid UTF-8 in string"));
        }
        scratch.clear();
        unescape(raw, scratch).map_err(bad)?;
        Ok(scratch)
    }

    /// Scans a JSON number.
    #[inline]
    pub fn number(&mut self) -> Result<Number, ScanError> {
        match self.short_number() {
            Some(n) => Ok(n),
            None => self.any_number(),
        }
    }

    /// The numbers charger payloads are made of — `-?` then 1–7 digits, optionally `.` and
    /// 1–7 digits, with at least 8 bytes of input after each digit run — read eight bytes
    /// at a time (SWAR): find where the digits stop, then combine them in three
    /// multiplications. None for anything else (exponents, long or leading-zero mantissas,
    /// the last bytes of the input), which `any_number` reads, or rejects, byte by byte.
    #[inline(always)]
    fn short_number(&mut self) -> Option<Number> {
        let b = self.b;
        let neg = b.get(self.i) == Some(&b'-');
        let mut i = self.i + usize::from(neg);
        let (int, n) = digits8(b, i)?;
        if n > 1 && b[i] == b'0' {
            return None;
        }
        i += n;
        let (mant, frac) = match b[i] {
            b'.' => {
                let (f, m) = digits8(b, i + 1)?;
                i += 1 + m;
                (int * POW10_U64[m] + f, m)
            }
            _ => (int, 0),
        };
        if matches!(b[i], b'e' | b'E') {
            return None;
        }
        self.i = i;
        // Both parts below 10^7: the mantissa is exact in an f64, and so is 10^frac, so the
        // division is one correctly rounded operation (Clinger's fast path).
        let v = mant as f64 / POW10[frac];
        let int = (frac == 0).then_some(if neg { -(mant as i64) } else { mant as i64 });
        Some(Number {
            f: if neg { -v } else { v },
            i: int,
        })
    }

    /// Scans any JSON number, byte by byte.
    fn any_number(&mut self) -> Result<Number, ScanError> {
        let start = self.i;
        let b = self.b;
        let mut i = self.i;
        let neg = b.get(i) == Some(&b'-');
        if neg {
            i += 1;
        }
        let mut mant: u64 = 0;
        let mut digits = 0u32;
        let int_start = i;
        while let Some(&c) = b.get(i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            mant = mant.wrapping_mul(10).wrapping_add(d as u64);
            digits += 1;
            i += 1;
        }
        self.check_int_part(int_start, i)?;
        let mut frac_digits = 0i32;
        let mut is_int = true;
        if b.get(i) == Some(&b'.') {
            is_int = false;
            i += 1;
            let fs = i;
            while let Some(&c) = b.get(i) {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                mant = mant.wrapping_mul(10).wrapping_add(d as u64);
                digits += 1;
                i += 1;
            }
            if i == fs {
                self.i = i;
                return self.syntax("expected a digit after '.'");
            }
            frac_digits = (i - fs) as i32;
        }
        let mut exp: i32 = 0;
        if matches!(b.get(i), Some(b'e' | b'E')) {
            is_int = false;
            i += 1;
            let eneg = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let es = i;
            while let Some(&c) = b.get(i) {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                exp = exp.saturating_mul(10).saturating_add(d as i32);
                i += 1;
            }
            if i == es {
                self.i = i;
                return self.syntax("expected a digit in exponent");
            }
            if eneg {
                exp = -exp;
            }
        }
        self.i = i;
        let e10 = exp.saturating_sub(frac_digits);
        // Clinger's fast path: an exactly representable mantissa scaled by an exactly
        // representable power of ten is one correctly rounded IEEE operation.
        let f = if digits <= 19 && mant < (1u64 << 53) && (-22..=22).contains(&e10) {
            let m = mant as f64;
            let v = if e10 >= 0 {
                m * POW10[e10 as usize]
            } else {
                m / POW10[(-e10) as usize]
            };
            if neg { -v } else { v }
        } else {
            // Slow path: let the standard library round the text correctly. The bytes are
            // ASCII digits and signs we just scanned.
            std::str::from_utf8(&b[start..i])
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        let int = if is_int && digits <= 19 {
            if neg {
                if mant <= i64::MAX as u64 + 1 {
                    Some((mant as i64).wrapping_neg())
                } else {
                    None
                }
            } else {
                i64::try_from(mant).ok()
            }
        } else {
            None
        };
        Ok(Number { f, i: int })
    }

    /// The integer part of a number, `b[int_start..i]`: at least one digit, no leading zero.
    #[inline]
    fn check_int_part(&mut self, int_start: usize, i: usize) -> Result<(), ScanError> {
        if i == int_start {
            self.i = i;
            return self.syntax("expected a digit");
        }
        if self.b[int_start] == b'0' && i - int_start > 1 {
            self.i = int_start;
            return self.syntax("leading zero in number");
        }
        Ok(())
    }

    /// Steps over a JSON number, checking its form as `number` does without computing it.
    #[inline]
    fn skip_number(&mut self) -> Result<(), ScanError> {
        let b = self.b;
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let mut i = self.i + usize::from(b.get(self.i) == Some(&b'-'));
        let int_start = i;
        i = digits(i);
        self.check_int_part(int_start, i)?;
        if b.get(i) == Some(&b'.') {
            let fs = i + 1;
            i = digits(fs);
            if i == fs {
                self.i = i;
                return self.syntax("expected a digit after '.'");
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'-' | b'+')) {
                i += 1;
            }
            let es = i;
            i = digits(es);
            if i == es {
                self.i = i;
                return self.syntax("expected a digit in exponent");
            }
        }
        self.i = i;
        Ok(())
    }

    /// Tries the firmware's non-JSON "no reading" tokens (`nan`, `NaN`, `inf`, `-inf`,
    /// `Infinity`, `-Infinity`); true when one was consumed.
    #[inline]
    pub fn non_finite(&mut self) -> bool {
        const TOKENS: [&[u8]; 8] = [
            b"nan",
            b"NaN",
            b"-nan",
            b"inf",
            b"-inf",
            b"Infinity",
            b"-Infinity",
            b"-NaN",
        ];
        let rest = &self.b[self.i..];
        for t in TOKENS {
            if rest.starts_with(t) && !rest.get(t.len()).is_some_and(|c| c.is_ascii_alphanumeric())
            {
                self.i += t.len();
                return true;
            }
        }
        false
    }

    /// Consumes a literal such as `true`.
    #[inline]
    pub fn literal(&mut self, lit: &'static [u8]) -> Result<(), ScanError> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else if lit.starts_with(&self.b[self.i..]) {
            self.i = self.b.len();
            self.err(ScanErrorKind::Truncated)
        } else {
            self.syntax("unexpected token")
        }
    }

    /// Skips any JSON value (including the firmware's bare `nan`), returning its raw bytes.
    /// `depth` is the nesting level the value sits at; exceeding `max_depth` (at most 64) is
    /// an error. Open containers are tracked in a bit stack (1 = object), so no allocation.
    #[inline]
    pub fn skip_value(&mut self, depth: usize, max_depth: usize) -> Result<&'a [u8], ScanError> {
        self.skip(depth, max_depth, true)
    }

    fn skip(
        &mut self,
        depth: usize,
        max_depth: usize,
        lenient: bool,
    ) -> Result<&'a [u8], ScanError> {
        let max_depth = max_depth.min(64);
        self.ws();
        let start = self.i;
        let mut level = 0usize;
        let mut objects: u64 = 0;
        loop {
            self.ws();
            match self.peek() {
                None => return self.err(ScanErrorKind::Truncated),
                Some(c @ (b'{' | b'[')) => {
                    if depth + level + 1 > max_depth {
                        return self.err(ScanErrorKind::TooDeep);
                    }
                    let obj = c == b'{';
                    self.i += 1;
                    self.ws();
                    if self.eat(if obj { b'}' } else { b']' }) {
                        // Empty container: a complete value at this level.
                    } else {
                        objects = (objects << 1) | obj as u64;
                        level += 1;
                        if obj {
                            self.raw_string()?;
                            self.expect(b':', "expected ':'")?;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    self.raw_string()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') if !lenient || !self.b[self.i..].starts_with(b"nan") => {
                    self.literal(b"null")?
                }
                Some(_) => {
                    if !(lenient && self.non_finite()) {
                        self.skip_number()?;
                    }
                }
            }
            // After a complete value: close containers or move to the next element.
            loop {
                if level == 0 {
                    return Ok(&self.b[start..self.i]);
                }
                self.ws();
                let in_object = objects & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        self.ws();
                        if in_object {
                            self.raw_string()?;
                            self.expect(b':', "expected ':'")?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {
                        self.i += 1;
                        objects >>= 1;
                        level -= 1;
                    }
                    Some(b']') if !in_object => {
                        self.i += 1;
                        objects >>= 1;
                        level -= 1;
                    }
                    None => return self.err(ScanErrorKind::Truncated),
                    Some(_) => return self.syntax("expected ',' or a closing bracket"),
                }
            }
        }
    }
}

/// Whether `b` is exactly one standard JSON value (no surrounding whitespace, no bare
/// `nan`, nesting at most 64), checked without building anything: true only for what
/// serde_json accepts too. False says only "not vouched for": a caller that must know asks
/// serde_json then (which also takes nesting up to 128).
pub fn is_strict_value(b: &[u8]) -> bool {
    let mut c = Cursor::new(b);
    b.first().is_some_and(|f| *f > b' ') && c.skip(0, 64, false).is_ok() && c.i == b.len()
}

/// Unescapes JSON string content (without quotes) into `out`.
pub fn unescape(raw: &[u8], out: &mut String) -> Result<(), &'static str> {
    let mut i = 0;
    let mut run = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(std::str::from_utf8(&raw[run..i]).map_err(|_| "invalid UTF-8 in string")?);
        let c = *raw.get(i + 1).ok_or("dangling escape")?;
        i += 2;
        match c {
            b'"' => out.push('"'),
            b'\\' => out.push('\\'),
            b'/' => out.push('/'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'u' => {
                let hi = hex4(raw.get(i..i + 4).ok_or("short \\u escape")?)?;
                i += 4;
                let cp = if (0xD800..0xDC00).contains(&hi) {
                    if raw.get(i..i + 2) != Some(b"\\u") {
                        return Err("unpaired surrogate");
                    }
                    let lo = hex4(raw.get(i + 2..i + 6).ok_or("short \\u escape")?)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err("unpaired surrogate");
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                out.push(char::from_u32(cp).ok_or("invalid \\u escape")?);
            }
            _ => return Err("invalid escape"),
        }
        run = i;
    }
    out.push_str(std::str::from_utf8(&raw[run..]).map_err(|_| "invalid UTF-8 in string")?);
    Ok(())
}

fn hex4(h: &[u8]) -> Result<u32, &'static str> {
    let mut v = 0u32;
    for &c in h {
        let d = (c as char).to_digit(16).ok_or("invalid \\u escape")?;
        v = v * 16 + d;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Number {
        Cursor::new(s.as_bytes()).number().unwrap()
    }

    #[test]
    fn numbers_match_std() {
        for s in [
            "0",
            "-0",
            "246.3",
            "59.833",
            "-83",
            "0.000",
            "5.5",
            "1e3",
            "1.5E-7",
            "12345678901234567890",
            "0.1",
            "9007199254740993",
            "-9223372036854775808",
            "3.14159265358979323846",
            "1e400",
        ] {
            let n = num(s);
            let want: f64 = s.parse().unwrap();
            assert_eq!(n.f.to_bits(), want.to_bits(), "{s}");
        }
        assert_eq!(num("-83").i, Some(-83));
        assert_eq!(num("-9223372036854775808").i, Some(i64::MIN));
        assert_eq!(num("9223372036854775808").i, None);
        assert_eq!(num("5.0").i, None);
        for bad in ["-", "01", "1.", "1e", ".5"] {
            assert!(Cursor::new(bad.as_bytes()).number().is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// The word-at-a-time path reads exactly what the byte-by-byte scan reads, or
        /// leaves the number to it.
        #[test]
        fn short_numbers_agree_with_the_general_scan(t in r"-?[0-9]{0,9}(\.[0-9]{0,9})?([eE][+-]?[0-9]{0,2})?[,}\]x0-9.e ]{0,10}") {
            let (mut a, mut b) = (Cursor::new(t.as_bytes()), Cursor::new(t.as_bytes()));
            let fast = a.short_number();
            let slow = b.any_number();
            if let Some(f) = fast {
                let s = slow.expect("the general scan accepts what the fast path read");
                proptest::prop_assert_eq!(f.f.to_bits(), s.f.to_bits(), "{}", t);
                proptest::prop_assert_eq!(f.i, s.i, "{}", t);
                proptest::prop_assert_eq!(a.i, b.i, "{}", t);
            } else {
                proptest::prop_assert_eq!(a.i, 0, "{}", t);
            }
        }
    }

    #[test]
    fn short_numbers_of_the_payloads() {
        for (s, f, i) in [
            ("246.3,\"grid_hz\"", 246.3, None),
            ("-83,\"prox_v\":0", -83.0, Some(-83)),
            ("0.000,\"config", 0.0, None),
            ("105032,\"input", 105032.0, Some(105032)),
            ("-0,\"x\":1234", -0.0, Some(0)),
        ] {
            let mut c = Cursor::new(s.as_bytes());
            let n = c.short_number().expect(s);
            assert_eq!((n.f.to_bits(), n.i), (f64::to_bits(f), i), "{s}");
            assert_eq!(s.as_bytes()[c.i], b',', "{s}");
        }
        // Left to the general scan: leading zeros, exponents, 8+ digits, short input.
        for s in ["012,\"aaaaaaa", "1.5e3,\"aaaaa", "12345678,\"aaaa", "1.5"] {
            assert!(Cursor::new(s.as_bytes()).short_number().is_none(), "{s}");
        }
    }

    #[test]
    fn skip_values() {
        let s = br#"{"a":[1,{"b":"]"},nan],"c":{}} tail"#;
        let mut c = Cursor::new(s);
        let v = c.skip_value(0, 8).unwrap();
        assert_eq!(v, br#"{"a":[1,{"b":"]"},nan],"c":{}}"#);
        let deep = "[".repeat(100) + &"]".repeat(100);
        let e = Cursor::new(deep.as_bytes()).skip_value(0, 32).unwrap_err();
        assert_eq!(e.kind, ScanErrorKind::TooDeep);
        let e = Cursor::new(b"[1,2").skip_value(0, 32).unwrap_err();
        assert_eq!(e.kind, ScanErrorKind::Truncated);
    }

    proptest::proptest! {
        /// Skipping a number accepts and ends where scanning it does.
        #[test]
        fn skip_number_agrees_with_number(t in r"-?[0-9]{0,4}(\.[0-9]{0,3})?([eE][+-]?[0-9]{0,3})?[,}x]?") {
            let (mut a, mut b) = (Cursor::new(t.as_bytes()), Cursor::new(t.as_bytes()));
            let (x, y) = (a.number().map(|_| ()), b.skip_number());
            proptest::prop_assert_eq!(x.is_ok(), y.is_ok(), "{}", t);
            proptest::prop_assert_eq!(a.i, b.i, "{}", t);
        }
    }

    #[test]
    fn strict_values() {
        for ok in [
            &br#"{"a":[1,-2.5e3,{"b":"]\u00e9\n"},true,false,null],"c":{}}"#[..],
            b"0",
            b"\"x\"",
            b"[]",
            b"{ \"a\" : 1 }",
        ] {
            assert!(is_strict_value(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"{\"a\":nan}"[..],
            b"{\"a\":1",
            b"{\"a\":1}x",
            b" {}",
            b"{} ",
            b"",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":tru}",
            b"{\"a\" 1}",
            b"[1,]",
            b"{\"a\":\"\x01\"}",
            b"{\"a\":-inf}",
        ] {
            assert!(!is_strict_value(bad), "{}", String::from_utf8_lossy(bad));
        }
        let deep = "[".repeat(65) + &"]".repeat(65);
        assert!(!is_strict_value(deep.as_bytes()));
    }

    proptest::proptest! {
        /// Sound: whatever the check vouches for, serde_json reads as one value.
        #[test]
        fn strict_values_are_json(s in r#"[\[\]{}:,"\\a-fnrtu0-9.eE+\- ]{0,40}"#) {
            if is_strict_value(s.as_bytes()) {
                proptest::prop_assert!(serde_json::from_slice::<&serde_json::value::RawValue>(s.as_bytes()).is_ok(), "{s}");
            }
        }

        /// And it knows what serde_json writes.
        #[test]
        fn serde_output_is_strict(v in proptest::collection::vec((r#"[a-z"\\é]{0,6}"#, -1e6f64..1e6, proptest::option::of(0i64..1000)), 0..6)) {
            let obj: serde_json::Map<String, serde_json::Value> = v
                .into_iter()
                .map(|(k, f, i)| (k, serde_json::json!([f, i, {"n": null, "t": true}])))
                .collect();
            let text = serde_json::to_vec(&serde_json::Value::Object(obj)).unwrap();
            proptest::prop_assert!(is_strict_value(&text), "{}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn strings() {
        let mut out = String::new();
        Cursor::new(br#""a\"b\u00e9\ud83d\ude00\n""#)
            .string_into(&mut out)
            .unwrap();
        assert_eq!(out, "a\"bé😀\n");
        assert!(
            Cursor::new(br#""\ud83d""#)
                .string_into(&mut String::new())
                .is_err()
        );
        assert!(
            Cursor::new(b"\"abc")
                .string_into(&mut String::new())
                .is_err()
        );
    }
}
