//! Secrets of the HTTP requests (passwords, bearer credentials, header values, client keys):
//! named in the configuration by the file that holds them, read when needed, and never shown.
//!
//! A relative path names a systemd credential (`LoadCredential=` in the unit): it is looked up in
//! `$CREDENTIALS_DIRECTORY`, which systemd sets for the service and which only the service's user
//! can read, so the secret need not sit anywhere else on disk in clear. Without that variable (a
//! command run from a shell) a relative path is taken from the current directory, as a command
//! line's paths are.
//!
//! A file is read once when the configuration is checked (start-up, each reload, `check-config`),
//! so a missing one is found then, and again at each request, so rotating a secret needs neither
//! a restart nor a reload. Its content is trimmed of surrounding whitespace, as Prometheus does
//! with `password_file` and `credentials_file`, so a trailing newline does not count.
//!
//! [`Secret`] holds a value: it has no `Display`, its `Debug` shows a placeholder, and errors
//! name the key and the path, never the content.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The most of a secret file read: a secret is a line, a client key a few kilobytes.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The variable systemd sets to the directory of a unit's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// A secret value, shown nowhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value given in the configuration itself.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, to put into a request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A secret written in the configuration file is read as a plain string.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        <String as serde::Deserialize>::deserialize(deserializer).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// A file holding a secret, as configured: the key that named it and the path it resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretFile {
    key: String,
    path: PathBuf,
}

impl SecretFile {
    /// The file `text` names under `key` (e.g. `basic_auth.password_file`), resolved as the module
    /// says, read once to check it. Errors are fragments naming the key.
    pub fn open(key: &str, text: &str) -> Result<SecretFile, String> {
        let file = SecretFile::locate(key, text)?;
        file.read()?;
        Ok(file)
    }

    /// [`SecretFile::open`] without reading: for files whose content the caller checks itself.
    pub fn locate(key: &str, text: &str) -> Result<SecretFile, String> {
        SecretFile::resolve(key, text, std::env::var_os(CREDENTIALS_DIRECTORY))
    }

    /// [`SecretFile::open`] without reading, with the credentials directory passed in.
    fn resolve(
        key: &str,
        text: &str,
        credentials: Option<std::ffi::OsString>,
    ) -> Result<SecretFile, String> {
        if text.is_empty() {
            return Err(format!("{key} must not be empty"));
        }
        let named = Path::new(text);
        let path = match credentials {
            Some(dir) if named.is_relative() && !dir.is_empty() => Path::new(&dir).join(named),
            _ => named.to_owned(),
        };
        Ok(SecretFile {
            key: key.to_owned(),
            path,
        })
    }

    /// The configuration key that named the file.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's content, trimmed; an empty file is an error.
    pub fn read(&self) -> Result<Secret, String> {
        let bytes = self.read_bytes(MAX_SECRET_FILE)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{}: {} is not UTF-8", self.key, self.path.display()))?;
        let value = text.trim();
        if value.is_empty() {
            return Err(format!("{}: {} is empty", self.key, self.path.display()));
        }
        Ok(Secret(value.to_owned()))
    }

    /// The file's bytes, as they are (a PEM key); more than `max` is an error.
    pub fn read_bytes(&self, max: u64) -> Result<Vec<u8>, String> {
        let fail = |e: std::io::Error| {
            let hint = if self.path.is_relative() {
                format!(" (a relative path is looked up in ${CREDENTIALS_DIRECTORY}, not set here)")
            } else {
                String::new()
            };
            format!("{}: reading {}: {e}{hint}", self.key, self.path.display())
        };
        let file = std::fs::File::open(&self.path).map_err(fail)?;
        let mut bytes = Vec::new();
        file.take(max + 1).read_to_end(&mut bytes).map_err(fail)?;
        if bytes.len() as u64 > max {
            return Err(format!(
                "{}: {} is larger than {} KiB",
                self.key,
                self.path.display(),
                max / 1024
            ));
        }
        Ok(bytes)
    }
}

/// A secret given in the configuration or in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Written in the configuration file itself.
    Inline(Secret),
    /// Read from a file at each use.
    File(SecretFile),
}

