//! The default provider with test hooks, shared by the test files that need
//! to count or pin what a provider does.
#![allow(dead_code)] // each test file uses part of it

pub mod annex_a;
pub mod canon;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use secure_gateway::envelope::EnvelopeVersion;
use secure_gateway::sym::GCM_NONCE_LEN;
use secure_gateway::{
    CryptoError, CryptoProvider, KeyHandle, RustCryptoProvider, Sm2Signature, Sm2VerifyingKey, Sm3Digest, Sm4Key, sm3,
};
use zeroize::Zeroizing;

/// The name of the SM4 KEK of [`world`].
pub const KEK_NAME: &str = "province-kek-2026";
/// The SM4 KEK of [`world`].
pub const KEK: [u8; 16] = [0x42; 16];

/// The envelope tests' cast: a provider holding a sender's and a CDC's SM2
/// keys (fresh each time) and the SM4 KEK [`KEK_NAME`].
pub struct World {
    pub p: RustCryptoProvider,
    pub sender: KeyHandle,
    pub cdc: KeyHandle,
    pub kek: KeyHandle,
}

/// A new [`World`].
pub fn world() -> World {
    let p = RustCryptoProvider::new();
    let sender = p.add_sm2_key(secure_gateway::Sm2SigningKey::generate());
    let cdc = p.add_sm2_key(secure_gateway::Sm2SigningKey::generate());
    let kek = KeyHandle::new(KEK_NAME);
    p.insert_kek(kek.clone(), Sm4Key::new(KEK));
    World { p, sender, cdc, kek }
}

/// Delegates to [`RustCryptoProvider`], counting SM2 decryptions. A
/// deterministic one (the worked examples of `docs/envelope.md`) also draws
/// "random" bytes from a fixed pattern (call `c` fills byte `i` with
/// `(c << 4 | i) & 0xff`) and SM2-encrypts with the fixed k =
/// SM3("vaxgate example sm2 k"). A real provider must never do either.
#[derive(Debug)]
pub struct TestProvider {
    pub inner: RustCryptoProvider,
    sm2_decrypts: AtomicUsize,
    /// `Some(calls so far)` when deterministic.
    fixed: Option<Mutex<u8>>,
}

impl TestProvider {
    /// Counts SM2 decryptions; otherwise the default provider.
    pub fn counting(inner: RustCryptoProvider) -> Self {
        TestProvider {
            inner,
            sm2_decrypts: AtomicUsize::new(0),
            fixed: None,
        }
    }

    /// Fixed "random" bytes and SM2 nonce (see the type's docs).
    pub fn deterministic(inner: RustCryptoProvider) -> Self {
        TestProvider {
            fixed: Some(Mutex::new(0)),
            ..Self::counting(inner)
        }
    }

    /// SM2 decryptions since the last call.
    pub fn take(&self) -> usize {
        self.sm2_decrypts.swap(0, Ordering::SeqCst)
    }
}

/// An RNG that returns a fixed k for SM2 encryption (the standard's k in
/// the known-answer test, the worked example's here).
pub struct FixedK(pub [u8; 32]);
impl sm2::elliptic_curve::rand_core::TryRng for FixedK {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        unreachable!("sm2 draws k with fill_bytes")
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        unreachable!("sm2 draws k with fill_bytes")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        dst.copy_from_slice(&self.0[..dst.len()]);
        Ok(())
    }
}
impl sm2::elliptic_curve::rand_core::TryCryptoRng for FixedK {}

impl CryptoProvider for TestProvider {
    fn name(&self) -> &str {
        if self.fixed.is_some() { "example" } else { "counting" }
    }
    fn sm3(&self, data: &[u8]) -> Sm3Digest {
        self.inner.sm3(data)
    }
    fn random(&self, buf: &mut [u8]) -> Result<(), CryptoError> {
        let Some(calls) = &self.fixed else {
            return self.inner.random(buf);
        };
        let mut c = calls.lock().unwrap();
        *c += 1;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((*c as usize) << 4 | i) as u8;
        }
        Ok(())
    }
    fn public_key(&self, key: &KeyHandle) -> Result<Sm2VerifyingKey, CryptoError> {
        self.inner.public_key(key)
    }
    fn sign(&self, key: &KeyHandle, msg: &[u8]) -> Result<Sm2Signature, CryptoError> {
        self.inner.sign(key, msg)
    }
    fn verify(&self, key: &Sm2VerifyingKey, msg: &[u8], sig: &Sm2Signature) -> Result<(), CryptoError> {
        self.inner.verify(key, msg, sig)
    }
    fn sm2_encrypt(&self, recipient: &Sm2VerifyingKey, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if self.fixed.is_none() {
            return self.inner.sm2_encrypt(recipient, msg);
        }
        let ek = sm2::pke::EncryptingKey::new_with_mode(*recipient.public_key(), sm2::pke::Mode::C1C3C2);
        ek.encrypt_der(&mut FixedK(sm3(b"vaxgate example sm2 k").0), msg)
            .map_err(|_| CryptoError::Cipher("sm2 encryption failed".into()))
    }
    fn sm2_decrypt(&self, key: &KeyHandle, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.sm2_decrypts.fetch_add(1, Ordering::SeqCst);
        self.inner.sm2_decrypt(key, ct)
    }
    fn sm4_gcm_seal(&self, k: &Sm4Key, n: &[u8; GCM_NONCE_LEN], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.sm4_gcm_seal(k, n, aad, pt)
    }
    fn sm4_gcm_open(
        &self,
        k: &Sm4Key,
        n: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.inner.sm4_gcm_open(k, n, aad, ct)
    }
    fn kek_seal(&self, h: &KeyHandle, n: &[u8; GCM_NONCE_LEN], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.kek_seal(h, n, aad, pt)
    }
    fn kek_open(
        &self,
        h: &KeyHandle,
        n: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.inner.kek_open(h, n, aad, ct)
    }
}

