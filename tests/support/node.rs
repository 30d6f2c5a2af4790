//! A node of the tests: a fresh `vaxgate init` (plain HTTP unless TLS is
//! asked for) and the real `vaxgate serve` on a loopback port with optional
//! extra configuration and environment, which can be killed and served
//! again on the same ledger; entity registration through `vaxgate admin`,
//! signed requests, ledger height and metrics.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use adapters::{GatewayClient, GatewayClientConfig};
use mappings::ExchangeMessage;
use secure_gateway::request::sign_request_at;
use secure_gateway::{KeyHandle, RustCryptoProvider, SignedBatch, Signer, Sm2VerifyingKey};
use serde_json::Value;

use super::{PASS, PASS_ENV, Process, free_port, ok, vaxgate};

/// The body cap the test nodes of [`Node::start`] run with.
pub const MAX_BODY: usize = 256 * 1024;

/// The log filter of `vaxgate serve` unless [`NodeOptions::log`] says otherwise.
const SERVER_LOG: &str = "info,gateway=debug,vaxgate=debug";

/// An encrypted PEM private key (passphrase [`PASS`]) in a fresh default
/// provider.
pub fn load_key(p: &Path) -> Signer {
    let provider = RustCryptoProvider::shared();
    let h = KeyHandle::new(p.display().to_string());
    provider
        .import_sm2_pem(
            h.clone(),
            &std::fs::read_to_string(p).unwrap(),
            Some(PASS),
            secure_gateway::DEFAULT_DIST_ID,
        )
        .unwrap();
    Signer::new(provider, h).unwrap()
}

/// A fresh, empty PostgreSQL database under `VAXGATE_TEST_PG_URL` (started
/// by scripts/test.sh; panics when it is not set); returns its URL.
pub fn fresh_postgres_database() -> String {
    let base = std::env::var("VAXGATE_TEST_PG_URL")
        .expect("VAXGATE_TEST_PG_URL is not set: run ./scripts/test.sh, which starts PostgreSQL");
    let name = format!("gw_{}", uuid::Uuid::new_v4().simple());
    let out = Command::new("psql")
        .args([base.as_str(), "-qc", &format!("CREATE DATABASE {name}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{name}")
}

pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A registered entity with its master key (also as an encrypted PEM file).
#[derive(Debug)]
pub struct Ent {
    pub id: String,
    pub alias: String,
    pub key: Signer,
    pub key_file: PathBuf,
}

/// A node: initialised, and served while [`Node::serve`] has started a
/// server that [`Node::kill`] has not stopped (killed when dropped).
#[derive(Debug)]
pub struct Node {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub base: String,
    /// The server's log (every start appends to it).
    pub log: PathBuf,
    pub http: reqwest::blocking::Client,
    pub gateway_key: Sm2VerifyingKey,
    /// The node's self-signed TLS certificate (TLS nodes only).
    pub ca: Option<PathBuf>,
    /// The ledger as `vaxgate ledger --db` takes it: the SQLite file or the
    /// PostgreSQL URL.
    pub db: String,
    /// What `vaxgate init` printed.
    pub init_out: String,
    /// `vaxgate serve` as the options said: extra environment, the open
    /// file limit.
    serve_env: Vec<(String, String)>,
    nofile: Option<u64>,
    server: Option<Process>,
}

/// How a node is set up; `Node::start_with(NodeOptions { .., ..Default::default() })`.
#[derive(Debug, Default)]
pub struct NodeOptions {
    /// TLS with the self-signed certificate of `vaxgate init` (else `--plain-http`).
    pub tls: bool,
    /// A fresh PostgreSQL database (see [`fresh_postgres_database`]) instead of SQLite.
    pub postgres: bool,
    /// `server.max_body_bytes` (the gateway's default when `None`).
    pub max_body: Option<usize>,
    /// Extra arguments of `vaxgate init`, e.g. `--admins 1`.
    pub init_args: Vec<String>,
    /// TOML appended to `vaxgate.toml`, e.g. a `[forwarding]` table.
    pub config: String,
    /// Extra environment of `vaxgate serve`.
    pub env: Vec<(String, String)>,
    /// TOML lines added to the `[server]` table, e.g. `body_read_timeout_secs = 3`.
    pub server: String,
    /// Run `vaxgate serve` under `prlimit --nofile=N:N` (soft and hard).
    pub nofile: Option<u64>,
    /// `RUST_LOG` of `vaxgate serve` (info, debug for the gateway, when `None`).
    pub log: Option<String>,
}

/// The response of a raw request.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// An entity to register (see [`Node::register_named`]).
struct Registration<'a> {
    /// The USCC with its check digit.
    id: String,
    name: String,
    alias: &'a str,
    role: &'a str,
    codes: &'a [&'a str],
    policy: Option<Value>,
    /// The numbers of the registry administrators who approve.
    approvers: &'a [usize],
}

