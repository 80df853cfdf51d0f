//! Plays one device's plan back: schedules its polls, advances the physical state (energy,
//! heat, thermopile, lifetime counters) between them, and renders the four payload kinds with
//! the firmware's field order and number formats, plus the quirks of DOMAIN.md §2.1.
//!
//! Planned events (plug, close, open, reboot…) are applied in time order as the clock passes
//! them; continuous quantities are integrated in small steps while the contactor is closed
//! and in large exact first-order steps otherwise, so a 30 s poll costs no more than a 2 s one.

use super::fleet::{FIRMWARES, MIN, SEC, Service, Site, Unit};
use super::json::{Obj, push_envelope_head};
use super::plan::{DevicePlan, Episode, NEVER, SessionEnd};
use super::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Vitals = 0,
    Lifetime = 1,
    Wifi = 2,
    Version = 3,
}

const KINDS: [Kind; 4] = [Kind::Vitals, Kind::Lifetime, Kind::Wifi, Kind::Version];

impl Kind {
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Kind::Vitals => "vitals",
            Kind::Lifetime => "lifetime",
            Kind::Wifi => "wifi_status",
            Kind::Version => "version",
        }
    }
}

/// Fields the "missing optional field" quirk may drop; contactor, current and voltage fields
/// stay, so the quirk never hides a fault signature on its own.
const MISSING: [&str; 5] = [
    "evse_not_ready_reasons",
    "current_alerts",
    "mcu_temp_c",
    "input_thermopile_uv",
    "pilot_low_v",
];
const NAN_FIELDS: [&str; 3] = ["avg_startup_temp", "contactor_cycles_loaded", "alert_count"];

const P_MISSING: f64 = 0.002;
const P_TRUNCATED: f64 = 0.001;
const P_NAN: f64 = 0.005;
/// Local polls fail often while the Wi-Fi link is that weak (F20).
const P_TIMEOUT_WEAK_WIFI: f64 = 0.15;

#[derive(Clone, Copy)]
enum Ev {
    Plug(usize),
    Close(usize, usize),
    Open(usize, usize),
    Unplug,
    Foldback,
    Weld,
    Off(usize),
    Boot(usize),
    Freeze,
}

/// What the sensors still show right after the contactor opened (sampling lag, §3).
#[derive(Clone, Copy)]
struct Lag {
    t: i64,
    i: f64,
    volts: [f64; 3],
}

pub(crate) struct RunCfg {
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) poll: i64,
    pub(crate) quirks: bool,
}

pub(crate) struct Runtime<'a> {
    unit: &'a Unit,
    site: &'a Site,
    plan: &'a DevicePlan,
    topics: [String; 4],
    fw_strings: [String; 5],
    rng: Rng,
    start: i64,
    end: i64,
    quirks: bool,
    next_tick: [i64; 4],
    period: [i64; 4],
    pending: Option<(Kind, i64)>,
    last_env: i64,
    last_recv: i64,
    seq: u64,
    events: Vec<(i64, Ev)>,
    ev_i: usize,
    last_t: i64,
    conn: Option<usize>,
    closed: Option<(usize, usize)>,
    lag: Option<Lag>,
    last_unplug: i64,
    sess_energy_wh: f64,
    handle_c: f64,
    pcba_c: f64,
    coil_h: f64,
    tp_r: f64,
    tp_term: f64,
    frozen_handle: Option<f64>,
    fw: usize,
    boot_ms: i64,
    off_ms: i64,
    energy_wh: f64,
    charging_ms: i64,
    contactor_cycles: u64,
    loaded: u64,
    alerts: u64,
    foldbacks: u64,
    charge_starts: u64,
    connector_cycles: u64,
    avg_startup_c: Option<f64>,
    pub(crate) timeouts: u64,
}

/// Exact first-order relaxation towards `target` over `dt`: stable for any step size.
fn relax(x: &mut f64, target: f64, dt: f64, tau: f64) {
    *x += (target - *x) * (1.0 - (-dt / tau).exp());
}

