//! The SQL shared by every sqlx-backed store. Every query is built with
//! `QueryBuilder`, which writes each database's own placeholders, so one
//! body serves SQLite and PostgreSQL; `sql_store!` stamps it out per backend.
//!
//! Only `INSERT` and `SELECT` appear here: the ledger has no update or delete.

/// Rows per multi-row INSERT (14 columns; well under SQLite's 32766 and
/// PostgreSQL's 65535 bind parameters).
pub(crate) const TX_ROWS_PER_INSERT: usize = 2000;
/// Tree nodes per INSERT, and ids per `IN (...)` lookup.
pub(crate) const NODES_PER_STATEMENT: usize = 10_000;

/// The ledger's tables, the same on every backend (with the column types of
/// its [`Dialect`](super::Dialect)): insert-only, by each store's triggers on
/// [`APPEND_ONLY_TABLES`].
pub(crate) const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS blocks (
        height {int} PRIMARY KEY,
        version TEXT NOT NULL,
        provider TEXT NOT NULL,
        previous_block_hash TEXT NOT NULL,
        block_hash TEXT NOT NULL UNIQUE,
        timestamp {int} NOT NULL,
        merkle_root TEXT NOT NULL,
        tx_count {int} NOT NULL,
        first_leaf {int} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS transactions (
        leaf_index {int} PRIMARY KEY,
        height {int} NOT NULL,
        tx_id TEXT NOT NULL UNIQUE,
        record_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        category TEXT NOT NULL,
        state_key TEXT NOT NULL,
        content_type TEXT NOT NULL,
        data_hash TEXT NOT NULL,
        payload {blob} NOT NULL,
        auth {blob} NOT NULL,
        fields_root TEXT,
        format {int} NOT NULL DEFAULT 1,
        batch_leaf {int})",
    "CREATE INDEX IF NOT EXISTS transactions_state ON transactions (category, state_key, leaf_index)",
    "CREATE INDEX IF NOT EXISTS transactions_category ON transactions (category, leaf_index)",
    // Format 2: each batch's header, signer key and signature once, keyed
    // by the first leaf that refers to it (transactions.batch_leaf).
    "CREATE TABLE IF NOT EXISTS batches (first_leaf {int} PRIMARY KEY, body {blob} NOT NULL, tree {blob})",
    "CREATE TABLE IF NOT EXISTS merkle_nodes (id {int} PRIMARY KEY, hash {blob} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoints (
        height {int} PRIMARY KEY,
        tree_size {int} NOT NULL,
        root TEXT NOT NULL,
        block_hash TEXT NOT NULL,
        timestamp {int} NOT NULL,
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL)",
];

/// Columns added after their table's first release, as (table, column,
/// type): a ledger made before them gains them when it is opened (no row
/// changes; `format` says 1 for every earlier row, `tree` is NULL for
/// every earlier batch, whose rows keep their audit paths).
pub(crate) const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("transactions", "fields_root", "TEXT"),
    ("transactions", "format", "{int} NOT NULL DEFAULT 1"),
    ("transactions", "batch_leaf", "{int}"),
    ("batches", "tree", "{blob}"),
];

/// The tables whose rows no statement may update or delete.
pub(crate) const APPEND_ONLY_TABLES: &[&str] = &["blocks", "transactions", "batches", "merkle_nodes", "checkpoints"];

pub(crate) const TX_COLS: &str = "leaf_index, height, tx_id, record_id, kind, category, state_key, content_type, data_hash, payload, auth, fields_root, format, batch_leaf";

/// How transactions are read: each row with its batch's body (format 2),
/// not its tree (read once per batch by the stores' `with_paths`).
pub(crate) const TX_SELECT: &str = "SELECT transactions.*, batches.body FROM transactions \
     LEFT JOIN batches ON batches.first_leaf = transactions.batch_leaf";

/// Parses a stored digest; only the canonical lowercase form is accepted, so
/// that no byte of a stored row can change without the change being seen.
pub(crate) fn digest(s: &str) -> Option<secure_gateway::Sm3Digest> {
    secure_gateway::Sm3Digest::from_hex(s).ok().filter(|d| d.to_hex() == s)
}

/// Parses a stored UUID; only the canonical hyphenated lowercase form.
pub(crate) fn uuid(s: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(s).ok().filter(|u| u.to_string() == s)
}