impl Node {
    /// `vaxgate init --plain-http` and `vaxgate serve` on SQLite with the
    /// body cap [`MAX_BODY`], logs (debug for the gateway) in `server.log`;
    /// returns once `/healthz` answers.
    pub fn start() -> Node {
        Node::start_with(NodeOptions {
            max_body: Some(MAX_BODY),
            ..Default::default()
        })
    }

    /// The same on a fresh PostgreSQL database under `VAXGATE_TEST_PG_URL`
    /// (started by scripts/test.sh; panics when it is not set).
    pub fn start_postgres() -> Node {
        Node::start_with(NodeOptions {
            postgres: true,
            max_body: Some(MAX_BODY),
            ..Default::default()
        })
    }

    /// A node for the agent tests: plain HTTP on SQLite with the gateway's
    /// own body cap (an agent sends pages of thousands of rows), logging
    /// warnings only.
    pub fn start_for_agents() -> Node {
        Node::start_with(NodeOptions {
            log: Some("warn".into()),
            ..Default::default()
        })
    }

    /// `vaxgate init` and `vaxgate serve` as `o` says, logs in `server.log`;
    /// returns once `/healthz` answers.
    pub fn start_with(o: NodeOptions) -> Node {
        let mut node = Node::init(o);
        node.serve();
        node
    }

