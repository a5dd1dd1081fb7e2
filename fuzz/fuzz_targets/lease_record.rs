//! Fuzzes the lease record parser (flannel's JSON, Go-style key matching) and its writer:
//! any record that parses must serialize to JSON that parses back to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::store::record::LeaseRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = LeaseRecord::parse(data) {
        let json = rec.to_json();
        let again = LeaseRecord::parse(json.as_bytes()).expect("our own JSON parses");
        assert_eq!(again, rec);
        assert_eq!(again.to_json(), json);
    }
});
