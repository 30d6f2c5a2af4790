//! NMPAB/T 1004 domain model, declarative mapping specs, validation and the
//! NMPAB/T 1005 / EPCIS 2.0 codecs. No IO.
#![forbid(unsafe_code)]
