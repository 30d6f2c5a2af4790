//! The ledger on its real stores, SQLite and PostgreSQL: appends, group
//! commit, proofs, restart, and tamper detection (property tests).
//!
//! The PostgreSQL tests need `VAXGATE_TEST_PG_URL` (set by ./scripts/test.sh,
//! which starts a throw-away server); without it they fail, never skip.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use ledger::{
    AnyStore, Ledger, LedgerConfig, LedgerError, LedgerStore, SqliteStore, Transaction, TxContent, TxFormat, TxKind,
    merkle, on_backend, sign_batch, verify_ledger,
};
use proptest::prelude::*;
use secure_gateway::{KeyHandle, ProviderKind, RustCryptoProvider, Signer, Sm2SigningKey, sm3};
use uuid::Uuid;

fn content(n: usize, tag: &str) -> TxContent {
    let payload: Vec<u8> = (0..64 + n % 50).map(|i| (i * 7 + n) as u8).collect();
    TxContent {
        tx_id: Uuid::new_v4(),
        record_id: format!("{tag}-{n}"),
        kind: TxKind::Data,
        category: ["vaccination", "shipment", "coldchain"][n % 3].into(),
        state_key: format!("8{:019}", n % 5),
        content_type: "json".into(),
        data_hash: sm3(&payload),
        payload,
        // Half the transactions carry a field-commitment root, half do not
        // (as written before them).
        fields_root: (n % 2 == 1).then(|| sm3(format!("fields {n}").as_bytes())),
        format: TxFormat::CURRENT,
    }
}

/// A fresh node or client key in the default provider.
fn key() -> Signer {
    Signer::generate(RustCryptoProvider::shared(), KeyHandle::new("k")).unwrap()
}

/// `k` in a fresh provider of kind `p`.
fn signer_in(p: ProviderKind, k: &Sm2SigningKey) -> Signer {
    Signer::import(p.build().unwrap(), KeyHandle::new("node"), k).unwrap()
}

fn batch(key: &Signer, tag: &str, from: usize, n: usize) -> Vec<Transaction> {
    sign_batch(
        "91320000MA1XXXXX0Y",
        key,
        (from..from + n).map(|i| content(i, tag)).collect(),
        1_700_000_000_000,
    )
    .unwrap()
}

/// A ledger on a SQLite file in a directory of its own.
async fn open_sqlite(key: &Signer) -> (tempfile::TempDir, Ledger<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("l.db")).await.expect("open store");
    let l = Ledger::open(store, key.clone(), "test", LedgerConfig::default())
        .await
        .expect("open ledger");
    (dir, l)
}

/// Where a test's store lives, opened again for a restart: a SQLite file
/// in a temporary directory, or a fresh database on the PostgreSQL test
/// server.
struct At {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl At {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
        At { url, _dir: Some(dir) }
    }

