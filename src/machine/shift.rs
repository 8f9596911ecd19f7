//! The shift calendar: which wall-clock time is planned production time, in
//! the site's time zone (daylight saving handled by chrono-tz).

use crate::config::ShiftCalendarConfig;

/// A problem in the `[shifts]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftError {
    pub key: String,
    pub message: String,
}

/// Shifts, breaks and holidays, resolved for one time zone.
#[derive(Debug, Clone)]
pub struct ShiftCalendar {
    pub tz: chrono_tz::Tz,
}

impl ShiftCalendar {
    pub fn from_config(_cfg: &ShiftCalendarConfig, tz: chrono_tz::Tz) -> Result<Self, ShiftError> {
        Ok(Self { tz })
    }
}
