//! The internal token of `cbir up`: a random secret kept in the data folder,
//! made on first start and reused afterwards, so that the services of one
//! system (and the CLI commands that call them directly) share it and
//! nobody else has it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::TryRngCore;

/// The token's file name in the data folder.
pub const FILE_NAME: &str = "internal-token";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Whether a presented token equals the expected one, in time that does
/// not depend on where they differ (only on the length).
pub fn same(got: &[u8], expected: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(got, expected).into()
}

/// 256 bits from the operating system's CSPRNG, as 64 hex digits.
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(|e| {
        format!("the operating system gave no random bytes for the internal token: {e}")
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token in `data_dir`, if the file exists and holds one.
pub fn read(data_dir: &Path) -> Result<Option<String>, String> {
    let p = path(data_dir);
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read the internal token {}: {e} (delete it to make a new one)",
            p.display()
        )),
    }
}

/// The token in `data_dir`, made (mode 0600) on first use. A file others
/// may read is narrowed to 0600: the secret may have leaked, so say so.
pub fn load_or_create(data_dir: &Path) -> Result<String, String> {
    let p = path(data_dir);
    if let Some(t) = read(data_dir)? {
        let mode = std::fs::metadata(&p)
            .map_err(|e| e.to_string())?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
                format!(
                    "cannot make the internal token {} private: {e}",
                    p.display()
                )
            })?;
            tracing::warn!(
                file = %p.display(),
                mode = format!("{:o}", mode & 0o777),
                "the internal token was readable by other users: made private (0600); delete it and restart to make a new one"
            );
        }
        return Ok(t);
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create the data folder {}: {e}", data_dir.display()))?;
    let token = generate()?;
    // create_new: two `cbir up` starting at once must not overwrite each
    // other's token; the loser reads the winner's.
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p);
    let mut f = match created {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return read(data_dir)?
                .ok_or_else(|| format!("the internal token {} is empty: delete it", p.display()))
        }
        Err(e) => {
            return Err(format!(
                "cannot write the internal token {}: {e}",
                p.display()
            ))
        }
    };
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write the internal token {}: {e}", p.display()))?;
    tracing::info!(file = %p.display(), "made a new internal token for the services");
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_tokens() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"ab", b"abc"));
        assert!(!same(b"", b"abc"));
    }

    #[test]
    fn made_once_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("cbir-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = load_or_create(&dir).expect("created");
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()), "{t}");
        let mode = std::fs::metadata(path(&dir))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&dir).expect("reused"), t);
        assert_ne!(generate().expect("random"), t);
        std::fs::set_permissions(path(&dir), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert_eq!(load_or_create(&dir).expect("reused"), t);
        let mode = std::fs::metadata(path(&dir))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "narrowed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
