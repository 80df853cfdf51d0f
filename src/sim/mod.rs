//! Synthetic fleet telemetry: a deterministic simulator of Tesla Wall Connector Gen 3 chargers
//! as a polling bridge would publish them.
//!
//! Contract:
//! - Owns the fleet model (sites sharing a supply and Wi-Fi, per-unit offsets, a firmware and
//!   part-number mix), session timelines (DOMAIN.md §3), the fault recipes of §10 that make
//!   the §8 signatures appear, and the firmware quirks of §2.1 (bare `nan`, truncated JSON,
//!   missing fields, timeouts, a mid-run schema switch from `relay_coil_v` to K1/K2).
//! - Emits `capture::CaptureRecord`s on topics `wc/{device_id}/{vitals|lifetime|wifi_status|version}`
//!   whose payload is the bridge envelope `{"ts":<ms>,"seq":<n>,"data":<charger JSON>}`, in
//!   receive-time order, through a caller callback. It knows nothing of MQTT, storage or rules.
//! - Deterministic: one `SimConfig` gives byte-identical output from run to run (own PRNG,
//!   one stream per device, no hash-map iteration, no wall clock); only a platform's libm
//!   could round a transcendental function differently.
//! - Ground truth (`labels`) is planned in `Simulator::new`, before any message exists, from
//!   the same plan the run plays back. Healthy units never show a §8 signature.
//!
//! Layout: `fleet` (sites and units), `plan` (sessions, reboots, episodes, fault recipes),
//! `device` (playback, physics, rendering), `json` (number formatting), `rng`.

mod device;
mod fleet;
mod json;
mod plan;
mod rng;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::io::Write;
use std::str::FromStr;

use crate::capture::{CaptureRecord, format_rfc3339_ms};
use device::{Kind, RunCfg, Runtime};
use fleet::{FIRMWARES, HOUR, MIN, Service, Site, Unit};
use plan::{DevicePlan, PlanInput};
use rng::Rng;

/// Upper bounds that keep a run's plan in memory comfortably.
pub const MAX_DEVICES: usize = 1_000_000;
pub const MAX_DURATION_MS: i64 = 366 * 24 * HOUR;
/// 9999-12-31T23:59:59.999Z: the last instant RFC 3339 can write.
const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Number of chargers.
    pub devices: usize,
    /// Simulated start, epoch ms (UTC).
    pub start_ms: i64,
    pub duration_ms: i64,
    pub seed: u64,
    /// Vitals poll period, 2_000..=30_000.
    pub poll_interval_ms: i64,
    /// Faults to inject, each into its own device.
    pub faults: Vec<FaultCode>,
    /// Fraction of the fleet that carries a fault: devices beyond the listed ones get a
    /// random injectable fault until this fraction is reached.
    pub fault_rate: f64,
    /// Firmware quirks: bare `nan`, truncated JSON, missing fields, timeouts, and (in runs of
    /// 2 h or more) one healthy unit upgrading its firmware mid-run.
    pub quirks: bool,
    /// Device ids are `{prefix}{n:04}` with n counting from 1.
    pub device_prefix: String,
    /// A firmware cohort with a raised rate of one fault (fleet trend tests).
    pub cohort: Option<Cohort>,
    /// One site (two or more split-phase chargers) whose supply misbehaves: every charger
    /// on it gets this fault (F14 or F15) from one shared onset.
    pub site_fault: Option<FaultCode>,
}

/// `share` of the fleet, taken from the units on the newest regular firmware (so the
/// payload schema does not change), runs a firmware release of its own, and each of its
/// units gets `fault` with probability `rate` — a bad release, as a support team sees one.
#[derive(Clone, Debug, PartialEq)]
pub struct Cohort {
    pub share: f64,
    pub fault: FaultCode,
    pub rate: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            devices: 10,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            duration_ms: 24 * HOUR,
            seed: 1,
            poll_interval_ms: 10_000,
            faults: Vec::new(),
            fault_rate: 0.0,
            quirks: true,
            device_prefix: "wc".to_string(),
            cohort: None,
            site_fault: None,
        }
    }
}