impl Credential {
    /// The value now.
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            Credential::Inline(secret) => Ok(secret.clone()),
            Credential::File(file) => file.read(),
        }
    }

    /// One of `inline` (under `key`) and `file` (under `file_key`), or neither; both is an error.
    pub fn either(
        key: &str,
        inline: Option<&String>,
        file_key: &str,
        file: Option<&String>,
    ) -> Result<Option<Credential>, String> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(format!("give {key} or {file_key}, not both")),
            (Some(value), None) if value.is_empty() => Err(format!("{key} must not be empty")),
            (Some(value), None) => Ok(Some(Credential::Inline(Secret(value.clone())))),
            (None, Some(path)) => Ok(Some(Credential::File(SecretFile::open(file_key, path)?))),
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cw-secret-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    #[test]
    fn a_relative_path_names_a_credential_when_systemd_gives_a_directory() {
        let from_unit = SecretFile::resolve(
            "basic_auth.password_file",
            "am-password",
            Some("/run/c".into()),
        )
        .expect("valid");
        assert_eq!(from_unit.path(), Path::new("/run/c/am-password"));
        let absolute = SecretFile::resolve("k", "/etc/x", Some("/run/c".into())).expect("valid");
        assert_eq!(absolute.path(), Path::new("/etc/x"));
        let by_hand = SecretFile::resolve("k", "am-password", None).expect("valid");
        assert_eq!(by_hand.path(), Path::new("am-password"));
        let empty_dir = SecretFile::resolve("k", "x", Some("".into())).expect("valid");
        assert_eq!(empty_dir.path(), Path::new("x"));
        assert_eq!(
            SecretFile::resolve("tls_config.key_file", "", None).expect_err("empty"),
            "tls_config.key_file must not be empty"
        );
    }

    #[test]
    fn a_secret_is_trimmed_and_never_shown() {
        let dir = scratch("trim");
        let path = dir.join("token");
        std::fs::write(&path, "  s3cr3t-value\n").expect("write");
        let file = SecretFile::open("authorization.credentials_file", path.to_str().unwrap())
            .expect("readable");
        let secret = file.read().expect("readable");
        assert_eq!(secret.expose(), "s3cr3t-value");
        let shown = format!("{secret:?} {file:?} {:?}", Credential::File(file.clone()));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let inline = Credential::Inline(Secret::new("inline-s3cr3t".to_owned()));
        assert!(!format!("{inline:?}").contains("s3cr3t"));

        // Rotation: the next read sees the new content.
        std::fs::write(&path, "rotated\n").expect("write");
        assert_eq!(file.read().expect("readable").expose(), "rotated");

        std::fs::write(&path, "\n \n").expect("write");
        let empty = file.read().expect_err("empty");
        assert!(empty.ends_with("is empty"), "{empty}");
        std::fs::write(&path, vec![b'x'; 70 * 1024]).expect("write");
        assert!(file
            .read()
            .expect_err("large")
            .contains("larger than 64 KiB"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn errors_name_the_key_and_path_but_not_the_content() {
        let missing =
            SecretFile::open("basic_auth.password_file", "/nonexistent/pw").expect_err("missing");
        assert!(
            missing.starts_with("basic_auth.password_file: reading /nonexistent/pw: "),
            "{missing}"
        );
        let dir = scratch("utf8");
        let path = dir.join("bad");
        std::fs::write(&path, [0xff, 0xfe, b's']).expect("write");
        let bad = SecretFile::open("k", path.to_str().unwrap()).expect_err("not UTF-8");
        assert!(bad.ends_with("is not UTF-8"), "{bad}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn inline_and_file_forms_exclude_each_other() {
        let both = Credential::either(
            "basic_auth.password",
            Some(&"a".to_owned()),
            "basic_auth.password_file",
            Some(&"/x".to_owned()),
        );
        assert_eq!(
            both.expect_err("both"),
            "give basic_auth.password or basic_auth.password_file, not both"
        );
        assert_eq!(
            Credential::either("p", None, "pf", None).expect("neither"),
            None
        );
        assert_eq!(
            Credential::either("p", Some(&String::new()), "pf", None).expect_err("empty"),
            "p must not be empty"
        );
    }
}
