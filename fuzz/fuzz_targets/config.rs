//! The config loader: any text either loads or is refused with errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match tailgate::config::Config::from_yaml(text) {
        Ok(_) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