/// Injectable faults, named as in DOMAIN.md §8 plus F00 ("device stopped reporting").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultCode {
    /// Device stops publishing for more than 30 min.
    F00,
    /// Contactor closes, vehicle draws no current.
    F01,
    /// Vehicle connected, never requests power.
    F02,
    /// Welded contactor: output live while open.
    F03,
    /// Contactor fails to close: coil driven, outputs dead.
    F04,
    /// Handle over-temperature with foldback.
    F06,
    /// Input-terminal overheating (loose lug).
    F07,
    /// Ground fault (GFCI) trips with 15-min auto-retries.
    F09,
    /// Vehicle exceeds the advertised current.
    F12,
    /// Breaker setting mismatch: upstream breaker trips at high current.
    F13,
    /// Supply over-/under-voltage.
    F14,
    /// Supply frequency anomaly.
    F15,
    /// Pilot / vehicle-communication fault.
    F18,
    /// Proximity fault.
    F19,
    /// Weak Wi-Fi, no internet.
    F20,
    /// Reboot loop.
    F22,
    /// Commissioning incomplete / configuration changed.
    F23,
    /// Sensor anomaly: stuck temperature sensor or phantom phase current.
    F24,
}

impl FaultCode {
    pub const ALL: [FaultCode; 18] = [
        FaultCode::F00,
        FaultCode::F01,
        FaultCode::F02,
        FaultCode::F03,
        FaultCode::F04,
        FaultCode::F06,
        FaultCode::F07,
        FaultCode::F09,
        FaultCode::F12,
        FaultCode::F13,
        FaultCode::F14,
        FaultCode::F15,
        FaultCode::F18,
        FaultCode::F19,
        FaultCode::F20,
        FaultCode::F22,
        FaultCode::F23,
        FaultCode::F24,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultCode::F00 => "F00",
            FaultCode::F01 => "F01",
            FaultCode::F02 => "F02",
            FaultCode::F03 => "F03",
            FaultCode::F04 => "F04",
            FaultCode::F06 => "F06",
            FaultCode::F07 => "F07",
            FaultCode::F09 => "F09",
            FaultCode::F12 => "F12",
            FaultCode::F13 => "F13",
            FaultCode::F14 => "F14",
            FaultCode::F15 => "F15",
            FaultCode::F18 => "F18",
            FaultCode::F19 => "F19",
            FaultCode::F20 => "F20",
            FaultCode::F22 => "F22",
            FaultCode::F23 => "F23",
            FaultCode::F24 => "F24",
        }
    }

    /// The shortest `duration_ms` that fits this fault's recipe (baseline lead included).
    pub fn min_duration_ms(self) -> i64 {
        plan::need_ms(self, 0) + 15 * MIN
    }

    fn list() -> String {
        let codes: Vec<&str> = FaultCode::ALL.iter().map(|c| c.as_str()).collect();
        codes.join(", ")
    }
}

impl fmt::Display for FaultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultCode {
    type Err = SimError;

    /// Accepts `F01` or `f01`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        FaultCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| SimError::UnknownFault(s.to_string()))
    }
}

/// A charger's registry row: the installation facts the local API does not expose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub device_id: String,
    /// `split_phase`, `single_phase` or `three_phase`.
    pub service_type: String,
    pub breaker_a: u32,
    /// Commissioned maximum current; 80 % of the breaker except on an F13 unit, whose
    /// mis-commissioning is the fault.
    pub max_current_a: u32,
    pub part_number: String,
    pub site: String,
    pub installer: String,
    /// `YYYY-MM-DD`.
    pub commissioned_at: String,
    /// Firmware at the start of the run, e.g. `25.34.1` (`/version` adds `+g<hash>`).
    pub firmware_version: String,
}

/// Ground truth: `device_id` shows `fault`'s signature from `onset_ms` to `end_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub device_id: String,
    pub fault: FaultCode,
    pub onset_ms: i64,
    pub end_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    pub messages: u64,
    /// vitals, lifetime, wifi_status, version.
    pub per_kind: [u64; 4],
    /// Payloads shaped by a firmware quirk (bare `nan`, truncated JSON, a missing field).
    pub quirk_payloads: u64,
    /// Polls that produced no message (timeouts).
    pub timeouts: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator: devices must be at least 1")]
    NoDevices,
    #[error("simulator: devices = {0} is more than the supported {MAX_DEVICES}")]
    TooManyDevices(usize),
    #[error("simulator: duration_ms must be within 1..={MAX_DURATION_MS} (366 days); got {0}")]
    Duration(i64),
    #[error(
        "simulator: start_ms {0} must be within 0..={MAX_TIME_MS} (1970 to 9999) with the whole duration inside that range"
    )]
    Start(i64),
    #[error("simulator: poll_interval_ms must be within 2000..=30000; got {0}")]
    PollInterval(i64),
    #[error("simulator: fault_rate must be within 0.0..=1.0; got {0}")]
    FaultRate(f64),
    #[error(
        "simulator: device_prefix {0:?} may only hold ASCII letters, digits, '_', '-' and '.', at most 32 of them (it becomes part of MQTT topics)"
    )]
    DevicePrefix(String),
    #[error(
        "simulator: {requested} faults listed but the fleet has only {devices} devices; each listed fault needs its own device"
    )]
    TooManyFaults { requested: usize, devices: usize },
    #[error(
        "simulator: fault {fault} needs a duration of at least {need_min} min to show its signature; duration is {have_min} min"
    )]
    TooShortForFault {
        fault: FaultCode,
        need_min: i64,
        have_min: i64,
    },
    #[error("unknown fault code {0:?}; injectable codes are {list}", list = FaultCode::list())]
    UnknownFault(String),
    #[error("simulator output: {0}")]
    Output(#[from] std::io::Error),
}

