//! The SM2 examples of GB/T 32918.5-2017 / GM/T 0003.5-2012 Annexes A and
//! C, on the *recommended* curve sm2p256v1 (the same vectors as OpenSSL's
//! `test/sm2_internal_test.c`): the known answers `kat.rs` reproduces and
//! `providers.rs` checks every provider against.

/// Private key d_A.
pub const D_A: &str = "3945208f7b2144b13f36e38ac6d39f95889393692860b51a42fb81ef4df7c5b8";
/// Public key P_A (SEC1 uncompressed).
pub const P_A: &str = "04\
    09f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020\
    ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13";
/// The random k used by both examples.
pub const K: &str = "59276e27d506861a16680f3ad9c02dccef3cc1fa3cdbe4ce6d54b80deac1bc21";

// Signature example: M = "message digest", ID = "1234567812345678".
/// Z_A of P_A with the default ID.
pub const Z_A: &str = "b2e14c5c79c6df5b85f4fe7ed8db7a262b9da7e07ccb0ea9f4747b8ccda8a4f3";
/// e = SM3(Z_A ‖ M).
pub const E: &str = "f0b43e94ba45accaace692ed534382eb17e6ab5a19ce7b31f4486fdfc0d28640";
/// The signature's r.
pub const R: &str = "f5a03b0648d2c4630eeac513e1bb81a15944da3827d5b74143ac7eaceee720b3";
/// The signature's s.
pub const S: &str = "b1b6aa29df212fd8763182bc0d421ca1bb9038fd1f7f42d4840b69c485bbc1aa";

// Encryption example: M = "encryption standard", C = C1 ‖ C3 ‖ C2 with
// C1 = 04 ‖ x ‖ y.
/// C1's x.
pub const C1_X: &str = "04ebfc718e8d1798620432268e77feb6415e2ede0e073c0f4f640ecd2e149a73";
/// C1's y.
pub const C1_Y: &str = "e858f9d81e5430a57b36daab8f950a3c64e6ee6a63094d99283aff767e124df0";
/// C3 = SM3(x2 ‖ M ‖ y2).
pub const C3: &str = "59983c18f809e262923c53aec295d30383b54e39d609d160afcb1908d0bd8766";
/// C2 = M xor KDF.
pub const C2: &str = "21886ca989ca9c7d58087307ca93092d651efa";

// Curve parameters of sm2p256v1 (GB/T 32918.5 §3), needed for Z_A.
/// a.
pub const A: &str = "fffffffeffffffffffffffffffffffffffffffff00000000fffffffffffffffc";
/// b.
pub const B: &str = "28e9fa9e9d9f5e344d5a9e4bcf6509a7f39789f515ab8f92ddbcbd414d940e93";
/// The generator's x.
pub const GX: &str = "32c4ae2c1f1981195f9904466a39c9948fe30bbff2660be1715a4589334c74c7";
/// The generator's y.
pub const GY: &str = "bc3736a2f4f6779c59bdcee36b692153d0a9877cc62a474002df32e52139f0a0";
