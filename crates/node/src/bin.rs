//! Locating the system's PostgreSQL server binaries and asking them their version. This
//! module only looks and asks; it never installs anything or runs a server.

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::NodeError;

/// Environment variable that, when set, names the directory holding `initdb` and `postgres`.
pub const BINDIR_ENV: &str = "BERTH_PG_BINDIR";

/// Where Debian and Ubuntu install each major version's server binaries.
const DEBIAN_LIB_DIR: &str = "/usr/lib/postgresql";

/// The programs a directory must hold to count as a PostgreSQL bindir.
const REQUIRED: [&str; 2] = ["initdb", "postgres"];

/// A directory holding PostgreSQL's server programs (`initdb`, `postgres`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    bindir: PathBuf,
}

impl PgBinaries {
    /// Finds binaries: env `BERTH_PG_BINDIR`, then `pg_config --bindir`, then `PATH` (a
    /// directory holding both `initdb` and `postgres`), then the newest
    /// `/usr/lib/postgresql/*/bin`. The error names the Debian package to install.
    pub fn find() -> Result<Self, NodeError> {
        if let Some(dir) = env::var_os(BINDIR_ENV) {
            // An explicit choice that is wrong must fail, not silently fall back.
            return Self::from_dir(dir);
        }
        let mut searched = Vec::new();

        searched.push("pg_config --bindir".to_owned());
        if let Some(dir) = pg_config_bindir().filter(|d| holds_server(d)) {
            return Ok(Self::found(dir, "pg_config"));
        }

        searched.push("PATH".to_owned());
        if let Some(dir) = env::var_os("PATH").iter().flat_map(env::split_paths).find(|d| holds_server(d)) {
            return Ok(Self::found(dir, "PATH"));
        }

        searched.push(format!("{DEBIAN_LIB_DIR}/*/bin"));
        if let Some(dir) = newest_debian_bindir(Path::new(DEBIAN_LIB_DIR)) {
            return Ok(Self::found(dir, DEBIAN_LIB_DIR));
        }

        Err(NodeError::BinariesNotFound { searched: searched.join(", ") })
    }

    /// Uses `dir` as the bindir, checking that it holds `initdb` and `postgres`.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<Self, NodeError> {
        let dir = dir.into();
        if holds_server(&dir) {
            Ok(Self::found(dir, "explicit directory"))
        } else {
            Err(NodeError::InvalidBindir { dir })
        }
    }

    fn found(bindir: PathBuf, how: &str) -> Self {
        tracing::debug!(bindir = %bindir.display(), how, "found PostgreSQL binaries");
        PgBinaries { bindir }
    }

    /// The directory holding the programs.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The path of one program in the bindir (`initdb`, `postgres`, `psql`, ...).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// The server version as `postgres --version` reports it, e.g. `"15.18"`.
    pub fn version(&self) -> Result<String, NodeError> {
        let program = self.program("postgres");
        // `--version` is answered before postgres' refuse-to-run-as-root check.
        let output = Command::new(&program).arg("--version").output().map_err(|source| NodeError::Spawn {
            program: program.clone(),
            cwd: env::current_dir().unwrap_or_default(),
            source,
        })?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(NodeError::CommandFailed {
                program,
                status: output.status,
                output: text + &String::from_utf8_lossy(&output.stderr),
            });
        }
        parse_version(&text).map(str::to_owned).ok_or(NodeError::UnexpectedVersion { output: text })
    }

    /// The major version (`15` for `"15.18"`, `9` for `"9.6.24"`).
    pub fn major_version(&self) -> Result<u32, NodeError> {
        let version = self.version()?;
        version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|major| major.parse().ok())
            .ok_or(NodeError::UnexpectedVersion { output: version })
    }
}

/// Reads the version out of `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
fn parse_version(output: &str) -> Option<&str> {
    let mut words = output.split_whitespace();
    words.find(|w| *w == "(PostgreSQL)")?;
    words.next().filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
}

fn holds_server(dir: &Path) -> bool {
    REQUIRED.iter().all(|name| dir.join(name).is_file())
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The `bin` of the highest-numbered version under `lib` that holds a server.
fn newest_debian_bindir(lib: &Path) -> Option<PathBuf> {
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let key = version_key(&entry.file_name())?;
            let bin = entry.path().join("bin");
            holds_server(&bin).then_some((key, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// Orders directory names like `9.6`, `15`, `17` numerically; `None` for other names.
fn version_key(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?.split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_version_line() {
        let line = "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n";
        assert_eq!(parse_version(line), Some("15.18"));
    }

    #[test]
    fn parses_plain_version_line() {
        assert_eq!(parse_version("postgres (PostgreSQL) 17.2\n"), Some("17.2"));
    }

    #[test]
    fn rejects_other_output() {
        assert_eq!(parse_version("hello world"), None);
        assert_eq!(parse_version("postgres (PostgreSQL)"), None);
    }

    #[test]
    fn version_keys_order_numerically() {
        let v = |s: &str| version_key(OsStr::new(s));
        assert!(v("9.6") < v("10"));
        assert!(v("10") < v("15"));
        assert_eq!(v("common"), None);
    }

    #[test]
    fn newest_debian_bindir_picks_highest_version_with_server() {
        let lib = tempfile::tempdir().expect("tempdir");
        for (version, complete) in [("9.6", true), ("15", true), ("16", false), ("x", true)] {
            let bin = lib.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).expect("mkdir");
            std::fs::write(bin.join("postgres"), "").expect("write");
            if complete {
                std::fs::write(bin.join("initdb"), "").expect("write");
            }
        }
        assert_eq!(newest_debian_bindir(lib.path()), Some(lib.path().join("15").join("bin")));
    }

    #[test]
    fn from_dir_rejects_dir_without_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(PgBinaries::from_dir(dir.path()), Err(NodeError::InvalidBindir { .. })));
    }
}