/// A planned fleet, ready to run.
pub struct Simulator {
    cfg: SimConfig,
    sites: Vec<Site>,
    units: Vec<Unit>,
    plans: Vec<DevicePlan>,
    devices: Vec<DeviceInfo>,
    labels: Vec<Label>,
}

/// Stream ids for `Rng::stream`; devices use `base + index`.
const STREAM_FLEET: u64 = 0xF1EE7;
const STREAM_PLAN: u64 = 0x1_0000_0000;
const STREAM_RUN: u64 = 0x2_0000_0000;
const STREAM_COHORT: u64 = 0x3_0000_0000;

fn validate(cfg: &SimConfig) -> Result<(), SimError> {
    if cfg.devices == 0 {
        return Err(SimError::NoDevices);
    }
    if cfg.devices > MAX_DEVICES {
        return Err(SimError::TooManyDevices(cfg.devices));
    }
    if cfg.duration_ms <= 0 || cfg.duration_ms > MAX_DURATION_MS {
        return Err(SimError::Duration(cfg.duration_ms));
    }
    if cfg.start_ms < 0 || cfg.start_ms > MAX_TIME_MS - cfg.duration_ms {
        return Err(SimError::Start(cfg.start_ms));
    }
    if !(2_000..=30_000).contains(&cfg.poll_interval_ms) {
        return Err(SimError::PollInterval(cfg.poll_interval_ms));
    }
    if !(0.0..=1.0).contains(&cfg.fault_rate) {
        return Err(SimError::FaultRate(cfg.fault_rate));
    }
    let p = &cfg.device_prefix;
    if p.len() > 32
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(SimError::DevicePrefix(p.clone()));
    }
    if cfg.faults.len() > cfg.devices {
        return Err(SimError::TooManyFaults {
            requested: cfg.faults.len(),
            devices: cfg.devices,
        });
    }
    for &fault in &cfg.faults {
        let need = fault.min_duration_ms();
        if cfg.duration_ms < need {
            return Err(SimError::TooShortForFault {
                fault,
                need_min: need / MIN,
                have_min: cfg.duration_ms / MIN,
            });
        }
    }
    Ok(())
}

/// Where each recipe reads best: the NA-specific signatures on split-phase units, the
/// high-current ones on units that can draw ≥ 32 A.
fn suits(code: FaultCode, unit: &Unit) -> bool {
    match code {
        FaultCode::F01 | FaultCode::F14 | FaultCode::F15 => unit.service == Service::Split,
        FaultCode::F06 | FaultCode::F07 | FaultCode::F13 => unit.info.max_current_a >= 32,
        _ => true,
    }
}

/// Makes a unit able to carry `code` when no better-suited unit is left.
fn adapt(code: FaultCode, unit: &mut Unit) {
    if matches!(code, FaultCode::F06 | FaultCode::F07 | FaultCode::F13)
        && unit.info.max_current_a < 32
    {
        unit.info.breaker_a = 40;
        unit.info.max_current_a = 32;
    }
    if code == FaultCode::F13 {
        // The fault is the mismatch itself: commissioned for a bigger breaker than the one
        // installed, so the registry shows max_current_a above 80 % of breaker_a.
        unit.info.breaker_a = match unit.info.breaker_a {
            60 => 50,
            50 => 40,
            b => b.saturating_sub(10).max(20),
        };
    }
}

