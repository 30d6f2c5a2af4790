//! Format checks for identifiers (pure functions, never panic).

/// NMPAB/T 1002 trace code as accepted by 码上放心: exactly 20 ASCII digits.
/// No check digit is verified: its algorithm is not public.
pub fn is_trace_code(s: &str) -> bool {
    s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// 受种者编码: 18 ASCII digits (10-digit 接种点编码 + birth year + serial).
pub fn is_recipient_code(s: &str) -> bool {
    s.len() == 18 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The birth year embedded in a 受种者编码 (digits 11-14), if it is digits.
pub fn recipient_code_birth_year(s: &str) -> Option<i32> {
    s.get(10..14)?.parse().ok()
}

/// Resident identity number check (GB 11643-1999): 17 digits, a valid
/// birth date at digits 7-14, and the ISO 7064 MOD 11-2 check character
/// (`0-9` or `X`). Lowercase `x` is accepted.
pub fn is_valid_resident_id(s: &str) -> bool {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const C: &[u8; 11] = b"10X98765432";
    let b = s.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = b[..17].iter().zip(W).map(|(d, w)| u32::from(d - b'0') * w).sum();
    let expect = C[(sum % 11) as usize];
    if b[17].to_ascii_uppercase() != expect {
        return false;
    }
    let (y, m, d) = (&s[6..10], &s[10..12], &s[12..14]);
    match (y.parse::<i32>(), m.parse::<u32>(), d.parse::<u32>()) {
        (Ok(y), Ok(m), Ok(d)) => (1900..=2100).contains(&y) && chrono::NaiveDate::from_ymd_opt(y, m, d).is_some(),
        _ => false,
    }
}

/// Unified social credit code check (GB 32100-2015): 18 characters from
/// `0-9A-Y` without I, O, S, V, Z, the last one a MOD 31 check character.
pub fn is_valid_uscc(s: &str) -> bool {
    const CHARS: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
    const W: [usize; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];
    let b = s.as_bytes();
    if b.len() != 18 {
        return false;
    }
    let mut vals = [0usize; 18];
    for (i, c) in b.iter().enumerate() {
        match CHARS.iter().position(|x| x == c) {
            Some(v) => vals[i] = v,
            None => return false,
        }
    }
    let sum: usize = vals[..17].iter().zip(W).map(|(v, w)| v * w).sum();
    let check = (31 - sum % 31) % 31;
    vals[17] == check
}

/// 64 lowercase hex digits (an SM3 digest).
pub fn is_sm3_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A URI: an ASCII letter, then letters/digits/`+-.`, a `:`, and no spaces.
pub fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut sc = scheme.bytes();
    sc.next().is_some_and(|b| b.is_ascii_alphabetic())
        && sc.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && !rest.chars().any(char::is_whitespace)
}

/// A phone number: 5-20 characters of digits, `+`, `-`, spaces, at least 5 digits.
pub fn is_phone(s: &str) -> bool {
    let n = s.chars().count();
    (5..=20).contains(&n)
        && s.chars()
            .all(|c| c.is_ascii_digit() || c == '+' || c == '-' || c == ' ')
        && s.chars().filter(char::is_ascii_digit).count() >= 5
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check` accepts every one of `good` and none of `bad`.
    fn sorts(check: fn(&str) -> bool, good: &[&str], bad: &[&str]) {
        for s in good {
            assert!(check(s), "{s} refused");
        }
        for s in bad {
            assert!(!check(s), "{s} accepted");
        }
    }

    #[test]
    fn resident_ids() {
        // the example number printed in GB 11643-1999
        sorts(
            is_valid_resident_id,
            &["11010519491231002X", "11010519491231002x"],
            &["110105194912310021", "11010519491331002X", "1101051949123100", "张三"],
        );
    }

    #[test]
    fn uscc() {
        // the sample code widely used to illustrate GB 32100
        sorts(
            is_valid_uscc,
            &["91350100M000100Y43"],
            &["91350100M000100Y44", "91350100M000100Y4", "91350100I000100Y43"],
        );
    }

    #[test]
    fn codes() {
        assert!(is_trace_code("81234560000000000001"));
        assert!(!is_trace_code("8123456000000000000"));
        assert!(!is_trace_code("8123456000000000000a"));
        assert!(is_recipient_code("320102000120200001"));
        assert_eq!(recipient_code_birth_year("320102000120200001"), Some(2020));
        assert!(is_uri("file://his01/emr/2024/03/05/a.xml"));
        assert!(!is_uri("no scheme"));
    }
}
