//! `vaxgate bench crypto [--provider P]...`: single-thread throughput of
//! each crypto provider, every figure through the `CryptoProvider` trait
//! (the SM4-CBC/CTR rows are the pure-Rust library functions, shown with
//! the rustcrypto provider only). With several `--provider`s the table has
//! one column each and a ratio to the first; the last line is JSON.
//!
//! MB/s means 10^6 bytes per second (the unit of `openssl speed`'s "k"
//! columns ×1000), over 8 KiB buffers like `openssl speed`'s 8192-byte column.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secure_gateway::batch::open_batch_each;
use secure_gateway::sym::{sm4_cbc_encrypt, sm4_ctr_apply};
use secure_gateway::{
    BatchSealer, ContentType, CryptoProvider, EnvelopeMeta, KeyHandle, ProviderKind, Recipient, RecipientKey, Signer,
    Sm4Key, open, seal, seal_unsigned, sign_batch,
};

/// Arguments of `vaxgate bench crypto`.
#[derive(Debug, clap::Args)]
pub struct BenchCryptoArgs {
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Provider to measure (repeat to compare several in one run, e.g.
    /// `--provider rustcrypto --provider openssl`).
    #[arg(long = "provider", default_value = "rustcrypto")]
    pub providers: Vec<ProviderKind>,
}
/// Runs `op` repeatedly for about `secs` seconds; returns operations per second.
fn rate(secs: f64, mut op: impl FnMut()) -> f64 {
    op(); // warm-up (tables, allocations)
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n: u64 = 0;
    loop {
        for _ in 0..8 {
            op();
        }
        n += 8;
        let el = start.elapsed();
        if el >= budget {
            return n as f64 / el.as_secs_f64();
        }
    }
}

const BLOCK: usize = 8192;

/// One provider's figures: (label, JSON field, value), in table order.
type Figures = Vec<(&'static str, &'static str, f64)>;

/// Runs the crypto benchmark.
pub fn run(a: BenchCryptoArgs) -> anyhow::Result<u8> {
    anyhow::ensure!(
        a.seconds > 0.0 && a.seconds.is_finite(),
        "--seconds must be a positive number"
    );
    let mut kinds = a.providers.clone();
    kinds.dedup();
    let s = a.seconds;
    println!(
        "vaxgate bench crypto: provider {}, {s} s per figure, one thread",
        kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" vs ")
    );
    let mut all: Vec<(ProviderKind, Figures)> = Vec::new();
    for k in &kinds {
        all.push((*k, measure(k.build()?, s)?));
    }
    let unit = |field: &str| {
        if field.ends_with("mb_s") {
            "MB/s"
        } else if field.ends_with("records_per_s") {
            "records/s"
        } else {
            "ops/s"
        }
    };
    // Every row any provider has, in the first appearance's order.
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for (_, f) in &all {
        for (label, field, _) in f {
            if !rows.iter().any(|r| r.1 == *field) {
                rows.push((label, field));
            }
        }
    }
    let value = |f: &Figures, field: &str| f.iter().find(|r| r.1 == field).map(|r| r.2);
    print!("{:<42}", "operation");
    for (k, _) in &all {
        print!(" {:>20}", k.as_str());
    }
    if all.len() > 1 {
        print!(" {:>8}", "ratio");
    }
    println!();
    for (label, field) in &rows {
        print!("{label:<42}");
        for (_, f) in &all {
            match value(f, field) {
                Some(v) => print!(" {:>10.1} {:<9}", v, unit(field)),
                None => print!(" {:>20}", "-"),
            }
        }
        if all.len() > 1
            && let (Some(first), Some(last)) = (value(&all[0].1, field), value(&all[all.len() - 1].1, field))
            && first > 0.0
        {
            print!(" {:>8.2}", last / first);
        }
        println!();
    }
    let object = |k: ProviderKind, f: &Figures| {
        let mut json = serde_json::Map::new();
        json.insert("provider".into(), k.as_str().into());
        json.insert("seconds".into(), s.into());
        for (_, field, v) in f {
            json.insert((*field).into(), ((v * 10.0).round() / 10.0).into());
        }
        serde_json::Value::Object(json)
    };
    if let [(k, f)] = all.as_slice() {
        println!("{}", object(*k, f));
    } else {
        let list: Vec<_> = all.iter().map(|(k, f)| object(*k, f)).collect();
        println!("{}", serde_json::json!({ "seconds": s, "providers": list }));
    }
    Ok(0)
}

