//! Turning mapped exchange messages into what the gateway ingests: one
//! sealed envelope per message (SM4-GCM), all under one batch signature.
//! Data keys are wrapped under one batch key-encryption key that is
//! SM2-encrypted once per batch and recipient (`sm2-batch-kek`, see
//! docs/envelope.md): the gateway does one SM2 decryption per batch instead
//! of one per record.

use mappings::ExchangeMessage;
use secure_gateway::envelope::{BatchSealer, ContentType, EnvelopeMeta, Recipient};
use secure_gateway::{CryptoError, CryptoProvider, KeyHandle, SignedBatch, Sm2VerifyingKey};

/// Seals `messages` as JSON for `gateway` (and any `extra` recipients) and
/// signs the batch with the provider key `signer`.
pub fn seal_batch(
    provider: &dyn CryptoProvider,
    signer: &KeyHandle,
    entity_id: &str,
    gateway: &Sm2VerifyingKey,
    extra: &[Recipient],
    messages: &[ExchangeMessage],
) -> Result<SignedBatch, CryptoError> {
    let key_id = provider.public_key(signer)?.key_id().to_string();
    let mut recipients = vec![Recipient::Sm2(gateway.clone())];
    recipients.extend(extra.iter().cloned());
    let now = chrono::Utc::now().timestamp_millis();
    let sealer = BatchSealer::new(provider, &key_id, &recipients)?;
    let records = messages
        .iter()
        .map(|m| {
            let meta = EnvelopeMeta {
                transaction_id: uuid::Uuid::now_v7(),
                entity_id: entity_id.to_string(),
                timestamp_ms: now,
                content_type: ContentType::Json,
                dataset_category: m.payload.category.clone(),
            };
            let json = mappings::exchange::to_json(m);
            sealer.seal_unsigned(meta, json.as_bytes())
        })
        .collect::<Result<Vec<_>, _>>()?;
    sealer.sign(signer, now, records)
}
