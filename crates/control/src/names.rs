//! Names users choose. A project's name becomes a PostgreSQL database name and part of its
//! owner role's name, and appears in URLs, so it is held to `^[a-zA-Z0-9_-]{1,48}$` (48
//! leaves room for `_owner` inside PostgreSQL's 63-byte identifiers) and may not look like
//! an id, which would make `{id}` in paths ambiguous.

use crate::error::ApiError;

pub const MAX_NAME_LEN: usize = 48;

pub fn validate_project_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::invalid(format!("name must be 1 to {MAX_NAME_LEN} characters")));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(ApiError::invalid("name may hold only letters, digits, `_` and `-`"));
    }
    if catalog::ids::is_id(name, catalog::ids::PROJECT) {
        return Err(ApiError::invalid("name may not have the shape of a project id"));
    }
    if matches!(name.to_ascii_lowercase().as_str(), "postgres" | "template0" | "template1" | "berth") {
        return Err(ApiError::invalid(format!("{name:?} is reserved")));
    }
    Ok(())
}

/// Branch names follow project names' rule (they appear in URLs and, after a dot, in the
/// database name clients use: `<project>.<branch>`), and may not look like a branch id.
pub fn validate_branch_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::invalid(format!("name must be 1 to {MAX_NAME_LEN} characters")));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(ApiError::invalid("name may hold only letters, digits, `_` and `-`"));
    }
    if catalog::ids::is_id(name, catalog::ids::BRANCH) || catalog::ids::is_id(name, catalog::ids::PREVIEW) {
        return Err(ApiError::invalid("name may not have the shape of a branch or preview id"));
    }
    Ok(())
}

/// The owner role of a project.
pub fn owner_role(project: &str) -> String {
    format!("{project}_owner")
}

/// An identifier quoted for SQL (names are validated, but quoting is what makes it safe).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["shop", "Shop_2", "a-b", &"x".repeat(48)] {
            assert!(validate_project_name(ok).is_ok(), "{ok}");
        }
        let id = catalog::ids::generate(catalog::ids::PROJECT);
        for bad in [
            "",
            "a/b",
            "..",
            "a.b",
            "it's",
            "\"q\"",
            "sp ace",
            "é",
            &"x".repeat(49),
            &"x".repeat(200),
            &id,
            "postgres",
        ] {
            assert!(validate_project_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branch_names_are_checked() {
        for ok in ["dev", "feature-1", "Fix_2", &"x".repeat(48)] {
            assert!(validate_branch_name(ok).is_ok(), "{ok}");
        }
        let id = catalog::ids::generate(catalog::ids::BRANCH);
        let preview = catalog::ids::generate(catalog::ids::PREVIEW);
        for bad in ["", "a.b", "a/b", "..", "sp ace", "é", &"x".repeat(49), &id, &preview] {
            assert!(validate_branch_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
