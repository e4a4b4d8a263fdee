//! Certificates made at test time with the `openssl` command: a throw-away CA, a server
//! certificate for `localhost` and 127.0.0.1 signed by it, a client certificate signed by it, and a
//! second CA that signed neither (to check that a stranger's certificate is refused).
//!
//! Made fresh in each test's own directory so nothing secret is committed and tests never share
//! keys. `openssl` is part of every Debian install the test command supports.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files [`make_certificates`] writes.
pub struct Certificates {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (CN `crashwatch-test-client`) signed by [`Certificates::ca`].
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here: trusting only it must fail.
    pub other_ca: PathBuf,
    /// A client certificate signed by [`Certificates::other_ca`].
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

/// Whether the `openssl` command is there.
pub fn openssl_prerequisites() -> Result<(), String> {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("the openssl command is not installed (Debian package openssl)".to_owned()),
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a CA, server and client certificates under `dir` (which must exist).
pub fn make_certificates(dir: &Path) -> Certificates {
    make_certificates_named(dir, "")
}

/// As [`make_certificates`], with `prefix` before every file name, so a second set (a renewed
/// certificate, say) can sit beside the first.
pub fn make_certificates_named(dir: &Path, prefix: &str) -> Certificates {
    let name = |file: &str| format!("{prefix}{file}");
    let make_ca = |key: &str, cert: &str, subject: &str| {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                subject,
                "-keyout",
                key,
                "-out",
                cert,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    };
    let make_leaf =
        |ca_cert: &str, ca_key: &str, key: &str, cert: &str, subject: &str, ext: &str| {
            let csr = format!("{cert}.csr");
            let ext_file = format!("{cert}.ext");
            std::fs::write(dir.join(&ext_file), ext).expect("write extensions");
            openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    subject,
                    "-keyout",
                    key,
                    "-out",
                    &csr,
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    ca_cert,
                    "-CAkey",
                    ca_key,
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &ext_file,
                    "-out",
                    cert,
                ],
            );
        };
    let (ca, ca_key) = (name("ca.pem"), name("ca-key.pem"));
    make_ca(&ca_key, &ca, "/CN=crashwatch test CA");
    let (other_ca, other_ca_key) = (name("other-ca.pem"), name("other-ca-key.pem"));
    make_ca(&other_ca_key, &other_ca, "/CN=someone else's CA");
    let server_ext = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                      extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n";
    let client_ext = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                      extendedKeyUsage=clientAuth\n";
    let (server_cert, server_key) = (name("server.pem"), name("server-key.pem"));
    make_leaf(
        &ca,
        &ca_key,
        &server_key,
        &server_cert,
        "/CN=localhost",
        server_ext,
    );
    let (client_cert, client_key) = (name("client.pem"), name("client-key.pem"));
    make_leaf(
        &ca,
        &ca_key,
        &client_key,
        &client_cert,
        "/CN=crashwatch-test-client",
        client_ext,
    );
    let (other_client_cert, other_client_key) =
        (name("other-client.pem"), name("other-client-key.pem"));
    make_leaf(
        &other_ca,
        &other_ca_key,
        &other_client_key,
        &other_client_cert,
        "/CN=stranger",
        client_ext,
    );
    Certificates {
        ca: dir.join(ca),
        server_cert: dir.join(server_cert),
        server_key: dir.join(server_key),
        client_cert: dir.join(client_cert),
        client_key: dir.join(client_key),
        other_ca: dir.join(other_ca),
        other_client_cert: dir.join(other_client_cert),
        other_client_key: dir.join(other_client_key),
    }
}

/// A bcrypt hash of `password` as `htpasswd -nbBC 10` makes it (Debian package apache2-utils),
/// the form exporter-toolkit's `basic_auth_users` holds.
pub fn bcrypt_hash(password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-nbBC", "10", "user", password])
        .output()
        .expect("run htpasswd (Debian package apache2-utils)");
    assert!(out.status.success(), "htpasswd failed");
    let line = String::from_utf8(out.stdout).expect("utf-8");
    line.trim().split_once(':').expect("user:hash").1.to_owned()
}

/// Whether the `htpasswd` command is there.
pub fn htpasswd_prerequisites() -> Result<(), String> {
    if super::find_in_path("htpasswd").is_some() {
        Ok(())
    } else {
        Err("the htpasswd command is not installed (Debian package apache2-utils)".to_owned())
    }
}
