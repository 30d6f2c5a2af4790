//! `vaxgate bench crypto`: single-thread throughput of the default crypto
//! provider. Prints a table, then a final line of JSON with every figure.
//!
//! MB/s means 10^6 bytes per second (the unit of `openssl speed`'s "k"
//! columns ×1000), over 8 KiB buffers like `openssl speed`'s 8192-byte column.

use std::hint::black_box;
use std::time::{Duration, Instant};

use secure_gateway::batch::open_batch_each;
use secure_gateway::sym::{sm4_cbc_encrypt, sm4_ctr_apply, sm4_gcm_seal};
use secure_gateway::{
    BatchSealer, ContentType, CryptoProvider, EnvelopeMeta, Recipient, RecipientKey, RustCryptoProvider,
    Sm2CiphertextFormat, Sm2SigningKey, Sm4Key, open, seal, seal_unsigned, sign_batch, sm3,
};

/// Arguments of `vaxgate bench crypto`.
#[derive(Debug, clap::Args)]
pub struct BenchCryptoArgs {
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
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

/// Runs the crypto benchmark.
pub fn run(a: BenchCryptoArgs) -> anyhow::Result<u8> {
    anyhow::ensure!(
        a.seconds > 0.0 && a.seconds.is_finite(),
        "--seconds must be a positive number"
    );
    let s = a.seconds;
    let buf: Vec<u8> = (0..BLOCK).map(|i| (i * 31 + 7) as u8).collect();
    let mb = |ops: f64| ops * BLOCK as f64 / 1e6;

    let sm3_mb_s = mb(rate(s, || {
        black_box(sm3(black_box(&buf)));
    }));

    let key = Sm2SigningKey::generate();
    let vk = key.verifying_key().clone();
    let msg = [0x5au8; 64];
    let sig = key.sign(&msg);
    let sm2_sign_per_s = rate(s, || {
        black_box(key.sign(black_box(&msg)));
    });
    let sm2_verify_per_s = rate(s, || {
        black_box(vk.verify(black_box(&msg), &sig)).ok();
    });
    let dk = [7u8; 16];
    let ct = vk.encrypt(&dk, Sm2CiphertextFormat::Der)?;
    let sm2_encrypt_per_s = rate(s, || {
        black_box(vk.encrypt(black_box(&dk), Sm2CiphertextFormat::Der)).ok();
    });
    let sm2_decrypt_per_s = rate(s, || {
        black_box(key.decrypt(black_box(&ct), Sm2CiphertextFormat::Der)).ok();
    });

    let k = Sm4Key::new([0x11; 16]);
    let iv = [0x22u8; 16];
    let nonce = [0x33u8; 12];
    let sm4_cbc_mb_s = mb(rate(s, || {
        black_box(sm4_cbc_encrypt(&k, &iv, black_box(&buf)));
    }));
    let mut ctr_buf = buf.clone();
    let sm4_ctr_mb_s = mb(rate(s, || {
        sm4_ctr_apply(&k, &iv, black_box(&mut ctr_buf));
    }));
    let sm4_gcm_mb_s = mb(rate(s, || {
        black_box(sm4_gcm_seal(&k, &nonce, b"", black_box(&buf))).ok();
    }));

    let provider = RustCryptoProvider::new();
    let sender = provider.add_sm2_key(Sm2SigningKey::generate());
    let me = provider.add_sm2_key(Sm2SigningKey::generate());
    let me_pk = provider.public_key(&me)?;
    let sender_pk = provider.public_key(&sender)?;
    let record = vec![b'x'; 1024];
    let recipients = [Recipient::Sm2(me_pk)];
    let meta = EnvelopeMeta::now("bench-entity", ContentType::Json, "bench");
    let env = seal(&provider, &sender, meta.clone(), &record, &recipients)?;
    let envelope_seal_per_s = rate(s, || {
        black_box(seal(&provider, &sender, meta.clone(), black_box(&record), &recipients)).ok();
    });
    let envelope_open_per_s = rate(s, || {
        black_box(open(&provider, black_box(&env), &sender_pk, RecipientKey::Sm2(&me))).ok();
    });

    // Opening a signed batch of 256 × 1 KiB records (verify + decrypt every
    // record), as the gateway's ingest does: per-record SM2 key wrapping
    // versus one SM2-wrapped batch KEK (BatchSealer). Records per second.
    const BATCH: usize = 256;
    let sender_id = sender_pk.key_id().to_string();
    let per_record: Vec<_> = (0..BATCH)
        .map(|_| {
            seal_unsigned(
                &provider,
                &sender_id,
                EnvelopeMeta::now("bench-entity", ContentType::Json, "bench"),
                &record,
                &recipients,
            )
        })
        .collect::<Result<_, _>>()?;
    let per_record = sign_batch(&provider, &sender, uuid::Uuid::new_v4(), 0, per_record)?;
    let sealer = BatchSealer::new(&provider, &sender_id, &recipients)?;
    let kek_records: Vec<_> = (0..BATCH)
        .map(|_| sealer.seal_unsigned(EnvelopeMeta::now("bench-entity", ContentType::Json, "bench"), &record))
        .collect::<Result<_, _>>()?;
    let batch_kek = sealer.sign(&sender, 0, kek_records)?;
    let batch_open = |b: &secure_gateway::SignedBatch| {
        let s = s.max(2.0 / 8.0);
        BATCH as f64
            * rate(s, || {
                black_box(open_batch_each(
                    &provider,
                    black_box(b),
                    &sender_pk,
                    RecipientKey::Sm2(&me),
                ))
                .ok();
            })
    };
    let batch_open_sm2_per_record_s = batch_open(&per_record);
    let batch_open_batch_kek_s = batch_open(&batch_kek);

    let rows: [(&str, &str, f64); 13] = [
        ("sm3 (8 KiB)", "sm3_mb_s", sm3_mb_s),
        ("sm2 sign", "sm2_sign_per_s", sm2_sign_per_s),
        ("sm2 verify", "sm2_verify_per_s", sm2_verify_per_s),
        ("sm2 encrypt (16 B, der)", "sm2_encrypt_per_s", sm2_encrypt_per_s),
        ("sm2 decrypt (16 B, der)", "sm2_decrypt_per_s", sm2_decrypt_per_s),
        ("sm4-cbc encrypt (8 KiB)", "sm4_cbc_mb_s", sm4_cbc_mb_s),
        ("sm4-ctr (8 KiB)", "sm4_ctr_mb_s", sm4_ctr_mb_s),
        ("sm4-gcm seal (8 KiB)", "sm4_gcm_mb_s", sm4_gcm_mb_s),
        (
            "envelope seal (1 KiB, 1 sm2 recipient)",
            "envelope_seal_per_s",
            envelope_seal_per_s,
        ),
        (
            "envelope open (1 KiB, verify + decrypt)",
            "envelope_open_per_s",
            envelope_open_per_s,
        ),
        (
            "batch open (256 x 1 KiB, sm2 per record)",
            "batch_open_sm2_per_record_records_per_s",
            batch_open_sm2_per_record_s,
        ),
        (
            "batch open (256 x 1 KiB, batch kek)",
            "batch_open_batch_kek_records_per_s",
            batch_open_batch_kek_s,
        ),
        ("", "", 0.0),
    ];
    println!(
        "vaxgate bench crypto: provider {}, {s} s per figure, one thread",
        provider.name()
    );
    println!("{:<42} {:>14}", "operation", "rate");
    let mut json = serde_json::Map::new();
    json.insert("provider".into(), provider.name().into());
    json.insert("seconds".into(), s.into());
    for (label, field, v) in rows.iter().filter(|r| !r.0.is_empty()) {
        let unit = if field.ends_with("mb_s") {
            "MB/s"
        } else if field.ends_with("records_per_s") {
            "records/s"
        } else {
            "ops/s"
        };
        println!("{label:<42} {v:>10.1} {unit}");
        json.insert((*field).into(), ((v * 10.0).round() / 10.0).into());
    }
    println!("{}", serde_json::Value::Object(json));
    Ok(0)
}
