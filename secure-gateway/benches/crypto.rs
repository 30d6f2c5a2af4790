//! Criterion micro-benchmarks of the primitives (`cargo bench -p secure-gateway`).
//! `vaxgate bench crypto` is the side-by-side-with-OpenSSL figure; this is for
//! regressions.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use secure_gateway::sym::{sm4_cbc_encrypt, sm4_ctr_apply, sm4_gcm_seal};
use secure_gateway::{
    ContentType, CryptoProvider, EnvelopeMeta, Recipient, RecipientKey, RustCryptoProvider, Sm2CiphertextFormat,
    Sm2SigningKey, Sm4Key, open, seal, sm3,
};

fn primitives(c: &mut Criterion) {
    let buf = vec![0x5au8; 8192];
    let mut g = c.benchmark_group("8KiB");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("sm3", |b| b.iter(|| sm3(black_box(&buf))));
    let k = Sm4Key::new([1; 16]);
    g.bench_function("sm4-cbc", |b| b.iter(|| sm4_cbc_encrypt(&k, &[2; 16], black_box(&buf))));
    let mut ctr = buf.clone();
    g.bench_function("sm4-ctr", |b| {
        b.iter(|| sm4_ctr_apply(&k, &[2; 16], black_box(&mut ctr)))
    });
    g.bench_function("sm4-gcm", |b| {
        b.iter(|| sm4_gcm_seal(&k, &[3; 12], b"", black_box(&buf)).unwrap())
    });
    g.finish();

    let key = Sm2SigningKey::generate();
    let sig = key.sign(b"msg");
    let ct = key.verifying_key().encrypt(&[7; 16], Sm2CiphertextFormat::Der).unwrap();
    c.bench_function("sm2 sign", |b| b.iter(|| key.sign(black_box(b"msg"))));
    c.bench_function("sm2 verify", |b| {
        b.iter(|| key.verifying_key().verify(black_box(b"msg"), &sig))
    });
    c.bench_function("sm2 encrypt 16B", |b| {
        b.iter(|| {
            key.verifying_key()
                .encrypt(black_box(&[7; 16]), Sm2CiphertextFormat::Der)
        })
    });
    c.bench_function("sm2 decrypt 16B", |b| {
        b.iter(|| key.decrypt(black_box(&ct), Sm2CiphertextFormat::Der))
    });
}

fn envelopes(c: &mut Criterion) {
    let p = RustCryptoProvider::new();
    let sender = p.add_sm2_key(Sm2SigningKey::generate());
    let me = p.add_sm2_key(Sm2SigningKey::generate());
    let rcpt = [Recipient::Sm2(p.public_key(&me).unwrap())];
    let spk = p.public_key(&sender).unwrap();
    let meta = EnvelopeMeta::now("e", ContentType::Json, "c");
    let rec = vec![b'x'; 1024];
    let env = seal(&p, &sender, meta.clone(), &rec, &rcpt).unwrap();
    c.bench_function("envelope seal 1KiB", |b| {
        b.iter(|| seal(&p, &sender, meta.clone(), black_box(&rec), &rcpt))
    });
    c.bench_function("envelope open 1KiB", |b| {
        b.iter(|| open(&p, black_box(&env), &spk, RecipientKey::Sm2(&me)))
    });
}

/// What the gateway does with a posted 1,000-record batch (1.2 KiB
/// plaintexts, `sm2-batch-kek`) before validation: parse the body, verify
/// the batch signature and root, decrypt every record, keep each record's
/// signed bytes, digest and audit path; from the JSON form and from the
/// binary form. Throughput is per record.
fn batch_wire(c: &mut Criterion) {
    use secure_gateway::batch::open_batch_with_paths;
    use secure_gateway::{BatchSealer, ReceivedBatch, SignedBatch};
    let p = RustCryptoProvider::new();
    let sender = p.add_sm2_key(Sm2SigningKey::generate());
    let me = p.add_sm2_key(Sm2SigningKey::generate());
    let spk = p.public_key(&sender).unwrap();
    let sealer = BatchSealer::new(&p, spk.key_id(), &[Recipient::Sm2(p.public_key(&me).unwrap())]).unwrap();
    let plain = vec![b'x'; 1200];
    let records = (0..1000)
        .map(|_| {
            sealer
                .seal_unsigned(EnvelopeMeta::now("e", ContentType::Json, "c"), &plain)
                .unwrap()
        })
        .collect();
    let batch = sealer.sign(&sender, 0, records).unwrap();
    let json = batch.to_json().into_bytes();
    let bin = batch.to_binary().unwrap();
    let mut g = c.benchmark_group("batch of 1000 received");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("json parse", |b| {
        b.iter(|| SignedBatch::from_json(black_box(&json)).unwrap())
    });
    g.bench_function("binary parse", |b| {
        b.iter(|| ReceivedBatch::from_binary(black_box(&bin)).unwrap())
    });
    g.bench_function("json parse+open", |b| {
        b.iter(|| {
            let batch = SignedBatch::from_json(black_box(&json)).unwrap();
            open_batch_with_paths(&p, &batch, &spk, RecipientKey::Sm2(&me)).unwrap()
        })
    });
    g.bench_function("binary parse+open", |b| {
        b.iter(|| {
            ReceivedBatch::from_binary(black_box(&bin))
                .unwrap()
                .open_with_paths(&p, &spk, RecipientKey::Sm2(&me))
                .unwrap()
        })
    });
    g.finish();
}

