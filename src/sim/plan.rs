//! Per-device timelines, fixed before the first message: charging sessions (DOMAIN.md §3),
//! reboots, device-level episodes, and the fault recipes of §10 that bend them.
//!
//! Planning up front is what makes `Simulator::labels` ground truth: every label is read off
//! the same plan the runtime then plays back, so a label can never disagree with the data.
//! Current is a piecewise-linear profile per contactor closure (`Attempt::knots`), which
//! expresses ramps with plateaus, foldback steps, tapers and abrupt trips alike.

use super::FaultCode;
use super::fleet::{DAY, HOUR, MIN, Region, SEC, Site, UPGRADE_FIRMWARE, Unit};
use super::rng::Rng;

/// "Not planned": later than any simulated time.
pub(crate) const NEVER: i64 = i64::MAX;

/// One contactor closure.
pub(crate) struct Attempt {
    pub(crate) close: i64,
    pub(crate) open: i64,
    /// Nominal vehicle current (A) at given times, interpolated linearly.
    pub(crate) knots: Vec<(i64, f64)>,
    /// From here the charger reports state 10 (charging at reduced current).
    pub(crate) reduced_from: i64,
    /// A thermal foldback event (lifetime `thermal_foldbacks` and `alert_count`).
    pub(crate) foldback_at: i64,
    /// Opened by a protection (GFCI, over-current): counts as an alert.
    pub(crate) trip: bool,
    /// F04: coil driven, but no voltage reaches the outputs.
    pub(crate) dead_output: bool,
}

impl Attempt {
    fn new(close: i64, open: i64, knots: Vec<(i64, f64)>) -> Self {
        Attempt {
            close,
            open,
            knots,
            reduced_from: NEVER,
            foldback_at: NEVER,
            trip: false,
            dead_output: false,
        }
    }

    pub(crate) fn current_at(&self, t: i64) -> f64 {
        let k = &self.knots;
        let Some(&(t_first, v_first)) = k.first() else {
            return 0.0;
        };
        if t <= t_first {
            return v_first;
        }
        // j >= 1 because the first knot is at or before t.
        let j = k.partition_point(|p| p.0 <= t);
        let Some(&(t1, v1)) = k.get(j) else {
            return k.last().map_or(0.0, |p| p.1);
        };
        let (t0, v0) = k[j - 1];
        if t1 == t0 {
            v1
        } else {
            v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64
        }
    }

