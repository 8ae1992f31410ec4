//! The configuration Berth lays over what `initdb` writes: `berth.conf` (included from
//! `postgresql.conf`) and a `pg_hba.conf` that admits local socket connections only. It
//! decides the text; writing it to disk is the caller's job. It must never open TCP.

/// Name of Berth's settings file inside the data directory.
pub(crate) const BERTH_CONF: &str = "berth.conf";

/// The line appended to `postgresql.conf` so that Berth's settings apply last.
pub(crate) const INCLUDE_LINE: &str = "include = 'berth.conf'";

/// The whole of `pg_hba.conf`: the socket directory is private (0700), so trusting every
/// local connection grants nothing beyond what that directory's permissions already do.
pub(crate) const PG_HBA: &str = "\
# Written by Berth. Unix socket only: the socket directory is private (0700);
# there is no TCP listener and no host line.
local all all trust
";

/// The contents of `berth.conf`.
///
/// `unix_socket_directories` and `port` are not written here: they are passed on the
/// command line at each start, because copies of a data directory live at other roots.
pub(crate) fn berth_conf(fast_unsafe: bool) -> String {
    let mut conf = String::from(
        "# Written by Berth; settings here override postgresql.conf.\n\
         listen_addresses = ''\n\
         unix_socket_permissions = 0700\n\
         password_encryption = 'scram-sha-256'\n",
    );
    if fast_unsafe {
        conf.push_str(
            "# fast_unsafe: for tests; a crash can lose or corrupt data.\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n",
        );
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_conf_keeps_durability() {
        let conf = berth_conf(false);
        assert!(conf.contains("listen_addresses = ''"));
        assert!(conf.contains("password_encryption = 'scram-sha-256'"));
        assert!(!conf.contains("fsync"));
    }

    #[test]
    fn fast_unsafe_turns_off_durability() {
        let conf = berth_conf(true);
        for line in ["fsync = off", "synchronous_commit = off", "full_page_writes = off"] {
            assert!(conf.contains(line), "missing {line}");
        }
    }

    #[test]
    fn hba_has_no_host_lines() {
        let rules: Vec<_> =
            PG_HBA.lines().filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty()).collect();
        assert_eq!(rules, ["local all all trust"]);
    }
}
