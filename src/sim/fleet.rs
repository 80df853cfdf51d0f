//! Fleet layout: sites whose chargers share a supply and a Wi-Fi network, and the hidden
//! per-unit constants (sensor offsets, source impedance, coil level, thermal constants) that
//! make each charger look like itself. Numbers follow DOMAIN.md §10 (tags there say which are
//! observed and which inferred); healthy ranges are kept inside the §8 thresholds on purpose,
//! so a healthy unit never shows a fault signature.

use std::f64::consts::TAU;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::DeviceInfo;
use super::rng::Rng;

pub(crate) const SEC: i64 = 1_000;
pub(crate) const MIN: i64 = 60 * SEC;
pub(crate) const HOUR: i64 = 60 * MIN;
pub(crate) const DAY: i64 = 24 * HOUR;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Region {
    /// North America: split-phase 240 V, 60 Hz.
    Na,
    /// Europe: 230 V phase voltage, 50 Hz.
    Eu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    Split,
    Single,
    Three,
}

impl Service {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Service::Split => "split_phase",
            Service::Single => "single_phase",
            Service::Three => "three_phase",
        }
    }
}

pub(crate) struct Firmware {
    pub(crate) version: &'static str,
    pub(crate) build: &'static str,
    /// Newer firmware reports two relay coils (`relay_k1_v`, `relay_k2_v`) instead of one.
    pub(crate) k1k2: bool,
    /// `evse_not_ready_reasons` exists only on newer firmware (DOMAIN.md §2.1).
    pub(crate) reasons: bool,
}

/// The firmware mix. 25.42.2 stands in for "newer firmware with K1/K2" [I]: no public
/// capture names the first version with that schema.
pub(crate) const FIRMWARES: [Firmware; 5] = [
    Firmware {
        version: "24.44.3",
        build: "g5d2e81c07a9b4f",
        k1k2: false,
        reasons: false,
    },
    Firmware {
        version: "25.2.1",
        build: "g91f0c3a6d2e847",
        k1k2: false,
        reasons: true,
    },
    Firmware {
        version: "25.34.1",
        build: "g3a7be09f4c1d25",
        k1k2: false,
        reasons: true,
    },
    Firmware {
        version: "25.42.2",
        build: "ge64d18b2f07c93",
        k1k2: true,
        reasons: true,
    },
    // Only a cohort runs it (`SimConfig::cohort`): a newer release on the K1/K2 schema,
    // never drawn by FIRMWARE_WEIGHTS.
    Firmware {
        version: "25.44.1",
        build: "g0c9d4e1a7b3f62",
        k1k2: true,
        reasons: true,
    },
];
const FIRMWARE_WEIGHTS: [f64; 4] = [0.15, 0.25, 0.40, 0.20];
/// The firmware of `SimConfig::cohort`, and the regular one its units come from (same schema).
pub(crate) const COHORT_FIRMWARE: usize = 4;
pub(crate) const COHORT_FROM_FIRMWARE: usize = 3;
/// What the one upgrading unit per fleet moves to.
pub(crate) const UPGRADE_FIRMWARE: usize = 3;

const PART_NUMBERS: [&str; 3] = ["1457768-02-G", "1529455-02-D", "1734412-02-D"];
const NA_CITIES: [&str; 6] = [
    "portland", "austin", "denver", "toronto", "phoenix", "raleigh",
];
const EU_CITIES: [&str; 4] = ["oslo", "utrecht", "munich", "lyon"];
const INSTALLERS: [&str; 5] = [
    "Voltline Electric",
    "BrightSpark Installers",
    "GreenCharge Pros",
    "Summit Electrical",
    "Northgrid Services",
];
const SSIDS: [&str; 6] = [
    "Garage-Net",
    "HomeWiFi",
    "NETGEAR42",
    "TP-Link_5A3C",
    "eero",
    "VillaMesh",
];