    /// First time the profile reaches `level`.
    pub(crate) fn first_reach(&self, level: f64) -> Option<i64> {
        let first = self.knots.first()?;
        if first.1 >= level {
            return Some(first.0);
        }
        self.knots.windows(2).find_map(|w| {
            let ((t0, v0), (t1, v1)) = (w[0], w[1]);
            (v0 < level && v1 >= level)
                .then(|| t0 + ((level - v0) / (v1 - v0) * (t1 - t0) as f64) as i64)
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    Unplug,
    /// The unit lost power mid-session (F13): no button press, no unplug, no polls.
    PowerLoss,
}

/// F06: the handle temperature follows this script instead of the thermal model, so the
/// label's 78 °C / 58 °C crossing times are known exactly.
pub(crate) struct HandleScript {
    pub(crate) from: i64,
    pub(crate) peak: i64,
    pub(crate) until: i64,
    h0: f64,
    k: f64,
    h_end: f64,
    tau_ms: f64,
}

pub(crate) const HANDLE_PEAK_C: f64 = 80.0;

impl HandleScript {
    pub(crate) fn at(&self, t: i64) -> f64 {
        if t <= self.peak {
            let x =
                ((t - self.from) as f64 / (self.peak - self.from).max(1) as f64).clamp(0.0, 1.0);
            self.h0
                + (HANDLE_PEAK_C - self.h0) * (1.0 - (-self.k * x).exp()) / (1.0 - (-self.k).exp())
        } else {
            self.h_end
                + (HANDLE_PEAK_C - self.h_end) * (-((t - self.peak) as f64) / self.tau_ms).exp()
        }
    }
}

/// One plug-in (or, after a power loss, one charger-side session with the car still plugged).
pub(crate) struct Session {
    pub(crate) plug: i64,
    pub(crate) transient_until: i64,
    pub(crate) transient_state: u8,
    pub(crate) reasons4_until: i64,
    pub(crate) attempts: Vec<Attempt>,
    pub(crate) button: i64,
    pub(crate) unplug: i64,
    pub(crate) end: SessionEnd,
    /// The car did not physically plug in: the charger came back from a power loss.
    pub(crate) resumed: bool,
    pub(crate) prox_v: f64,
    /// F19: `prox_v` is out of window for the whole session, even at the button press.
    pub(crate) prox_fault: bool,
    /// F18: forced state sequence (start time, evse_state) while connected.
    pub(crate) states: Vec<(i64, u8)>,
    pub(crate) handle: Option<HandleScript>,
    pub(crate) fault: Option<FaultCode>,
}

impl Session {
    pub(crate) fn state_at(&self, t: i64) -> u8 {
        let j = self.states.partition_point(|p| p.0 <= t);
        match j.checked_sub(1).and_then(|i| self.states.get(i)) {
            Some(p) => p.1,
            None => self.transient_state,
        }
    }
}

/// The unit is dark in [at, boot) and its uptime restarts at `boot`.
pub(crate) struct Reboot {
    pub(crate) at: i64,
    pub(crate) boot: i64,
    pub(crate) fw_after: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Episode {
    /// F00: the unit keeps running but nothing reaches the bridge.
    Silent { from: i64, to: i64 },
    /// F14: the idle supply voltage moves to `level`.
    GridV { from: i64, to: i64, level: f64 },
    /// F15: the supply frequency is off by `offset` and jittery.
    GridHz { from: i64, to: i64, offset: f64 },
    /// F20: RSSI declines from `decline_from`, is below −80 dBm with no internet in [from, to).
    Wifi {
        decline_from: i64,
        from: i64,
        to: i64,
    },
    /// F23: `config_status` is `status` instead of 5.
    Config { from: i64, to: i64, status: u8 },
    /// F24: a phase current reads `amps` with the contactor open.
    Phantom { from: i64, to: i64, amps: f64 },
}

pub(crate) struct DevicePlan {
    pub(crate) sessions: Vec<Session>,
    pub(crate) reboots: Vec<Reboot>,
    pub(crate) episodes: Vec<Episode>,
    /// F03: from here the outputs stay live with the contactor open.
    pub(crate) weld_from: i64,
    /// F07: (from, ohms) — a loose lug raises the source impedance for good.
    pub(crate) high_r: Option<(i64, f64)>,
    /// F24: the handle sensor reads a constant from here on.
    pub(crate) freeze_handle_at: i64,
    pub(crate) labels: Vec<(FaultCode, i64, i64)>,
}

/// The longest stretch, from onset, a recipe needs to show its whole signature.
pub(crate) fn need_ms(code: FaultCode, duration_ms: i64) -> i64 {
    use FaultCode::*;
    match code {
        F00 => 95 * MIN,
        F01 => 70 * MIN,
        F02 => 45 * MIN,
        F03 => 55 * MIN,
        F04 => 75 * MIN,
        F06 => 35 * MIN,
        F07 => 50 * MIN,
        F09 => 110 * MIN,
        F12 => 20 * MIN,
        F13 => 160 * MIN,
        F14 | F15 => 30 * MIN,
        F18 | F19 => 65 * MIN,
        F20 => 105 * MIN,
        F22 | F23 => 60 * MIN,
        F24 if duration_ms >= STUCK_SENSOR_MIN_DURATION => 25 * HOUR,
        F24 => 45 * MIN,
    }
}

/// With this much simulated time, F24 is a stuck temperature sensor (zero variance > 24 h);
/// with less, a phantom phase current.
pub(crate) const STUCK_SENSOR_MIN_DURATION: i64 = 30 * HOUR;

struct Builder<'a> {
    unit: &'a Unit,
    site: &'a Site,
    poll: i64,
    rng: Rng,
}

impl Builder<'_> {
    /// Plug-in: state 2/3/7 for about two seconds, reasons [4] a little longer (§3).
    fn begin(&mut self, plug: i64) -> Session {
        let transient_until = plug + self.rng.range(1_500, 3_000);
        Session {
            plug,
            transient_until,
            transient_state: [7, 2, 3][self.rng.weighted(&[0.6, 0.2, 0.2])],
            reasons4_until: transient_until + self.rng.range(0, 2_500),
            attempts: Vec::new(),
            button: NEVER,
            unplug: NEVER,
            end: SessionEnd::Unplug,
            resumed: false,
            prox_v: 1.5,
            prox_fault: false,
            states: Vec::new(),
            handle: None,
            fault: None,
        }
    }

    /// Button press (prox 2.7 V, state 7, reasons [3]) for 2–4 s, then unplug.
    fn finish(&mut self, s: &mut Session, after: i64, wait: i64) {
        s.unplug = after + wait.max(10 * SEC);
        s.button = s.unplug - self.rng.range(2_000, 4_000);
    }

    /// A healthy car asks for power 4–30 s after plug-in (§3).
    fn close_time(&mut self, s: &Session) -> i64 {
        (s.plug + self.rng.range(6 * SEC, 30 * SEC)).max(s.transient_until + SEC)
    }

    /// Current ramp after a close: first ampere ~6 s after close, then plateaus near 16 and
    /// 32 A on the way to `target`, reached ~33 s after close at 40 A (§3). Returns that time.
    fn ramp(&mut self, knots: &mut Vec<(i64, f64)>, close: i64, target: f64) -> i64 {
        let idle = self.unit.idle_i;
        knots.push((close, idle));
        let mut t = close + self.rng.range(5_000, 5_800);
        knots.push((t, idle + 0.3));
        let mut first = true;
        for plateau in [16.0, 32.0, 48.0, f64::INFINITY] {
            let last = plateau >= target - 3.0;
            let level = if last { target } else { plateau };
            t += if first {
                self.rng.range(6_500, 8_000)
            } else {
                self.rng.range(4_000, 5_000)
            };
            knots.push((t, level));
            if last {
                break;
            }
            t += self.rng.range(4_000, 6_000);
            knots.push((t, level + self.rng.uniform(0.1, 0.8)));
            first = false;
        }
        t
    }

    /// End of charge from `level`: taper, a low-current tail, current to the sensor offset,
    /// contactor open. The tail lasts longer than one poll so the last closed sample never
    /// shows a high current (that would read as an F09 trip), and the zero-current hold stays
    /// far below F01's 18 s. Returns the open time.
    fn taper_open(&mut self, knots: &mut Vec<(i64, f64)>, from: i64, level: f64) -> i64 {
        let idle = self.unit.idle_i;
        let low = self.rng.uniform(1.5, 3.5).min(level);
        let mut t = from;
        if level > low + 1.0 {
            t += self.rng.range(MIN, 3 * MIN);
            knots.push((t, low));
        }
        t += (self.poll + 4 * SEC).max(10 * SEC) + self.rng.range(0, 4 * SEC);
        knots.push((t, low));
        t += 1_500;
        knots.push((t, idle));
        t += self.rng.range(3 * SEC, 6 * SEC);
        knots.push((t, idle));
        t
    }

    /// A normal closure: ramp, `charge_ms` at target, the F07 foldback when `fb_delay` is set
    /// and the charge is long enough at ≥ 32 A, then the end-of-charge taper.
    fn charge_attempt(
        &mut self,
        close: i64,
        target: f64,
        charge_ms: i64,
        fb_delay: Option<i64>,
    ) -> Attempt {
        let mut knots = Vec::with_capacity(16);
        let reached = self.ramp(&mut knots, close, target);
        let mut level = target;
        let mut t = reached;
        let mut reduced_from = NEVER;
        if let Some(delay) = fb_delay
            && target >= 32.0
            && charge_ms > delay + 2 * MIN
        {
            // Input-wiring over-temperature: 25 % steps a minute apart while still ≥ 32 A.
            let t_fb = reached + delay;
            reduced_from = t_fb;
            for k in 0..3 {
                let ts = t_fb + k * MIN;
                knots.push((ts, level));
                level = target * (1.0 - 0.25 * (k + 1) as f64);
                knots.push((ts + 400, level));
                t = ts + 400;
                if level < 32.0 {
                    break;
                }
            }
        }
        let end = (reached + charge_ms).max(t + MIN);
        knots.push((end, level));
        let open = self.taper_open(&mut knots, end, level);
        let mut a = Attempt::new(close, open, knots);
        a.reduced_from = reduced_from;
        a.foldback_at = reduced_from;
        a
    }

    /// A healthy session that must be unplugged by `max_unplug`; `None` if none fits.
    fn healthy(&mut self, plug: i64, max_unplug: i64, fb_delay: Option<i64>) -> Option<Session> {
        let mut s = self.begin(plug);
        let close = self.close_time(&s);
        let target = self.unit.target_a();
        let mut charge = (self.rng.uniform(15f64.ln(), 240f64.ln()).exp() * MIN as f64) as i64;
        let overnight = self.site.local_hour(plug) >= 17.0 && self.rng.chance(0.45);
        let idle_after = self.rng.range(3 * MIN, 90 * MIN);
        // Ramp, taper and tail take at most ~5 min plus two polls.
        let overhead = (close - plug) + 5 * MIN + 2 * self.poll;
        let budget = max_unplug.saturating_sub(plug);
        if overhead + charge + 3 * MIN > budget {
            charge = budget - overhead - 3 * MIN;
        }
        if charge < 5 * MIN {
            return None;
        }
        let a = self.charge_attempt(close, target, charge, fb_delay);
        let open = a.open;
        s.attempts.push(a);
        let wanted = if overnight {
            // Plugged in for the night: unplugged between 06:30 and 08:30 local.
            let local = plug + self.site.tz_ms;
            let morning = (local.div_euclid(DAY) + 1) * DAY
                + 6 * HOUR
                + 30 * MIN
                + self.rng.range(0, 2 * HOUR);
            (morning - self.site.tz_ms).max(open + 3 * MIN)
        } else {
            open + idle_after
        };
        let unplug = wanted.min(max_unplug).max(open + MIN);
        // Cabin preconditioning or a top-up later on: healthy units average about two charge
        // starts per plug-in (DOMAIN.md §2.3).
        let idle = unplug - open;
        if idle >= 40 * MIN && self.rng.chance(0.5) {
            let c2 = open + self.rng.range(15 * MIN, idle - 20 * MIN);
            let t2 = self.rng.uniform(8.0, 16.0).min(target);
            let len2 = self.rng.range(3 * MIN, 12 * MIN);
            let a2 = self.charge_attempt(c2, t2, len2, None);
            s.attempts.push(a2);
        }
        s.unplug = unplug;
        s.button = unplug - self.rng.range(2_000, 4_000);
        Some(s)
    }

    fn charge_session(
        &mut self,
        plug: i64,
        target: f64,
        charge: i64,
        fb_delay: Option<i64>,
        wait: i64,
    ) -> Session {
        let mut s = self.begin(plug);
        let close = self.close_time(&s);
        let a = self.charge_attempt(close, target, charge, fb_delay);
        let open = a.open;
        s.attempts.push(a);
        self.finish(&mut s, open, wait);
        s
    }

    /// F01 as in S1: the car asks at once, the contactor closes with the outputs live, 0 A
    /// for 25–31 s, opens, retries after 5–45 s; then the car waits in state 9.
    fn f01_session(&mut self, plug: i64, min_attempts: usize) -> Session {
        let mut s = self.begin(plug);
        let mut close = (plug + self.rng.range(4 * SEC, 7 * SEC)).max(s.transient_until + 500);
        let n = (1 + self.rng.index(3)).max(min_attempts);
        let idle = self.unit.idle_i;
        for i in 0..n {
            let open = close + self.rng.range(25 * SEC, 31 * SEC + 1);
            s.attempts
                .push(Attempt::new(close, open, vec![(close, idle)]));
            if i + 1 < n {
                close = open + self.rng.range(5 * SEC, 45 * SEC + 1);
            } else {
                close = open;
            }
        }
        let wait = self.rng.range(MIN, 5 * MIN);
        self.finish(&mut s, close, wait);
        s.fault = Some(FaultCode::F01);
        s
    }

    /// F04: the coil is driven but no voltage reaches the outputs; the car gives up after a
    /// while and asks again, 2–4 times. Each closure spans more than two polls.
    fn f04_session(&mut self, plug: i64) -> Session {
        let mut s = self.begin(plug);
        let mut close = self.close_time(&s);
        let n = 2 + self.rng.index(3);
        let idle = self.unit.idle_i;
        for i in 0..n {
            let open = close + self.rng.range(25 * SEC, 40 * SEC) + 2 * self.poll;
            let mut a = Attempt::new(close, open, vec![(close, idle)]);
            a.dead_output = true;
            s.attempts.push(a);
            close = if i + 1 < n {
                open + self.rng.range(20 * SEC, 60 * SEC)
            } else {
                open
            };
        }
        let wait = self.rng.range(MIN, 5 * MIN);
        self.finish(&mut s, close, wait);
        s.fault = Some(FaultCode::F04);
        s
    }

    /// The car stays connected in state 9 and never asks for power.
    fn idle_session(&mut self, plug: i64, wait: i64) -> Session {
        let mut s = self.begin(plug);
        let ready = s.transient_until;
        self.finish(&mut s, ready, wait);
        s
    }

    /// F18: the state machine bounces among 2/3/7/9 every 2–8 s; the contactor never closes.
    fn f18_session(&mut self, plug: i64) -> Session {
        let mut s = self.begin(plug);
        let len = self.rng.range(3 * MIN, 9 * MIN);
        let mut t = plug;
        let mut prev = 0u8;
        while t < plug + len {
            let mut st = [2u8, 3, 7, 9][self.rng.weighted(&[0.3, 0.2, 0.3, 0.2])];
            if st == prev {
                st = if st == 9 { 7 } else { 9 };
            }
            s.states.push((t, st));
            prev = st;
            t += self.rng.range(2 * SEC, 8 * SEC);
        }
        self.finish(&mut s, plug + len, 10 * SEC);
        s.fault = Some(FaultCode::F18);
        s
    }

    /// F19: proximity reads out of window; the charger will not close, the user gives up.
    fn f19_session(&mut self, plug: i64, prox_v: f64) -> Session {
        let wait = self.rng.range(3 * MIN, 8 * MIN);
        let mut s = self.idle_session(plug, wait);
        s.prox_v = prox_v;
        s.prox_fault = true;
        s.fault = Some(FaultCode::F19);
        s
    }

    /// F06: handle heats to 80 °C, then 25 % current steps a minute apart until it is below
    /// 58 °C (the Tesla handle protection, §4). Returns the session and the label span.
    fn f06_session(&mut self, plug: i64) -> (Session, i64, i64) {
        let mut s = self.begin(plug);
        let close = self.close_time(&s);
        let target = f64::from(self.unit.info.max_current_a);
        let mut knots = Vec::with_capacity(16);
        self.ramp(&mut knots, close, target);
        let from = close;
        let peak = from + self.rng.range(15 * MIN, 25 * MIN);
        // The script starts from the handle's idle equilibrium, so the crossing times below
        // are exact.
        let h0 = self.site.ambient(from) - 2.0;
        let h_end = self.site.ambient(peak) + 3.0;
        let k: f64 = 1.5;
        let delta = self.rng.range(140 * SEC, 175 * SEC);
        let tau_ms = delta as f64 / ((HANDLE_PEAK_C - h_end) / (58.0 - h_end)).ln();
        let t58 = peak + delta;
        let q = (78.0 - h0) / (HANDLE_PEAK_C - h0);
        let x78 = -(1.0 - q * (1.0 - (-k).exp())).ln() / k;
        let t78 = from + (x78 * (peak - from) as f64) as i64;
        let mut level = target;
        let mut step = 0;
        while step < 3 && peak + step * MIN < t58 {
            let ts = peak + step * MIN;
            knots.push((ts, level));
            level = target * (1.0 - 0.25 * (step + 1) as f64);
            knots.push((ts + 400, level));
            step += 1;
        }
        let end = t58 + self.rng.range(10 * MIN, 25 * MIN);
        knots.push((end, level));
        let open = self.taper_open(&mut knots, end, level);
        let mut a = Attempt::new(close, open, knots);
        a.reduced_from = peak;
        a.foldback_at = peak;
        s.attempts.push(a);
        s.handle = Some(HandleScript {
            from,
            peak,
            until: t58 + MIN,
            h0,
            k,
            h_end,
            tau_ms,
        });
        let wait = self.rng.range(5 * MIN, 30 * MIN);
        self.finish(&mut s, open, wait);
        s.fault = Some(FaultCode::F06);
        (s, t78, t58)
    }

    /// F09: GFCI trips while charging at 20–40 A, the contactor opening with full current;
    /// auto-retry 15 min later, four times, then lock-out until the user acts (§4, S10).
    fn f09_session(&mut self, plug: i64) -> (Session, i64, i64) {
        let mut s = self.begin(plug);
        let target = self.unit.target_a().clamp(20.0, 40.0);
        let mut close = self.close_time(&s);
        let (mut first, mut last) = (NEVER, plug);
        for i in 0..5 {
            let mut knots = Vec::with_capacity(12);
            let reached = self.ramp(&mut knots, close, target);
            let run = if i == 0 {
                self.rng.range(3 * MIN, 15 * MIN)
            } else {
                self.rng.range(MIN, 5 * MIN)
            };
            let trip = reached + run;
            knots.push((trip, target));
            let mut a = Attempt::new(close, trip, knots);
            a.trip = true;
            s.attempts.push(a);
            first = first.min(trip);
            last = trip;
            close = trip + 15 * MIN + self.rng.range(0, 10 * SEC);
        }
        let wait = self.rng.range(20 * MIN, 90 * MIN);
        self.finish(&mut s, last, wait);
        s.fault = Some(FaultCode::F09);
        (s, first, last)
    }

    /// F12: the car draws limit × 1.12 + 1 A; the charger stops it after long enough for two
    /// polls to see it, retries a minute later three times, then waits for a re-plug.
    fn f12_session(&mut self, plug: i64) -> (Session, i64, i64) {
        let mut s = self.begin(plug);
        let limit = f64::from(self.unit.info.max_current_a);
        let over = limit * 1.12 + 1.0;
        let threshold = limit * 1.1 + 1.0;
        let mut close = self.close_time(&s);
        let (mut first, mut last) = (NEVER, plug);
        for _ in 0..4 {
            let mut knots = Vec::with_capacity(12);
            let reached = self.ramp(&mut knots, close, over);
            let trip = reached + (6 * SEC).max(self.poll * 5 / 2) + self.rng.range(0, 4 * SEC);
            knots.push((trip, over));
            let mut a = Attempt::new(close, trip, knots);
            a.trip = true;
            first = first.min(a.first_reach(threshold).unwrap_or(reached));
            s.attempts.push(a);
            last = trip;
            close = trip + MIN + self.rng.range(0, 10 * SEC);
        }
        let wait = self.rng.range(3 * MIN, 8 * MIN);
        self.finish(&mut s, last, wait);
        s.fault = Some(FaultCode::F12);
        (s, first, last)
    }

    /// F13: after 20–60 min at the (too high) commissioned current the upstream breaker trips:
    /// the unit goes dark for 3–10 min and boots with its uptime reset; the car, still plugged
    /// in, starts again and trips it again after a similar time; the third run is short enough.
    fn f13_chain(&mut self, plug: i64) -> (Vec<Session>, Vec<Reboot>, i64, i64) {
        let target = f64::from(self.unit.info.max_current_a);
        let d1 = self.rng.range(20 * MIN, 60 * MIN);
        let mut sessions = Vec::with_capacity(3);
        let mut reboots = Vec::with_capacity(2);
        let (mut first, mut last_boot) = (NEVER, plug);
        let mut p = plug;
        for k in 0..2 {
            let mut s = self.begin(p);
            s.resumed = k > 0;
            let close = self.close_time(&s);
            let mut knots = Vec::with_capacity(12);
            let reached = self.ramp(&mut knots, close, target);
            let d = if k == 0 {
                d1
            } else {
                ((d1 as f64 * self.rng.uniform(0.85, 1.15)) as i64).max(20 * MIN)
            };
            let trip = reached + d;
            knots.push((trip, target));
            s.attempts.push(Attempt::new(close, trip, knots));
            s.unplug = trip;
            s.end = SessionEnd::PowerLoss;
            s.fault = Some(FaultCode::F13);
            let boot = trip + self.rng.range(3 * MIN, 10 * MIN);
            reboots.push(Reboot {
                at: trip,
                boot,
                fw_after: None,
            });
            first = first.min(trip);
            last_boot = boot;
            sessions.push(s);
            p = boot + self.rng.range(3 * SEC, 8 * SEC);
        }
        let charge = self.rng.range(5 * MIN, 15 * MIN);
        let wait = self.rng.range(5 * MIN, 30 * MIN);
        let mut s = self.charge_session(p, target, charge, None, wait);
        s.resumed = true;
        sessions.push(s);
        (sessions, reboots, first, last_boot)
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Healthy,
    F01,
    F04,
    F18,
    F19(f64),
    /// After a weld (F03) the charger refuses to start: the user unplugs after a few minutes.
    NoStart,
}

/// What a fault recipe asks of the session scheduler.
struct Setup {
    forced: Vec<Session>,
    /// No random session may overlap these windows.
    quiet: Vec<(i64, i64)>,
    /// Random sessions plugged in from this time on are built in this mode (a fault that
    /// lives in the hardware shows in every later session).
    persistent: Option<(i64, Mode)>,
    /// F07: from this time on, long charges at ≥ 32 A fold back after this delay.
    fb_delay: Option<(i64, i64)>,
}

pub(crate) struct PlanInput<'a> {
    pub(crate) unit: &'a Unit,
    pub(crate) site: &'a Site,
    pub(crate) fault: Option<FaultCode>,
    /// The fault's onset when it is shared (a site-wide supply problem); drawn otherwise.
    pub(crate) onset: Option<i64>,
    pub(crate) upgrade_at: Option<i64>,
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) poll: i64,
    pub(crate) rng: Rng,
}

pub(crate) fn plan_device(inp: PlanInput<'_>) -> DevicePlan {
    let PlanInput {
        unit,
        site,
        fault,
        onset,
        upgrade_at,
        start,
        end,
        poll,
        rng,
    } = inp;
    let mut b = Builder {
        unit,
        site,
        poll,
        rng,
    };
    let mut plan = DevicePlan {
        sessions: Vec::new(),
        reboots: Vec::new(),
        episodes: Vec::new(),
        weld_from: NEVER,
        high_r: None,
        freeze_handle_at: NEVER,
        labels: Vec::new(),
    };
    let mut setup = Setup {
        forced: Vec::new(),
        quiet: Vec::new(),
        persistent: None,
        fb_delay: None,
    };
    if let Some(at) = upgrade_at {
        let boot = at + b.rng.range(MIN, 2 * MIN);
        plan.reboots.push(Reboot {
            at,
            boot,
            fw_after: Some(UPGRADE_FIRMWARE),
        });
        setup.quiet.push((at - 10 * MIN, boot + 10 * MIN));
    }
    if let Some(code) = fault {
        let onset = match onset {
            Some(t) => t,
            None => choose_onset(&mut b.rng, code, start, end),
        };
        inject(&mut b, &mut plan, &mut setup, code, onset, (start, end));
    }
    plan.sessions = schedule(&mut b, setup, start, end);
    if let Some(code @ (FaultCode::F01 | FaultCode::F04 | FaultCode::F18 | FaultCode::F19)) = fault
    {
        label_from_sessions(&mut plan, code);
    }
    for l in &mut plan.labels {
        l.2 = l.2.min(end);
    }
    plan
}

/// After a baseline stretch (15 % of the run, 10 min to 6 h), early enough to fit.
pub(crate) fn choose_onset(rng: &mut Rng, code: FaultCode, start: i64, end: i64) -> i64 {
    let need = need_ms(code, end - start);
    let lead = ((end - start) * 15 / 100).clamp(10 * MIN, 6 * HOUR);
    let (lo, hi) = (start + lead, end - need);
    if hi >= lo {
        rng.range(lo, hi + 1)
    } else {
        // `Simulator::new` checked that the duration covers 10 min + need.
        (start + 10 * MIN).min(hi.max(start))
    }
}

fn inject(
    b: &mut Builder<'_>,
    plan: &mut DevicePlan,
    setup: &mut Setup,
    code: FaultCode,
    onset: i64,
    span: (i64, i64),
) {
    use FaultCode::*;
    let (start, end) = span;
    let mut spans: Vec<(i64, i64)> = Vec::with_capacity(1);
    match code {
        F00 => {
            let to = onset + b.rng.range(35 * MIN, 90 * MIN);
            plan.episodes.push(Episode::Silent { from: onset, to });
            spans.push((onset, to));
        }
        F01 | F04 | F18 | F19 => {
            let mode = match code {
                F01 => Mode::F01,
                F04 => Mode::F04,
                F18 => Mode::F18,
                _ => Mode::F19(if b.rng.chance(0.5) {
                    b.rng.uniform(0.2, 0.8)
                } else {
                    b.rng.uniform(3.7, 4.4)
                }),
            };
            // Two sessions for sure, so the per-session and the cross-session variants of the
            // rules both have something to find.
            let s1 = build_mode(b, mode, onset, 2);
            let p2 = s1.unplug + b.rng.range(15 * MIN, 45 * MIN);
            let s2 = build_mode(b, mode, p2, 1);
            setup.forced.push(s1);
            setup.forced.push(s2);
            setup.persistent = Some((onset, mode));
        }
        F02 => {
            let wait = b.rng.range(15 * MIN, 40 * MIN);
            let mut s = b.idle_session(onset, wait);
            s.fault = Some(F02);
            spans.push((s.transient_until, s.unplug));
            setup.forced.push(s);
        }
        F03 => {
            let charge = b.rng.range(15 * MIN, 40 * MIN);
            let wait = b.rng.range(5 * MIN, 20 * MIN);
            let mut s = b.charge_session(onset, b.unit.target_a(), charge, None, wait);
            s.fault = Some(F03);
            let weld = s.attempts.first().map_or(onset, |a| a.open);
            plan.weld_from = weld;
            setup.persistent = Some((weld, Mode::NoStart));
            spans.push((weld, end));
            setup.forced.push(s);
        }
        F06 => {
            let (s, t78, t58) = b.f06_session(onset);
            spans.push((t78, t58));
            setup.forced.push(s);
        }
        F07 => {
            let delay = b.rng.range(20 * MIN, 40 * MIN);
            let charge = delay + b.rng.range(20 * MIN, 50 * MIN);
            let wait = b.rng.range(5 * MIN, 30 * MIN);
            let target = f64::from(b.unit.info.max_current_a);
            let mut s = b.charge_session(onset, target, charge, Some(delay), wait);
            s.fault = Some(F07);
            let close = s.attempts.first().map_or(onset, |a| a.close);
            plan.high_r = Some((close, b.rng.uniform(0.2, 0.4)));
            setup.fb_delay = Some((close, delay));
            spans.push((close, end));
            setup.forced.push(s);
        }
        F09 => {
            let (s, first, last) = b.f09_session(onset);
            spans.push((first, last));
            setup.forced.push(s);
        }
        F12 => {
            let (s, first, last) = b.f12_session(onset);
            spans.push((first, last));
            setup.forced.push(s);
        }
        F13 => {
            let (sessions, reboots, first, last) = b.f13_chain(onset);
            spans.push((first, last));
            setup.forced.extend(sessions);
            plan.reboots.extend(reboots);
        }
        F14 => {
            let to = onset + b.rng.range(5 * MIN, 30 * MIN);
            let over = b.rng.chance(0.5);
            let level = match (b.site.region, over) {
                (_, true) => b.rng.uniform(256.0, 262.0),
                (Region::Na, false) => b.rng.uniform(206.0, 216.0),
                (Region::Eu, false) => b.rng.uniform(195.0, 203.0),
            };
            plan.episodes.push(Episode::GridV {
                from: onset,
                to,
                level,
            });
            spans.push((onset, to));
        }
        F15 => {
            let to = onset + b.rng.range(5 * MIN, 30 * MIN);
            let magnitude = b.rng.uniform(0.6, 1.0);
            let offset = if b.rng.chance(0.5) {
                magnitude
            } else {
                -magnitude
            };
            plan.episodes.push(Episode::GridHz {
                from: onset,
                to,
                offset,
            });
            spans.push((onset, to));
        }
        F20 => {
            let from = onset + b.rng.range(5 * MIN, 15 * MIN);
            let to = from + b.rng.range(20 * MIN, 90 * MIN);
            plan.episodes.push(Episode::Wifi {
                decline_from: onset,
                from,
                to,
            });
            spans.push((from, to));
        }
        F22 => {
            let n = 3 + usize::from(b.rng.chance(0.4));
            let window = (20 * HOUR)
                .min(end - onset - 10 * MIN)
                .max(n as i64 * 10 * MIN);
            let slot = window / n as i64;
            let (mut first, mut last) = (NEVER, onset);
            for i in 0..n {
                let at = onset + i as i64 * slot + b.rng.range(0, (slot - 5 * MIN).max(1));
                let boot = at + b.rng.range(15 * SEC, 40 * SEC);
                plan.reboots.push(Reboot {
                    at,
                    boot,
                    fw_after: None,
                });
                setup.quiet.push((at - 10 * MIN, boot + 10 * MIN));
                first = first.min(at);
                last = last.max(boot);
            }
            spans.push((first, last));
        }
        F23 => {
            let to = onset + b.rng.range(15 * MIN, 60 * MIN);
            let status = if b.rng.chance(0.5) { 1 } else { 4 };
            plan.episodes.push(Episode::Config {
                from: onset,
                to,
                status,
            });
            setup.quiet.push((onset - 10 * MIN, to + 10 * MIN));
            spans.push((onset, to));
        }
        F24 => {
            if end - start >= STUCK_SENSOR_MIN_DURATION {
                plan.freeze_handle_at = onset;
                spans.push((onset, end));
            } else {
                let to = onset + b.rng.range(10 * MIN, 45 * MIN);
                let amps = b.rng.uniform(1.5, 4.0);
                plan.episodes.push(Episode::Phantom {
                    from: onset,
                    to,
                    amps,
                });
                setup.quiet.push((onset - 10 * MIN, to + 10 * MIN));
                spans.push((onset, to));
            }
        }
    }
    plan.labels
        .extend(spans.into_iter().map(|(from, to)| (code, from, to)));
}

fn build_mode(b: &mut Builder<'_>, mode: Mode, plug: i64, min_attempts: usize) -> Session {
    match mode {
        Mode::F01 => b.f01_session(plug, min_attempts),
        Mode::F04 => b.f04_session(plug),
        Mode::F18 => b.f18_session(plug),
        Mode::F19(p) => b.f19_session(plug, p),
        Mode::NoStart | Mode::Healthy => {
            let wait = b.rng.range(2 * MIN, 8 * MIN);
            b.idle_session(plug, wait)
        }
    }
}

/// Evening-weighted plug-in times, one to three a local day.
fn candidates(rng: &mut Rng, site: &Site, start: i64, end: i64) -> Vec<i64> {
    let first_day = (start + site.tz_ms).div_euclid(DAY);
    let last_day = (end + site.tz_ms).div_euclid(DAY);
    let mut v = Vec::new();
    for day in first_day..=last_day {
        let n = 1 + rng.weighted(&[0.45, 0.4, 0.15]);
        for _ in 0..n {
            let hour = match rng.weighted(&[0.55, 0.3, 0.15]) {
                0 => rng.uniform(17.0, 22.5),
                1 => rng.uniform(8.0, 17.0),
                _ => rng.uniform(5.5, 8.0),
            };
            let t = day * DAY + (hour * HOUR as f64) as i64 - site.tz_ms;
            if (start..end).contains(&t) {
                v.push(t);
            }
        }
    }
    v.sort_unstable();
    v
}

/// Merges random sessions around the forced ones, keeping 15 min between sessions.
fn schedule(b: &mut Builder<'_>, setup: Setup, start: i64, end: i64) -> Vec<Session> {
    let Setup {
        forced,
        quiet,
        persistent,
        fb_delay,
    } = setup;
    let blocked: Vec<(i64, i64)> = forced
        .iter()
        .map(|s| (s.plug - 15 * MIN, s.unplug.saturating_add(15 * MIN)))
        .chain(quiet.iter().copied())
        .collect();
    let mut out = Vec::new();
    let mut free_from = start + 2 * MIN;
    for plug in candidates(&mut b.rng, b.site, start, end) {
        if plug < free_from || blocked.iter().any(|&(a, z)| (a..z).contains(&plug)) {
            continue;
        }
        let bound = blocked
            .iter()
            .filter(|&&(a, _)| a > plug)
            .map(|&(a, _)| a)
            .min()
            .unwrap_or(NEVER);
        let mode = match persistent {
            Some((from, m)) if plug >= from => m,
            _ => Mode::Healthy,
        };
        let fb = fb_delay.filter(|&(from, _)| plug >= from).map(|(_, d)| d);
        let session = match mode {
            Mode::Healthy => b.healthy(plug, bound, fb),
            m => Some(build_mode(b, m, plug, 1)),
        };
        let Some(s) = session else { continue };
        if s.unplug > bound {
            continue;
        }
        free_from = s.unplug.saturating_add(15 * MIN);
        out.push(s);
    }
    out.extend(forced);
    out.sort_by_key(|s| s.plug);
    out
}

/// For faults that live in every later session, the label spans all affected sessions.
fn label_from_sessions(plan: &mut DevicePlan, code: FaultCode) {
    let (mut on, mut off) = (NEVER, i64::MIN);
    for s in plan.sessions.iter().filter(|s| s.fault == Some(code)) {
        if matches!(code, FaultCode::F01 | FaultCode::F04) {
            for a in &s.attempts {
                on = on.min(a.close);
                off = off.max(a.open);
            }
        } else {
            on = on.min(s.plug);
            off = off.max(s.unplug);
        }
    }
    if on < off {
        plan.labels.push((code, on, off));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_profile_interpolates_and_holds() {
        let a = Attempt::new(0, 100, vec![(0, 0.0), (10, 10.0), (20, 10.0), (20, 5.0)]);
        assert_eq!(a.current_at(-5), 0.0);
        assert!((a.current_at(5) - 5.0).abs() < 1e-9);
        assert_eq!(a.current_at(15), 10.0);
        assert_eq!(a.current_at(50), 5.0);
        assert_eq!(a.first_reach(7.5), Some(7));
        assert_eq!(a.first_reach(11.0), None);
    }

    #[test]
    fn handle_script_hits_its_crossings() {
        let h = HandleScript {
            from: 0,
            peak: 1_000_000,
            until: 2_000_000,
            h0: 18.0,
            k: 1.5,
            h_end: 23.0,
            tau_ms: 150_000.0 / ((80.0f64 - 23.0) / (58.0 - 23.0)).ln(),
        };
        assert!((h.at(0) - 18.0).abs() < 1e-9);
        assert!((h.at(1_000_000) - 80.0).abs() < 1e-9);
        assert!((h.at(1_150_000) - 58.0).abs() < 1e-6);
    }
}
