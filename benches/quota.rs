//! Quota check-and-charge cost: the in-process store, and a real
//! `redis-server` (started here on a free loopback port, killed at the end)
//! over one multiplexed connection. Three limits per request, as the bundled
//! in-Check rules give a predict call.
//!
//! Run: `cargo bench --bench quota` (needs `redis-server` on PATH).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::quota::gcra::Rate;
use portcullis::quota::local::LocalStore;
use portcullis::quota::redis::RedisStore;
use portcullis::quota::{Charge, QuotaStore};
use portcullis::time::SystemClock;

fn charges(i: u64) -> Vec<Charge> {
    // Large limits: the benchmark measures the charge, not refusals.
    let rate = Rate::new(u64::MAX / 4, 1_000_000, u64::MAX / 4 / 1_000_000);
    ["principal", "org", "tokens"]
        .iter()
        .map(|k| Charge::gcra(format!("bench|{k}={}", i % 1000), rate, 1))
        .collect()
}

fn local(c: &mut Criterion) {
    let store = LocalStore::new(1_000_000, Arc::new(SystemClock));
    let mut i = 0u64;
    c.bench_function("local charge, 3 limits", |b| {
        b.iter(|| {
            i += 1;
            store.charge_now(&charges(i)).unwrap()
        })
    });
}

struct Redis(std::process::Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(c: &mut Criterion) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Redis(
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/install-test-tools.sh)"),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store =
        RedisStore::new(&format!("redis://127.0.0.1:{port}"), Duration::from_secs(1)).unwrap();
    // Wait (bounded) until the server answers.
    runtime.block_on(async {
        for _ in 0..100 {
            if store.charge(&charges(0)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not answer");
    });
    let mut i = 0u64;
    c.bench_function("redis charge, 3 limits, one round trip", |b| {
        b.to_async(&runtime).iter(|| {
            i += 1;
            let charges = charges(i);
            let store = &store;
            async move { store.charge(&charges).await.unwrap() }
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = local, redis
}
criterion_main!(benches);
