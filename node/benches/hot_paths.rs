//! Criterion micro-benchmarks of the hot pure functions: Shamir share generation and share
//! addition (secure aggregation), and MPC message encode/decode (the CBOR wire format).
//! Run with `cargo bench -p p2p-mpc-node --bench hot_paths`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use p2p_mpc_node::mpc::aggregation::shares::{self, Field};
use p2p_mpc_node::mpc::wire::{Body, MpcMessage, SessionId};

fn values(len: usize) -> Vec<Field> {
    shares::to_field(&(0..len as u64).collect::<Vec<_>>()).expect("small values are in the field")
}

fn share_generation(c: &mut Criterion) {
    let mut group = c.benchmark_group("aggregation/split t=2 n=5");
    for len in [1usize, 1_000, 100_000] {
        let input = values(len);
        group.throughput(Throughput::Elements(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &input, |b, input| {
            let mut rng = rand10::rng();
            b.iter(|| shares::split(input, 2, 5, &mut rng).expect("split"));
        });
    }
    group.finish();
}

fn share_addition(c: &mut Criterion) {
    let mut group = c.benchmark_group("aggregation/add_assign");
    for len in [1_000usize, 100_000] {
        let share = values(len);
        group.throughput(Throughput::Elements(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &share, |b, share| {
            let mut sum = vec![Field::from(0u64); share.len()];
            b.iter(|| shares::add_assign(&mut sum, share).expect("same length"));
        });
    }
    group.finish();
}

fn message_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire/cbor");
    for size in [64usize, 4096, 192 * 1024] {
        let msg = MpcMessage::new(
            SessionId::random(),
            Body::DkgRound2 {
                package: vec![7u8; size],
            },
        );
        let bytes = cbor4ii::serde::to_vec(Vec::new(), &msg).expect("encode");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &msg, |b, msg| {
            b.iter(|| cbor4ii::serde::to_vec(Vec::with_capacity(size + 64), msg).expect("encode"));
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &bytes, |b, bytes| {
            b.iter(|| cbor4ii::serde::from_slice::<MpcMessage>(bytes).expect("decode"));
        });
    }
    group.finish();
}

criterion_group!(benches, share_generation, share_addition, message_codec);
criterion_main!(benches);