/// The cohort's and the site's faults (`SimConfig::cohort`, `site_fault`), on a stream of
/// their own so fleets without them are unchanged. Returns the faults and shared onsets.
fn assign_cohort_and_site(
    cfg: &SimConfig,
    units: &mut [Unit],
    sites: usize,
    start: i64,
    end: i64,
) -> (Vec<Option<FaultCode>>, Vec<Option<i64>>) {
    let n = units.len();
    let mut faults: Vec<Option<FaultCode>> = vec![None; n];
    let mut onsets: Vec<Option<i64>> = vec![None; n];
    let mut rng = Rng::stream(cfg.seed, STREAM_COHORT);
    if let Some(c) = &cfg.cohort {
        let want = (c.share * n as f64).round() as usize;
        let mut pool: Vec<usize> = (0..n)
            .filter(|&i| units[i].fw == fleet::COHORT_FROM_FIRMWARE)
            .collect();
        rng.shuffle(&mut pool);
        for &i in pool.iter().take(want) {
            units[i].fw = fleet::COHORT_FIRMWARE;
            units[i].info.firmware_version = FIRMWARES[fleet::COHORT_FIRMWARE].version.to_string();
            if rng.chance(c.rate) {
                adapt(c.fault, &mut units[i]);
                faults[i] = Some(c.fault);
            }
        }
    }
    if let Some(code) = cfg.site_fault {
        let mut order: Vec<usize> = (0..sites).collect();
        rng.shuffle(&mut order);
        for s in order {
            let members: Vec<usize> = (0..n).filter(|&i| units[i].site == s).collect();
            if members.len() >= 2
                && members
                    .iter()
                    .all(|&i| faults[i].is_none() && suits(code, &units[i]))
            {
                let onset = plan::choose_onset(&mut rng, code, start, end);
                for &i in &members {
                    faults[i] = Some(code);
                    onsets[i] = Some(onset);
                }
                break;
            }
        }
    }
    (faults, onsets)
}

fn assign_faults(
    cfg: &SimConfig,
    units: &mut [Unit],
    pre: Vec<Option<FaultCode>>,
    rng: &mut Rng,
) -> Vec<Option<FaultCode>> {
    let n = units.len();
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut out = pre;
    for &code in &cfg.faults {
        let pick = order
            .iter()
            .copied()
            .find(|&i| out[i].is_none() && suits(code, &units[i]))
            .or_else(|| order.iter().copied().find(|&i| out[i].is_none()));
        if let Some(i) = pick {
            adapt(code, &mut units[i]);
            out[i] = Some(code);
        }
    }
    let want = ((cfg.fault_rate * n as f64).round() as usize).min(n);
    let feasible: Vec<FaultCode> = FaultCode::ALL
        .iter()
        .copied()
        .filter(|c| c.min_duration_ms() <= cfg.duration_ms)
        .collect();
    let mut have = out.iter().filter(|f| f.is_some()).count();
    if feasible.is_empty() {
        return out;
    }
    for &i in &order {
        if have >= want {
            break;
        }
        if out[i].is_some() {
            continue;
        }
        // A few draws to find a recipe that suits the unit; the last draw is kept regardless.
        let mut code = feasible[rng.index(feasible.len())];
        for _ in 0..4 {
            if suits(code, &units[i]) {
                break;
            }
            code = feasible[rng.index(feasible.len())];
        }
        adapt(code, &mut units[i]);
        out[i] = Some(code);
        have += 1;
    }
    out
}

/// One healthy unit on relay_coil_v firmware upgrades mid-run (schema drift, §2.1).
fn choose_upgrade(
    cfg: &SimConfig,
    units: &[Unit],
    faults: &[Option<FaultCode>],
    rng: &mut Rng,
) -> Option<(usize, i64)> {
    if !cfg.quirks || cfg.duration_ms < 2 * HOUR {
        return None;
    }
    let mut order: Vec<usize> = (0..units.len()).collect();
    rng.shuffle(&mut order);
    let i = order
        .into_iter()
        .find(|&i| faults[i].is_none() && !FIRMWARES[units[i].fw].k1k2)?;
    let d = cfg.duration_ms;
    let at = rng.range(cfg.start_ms + d * 3 / 10, cfg.start_ms + d * 7 / 10);
    Some((i, at))
}

