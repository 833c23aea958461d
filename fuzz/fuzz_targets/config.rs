//! The config file parser and the checks `mqd --check-config` runs after it: any text
//! either becomes a valid `Config` or an error naming what is wrong, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqd::config::{Config, FileConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.toml");
    if let Ok(file) = FileConfig::parse(path, text) {
        // A data directory given as an override, as --data-dir would: without one, resolve
        // looks for the default directory and creates /var/lib/mqd when run as root.
        let overrides = FileConfig {
            data_dir: Some("/nonexistent/mqd-fuzz".into()),
            ..FileConfig::default()
        };
        let _ = Config::resolve(file, overrides);
    }
});
