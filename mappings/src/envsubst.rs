//! `${NAME}` references in config files (TOML), expanded from the
//! environment the caller passes, so that secrets (database passwords, key
//! passphrases) need not be written into the file.

/// A `${NAME}` in a config file whose variable is not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsetVar {
    /// The 1-based line of the reference.
    pub line: usize,
    /// The variable's name.
    pub name: String,
}

/// Replaces each `${NAME}` (letters, digits, `_`) before a line's first `#`
/// with the value `env` gives, escaped for a TOML basic string (`"`, `\`,
/// newline). Shared by the agent's and the gateway's config loaders (`adapters::config`,
/// `gateway::config`); pure, the caller passes the environment.
pub fn expand_env_vars(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, UnsetVar> {
    let mut out = String::with_capacity(raw.len());
    for (n, line) in raw.lines().enumerate() {
        let mut rest = line;
        // A comment ends the expandable part of a line.
        while let Some(start) = rest.find("${") {
            if rest[..start].contains('#') {
                break;
            }
            let Some(len) = rest[start + 2..].find('}') else { break };
            let name = &rest[start + 2..start + 2 + len];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                break;
            }
            let value = env(name).ok_or_else(|| UnsetVar {
                line: n + 1,
                name: name.to_string(),
            })?;
            out.push_str(&rest[..start]);
            for c in value.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            rest = &rest[start + 3 + len..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PW" => Some("s\"e\\c\nret".to_string()),
            "HOST" => Some("db1".to_string()),
            _ => None,
        }
    }

    #[test]
    fn references_are_replaced_and_escaped_for_a_toml_string() {
        let out = expand_env_vars("url = \"pg://${HOST}/x\"\npassword = \"${PW}\"\n", &env).unwrap();
        assert_eq!(out, "url = \"pg://db1/x\"\npassword = \"s\\\"e\\\\c\\nret\"\n");
    }

    #[test]
    fn an_unset_variable_is_named_with_its_line() {
        let e = expand_env_vars("a = 1\nb = \"${NOPE}\"\n", &env).unwrap_err();
        assert_eq!(
            e,
            UnsetVar {
                line: 2,
                name: "NOPE".to_string()
            }
        );
    }

    #[test]
    fn comments_and_malformed_references_are_left_alone() {
        let text = "a = 1 # ${NOPE}\nb = \"${not a name}\"\nc = \"${\"\n";
        assert_eq!(expand_env_vars(text, &env).unwrap(), text);
    }
}