    async fn postgres() -> Self {
        let base = std::env::var("VAXGATE_TEST_PG_URL").expect(
            "VAXGATE_TEST_PG_URL is not set: run ./scripts/test.sh (it starts PostgreSQL), \
             or `eval \"$(scripts/services.sh start pg)\"` first",
        );
        let name = format!("ledger_{}", Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&base)
            .await
            .expect("connect to VAXGATE_TEST_PG_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let (prefix, _) = base.rsplit_once('/').expect("URL has a database part");
        At {
            url: format!("{prefix}/{name}"),
            _dir: None,
        }
    }

    /// A fresh place on the same backend.
    async fn another(&self) -> Self {
        if self.url.starts_with("sqlite:") {
            At::sqlite()
        } else {
            At::postgres().await
        }
    }

    async fn open(&self) -> AnyStore {
        AnyStore::open(&self.url, Path::new("/")).await.expect("open store")
    }
}

/// Runs raw SQL against the store in a transaction of its own on the
/// committing connection (to show the schema refuses it, or to damage it).
async fn raw(s: &AnyStore, sql: &'static str) -> Result<(), String> {
    let mut tx = s.side_tx().await.map_err(|e| e.to_string())?;
    on_backend!(tx.conn(), c => sqlx::query(sql).execute(c).await.map(|_| ())).map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}

/// `(leaf_index, height)` of every row of the test's side table, ascending.
async fn side_rows(s: &AnyStore) -> Vec<(i64, i64)> {
    let sql = "SELECT leaf_index, height FROM side_marks ORDER BY leaf_index";
    let mut r = s.reader().await.unwrap();
    on_backend!(&mut r, c => sqlx::query_as(sql).fetch_all(&mut **c).await).unwrap()
}

async fn open_on(at: &At, key: &Signer) -> Ledger<AnyStore> {
    Ledger::open(at.open().await, key.clone(), "test", LedgerConfig::default())
        .await
        .expect("open ledger")
}

/// For each `f: sqlite, postgres`, the tests `sqlite` and `postgres`:
/// `f(at)` with a store of each backend.
macro_rules! on_each_backend {
    ($($f:ident: $sqlite:ident, $postgres:ident;)*) => {$(
        #[test]
        fn $sqlite() {
            rt().block_on(async { $f(At::sqlite()).await });
        }

        #[test]
        fn $postgres() {
            rt().block_on(async { $f(At::postgres().await).await });
        }
    )*};
}

// The tests that run on both backends.
on_each_backend! {
    append_prove_restart_and_verify:
        append_prove_restart_and_verify_sqlite,
        append_prove_restart_and_verify_postgres;
    ledger_before_field_commitments:
        a_ledger_from_before_field_commitments_gains_the_column_sqlite,
        a_ledger_from_before_field_commitments_gains_the_column_postgres;
    update_and_delete_are_refused:
        update_and_delete_are_refused_by_the_schema_sqlite,
        update_and_delete_are_refused_by_the_schema_postgres;
    side_writes_share_the_block_transaction:
        side_writes_share_the_block_transaction_sqlite,
        side_writes_share_the_block_transaction_postgres;
    batch_trees_are_stored_once:
        a_whole_batch_stores_its_tree_once_and_no_audit_paths_sqlite,
        a_whole_batch_stores_its_tree_once_and_no_audit_paths_postgres;
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn append_prove_restart_and_verify(backend: At) {
    {
        // Written with the default provider, reopened and appended to
        // with OpenSSL holding the same node key.
        let node_key = Sm2SigningKey::generate();
        let node = signer_in(ProviderKind::RustCrypto, &node_key);
        let client = key();
        let l = open_on(&backend, &node).await;
        let r1 = l.append(batch(&client, "a", 0, 10)).await.unwrap();
        assert_eq!(r1.len(), 10);
        assert_eq!(r1[0].height, 1);
        assert_eq!(r1[0].leaf_index, 1, "leaf 0 is genesis");
        // Concurrent appends are grouped; every receipt is durable and provable.
        let mut handles = Vec::new();
        for k in 0..8 {
            let l = l.clone();
            let c = client.clone();
            handles.push(tokio::spawn(async move {
                l.append(batch(&c, &format!("c{k}"), 0, 20)).await
            }));
        }
        let mut heights = std::collections::BTreeSet::new();
        for h in handles {
            for r in h.await.unwrap().unwrap() {
                heights.insert(r.height);
            }
        }
        assert!(heights.len() <= 8);
        // Duplicate record id is refused and nothing is written.
        let dup = batch(&client, "a", 3, 1);
        match l.append(dup).await {
            Err(LedgerError::Duplicate { record_id, .. }) => assert_eq!(record_id, "a-3"),
            other => panic!("expected duplicate, got {other:?}"),
        }
        // A tampered record is refused.
        let mut bad = batch(&client, "bad", 0, 3);
        bad[1].content.payload.push(0);
        assert!(matches!(l.append(bad).await, Err(LedgerError::BadTransaction { .. })));

        let proof = l.prove(&r1[4].tx_id.to_string()).await.unwrap();
        proof.verify(node.verifying_key()).unwrap();
        assert!(
            proof.verify(client.verifying_key()).is_err(),
            "wrong checkpoint key must fail"
        );
        let json = serde_json::to_string(&proof).unwrap();
        let back: ledger::InclusionProof = serde_json::from_str(&json).unwrap();
        back.verify(node.verifying_key()).unwrap();

        let stats = l.store().stats().await.unwrap();
        assert_eq!(stats.transactions, 1 + 10 + 160);
        let report = verify_ledger(l.store(), Some(node.verifying_key()), |_, _| {})
            .await
            .unwrap();
        assert_eq!(report.transactions, 171);
        drop(l);

        // Restart: state intact, appends continue on the same chain.
        let l = open_on(&backend, &signer_in(ProviderKind::Openssl, &node_key)).await;
        let r2 = l.append(batch(&client, "after", 0, 5)).await.unwrap();
        assert_eq!(r2[0].leaf_index, 171);
        let cp_old = r1[0].checkpoint.clone();
        let cp_new = r2[0].checkpoint.clone();
        let cons = l.prove_consistency(cp_old.tree_size, cp_new.tree_size).await.unwrap();
        assert!(cons.verify(&cp_old, &cp_new));
        verify_ledger(l.store(), None, |_, _| {}).await.unwrap();
        drop(l);

        // The wrong node key cannot open it.
        let err = Ledger::open(backend.open().await, key(), "test", LedgerConfig::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("node key"), "{err}");
    }
}

/// A ledger as vaxgate wrote it before field commitments and format 2
/// (format-1 blocks; no `fields_root`, `format` or `batch_leaf` column, no
/// `batches` table) opens, gains them with no row changed, takes format-2
/// blocks with roots and verifies as a whole; proofs of old and new
/// transactions verify.
async fn ledger_before_field_commitments(backend: At) {
    let node = key();
    let client = key();
    let v1 = LedgerConfig {
        format: TxFormat::V1,
        ..LedgerConfig::default()
    };
    let l = Ledger::open(backend.open().await, node.clone(), "test", v1)
        .await
        .unwrap();
    let old: Vec<TxContent> = (0..6)
        .map(|n| TxContent {
            fields_root: None,
            format: TxFormat::V1,
            ..content(n, "old")
        })
        .collect();
    let r_old = l
        .append(sign_batch("91320000MA1XXXXX0Y", &client, old, 1_700_000_000_000).unwrap())
        .await
        .unwrap();
    // A format-2 transaction is refused by a ledger that writes format 1.
    let err = l.append(batch(&client, "early", 0, 1)).await.unwrap_err();
    assert!(err.to_string().contains("this ledger writes format 1"), "{err}");
    for sql in [
        "ALTER TABLE transactions DROP COLUMN fields_root",
        "ALTER TABLE transactions DROP COLUMN format",
        "ALTER TABLE transactions DROP COLUMN batch_leaf",
        "DROP TABLE batches",
    ] {
        raw(l.store(), sql).await.unwrap();
    }
    drop(l);
    let l = open_on(&backend, &node).await;
    assert_eq!(l.format(), TxFormat::V2);
    let r = l.append(batch(&client, "new", 0, 6)).await.unwrap();
    assert_eq!(r[0].leaf_index, 7);
    let stored = l.store().txs(0, 100).await.unwrap();
    let formats: Vec<u8> = stored.iter().map(|t| t.tx.content.format.number()).collect();
    assert_eq!(formats, [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
    assert_eq!(
        stored.iter().filter(|t| t.tx.content.fields_root.is_some()).count(),
        3,
        "the new odd-numbered records carry a root, the old ones none"
    );
    let versions: Vec<String> = l
        .store()
        .blocks(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.version)
        .collect();
    assert_eq!(versions, ["1.0", "1.0", "2.0"]);
    let report = verify_ledger(l.store(), Some(node.verifying_key()), |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.transactions, 13);
    for id in [r_old[2].tx_id, r[1].tx_id] {
        let p = l.prove(&id.to_string()).await.unwrap();
        p.verify(node.verifying_key()).unwrap();
    }
    let p = l.prove(&r[1].tx_id.to_string()).await.unwrap();
    assert!(p.transaction.content.fields_root.is_some());
    // Each batch is stored once: one row for the new batch of six.
    let mut reader = l.store().reader().await.unwrap();
    let n: i64 =
        on_backend!(&mut reader, c => sqlx::query_scalar("SELECT COUNT(*) FROM batches").fetch_one(&mut **c).await)
            .unwrap();
    assert_eq!(n, 1);
}

/// `(first_leaf, length of tree)` of every `batches` row, and the
/// length of every transaction's `auth`, in leaf order.
async fn stored_sizes(s: &AnyStore) -> (Vec<(i64, Option<i64>)>, Vec<i64>) {
    let mut r = s.reader().await.unwrap();
    let batches = on_backend!(&mut r, c => sqlx::query_as(
        "SELECT first_leaf, CAST(length(tree) AS BIGINT) FROM batches ORDER BY first_leaf").fetch_all(&mut **c).await)
    .unwrap();
    let auths: Vec<(i64,)> = on_backend!(&mut r, c => sqlx::query_as(
        "SELECT CAST(length(auth) AS BIGINT) FROM transactions ORDER BY leaf_index").fetch_all(&mut **c).await)
    .unwrap();
    (batches, auths.into_iter().map(|(n,)| n).collect())
}

/// A batch whose every record is in one block is stored with its tree
/// (every node, ~64 bytes a record) and its rows without audit paths; any other
/// (some records refused, or appended later, or out of order) keeps each
/// row's path. Read back, every transaction is what was appended, with its
/// path; proofs and the whole ledger verify. A format-2 ledger written
/// before the `tree` column gains it and reads as before.
async fn batch_trees_are_stored_once(backend: At) {
    let node = key();
    let client = key();
    let l = open_on(&backend, &node).await;
    let whole = batch(&client, "whole", 0, 6);
    let part = batch(&client, "part", 0, 5);
    let pair = batch(&client, "pair", 0, 2);
    let mut appended = whole.clone();
    l.append(whole).await.unwrap();
    // Records 0, 1 and 3 of a batch of five; later 2 and 4.
    let first: Vec<Transaction> = [0, 1, 3].iter().map(|&i| part[i].clone()).collect();
    let later: Vec<Transaction> = [2, 4].iter().map(|&i| part[i].clone()).collect();
    // Both records of a batch, out of order.
    let swapped = vec![pair[1].clone(), pair[0].clone()];
    for txs in [first, later, swapped] {
        appended.extend(txs.clone());
        l.append(txs).await.unwrap();
    }
    let (batches, auths) = stored_sizes(l.store()).await;
    // Genesis (a batch of one, leaf 0), the whole batch (leaves 1..7), the
    // part (7..10), the rest of it (10..12), the pair (12..14). A tree of
    // 6 leaves has 6 + 3 + 2 + 1 nodes.
    assert_eq!(
        batches,
        [(0, Some(32)), (1, Some(12 * 32)), (7, None), (10, None), (12, None)]
    );
    let short = auths.iter().map(|&n| n < 64).collect::<Vec<_>>();
    assert_eq!(
        short,
        [true; 7].iter().chain(&[false; 7]).copied().collect::<Vec<_>>(),
        "{auths:?}"
    );
    let stored = l.store().txs(1, 100).await.unwrap();
    assert_eq!(stored.len(), appended.len());
    for (s, a) in stored.iter().zip(&appended) {
        assert_eq!(s.tx, *a, "leaf {}", s.leaf_index);
        assert!(!s.tx.auth.audit_path.is_empty());
        l.prove(&a.content.tx_id.to_string())
            .await
            .unwrap()
            .verify(node.verifying_key())
            .unwrap();
    }
    let one = l
        .store()
        .tx(&appended[3].content.tx_id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.tx, appended[3]);
    verify_ledger(l.store(), Some(node.verifying_key()), |_, _| {})
        .await
        .unwrap();
    drop(l);

    // A format-2 ledger written before the column: no batch row with a
    // tree (a format-1 genesis; a batch whose rows hold their paths).
    let old = backend.another().await;
    let v1 = LedgerConfig {
        format: TxFormat::V1,
        ..LedgerConfig::default()
    };
    drop(Ledger::open(old.open().await, node.clone(), "test", v1).await.unwrap());
    let l = open_on(&old, &node).await;
    let part = batch(&client, "part", 0, 3);
    l.append(part[..2].to_vec()).await.unwrap();
    raw(l.store(), "ALTER TABLE batches DROP COLUMN tree").await.unwrap();
    drop(l);
    let l = open_on(&old, &node).await;
    l.append(batch(&client, "after", 0, 3)).await.unwrap();
    let (batches, auths) = stored_sizes(l.store()).await;
    assert_eq!(batches, [(1, None), (3, Some((3 + 2 + 1) * 32))]);
    assert!(
        auths[..3].iter().all(|&n| n >= 64) && auths[3..].iter().all(|&n| n < 64),
        "{auths:?}"
    );
    let report = verify_ledger(l.store(), Some(node.verifying_key()), |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.transactions, 6);
}

async fn update_and_delete_are_refused(backend: At) {
    let node = key();
    let l = open_on(&backend, &node).await;
    l.append(batch(&node, "x", 0, 2)).await.unwrap();
    for sql in [
        "UPDATE transactions SET category = 'x'",
        "DELETE FROM transactions",
        "UPDATE blocks SET timestamp = 0",
        "DELETE FROM checkpoints",
        "DELETE FROM merkle_nodes",
    ] {
        let err = raw(l.store(), sql).await.unwrap_err();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    verify_ledger(l.store(), None, |_, _| {}).await.unwrap();
}

#[test]
fn postgres_tamper_is_detected() {
    rt().block_on(async {
        let backend = At::postgres().await;
        let node = key();
        let l = open_on(&backend, &node).await;
        l.append(batch(&node, "a", 0, 4)).await.unwrap();
        let r = l.append(batch(&node, "b", 0, 4)).await.unwrap();
        raw(l.store(), "ALTER TABLE transactions DISABLE TRIGGER USER")
            .await
            .unwrap();
        raw(
            l.store(),
            "UPDATE transactions SET payload = set_byte(payload, 3, get_byte(payload, 3) # 1) WHERE leaf_index = 6",
        )
        .await
        .unwrap();
        match verify_ledger(l.store(), None, |_, _| {}).await {
            Err(LedgerError::Integrity { height, tx, .. }) => {
                assert_eq!(height, 2);
                assert_eq!(tx, Some(r[1].tx_id.to_string()));
            }
            other => panic!("expected an integrity failure, got {other:?}"),
        }
    });
}

#[test]
fn payload_limit_is_enforced() {
    rt().block_on(async {
        let node = key();
        let (_dir, l) = open_sqlite(&node).await;
        let mut c = content(0, "big");
        c.payload = vec![0u8; 8 * 1024 + 1];
        let err = l.append(sign_batch("e", &node, vec![c], 0).unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    });
}

/// Columns of each table, as (name, kind) with kind t=text, i=integer, b=blob.
const COLUMNS: &[(&str, &[(&str, char)])] = &[
    (
        "blocks",
        &[
            ("height", 'i'),
            ("version", 't'),
            ("provider", 't'),
            ("previous_block_hash", 't'),
            ("block_hash", 't'),
            ("timestamp", 'i'),
            ("merkle_root", 't'),
            ("tx_count", 'i'),
            ("first_leaf", 'i'),
        ],
    ),
    (
        "transactions",
        &[
            ("leaf_index", 'i'),
            ("height", 'i'),
            ("tx_id", 't'),
            ("record_id", 't'),
            ("kind", 't'),
            ("category", 't'),
            ("state_key", 't'),
            ("content_type", 't'),
            ("data_hash", 't'),
            ("payload", 'b'),
            ("auth", 'b'),
            ("fields_root", 't'),
            ("format", 'i'),
            ("batch_leaf", 'i'),
        ],
    ),
    ("batches", &[("first_leaf", 'i'), ("body", 'b'), ("tree", 'b')]),
    ("merkle_nodes", &[("id", 'i'), ("hash", 'b')]),
    (
        "checkpoints",
        &[
            ("height", 'i'),
            ("tree_size", 'i'),
            ("root", 't'),
            ("block_hash", 't'),
            ("timestamp", 'i'),
            ("key_id", 't'),
            ("signature", 't'),
        ],
    ),
];

/// Changes one byte of one stored value. Returns false when the change was
/// impossible (e.g. a primary-key collision), so the case is discarded.
async fn tamper(pool: &sqlx::SqlitePool, table: &str, col: &str, kind: char, row: i64, byte: usize, xor: u8) -> bool {
    use sqlx::Row;
    for op in ["update", "delete"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER IF EXISTS {table}_no_{op}")))
            .execute(pool)
            .await
            .unwrap();
    }
    let n: i64 = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) AS n FROM {table}")))
        .fetch_one(pool)
        .await
        .unwrap()
        .get("n");
    let offset = row.rem_euclid(n);
    let sel = format!("SELECT rowid AS r, {col} AS v FROM {table} ORDER BY rowid LIMIT 1 OFFSET {offset}");
    let r = sqlx::query(sqlx::AssertSqlSafe(sel)).fetch_one(pool).await.unwrap();
    let rowid: i64 = r.get("r");
    let upd = format!("UPDATE {table} SET {col} = ? WHERE rowid = ?");
    let q = sqlx::query(sqlx::AssertSqlSafe(upd));
    let q = match kind {
        'i' => {
            let v: i64 = r.get("v");
            q.bind(v ^ (i64::from(xor) << (8 * (byte % 8))))
        }
        // A NULL text (a transaction without a field-commitment root) gains one.
        't' if r.get::<Option<String>, _>("v").is_none() => q.bind("0".repeat(64)),
        't' => {
            let mut v: Vec<u8> = r.get::<String, _>("v").into_bytes();
            let k = byte % v.len();
            // Stay valid UTF-8 (a change that SQLite itself rejects is no test).
            v[k] = if v[k].is_ascii() {
                (v[k] ^ (xor & 0x7f).max(1)) & 0x7f
            } else {
                v[k]
            };
            q.bind(String::from_utf8(v).unwrap())
        }
        // A NULL blob (a batch stored without its tree) gains one node.
        'b' if r.get::<Option<Vec<u8>>, _>("v").is_none() => q.bind(vec![0u8; 32]),
        _ => {
            let mut v: Vec<u8> = r.get("v");
            let k = byte % v.len();
            v[k] ^= xor;
            q.bind(v)
        }
    };
    q.bind(rowid).execute(pool).await.is_ok()
}

/// Appends batches of `sizes` transactions to `l`; then every inclusion
/// proof, and every consistency proof between the checkpoints received,
/// verifies.
async fn all_proofs_verify<S: LedgerStore>(l: &Ledger<S>, node: &Signer, sizes: &[usize]) -> Result<(), TestCaseError> {
    let mut receipts = Vec::new();
    let mut next = 0;
    for n in sizes {
        receipts.extend(l.append(batch(node, "p", next, *n)).await.unwrap());
        next += n;
    }
    for r in &receipts {
        let p = l.prove(&r.tx_id.to_string()).await.unwrap();
        prop_assert!(p.verify(node.verifying_key()).is_ok());
        prop_assert!(merkle::inclusion_plan(r.leaf_index, p.checkpoint.tree_size).len() == p.audit_path.len());
    }
    let cps: Vec<_> = receipts.iter().map(|r| r.checkpoint.clone()).collect();
    for a in &cps {
        for b in &cps {
            if a.tree_size <= b.tree_size {
                let c = l.prove_consistency(a.tree_size, b.tree_size).await.unwrap();
                prop_assert!(c.verify(a, b));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Random append sequences: every inclusion proof and every consistency
    /// proof between checkpoints verifies.
    #[test]
    fn random_appends_all_proofs_verify(sizes in proptest::collection::vec(1usize..12, 1..8)) {
        rt().block_on(async {
            let node = key();
            let (_dir, l) = open_sqlite(&node).await;
            all_proofs_verify(&l, &node, &sizes).await
        })?;
    }

    /// The same on PostgreSQL (fewer cases: each creates a database).
    #[test]
    fn random_appends_all_proofs_verify_postgres(sizes in proptest::collection::vec(1usize..12, 1..5)) {
        rt().block_on(async {
            let node = key();
            let l = open_on(&At::postgres().await, &node).await;
            let verified = all_proofs_verify(&l, &node, &sizes).await;
            l.store().close().await.unwrap();
            verified
        })?;
    }

    /// Any single-byte change in any stored row is detected by verification.
    #[test]
    fn any_single_byte_change_is_detected(
        table in 0usize..5,
        col in 0usize..16,
        row in any::<i64>(),
        byte in 0usize..1024,
        xor in 1u8..=255,
    ) {
        rt().block_on(async {
            let node = key();
            let (_dir, l) = open_sqlite(&node).await;
            l.append(batch(&node, "a", 0, 5)).await.unwrap();
            l.append(batch(&node, "b", 0, 3)).await.unwrap();
            verify_ledger(l.store(), None, |_, _| {}).await.unwrap();
            let (tname, cols) = COLUMNS[table];
            let (cname, kind) = cols[col % cols.len()];
            // A change SQLite itself refuses (a duplicate key) is no case:
            // rejected, and counted by proptest (too many fail the test).
            let applied = tamper(l.store().pool(), tname, cname, kind, row, byte, xor).await;
            prop_assume!(applied, "the database refused the change");
            let result = verify_ledger(l.store(), Some(node.verifying_key()), |_, _| {}).await;
            prop_assert!(result.is_err(), "change to {tname}.{cname} went unnoticed");
            Ok(())
        })?;
    }
}

#[test]
fn tamper_names_the_first_bad_block_and_transaction() {
    rt().block_on(async {
        let node = key();
        let (_dir, l) = open_sqlite(&node).await;
        l.append(batch(&node, "a", 0, 5)).await.unwrap();
        let r = l.append(batch(&node, "b", 0, 3)).await.unwrap();
        l.append(batch(&node, "c", 0, 3)).await.unwrap();
        // Leaf 7 is the second record of block 2.
        let target = &r[1];
        assert_eq!((target.height, target.leaf_index), (2, 7));
        assert!(tamper(l.store().pool(), "transactions", "payload", 'b', 7, 10, 0x01).await);
        match verify_ledger(l.store(), None, |_, _| {}).await {
            Err(LedgerError::Integrity { height, tx, .. }) => {
                assert_eq!(height, 2);
                assert_eq!(tx, Some(target.tx_id.to_string()));
            }
            other => panic!("expected an integrity failure, got {other:?}"),
        }
        // A row moved to another block: the message says which field lies.
        let (_dir2, l2) = open_sqlite(&node).await;
        l2.append(batch(&node, "a", 0, 5)).await.unwrap();
        let r2 = l2.append(batch(&node, "b", 0, 3)).await.unwrap();
        for sql in [
            "DROP TRIGGER transactions_no_update",
            "UPDATE transactions SET height = 3 WHERE leaf_index = 7",
        ] {
            sqlx::query(sql).execute(l2.store().pool()).await.unwrap();
        }
        match verify_ledger(l2.store(), None, |_, _| {}).await {
            Err(LedgerError::Integrity { height, tx, reason }) => {
                assert_eq!((height, tx), (2, Some(r2[1].tx_id.to_string())));
                assert!(
                    reason.contains("its row says block 3, but it is leaf 7, inside block 2's range"),
                    "{reason}"
                );
            }
            other => panic!("expected an integrity failure, got {other:?}"),
        }
        // Every table: a change is caught.
        // (Row 0 of `batches` is the genesis batch of one record, whose
        // one node is on no audit path: only the check of the tree's root
        // against the signed root sees a change to it.)
        for (table, col, kind, row) in [
            ("blocks", "timestamp", 'i', 1),
            ("merkle_nodes", "hash", 'b', 1),
            ("checkpoints", "root", 't', 1),
            ("batches", "tree", 'b', 0),
            ("batches", "tree", 'b', 1),
        ] {
            let (_dir, l) = open_sqlite(&node).await;
            l.append(batch(&node, "a", 0, 5)).await.unwrap();
            assert!(tamper(l.store().pool(), table, col, kind, row, 3, 0x04).await);
            assert!(
                verify_ledger(l.store(), None, |_, _| {}).await.is_err(),
                "{table}.{col}"
            );
        }
    });
}

/// A side write that records which leaves it saw, in its own table, and can
/// be told to fail after writing (to show the block is then not written).
struct Marks {
    fail: bool,
    n: u64,
}

impl ledger::SideWrite for Marks {
    fn write<'c>(&'c self, mut conn: ledger::SideConn<'c>, first_leaf: u64, height: u64) -> ledger::SideFuture<'c> {
        Box::pin(async move {
            for k in 0..self.n {
                let leaf = (first_leaf + k) as i64;
                let sql = "INSERT INTO side_marks (leaf_index, height) VALUES ($1, $2)";
                let h = height as i64;
                on_backend!(&mut conn, c => sqlx::query(sql).bind(leaf).bind(h).execute(&mut **c).await.map(|_| ()))
                    .map_err(|e| e.to_string())?;
            }
            if self.fail {
                Err("refused on purpose".into())
            } else {
                Ok(())
            }
        })
    }
}

async fn side_writes_share_the_block_transaction(backend: At) {
    let key = key();
    let ledger = open_on(&backend, &key).await;
    raw(
        ledger.store(),
        "CREATE TABLE side_marks (leaf_index BIGINT PRIMARY KEY, height BIGINT NOT NULL)",
    )
    .await
    .unwrap();
    // Two requests in flight at once: each side write sees its own leaves.
    let a = ledger.append_with(
        batch(&key, "a", 0, 5),
        Some(Box::new(Marks { fail: false, n: 5 })),
        ledger::Membership::Check,
    );
    let b = ledger.append_with(
        batch(&key, "b", 0, 3),
        Some(Box::new(Marks { fail: false, n: 3 })),
        ledger::Membership::Check,
    );
    let (ra, rb) = tokio::join!(a, b);
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let before = ledger.store().stats().await.unwrap().transactions;
    assert_eq!(before, 1 + 5 + 3, "genesis and both requests are in the ledger");

    // A failing side write: neither the block nor any side row is written,
    // and the ledger carries on from where it was.
    let err = ledger
        .append_with(
            batch(&key, "c", 0, 4),
            Some(Box::new(Marks { fail: true, n: 4 })),
            ledger::Membership::Check,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused on purpose"), "{err}");
    assert_eq!(ledger.store().stats().await.unwrap().transactions, before);
    let rd = ledger.append(batch(&key, "d", 0, 2)).await.unwrap();
    assert_eq!(rd[0].leaf_index, before, "the failed block left no gap");
    let report = verify_ledger(ledger.store(), Some(key.verifying_key()), |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.transactions, before + 2);

    // The side table holds exactly the leaves of the two good requests.
    let side_rows = side_rows(ledger.store()).await;
    let mut want: Vec<(i64, i64)> = ra
        .iter()
        .chain(&rb)
        .map(|r| (r.leaf_index as i64, r.height as i64))
        .collect();
    want.sort();
    assert_eq!(side_rows, want);

    // Idempotency lookups of many record ids at once.
    let ids: Vec<String> = vec!["a-1".into(), "b-2".into(), "c-0".into(), "nope".into()];
    let mut found: Vec<String> = ledger
        .store()
        .txs_by_records(&ids)
        .await
        .unwrap()
        .into_iter()
        .map(|st| st.tx.content.record_id)
        .collect();
    found.sort();
    assert_eq!(found, vec!["a-1".to_string(), "b-2".to_string()]);
}
