//! Names that end up in paths and URLs: deployment ids and tenants.

/// Why a deployment id or tenant name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "{what} is empty; use 1 to 128 characters from [A-Za-z0-9._-], starting with a letter or digit"
    )]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; the maximum is 128")]
    TooLong { what: &'static str, len: usize },
    #[error("{what} must start with a letter or a digit")]
    BadStart { what: &'static str },
    #[error("{what} contains {found:?}; only letters, digits, '.', '_' and '-' are allowed")]
    BadChar { what: &'static str, found: char },
}

fn validate(what: &'static str, s: &str) -> Result<(), IdError> {
    let first = s.chars().next().ok_or(IdError::Empty { what })?;
    if s.len() > 128 {
        return Err(IdError::TooLong { what, len: s.len() });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(IdError::BadStart { what });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(IdError::BadChar { what, found });
    }
    Ok(())
}

/// Checks a deployment id against `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
///
/// Ids that pass are safe as a single path component (no `/`, no leading `.`).
pub fn validate_deployment_id(id: &str) -> Result<(), IdError> {
    validate("deployment id", id)
}

/// Checks a tenant name: the same grammar as a deployment id.
pub fn validate_tenant(tenant: &str) -> Result<(), IdError> {
    validate("tenant", tenant)
}

/// Checks a bookmark name: the same grammar as a deployment id.
pub fn validate_bookmark_name(name: &str) -> Result<(), IdError> {
    validate("bookmark name", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_ids_follow_the_contract_grammar() {
        for ok in ["a", "build-42", "A.b_c-9", &"x".repeat(128)] {
            assert_eq!(validate_deployment_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "é",
            "a\0",
            &"x".repeat(129),
        ] {
            assert!(validate_deployment_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
