//! Turning mapped exchange messages into what the gateway ingests: one
//! sealed envelope per message (SM4-GCM, data key wrapped for the gateway),
//! all under one batch signature.

use mappings::ExchangeMessage;
use secure_gateway::envelope::{ContentType, EnvelopeMeta, Recipient, seal_unsigned};
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
            seal_unsigned(provider, &key_id, meta, json.as_bytes(), &recipients)
        })
        .collect::<Result<Vec<_>, _>>()?;
    secure_gateway::sign_batch(provider, signer, uuid::Uuid::new_v4(), now, records)
}
