//! Prefixed, time-ordered ids (`proj_01j…`): a millisecond timestamp and 80 random bits in
//! Crockford base32, so ids sort by creation time and a cursor can be the last id seen.

use rand::RngCore;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

pub const ORGANIZATION: &str = "org_";
pub const PROJECT: &str = "proj_";
pub const BRANCH: &str = "br_";
pub const PREVIEW: &str = "prev_";
pub const ROLE: &str = "role_";
pub const API_KEY: &str = "key_";
pub const JOB: &str = "job_";
pub const DATABASE: &str = "db_";

/// A new id with `prefix`: 10 characters of time, 16 of randomness.
pub fn generate(prefix: &str) -> String {
    let millis = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let mut id = String::with_capacity(prefix.len() + 26);
    id.push_str(prefix);
    for i in (0..10).rev() {
        id.push(ALPHABET[((millis >> (i * 5)) & 31) as usize] as char);
    }
    let mut random = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut random);
    id.extend(random.iter().map(|b| ALPHABET[usize::from(b & 31)] as char));
    id
}

/// Whether `s` has the shape of an id with `prefix` (callers use it to tell ids from names).
pub fn is_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| rest.len() == 26 && rest.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_sort_by_time() {
        let a = generate(PROJECT);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = generate(PROJECT);
        assert!(is_id(&a, PROJECT) && is_id(&b, PROJECT), "{a} {b}");
        assert!(a < b, "{a} !< {b}");
        assert!(!is_id(&a, JOB));
        assert!(!is_id("proj_shop", PROJECT));
        assert_ne!(generate(JOB), generate(JOB));
    }
}