pub(crate) fn to_i64(v: u64) -> i64 {
    v as i64
}

/// A `batches` row: the first leaf that refers to the batch, its body, and
/// its Merkle tree (`LevelTree::to_nodes`: every node, level by level) when
/// every record of the batch is in the block (then its rows store their
/// index alone, not their audit path).
pub(crate) type BatchRow = (u64, Vec<u8>, Option<Vec<u8>>);

/// The `batches` rows a block writes (format 2: each distinct batch once,
/// keyed by the first of the block's leaves that refers to it) and, per
/// transaction, the key of its batch and whether that row holds the
/// batch's tree (None for format 1).
pub(crate) fn batch_rows(c: &super::BlockCommit) -> (Vec<BatchRow>, Vec<Option<(u64, bool)>>) {
    let mut rows: Vec<BatchRow> = Vec::new();
    // Per batch row: its header, and its records' leaf hashes while they
    // come in index order from 0 (None once one does not).
    let mut runs: Vec<(&secure_gateway::BatchHeader, Option<Vec<u8>>)> = Vec::new();
    let mut seen: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    let mut previous: Option<(&crate::tx::TxAuth, usize)> = None;
    let slots: Vec<Option<usize>> = c
        .txs
        .iter()
        .enumerate()
        .map(|(k, t)| {
            (t.content.format == crate::tx::TxFormat::V2).then(|| {
                // The records of a batch come one after another.
                let slot = match previous {
                    Some((p, slot)) if p.same_batch(&t.auth) => slot,
                    _ => {
                        let leaf = c.block.first_leaf + k as u64;
                        *seen.entry(t.auth.batch_body()).or_insert_with_key(|body| {
                            rows.push((leaf, body.clone(), None));
                            runs.push((&t.auth.batch, Some(Vec::new())));
                            rows.len() - 1
                        })
                    }
                };
                previous = Some((&t.auth, slot));
                let run = &mut runs[slot].1;
                match (run.as_mut(), c.batch_leaves.get(k).copied().flatten()) {
                    (Some(r), Some(h)) if r.len() as u64 == t.auth.index.saturating_mul(32) => {
                        r.extend_from_slice(&h.0)
                    }
                    _ => *run = None,
                }
                slot
            })
        })
        .collect();
    // The tree is kept when the block holds the whole batch, and its root
    // is the signed one (it is, for leaves computed from verified records;
    // if not, the rows keep their paths rather than the store keep a tree
    // no read would accept).
    for ((_, _, tree), (batch, run)) in rows.iter_mut().zip(runs) {
        *tree = run
            .filter(|r| r.len() as u64 == batch.tree_size.saturating_mul(32))
            .map(|r| {
                let leaves = r
                    .chunks_exact(32)
                    .filter_map(|h| secure_gateway::Sm3Digest::from_slice(h).ok());
                secure_gateway::merkle::LevelTree::new(leaves.collect())
            })
            .filter(|t| t.root() == batch.root)
            .map(|t| t.to_nodes());
    }
    let keys = slots
        .into_iter()
        .map(|slot| slot.map(|i| (rows[i].0, rows[i].2.is_some())))
        .collect();
    (rows, keys)
}