    /// `vaxgate init` and the configuration as `o` says, not served yet
    /// (see [`Node::serve`]).
    pub fn init(o: NodeOptions) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node");
        let port = free_port();
        let mut init = vaxgate();
        init.args(["init", "--dir", dir.to_str().unwrap()]);
        if !o.tls {
            init.arg("--plain-http");
        }
        let init_out = ok(init
            .args(["--listen", &format!("127.0.0.1:{port}"), "--passphrase-env", PASS_ENV])
            .args(&o.init_args)
            .output()
            .unwrap());
        let cfg = dir.join("vaxgate.toml");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        if let Some(max) = o.max_body {
            text = text.replace("[server]\n", &format!("[server]\nmax_body_bytes = {max}\n"));
            assert!(text.contains("max_body_bytes"), "{text}");
        }
        let db = if o.postgres {
            let url = fresh_postgres_database();
            text = text.replace("url = \"sqlite:data/ledger.db\"", &format!("url = \"{url}\""));
            assert!(text.contains(url.as_str()), "{text}");
            url
        } else {
            dir.join("data/ledger.db").to_string_lossy().into_owned()
        };
        if !o.server.is_empty() {
            text = text.replace("[server]\n", &format!("[server]\n{}\n", o.server));
        }
        text.push_str(&o.config);
        std::fs::write(&cfg, text).unwrap();
        gateway::tls::install_provider();
        let mut http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30));
        let ca = o.tls.then(|| dir.join("tls/server.crt.pem"));
        if let Some(ca) = &ca {
            let cert = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
            http = http.tls_certs_only([cert]);
        }
        let scheme = if o.tls { "https" } else { "http" };
        let gateway_key = secure_gateway::load_verifying_key(&dir.join("keys/node.pub.pem")).unwrap();
        let mut serve_env = vec![("RUST_LOG".to_string(), o.log.unwrap_or_else(|| SERVER_LOG.into()))];
        serve_env.extend(o.env);
        Node {
            log: tmp.path().join("server.log"),
            tmp,
            dir,
            base: format!("{scheme}://127.0.0.1:{port}"),
            http: http.build().unwrap(),
            gateway_key,
            ca,
            db,
            init_out,
            serve_env,
            nofile: o.nofile,
            server: None,
        }
    }

    /// Starts `vaxgate serve` (its log appended to [`Node::log`]) and waits
    /// for `/healthz`.
    pub fn serve(&mut self) {
        assert!(self.server.is_none(), "the node is already served");
        let mut serve = match self.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(env!("CARGO_BIN_EXE_vaxgate"));
                c.env(PASS_ENV, PASS);
                c
            }
            None => vaxgate(),
        };
        let log = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        self.server = Some(Process::spawn(
            serve
                .envs(self.serve_env.iter().map(|(k, v)| (k, v)))
                .args(["serve", "--config", self.dir.join("vaxgate.toml").to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(log),
        ));
        let start = Instant::now();
        while self.http.get(format!("{}/healthz", self.base)).send().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the server did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9` the server (see [`Node::serve`] to start it again).
    pub fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    /// The SQLite ledger file (of a node not on PostgreSQL).
    pub fn ledger_db(&self) -> PathBuf {
        assert!(!self.db.contains("://"), "the ledger is not a SQLite file: {}", self.db);
        PathBuf::from(&self.db)
    }

    /// `vaxgate admin --gateway ... ARGS`.
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut c = vaxgate();
        c.args(["admin", "--gateway", &self.base, "--passphrase-env", PASS_ENV]);
        if let Some(ca) = &self.ca {
            c.arg("--ca").arg(ca);
        }
        c.args(args).output().unwrap()
    }

    pub fn admin_key(&self, i: usize) -> String {
        self.dir
            .join(format!("keys/admin-{i}.key.pem"))
            .to_string_lossy()
            .into_owned()
    }

    /// `vaxgate verify-proof FILE` with this node's key as the checkpoint
    /// key: (exit code, stdout).
    pub fn verify_proof(&self, file: &Path) -> (i32, String) {
        let o = vaxgate()
            .arg("verify-proof")
            .arg(file)
            .arg("--checkpoint-key")
            .arg(self.dir.join("keys/node.pub.pem"))
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// The arguments approving a registry change by the administrators
    /// numbered `approvers`: `--approve <their key>` each.
    pub fn approvals(&self, approvers: &[usize]) -> Vec<String> {
        approvers
            .iter()
            .flat_map(|&a| ["--approve".to_string(), self.admin_key(a)])
            .collect()
    }

    /// `vaxgate admin ARGS...` approved by the administrators numbered
    /// `approvers`; its stdout (it must succeed).
    pub fn admin_approved(&self, args: &[&str], approvers: &[usize]) -> String {
        let approvals = self.approvals(approvers);
        let approvals: Vec<&str> = approvals.iter().map(String::as_str).collect();
        ok(self.admin(&[args, &approvals].concat()))
    }

    /// Registers an entity (administrators 1 and 2 approve) with a fresh
    /// master key written as an encrypted PEM.
    pub fn register(&self, prefix17: &str, alias: &str, role: &str, codes: &[&str], policy: Option<Value>) -> Ent {
        self.register_approved(&[1, 2], prefix17, alias, role, codes, policy)
    }

    /// The same, approved by the administrators numbered `approvers`.
    pub fn register_approved(
        &self,
        approvers: &[usize],
        prefix17: &str,
        alias: &str,
        role: &str,
        codes: &[&str],
        policy: Option<Value>,
    ) -> Ent {
        self.register_as(Registration {
            id: gateway::registry::uscc_with_check(prefix17).unwrap(),
            name: format!("{alias} 测试单位"),
            alias,
            role,
            codes,
            policy,
            approvers,
        })
    }

    /// The same for an entity whose USCC `id` (with its check digit) and
    /// `name` a test fixes, e.g. the `[source] entity` of a mapping spec.
    pub fn register_named(&self, id: &str, name: &str, alias: &str, role: &str, codes: &[&str]) -> Ent {
        self.register_as(Registration {
            id: id.to_string(),
            name: name.to_string(),
            alias,
            role,
            codes,
            policy: None,
            approvers: &[1, 2],
        })
    }

    /// The clinic most tests send as: `meiyuan` (USCC 12320102MB1234567
    /// with its check digit), a vaccination unit with the code
    /// `3201020001` (the clinic of config/mappings/clinic-ims.toml),
    /// approved by administrators 1 and 2.
    pub fn register_clinic(&self) -> Ent {
        self.register_clinic_approved(&[1, 2])
    }

    /// The same, approved by the administrators numbered `approvers`.
    pub fn register_clinic_approved(&self, approvers: &[usize]) -> Ent {
        self.register_approved(
            approvers,
            "12320102MB1234567",
            "meiyuan",
            "vaccination_unit",
            &["3201020001"],
            None,
        )
    }

    /// The provincial regulator `js-mpa` (USCC 11320000MB1234563), whose
    /// policy reads everything.
    pub fn register_regulator(&self) -> Ent {
        self.register_reader(
            "11320000MB1234563",
            "js-mpa",
            serde_json::json!({ "read": { "all": true } }),
        )
    }

    /// A regulator `alias` (USCC prefix `prefix17`, no codes) whose policy
    /// is `policy`.
    pub fn register_reader(&self, prefix17: &str, alias: &str, policy: Value) -> Ent {
        self.register(prefix17, alias, "regulator", &[], Some(policy))
    }

    fn register_as(&self, r: Registration) -> Ent {
        let alias = r.alias;
        let out = self.tmp.path().join(format!("keys-{alias}"));
        ok(vaxgate()
            .args(["keys", "generate", "--out", out.to_str().unwrap(), "--entity", alias])
            .args(["--passphrase-env", PASS_ENV])
            .output()
            .unwrap());
        let key_file = out.join(format!("{alias}.key.pem"));
        let key = load_key(&key_file);
        let pub_file = out.join(format!("{alias}.pub.pem"));
        let mut args: Vec<String> = [
            "register-entity",
            "--id",
            &r.id,
            "--name",
            &r.name,
            "--alias",
            alias,
            "--role",
            r.role,
            "--master-key",
            pub_file.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.approvals(r.approvers));
        for c in r.codes {
            args.push("--code".into());
            args.push(c.to_string());
        }
        if let Some(p) = r.policy {
            let f = self.tmp.path().join(format!("policy-{alias}.json"));
            std::fs::write(&f, p.to_string()).unwrap();
            args.push("--policy".into());
            args.push(f.to_string_lossy().into_owned());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(self.admin(&a));
        Ent {
            id: r.id,
            alias: alias.into(),
            key,
            key_file,
        }
    }

    /// A batch of `msgs` sealed for the gateway and signed by `e`.
    pub fn seal(&self, e: &Ent, msgs: &[ExchangeMessage]) -> SignedBatch {
        adapters::seal::seal_batch(
            e.key.provider().as_ref(),
            e.key.handle(),
            &e.id,
            &self.gateway_key,
            &[],
            msgs,
        )
        .unwrap()
    }

    /// A signed client of the node (trusting its certificate on TLS).
    pub fn client(&self, key: Signer) -> GatewayClient {
        let cfg = GatewayClientConfig {
            base_url: self.base.clone(),
            ca_cert: self.ca.clone(),
            ..Default::default()
        };
        GatewayClient::new(&cfg, key).unwrap()
    }

    /// A request with the given headers.
    pub fn raw(&self, method: &str, path: &str, headers: &[(String, String)], body: Vec<u8>) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.http.request(m, format!("{}{path}", self.base));
        for (k, v) in headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let r = rb.body(body).send().unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().unwrap();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
            headers,
        }
    }

    /// The signature headers of a request (at `timestamp`, with `nonce`).
    pub fn sig_headers(
        key: &Signer,
        method: &str,
        path: &str,
        body: &[u8],
        timestamp: i64,
        nonce: &str,
    ) -> Vec<(String, String)> {
        sign_request_at(key, method, path, body, timestamp, nonce)
            .unwrap()
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// A signed request (fresh nonce, now); `content_type` for a body.
    pub fn signed(&self, key: &Signer, method: &str, path: &str, body: Vec<u8>, content_type: &str) -> Resp {
        let mut h = Self::sig_headers(key, method, path, &body, chrono::Utc::now().timestamp(), &nonce());
        if !body.is_empty() {
            h.push(("content-type".into(), content_type.into()));
        }
        self.raw(method, path, &h, body)
    }

    /// Signed POST of a sealed batch.
    pub fn post_batch(&self, e: &Ent, path: &str, msgs: &[ExchangeMessage]) -> Resp {
        let b = self.seal(e, msgs).to_json().into_bytes();
        self.signed(&e.key, "POST", path, b, "application/json")
    }

    /// Ledger height (public stats).
    pub fn height(&self) -> u64 {
        let r = self.raw("GET", "/v1/public/stats", &[], Vec::new());
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["height"].as_u64().unwrap()
    }

    /// Transactions in the ledger.
    pub fn transactions(&self) -> u64 {
        let r = self.raw("GET", "/v1/public/stats", &[], Vec::new());
        r.body["transactions"].as_u64().unwrap()
    }

    /// A sample of `/metrics`, e.g. `vaxgate_rejections_total{code="bad_signature"}` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        let r = self.raw("GET", "/metrics", &[], Vec::new());
        r.text
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    /// The server first: the fields, its directory among them, go after.
    fn drop(&mut self) {
        self.kill();
    }
}
