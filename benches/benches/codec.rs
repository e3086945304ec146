//! Payload codec micro-benchmarks through the public API (`Codec::encode` / `Codec::decode`),
//! with the load generator's ~100-byte event.
//!
//! `cargo bench -p benches --bench codec`

use std::hint::black_box;
use std::time::Duration;

use benches::Load;
use bus_core::Codec;
use criterion::{criterion_group, criterion_main, Criterion};

fn codecs(c: &mut Criterion) {
    let event = Load::new(42);
    for codec in [Codec::MessagePack, Codec::Json] {
        let bytes = codec.encode(&event).expect("the load event encodes");
        let mut group = c.benchmark_group(format!("{}_{}B", codec.tag(), bytes.len()));
        group.bench_function("encode", |b| b.iter(|| codec.encode(black_box(&event))));
        group.bench_function("decode", |b| {
            b.iter(|| codec.decode::<Load>(black_box(&bytes)))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = codecs
}
criterion_main!(benches);