/// Version 2's raw DEFLATE on the golden vaccination message (the exchange
/// message `vaxgate bench http` seals for
/// `mappings/tests/golden/vaccination/clinic-ims.json`, 1,590 bytes):
/// deflate at levels 1, 6 and 9 and inflate, then a batch record sealed and a
/// batch opened in version 1 and in version 2. Prints the sizes.
/// `cargo bench -p secure-gateway --bench crypto -- golden`.
fn golden(c: &mut Criterion) {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    use secure_gateway::BatchSealer;
    use secure_gateway::envelope::EnvelopeVersion;
    let plain: &[u8] = include_bytes!("../tests/fixtures/golden-vaccination.json");
    let deflate = |level: u32| {
        let mut out = Vec::with_capacity(plain.len() + 128);
        Compress::new(Compression::new(level), false)
            .compress_vec(plain, &mut out, FlushCompress::Finish)
            .unwrap();
        out
    };
    let mut g = c.benchmark_group("golden");
    for level in [1, 6, 9] {
        let z = deflate(level);
        eprintln!(
            "golden vaccination: {} bytes, level {level}: {} bytes",
            plain.len(),
            z.len()
        );
        g.bench_function(format!("deflate level {level}"), |b| {
            b.iter(|| deflate(black_box(level)))
        });
        g.bench_function(format!("inflate level {level}"), |b| {
            b.iter(|| {
                let mut out = vec![0u8; plain.len()];
                Decompress::new(false)
                    .decompress(black_box(&z), &mut out, FlushDecompress::Finish)
                    .unwrap();
                out
            })
        });
    }
    let z6 = deflate(6);
    let mut kept_d = Decompress::new(false);
    g.bench_function("inflate level 6 decompressor reused", |b| {
        b.iter(|| {
            let mut out = vec![0u8; plain.len()];
            kept_d
                .decompress(black_box(&z6), &mut out, FlushDecompress::Finish)
                .unwrap();
            kept_d.reset(false);
            out
        })
    });
    // What version-2 seals do: one compressor per thread, reset after use
    // (beside "deflate level 6", a new compressor each time).
    let mut kept = Compress::new(Compression::new(6), false);
    g.bench_function("deflate level 6 compressor reused", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(plain.len() + 128);
            kept.compress_vec(black_box(plain), &mut out, FlushCompress::Finish)
                .unwrap();
            kept.reset();
            out
        })
    });
    let p = RustCryptoProvider::new();
    let sender = p.add_sm2_key(Sm2SigningKey::generate());
    let me = p.add_sm2_key(Sm2SigningKey::generate());
    let spk = p.public_key(&sender).unwrap();
    let sealer = BatchSealer::new(&p, spk.key_id(), &[Recipient::Sm2(p.public_key(&me).unwrap())]).unwrap();
    let meta = EnvelopeMeta::now("3201020001", ContentType::Json, "vaccination");
    for v in [EnvelopeVersion::V1, EnvelopeVersion::V2] {
        let rec = sealer.seal_unsigned_with_version(meta.clone(), plain, v).unwrap();
        eprintln!(
            "golden vaccination, batch record {v:?}: signed bytes {}, binary {}, json {}",
            rec.signed_bytes().unwrap().len(),
            rec.to_binary().unwrap().len(),
            rec.to_json().len()
        );
        g.bench_function(format!("batch record seal {v:?}"), |b| {
            b.iter(|| {
                sealer
                    .seal_unsigned_with_version(meta.clone(), black_box(plain), v)
                    .unwrap()
            })
        });
        let recs = (0..100)
            .map(|_| sealer.seal_unsigned_with_version(meta.clone(), plain, v).unwrap())
            .collect();
        let batch = sealer.sign(&sender, 0, recs).unwrap();
        g.bench_function(format!("batch of 100 open {v:?}"), |b| {
            b.iter(|| {
                secure_gateway::batch::open_batch_each(&p, black_box(&batch), &spk, RecipientKey::Sm2(&me)).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, primitives, envelopes, batch_wire, golden);
criterion_main!(benches);