impl<'a> Runtime<'a> {
    pub(crate) fn new(
        unit: &'a Unit,
        site: &'a Site,
        plan: &'a DevicePlan,
        cfg: &RunCfg,
        mut rng: Rng,
    ) -> Self {
        let id = &unit.info.device_id;
        let topics = KINDS.map(|k| format!("wc/{id}/{}", k.suffix()));
        let fw_strings =
            [0, 1, 2, 3, 4].map(|i| format!("{}+{}", FIRMWARES[i].version, FIRMWARES[i].build));
        let period = [cfg.poll, MIN, MIN, 60 * MIN];
        // Each device polls on its own phase, like independent bridges would.
        let next_tick = [
            cfg.start + rng.range(0, cfg.poll),
            cfg.start + rng.range(0, MIN),
            cfg.start + rng.range(0, MIN),
            cfg.start + rng.range(0, 5 * SEC),
        ];
        let mut events = Vec::new();
        for (si, s) in plan.sessions.iter().enumerate() {
            events.push((s.plug, Ev::Plug(si)));
            for (ai, a) in s.attempts.iter().enumerate() {
                events.push((a.close, Ev::Close(si, ai)));
                if a.foldback_at != NEVER {
                    events.push((a.foldback_at, Ev::Foldback));
                }
                events.push((a.open, Ev::Open(si, ai)));
            }
            events.push((s.unplug, Ev::Unplug));
        }
        if plan.weld_from != NEVER {
            events.push((plan.weld_from, Ev::Weld));
        }
        for (ri, r) in plan.reboots.iter().enumerate() {
            events.push((r.at, Ev::Off(ri)));
            events.push((r.boot, Ev::Boot(ri)));
        }
        if plan.freeze_handle_at != NEVER {
            events.push((plan.freeze_handle_at, Ev::Freeze));
        }
        // Stable: at equal times an open precedes the unplug and the power-off pushed after it.
        events.sort_by_key(|e| e.0);
        let amb = site.ambient(cfg.start);
        Runtime {
            unit,
            site,
            plan,
            topics,
            fw_strings,
            rng,
            start: cfg.start,
            end: cfg.end,
            quirks: cfg.quirks,
            next_tick,
            period,
            pending: None,
            last_env: i64::MIN,
            last_recv: i64::MIN,
            seq: 0,
            events,
            ev_i: 0,
            last_t: cfg.start,
            conn: None,
            closed: None,
            lag: None,
            last_unplug: i64::MIN / 2,
            sess_energy_wh: unit_previous_session_wh(unit),
            handle_c: amb - 2.0,
            pcba_c: amb + unit.pcba_off_c,
            coil_h: 0.0,
            tp_r: 0.0,
            tp_term: 0.0,
            frozen_handle: None,
            fw: unit.fw,
            boot_ms: unit.boot_ms,
            off_ms: 0,
            energy_wh: 0.0,
            charging_ms: 0,
            contactor_cycles: unit.lt0.contactor_cycles,
            loaded: unit.lt0.loaded,
            alerts: unit.lt0.alerts,
            foldbacks: 0,
            charge_starts: unit.lt0.charge_starts,
            connector_cycles: unit.lt0.connector_cycles,
            avg_startup_c: unit.lt0.avg_startup_c,
            timeouts: 0,
        }
    }

    pub(crate) fn topic(&self, kind: Kind) -> &str {
        &self.topics[kind as usize]
    }

    fn in_reboot(&self, t: i64) -> bool {
        self.plan
            .reboots
            .iter()
            .any(|r| (r.at..r.boot).contains(&t))
    }

    fn silent(&self, t: i64) -> bool {
        self.plan
            .episodes
            .iter()
            .any(|e| matches!(*e, Episode::Silent { from, to } if (from..to).contains(&t)))
    }

    fn weak_wifi(&self, t: i64) -> bool {
        self.plan
            .episodes
            .iter()
            .any(|e| matches!(*e, Episode::Wifi { from, to, .. } if (from..to).contains(&t)))
    }