pub(crate) struct Site {
    pub(crate) name: String,
    pub(crate) installer: &'static str,
    pub(crate) region: Region,
    /// One supply per site: every charger on it has the same service type.
    pub(crate) service: Service,
    pub(crate) tz_ms: i64,
    pub(crate) grid_mean_v: f64,
    slow_amp_v: [f64; 2],
    slow_period_ms: [f64; 2],
    slow_phase: [f64; 2],
    day_amp_v: f64,
    hz_amp: f64,
    hz_period_ms: f64,
    hz_phase: f64,
    amb_mean_c: f64,
    amb_amp_c: f64,
    pub(crate) rssi_base: f64,
    pub(crate) noise_floor: f64,
    pub(crate) ssid_b64: String,
    pub(crate) subnet: u8,
}

impl Site {
    pub(crate) fn nominal_hz(&self) -> f64 {
        match self.region {
            Region::Na => 60.0,
            Region::Eu => 50.0,
        }
    }

    pub(crate) fn local_hour(&self, t: i64) -> f64 {
        (t + self.tz_ms).rem_euclid(DAY) as f64 / HOUR as f64
    }

    /// The site's idle supply voltage: every charger on the site sees the same value, so
    /// cohort rules can tell a feeder problem from a unit problem.
    pub(crate) fn grid_v(&self, t: i64) -> f64 {
        let tf = t as f64;
        let mut v = self.grid_mean_v;
        for ((amp, period), phase) in self
            .slow_amp_v
            .iter()
            .zip(&self.slow_period_ms)
            .zip(&self.slow_phase)
        {
            v += amp * (TAU * tf / period + phase).sin();
        }
        // Evening demand sags the feeder; the minimum sits near 19:00 local.
        v - self.day_amp_v * (TAU * (self.local_hour(t) - 19.0) / 24.0).cos()
    }

    pub(crate) fn hz_wander(&self, t: i64) -> f64 {
        self.hz_amp * (TAU * t as f64 / self.hz_period_ms + self.hz_phase).sin()
    }

    /// Garage air temperature, warmest mid-afternoon.
    pub(crate) fn ambient(&self, t: i64) -> f64 {
        self.amb_mean_c + self.amb_amp_c * (TAU * (self.local_hour(t) - 16.0) / 24.0).cos()
    }

    pub(crate) fn ambient_mean(&self) -> f64 {
        self.amb_mean_c
    }
}

/// Lifetime counters at simulation start, sized by the unit's age.
pub(crate) struct Lifetime0 {
    pub(crate) contactor_cycles: u64,
    pub(crate) loaded: u64,
    pub(crate) alerts: u64,
    pub(crate) charge_starts: u64,
    pub(crate) energy_wh: f64,
    pub(crate) connector_cycles: u64,
    pub(crate) uptime_s: i64,
    pub(crate) charging_time_s: i64,
    /// Some units report 0.0 forever ("not computed", DOMAIN.md §2.3).
    pub(crate) avg_startup_c: Option<f64>,
}

pub(crate) struct Unit {
    pub(crate) info: DeviceInfo,
    pub(crate) site: usize,
    pub(crate) service: Service,
    pub(crate) fw: usize,
    pub(crate) grid_off_v: f64,
    pub(crate) hz_bias: f64,
    pub(crate) r_source: f64,
    pub(crate) open_ac_v: f64,
    pub(crate) open_b_v: f64,
    pub(crate) idle_i: f64,
    pub(crate) coil_v: f64,
    pub(crate) b_drop_v: f64,
    pub(crate) leg_ratio: f64,
    pub(crate) prox_idle: f64,
    pub(crate) tp_base: f64,
    pub(crate) tp_k_heat: f64,
    pub(crate) tp_h_max: f64,
    pub(crate) handle_rise_c: f64,
    pub(crate) handle_tau_ms: f64,
    pub(crate) pcba_off_c: f64,
    pub(crate) mcu_off_c: f64,
    pub(crate) car_max_a: f64,
    pub(crate) rssi_off: f64,
    pub(crate) mac: String,
    pub(crate) ip: String,
    pub(crate) serial: String,
    pub(crate) web_service: bool,
    pub(crate) timeout_p: f64,
    pub(crate) pilot_zero_after_boot: bool,
    pub(crate) boot_ms: i64,
    pub(crate) lt0: Lifetime0,
}

