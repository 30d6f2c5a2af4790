//! SM2 known-answer tests from GB/T 32918.5-2017 / GM/T 0003.5-2012
//! (parameter definition, Annexes A and C: examples on the *recommended*
//! curve sm2p256v1). The same vectors appear in OpenSSL's
//! `test/sm2_internal_test.c` (signature case "Annex A", encryption case
//! "Annex C" serialised as GM/T 0009 DER).
//!
//! SM3 and SM4 vectors live next to their code (`src/hash.rs`, `src/sym.rs`).
#![allow(clippy::unwrap_used)] // tests may panic on setup failures

mod support;

use secure_gateway::{DEFAULT_DIST_ID, Sm2CiphertextFormat, Sm2Signature, Sm2SigningKey, Sm2VerifyingKey, sm3};
use sm2::elliptic_curve::Group;
use sm2::elliptic_curve::ff::PrimeField;
use sm2::elliptic_curve::ops::Reduce;
use sm2::elliptic_curve::point::AffineCoordinates;
use sm2::{FieldBytes, ProjectivePoint, Scalar};
use support::FixedK;
use support::annex_a::{A, B, C1_X, C1_Y, C2, C3, D_A, E, GX, GY, K, P_A, R, S, Z_A};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn scalar(hex32: &str) -> Scalar {
    let fb: FieldBytes = h(hex32).as_slice().try_into().unwrap();
    Scalar::from_repr(fb).unwrap()
}

#[test]
fn key_pair_matches_the_standard() {
    let k = Sm2SigningKey::from_bytes(&h(D_A), DEFAULT_DIST_ID).unwrap();
    assert_eq!(hex::encode(k.verifying_key().to_sec1()), P_A);
}

/// The published signature, reproduced byte for byte: our signer derives k
/// deterministically (RFC 6979), so the signing equation of GB/T 32918.2
/// §6.1 is evaluated here with the standard's k, using Z_A and e computed
/// from first principles.
#[test]
fn signature_example_reproduced_with_the_published_k() {
    let id = DEFAULT_DIST_ID.as_bytes();
    let mut za_in = Vec::new();
    za_in.extend_from_slice(&((id.len() * 8) as u16).to_be_bytes());
    za_in.extend_from_slice(id);
    for part in [A, B, GX, GY] {
        za_in.extend(h(part));
    }
    za_in.extend_from_slice(&h(P_A)[1..]);
    let za = sm3(&za_in);
    assert_eq!(za.to_hex(), Z_A);
    let mut m = za.0.to_vec();
    m.extend_from_slice(b"message digest");
    let e = sm3(&m);
    assert_eq!(e.to_hex(), E);

    let d = scalar(D_A);
    let k = scalar(K);
    let e_s = scalar(E);
    let x1 = ProjectivePoint::mul_by_generator(&k).to_affine().x();
    let r = e_s + <Scalar as Reduce<FieldBytes>>::reduce(&x1);
    let s = (d + Scalar::ONE).invert().unwrap() * (k - r * d);
    assert_eq!(hex::encode(r.to_repr()), R);
    assert_eq!(hex::encode(s.to_repr()), S);
}

/// The published signature verifies with the published public key through
/// the public API (raw and DER forms), and fails for another message or ID.
#[test]
fn signature_example_verifies() {
    let vk = Sm2VerifyingKey::from_sec1(&h(P_A), DEFAULT_DIST_ID).unwrap();
    let sig = Sm2Signature::from_hex(&format!("{R}{S}")).unwrap();
    vk.verify(b"message digest", &sig).unwrap();
    let der = sig.to_der();
    vk.verify(b"message digest", &Sm2Signature::from_der(&der).unwrap())
        .unwrap();
    assert!(vk.verify(b"message digesT", &sig).is_err());
    let other_id = Sm2VerifyingKey::from_sec1(&h(P_A), "ALICE123@YAHOO.COM").unwrap();
    assert!(other_id.verify(b"message digest", &sig).is_err());
    // Our own deterministic signature with the standard's key verifies too.
    let sk = Sm2SigningKey::from_bytes(&h(D_A), DEFAULT_DIST_ID).unwrap();
    vk.verify(b"message digest", &sk.sign(b"message digest")).unwrap();
}

#[test]
fn encryption_example_reproduced_with_the_published_k() {
    let pk = sm2::PublicKey::from_sec1_bytes(&h(P_A)).unwrap();
    let ek = sm2::pke::EncryptingKey::new_with_mode(pk, sm2::pke::Mode::C1C3C2);
    // The standard's k, so that SM2 encryption reproduces the published
    // ciphertext exactly.
    let ct = ek
        .encrypt(&mut FixedK(h(K).try_into().unwrap()), b"encryption standard")
        .unwrap();
    assert_eq!(hex::encode(ct), format!("04{C1_X}{C1_Y}{C3}{C2}"));
}

/// The published ciphertext decrypts with the published private key, in the
/// raw C1C3C2 layout and as GM/T 0009 DER (the OpenSSL serialisation of the
/// same values, from OpenSSL's test/sm2_internal_test.c).
#[test]
fn encryption_example_decrypts() {
    let sk = Sm2SigningKey::from_bytes(&h(D_A), DEFAULT_DIST_ID).unwrap();
    let raw = h(&format!("04{C1_X}{C1_Y}{C3}{C2}"));
    assert_eq!(
        &sk.decrypt(&raw, Sm2CiphertextFormat::Raw).unwrap()[..],
        b"encryption standard"
    );
    let der = h(&format!("307c0220{C1_X}022100{C1_Y}0420{C3}0413{C2}"));
    assert_eq!(
        &sk.decrypt(&der, Sm2CiphertextFormat::Der).unwrap()[..],
        b"encryption standard"
    );
    let mut bad = raw.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(sk.decrypt(&bad, Sm2CiphertextFormat::Raw).is_err());
    assert!(sk.decrypt(&raw, Sm2CiphertextFormat::Der).is_err());
}

#[test]
fn encryption_round_trip_both_layouts() {
    let sk = Sm2SigningKey::generate();
    for fmt in [Sm2CiphertextFormat::Der, Sm2CiphertextFormat::Raw] {
        let ct = sk.verifying_key().encrypt(b"data key 16 byte", fmt).unwrap();
        assert_eq!(&sk.decrypt(&ct, fmt).unwrap()[..], b"data key 16 byte");
        let other = Sm2SigningKey::generate();
        assert!(other.decrypt(&ct, fmt).is_err());
    }
    assert!(sk.verifying_key().encrypt(b"", Sm2CiphertextFormat::Der).is_err());
}