    /// Picks the next message this device publishes and returns its receive time, or `None`
    /// when the run is over for it. Polls that time out, or fall in a dark period, are skipped.
    pub(crate) fn schedule(&mut self) -> Option<i64> {
        loop {
            // Earliest tick; equal ticks go in kind order.
            let mut k = 0;
            for (j, &t) in self.next_tick.iter().enumerate().skip(1) {
                if t < self.next_tick[k] {
                    k = j;
                }
            }
            let tick = self.next_tick[k];
            if tick >= self.end {
                return None;
            }
            self.next_tick[k] = tick + self.period[k];
            if self.in_reboot(tick) || self.silent(tick) {
                continue;
            }
            let p_timeout = if self.weak_wifi(tick) {
                P_TIMEOUT_WEAK_WIFI
            } else if self.quirks {
                self.unit.timeout_p
            } else {
                0.0
            };
            if self.rng.chance(p_timeout) {
                self.timeouts += 1;
                continue;
            }
            // Envelope time is when the bridge got the answer; keeping it (and the receive
            // time) monotonic per device keeps `seq` order and time order the same.
            let env = (tick + self.rng.range(0, 150)).max(self.last_env.saturating_add(1));
            let recv = (env + self.rng.range(5, 81)).max(self.last_recv);
            self.last_env = env;
            self.last_recv = recv;
            self.pending = Some((KINDS[k], env));
            return Some(recv);
        }
    }

    /// Renders the scheduled message into `buf` (envelope included). Returns its kind and
    /// whether a firmware quirk shaped it.
    pub(crate) fn emit(&mut self, buf: &mut String) -> Option<(Kind, bool)> {
        let (kind, env) = self.pending.take()?;
        self.advance(env);
        buf.clear();
        push_envelope_head(buf, env, self.seq);
        let mut quirk = false;
        match kind {
            Kind::Vitals => {
                let mut skip = "";
                if self.quirks && self.rng.chance(P_MISSING) {
                    quirk = true;
                    skip = MISSING[self.rng.index(MISSING.len())];
                    if skip == "evse_not_ready_reasons" && !FIRMWARES[self.fw].reasons {
                        skip = "current_alerts";
                    }
                }
                self.render_vitals(env, buf, skip);
                buf.push('}');
                if self.quirks && self.rng.chance(P_TRUNCATED) {
                    quirk = true;
                    let cut = 1 + self.rng.index(2);
                    buf.truncate(buf.len() - cut);
                }
            }
            Kind::Lifetime => {
                let mut nan = "";
                if self.quirks && self.rng.chance(P_NAN) {
                    quirk = true;
                    nan = NAN_FIELDS[self.rng.weighted(&[0.7, 0.15, 0.15])];
                }
                self.render_lifetime(env, buf, nan);
                buf.push('}');
            }
            Kind::Wifi => {
                self.render_wifi(env, buf);
                buf.push('}');
            }
            Kind::Version => {
                self.render_version(buf);
                buf.push('}');
            }
        }
        self.seq += 1;
        Some((kind, quirk))
    }

    fn advance(&mut self, t: i64) {
        while let Some(&(te, ev)) = self.events.get(self.ev_i) {
            if te > t {
                break;
            }
            self.integrate(te);
            self.apply(te, ev);
            self.ev_i += 1;
        }
        self.integrate(t);
    }

    fn apply(&mut self, t: i64, ev: Ev) {
        let plan = self.plan;
        match ev {
            Ev::Plug(s) => {
                self.conn = Some(s);
                self.sess_energy_wh = 0.0;
                if !plan.sessions[s].resumed {
                    self.connector_cycles += 1;
                }
                // alert_count creeps up on healthy units too (DOMAIN.md §2.3).
                if self.rng.chance(0.1) {
                    self.alerts += 1;
                }
            }
            Ev::Close(s, a) => {
                self.closed = Some((s, a));
                self.lag = None;
                self.contactor_cycles += 1;
                self.charge_starts += 1;
                let n = self.charge_starts.max(1) as f64;
                let pcba = self.pcba_c;
                if let Some(avg) = self.avg_startup_c.as_mut() {
                    *avg += (pcba - *avg) / n;
                }
            }
            Ev::Open(s, a) => {
                let sess = &plan.sessions[s];
                let att = &sess.attempts[a];
                let i_before = att.current_at(t - 1);
                let power_lost = sess.end == SessionEnd::PowerLoss && a + 1 == sess.attempts.len();
                if i_before > 5.0 && !power_lost {
                    self.loaded += 1;
                }
                if att.trip {
                    self.alerts += 1;
                }
                let volts = if att.dead_output {
                    self.open_volts()
                } else {
                    let grid = self.idle_grid_v(t) - i_before * self.r_source(t);
                    self.line_volts(grid)
                };
                self.lag = Some(Lag {
                    t,
                    i: i_before,
                    volts,
                });
                self.closed = None;
            }
            Ev::Unplug => {
                self.conn = None;
                self.last_unplug = t;
            }
            Ev::Foldback => {
                self.foldbacks += 1;
                self.alerts += 1;
            }
            Ev::Weld => self.alerts += 1,
            Ev::Off(r) => {
                let rb = &plan.reboots[r];
                self.off_ms += rb.boot - rb.at;
            }
            Ev::Boot(r) => {
                let rb = &plan.reboots[r];
                self.boot_ms = rb.boot;
                if let Some(fw) = rb.fw_after {
                    self.fw = fw;
                }
                // RAM state is gone: the session meter starts from zero.
                self.sess_energy_wh = 0.0;
                self.lag = None;
            }
            Ev::Freeze => self.frozen_handle = Some((self.handle_c * 10.0).round() / 10.0),
        }
    }

