//! `vaxgate init --dir DIR`: a node key, registry-administrator keys, a
//! self-signed TLS certificate, a ready config, and the genesis block.

use std::path::{Path, PathBuf};

use anyhow::Context;
use secure_gateway::KeyProtection;
use secure_gateway::keys::generate_key_files;
use secure_gateway::{KeyHandle, ProviderKind, Signer};

/// Arguments of `vaxgate init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Folder to create (must not exist or be empty).
    #[arg(long)]
    pub dir: PathBuf,
    /// Ledger name written into the genesis block.
    #[arg(long, default_value = "vaxgate")]
    pub name: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// Registry administrators to create.
    #[arg(long, default_value_t = 3)]
    pub admins: usize,
    /// Administrator signatures a role or permission change needs.
    #[arg(long, default_value_t = 2)]
    pub threshold: usize,
    /// Serve plain HTTP (loopback only; tests and the sandbox) instead of TLS.
    #[arg(long)]
    pub plain_http: bool,
    /// Environment variable holding the passphrase for every private key.
    #[arg(long, default_value = secure_gateway::DEFAULT_PASSPHRASE_ENV)]
    pub passphrase_env: String,
    /// The crypto provider written into `[crypto] provider` (and used to
    /// sign the genesis block): rustcrypto or openssl.
    #[arg(long, default_value_t = ProviderKind::RustCrypto)]
    pub crypto_provider: ProviderKind,
}

/// Runs `init`.
pub fn run(a: InitArgs) -> anyhow::Result<u8> {
    anyhow::ensure!(a.admins >= 1, "--admins must be at least 1");
    anyhow::ensure!(
        (1..=a.admins).contains(&a.threshold),
        "--threshold must be between 1 and --admins ({})",
        a.admins
    );
    if a.dir.exists() && a.dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        anyhow::bail!("{} exists and is not empty; init writes a new node", a.dir.display());
    }
    let protection = KeyProtection::from_env(&a.passphrase_env)
        .with_context(|| format!("private keys are encrypted with the passphrase in {}", a.passphrase_env))?;
    let keys = a.dir.join("keys");
    std::fs::create_dir_all(&keys).with_context(|| format!("creating {}", keys.display()))?;
    std::fs::create_dir_all(a.dir.join("data"))?;
    let node = generate_key_files(&keys, "node", &protection)?;
    let mut admin_lines = Vec::new();
    for i in 1..=a.admins {
        let k = generate_key_files(&keys, &format!("admin-{i}"), &protection)?;
        println!(
            "registry administrator {i}: key id {} ({})",
            k.key_id,
            k.private_key.display()
        );
        admin_lines.push(format!("\"keys/admin-{i}.pub.pem\""));
    }
    let tls = if a.plain_http {
        String::new()
    } else {
        write_self_signed_tls(&a.dir)?;
        "\n[server.tls]\n# A self-signed certificate for a first start; replace it with one from your CA.\n\
         cert = \"tls/server.crt.pem\"\nkey = \"tls/server.key.pem\"\n# client_ca = \"tls/clients-ca.pem\"   # enables mutual TLS\n\
         # require_client_cert = true\n"
            .to_string()
    };
    let config = format!(
        "# vaxgate gateway configuration (written by `vaxgate init`).\n\
         version = 1\n\n\
         [server]\nlisten = \"{listen}\"\n{plain}{tls}\n\
         [crypto]\n# rustcrypto (pure Rust) or openssl (the system OpenSSL 3): docs/crypto.md\nprovider = \"{provider}\"\n\n\
         [node]\nname = \"{name}\"\nkey = \"keys/node.key.pem\"\npassphrase_env = \"{penv}\"\n\n\
         [ledger]\n# sqlite:PATH (relative to this file) or postgres://user:${{PGPASSWORD}}@host/db\nurl = \"sqlite:data/ledger.db\"\n\n\
         [registry]\nadmins = [{admins}]\nthreshold = {threshold}\n\n\
         # Publish committed blocks, transaction summaries (no personal data) and cold-chain\n\
         # alerts to a RabbitMQ topic exchange, at least once (docs/operations.md).\n\
         # [forwarding]\n# amqp_url = \"amqp://vaxgate:${{AMQP_PASSWORD}}@127.0.0.1:5672/%2f\"\n\
         # exchange = \"vaxgate.events\"\n\n\
         # Logs (json or text) and OpenTelemetry traces over OTLP/gRPC.\n\
         # [telemetry]\n# log_format = \"json\"\n# otlp_endpoint = \"http://127.0.0.1:4317\"\n",
        listen = a.listen,
        plain = if a.plain_http { "plain_http = true\n" } else { "" },
        tls = tls,
        name = a.name,
        provider = a.crypto_provider,
        penv = a.passphrase_env,
        admins = admin_lines.join(", "),
        threshold = a.threshold,
    );
    let config_path = a.dir.join("vaxgate.toml");
    std::fs::write(&config_path, config)?;
    let loaded = crate::config_load(&config_path)?;

    // The genesis block, signed by the node key.
    let key = Signer::load_file(
        loaded.config.crypto.provider.build()?,
        KeyHandle::new("node"),
        &node.private_key,
        &a.passphrase_env,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let height = rt.block_on(async {
        let store = ledger::AnyStore::open(&loaded.config.ledger.url, &a.dir).await?;
        let l = ledger::Ledger::open(store.clone(), key, &a.name, ledger::LedgerConfig::default()).await?;
        drop(l);
        let (b, _) = ledger::LedgerStore::head(&store)
            .await?
            .context("genesis block missing")?;
        store.close().await?;
        Ok::<_, anyhow::Error>(b.height)
    })?;
    println!("node key id {} ({})", node.key_id, node.private_key.display());
    println!("genesis block {height} written; config {}", config_path.display());
    println!("start it with: vaxgate serve --config {}", config_path.display());
    Ok(0)
}

fn write_self_signed_tls(dir: &Path) -> anyhow::Result<()> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    std::fs::write(tls.join("server.crt.pem"), ck.cert.pem())?;
    let key_path = tls.join("server.key.pem");
    std::fs::write(&key_path, ck.signing_key.serialize_pem())?;
    restrict(&key_path)?;
    Ok(())
}

#[cfg(unix)]
fn restrict(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_: &Path) -> anyhow::Result<()> {
    Ok(())
}