impl Unit {
    /// What the car actually draws in a normal session.
    pub(crate) fn target_a(&self) -> f64 {
        f64::from(self.info.max_current_a).min(self.car_max_a)
    }
}

fn date(ms: i64) -> String {
    match chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => "1970-01-01".to_string(),
    }
}

fn new_site(rng: &mut Rng, index: usize) -> Site {
    let region = if rng.chance(0.8) {
        Region::Na
    } else {
        Region::Eu
    };
    let (city, tz_h, grid_mean_v) = match region {
        // Means stay low enough that mean + drift + noise never leaves ANSI Range A.
        Region::Na => (
            NA_CITIES[rng.index(NA_CITIES.len())],
            -5 - rng.range(0, 4),
            rng.uniform(241.0, 249.0),
        ),
        Region::Eu => (
            EU_CITIES[rng.index(EU_CITIES.len())],
            1,
            rng.uniform(227.0, 234.0),
        ),
    };
    let service = match region {
        Region::Na => Service::Split,
        Region::Eu if rng.chance(0.6) => Service::Three,
        Region::Eu => Service::Single,
    };
    let ssid = format!("{}-{}", SSIDS[rng.index(SSIDS.len())], index % 100);
    Site {
        name: format!("{city}-{:03}", index + 1),
        installer: INSTALLERS[rng.index(INSTALLERS.len())],
        region,
        service,
        tz_ms: tz_h * HOUR,
        grid_mean_v,
        slow_amp_v: [rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.5)],
        slow_period_ms: [
            rng.uniform(20.0, 40.0) * MIN as f64,
            rng.uniform(3.0, 5.0) * HOUR as f64,
        ],
        slow_phase: [rng.uniform(0.0, TAU), rng.uniform(0.0, TAU)],
        day_amp_v: rng.uniform(0.5, 1.0),
        hz_amp: rng.uniform(0.005, 0.02),
        hz_period_ms: rng.uniform(5.0, 15.0) * MIN as f64,
        hz_phase: rng.uniform(0.0, TAU),
        amb_mean_c: rng.uniform(12.0, 24.0),
        amb_amp_c: rng.uniform(1.0, 3.0),
        rssi_base: rng.uniform(-70.0, -45.0),
        noise_floor: rng.uniform(-95.0, -91.0),
        ssid_b64: B64.encode(ssid.as_bytes()),
        subnet: rng.range(0, 30) as u8,
    }
}