/// Implements [`LedgerStore`](super::LedgerStore) for a store struct with
/// fields `pool` and `location` and methods `async fn size_bytes(&self)` and
/// `fn write_pool(&self)` (the pool that commits blocks and checks them for
/// conflicts).
macro_rules! sql_store {
    ($store:ty, $db:ty, $row:ty, $side:ident) => {
        impl $store {
            /// A connection from the pool of readers, for queries
            /// ([`Reader`](crate::store::Reader)).
            pub async fn reader(&self) -> Result<$crate::store::Reader, LedgerError> {
                let c = self.pool.acquire().await.map_err(|e| self.err(e))?;
                Ok($crate::store::Backend::$side(c))
            }

            /// A database transaction on the connection that commits blocks,
            /// for tables derived from the ledger ([`SideTx`](crate::store::SideTx)).
            pub async fn side_tx(&self) -> Result<$crate::store::SideTx, LedgerError> {
                let tx = self.write_pool().begin().await.map_err(|e| self.err(e))?;
                Ok($crate::store::SideTx { location: self.location.clone(), tx: $crate::store::Backend::$side(tx) })
            }

            /// Runs `statements` in order on `db` (the schema, in the
            /// store's set-up transaction).
            async fn execute_all(
                &self,
                db: &mut <$db as sqlx::Database>::Connection,
                statements: impl IntoIterator<Item = String>,
            ) -> Result<(), LedgerError> {
                for s in statements {
                    sqlx::query(sqlx::AssertSqlSafe(s)).execute(&mut *db).await.map_err(|e| self.err(e))?;
                }
                Ok(())
            }

            fn err(&self, e: impl std::fmt::Display) -> LedgerError {
                LedgerError::storage(&self.location, e)
            }

            fn corrupt(&self, what: &str) -> LedgerError {
                LedgerError::storage(&self.location, format!("stored row is malformed: {what}"))
            }

            fn get_u64(&self, r: &$row, c: &str) -> Result<u64, LedgerError> {
                let v: i64 = r.try_get(c).map_err(|e| self.err(e))?;
                u64::try_from(v).map_err(|_| self.corrupt(&format!("negative {c}")))
            }

            fn get_digest(&self, r: &$row, table: &str, c: &str) -> Result<Sm3Digest, LedgerError> {
                let s: String = r.try_get(c).map_err(|e| self.err(e))?;
                $crate::store::sql::digest(&s).ok_or_else(|| self.corrupt(&format!("{table}.{c}")))
            }

            fn block_from_row(&self, r: &$row) -> Result<BlockHeader, LedgerError> {
                Ok(BlockHeader {
                    height: self.get_u64(r, "height")?,
                    version: r.try_get("version").map_err(|e| self.err(e))?,
                    provider: self.get_digest(r, "blocks", "provider")?,
                    previous_block_hash: self.get_digest(r, "blocks", "previous_block_hash")?,
                    block_hash: self.get_digest(r, "blocks", "block_hash")?,
                    timestamp: r.try_get("timestamp").map_err(|e| self.err(e))?,
                    merkle_root: self.get_digest(r, "blocks", "merkle_root")?,
                    tx_count: self.get_u64(r, "tx_count")?,
                    first_leaf: self.get_u64(r, "first_leaf")?,
                })
            }

            /// A transaction row, and the key of its batch when its audit
            /// path is to come from the batch's tree ([`Self::with_paths`]).
            fn tx_from_row(&self, r: &$row) -> Result<(StoredTx, Option<i64>), LedgerError> {
                let leaf_index = self.get_u64(r, "leaf_index")?;
                let bad = |c: &str| self.corrupt(&format!("transactions.{c} at leaf {leaf_index}"));
                let s = |c: &str| -> Result<String, LedgerError> { r.try_get(c).map_err(|e| self.err(e)) };
                let auth_bytes: Vec<u8> = r.try_get("auth").map_err(|e| self.err(e))?;
                let format = u8::try_from(self.get_u64(r, "format")?)
                    .ok()
                    .and_then(TxFormat::of_number)
                    .ok_or_else(|| bad("format"))?;
                let batch_leaf: Option<i64> = r.try_get("batch_leaf").map_err(|e| self.err(e))?;
                let (auth, pending) = match (format, batch_leaf) {
                    (TxFormat::V1, None) => (decode_auth(&auth_bytes), None),
                    (TxFormat::V2, Some(key)) => {
                        let body: Option<Vec<u8>> = r.try_get("body").map_err(|e| self.err(e))?;
                        match body.and_then(|b| decode_batch_auth(&b, &auth_bytes)) {
                            Some(StoredAuth::Complete(a)) => (Some(a), None),
                            Some(StoredAuth::NeedsPath(a)) => (Some(a), Some(key)),
                            None => (None, None),
                        }
                    }
                    _ => (None, None),
                };
                let stored = StoredTx {
                    leaf_index,
                    height: self.get_u64(r, "height")?,
                    tx: Transaction {
                        content: TxContent {
                            tx_id: $crate::store::sql::uuid(&s("tx_id")?).ok_or_else(|| bad("tx_id"))?,
                            record_id: s("record_id")?,
                            kind: TxKind::parse(&s("kind")?).ok_or_else(|| bad("kind"))?,
                            category: s("category")?,
                            state_key: s("state_key")?,
                            content_type: s("content_type")?,
                            data_hash: $crate::store::sql::digest(&s("data_hash")?).ok_or_else(|| bad("data_hash"))?,
                            payload: r.try_get("payload").map_err(|e| self.err(e))?,
                            fields_root: match r.try_get::<Option<String>, _>("fields_root").map_err(|e| self.err(e))? {
                                Some(h) => Some($crate::store::sql::digest(&h).ok_or_else(|| bad("fields_root"))?),
                                None => None,
                            },
                            format,
                        },
                        auth: auth.ok_or_else(|| bad("auth (or its batch)"))?,
                    },
                };
                Ok((stored, pending))
            }

            /// The transactions of `rows`, with the audit paths of those
            /// whose rows hold their index alone looked up in their
            /// batches' trees, read once per batch. A tree that is not the
            /// shape of its batch's, or whose root is not the signed batch
            /// root, is reported as a malformed row.
            async fn with_paths(&self, rows: &[$row]) -> Result<Vec<StoredTx>, LedgerError> {
                use $crate::store::sql::NODES_PER_STATEMENT;
                use secure_gateway::merkle::LevelTree;
                let parsed = rows.iter().map(|r| self.tx_from_row(r)).collect::<Result<Vec<_>, _>>()?;
                let mut keys: Vec<i64> = parsed.iter().filter_map(|(_, k)| *k).collect();
                if keys.is_empty() {
                    return Ok(parsed.into_iter().map(|(t, _)| t).collect());
                }
                keys.sort_unstable();
                keys.dedup();
                let head = "SELECT first_leaf, tree FROM batches WHERE first_leaf IN (";
                let mut stored = std::collections::HashMap::with_capacity(keys.len());
                for r in self.rows_in(&self.pool, head, &keys, NODES_PER_STATEMENT).await? {
                    let key: i64 = r.try_get("first_leaf").map_err(|e| self.err(e))?;
                    let tree: Option<Vec<u8>> = r.try_get("tree").map_err(|e| self.err(e))?;
                    stored.insert(key, tree);
                }
                let mut trees: std::collections::HashMap<i64, LevelTree> = std::collections::HashMap::new();
                parsed
                    .into_iter()
                    .map(|(mut t, key)| {
                        let Some(key) = key else { return Ok(t) };
                        let bad = || {
                            self.corrupt(&format!(
                                "batches.tree of the batch at leaf {key} (transaction at leaf {})",
                                t.leaf_index
                            ))
                        };
                        let tree = match trees.entry(key) {
                            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                            std::collections::hash_map::Entry::Vacant(e) => {
                                let nodes = stored.get(&key).and_then(|l| l.as_deref()).ok_or_else(bad)?;
                                let batch = &t.tx.auth.batch;
                                let size = usize::try_from(batch.tree_size).map_err(|_| bad())?;
                                let tree = LevelTree::from_nodes(size, nodes).ok_or_else(bad)?;
                                if tree.root() != batch.root {
                                    return Err(bad());
                                }
                                e.insert(tree)
                            }
                        };
                        let index = usize::try_from(t.tx.auth.index).map_err(|_| bad())?;
                        t.tx.auth.audit_path = tree.path(index).ok_or_else(bad)?;
                        Ok(t)
                    })
                    .collect()
            }

            fn checkpoint_from_row(&self, r: &$row) -> Result<Checkpoint, LedgerError> {
                Ok(Checkpoint {
                    tree_size: self.get_u64(r, "tree_size")?,
                    root: self.get_digest(r, "checkpoints", "root")?,
                    height: self.get_u64(r, "height")?,
                    block_hash: self.get_digest(r, "checkpoints", "block_hash")?,
                    timestamp: r.try_get("timestamp").map_err(|e| self.err(e))?,
                    key_id: r.try_get("key_id").map_err(|e| self.err(e))?,
                    signature: r.try_get("signature").map_err(|e| self.err(e))?,
                })
            }

            /// The first row of `{select} WHERE {col} = value`.
            async fn first_where<T>(&self, select: &str, col: &str, value: T) -> Result<Option<$row>, LedgerError>
            where
                T: for<'q> sqlx::Encode<'q, $db> + sqlx::Type<$db> + Send,
            {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(format!("{select} WHERE {col} = "));
                qb.push_bind(value);
                qb.build().fetch_optional(&self.pool).await.map_err(|e| self.err(e))
            }

            /// The transaction whose `col` is `value`.
            async fn tx_where(&self, col: &str, value: String) -> Result<Option<StoredTx>, LedgerError> {
                let row = self.first_where($crate::store::sql::TX_SELECT, col, value).await?;
                Ok(self.with_paths(row.as_slice()).await?.pop())
            }

            /// The rows of `head` followed by `values` as a bound list and
            /// `)`, on `pool`, `per` values a statement.
            async fn rows_in<T>(
                &self,
                pool: &sqlx::Pool<$db>,
                head: &str,
                values: &[T],
                per: usize,
            ) -> Result<Vec<$row>, LedgerError>
            where
                T: Clone + for<'q> sqlx::Encode<'q, $db> + sqlx::Type<$db> + Send + Sync,
            {
                let mut out = Vec::new();
                for chunk in values.chunks(per) {
                    let mut qb = QueryBuilder::<$db>::new(head);
                    $crate::store::backend::push_list(&mut qb, chunk.iter().cloned()).push(")");
                    out.extend(qb.build().fetch_all(pool).await.map_err(|e| self.err(e))?);
                }
                Ok(out)
            }

            /// `{select} WHERE {col} >= from AND {col} < to ORDER BY {col}`.
            async fn rows_between(&self, select: &str, col: &str, from: u64, to: u64) -> Result<Vec<$row>, LedgerError> {
                use $crate::store::sql::to_i64;
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(format!("{select} WHERE {col} >= "));
                qb.push_bind(to_i64(from)).push(format!(" AND {col} < ")).push_bind(to_i64(to));
                qb.push(format!(" ORDER BY {col}"));
                qb.build().fetch_all(&self.pool).await.map_err(|e| self.err(e))
            }
        }

        impl LedgerStore for $store {
            fn location(&self) -> &str {
                &self.location
            }

            async fn commit_block_with(&self, c: &BlockCommit, side: &[$crate::store::SidePart<'_>]) -> Result<(), LedgerError> {
                use $crate::store::sql::{NODES_PER_STATEMENT, TX_COLS, TX_ROWS_PER_INSERT, to_i64};
                let mut db = self.write_pool().begin().await.map_err(|e| self.err(e))?;
                let b = &c.block;
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "INSERT INTO blocks (height, version, provider, previous_block_hash, block_hash, timestamp, merkle_root, tx_count, first_leaf) ",
                );
                qb.push_values([b], |mut row, b| {
                    row.push_bind(to_i64(b.height))
                        .push_bind(b.version.clone())
                        .push_bind(b.provider.to_hex())
                        .push_bind(b.previous_block_hash.to_hex())
                        .push_bind(b.block_hash.to_hex())
                        .push_bind(b.timestamp)
                        .push_bind(b.merkle_root.to_hex())
                        .push_bind(to_i64(b.tx_count))
                        .push_bind(to_i64(b.first_leaf));
                });
                qb.build().execute(&mut *db).await.map_err(|e| self.err(e))?;

                let (batches, batch_leaves) = $crate::store::sql::batch_rows(c);
                for chunk in batches.chunks(NODES_PER_STATEMENT) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO batches (first_leaf, body, tree) ");
                    qb.push_values(chunk, |mut row, (leaf, body, tree)| {
                        row.push_bind(to_i64(*leaf)).push_bind(body.clone()).push_bind(tree.clone());
                    });
                    qb.build().execute(&mut *db).await.map_err(|e| self.err(e))?;
                }

                for (chunk_no, chunk) in c.txs.chunks(TX_ROWS_PER_INSERT).enumerate() {
                    let base = b.first_leaf + (chunk_no * TX_ROWS_PER_INSERT) as u64;
                    let first = chunk_no * TX_ROWS_PER_INSERT;
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(format!("INSERT INTO transactions ({TX_COLS}) "));
                    qb.push_values(chunk.iter().enumerate(), |mut row, (k, t)| {
                        let ct = &t.content;
                        let (batch_leaf, auth) = match batch_leaves[first + k] {
                            Some((key, true)) => (Some(key), t.auth.record_index_part()),
                            Some((key, false)) => (Some(key), t.auth.record_part()),
                            None => (None, encode_auth(&t.auth)),
                        };
                        row.push_bind(to_i64(base + k as u64))
                            .push_bind(to_i64(b.height))
                            .push_bind(ct.tx_id.to_string())
                            .push_bind(ct.record_id.clone())
                            .push_bind(ct.kind.as_str())
                            .push_bind(ct.category.clone())
                            .push_bind(ct.state_key.clone())
                            .push_bind(ct.content_type.clone())
                            .push_bind(ct.data_hash.to_hex())
                            .push_bind(ct.payload.clone())
                            .push_bind(auth)
                            .push_bind(ct.fields_root.map(|r| r.to_hex()))
                            .push_bind(i64::from(ct.format.number()))
                            .push_bind(batch_leaf.map(to_i64));
                    });
                    qb.build().execute(&mut *db).await.map_err(|e| self.err(e))?;
                }

                for chunk in c.nodes.chunks(NODES_PER_STATEMENT) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("INSERT INTO merkle_nodes (id, hash) ");
                    qb.push_values(chunk, |mut row, (k, h)| {
                        row.push_bind(k.packed()).push_bind(h.0.to_vec());
                    });
                    qb.build().execute(&mut *db).await.map_err(|e| self.err(e))?;
                }

                let cp = &c.checkpoint;
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "INSERT INTO checkpoints (height, tree_size, root, block_hash, timestamp, key_id, signature) ",
                );
                qb.push_values([cp], |mut row, cp| {
                    row.push_bind(to_i64(cp.height))
                        .push_bind(to_i64(cp.tree_size))
                        .push_bind(cp.root.to_hex())
                        .push_bind(cp.block_hash.to_hex())
                        .push_bind(cp.timestamp)
                        .push_bind(cp.key_id.clone())
                        .push_bind(cp.signature.clone());
                });
                qb.build().execute(&mut *db).await.map_err(|e| self.err(e))?;
                for part in side {
                    part.write
                        .write($crate::store::Backend::$side(&mut *db), part.first_leaf, b.height)
                        .await
                        .map_err(|message| LedgerError::Storage {
                            location: self.location.clone(),
                            message: format!("a side write of block {}: {message}", b.height),
                        })?;
                }
                db.commit().await.map_err(|e| self.err(e))
            }

            async fn head(&self) -> Result<Option<(BlockHeader, Checkpoint)>, LedgerError> {
                let row = sqlx::query("SELECT * FROM blocks ORDER BY height DESC LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| self.err(e))?;
                let Some(row) = row else { return Ok(None) };
                let b = self.block_from_row(&row)?;
                let cp = self
                    .checkpoint(b.height)
                    .await?
                    .ok_or_else(|| self.corrupt(&format!("block {} has no checkpoint", b.height)))?;
                Ok(Some((b, cp)))
            }

            async fn nodes(&self, keys: &[NodeKey]) -> Result<Vec<Sm3Digest>, LedgerError> {
                use $crate::store::sql::NODES_PER_STATEMENT;
                let mut found = std::collections::HashMap::with_capacity(keys.len());
                let ids: Vec<i64> = keys.iter().map(|k| k.packed()).collect();
                let head = "SELECT id, hash FROM merkle_nodes WHERE id IN (";
                for r in self.rows_in(&self.pool, head, &ids, NODES_PER_STATEMENT).await? {
                    let id: i64 = r.try_get("id").map_err(|e| self.err(e))?;
                    let h: Vec<u8> = r.try_get("hash").map_err(|e| self.err(e))?;
                    let d = Sm3Digest::from_slice(&h).map_err(|_| self.corrupt(&format!("merkle_nodes.hash id {id}")))?;
                    found.insert(id, d);
                }
                keys.iter()
                    .map(|k| {
                        found.get(&k.packed()).copied().ok_or_else(|| {
                            self.corrupt(&format!("tree node level {} index {} is missing", k.level, k.index))
                        })
                    })
                    .collect()
            }

            async fn block(&self, height: u64) -> Result<Option<BlockHeader>, LedgerError> {
                let row = self.first_where("SELECT * FROM blocks", "height", $crate::store::sql::to_i64(height)).await?;
                row.map(|r| self.block_from_row(&r)).transpose()
            }

            async fn block_by_hash(&self, hash: &Sm3Digest) -> Result<Option<BlockHeader>, LedgerError> {
                let row = self.first_where("SELECT * FROM blocks", "block_hash", hash.to_hex()).await?;
                row.map(|r| self.block_from_row(&r)).transpose()
            }

            async fn blocks(&self, from: u64, to: u64) -> Result<Vec<BlockHeader>, LedgerError> {
                let rows = self.rows_between("SELECT * FROM blocks", "height", from, to).await?;
                rows.iter().map(|r| self.block_from_row(r)).collect()
            }

            async fn checkpoint(&self, height: u64) -> Result<Option<Checkpoint>, LedgerError> {
                let row = self.first_where("SELECT * FROM checkpoints", "height", $crate::store::sql::to_i64(height)).await?;
                row.map(|r| self.checkpoint_from_row(&r)).transpose()
            }

            async fn tx(&self, tx_id: &str) -> Result<Option<StoredTx>, LedgerError> {
                self.tx_where("tx_id", tx_id.to_string()).await
            }

            async fn tx_by_record(&self, record_id: &str) -> Result<Option<StoredTx>, LedgerError> {
                self.tx_where("record_id", record_id.to_string()).await
            }

            async fn txs_by_records(&self, record_ids: &[String]) -> Result<Vec<StoredTx>, LedgerError> {
                let head = format!("{} WHERE record_id IN (", $crate::store::sql::TX_SELECT);
                // SQLite allows 32,766 bound parameters per statement.
                let rows = self.rows_in(&self.pool, &head, record_ids, 5_000).await?;
                self.with_paths(&rows).await
            }

            async fn conflicts(
                &self,
                record_ids: &[String],
                tx_ids: &[String],
            ) -> Result<Vec<(String, String)>, LedgerError> {
                use $crate::store::sql::NODES_PER_STATEMENT;
                let mut out = Vec::new();
                for (col, ids) in [("record_id", record_ids), ("tx_id", tx_ids)] {
                    let head = format!("SELECT record_id, tx_id FROM transactions WHERE {col} IN (");
                    for r in self.rows_in(self.write_pool(), &head, ids, NODES_PER_STATEMENT).await? {
                        out.push((
                            r.try_get("record_id").map_err(|e| self.err(e))?,
                            r.try_get("tx_id").map_err(|e| self.err(e))?,
                        ));
                    }
                }
                Ok(out)
            }

            async fn txs(&self, from: u64, to: u64) -> Result<Vec<StoredTx>, LedgerError> {
                let rows = self.rows_between($crate::store::sql::TX_SELECT, "leaf_index", from, to).await?;
                self.with_paths(&rows).await
            }

            async fn category(&self, category: &str, from: u64, limit: u64) -> Result<Vec<StoredTx>, LedgerError> {
                use $crate::store::sql::to_i64;
                let mut qb: QueryBuilder<$db> =
                    QueryBuilder::new(format!("{} WHERE category = ", $crate::store::sql::TX_SELECT));
                qb.push_bind(category.to_string()).push(" AND leaf_index >= ").push_bind(to_i64(from));
                qb.push(" ORDER BY leaf_index LIMIT ").push_bind(to_i64(limit));
                let rows = qb.build().fetch_all(&self.pool).await.map_err(|e| self.err(e))?;
                self.with_paths(&rows).await
            }

            async fn state(&self, category: &str, key: &str) -> Result<Vec<StoredTx>, LedgerError> {
                let mut qb: QueryBuilder<$db> =
                    QueryBuilder::new(format!("{} WHERE category = ", $crate::store::sql::TX_SELECT));
                qb.push_bind(category.to_string()).push(" AND state_key = ").push_bind(key.to_string());
                qb.push(" ORDER BY leaf_index");
                let rows = qb.build().fetch_all(&self.pool).await.map_err(|e| self.err(e))?;
                self.with_paths(&rows).await
            }

            async fn stats(&self) -> Result<StoreStats, LedgerError> {
                let (height, transactions) = match self.head().await? {
                    Some((b, cp)) => (b.height, cp.tree_size),
                    None => (0, 0),
                };
                Ok(StoreStats { height, transactions, size_bytes: self.size_bytes().await? })
            }
        }
    };
}

pub(crate) use sql_store;
