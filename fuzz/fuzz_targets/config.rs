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
        let _ = Config::resolve(file, FileConfig::default());
    }
});
