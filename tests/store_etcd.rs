//! The store against a real etcd: acquiring, renewing and re-creating leases (IPv4-only and
//! dual-stack, as flanneld v0.20.2 writes them), watching them through malformed records,
//! outages and compaction, and TLS.

mod harness;

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{CompactionOptions, GetOptions};
use harness::etcd::Etcd;
use weft::config::{ConfigError, NetworkConfig};
use weft::store::{
    self, acquire_lease, AcquireRequest, BackendRecord, EtcdOptions, Keys, LeaseRecord, Store,
    StoreError, StoreHandle, StoreOptions, SubnetEnv,
};
use weft::table::{LeaseTable, SharedTable};
use weft::wire::{EthernetAddress, Subnet, Subnet6, Vni};

const PREFIX: &str = "/coreos.com/network";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "weft=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn etcd_opts(etcd: &Etcd) -> EtcdOptions {
    let tls = etcd.tls();
    EtcdOptions {
        endpoints: vec![etcd.endpoint().to_string()],
        prefix: PREFIX.into(),
        keyfile: tls.map(|t| t.key.clone()),
        certfile: tls.map(|t| t.cert.clone()),
        cafile: tls.map(|t| t.ca.clone()),
        username: None,
        password: None,
    }
}

fn store_opts(etcd: &Etcd, ip: Ipv4Addr, dir: &Path) -> StoreOptions {
    let mut o = StoreOptions::new(etcd_opts(etcd), ip);
    o.subnet_file = dir.join(format!("subnet-{ip}.env"));
    o
}

async fn put(etcd: &Etcd, key: &str, value: &str) {
    let mut c = etcd.client().await.expect("client");
    c.put(key, value, None).await.expect("put");
}

async fn delete(etcd: &Etcd, key: &str) {
    let mut c = etcd.client().await.expect("client");
    c.delete(key, None).await.expect("delete");
}

