//! `berth trust`: puts the local CA of a `berth up` into the system's trust store (Debian's:
//! a `.crt` in `/usr/local/share/ca-certificates` and `update-ca-certificates`), so clients
//! that verify against the system (and Node, told with `NODE_EXTRA_CA_CERTS`) accept the
//! proxy's certificate. Run again it changes nothing. Without root it changes nothing either
//! and prints the commands to run. It copies only the CA certificate, never a key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use clap::Args;

const STORE: &str = "/usr/local/share/ca-certificates";
const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const UPDATE: &str = "update-ca-certificates";

#[derive(Args)]
pub struct TrustArgs {
    /// Data directory of the `berth up` whose CA to trust [default: ./berth-data, else
    /// /var/lib/berth].
    #[arg(long, env = "BERTH_DATA")]
    data: Option<PathBuf>,
}

pub fn run(args: TrustArgs) -> anyhow::Result<()> {
    let ca = crate::datadir::for_client(args.data).join("ca.pem");
    let ca = std::path::absolute(&ca).unwrap_or(ca);
    let root = nix::unistd::geteuid().is_root();
    let pem = match std::fs::read(&ca) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !root => {
            anyhow::bail!("cannot read {} ({e}); run it as root: sudo berth trust", ca.display())
        }
        Err(e) => {
            anyhow::bail!("no local CA at {} ({e}); `berth up` makes it on its first start", ca.display())
        }
    };
    // A key must never land in a world-readable store, whatever the file holds.
    anyhow::ensure!(
        !String::from_utf8_lossy(&pem).contains("PRIVATE KEY"),
        "{} holds a private key; refusing to copy it into the trust store",
        ca.display()
    );
    let id = crate::local_ca::short_id(&pem).with_context(|| format!("reading {}", ca.display()))?;
    let target = Path::new(STORE).join(format!("berth-{id}.crt"));
    let node = format!("export NODE_EXTRA_CA_CERTS={}", target.display());
    if !root {
        println!("sudo install -m 0644 {} {}", ca.display(), target.display());
        println!("sudo {UPDATE}");
        println!("{node}");
        anyhow::bail!("installing a CA needs root: run the commands above (or sudo berth trust)");
    }
    anyhow::ensure!(
        Path::new(STORE).is_dir(),
        "no {STORE} here (Debian's ca-certificates package); install it, or add {} to this \
         system's trust store by hand",
        ca.display()
    );
    let installed = std::fs::read(&target).is_ok_and(|held| held == pem);
    if installed && in_bundle(&pem) {
        eprintln!("already trusted: {}", target.display());
        println!("{node}");
        return Ok(());
    }
    if !installed {
        write_public(&target, &pem)?;
    }
    let out = Command::new(UPDATE)
        .output()
        .with_context(|| format!("cannot run {UPDATE}: install it with apt-get install ca-certificates"))?;
    anyhow::ensure!(
        out.status.success(),
        "{UPDATE} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    anyhow::ensure!(in_bundle(&pem), "{UPDATE} ran, but {BUNDLE} does not hold {}", target.display());
    eprintln!("trusted: {} (in {BUNDLE})", target.display());
    println!("{node}");
    Ok(())
}

/// Whether the system bundle holds the certificate (compared as DER, whatever the PEM text).
fn in_bundle(pem: &[u8]) -> bool {
    let Some(ca) = crate::local_ca::certificates(pem).into_iter().next() else { return false };
    std::fs::read(BUNDLE).is_ok_and(|bundle| crate::local_ca::certificates(&bundle).contains(&ca))
}

/// Writes a certificate every user may read (update-ca-certificates wants 0644), whatever
/// the umask.
fn write_public(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data).with_context(|| format!("cannot write {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot make {} readable", path.display()))
}
