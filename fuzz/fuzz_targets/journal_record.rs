//! `driver.filequeue`'s journal record reader, as recovery reads a
//! segment. The first byte chooses: the bytes as a segment (framing,
//! torn and zero-filled ends, checksums), or as a record body given its
//! true checksum (the fields behind it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    if how & 1 == 0 {
        driver_filequeue::fuzzing::segment(rest);
    } else {
        driver_filequeue::fuzzing::record_body(rest);
    }
});
