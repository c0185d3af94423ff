//! Field rules of the contract. Each function returns the problem as a sentence, so handlers can
//! gather every bad field into one 422.

use std::collections::BTreeMap;

use shared::ApiError;

/// Collects field problems; `finish` turns them into one 422, or nothing.
#[derive(Default)]
pub struct Problems(BTreeMap<String, String>);

impl Problems {
    pub fn check(&mut self, field: &str, result: Result<(), String>) {
        if let Err(problem) = result {
            self.0.insert(field.to_owned(), problem);
        }
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.0))
        }
    }
}

pub fn username(v: &str) -> Result<(), String> {
    let len = v.chars().count();
    if !(3..=32).contains(&len) {
        return Err("must be 3 to 32 characters".into());
    }
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("may contain only letters, digits, '_', '.' and '-'".into());
    }
    Ok(())
}

pub fn password(v: &str) -> Result<(), String> {
    let len = v.chars().count();
    if !(8..=128).contains(&len) {
        return Err("must be 8 to 128 characters".into());
    }
    Ok(())
}

/// A pragmatic address check: one `@`, a non-empty local part, a domain with a dot and no empty
/// label, no spaces, at most 254 characters. Deliverability is not checked.
pub fn email(v: &str) -> Result<(), String> {
    let bad = || Err("must be a valid email address".to_owned());
    if v.len() > 254 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad();
    }
    let Some((local, domain)) = v.split_once('@') else {
        return bad();
    };
    if local.is_empty()
        || local.len() > 64
        || domain.contains('@')
        || !domain.contains('.')
        || domain.split('.').any(|label| {
            label.is_empty()
                || label.starts_with('-')
                || label.ends_with('-')
                || !label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
    {
        return bad();
    }
    Ok(())
}

pub fn display_name(v: &str) -> Result<(), String> {
    let len = v.trim().chars().count();
    if !(1..=64).contains(&len) {
        return Err("must be 1 to 64 characters".into());
    }
    if v.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// An http(s) URL of at most 2048 characters with a host.
pub fn http_url(v: &str) -> Result<(), String> {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"));
    match rest {
        Some(rest)
            if v.len() <= 2048
                && !rest.is_empty()
                && !rest.starts_with('/')
                && !v.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(())
        }
        _ => Err("must be an http(s) URL of at most 2048 characters".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(username("al_i.ce-1").is_ok());
        assert!(username("ab").is_err());
        assert!(username(&"a".repeat(33)).is_err());
        assert!(username("bad name").is_err());
        assert!(username("émile").is_err());
    }

    #[test]
    fn emails() {
        assert!(email("a@b.co").is_ok());
        assert!(email("first.last+tag@sub.example.org").is_ok());
        for bad in [
            "", "a", "a@b", "@b.co", "a@@b.co", "a b@c.co", "a@b..co", "a@-b.co",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_count_characters() {
        assert!(password("12345678").is_ok());
        assert!(password("1234567").is_err());
        assert!(password(&"é".repeat(128)).is_ok());
        assert!(password(&"x".repeat(129)).is_err());
    }

    #[test]
    fn urls() {
        assert!(http_url("https://cdn.example.com/a.png").is_ok());
        assert!(http_url("http://x").is_ok());
        assert!(http_url("ftp://x").is_err());
        assert!(http_url("https://").is_err());
        assert!(http_url("javascript:alert(1)").is_err());
    }
}
