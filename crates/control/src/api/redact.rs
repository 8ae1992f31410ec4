//! What a replayable response may keep: nothing secret. Every response the idempotency layer
//! stores passes through `redact`, whatever route made it, so a new route cannot forget to:
//! members named as secrets (`token`, `password`, `secret`, `…_password`, …), strings
//! holding a Berth API key, and URLs or libpq strings carrying a password are replaced by
//! `REDACTED`. The response sent the first time keeps them; this module never touches it.

use catalog::KEY_PREFIX;
use serde_json::Value;

/// What a replay holds where the first response held a secret.
pub(crate) const REDACTED: &str = "shown once; not replayable";

/// The random characters after `berth_live_` in an API key.
const KEY_RANDOM_LEN: usize = 32;

/// Replaces every secret in `body`; returns the JSON pointers (RFC 6901) it replaced.
pub(crate) fn redact(body: &mut Value) -> Vec<String> {
    let mut replaced = Vec::new();
    walk(body, &mut String::new(), &mut replaced);
    replaced
}

fn walk(value: &mut Value, pointer: &mut String, replaced: &mut Vec<String>) {
    let len = pointer.len();
    match value {
        Value::Object(members) => {
            for (name, member) in members.iter_mut() {
                pointer.push('/');
                pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
                if secret_name(name) && !member.is_null() {
                    *member = Value::String(REDACTED.into());
                    replaced.push(pointer.clone());
                } else {
                    walk(member, pointer, replaced);
                }
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                pointer.push('/');
                pointer.push_str(&i.to_string());
                walk(item, pointer, replaced);
                pointer.truncate(len);
            }
        }
        Value::String(s) if secret_value(s) => {
            *s = REDACTED.into();
            replaced.push(pointer.clone());
        }
        _ => {}
    }
}

fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["token", "password", "secret", "api_key", "private_key"]
        .iter()
        .any(|s| name == *s || name.ends_with(&format!("_{s}")))
}

fn secret_value(s: &str) -> bool {
    holds_api_key(s) || url_with_password(s) || s.to_ascii_lowercase().contains("password=")
}

/// A whole key, not the shown prefix (`berth_live_` and four characters) a key view carries.
fn holds_api_key(s: &str) -> bool {
    s.match_indices(KEY_PREFIX).any(|(at, _)| {
        s[at + KEY_PREFIX.len()..].bytes().take_while(u8::is_ascii_alphanumeric).count() >= KEY_RANDOM_LEN
    })
}

/// `scheme://user:password@host…`
fn url_with_password(s: &str) -> bool {
    s.match_indices("://").any(|(at, _)| {
        let rest = &s[at + 3..];
        let authority = rest.split(['/', '?', '#', ' ']).next().unwrap_or_default();
        authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_are_replaced_wherever_they_are() {
        let token = format!("{KEY_PREFIX}{}", "a1B2".repeat(8));
        let mut body = json!({
            "key": {"id": "key_1", "prefix": format!("{KEY_PREFIX}a1B2")},
            "token": token,
            "nested": [{"owner_password": "hunter2"}, {"note": format!("use {token} now")}],
            "direct_url": "postgresql://shop:hunter2@localhost:6432/shop?sslmode=require",
            "dsn": "host=localhost user=shop password=hunter2",
            "a/b~": {"password": "x"},
            "password": null,
        });
        let mut replaced = redact(&mut body);
        replaced.sort();
        assert_eq!(
            replaced,
            [
                "/a~1b~0/password",
                "/direct_url",
                "/dsn",
                "/nested/0/owner_password",
                "/nested/1/note",
                "/token"
            ]
        );
        let text = body.to_string();
        assert!(!text.contains("hunter2") && !text.contains(&token), "{text}");
        assert_eq!(body["token"], REDACTED);
        assert_eq!(body["key"]["prefix"], format!("{KEY_PREFIX}a1B2"), "the shown prefix is no secret");
        assert_eq!(body["password"], Value::Null);
    }

    #[test]
    fn views_without_secrets_are_left_alone() {
        let mut body = json!({
            "project": {"id": "proj_1", "owner_role": "shop_owner", "state": "provisioning"},
            "connection_string": "postgresql://shop@localhost:6432/db_1?sslmode=require",
            "job": {"id": "job_1", "error": null, "last_stderr": "FATAL: no such database"},
            "error": {"code": "conflict", "message": "a project named \"shop\" already exists"},
        });
        let before = body.clone();
        assert!(redact(&mut body).is_empty());
        assert_eq!(body, before);
    }
}