    fn current_now(&self, t: i64) -> f64 {
        self.closed.map_or(0.0, |(s, a)| {
            self.plan.sessions[s].attempts[a].current_at(t)
        })
    }

    fn integrate(&mut self, to: i64) {
        let unit = self.unit;
        while self.last_t < to {
            let closed = self.closed.is_some();
            let settling = self.coil_h > 0.5 || (self.tp_r - self.coil_h).abs() > 0.5;
            let max_dt = if closed {
                SEC
            } else if settling {
                5 * SEC
            } else {
                30 * SEC
            };
            let dt = (to - self.last_t).min(max_dt);
            let mid = self.last_t + dt / 2;
            let dt_f = dt as f64;
            let i = self.current_now(mid);
            let amb = self.site.ambient(mid);
            let r_src = self.r_source(mid);
            if closed {
                let v = self.idle_grid_v(mid) - i * r_src;
                let phases = if unit.service == Service::Three {
                    3.0
                } else {
                    1.0
                };
                let wh = phases * v * i * dt_f / 3.6e6;
                self.sess_energy_wh += wh;
                self.energy_wh += wh;
                self.charging_ms += dt;
            }
            let load = (i / 48.0).powi(2);
            relax(
                &mut self.handle_c,
                amb - 2.0 + unit.handle_rise_c * load,
                dt_f,
                unit.handle_tau_ms,
            );
            // A loose lug (F07) heats the board from the terminal side.
            let lug = if r_src > 0.15 {
                12.0 * (r_src - 0.065) / 0.3 * (i / 40.0).powi(2)
            } else {
                0.0
            };
            relax(
                &mut self.pcba_c,
                amb + unit.pcba_off_c + 6.0 * load + lug,
                dt_f,
                25.0 * MIN as f64,
            );
            // Thermopile: coil/contactor heat rises at ~0.8 µV/s while closed and saturates;
            // the sensor lags it, so the reading keeps falling for a while after opening (§10).
            if closed {
                let tau = unit.tp_h_max / unit.tp_k_heat * 1_000.0;
                relax(&mut self.coil_h, unit.tp_h_max, dt_f, tau);
            } else {
                relax(&mut self.coil_h, 0.0, dt_f, 240_000.0);
            }
            relax(&mut self.tp_r, self.coil_h, dt_f, 20_000.0);
            // Terminal I²R term: −0.05 µV/s × (I/40)² healthy, five times that with a loose lug.
            let mult = if r_src > 0.15 { 5.0 } else { 1.0 };
            relax(
                &mut self.tp_term,
                0.05 * (i / 40.0).powi(2) * mult * 1_800.0,
                dt_f,
                1_800_000.0,
            );
            self.last_t += dt;
            if let Some(h) = self.handle_script(self.last_t) {
                self.handle_c = h;
            }
        }
    }

    fn handle_script(&self, t: i64) -> Option<f64> {
        let s = &self.plan.sessions[self.conn?];
        let h = s.handle.as_ref()?;
        (h.from..h.until).contains(&t).then(|| h.at(t))
    }

    fn r_source(&self, t: i64) -> f64 {
        match self.plan.high_r {
            Some((from, r)) if t >= from => r,
            _ => self.unit.r_source,
        }
    }

    fn idle_grid_v(&self, t: i64) -> f64 {
        let site_v = self.site.grid_v(t);
        for e in &self.plan.episodes {
            if let Episode::GridV { from, to, level } = *e
                && (from..to).contains(&t)
            {
                return level + (site_v - self.site.grid_mean_v);
            }
        }
        site_v + self.unit.grid_off_v
    }