fn new_unit(
    rng: &mut Rng,
    index: usize,
    prefix: &str,
    site_idx: usize,
    site: &Site,
    start_ms: i64,
) -> Unit {
    let service = site.service;
    // Gen 3 EU units top out at 32 A (22 kW three-phase), so EU breakers are 40/30 A.
    let breaker_a: u32 = match site.region {
        Region::Na => [60, 50, 40, 30][rng.weighted(&[0.35, 0.2, 0.3, 0.15])],
        Region::Eu => [40, 30][rng.weighted(&[0.6, 0.4])],
    };
    let fw = rng.weighted(&FIRMWARE_WEIGHTS);
    let age_days = rng.range(30, 1460);
    let info = DeviceInfo {
        device_id: format!("{prefix}{:04}", index + 1),
        service_type: service.as_str().to_string(),
        breaker_a,
        max_current_a: breaker_a * 4 / 5,
        part_number: PART_NUMBERS[rng.weighted(&[0.3, 0.5, 0.2])].to_string(),
        site: site.name.clone(),
        installer: site.installer.to_string(),
        commissioned_at: date(start_ms.saturating_sub(age_days * DAY)),
        firmware_version: FIRMWARES[fw].version.to_string(),
    };
    let car_max_a = match service {
        Service::Split => [48.0, 40.0, 32.0][rng.weighted(&[0.3, 0.3, 0.4])],
        Service::Three | Service::Single => [32.0, 16.0][rng.weighted(&[0.5, 0.5])],
    };
    let open_b_v = if rng.chance(0.2) {
        rng.uniform(5.1, 5.6)
    } else {
        0.0
    };
    let idle_i = if open_b_v > 0.0 || rng.chance(0.1) {
        0.3
    } else {
        0.0
    };
    let coil_v = if FIRMWARES[fw].k1k2 || rng.chance(0.3) {
        rng.uniform(11.82, 11.98)
    } else {
        rng.uniform(5.72, 5.78)
    };
    let connector_cycles = (age_days as f64 * rng.uniform(0.5, 1.2)) as u64;
    let charge_starts = (connector_cycles as f64 * rng.uniform(1.8, 2.6)) as u64;
    let lt0 = Lifetime0 {
        contactor_cycles: charge_starts,
        loaded: (charge_starts as f64 * rng.uniform(0.01, 0.06)) as u64,
        alerts: (age_days as f64 * rng.uniform(0.2, 3.0)) as u64,
        charge_starts,
        energy_wh: connector_cycles as f64 * rng.uniform(8_000.0, 16_000.0),
        connector_cycles,
        uptime_s: (age_days as f64 * 86_400.0 * rng.uniform(0.9, 0.99)) as i64,
        charging_time_s: (connector_cycles as f64 * rng.uniform(3_600.0, 9_000.0)) as i64,
        avg_startup_c: if rng.chance(0.1) {
            None
        } else {
            Some(site.ambient_mean() + rng.uniform(3.0, 8.0))
        },
    };
    let mac = format!(
        "98:ED:5C:{:02X}:{:02X}:{:02X}",
        rng.below(256),
        rng.below(256),
        rng.below(256)
    );
    let ip = format!("192.168.{}.{}", site.subnet, rng.range(20, 250));
    let serial = format!(
        "PGT{:02}{:09}",
        20 + rng.range(0, 6),
        rng.below(1_000_000_000)
    );
    Unit {
        info,
        site: site_idx,
        service,
        fw,
        grid_off_v: rng.uniform(-0.3, 0.3),
        hz_bias: match site.region {
            Region::Na => rng.uniform(-0.15, -0.08),
            Region::Eu => rng.uniform(-0.03, 0.03),
        },
        r_source: rng.uniform(0.04, 0.09),
        open_ac_v: [0.1, 0.2, 0.3][rng.index(3)],
        open_b_v,
        idle_i,
        coil_v,
        b_drop_v: rng.uniform(3.0, 6.0),
        leg_ratio: rng.uniform(0.480, 0.484),
        prox_idle: if rng.chance(0.5) { 0.5 } else { 0.0 },
        tp_base: rng.uniform(-120.0, -60.0),
        tp_k_heat: rng.uniform(0.7, 0.9),
        tp_h_max: rng.uniform(180.0, 300.0),
        handle_rise_c: rng.uniform(10.0, 20.0),
        handle_tau_ms: rng.uniform(12.0, 20.0) * MIN as f64,
        pcba_off_c: rng.uniform(4.0, 6.0),
        mcu_off_c: rng.uniform(6.0, 8.0),
        car_max_a,
        rssi_off: rng.uniform(-3.0, 3.0),
        mac,
        ip,
        serial,
        web_service: rng.chance(0.85),
        timeout_p: rng.uniform(0.01, 0.02),
        pilot_zero_after_boot: rng.chance(0.3),
        boot_ms: start_ms - rng.range(DAY, 60 * DAY),
        lt0,
    }
}

/// Builds sites of one to four chargers each, then the chargers.
pub(crate) fn build(
    devices: usize,
    start_ms: i64,
    prefix: &str,
    rng: &mut Rng,
) -> (Vec<Site>, Vec<Unit>) {
    let mut sites = Vec::new();
    let mut units = Vec::with_capacity(devices);
    let mut left_on_site = 0usize;
    for i in 0..devices {
        if left_on_site == 0 {
            sites.push(new_site(rng, sites.len()));
            left_on_site = 1 + rng.weighted(&[0.5, 0.25, 0.15, 0.1]);
        }
        left_on_site -= 1;
        let site_idx = sites.len() - 1;
        units.push(new_unit(
            rng,
            i,
            prefix,
            site_idx,
            &sites[site_idx],
            start_ms,
        ));
    }
    (sites, units)
}
