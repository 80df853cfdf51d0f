//! The fault catalogue of DOMAIN.md §8 as data: every code a rule may name, with its
//! standard mappings. A rule naming a code outside this table is refused by the loader.

/// One fault of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub code: &'static str,
    pub name: &'static str,
    /// OCPP 1.6 `ChargePointErrorCode` a bridge would report (DOMAIN.md §7.1).
    pub ocpp16: &'static str,
    /// Safety rank for ordering findings of equal severity: lower comes first
    /// (DOMAIN.md §8 "Severity and ordering": safety, then charging-blocking, then trends).
    pub rank: u8,
}

const fn f(code: &'static str, name: &'static str, ocpp16: &'static str, rank: u8) -> Fault {
    Fault {
        code,
        name,
        ocpp16,
        rank,
    }
}

/// F00 (telemetry gap) plus F01–F26.
pub static FAULTS: &[Fault] = &[
    f("F00", "Device stopped reporting", "OtherError", 3),
    f(
        "F01",
        "Contactor closes but the vehicle draws no current",
        "NoError",
        2,
    ),
    f(
        "F02",
        "Vehicle connected, never requests power",
        "NoError",
        2,
    ),
    f(
        "F03",
        "Welded contactor / output live while open",
        "PowerSwitchFailure",
        0,
    ),
    f("F04", "Contactor fails to close", "PowerSwitchFailure", 1),
    f("F05", "Relay coil / driver degradation", "OtherError", 3),
    f("F06", "Handle over-temperature", "HighTemperature", 0),
    f("F07", "Input-terminal overheating", "HighTemperature", 0),
    f(
        "F08",
        "Internal (PCBA/MCU) over-temperature",
        "HighTemperature",
        3,
    ),
    f("F09", "Ground fault (GFCI/RCD trip)", "GroundFailure", 0),
    f(
        "F10",
        "Ground assurance / missing ground",
        "GroundFailure",
        1,
    ),
    f(
        "F11",
        "Neutral–PE short or vehicle PE open",
        "GroundFailure",
        1,
    ),
    f("F12", "Over-current", "OverCurrentFailure", 1),
    f("F13", "Breaker / current setting mismatch", "OtherError", 1),
    f("F14", "Supply over- / under-voltage", "UnderVoltage", 0),
    f("F15", "Frequency anomaly", "OtherError", 3),
    f("F16", "Phase loss / imbalance", "UnderVoltage", 3),
    f("F17", "Power-sharing misconfiguration", "OtherError", 1),
    f(
        "F18",
        "Pilot / vehicle-communication fault",
        "EVCommunicationError",
        1,
    ),
    f("F19", "Proximity / handle latch fault", "OtherError", 1),
    f("F20", "Wi-Fi weak / no internet", "WeakSignal", 3),
    f(
        "F21",
        "Firmware out of date / API misbehaviour",
        "OtherError",
        3,
    ),
    f(
        "F22",
        "Reboot loop / power interruptions",
        "InternalError",
        3,
    ),
    f(
        "F23",
        "Commissioning incomplete / configuration changed",
        "OtherError",
        1,
    ),
    f("F24", "Sensor / metering anomaly", "PowerMeterFailure", 3),
    f("F25", "Internal fault", "InternalError", 1),
    f("F26", "Contactor wear / unusual cycling", "OtherError", 3),
];

/// The catalogue entry for `code` (`F01`…), if any.
pub fn fault(code: &str) -> Option<&'static Fault> {
    FAULTS.iter().find(|f| f.code == code)
}
