//! Fuzzes the network config parser and validator: no input panics, and an accepted config
//! keeps flannel's invariants (subnets inside the network, SubnetMin <= SubnetMax).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::config::NetworkConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = NetworkConfig::parse(text) {
        assert!(c.subnet_len > c.network.prefix_len() && c.subnet_len <= 30);
        assert!(c.network.contains(c.subnet_min) && c.network.contains(c.subnet_max));
        assert!(u32::from(c.subnet_min) <= u32::from(c.subnet_max));
        let _ = c.overlay_mtu(1500);
    }
});