/// The SM2 distinguishing ID 1234567812345678 as an `openssl pkeyutl`
/// option value (`pkeyutl` uses an empty ID unless told).
pub const OPENSSL_DISTID: &str = "distid:1234567812345678";

/// `openssl pkeyutl` arguments that sign the raw message in the file `msg`
/// (SM3 with SM2, ID 1234567812345678) with the private key file `key`,
/// writing the DER signature to `sig`.
pub fn pkeyutl_sign<'a>(key: &'a str, msg: &'a str, sig: &'a str) -> Vec<&'a str> {
    pkeyutl_sm2(&["-sign", "-inkey", key], msg, &["-out", sig])
}

/// `openssl pkeyutl` arguments that verify the DER signature in the file
/// `sig` of the raw message in `msg` (SM3 with SM2, ID 1234567812345678)
/// under the public key file `public`.
pub fn pkeyutl_verify<'a>(public: &'a str, msg: &'a str, sig: &'a str) -> Vec<&'a str> {
    pkeyutl_sm2(&["-verify", "-pubin", "-inkey", public], msg, &["-sigfile", sig])
}

fn pkeyutl_sm2<'a>(op: &[&'a str], msg: &'a str, tail: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["pkeyutl"];
    args.extend_from_slice(op);
    args.extend(["-rawin", "-digest", "sm3", "-pkeyopt", OPENSSL_DISTID, "-in", msg]);
    args.extend_from_slice(tail);
    args
}

/// The keys of the worked examples of `docs/envelope.md`, in a
/// deterministic [`TestProvider`]: the signer (private scalar SM3("vaxgate
/// example signer")), the KEK `example-kek` = 00 01 … 0f, and the gateway
/// (private scalar SM3("vaxgate example gateway")), the SM2 recipient of the
/// second example.
pub struct Example {
    pub p: TestProvider,
    pub signer: KeyHandle,
    pub kek: KeyHandle,
    pub gateway: KeyHandle,
}

/// See [`Example`].
pub fn worked_example() -> Example {
    use secure_gateway::{DEFAULT_DIST_ID, Sm2SigningKey};
    let inner = RustCryptoProvider::new();
    let key = |name: &str, seed: &[u8]| {
        let h = KeyHandle::new(name);
        let d = Sm2SigningKey::from_bytes(&sm3(seed).0, DEFAULT_DIST_ID).expect("a valid scalar");
        inner.insert_sm2_key(h.clone(), d);
        h
    };
    let signer = key("example-signer", b"vaxgate example signer");
    let gateway = key("example-gateway", b"vaxgate example gateway");
    let kek = KeyHandle::new("example-kek");
    inner.insert_kek(kek.clone(), Sm4Key::new(std::array::from_fn(|i| i as u8)));
    Example {
        p: TestProvider::deterministic(inner),
        signer,
        kek,
        gateway,
    }
}

/// The payload of the worked examples.
pub const EXAMPLE_PAYLOAD: &[u8] = br#"{"vaccine":"HepB","lot":"202601A","dose":1}"#;

/// The worked examples' metadata for transaction `tx`.
pub fn example_meta(tx: &str) -> secure_gateway::EnvelopeMeta {
    meta_of(tx.parse().expect("a UUID"))
}

/// The same metadata for transaction number `tx`.
pub fn meta(tx: u128) -> secure_gateway::EnvelopeMeta {
    meta_of(uuid::Uuid::from_u128(tx))
}

fn meta_of(transaction_id: uuid::Uuid) -> secure_gateway::EnvelopeMeta {
    secure_gateway::EnvelopeMeta {
        transaction_id,
        entity_id: "hospital-310101-001".into(),
        timestamp_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
        content_type: secure_gateway::ContentType::Json,
        dataset_category: "vaccination-record".into(),
    }
}

impl Example {
    /// The second example's sealer: batch 00000000-0000-4000-8000-0000000000bb,
    /// one SM2 recipient, the gateway (`sm2-batch-kek`).
    pub fn sealer(&self) -> secure_gateway::BatchSealer<'_> {
        let vk = self.p.public_key(&self.signer).expect("the signer");
        let gateway = self.p.public_key(&self.gateway).expect("the gateway");
        secure_gateway::BatchSealer::with_batch_id(
            &self.p,
            vk.key_id(),
            "00000000-0000-4000-8000-0000000000bb".parse().expect("a UUID"),
            &[secure_gateway::Recipient::Sm2(gateway)],
        )
        .expect("a sealer")
    }

    /// The second worked example: records …11 and …12 of
    /// [`EXAMPLE_PAYLOAD`], sealed in envelope version 1 by
    /// [`Example::sealer`] and signed at 2026-01-01T00:00:00Z. Call it on a
    /// fresh [`worked_example`]: the provider's "random" bytes depend on
    /// what it drew before.
    pub fn batch(&self) -> secure_gateway::SignedBatch {
        let sealer = self.sealer();
        let recs = [
            "00000000-0000-4000-8000-000000000011",
            "00000000-0000-4000-8000-000000000012",
        ]
        .iter()
        .map(|tx| {
            sealer
                .seal_unsigned_with_version(example_meta(tx), EXAMPLE_PAYLOAD, EnvelopeVersion::V1)
                .expect("sealed")
        })
        .collect();
        sealer.sign(&self.signer, 1_767_225_600_000, recs).expect("signed")
    }
}