async fn get(etcd: &Etcd, key: &str) -> Option<String> {
    let mut c = etcd.client().await.expect("client");
    let r = c.get(key, None).await.expect("get");
    r.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

async fn put_config(etcd: &Etcd, json: &str) -> NetworkConfig {
    put(etcd, &format!("{PREFIX}/config"), json).await;
    NetworkConfig::parse(json).expect("test config is valid")
}

fn subnet(s: &str) -> Subnet {
    s.parse().expect("subnet")
}

fn vxlan_record(ip: Ipv4Addr, mac: &str) -> String {
    LeaseRecord {
        public_ip: ip,
        public_ipv6: None,
        backend_v6: None,
        backend: BackendRecord::Vxlan {
            vni: 1,
            vtep_mac: mac.parse().expect("mac"),
        },
    }
    .to_json()
}

async fn put_peer(etcd: &Etcd, s: &str, ip: [u8; 4]) {
    let mac = format!("0e:00:00:00:{:02x}:{:02x}", ip[2], ip[3]);
    put(
        etcd,
        &Keys::new(PREFIX).subnet(&subnet(s)),
        &vxlan_record(Ipv4Addr::from(ip), &mac),
    )
    .await;
}

/// The table as `subnet -> public IP`.
fn view(t: &LeaseTable) -> BTreeMap<String, Ipv4Addr> {
    t.iter()
        .map(|p| (p.subnet.to_string(), p.public_ip))
        .collect()
}

/// Polls `f` every 20 ms until it holds or `limit` passes; returns how long it took.
async fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_store(opts: StoreOptions) -> (StoreHandle, SharedTable) {
    let shared = SharedTable::new(LeaseTable::empty(24));
    let h = tokio::time::timeout(Duration::from_secs(15), Store::start(opts, shared.clone()))
        .await
        .expect("store started in time")
        .expect("store started");
    (h, shared)
}

async fn acquire(
    etcd: &Etcd,
    cfg: &NetworkConfig,
    ip: Ipv4Addr,
) -> Result<store::OwnLease, StoreError> {
    let mut c = store::connect(&etcd_opts(etcd)).await?;
    let req = AcquireRequest {
        public_ip: ip,
        public_ipv6: None,
        previous_subnet: None,
        previous_subnet6: None,
        ttl: store::LEASE_TTL,
        vtep_mac: None,
        vtep_mac6: None,
    };
    acquire_lease(&mut c, &Keys::new(PREFIX), cfg, &req).await
}

async fn lease_keys(etcd: &Etcd) -> Vec<(Subnet, String)> {
    let mut c = etcd.client().await.expect("client");
    let keys = Keys::new(PREFIX);
    let r = c
        .get(keys.subnets_dir(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("list");
    r.kvs()
        .iter()
        .map(|kv| {
            (
                keys.parse_subnet_key(kv.key()).expect("lease key"),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_then_ten_nodes_acquire_distinct_subnets() {
    init_tracing();
    let etcd = Etcd::start().await;
    // 15 leasable subnets: twelve nodes collide often, so lost races must be retried.
    let cfg = put_config(
        &etcd,
        r#"{"Network":"10.5.0.0/20","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    assert_eq!(cfg.subnet_count(), 15);

    let mut all = Vec::new();
    for round in [2u8, 10] {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..round {
            let ip = Ipv4Addr::new(192, 168, round, i + 1);
            let (endpoint_cfg, etcd_o) = (cfg.clone(), etcd_opts(&etcd));
            tasks.spawn(async move {
                let mut c = store::connect(&etcd_o).await.expect("connect");
                let req = AcquireRequest {
                    public_ip: ip,
                    public_ipv6: None,
                    previous_subnet: None,
                    previous_subnet6: None,
                    ttl: store::LEASE_TTL,
                    vtep_mac: None,
                    vtep_mac6: None,
                };
                let own = acquire_lease(&mut c, &Keys::new(PREFIX), &endpoint_cfg, &req)
                    .await
                    .expect("acquire");
                (ip, own)
            });
        }
        while let Some(r) = tasks.join_next().await {
            all.push(r.expect("task"));
        }
        let distinct: HashSet<Subnet> = all.iter().map(|(_, o)| o.subnet).collect();
        assert_eq!(
            distinct.len(),
            all.len(),
            "two nodes share a subnet: {all:?}"
        );
    }
    assert_eq!(all.len(), 12);

    // etcd holds exactly those twelve, each with its own node's record.
    let stored = lease_keys(&etcd).await;
    assert_eq!(stored.len(), 12);
    let mut macs = HashSet::new();
    for (ip, own) in &all {
        assert!(cfg.is_leasable(&own.subnet), "{}", own.subnet);
        let (_, value) = stored
            .iter()
            .find(|(s, _)| *s == own.subnet)
            .expect("lease stored");
        let rec = LeaseRecord::parse(value.as_bytes()).expect("our record parses");
        assert_eq!(rec.public_ip, *ip);
        assert_eq!(value, &own.record.to_json());
        let mac = own.vtep_mac().expect("vxlan record has a MAC");
        assert!(mac.is_local() && mac.is_unicast());
        macs.insert(mac);
    }
    assert_eq!(macs.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_gets_its_old_subnet_back() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.6.0.0/16","SubnetMin":"10.6.210.0","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let ip = Ipv4Addr::new(192, 168, 6, 1);
    let keys = Keys::new(PREFIX);

    // A lease left by an earlier run carries our IP and a MAC: both are reused.
    let old_mac: EthernetAddress = "0e:11:22:33:44:55".parse().expect("mac");
    put(
        &etcd,
        &keys.subnet(&subnet("10.6.77.0/24")),
        &vxlan_record(ip, "0e:11:22:33:44:55"),
    )
    .await;
    let (h, _) = start_store(store_opts(&etcd, ip, dir.path())).await;
    assert_eq!(h.own_lease().subnet, subnet("10.6.77.0/24"));
    assert_eq!(h.own_lease().vtep_mac(), Some(old_mac));
    let env = SubnetEnv::read(&dir.path().join(format!("subnet-{ip}.env"))).expect("subnet.env");
    assert_eq!(env.network, subnet("10.6.0.0/16"));
    assert_eq!(env.subnet, subnet("10.6.77.0/24"));
    assert_eq!(env.mtu, 1450);
    assert!(!env.ip_masq);
    h.shutdown().await;

    // Plain restart: same subnet, same MAC.
    let (h, _) = start_store(store_opts(&etcd, ip, dir.path())).await;
    assert_eq!(h.own_lease().subnet, subnet("10.6.77.0/24"));
    assert_eq!(h.own_lease().vtep_mac(), Some(old_mac));
    h.shutdown().await;

    // The lease expired while the node was down: subnet.env names the subnet to ask for.
    delete(&etcd, &keys.subnet(&subnet("10.6.77.0/24"))).await;
    let (h, _) = start_store(store_opts(&etcd, ip, dir.path())).await;
    assert_eq!(h.own_lease().subnet, subnet("10.6.77.0/24"));
    h.shutdown().await;

    // Another node took it meanwhile: we get a different one, and subnet.env follows.
    delete(&etcd, &keys.subnet(&subnet("10.6.77.0/24"))).await;
    put_peer(&etcd, "10.6.77.0/24", [192, 168, 6, 2]).await;
    let (h, _) = start_store(store_opts(&etcd, ip, dir.path())).await;
    let now = h.own_lease().subnet;
    assert_ne!(now, subnet("10.6.77.0/24"));
    let env = SubnetEnv::read(&dir.path().join(format!("subnet-{ip}.env"))).expect("subnet.env");
    assert_eq!(env.subnet, now);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_network_is_out_of_subnets() {
    init_tracing();
    let etcd = Etcd::start().await;
    // A /28 splits into four /30s; the first is never handed out: three leases in all.
    let cfg = put_config(
        &etcd,
        r#"{"Network":"10.9.0.0/28","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let mut got = HashSet::new();
    for i in 1..=3 {
        let own = acquire(&etcd, &cfg, Ipv4Addr::new(192, 168, 9, i))
            .await
            .expect("a free subnet");
        got.insert(own.subnet.to_string());
    }
    let want: HashSet<String> = ["10.9.0.4/30", "10.9.0.8/30", "10.9.0.12/30"]
        .map(String::from)
        .into();
    assert_eq!(got, want);
    let err = acquire(&etcd, &cfg, Ipv4Addr::new(192, 168, 9, 4))
        .await
        .expect_err("the network is full");
    assert!(
        matches!(err, StoreError::OutOfSubnets { count: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().starts_with("out of subnets"), "{err}");

    // The running service reports the same, rather than retrying forever.
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Store::start(
        store_opts(&etcd, Ipv4Addr::new(192, 168, 9, 5), dir.path()),
        SharedTable::new(LeaseTable::empty(30)),
    )
    .await;
    assert!(matches!(r, Err(StoreError::OutOfSubnets { .. })), "{r:?}");
    assert_eq!(lease_keys(&etcd).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_own_lease_is_recreated_within_two_seconds() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.7.0.0/16","SubnetMin":"10.7.210.0","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    put_peer(&etcd, "10.7.200.0/24", [192, 168, 7, 200]).await;
    let ip = Ipv4Addr::new(192, 168, 7, 1);
    let (h, shared) = start_store(store_opts(&etcd, ip, dir.path())).await;
    assert!(
        within(Duration::from_secs(5), || shared.load_full().len() == 1)
            .await
            .is_some()
    );
    let own = h.own_lease();
    let key = Keys::new(PREFIX).subnet(&own.subnet);
    let value = get(&etcd, &key).await.expect("our lease is stored");

    for _ in 0..2 {
        delete(&etcd, &key).await;
        let start = Instant::now();
        let mut back = None;
        while start.elapsed() < Duration::from_secs(2) {
            if let Some(v) = get(&etcd, &key).await {
                back = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            back.as_deref(),
            Some(value.as_str()),
            "lease not back within 2 s"
        );
    }
    // The new grant replaced the old one, and the peer table never noticed.
    let mut own_rx = h.subscribe_own_lease();
    let _ = tokio::time::timeout(Duration::from_secs(1), own_rx.changed()).await;
    assert_eq!(h.own_lease().subnet, own.subnet);
    assert_ne!(h.own_lease().etcd_lease, own.etcd_lease);
    assert_eq!(shared.load_full().len(), 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_record_leaves_every_other_entry_intact() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.8.0.0/16","SubnetMin":"10.8.210.0","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    for i in 1..=5u8 {
        put_peer(
            &etcd,
            &format!("10.8.{}.0/24", 20 + i),
            [192, 168, 8, 20 + i],
        )
        .await;
    }
    // Present before the first list, too.
    put(
        &etcd,
        &format!("{PREFIX}/subnets/10.8.40.0-24"),
        "{not json",
    )
    .await;
    let (h, shared) =
        start_store(store_opts(&etcd, Ipv4Addr::new(192, 168, 8, 1), dir.path())).await;
    assert!(
        within(Duration::from_secs(5), || shared.load_full().len() == 5)
            .await
            .is_some()
    );
    let before = view(&shared.load_full());

    // Garbage at a new key, garbage over a known key, a record with a bad MAC, a foreign
    // backend, and a key that is not a subnet at all. Then one good record as a marker.
    let keys = Keys::new(PREFIX);
    put(&etcd, &keys.subnet(&subnet("10.8.50.0/24")), "][").await;
    put(
        &etcd,
        &keys.subnet(&subnet("10.8.21.0/24")),
        r#"{"PublicIP":"nope"}"#,
    )
    .await;
    put(
        &etcd,
        &keys.subnet(&subnet("10.8.51.0/24")),
        r#"{"PublicIP":"192.168.8.51","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"xx"}}"#,
    )
    .await;
    put(
        &etcd,
        &keys.subnet(&subnet("10.8.52.0/24")),
        r#"{"PublicIP":"192.168.8.52","PublicIPv6":null,"BackendType":"host-gw"}"#,
    )
    .await;
    put(
        &etcd,
        &format!("{PREFIX}/subnets/garbage-key"),
        r#"{"PublicIP":"192.168.8.53"}"#,
    )
    .await;
    put_peer(&etcd, "10.8.60.0/24", [192, 168, 8, 60]).await;

    assert!(
        within(Duration::from_secs(2), || shared.load_full().len() == 6)
            .await
            .is_some(),
        "{:?}",
        view(&shared.load_full())
    );
    let mut want = before.clone();
    want.insert("10.8.60.0/24".into(), Ipv4Addr::new(192, 168, 8, 60));
    assert_eq!(view(&shared.load_full()), want);
    // 10.8.21.0/24 still routes to its last good record.
    assert_eq!(
        shared
            .load_full()
            .lookup(Ipv4Addr::new(10, 8, 21, 9))
            .map(|p| p.public_ip),
        Some(Ipv4Addr::new(192, 168, 8, 21))
    );
    h.shutdown().await;
}

/// Records near etcd's 1.5 MiB request limit under the subnets prefix (a mistake, or
/// malice) make a page of the listing larger than the client decodes (4 MiB): the page is read
/// again in halves, the node still starts, and every usable lease is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_do_not_stop_the_listing() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.9.0.0/16","SubnetMin":"10.9.210.0","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    for i in 1..=5u8 {
        put_peer(
            &etcd,
            &format!("10.9.{}.0/24", 20 + i),
            [192, 168, 9, 20 + i],
        )
        .await;
    }
    // Four records of 1.2 MB each, between the good ones in key order: 4.8 MB in one page.
    let big = "x".repeat(1_200_000);
    for i in 0..4u8 {
        put(&etcd, &format!("{PREFIX}/subnets/10.9.2{i}.5-32"), &big).await;
    }
    let (h, shared) =
        start_store(store_opts(&etcd, Ipv4Addr::new(192, 168, 9, 1), dir.path())).await;
    assert!(
        within(Duration::from_secs(5), || shared.load_full().len() == 5)
            .await
            .is_some(),
        "{:?}",
        view(&shared.load_full())
    );
    let report = shared.load_full().report().rejected.clone();
    assert_eq!(
        report.iter().filter(|r| r.key.ends_with("-32")).count(),
        4,
        "the large records are listed as unused: {report:?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_keeps_the_table_and_catches_up() {
    init_tracing();
    let mut etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.10.0.0/16","SubnetMin":"10.10.210.0","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    for i in 1..=3u8 {
        put_peer(&etcd, &format!("10.10.{i}0.0/24"), [192, 168, 10, i]).await;
    }
    put(&etcd, &format!("{PREFIX}/subnets/10.10.99.0-24"), "garbage").await;
    let (h, shared) = start_store(store_opts(
        &etcd,
        Ipv4Addr::new(192, 168, 10, 100),
        dir.path(),
    ))
    .await;
    assert!(
        within(Duration::from_secs(5), || shared.load_full().len() == 3)
            .await
            .is_some()
    );
    let before = view(&shared.load_full());
    let mut reader = shared.reader();

    etcd.stop();
    let outage = Instant::now();
    let mut saw_down = false;
    while outage.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            view(reader.load()),
            before,
            "table changed during the outage"
        );
        saw_down |= !h.etcd_reachable();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_down, "the store never noticed etcd was gone");

    // Changes made while the store cannot see etcd: it must learn them by re-listing.
    etcd.start_hidden().await;
    put_peer(&etcd, "10.10.40.0/24", [192, 168, 10, 4]).await;
    delete(&etcd, &format!("{PREFIX}/subnets/10.10.10.0-24")).await;
    put_peer(&etcd, "10.10.20.0/24", [192, 168, 10, 22]).await;
    assert_eq!(
        view(reader.load()),
        before,
        "table changed during the outage"
    );
    etcd.restart().await;
    let back = Instant::now();
    let mut want = before.clone();
    want.remove("10.10.10.0/24");
    want.insert("10.10.20.0/24".into(), Ipv4Addr::new(192, 168, 10, 22));
    want.insert("10.10.40.0/24".into(), Ipv4Addr::new(192, 168, 10, 4));
    let took = within(Duration::from_secs(2), || view(&shared.load_full()) == want).await;
    assert!(
        took.is_some(),
        "not caught up 2 s after etcd returned: {:?}",
        view(&shared.load_full())
    );
    eprintln!("caught up {:?} after etcd returned", back.elapsed());
    assert!(h.etcd_reachable());
    // Our own lease survived the outage.
    assert!(get(&etcd, &Keys::new(PREFIX).subnet(&h.own_lease().subnet))
        .await
        .is_some());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_past_the_watch_revision_recovers() {
    init_tracing();
    let mut etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.11.0.0/16","SubnetMin":"10.11.210.0","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    put_peer(&etcd, "10.11.1.0/24", [192, 168, 11, 1]).await;
    let (h, shared) = start_store(store_opts(
        &etcd,
        Ipv4Addr::new(192, 168, 11, 100),
        dir.path(),
    ))
    .await;
    assert!(
        within(Duration::from_secs(5), || shared.load_full().len() == 1)
            .await
            .is_some()
    );
    let watched_rev = shared.load_full().revision();

    // Cut the store off, then change and compact history past the revision it watched from.
    etcd.start_hidden().await;
    let mut c = etcd.client().await.expect("client");
    for i in 2..=6u8 {
        put_peer(&etcd, &format!("10.11.{i}.0/24"), [192, 168, 11, i]).await;
    }
    delete(&etcd, &format!("{PREFIX}/subnets/10.11.1.0-24")).await;
    let rev = c
        .get("x", None)
        .await
        .expect("get")
        .header()
        .map(|h| h.revision())
        .expect("revision");
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    assert!(rev > watched_rev + 5);
    assert_eq!(
        view(&shared.load_full()).len(),
        1,
        "the store saw the hidden etcd"
    );
    etcd.restart().await;

    let want: BTreeMap<String, Ipv4Addr> = (2..=6u8)
        .map(|i| (format!("10.11.{i}.0/24"), Ipv4Addr::new(192, 168, 11, i)))
        .collect();
    assert!(
        within(Duration::from_secs(3), || view(&shared.load_full()) == want)
            .await
            .is_some(),
        "{:?}",
        view(&shared.load_full())
    );
    assert!(shared.load_full().revision() >= rev);
    // And the new watch works after the compaction.
    put_peer(&etcd, "10.11.7.0/24", [192, 168, 11, 7]).await;
    assert!(
        within(Duration::from_secs(2), || shared.load_full().len() == 6)
            .await
            .is_some()
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_renewed_before_it_expires() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.12.0.0/16","Backend":{"Type":"udp"}}"#,
    )
    .await;
    let mut opts = store_opts(&etcd, Ipv4Addr::new(192, 168, 12, 1), dir.path());
    // A 3 s lease with the default 60 min margin: renewed half-way, every 1.5 s.
    opts.lease_ttl = Duration::from_secs(3);
    let (h, _) = start_store(opts).await;
    let first = h.own_lease();
    assert_eq!(first.vtep_mac(), None);
    let key = Keys::new(PREFIX).subnet(&first.subnet);
    assert_eq!(
        get(&etcd, &key).await.as_deref(),
        Some(r#"{"PublicIP":"192.168.12.1","PublicIPv6":null}"#)
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        get(&etcd, &key).await.is_some(),
        "lease expired: not renewed"
    );
    assert_ne!(h.own_lease().etcd_lease, first.etcd_lease);
    // Once the store stops renewing, etcd expires the key: the TTL is real.
    h.shutdown().await;
    let gone = {
        let start = Instant::now();
        loop {
            if get(&etcd, &key).await.is_none() {
                break true;
            }
            if start.elapsed() > Duration::from_secs(8) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(gone, "lease outlived its TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_etcd_works() {
    init_tracing();
    let etcd = Etcd::start_tls().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.13.0.0/16","SubnetMin":"10.13.210.0","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    put_peer(&etcd, "10.13.5.0/24", [192, 168, 13, 5]).await;
    let (h, shared) = start_store(store_opts(
        &etcd,
        Ipv4Addr::new(192, 168, 13, 1),
        dir.path(),
    ))
    .await;
    assert!(h.config().network == subnet("10.13.0.0/16"));
    assert!(
        within(Duration::from_secs(5), || shared.load_full().len() == 1)
            .await
            .is_some()
    );
    put_peer(&etcd, "10.13.6.0/24", [192, 168, 13, 6]).await;
    assert!(
        within(Duration::from_secs(2), || shared.load_full().len() == 2)
            .await
            .is_some()
    );
    h.shutdown().await;

    // The server really insists on TLS with a client certificate.
    let keys = Keys::new(PREFIX);
    let mut no_cert = etcd_opts(&etcd);
    no_cert.certfile = None;
    no_cert.keyfile = None;
    let mut plain = etcd_opts(&etcd);
    plain.endpoints = vec![etcd.endpoint().replace("https://", "http://")];
    for (what, o) in [("no client certificate", no_cert), ("plain http", plain)] {
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            let mut c = store::connect(&o).await?;
            store::read_config(&mut c, &keys).await
        })
        .await;
        assert!(matches!(r, Ok(Err(_)) | Err(_)), "{what}: {r:?}");
    }
    // Half a client identity is a setup error, not a retry.
    let mut half = etcd_opts(&etcd);
    half.keyfile = None;
    assert!(matches!(
        store::connect(&half).await,
        Err(StoreError::TlsIncomplete)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_retried_until_fixed() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put(
        &etcd,
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.14.0.0/16","SubnetLen":31}"#,
    )
    .await;
    let shared = SharedTable::new(LeaseTable::empty(24));
    let start = tokio::spawn(Store::start(
        store_opts(&etcd, Ipv4Addr::new(192, 168, 14, 1), dir.path()),
        shared,
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!start.is_finished(), "gave up on an invalid config");
    assert!(lease_keys(&etcd).await.is_empty());
    put(
        &etcd,
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.14.0.0/16","SubnetLen":26}"#,
    )
    .await;
    let h = tokio::time::timeout(Duration::from_secs(3), start)
        .await
        .expect("started within 3 s of the fix")
        .expect("task")
        .expect("store");
    assert_eq!(h.own_lease().subnet.prefix_len(), 26);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_weft_nodes_see_each_other_with_ready_headers() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.15.0.0/16","Backend":{"Type":"vxlan","VNI":7}}"#,
    )
    .await;
    let (a_ip, b_ip) = (
        Ipv4Addr::new(192, 168, 15, 1),
        Ipv4Addr::new(192, 168, 15, 2),
    );
    let (a, a_table) = start_store(store_opts(&etcd, a_ip, dir.path())).await;
    let (b, b_table) = start_store(store_opts(&etcd, b_ip, dir.path())).await;
    assert!(
        within(Duration::from_secs(2), || a_table.load_full().len() == 1)
            .await
            .is_some()
    );
    assert!(
        within(Duration::from_secs(2), || b_table.load_full().len() == 1)
            .await
            .is_some()
    );
    for (me, mine, other, other_ip) in [(&a, &a_table, &b, b_ip), (&b, &b_table, &a, a_ip)] {
        let t = mine.load_full();
        let theirs = other.own_lease();
        let p = t
            .lookup(theirs.subnet.first_host())
            .expect("the other node's subnet routes to it");
        assert_eq!(p.subnet, theirs.subnet);
        assert_eq!(p.public_ip, other_ip);
        assert_eq!(p.underlay.to_string(), format!("{other_ip}:8472"));
        let their_mac = theirs.vtep_mac().expect("vxlan MAC");
        let my_mac = me.own_lease().vtep_mac().expect("vxlan MAC");
        assert_eq!(p.vtep_mac, Some(their_mac));
        assert_eq!(&p.vxlan_header[..8], &[0x08, 0, 0, 0, 0, 0, 7, 0]);
        assert_eq!(&p.vxlan_header[8..14], &their_mac.0);
        assert_eq!(&p.vxlan_header[14..20], &my_mac.0);
        assert_eq!(&p.vxlan_header[20..], &[0x08, 0x00]);
        assert_eq!(
            t.lookup_underlay(other_ip).map(|p| p.subnet),
            Some(theirs.subnet)
        );
        // A node never routes its own subnet through the table.
        assert!(t.lookup(me.own_lease().subnet.first_host()).is_none());
    }
    // One node leaves for good (its lease deleted): the other drops it within 2 s.
    let b_key = Keys::new(PREFIX).subnet(&b.own_lease().subnet);
    b.shutdown().await;
    delete(&etcd, &b_key).await;
    assert!(
        within(Duration::from_secs(2), || a_table.load_full().is_empty())
            .await
            .is_some()
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_waits_for_etcd_at_startup() {
    init_tracing();
    let mut etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.16.0.0/16","Backend":{"Type":"udp"}}"#,
    )
    .await;
    etcd.stop();
    let start = tokio::spawn(Store::start(
        store_opts(&etcd, Ipv4Addr::new(192, 168, 16, 1), dir.path()),
        SharedTable::new(LeaseTable::empty(24)),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!start.is_finished(), "gave up while etcd was down");
    etcd.restart().await;
    let h = tokio::time::timeout(Duration::from_secs(5), start)
        .await
        .expect("started within 5 s of etcd's return")
        .expect("task")
        .expect("store");
    assert_eq!(h.config().network, subnet("10.16.0.0/16"));
    assert_eq!(lease_keys(&etcd).await.len(), 1);
    h.shutdown().await;
}

// Dual stack (flannel v0.20.2): one key `10.1.2.0-24&fd10:0:0:2::-64` per node, a record with
// PublicIPv6 and BackendV6Data, subnet.env with the IPv6 lines.

fn vni1() -> Vni {
    Vni::new(1).expect("vni")
}

fn dual_opts(etcd: &Etcd, ip: Ipv4Addr, ip6: Ipv6Addr, dir: &Path) -> StoreOptions {
    let mut o = store_opts(etcd, ip, dir);
    o.public_ipv6 = Some(ip6);
    o
}

fn subnet6(s: &str) -> Subnet6 {
    s.parse().expect("IPv6 subnet")
}

/// Every key under the subnets prefix (without the prefix) with its value, in key order.
async fn raw_leases(etcd: &Etcd) -> Vec<(String, String)> {
    let mut c = etcd.client().await.expect("client");
    let dir = Keys::new(PREFIX).subnets_dir();
    let r = c
        .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("list");
    r.kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            (
                key.trim_start_matches(dir.as_str()).to_string(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

/// The key (without the prefix) and the record flanneld v0.20.2 writes for a dual-stack
/// vxlan node, byte for byte (Go's field order).
fn flanneld_dual_lease(own: &store::OwnLease, ip: Ipv4Addr, ip6: Ipv6Addr) -> (String, String) {
    let s6 = own.subnet6.expect("a dual-stack lease");
    let mac = own.vtep_mac().expect("vxlan MAC");
    let mac6 = own.vtep_mac6().expect("IPv6 VTEP MAC");
    (
        format!("{}&{}", own.subnet.key_string(), s6.key_string()),
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
        ),
    )
}

/// Polls etcd until `key` holds `value` (or `limit` passes).
async fn wait_for_value(etcd: &Etcd, key: &str, value: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if get(etcd, key).await.as_deref() == Some(value) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_lease_is_flanneld_s_key_and_record_renewed_and_recreated() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = put_config(
        &etcd,
        r#"{"Network":"10.20.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let v6cfg = cfg.ipv6.expect("IPv6 half");
    let (ip, ip6): (Ipv4Addr, Ipv6Addr) = (
        "192.168.20.1".parse().unwrap(),
        "fd77::20:1".parse().unwrap(),
    );
    let mut opts = dual_opts(&etcd, ip, ip6, dir.path());
    // A 3 s lease: renewed every 1.5 s.
    opts.lease_ttl = Duration::from_secs(3);
    let env_path = opts.subnet_file.clone();
    let (h, _) = start_store(opts).await;
    let own = h.own_lease();
    let s6 = own.subnet6.expect("an IPv6 subnet with EnableIPv6");
    assert!(cfg.is_leasable(&own.subnet), "{}", own.subnet);
    assert!(v6cfg.is_leasable(&s6), "{s6}");
    assert_eq!(own.public_ipv6(), Some(ip6));
    // The MACs: the IPv4 one as before, the IPv6 one derived from the IPv6 address, distinct.
    let mac = store::derive_vtep_mac(ip, vni1());
    assert_eq!(own.vtep_mac(), Some(mac));
    assert_eq!(
        own.vtep_mac6(),
        Some(store::derive_vtep_mac6(ip6, vni1(), mac))
    );
    assert_ne!(own.vtep_mac6(), own.vtep_mac());

    // One key, flanneld's form and record, byte for byte.
    let (key, value) = flanneld_dual_lease(&own, ip, ip6);
    assert_eq!(raw_leases(&etcd).await, [(key.clone(), value.clone())]);
    assert_eq!(
        own.key(&Keys::new(PREFIX)),
        format!("{PREFIX}/subnets/{key}")
    );
    // Other nodes' judge takes it as a usable dual-stack lease.
    let full_key = own.key(&Keys::new(PREFIX));
    let j = store::judge(
        &Keys::new(PREFIX),
        &cfg,
        full_key.as_bytes(),
        value.as_bytes(),
    );
    assert_eq!((j.subnet, j.subnet6), (Some(own.subnet), Some(s6)));
    assert!(j.verdict.is_ok(), "{:?}", j.verdict);

    // subnet.env: the IPv6 lines in flanneld's place.
    let env = std::fs::read_to_string(&env_path).expect("subnet.env");
    assert_eq!(
        env,
        format!(
            "FLANNEL_NETWORK=10.20.0.0/16\nFLANNEL_SUBNET={}/{}\n\
             FLANNEL_IPV6_NETWORK=fd10::/48\nFLANNEL_IPV6_SUBNET={}/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            own.subnet.first_host(),
            own.subnet.prefix_len(),
            s6.first_host(),
        )
    );

    // Renewals keep the key and the record; only the grant changes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(raw_leases(&etcd).await, [(key.clone(), value.clone())]);
    assert_ne!(h.own_lease().etcd_lease, own.etcd_lease);
    assert_eq!(h.own_lease().subnet6, Some(s6));

    // Deleted: the same dual key comes back; overwritten: our record comes back.
    for _ in 0..2 {
        delete(&etcd, &full_key).await;
        assert!(
            wait_for_value(&etcd, &full_key, &value, Duration::from_secs(2)).await,
            "dual-stack lease not re-created within 2 s: {:?}",
            raw_leases(&etcd).await
        );
    }
    put(
        &etcd,
        &full_key,
        r#"{"PublicIP":"192.168.20.99","PublicIPv6":"fd77::99"}"#,
    )
    .await;
    assert!(
        wait_for_value(&etcd, &full_key, &value, Duration::from_secs(2)).await,
        "dual-stack record not restored within 2 s: {:?}",
        raw_leases(&etcd).await
    );
    assert_eq!(raw_leases(&etcd).await, [(key, value)]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_dual_stack_node_gets_both_subnets_back() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.22.0.0/16","EnableIPv6":true,"IPv6Network":"fd22::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let keys = Keys::new(PREFIX);
    let (ip, ip6): (Ipv4Addr, Ipv6Addr) = (
        "192.168.22.1".parse().unwrap(),
        "fd77::22:1".parse().unwrap(),
    );
    let opts = || dual_opts(&etcd, ip, ip6, dir.path());
    let env_path = opts().subnet_file;
    let (h, _) = start_store(opts()).await;
    let first = h.own_lease();
    let (s, s6) = (first.subnet, first.subnet6.expect("IPv6 subnet"));
    h.shutdown().await;

    // Plain restart: the lease carrying our PublicIP is reused, key and MACs included.
    let (h, _) = start_store(opts()).await;
    let own = h.own_lease();
    assert_eq!((own.subnet, own.subnet6), (s, Some(s6)));
    assert_eq!(own.record, first.record);
    assert_eq!(raw_leases(&etcd).await.len(), 1);
    h.shutdown().await;

    // The lease expired while the node was down: subnet.env names both subnets to ask for.
    delete(&etcd, &first.key(&keys)).await;
    let (h, _) = start_store(opts()).await;
    let own = h.own_lease();
    assert_eq!((own.subnet, own.subnet6), (s, Some(s6)));
    assert_eq!(own.record, first.record);
    h.shutdown().await;

    // Another node took our IPv6 subnet meanwhile, under another IPv4 subnet: the IPv4
    // subnet stays ours, the IPv6 one moves, and subnet.env follows.
    delete(&etcd, &first.key(&keys)).await;
    let other = LeaseRecord::parse(
        br#"{"PublicIP":"192.168.22.2","PublicIPv6":"fd77::22:2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:22:02"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:01:22:02"}}"#,
    )
    .expect("record");
    put(
        &etcd,
        &keys.subnet_dual(&subnet("10.22.99.0/24"), Some(&s6)),
        &other.to_json(),
    )
    .await;
    let (h, _) = start_store(opts()).await;
    let own = h.own_lease();
    assert_eq!(own.subnet, s);
    let moved6 = own.subnet6.expect("IPv6 subnet");
    assert_ne!(moved6, s6);
    let env = SubnetEnv::read(&env_path).expect("subnet.env");
    assert_eq!(env.subnet, s);
    assert_eq!(env.ipv6.map(|v6| v6.subnet), Some(moved6));
    assert_eq!(env.ipv6.map(|v6| v6.network), Some(subnet6("fd22::/48")));
    h.shutdown().await;

    // And an IPv4-only key of another node on our IPv4 subnet: that one moves instead.
    delete(&etcd, &own.key(&keys)).await;
    put_peer(&etcd, &s.to_string(), [192, 168, 22, 3]).await;
    let (h, _) = start_store(opts()).await;
    let own = h.own_lease();
    assert_ne!(own.subnet, s);
    assert_eq!(own.subnet6, Some(moved6));
    assert_eq!(
        SubnetEnv::read(&env_path).expect("subnet.env").subnet,
        own.subnet
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_nodes_get_distinct_subnets_in_both_families() {
    init_tracing();
    let etcd = Etcd::start().await;
    // 15 leasable subnets in each family, eight nodes at once: collisions in either family
    // must lose the race and choose again.
    let cfg = put_config(
        &etcd,
        r#"{"Network":"10.21.0.0/20","EnableIPv6":true,"IPv6Network":"fd21::/60","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let v6cfg = cfg.ipv6.expect("IPv6 half");
    assert_eq!((cfg.subnet_count(), v6cfg.subnet_count()), (15, 15));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=8u8 {
        let ip = Ipv4Addr::new(192, 168, 21, i);
        let ip6 = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0x21, u16::from(i));
        let (cfg, etcd_o) = (cfg.clone(), etcd_opts(&etcd));
        tasks.spawn(async move {
            let mut c = store::connect(&etcd_o).await.expect("connect");
            let req = AcquireRequest {
                public_ip: ip,
                public_ipv6: Some(ip6),
                previous_subnet: None,
                previous_subnet6: None,
                ttl: store::LEASE_TTL,
                vtep_mac: None,
                vtep_mac6: None,
            };
            let own = acquire_lease(&mut c, &Keys::new(PREFIX), &cfg, &req)
                .await
                .expect("acquire");
            (ip, ip6, own)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.push(r.expect("task"));
    }
    let v4: HashSet<Subnet> = all.iter().map(|(_, _, o)| o.subnet).collect();
    let v6: HashSet<Subnet6> = all.iter().filter_map(|(_, _, o)| o.subnet6).collect();
    assert_eq!((v4.len(), v6.len()), (8, 8), "shared subnets: {all:?}");
    let mut stored = raw_leases(&etcd).await;
    let mut want: Vec<(String, String)> = all
        .iter()
        .map(|(ip, ip6, own)| flanneld_dual_lease(own, *ip, *ip6))
        .collect();
    stored.sort();
    want.sort();
    assert_eq!(stored, want);
    let mut macs = HashSet::new();
    for (_, _, own) in &all {
        assert!(v6cfg.is_leasable(&own.subnet6.expect("IPv6 subnet")));
        macs.insert(own.vtep_mac().expect("MAC"));
        macs.insert(own.vtep_mac6().expect("IPv6 MAC"));
    }
    assert_eq!(macs.len(), 16, "a MAC used twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_only_network_is_unchanged_by_an_ipv6_address() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.23.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let ip = Ipv4Addr::new(192, 168, 23, 1);
    let opts = dual_opts(&etcd, ip, "fd77::23:1".parse().unwrap(), dir.path());
    let env_path = opts.subnet_file.clone();
    let (h, _) = start_store(opts).await;
    let own = h.own_lease();
    assert_eq!(
        (own.subnet6, own.vtep_mac6(), own.public_ipv6()),
        (None, None, None)
    );
    let mac = own.vtep_mac().expect("MAC");
    assert_eq!(
        raw_leases(&etcd).await,
        [(
            own.subnet.key_string(),
            format!(
                r#"{{"PublicIP":"192.168.23.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
            )
        )]
    );
    assert_eq!(
        std::fs::read_to_string(&env_path).expect("subnet.env"),
        format!(
            "FLANNEL_NETWORK=10.23.0.0/16\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            own.subnet.first_host(),
            own.subnet.prefix_len()
        )
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moves_between_ipv4_only_and_dual_stack_keeping_its_ipv4_subnet() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let v4_config = r#"{"Network":"10.24.0.0/16","Backend":{"Type":"vxlan"}}"#;
    put_config(&etcd, v4_config).await;
    let (ip, ip6): (Ipv4Addr, Ipv6Addr) = (
        "192.168.24.1".parse().unwrap(),
        "fd77::24:1".parse().unwrap(),
    );
    let opts = || dual_opts(&etcd, ip, ip6, dir.path());
    let (h, _) = start_store(opts()).await;
    let v4_lease = h.own_lease();
    h.shutdown().await;

    // EnableIPv6 turned on: the IPv4-only lease no longer fits (flanneld deletes it); the
    // new one is dual-stack on the same IPv4 subnet, and it is the only key left.
    put_config(
        &etcd,
        r#"{"Network":"10.24.0.0/16","EnableIPv6":true,"IPv6Network":"fd24::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let (h, _) = start_store(opts()).await;
    let dual = h.own_lease();
    assert_eq!(dual.subnet, v4_lease.subnet);
    assert!(dual.subnet6.is_some());
    assert_eq!(dual.vtep_mac(), v4_lease.vtep_mac());
    assert_eq!(
        raw_leases(&etcd).await,
        [flanneld_dual_lease(&dual, ip, ip6)]
    );
    h.shutdown().await;

    // And back: the dual key goes, an IPv4-only key on the same subnet replaces it.
    put_config(&etcd, v4_config).await;
    let (h, _) = start_store(opts()).await;
    let back = h.own_lease();
    assert_eq!((back.subnet, back.subnet6), (v4_lease.subnet, None));
    assert_eq!(
        raw_leases(&etcd).await,
        [(back.subnet.key_string(), v4_lease.record.to_json())]
    );
    let env = SubnetEnv::read(&dir.path().join(format!("subnet-{ip}.env"))).expect("subnet.env");
    assert_eq!(env.ipv6, None);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_without_an_ipv6_address_is_a_clear_error() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.25.0.0/16","EnableIPv6":true,"IPv6Network":"fd25::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let opts = store_opts(&etcd, Ipv4Addr::new(192, 168, 25, 1), dir.path());
    let env_path = opts.subnet_file.clone();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        Store::start(opts, SharedTable::new(LeaseTable::empty(24))),
    )
    .await
    .expect("answered at once, not retried");
    let e = r.expect_err("no PublicIPv6 to write");
    assert!(matches!(e, StoreError::NoPublicIpv6), "{e}");
    assert!(!e.is_transient());
    assert!(e.to_string().contains("-public-ipv6"), "{e}");
    assert!(raw_leases(&etcd).await.is_empty());
    assert!(!env_path.exists());

    // An IPv6-only network needs the IPv6 address just the same.
    put_config(
        &etcd,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd25::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let opts = store_opts(&etcd, Ipv4Addr::UNSPECIFIED, dir.path());
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        Store::start(opts, SharedTable::new(LeaseTable::empty(24))),
    )
    .await
    .expect("answered at once");
    assert!(matches!(r, Err(StoreError::NoPublicIpv6)), "{r:?}");
    assert!(raw_leases(&etcd).await.is_empty());

    // Without an IPv4 address (0.0.0.0, what an IPv6-only node passes) a network with IPv4
    // is refused: only an IPv6-only network takes it.
    put_config(
        &etcd,
        r#"{"Network":"10.25.0.0/16","EnableIPv6":true,"IPv6Network":"fd25::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let opts = dual_opts(
        &etcd,
        Ipv4Addr::UNSPECIFIED,
        "fd77::25:1".parse().unwrap(),
        dir.path(),
    );
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        Store::start(opts, SharedTable::new(LeaseTable::empty(24))),
    )
    .await
    .expect("answered at once");
    let e = r.expect_err("no PublicIP to write");
    assert!(matches!(e, StoreError::NoPublicIp), "{e}");
    assert!(!e.is_transient());
    assert!(e.to_string().contains("-public-ip="), "{e}");
    assert!(raw_leases(&etcd).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_takes_no_lease_until_it_changes() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    put_config(
        &etcd,
        r#"{"Network":"10.26.0.0/16","EnableIPv6":true,"IPv6Network":"fd26::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    // What `weft run` does until its data path forwards IPv6.
    let mut opts = dual_opts(
        &etcd,
        Ipv4Addr::new(192, 168, 26, 1),
        "fd77::26:1".parse().unwrap(),
        dir.path(),
    );
    opts.config_check = Some(|c: &NetworkConfig| {
        if c.enable_ipv6 {
            Err(ConfigError::Ipv6Backend { backend: "vxlan" })
        } else {
            Ok(())
        }
    });
    let start = tokio::spawn(Store::start(opts, SharedTable::new(LeaseTable::empty(24))));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!start.is_finished(), "took a refused config");
    assert!(raw_leases(&etcd).await.is_empty());
    put_config(
        &etcd,
        r#"{"Network":"10.26.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let h = tokio::time::timeout(Duration::from_secs(3), start)
        .await
        .expect("started within 3 s of the change")
        .expect("task")
        .expect("store");
    assert_eq!(h.own_lease().subnet6, None);
    assert_eq!(raw_leases(&etcd).await.len(), 1);
    h.shutdown().await;
}

// IPv6-only networks (EnableIPv4 false): flanneld's key `0.0.0.0-0&<IPv6 subnet>` and record
// (`"PublicIP":"0.0.0.0"`, no BackendData), found again by PublicIPv6.

const V6_ONLY_CFG: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd30::/48","Backend":{"Type":"vxlan"}}"#;

/// An IPv6-only node's options: no IPv4 address at all.
fn v6_only_opts(etcd: &Etcd, ip6: Ipv6Addr, dir: &Path) -> StoreOptions {
    let mut o = StoreOptions::new(etcd_opts(etcd), Ipv4Addr::UNSPECIFIED);
    o.public_ipv6 = Some(ip6);
    o.subnet_file = dir.join(format!("subnet-{ip6}.env"));
    o
}

/// The key (without the prefix) and the record flanneld v0.20.2 writes for an IPv6-only
/// vxlan node, byte for byte.
fn flanneld_v6_only_lease(own: &store::OwnLease, ip6: Ipv6Addr) -> (String, String) {
    let s6 = own.subnet6.expect("an IPv6 subnet");
    let mac6 = own.vtep_mac6().expect("IPv6 VTEP MAC");
    (
        format!("0.0.0.0-0&{}", s6.key_string()),
        format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
        ),
    )
}

/// The IPv6 half of the table as `IPv6 subnet -> (PublicIPv6, VTEP MAC)`.
fn view6(t: &LeaseTable) -> BTreeMap<String, (Ipv6Addr, Option<EthernetAddress>)> {
    t.iter6()
        .map(|p| (p.subnet.to_string(), (p.public_ip, p.vtep_mac)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_nodes_lease_watch_and_keep_flanneld_s_keys() {
    init_tracing();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = put_config(&etcd, V6_ONLY_CFG).await;
    let v6cfg = cfg.ipv6.expect("IPv6 half");
    let keys = Keys::new(PREFIX);
    let (ip_a, ip_b): (Ipv6Addr, Ipv6Addr) =
        ("fd77::30:1".parse().unwrap(), "fd77::30:2".parse().unwrap());
    let opts_a = v6_only_opts(&etcd, ip_a, dir.path());
    let (a, shared_a) = start_store(opts_a.clone()).await;
    let (b, _shared_b) = start_store(v6_only_opts(&etcd, ip_b, dir.path())).await;
    let (own_a, own_b) = (a.own_lease(), b.own_lease());
    for own in [&own_a, &own_b] {
        assert!(own.is_ipv6_only());
        assert_eq!(own.subnet4(), None);
        assert_eq!(own.vtep_mac(), None);
        assert!(v6cfg.is_leasable(&own.subnet6.expect("IPv6 subnet")));
    }
    assert_ne!(own_a.subnet6, own_b.subnet6);
    // The IPv6 VTEP MAC is derived from the IPv6 address alone, stable.
    let mac_a = store::derive_vtep_mac6(ip_a, vni1(), EthernetAddress([0; 6]));
    assert_eq!(own_a.vtep_mac6(), Some(mac_a));

    // flanneld's keys and records, byte for byte.
    let (key_a, value_a) = flanneld_v6_only_lease(&own_a, ip_a);
    let mut want = vec![
        (key_a.clone(), value_a.clone()),
        flanneld_v6_only_lease(&own_b, ip_b),
    ];
    want.sort();
    assert_eq!(raw_leases(&etcd).await, want);
    let full_a = own_a.key(&keys);
    assert_eq!(full_a, format!("{PREFIX}/subnets/{key_a}"));

    // subnet.env: no IPv4 lines.
    let s6 = own_a.subnet6.expect("IPv6 subnet");
    assert_eq!(
        std::fs::read_to_string(&opts_a.subnet_file).expect("subnet.env"),
        format!(
            "FLANNEL_IPV6_NETWORK=fd30::/48\nFLANNEL_IPV6_SUBNET={}/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            s6.first_host()
        )
    );

    // Each sees the other as an IPv6 peer, and nothing in IPv4.
    let peer_b = own_b.subnet6.expect("IPv6 subnet").to_string();
    assert!(
        within(Duration::from_secs(5), || view6(&shared_a.load_full())
            .get(&peer_b)
            .is_some_and(
                |(ip, mac)| *ip == ip_b && *mac == own_b.vtep_mac6()
            ))
        .await
        .is_some(),
        "{:?}",
        view6(&shared_a.load_full())
    );
    assert_eq!(shared_a.load_full().len(), 0);

    // A record written by hand as flanneld writes it is an IPv6 peer.
    let flanneld_key = format!("{PREFIX}/subnets/0.0.0.0-0&fd30:0:0:99::-64");
    put(
        &etcd,
        &flanneld_key,
        r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd77::30:99","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"9e:1a:77:20:4b:99"}}"#,
    )
    .await;
    let flanneld_peer = (
        "fd77::30:99".parse::<Ipv6Addr>().unwrap(),
        Some("9e:1a:77:20:4b:99".parse::<EthernetAddress>().unwrap()),
    );
    assert!(
        within(Duration::from_secs(5), || view6(&shared_a.load_full())
            .get("fd30:0:0:99::/64")
            == Some(&flanneld_peer))
        .await
        .is_some(),
        "{:?}",
        view6(&shared_a.load_full())
    );

    // Keys that do not fit an IPv6-only network, and a bad record, are skipped and reported;
    // the table keeps every peer, also when the misfits go away again.
    let before = view6(&shared_a.load_full());
    let bad = [
        ("10.30.2.0-24&fd30:0:0:98::-64", "not_ipv6_only"),
        ("0.0.0.0-0", "not_ipv6_only"),
        ("0.0.0.0-0&fd30:0:0:97::-64", "unreadable"),
    ];
    for (key, _) in bad {
        let value = if key.ends_with("97::-64") {
            "{not json"
        } else {
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd77::30:98","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"9e:1a:77:20:4b:98"}}"#
        };
        put(&etcd, &format!("{PREFIX}/subnets/{key}"), value).await;
    }
    assert!(
        within(Duration::from_secs(5), || {
            let t = shared_a.load_full();
            bad.iter().all(|(key, label)| {
                t.report()
                    .rejected
                    .iter()
                    .any(|r| r.key == format!("{PREFIX}/subnets/{key}") && r.reason == *label)
            })
        })
        .await
        .is_some(),
        "{:?}",
        shared_a.load_full().report().rejected
    );
    assert_eq!(view6(&shared_a.load_full()), before);
    // The misfit key names our peer's IPv6 subnet: deleting it must not remove that peer.
    put(
        &etcd,
        &format!(
            "{PREFIX}/subnets/10.30.3.0-24&{}",
            own_b.subnet6.unwrap().key_string()
        ),
        "{}",
    )
    .await;
    for (key, _) in bad {
        delete(&etcd, &format!("{PREFIX}/subnets/{key}")).await;
    }
    delete(
        &etcd,
        &format!(
            "{PREFIX}/subnets/10.30.3.0-24&{}",
            own_b.subnet6.unwrap().key_string()
        ),
    )
    .await;
    assert!(within(Duration::from_secs(5), || shared_a
        .load_full()
        .report()
        .rejected
        .is_empty())
    .await
    .is_some());
    assert_eq!(view6(&shared_a.load_full()), before);

    // Our key deleted: the same key comes back; overwritten: our record comes back.
    delete(&etcd, &full_a).await;
    assert!(
        wait_for_value(&etcd, &full_a, &value_a, Duration::from_secs(2)).await,
        "IPv6-only lease not re-created within 2 s: {:?}",
        raw_leases(&etcd).await
    );
    put(
        &etcd,
        &full_a,
        r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd77::30:66"}"#,
    )
    .await;
    assert!(
        wait_for_value(&etcd, &full_a, &value_a, Duration::from_secs(2)).await,
        "IPv6-only record not restored within 2 s: {:?}",
        raw_leases(&etcd).await
    );
    assert_eq!(a.own_lease().subnet6, own_a.subnet6);

    // A restart finds the lease by PublicIPv6 (every record's PublicIP is 0.0.0.0), even
    // without subnet.env; B's lease is untouched.
    a.shutdown().await;
    std::fs::remove_file(&opts_a.subnet_file).expect("remove subnet.env");
    let (a, _) = start_store(opts_a.clone()).await;
    assert_eq!(a.own_lease().subnet6, own_a.subnet6);
    assert_eq!(b.own_lease().subnet6, own_b.subnet6);
    assert_eq!(get(&etcd, &full_a).await.as_deref(), Some(value_a.as_str()));
    assert_eq!(
        store::read_previous_ipv6_subnet(&opts_a.subnet_file),
        own_a.subnet6
    );
    let keys_now: Vec<String> = raw_leases(&etcd)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys_now.len(), 3, "{keys_now:?}");
    assert!(
        keys_now.iter().all(|k| k.starts_with("0.0.0.0-0&")),
        "{keys_now:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_node_asks_for_its_previous_ipv6_subnet_and_drops_an_old_dual_key() {
    init_tracing();
    let etcd = Etcd::start().await;
    let cfg = put_config(&etcd, V6_ONLY_CFG).await;
    let ip6: Ipv6Addr = "fd77::31:1".parse().unwrap();
    // This node's lease from when the network was dual stack: same PublicIPv6, old key form.
    let old_key = format!("{PREFIX}/subnets/10.31.2.0-24&fd30:0:0:5::-64");
    put(
        &etcd,
        &old_key,
        r#"{"PublicIP":"192.168.31.1","PublicIPv6":"fd77::31:1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:31:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:31:02"}}"#,
    )
    .await;
    let mut c = store::connect(&etcd_opts(&etcd)).await.expect("connect");
    let req = AcquireRequest {
        public_ip: Ipv4Addr::UNSPECIFIED,
        public_ipv6: Some(ip6),
        previous_subnet: None,
        previous_subnet6: Some(subnet6("fd30:0:0:7::/64")),
        ttl: store::LEASE_TTL,
        vtep_mac: None,
        vtep_mac6: None,
    };
    let own = acquire_lease(&mut c, &Keys::new(PREFIX), &cfg, &req)
        .await
        .expect("acquire");
    assert_eq!(own.subnet6, Some(subnet6("fd30:0:0:7::/64")));
    assert!(own.is_ipv6_only());
    assert_eq!(get(&etcd, &old_key).await, None, "the old dual key is gone");
    let keys_now: Vec<String> = raw_leases(&etcd)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys_now, ["0.0.0.0-0&fd30:0:0:7::-64"]);
    // Taken by another node: the previous subnet is not asked for.
    let other: Ipv6Addr = "fd77::31:2".parse().unwrap();
    let req2 = AcquireRequest {
        public_ipv6: Some(other),
        ..req.clone()
    };
    let own2 = acquire_lease(&mut c, &Keys::new(PREFIX), &cfg, &req2)
        .await
        .expect("acquire");
    assert_ne!(own2.subnet6, own.subnet6);
    // IPv6-only leases are not IPv4 ones: a dual-stack network skips them, and its nodes
    // still get every IPv4 subnet.
    let dual = put_config(
        &etcd,
        r#"{"Network":"10.31.0.0/16","EnableIPv6":true,"IPv6Network":"fd30::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let value = get(&etcd, &own.key(&Keys::new(PREFIX)))
        .await
        .expect("lease");
    let j = store::judge(
        &Keys::new(PREFIX),
        &dual,
        own.key(&Keys::new(PREFIX)).as_bytes(),
        value.as_bytes(),
    );
    assert_eq!(
        j.verdict.map(|_| ()).map_err(|p| p.label()),
        Err("ipv6_only_lease")
    );
    let req3 = AcquireRequest {
        public_ip: Ipv4Addr::new(192, 168, 31, 3),
        public_ipv6: Some("fd77::31:3".parse().unwrap()),
        ..req.clone()
    };
    let own3 = acquire_lease(&mut c, &Keys::new(PREFIX), &dual, &req3)
        .await
        .expect("acquire on the dual-stack network");
    assert!(dual.is_leasable(&own3.subnet));
    assert!(own3.subnet6 != own.subnet6 && own3.subnet6 != own2.subnet6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_nodes_racing_get_distinct_subnets() {
    init_tracing();
    let etcd = Etcd::start().await;
    // 15 leasable IPv6 subnets, eight nodes at once, every key under the same 0.0.0.0-0.
    let cfg = put_config(
        &etcd,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd32::/60","Backend":{"Type":"vxlan"}}"#,
    )
    .await;
    let v6cfg = cfg.ipv6.expect("IPv6 half");
    assert_eq!(v6cfg.subnet_count(), 15);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=8u16 {
        let ip6 = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0x32, i);
        let (cfg, etcd_o) = (cfg.clone(), etcd_opts(&etcd));
        tasks.spawn(async move {
            let mut c = store::connect(&etcd_o).await.expect("connect");
            let req = AcquireRequest {
                public_ip: Ipv4Addr::UNSPECIFIED,
                public_ipv6: Some(ip6),
                previous_subnet: None,
                previous_subnet6: None,
                ttl: store::LEASE_TTL,
                vtep_mac: None,
                vtep_mac6: None,
            };
            let own = acquire_lease(&mut c, &Keys::new(PREFIX), &cfg, &req)
                .await
                .expect("acquire");
            (ip6, own)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.push(r.expect("task"));
    }
    let v6: HashSet<Subnet6> = all.iter().filter_map(|(_, o)| o.subnet6).collect();
    assert_eq!(v6.len(), 8, "shared IPv6 subnets: {all:?}");
    assert!(v6.iter().all(|s| v6cfg.is_leasable(s)));
    let mut stored = raw_leases(&etcd).await;
    let mut want: Vec<(String, String)> = all
        .iter()
        .map(|(ip6, own)| flanneld_v6_only_lease(own, *ip6))
        .collect();
    stored.sort();
    want.sort();
    assert_eq!(stored, want);
}
