//! Property tests of the HL7 escape codec (adapters::hl7::{encode, decode}):
//! encode/decode round trip for any text (Chinese, separators, CR/LF) and
//! any distinct delimiters; decode never panics on arbitrary input.

use adapters::hl7::{Delimiters, MessageHeader, decode, encode, split_messages};
use proptest::prelude::*;

fn delimiters() -> impl Strategy<Value = Delimiters> {
    prop::sample::subsequence(vec!['|', '^', '~', '\\', '&', '#', '!', '$', '*', '@'], 5)
        .prop_shuffle()
        .prop_map(|v| Delimiters {
            field: v[0],
            component: v[1],
            repetition: v[2],
            escape: v[3],
            subcomponent: v[4],
        })
}

fn hl7ish_text() -> impl Strategy<Value = String> {
    // Chinese, ASCII, separators, escape chars, CR/LF, hex-looking runs
    prop::collection::vec(
        prop_oneof![
            Just("王".to_string()),
            Just("欧阳娜娜".to_string()),
            Just("\r\n".to_string()),
            Just("\r".to_string()),
            Just("\n".to_string()),
            Just("X0D0A".to_string()),
            "[|^~\\\\&#!$*@FSTRXE]{1,3}",
            "\\PC{0,4}",
        ],
        0..12,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_is_identity(text in hl7ish_text(), d in delimiters()) {
        let enc = encode(&text, &d);
        prop_assert!(!enc.contains(d.field) && !enc.contains(d.component) && !enc.contains('\r'));
        prop_assert_eq!(decode(&enc, &d), text);
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), d in delimiters()) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode(&text, &d);
        let _ = MessageHeader::parse(&text);
        let _ = split_messages(&text);
    }

    #[test]
    fn decode_never_panics_on_escapy_text(text in "[\\\\XFSTRE0-9A-Fa-f中文|^]{0,40}") {
        let d = Delimiters::default();
        let out = decode(&text, &d);
        // text without escape characters is returned unchanged
        if !text.contains('\\') {
            prop_assert_eq!(out, text);
        }
    }

    #[test]
    fn msh_parse_never_panics(tail in "\\PC{0,80}", sep in "[|#!]") {
        let _ = MessageHeader::parse(&format!("MSH{sep}{tail}"));
    }
}

#[test]
fn chinese_remark_with_escapes_decodes() {
    let d = Delimiters::default();
    let field = r"首剂\F\无不良反应\X0D0A\已留观30分钟";
    let text = decode(field, &d);
    assert_eq!(text, "首剂|无不良反应\r\n已留观30分钟");
    assert_eq!(encode(&text, &d), field);
    assert_eq!(decode(r"中山路1号\T\3栋", &d), "中山路1号&3栋");
}
