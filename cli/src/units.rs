//! Human units on the command line: durations like `30s`, `4d`, `1h30m`, `250ms`, and sizes
//! like `1MiB`, `256KiB`, `1000`.

use std::time::Duration;

/// Parses a duration; a bare number is seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("`{s}` is not a duration ({e}); write e.g. 30s, 500ms, 5m, 4d or 1h30m")
    })
}

/// Milliseconds of a duration flag.
pub fn millis(s: &str) -> Result<u64, String> {
    duration(s).map(|d| d.as_millis() as u64)
}

/// Parses a byte size; a bare number is bytes.
pub fn size(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let bytes = match s.parse::<u64>() {
        Ok(n) => n,
        Err(_) => s
            .parse::<bytesize::ByteSize>()
            .map_err(|e| format!("`{s}` is not a size ({e}); write e.g. 1MiB, 256KiB or 1000"))?
            .as_u64(),
    };
    u32::try_from(bytes).map_err(|_| format!("size `{s}` is too large"))
}

/// Formats milliseconds as a short human duration.
pub fn human_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// Formats bytes with binary units.
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(millis("30s").unwrap(), 30_000);
        assert_eq!(millis("4d").unwrap(), 4 * 86_400_000);
        assert_eq!(millis("250ms").unwrap(), 250);
        assert_eq!(millis("1h30m").unwrap(), 5_400_000);
        assert_eq!(millis("7").unwrap(), 7000);
        assert!(millis("soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn sizes() {
        assert_eq!(size("1MiB").unwrap(), 1 << 20);
        assert_eq!(size("256KiB").unwrap(), 256 << 10);
        assert_eq!(size("1000").unwrap(), 1000);
        assert!(size("big").is_err());
        assert!(size("100GiB").is_err());
    }
}