impl Simulator {
    /// Validates the config, lays out the fleet and plans every device's timeline and faults.
    pub fn new(cfg: SimConfig) -> Result<Self, SimError> {
        validate(&cfg)?;
        let start = cfg.start_ms;
        let end = start + cfg.duration_ms;
        let mut rng = Rng::stream(cfg.seed, STREAM_FLEET);
        let (sites, mut units) = fleet::build(cfg.devices, start, &cfg.device_prefix, &mut rng);
        let (pre, onsets) = assign_cohort_and_site(&cfg, &mut units, sites.len(), start, end);
        let faults = assign_faults(&cfg, &mut units, pre, &mut rng);
        let upgrade = choose_upgrade(&cfg, &units, &faults, &mut rng);
        let plans: Vec<DevicePlan> = units
            .iter()
            .enumerate()
            .map(|(i, unit)| {
                plan::plan_device(PlanInput {
                    unit,
                    site: &sites[unit.site],
                    fault: faults[i],
                    onset: onsets[i],
                    upgrade_at: upgrade.filter(|u| u.0 == i).map(|u| u.1),
                    start,
                    end,
                    poll: cfg.poll_interval_ms,
                    rng: Rng::stream(cfg.seed, STREAM_PLAN + i as u64),
                })
            })
            .collect();
        let labels = plans
            .iter()
            .zip(&units)
            .flat_map(|(p, u)| {
                p.labels.iter().map(|&(fault, onset_ms, end_ms)| Label {
                    device_id: u.info.device_id.clone(),
                    fault,
                    onset_ms,
                    end_ms,
                })
            })
            .collect();
        let devices = units.iter().map(|u| u.info.clone()).collect();
        Ok(Simulator {
            cfg,
            sites,
            units,
            plans,
            devices,
            labels,
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// Injected faults, by device then onset. Known before `run`.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// Emits every message in receive-time order (ties: device order) to `out`. Running twice
    /// produces the same output.
    pub fn run(
        &mut self,
        out: &mut dyn FnMut(CaptureRecord) -> Result<(), std::io::Error>,
    ) -> Result<SimStats, SimError> {
        let rc = RunCfg {
            start: self.cfg.start_ms,
            end: self.cfg.start_ms + self.cfg.duration_ms,
            poll: self.cfg.poll_interval_ms,
            quirks: self.cfg.quirks,
        };
        let seed = self.cfg.seed;
        let mut runs: Vec<Runtime<'_>> = self
            .units
            .iter()
            .zip(&self.plans)
            .enumerate()
            .map(|(i, (u, p))| {
                Runtime::new(
                    u,
                    &self.sites[u.site],
                    p,
                    &rc,
                    Rng::stream(seed, STREAM_RUN + i as u64),
                )
            })
            .collect();
        // One entry per device (its next message): O(log n) per message, and the stream comes
        // out sorted because each device's receive times never decrease.
        let mut heap = BinaryHeap::with_capacity(runs.len());
        for (i, r) in runs.iter_mut().enumerate() {
            if let Some(recv) = r.schedule() {
                heap.push(Reverse((recv, i)));
            }
        }
        let mut buf = String::with_capacity(1_024);
        let mut stats = SimStats::default();
        while let Some(Reverse((recv, i))) = heap.pop() {
            let r = &mut runs[i];
            if let Some((kind, quirk)) = r.emit(&mut buf) {
                stats.messages += 1;
                stats.per_kind[kind as usize] += 1;
                stats.quirk_payloads += u64::from(quirk);
                out(CaptureRecord {
                    ts_ms: recv,
                    topic: r.topic(kind).to_string(),
                    payload: buf.as_bytes().to_vec(),
                })?;
            }
            if let Some(next) = r.schedule() {
                heap.push(Reverse((next, i)));
            }
        }
        stats.timeouts = runs.iter().map(|r| r.timeouts).sum();
        Ok(stats)
    }
}

/// Kind of a topic's last segment, in `SimStats::per_kind` order.
pub fn kind_index(topic: &str) -> Option<usize> {
    let last = topic.rsplit('/').next()?;
    [Kind::Vitals, Kind::Lifetime, Kind::Wifi, Kind::Version]
        .iter()
        .position(|k| k.suffix() == last)
}

fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        std::borrow::Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Header `device_id,service_type,breaker_a,max_current_a,part_number,site,installer,commissioned_at,firmware_version`.
pub fn write_devices_csv(devices: &[DeviceInfo], w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        w,
        "device_id,service_type,breaker_a,max_current_a,part_number,site,installer,commissioned_at,firmware_version"
    )?;
    for d in devices {
        writeln!(
            w,
            "{},{},{},{},{},{},{},{},{}",
            csv_field(&d.device_id),
            csv_field(&d.service_type),
            d.breaker_a,
            d.max_current_a,
            csv_field(&d.part_number),
            csv_field(&d.site),
            csv_field(&d.installer),
            csv_field(&d.commissioned_at),
            csv_field(&d.firmware_version),
        )?;
    }
    Ok(())
}

/// Header `device_id,fault,onset,end`, times in RFC 3339 UTC with milliseconds.
pub fn write_labels_csv(labels: &[Label], w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(w, "device_id,fault,onset,end")?;
    for l in labels {
        writeln!(
            w,
            "{},{},{},{}",
            csv_field(&l.device_id),
            l.fault,
            format_rfc3339_ms(l.onset_ms),
            format_rfc3339_ms(l.end_ms)
        )?;
    }
    Ok(())
}