    fn hz(&mut self, t: i64) -> f64 {
        let mut hz = self.site.nominal_hz()
            + self.unit.hz_bias
            + self.site.hz_wander(t)
            + self.rng.normal(0.0, 0.006);
        for e in &self.plan.episodes {
            if let Episode::GridHz { from, to, offset } = *e
                && (from..to).contains(&t)
            {
                hz += offset + self.rng.normal(0.0, 0.04);
            }
        }
        hz
    }

    fn config_status(&self, t: i64) -> u8 {
        for e in &self.plan.episodes {
            if let Episode::Config { from, to, status } = *e
                && (from..to).contains(&t)
            {
                return status;
            }
        }
        5
    }

    fn phantom(&self, t: i64) -> Option<f64> {
        self.plan.episodes.iter().find_map(|e| match *e {
            Episode::Phantom { from, to, amps } if (from..to).contains(&t) => Some(amps),
            _ => None,
        })
    }

    /// Output-side voltages with the contactor closed. Split-phase: B is L1–L2 a few volts
    /// under the input, A and C are the legs to ground at ~0.48 of B (§2.2, §10).
    fn line_volts(&mut self, grid: f64) -> [f64; 3] {
        let u = self.unit;
        match u.service {
            Service::Split => {
                let b = grid - u.b_drop_v + self.rng.normal(0.0, 0.05);
                let a = b * u.leg_ratio + self.rng.normal(0.0, 0.05);
                [a, b, a - 0.15 + self.rng.normal(0.0, 0.05)]
            }
            Service::Three => [0, 1, 2].map(|_| grid - 0.5 + self.rng.normal(0.0, 0.3)),
            Service::Single => [
                grid - 1.0 + self.rng.normal(0.0, 0.1),
                u.open_b_v,
                u.open_ac_v,
            ],
        }
    }

    fn open_volts(&self) -> [f64; 3] {
        let u = self.unit;
        [u.open_ac_v, u.open_b_v, u.open_ac_v]
    }

    /// Connected pilot readings jump between ≈0 and ≈4.4 V (asynchronous PWM sampling, §2.2).
    fn pwm_sample(&mut self) -> f64 {
        if self.rng.chance(0.6) {
            if self.rng.chance(0.7) {
                4.4
            } else {
                self.rng.uniform(3.6, 4.9)
            }
        } else {
            self.rng.normal(0.0, 0.06)
        }
    }

    fn idle_pilot(&mut self) -> f64 {
        11.6 + 0.1 * self.rng.weighted(&[0.15, 0.45, 0.4]) as f64
    }

