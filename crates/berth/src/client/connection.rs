//! `berth connection`: a project's connection string as the API gives it (`sslmode=require`)
//! or, with `--verify`, for clients that check the server's certificate (node-postgres does
//! even for `require`): `sslmode=verify-full`, `sslrootcert=` the absolute path of a file
//! holding the CA the API serves, and a host that the certificate names. The only file it
//! may write is that CA certificate, which is public.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::api::{Api, ClientOpts};
use super::output::{self, cell};

#[derive(Args)]
pub struct ConnectionArgs {
    /// Project id or name.
    project: String,
    /// Branch (default: main).
    #[arg(long)]
    branch: Option<String>,
    /// The pooled port instead of the direct one.
    #[arg(long)]
    pooled: bool,
    /// A string that verifies the server: sslmode=verify-full with sslrootcert=<the CA file>.
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    opts: ClientOpts,
}

/// What verifies the proxy's certificate.
#[derive(Debug, PartialEq)]
enum Root {
    /// Berth's local CA, in this file.
    File(PathBuf),
    /// The operator's own certificate (`berth up --tls-cert`): the system's trust store.
    System,
}

pub fn connection(args: ConnectionArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.opts)?;
    let mut path = format!("/v1/projects/{}/connection?pooled={}", args.project, args.pooled);
    if let Some(branch) = &args.branch {
        path.push_str(&format!("&branch={branch}"));
    }
    let mut c = api.get(&path)?;
    if args.verify {
        let root = root(&api, &args.opts)?;
        c["connectionUri"] = verified(&cell(&c["connectionUri"]), &root).into();
    }
    if args.opts.json {
        output::json(&c)
    } else {
        println!("{}", cell(&c["connectionUri"]))
    }
    Ok(())
}

fn root(api: &Api, opts: &ClientOpts) -> anyhow::Result<Root> {
    match api.get_text("/v1/tls/ca.pem")? {
        Ok(pem) => Ok(Root::File(ca_file(&pem, opts)?)),
        Err((404, _)) => Ok(Root::System),
        Err((_, message)) => anyhow::bail!("cannot fetch the CA certificate: {message}"),
    }
}

/// The local `berth up`'s `ca.pem` when it holds what the API serves, else a copy of it in
/// the user's cache directory (`$XDG_CACHE_HOME/berth`, or `~/.cache/berth`).
fn ca_file(pem: &str, opts: &ClientOpts) -> anyhow::Result<PathBuf> {
    let local = crate::datadir::for_client(opts.data.clone()).join("ca.pem");
    if std::fs::read_to_string(&local).is_ok_and(|held| held == pem) {
        return local.canonicalize().with_context(|| format!("cannot resolve {}", local.display()));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .context("no XDG_CACHE_HOME or HOME to keep the CA certificate in")?
        .join("berth");
    std::fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let file = cache.join(format!("ca-{}.pem", crate::local_ca::short_id(pem.as_bytes())?));
    if std::fs::read_to_string(&file).ok().as_deref() != Some(pem) {
        std::fs::write(&file, pem).with_context(|| format!("cannot write {}", file.display()))?;
    }
    std::path::absolute(&file).with_context(|| format!("cannot resolve {}", file.display()))
}

/// `uri` with `sslmode=require` made `verify-full` against `root`. The local CA's server
/// certificate names `localhost` and `127.0.0.1`; loopback hosts become `localhost`, which
/// libpq before 14 can match too (it matches only DNS names).
fn verified(uri: &str, root: &Root) -> String {
    let verify = match root {
        Root::File(path) => format!("sslmode=verify-full&sslrootcert={}", encode_path(path)),
        Root::System => "sslmode=verify-full&sslrootcert=system".to_owned(),
    };
    let uri = uri.replacen("sslmode=require", &verify, 1);
    match root {
        Root::File(_) => uri.replacen("@127.0.0.1:", "@localhost:", 1).replacen("@[::1]:", "@localhost:", 1),
        Root::System => uri,
    }
}

/// Percent-encodes a path for a URI query value, keeping `/` readable.
fn encode_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str()
        .as_bytes()
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "postgresql://shop_owner:pw@127.0.0.1:6432/shop?sslmode=require";

    #[test]
    fn the_local_ca_verifies_loopback_as_localhost() {
        let root = Root::File(PathBuf::from("/srv/berth data/ca.pem"));
        assert_eq!(
            verified(URI, &root),
            "postgresql://shop_owner:pw@localhost:6432/shop?sslmode=verify-full&sslrootcert=/srv/berth%20data/ca.pem"
        );
        let public = URI.replace("127.0.0.1", "db.example.com");
        assert!(verified(&public, &root).starts_with("postgresql://shop_owner:pw@db.example.com:6432/"));
    }

    #[test]
    fn an_operators_certificate_verifies_against_the_system_store() {
        let public = URI.replace("127.0.0.1", "db.example.com");
        assert_eq!(
            verified(&public, &Root::System),
            "postgresql://shop_owner:pw@db.example.com:6432/shop?sslmode=verify-full&sslrootcert=system"
        );
    }
}
