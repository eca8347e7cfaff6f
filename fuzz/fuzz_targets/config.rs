//! The configuration loader: any text is a configuration or an error
//! (TOML, the server table, instances, bindings, isolation), never a
//! panic; and each instance's `config` table as two modules read theirs
//! (serde, unknown fields refused, errors with a position).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = bindery::Config::parse("fuzz", text) {
        for spec in &config.instances {
            let _ = spec.section.parse::<terminal_mqtt::Config>();
            let _ = spec.section.parse::<driver_filequeue::Config>();
        }
    }
});
