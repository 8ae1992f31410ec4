//! `berth trust` puts the local CA into Debian's trust store as root, prints the line for
//! Node, and changes nothing when run again; without root it prints the commands instead
//! and fails. The test undoes what it installed (the file, then `update-ca-certificates`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::BERTH;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Removes the installed certificate and rebuilds the store, however the test ends.
/// `--fresh`, because a plain run leaves the removed certificate's links in /etc/ssl/certs.
struct Installed(PathBuf);

impl Installed {
    fn remove(&self) {
        if self.0.exists() {
            std::fs::remove_file(&self.0).expect("remove the installed CA");
            let out = Command::new("update-ca-certificates").arg("--fresh").output();
            assert!(out.is_ok_and(|o| o.status.success()), "update-ca-certificates --fresh");
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.remove();
    }
}

fn der(pem: &[u8]) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem).expect("a certificate")
}

fn bundle_holds(ca: &CertificateDer<'_>) -> bool {
    let bundle = std::fs::read(BUNDLE).expect("the system bundle");
    CertificateDer::pem_slice_iter(&bundle).filter_map(Result::ok).any(|c| &c == ca)
}

fn trust(data: &Path, uid: Option<u32>) -> (bool, String, String) {
    let mut cmd = Command::new(BERTH);
    cmd.args(["trust", "--data"]).arg(data).env_remove("BERTH_DATA");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("berth trust");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn berth_trust_installs_the_local_ca_once_and_prints_the_node_line() {
    assert!(nix::unistd::geteuid().is_root(), "this test installs into the system trust store");
    let data = common::data_dir();
    let ca = proxy::LocalCa::load_or_create(data.path(), &["localhost".into()]).expect("a local CA");
    let pem = ca.ca_cert_pem.as_bytes();
    let id: String = Sha256::digest(der(pem).as_ref())[..6].iter().map(|b| format!("{b:02x}")).collect();
    let target = PathBuf::from(format!("/usr/local/share/ca-certificates/berth-{id}.crt"));
    assert!(!target.exists() && !bundle_holds(&der(pem)), "a fresh CA is not trusted yet");
    let _cleanup = Installed(target.clone());

    let (ok, out, err) = trust(data.path(), None);
    assert!(ok, "berth trust: {err}");
    assert_eq!(out, format!("export NODE_EXTRA_CA_CERTS={}", target.display()));
    assert_eq!(std::fs::read(&target).expect("the installed CA"), pem);
    assert_eq!(std::fs::metadata(&target).expect("metadata").permissions().mode() & 0o777, 0o644);
    assert!(bundle_holds(&der(pem)), "update-ca-certificates did not put the CA in {BUNDLE}");
    assert!(!std::fs::read_to_string(&target).expect("read").contains("PRIVATE"));

    // Again: the same answer, and neither the file nor the bundle is written.
    let before = (std::fs::metadata(&target).and_then(|m| m.modified()), std::fs::read(BUNDLE).ok());
    let bundle_mtime = std::fs::metadata(BUNDLE).and_then(|m| m.modified()).expect("bundle mtime");
    let (ok, again, err) = trust(data.path(), None);
    assert!(ok && again == out, "berth trust again: {again}\n{err}");
    assert!(err.contains("already trusted"), "{err}");
    let after = (std::fs::metadata(&target).and_then(|m| m.modified()), std::fs::read(BUNDLE).ok());
    assert!(before.0.is_ok() && before.0.as_ref().ok() == after.0.as_ref().ok() && before.1 == after.1);
    assert_eq!(std::fs::metadata(BUNDLE).and_then(|m| m.modified()).expect("bundle mtime"), bundle_mtime);

    // The machine as it was found.
    let installed = Installed(target.clone());
    installed.remove();
    assert!(!bundle_holds(&der(pem)), "still in {BUNDLE}");
    let link = PathBuf::from(format!("/etc/ssl/certs/berth-{id}.pem"));
    assert!(std::fs::symlink_metadata(&link).is_err(), "{} is left behind", link.display());
}

#[test]
fn without_root_berth_trust_prints_the_commands_and_fails() {
    let data = common::data_dir();
    let ca = proxy::LocalCa::load_or_create(data.path(), &["localhost".into()]).expect("a local CA");
    let ca_file = data.path().join("ca.pem");
    std::fs::set_permissions(&ca_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, out, err) = trust(data.path(), Some(65534));
    assert!(!ok, "succeeded without root: {out}");
    assert!(err.contains("needs root"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let target = lines[0].rsplit(' ').next().expect("a target");
    assert!(
        target.starts_with("/usr/local/share/ca-certificates/berth-") && target.ends_with(".crt"),
        "{out}"
    );
    assert_eq!(lines[0], format!("sudo install -m 0644 {} {target}", ca_file.display()));
    assert_eq!(lines[1], "sudo update-ca-certificates");
    assert_eq!(lines[2], format!("export NODE_EXTRA_CA_CERTS={target}"));
    assert!(!Path::new(target).exists(), "it installed without root");
    assert!(!bundle_holds(&der(ca.ca_cert_pem.as_bytes())));
}