    fn render_vitals(&mut self, t: i64, buf: &mut String, skip: &str) {
        let plan = self.plan;
        let unit = self.unit;
        let sess = self.conn.map(|i| &plan.sessions[i]);
        let att = self.closed.map(|(s, a)| &plan.sessions[s].attempts[a]);
        let i_nom = att.map_or(0.0, |a| a.current_at(t));
        let grid = self.idle_grid_v(t) - i_nom * self.r_source(t) + self.rng.normal(0.0, 0.07);
        let hz = self.hz(t);
        let lag = self.lag.filter(|l| att.is_none() && t - l.t < 700);
        let volts = match (att, lag) {
            (Some(a), _) if !a.dead_output => self.line_volts(grid),
            (Some(_), _) => self.open_volts(),
            // The output decays within ~0.5 s of opening; a poll may still catch it (§3).
            (None, Some(l)) => {
                let f = (-((t - l.t) as f64) / 200.0).exp();
                let open = self.open_volts();
                [0, 1, 2].map(|k| open[k].max(l.volts[k] * f))
            }
            (None, None) if t >= plan.weld_from => self.line_volts(grid),
            (None, None) => self.open_volts(),
        };
        let phase = if unit.service == Service::Split { 1 } else { 0 };
        let mut cur = [0.0f64; 3];
        let vehicle = match att {
            Some(a) => {
                // Fields of one response are not sampled together (§3): the phase meter lags.
                let ph = (a.current_at(t - 300) + self.rng.normal(0.0, 0.04)).max(0.0);
                if unit.service == Service::Three {
                    for c in &mut cur {
                        *c = (ph + self.rng.normal(0.0, 0.08)).max(0.0);
                    }
                } else {
                    cur[phase] = ph;
                }
                (i_nom + self.rng.normal(0.0, 0.04)).max(0.0)
            }
            None => {
                if unit.service == Service::Split {
                    cur[1] = unit.idle_i;
                }
                if let Some(l) = self.lag.filter(|l| t - l.t < 600) {
                    cur[phase] = l.i;
                }
                if let Some(amps) = self.phantom(t) {
                    cur[phase] = (amps + self.rng.normal(0.0, 0.1)).max(0.0);
                }
                unit.idle_i
            }
        };
        // On NA units the neutral reading alternates between 0 and the B value (§2.2).
        let neutral = match unit.service {
            Service::Split if self.rng.chance(0.5) => cur[1],
            Service::Split => 0.0,
            Service::Single => cur[0],
            Service::Three if att.is_some() => self.rng.uniform(0.0, 0.3),
            Service::Three => 0.0,
        };
        let coil = if att.is_some() {
            unit.coil_v + self.rng.normal(0.0, 0.03)
        } else {
            0.0
        };
        let coil2 = if att.is_some() {
            unit.coil_v + self.rng.normal(0.0, 0.03)
        } else {
            0.0
        };
        let pcba = self.pcba_c + self.rng.normal(0.0, 0.03);
        let handle = match self.frozen_handle {
            Some(h) => h,
            None => self.handle_c + self.rng.normal(0.0, 0.03),
        };
        let mcu = self.pcba_c + unit.mcu_off_c + self.rng.normal(0.0, 0.03);
        let uptime = ((t - self.boot_ms) / 1_000).max(0);
        let thermopile =
            (unit.tp_base - self.tp_r - self.tp_term + self.rng.normal(0.0, 0.3)).round() as i64;
        let prox = match sess {
            Some(s) if s.prox_fault => s.prox_v + self.rng.normal(0.0, 0.03),
            Some(s) if t >= s.button => 2.7,
            Some(s) => s.prox_v,
            None => unit.prox_idle,
        };
        let (pilot_hi, pilot_lo) = if sess.is_some() {
            if self.rng.chance(0.02) {
                (8.7, -11.9)
            } else {
                (self.pwm_sample(), self.pwm_sample())
            }
        } else if unit.pilot_zero_after_boot && uptime < 1_800 {
            (0.0, 0.0)
        } else {
            (self.idle_pilot(), self.idle_pilot())
        };
        let session_s = sess.map_or(0, |s| (t - s.plug) / 1_000 + 1);
        // The meter counts in 0.1 Wh but prints three decimals.
        let energy = (self.sess_energy_wh * 10.0).round() / 10.0;
        let config = self.config_status(t);
        let (state, reasons): (u8, &[u8]) = match sess {
            Some(s) if !s.states.is_empty() => (s.state_at(t), &[4]),
            Some(s) if t < s.transient_until => (s.transient_state, &[4]),
            Some(_) if att.is_some() => match att {
                Some(a) if t >= a.reduced_from => (10, &[1]),
                _ => (11, &[1]),
            },
            Some(s) if t >= s.button => (7, &[3]),
            Some(s) if t < s.reasons4_until => (9, &[4]),
            Some(_) => (9, &[1]),
            None if uptime < 60 || config != 5 => (1, &[2, 4, 8]),
            None if t - self.last_unplug < 3 * SEC => (1, &[8]),
            None => (1, &[4, 8]),
        };
        let fw = &FIRMWARES[self.fw];
        let mut o = Obj::new(buf, skip);
        o.boolean("contactor_closed", att.is_some())
            .boolean("vehicle_connected", sess.is_some())
            .int("session_s", session_s)
            .fixed("grid_v", grid, 1)
            .fixed("grid_hz", hz, 3)
            .fixed("vehicle_current_a", vehicle, 1)
            .fixed("currentA_a", cur[0], 1)
            .fixed("currentB_a", cur[1], 1)
            .fixed("currentC_a", cur[2], 1)
            .fixed("currentN_a", neutral, 1)
            .fixed("voltageA_v", volts[0], 1)
            .fixed("voltageB_v", volts[1], 1)
            .fixed("voltageC_v", volts[2], 1);
        if fw.k1k2 {
            o.fixed("relay_k1_v", coil, 1).fixed("relay_k2_v", coil2, 1);
        } else {
            o.fixed("relay_coil_v", coil, 1);
        }
        o.fixed("pcba_temp_c", pcba, 1)
            .fixed("handle_temp_c", handle, 1)
            .fixed("mcu_temp_c", mcu, 1)
            .int("uptime_s", uptime)
            .int("input_thermopile_uv", thermopile)
            .fixed("prox_v", prox, 1)
            .fixed("pilot_high_v", pilot_hi, 1)
            .fixed("pilot_low_v", pilot_lo, 1)
            .fixed("session_energy_wh", energy, 3)
            .int("config_status", i64::from(config))
            .int("evse_state", i64::from(state))
            .ints("current_alerts", &[]);
        if fw.reasons {
            o.ints("evse_not_ready_reasons", reasons);
        }
        o.close();
    }

