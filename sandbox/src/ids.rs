//! Synthetic identifiers in valid legacy formats.

/// A resident identity number (GB 11643-1999): 6-digit region, birth date
/// `yyyyMMdd`, 3-digit sequence, ISO 7064 MOD 11-2 check character.
/// The sandbox uses region `329999` (province 32, no such city): valid in
/// format, never a real person's number.
pub fn resident_id(region: &str, birth: chrono::NaiveDate, seq: u32) -> String {
    let body = format!("{region}{}{:03}", birth.format("%Y%m%d"), seq % 1000);
    format!("{body}{}", id_check_char(&body))
}

/// The GB 11643 check character of 17 digits.
pub fn id_check_char(body17: &str) -> char {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const C: &[u8; 11] = b"10X98765432";
    let sum: u32 = body17
        .bytes()
        .zip(W)
        .map(|(d, w)| u32::from(d.wrapping_sub(b'0')) * w)
        .sum();
    char::from(C[(sum % 11) as usize])
}

/// The same number with a wrong check character (a deliberately dirty row).
pub fn with_bad_check(id: &str) -> String {
    let (body, last) = id.split_at(17);
    let bad = if last == "0" { '1' } else { '0' };
    format!("{body}{bad}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gb11643_example_and_bad_check() {
        // The example printed in GB 11643-1999.
        assert_eq!(id_check_char("11010519491231002"), 'X');
        let d = chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap_or_default();
        let id = resident_id("329999", d, 7);
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("32999920240229007"));
        assert_ne!(with_bad_check(&id), id);
        assert_eq!(with_bad_check(&id)[..17], id[..17]);
    }
}

/// A unified social credit code (GB 32100-2015) from its first 17
/// characters: appends the MOD 31 check character. `None` when a character
/// is outside the code's alphabet or the length is wrong.
pub fn uscc_with_check(prefix17: &str) -> Option<String> {
    const CHARS: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
    const W: [usize; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];
    let b = prefix17.as_bytes();
    if b.len() != 17 {
        return None;
    }
    let mut sum = 0usize;
    for (c, w) in b.iter().zip(W) {
        sum += CHARS.iter().position(|x| x == c)? * w;
    }
    Some(format!("{prefix17}{}", char::from(CHARS[(31 - sum % 31) % 31])))
}

#[cfg(test)]
mod uscc_tests {
    #[test]
    fn known_codes() {
        // codes used by the example mapping specs (valid GB 32100 codes)
        for c in [
            "12320000466000456J",
            "12320100466001234B",
            "123201024660123451",
            "91320000134567890Y",
        ] {
            assert_eq!(super::uscc_with_check(&c[..17]).as_deref(), Some(c));
        }
        assert_eq!(super::uscc_with_check("1232010046600123"), None);
    }
}

#[cfg(test)]
mod org_tests {
    #[test]
    fn every_org_has_a_valid_uscc() {
        for o in crate::world::ORGS {
            assert_eq!(
                super::uscc_with_check(&o.uscc[..17]).as_deref(),
                Some(o.uscc),
                "{}",
                o.alias
            );
        }
    }
}
