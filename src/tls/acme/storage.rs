//! Where ACME state lives on disk: one directory per ACME server (directory URL) under
//! `storage`, holding the account credentials and each certificate with its key, all
//! owner-only and replaced atomically.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One ACME server's directory under the `storage` root:
/// `<root>/<host>-<8 hex digits of SHA-256(directory URL)>/` with `account.json` (the
/// account URL and its PKCS#8 key, instant-acme's credentials) and `<domain>.crt` /
/// `<domain>.key` (PEM chain, leaf first, and its private key) named by a certificate's
/// first domain. Directories are 0700 and files 0600.
#[derive(Debug, Clone)]
pub struct Storage {
    dir: PathBuf,
}

impl Storage {
    /// Opens (creating, 0700) the directory of the server at `directory_url` under `root`.
    /// Errors: the directory cannot be created or is not writable.
    pub fn open(root: &Path, directory_url: &str) -> std::io::Result<Self> {
        let dir = root.join(server_dir_name(directory_url));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        // A directory made by hand keeps its owner's choice of mode, except that others
        // never get to read the keys inside.
        let mode = std::fs::metadata(&dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode & 0o700))?;
        }
        Ok(Self { dir })
    }

    /// This server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the account credentials, `account.json` in this server's directory.
    pub fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The stored account credentials (JSON), if any.
    pub fn account(&self) -> std::io::Result<Option<Vec<u8>>> {
        read_if_exists(&self.account_path())
    }

    /// Stores the account credentials (JSON), replacing any.
    pub fn save_account(&self, json: &[u8]) -> std::io::Result<()> {
        write_private(&self.account_path(), json)
    }

    /// The stored certificate chain and key (PEM) named `name`, if both exist.
    pub fn certificate(&self, name: &str) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let (cert, key) = self.cert_paths(name);
        Ok(match (read_if_exists(&cert)?, read_if_exists(&key)?) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        })
    }

    /// Stores a certificate chain and its key (PEM) as `name`: the key first, so that a
    /// crash in between leaves a mismatched pair, refused at the next start (and ordered
    /// again), never a certificate served with a stale key.
    pub fn save_certificate(&self, name: &str, cert: &[u8], key: &[u8]) -> std::io::Result<()> {
        let (cert_path, key_path) = self.cert_paths(name);
        write_private(&key_path, key)?;
        write_private(&cert_path, cert)
    }

    /// The certificate and key file of `name`.
    pub fn cert_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }
}

/// `<host>-<8 hex>`: readable, and unique per directory URL (two URLs on one host, such
/// as a CA's staging and production directories, get two accounts).
fn server_dir_name(directory_url: &str) -> String {
    let host = http::Uri::try_from(directory_url)
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_default();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = Sha256::digest(directory_url.as_bytes());
    format!("{host}-{}", hex::encode(&digest[..4]))
}

fn read_if_exists(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` atomically: a 0600 temporary file in the same directory,
/// flushed to disk, renamed over `path`, then the directory synced, so a reader (or a
/// restart after a crash) sees the old content or the new, never a part.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_owner_only_and_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        let s = Storage::open(root.path(), "https://127.0.0.1:14000/dir").unwrap();
        assert!(s
            .dir()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("127.0.0.1-"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(s.dir()), 0o700);
        assert_eq!(s.account().unwrap(), None);
        s.save_account(b"{\"a\":1}").unwrap();
        s.save_account(b"{\"a\":2}").unwrap();
        assert_eq!(s.account().unwrap().as_deref(), Some(&b"{\"a\":2}"[..]));
        assert_eq!(mode(&s.account_path()), 0o600);
        s.save_certificate("a.test", b"CERT", b"KEY").unwrap();
        let (c, k) = s.cert_paths("a.test");
        assert_eq!((mode(&c), mode(&k)), (0o600, 0o600));
        assert_eq!(
            s.certificate("a.test").unwrap(),
            Some((b"CERT".to_vec(), b"KEY".to_vec()))
        );
        let left: Vec<_> = std::fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "no temporary file left: {left:?}");
        let other = Storage::open(root.path(), "https://127.0.0.1:14000/other").unwrap();
        assert_ne!(other.dir(), s.dir(), "one account per directory URL");
    }
}