    fn render_lifetime(&mut self, t: i64, buf: &mut String, nan: &str) {
        let lt0 = &self.unit.lt0;
        let uptime_s = lt0.uptime_s + (t - self.start - self.off_ms).max(0) / 1_000;
        let avg = self.avg_startup_c.unwrap_or(0.0);
        let mut o = Obj::new(buf, "");
        o.int("contactor_cycles", self.contactor_cycles as i64);
        if nan == "contactor_cycles_loaded" {
            o.raw("contactor_cycles_loaded", "nan");
        } else {
            o.int("contactor_cycles_loaded", self.loaded as i64);
        }
        if nan == "alert_count" {
            o.raw("alert_count", "nan");
        } else {
            o.int("alert_count", self.alerts as i64);
        }
        o.int("thermal_foldbacks", self.foldbacks as i64);
        if nan == "avg_startup_temp" {
            o.raw("avg_startup_temp", "nan");
        } else {
            o.fixed("avg_startup_temp", avg, 1);
        }
        o.int("charge_starts", self.charge_starts as i64)
            .int("energy_wh", (lt0.energy_wh + self.energy_wh).floor() as i64)
            .int("connector_cycles", self.connector_cycles as i64)
            .int("uptime_s", uptime_s)
            .int(
                "charging_time_s",
                lt0.charging_time_s + self.charging_ms / 1_000,
            )
            .close();
    }

    fn render_wifi(&mut self, t: i64, buf: &mut String) {
        let site = self.site;
        let unit = self.unit;
        let mut rssi = site.rssi_base + unit.rssi_off + self.rng.normal(0.0, 1.2).clamp(-3.0, 3.0);
        let mut internet = true;
        for e in &self.plan.episodes {
            if let Episode::Wifi {
                decline_from,
                from,
                to,
            } = *e
            {
                if (decline_from..from).contains(&t) {
                    let f = (t - decline_from) as f64 / (from - decline_from).max(1) as f64;
                    rssi += (-84.0 - rssi) * f;
                } else if (from..to).contains(&t) {
                    rssi = self.rng.uniform(-88.0, -81.5);
                    internet = false;
                }
            }
        }
        let rssi = rssi.round();
        let snr = (rssi - site.noise_floor + self.rng.normal(0.0, 1.0))
            .round()
            .max(0.0);
        let quality = (1.5 * (rssi + 100.0)).round().clamp(0.0, 100.0);
        Obj::new(buf, "")
            .text("wifi_ssid", &site.ssid_b64)
            .int("wifi_signal_strength", quality as i64)
            .int("wifi_rssi", rssi as i64)
            .int("wifi_snr", snr as i64)
            .boolean("wifi_connected", true)
            .text("wifi_infra_ip", &unit.ip)
            .boolean("internet", internet)
            .text("wifi_mac", &unit.mac)
            .close();
    }

    fn render_version(&mut self, buf: &mut String) {
        let unit = self.unit;
        let mut o = Obj::new(buf, "");
        o.text("firmware_version", &self.fw_strings[self.fw])
            .text("git_branch", "HEAD")
            .text("part_number", &unit.info.part_number)
            .text("serial_number", &unit.serial);
        if unit.web_service {
            o.text("web_service", "h3-hermes-prd.sn.tesla.services");
        }
        o.close();
    }
}

/// The meter shows the previous session's energy until the next plug-in (§2.2).
fn unit_previous_session_wh(unit: &Unit) -> f64 {
    let cycles = unit.lt0.connector_cycles.max(1) as f64;
    ((unit.lt0.energy_wh / cycles) * 0.37).round()
}
