//! Registry administration: `POST /v1/admin/registry` (a signed change with
//! its approvals), `GET /v1/admin/entities`, `GET /v1/admin/entities/{id}`.

use actix_web::{HttpResponse, web};
use ledger::{Receipt, TxContent, TxKind};
use secure_gateway::sm3;
use serde_json::json;

use crate::error::{ApiError, Code};
use crate::registry::{Registry, RegistryChange};
use crate::server::AppState;

/// The ledger category of registry transactions.
pub const REGISTRY_CATEGORY: &str = "registry";

/// Checks a change against the current registry, appends it to the ledger
/// and, once durable, applies it. Changes are serialised.
pub async fn submit(state: &AppState, change: RegistryChange) -> Result<Receipt, ApiError> {
    let _writer = state.registry_writer.lock().await;
    let mut next = crate::registry::read(&state.registry)?.clone();
    next.apply(&change).map_err(|e| match e {
        crate::registry::RegistryError::NotAuthorised(m) => ApiError::new(Code::Forbidden, m),
        other => ApiError::new(Code::ValidationFailed, other.to_string()),
    })?;
    let payload = serde_json::to_vec(&change).map_err(ApiError::internal)?;
    let content = TxContent {
        tx_id: change.change_id,
        record_id: format!("registry:{}", change.change_id),
        kind: TxKind::Registry,
        category: REGISTRY_CATEGORY.into(),
        state_key: Registry::state_key(&change),
        content_type: "json".into(),
        data_hash: sm3(&payload),
        payload,
        fields_root: None,
        format: state.ledger.format(),
    };
    let txs = ledger::sign_batch(
        "node",
        &state.node,
        vec![content],
        chrono::Utc::now().timestamp_millis(),
    )
    .map_err(ApiError::internal)?;
    let receipt = state
        .ledger
        .append(txs)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("no receipt"))?;
    *crate::registry::write(&state.registry)? = next;
    tracing::info!(change = %change.change_id, height = receipt.height, "registry change committed");
    Ok(receipt)
}

/// Why the registry could not be rebuilt from the ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// Reading the registry transactions failed.
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    /// A registry transaction does not hold a registry change.
    #[error("registry transaction {tx} (block {height}) is not a registry change: {message}")]
    NotAChange {
        /// The transaction id.
        tx: String,
        /// Its block.
        height: u64,
        /// What the parser said.
        message: String,
    },
    /// A registry change does not apply to the registry built so far.
    #[error(
        "registry transaction {tx} (block {height}) does not apply to the registry built so far: {message}; \
         was the ledger written with other administrator keys?"
    )]
    DoesNotApply {
        /// The transaction id.
        tx: String,
        /// Its block.
        height: u64,
        /// Why.
        message: String,
    },
}

/// Rebuilds the registry from the ledger's registry transactions.
pub async fn replay<S: ledger::LedgerStore>(store: &S, mut reg: Registry) -> Result<Registry, ReplayError> {
    let mut from = 0u64;
    loop {
        let page = store.category(REGISTRY_CATEGORY, from, 1000).await?;
        let Some(last) = page.last() else { break };
        from = last.leaf_index + 1;
        for st in &page {
            if st.tx.content.kind != TxKind::Registry {
                continue;
            }
            let change: RegistryChange =
                serde_json::from_slice(&st.tx.content.payload).map_err(|e| ReplayError::NotAChange {
                    tx: st.tx.content.tx_id.to_string(),
                    height: st.height,
                    message: e.to_string(),
                })?;
            reg.apply(&change).map_err(|e| ReplayError::DoesNotApply {
                tx: st.tx.content.tx_id.to_string(),
                height: st.height,
                message: e.to_string(),
            })?;
        }
    }
    Ok(reg)
}

pub(crate) async fn post_change(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let change: RegistryChange = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(Code::MalformedBody, format!("not a registry change: {e}")))?;
    let r = submit(&state, change).await?;
    Ok(HttpResponse::Created().json(r))
}

pub(crate) async fn list_entities(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let reg = crate::registry::read(&state.registry)?;
    let list: Vec<_> = reg.entities().collect();
    Ok(HttpResponse::Ok().json(list))
}

pub(crate) async fn get_entity(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let reg = crate::registry::read(&state.registry)?;
    let e = reg
        .entity(&id)
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("entity {id} is not registered")))?;
    let keys: Vec<_> = reg.keys_of(&e.id).collect();
    // API keys by public id, label and status; not even the hash.
    let api_keys: Vec<_> = reg
        .api_keys_of(&e.id)
        .map(|k| json!({ "key_id": k.key_id, "label": k.label, "status": k.status }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "entity": e, "keys": keys, "api_keys": api_keys })))
}
