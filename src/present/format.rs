//! Numbers and times for people: sizes that keep every byte, the wall clock
//! the BCC tools print before a report, seconds since the trace began.

/// A size in the largest unit that divides it exactly, so no precision is
/// lost: 67108864 is `64M`, 4096 is `4K`, 4097 is `4097`, 12 is `12`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (1 << 50, "P"),
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    if bytes == 0 {
        return "0".to_string();
    }
    for (unit, suffix) in UNITS {
        if bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// The local wall-clock time as `HH:MM:SS`, as the BCC tools print before each report.
pub fn wall_clock_hms() -> String {
    // SAFETY: time(NULL) and localtime_r with valid pointers to locals are
    // thread-safe and write only into `tm`.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "??:??:??".into();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

/// `at` in UTC to the millisecond, as file names sort it:
/// `20261129T104512.345Z`.
pub fn utc_file_stamp(at: std::time::SystemTime) -> String {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as libc::time_t;
    // SAFETY: gmtime_r with valid pointers to locals is thread-safe and
    // writes only into `tm`.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::gmtime_r(&secs, &mut tm).is_null() {
            return format!("{}.{:03}", since.as_secs(), since.subsec_millis());
        }
        tm
    };
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        since.subsec_millis()
    )
}

/// The TIME(s) cell of an event tool's -T column: seconds from `start_ns`
/// to `time_ns` (both CLOCK_MONOTONIC), left-aligned in 12 columns, and a space.
pub fn elapsed_cell(time_ns: u64, start_ns: u64) -> String {
    let secs = time_ns.saturating_sub(start_ns) as f64 / 1e9;
    format!("{secs:<12.6} ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stamps_are_utc_to_the_millisecond() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_948_712_345);
        assert_eq!(utc_file_stamp(at), "20261129T103832.345Z");
    }

    #[test]
    fn sizes_keep_every_byte() {
        assert_eq!(human_size(0), "0");
        assert_eq!(human_size(12), "12");
        assert_eq!(human_size(1024), "1K");
        assert_eq!(human_size(4097), "4097");
        assert_eq!(human_size(1536 * 1024), "1536K");
        assert_eq!(human_size(64 << 20), "64M");
        assert_eq!(human_size(3 << 30), "3G");
        assert_eq!(human_size((1 << 40) + 4096), "1073741828K");
    }

    #[test]
    fn elapsed_seconds() {
        assert_eq!(elapsed_cell(2_500_000_000, 2_000_000_000), "0.500000     ");
        assert_eq!(elapsed_cell(1, 2), "0.000000     ");
    }
}
