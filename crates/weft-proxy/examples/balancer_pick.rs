//! Picks an endpoint N times among E endpoints (and reports each request a success),
//! for `bench/balancer`: instructions per pick under callgrind, which should not grow
//! with the number of endpoints.
//!
//!   cargo run --release -p weft-proxy --example balancer_pick -- ENDPOINTS N [equal|mixed] [aware|unaware]
//!
//! The endpoints are spread over three zones (the proxy is in the first); `mixed` gives
//! them weights 1 to 3 (a draw is then a binary search), `equal` weight 1 each.

use std::net::SocketAddr;
use std::sync::Arc;

use weft_proxy::balance::{BalanceConfig, Balancer, EndpointMeta, Outcome, ZoneMode};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: balancer_pick ENDPOINTS N [equal|mixed] [aware|unaware]";
    let (Some(endpoints), Some(n)) = (
        args.first().and_then(|a| a.parse::<u32>().ok()),
        args.get(1).and_then(|a| a.parse::<u64>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let mixed = match args.get(2).map(String::as_str) {
        None | Some("equal") => false,
        Some("mixed") => true,
        Some(other) => {
            eprintln!("unknown weights {other:?}; {usage}");
            std::process::exit(2);
        }
    };
    let zone_mode = match args.get(3).map(String::as_str) {
        None | Some("aware") => ZoneMode::Aware,
        Some("unaware") => ZoneMode::Unaware,
        Some(other) => {
            eprintln!("unknown zone mode {other:?}; {usage}");
            std::process::exit(2);
        }
    };
    let zones: [Arc<str>; 3] = ["zone-a".into(), "zone-b".into(), "zone-c".into()];
    let metas = (0..endpoints)
        .map(|i| EndpointMeta {
            zone: Some(zones[i as usize % 3].clone()),
            weight: if mixed { 1 + i % 3 } else { 1 },
            ..EndpointMeta::new(SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 8080)))
        })
        .collect();
    let config = BalanceConfig {
        zone: Some(zones[0].clone()),
        zone_mode,
        ..BalanceConfig::default()
    };
    let balancer = Balancer::new(Arc::new(config), metas);
    let mut spread = 0u64;
    for _ in 0..n {
        let picked = balancer.pick().expect("an endpoint to pick");
        spread = spread.wrapping_add(u64::from(picked.addr().port()));
        picked.finish(Outcome::Success);
    }
    println!("{n} picks among {endpoints} endpoints ({spread})");
}