/// Every figure of one provider.
fn measure(provider: Arc<dyn CryptoProvider>, s: f64) -> anyhow::Result<Figures> {
    let p = provider.as_ref();
    let buf: Vec<u8> = (0..BLOCK).map(|i| (i * 31 + 7) as u8).collect();
    let mb = |ops: f64| ops * BLOCK as f64 / 1e6;
    let mut out: Figures = Vec::new();

    out.push((
        "sm3 (8 KiB)",
        "sm3_mb_s",
        mb(rate(s, || {
            black_box(p.sm3(black_box(&buf)));
        })),
    ));

    let signer = Signer::generate(provider.clone(), KeyHandle::new("bench-signer"))?;
    let vk = signer.verifying_key().clone();
    let msg = [0x5au8; 64];
    let sig = signer.sign(&msg)?;
    out.push((
        "sm2 sign",
        "sm2_sign_per_s",
        rate(s, || {
            black_box(signer.sign(black_box(&msg))).ok();
        }),
    ));
    out.push((
        "sm2 verify",
        "sm2_verify_per_s",
        rate(s, || {
            black_box(p.verify(&vk, black_box(&msg), &sig)).ok();
        }),
    ));
    let dk = [7u8; 16];
    let ct = p.sm2_encrypt(&vk, &dk)?;
    out.push((
        "sm2 encrypt (16 B, der)",
        "sm2_encrypt_per_s",
        rate(s, || {
            black_box(p.sm2_encrypt(&vk, black_box(&dk))).ok();
        }),
    ));
    out.push((
        "sm2 decrypt (16 B, der)",
        "sm2_decrypt_per_s",
        rate(s, || {
            black_box(p.sm2_decrypt(signer.handle(), black_box(&ct))).ok();
        }),
    ));

    let k = Sm4Key::new([0x11; 16]);
    let iv = [0x22u8; 16];
    let nonce = [0x33u8; 12];
    if p.name() == ProviderKind::RustCrypto.as_str() {
        out.push((
            "sm4-cbc encrypt (8 KiB)",
            "sm4_cbc_mb_s",
            mb(rate(s, || {
                black_box(sm4_cbc_encrypt(&k, &iv, black_box(&buf)));
            })),
        ));
        let mut ctr_buf = buf.clone();
        out.push((
            "sm4-ctr (8 KiB)",
            "sm4_ctr_mb_s",
            mb(rate(s, || {
                sm4_ctr_apply(&k, &iv, black_box(&mut ctr_buf));
            })),
        ));
    }
    out.push((
        "sm4-gcm seal (8 KiB)",
        "sm4_gcm_mb_s",
        mb(rate(s, || {
            black_box(p.sm4_gcm_seal(&k, &nonce, b"", black_box(&buf))).ok();
        })),
    ));

    let sender = signer.handle().clone();
    let me = Signer::generate(provider.clone(), KeyHandle::new("bench-recipient"))?;
    let me_pk = me.verifying_key().clone();
    let sender_pk = vk;
    let record = vec![b'x'; 1024];
    let recipients = [Recipient::Sm2(me_pk)];
    let meta = EnvelopeMeta::now("bench-entity", ContentType::Json, "bench");
    let env = seal(p, &sender, meta.clone(), &record, &recipients)?;
    out.push((
        "envelope seal (1 KiB, 1 sm2 recipient)",
        "envelope_seal_per_s",
        rate(s, || {
            black_box(seal(p, &sender, meta.clone(), black_box(&record), &recipients)).ok();
        }),
    ));
    out.push((
        "envelope open (1 KiB, verify + decrypt)",
        "envelope_open_per_s",
        rate(s, || {
            black_box(open(p, black_box(&env), &sender_pk, RecipientKey::Sm2(me.handle()))).ok();
        }),
    ));

    // Opening a signed batch of 256 × 1 KiB records (verify + decrypt every
    // record), as the gateway's ingest does: per-record SM2 key wrapping
    // versus one SM2-wrapped batch KEK (BatchSealer). Records per second.
    const BATCH: usize = 256;
    let sender_id = sender_pk.key_id().to_string();
    let per_record: Vec<_> = (0..BATCH)
        .map(|_| {
            seal_unsigned(
                p,
                &sender_id,
                EnvelopeMeta::now("bench-entity", ContentType::Json, "bench"),
                &record,
                &recipients,
            )
        })
        .collect::<Result<_, _>>()?;
    let per_record = sign_batch(p, &sender, uuid::Uuid::new_v4(), 0, per_record)?;
    let sealer = BatchSealer::new(p, &sender_id, &recipients)?;
    let kek_records: Vec<_> = (0..BATCH)
        .map(|_| sealer.seal_unsigned(EnvelopeMeta::now("bench-entity", ContentType::Json, "bench"), &record))
        .collect::<Result<_, _>>()?;
    let batch_kek = sealer.sign(&sender, 0, kek_records)?;
    let batch_open = |b: &secure_gateway::SignedBatch| {
        let s = s.max(2.0 / 8.0);
        BATCH as f64
            * rate(s, || {
                black_box(open_batch_each(
                    p,
                    black_box(b),
                    &sender_pk,
                    RecipientKey::Sm2(me.handle()),
                ))
                .ok();
            })
    };
    out.push((
        "batch open (256 x 1 KiB, sm2 per record)",
        "batch_open_sm2_per_record_records_per_s",
        batch_open(&per_record),
    ));
    out.push((
        "batch open (256 x 1 KiB, batch kek)",
        "batch_open_batch_kek_records_per_s",
        batch_open(&batch_kek),
    ));
    Ok(out)
}
