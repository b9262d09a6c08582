//! The relay secret on disk: 64 hex digits in a file only its owner can read, shared by a
//! control server and its relays.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use lanrage_control::relay::RelaySecret;

/// Reads the secret, or makes a new one (mode 0600) when the file does not exist.
pub fn load_or_create(path: &Path) -> Result<RelaySecret> {
    if path.exists() {
        return load(path);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no random numbers from the operating system: {e}"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory of {}", path.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the relay secret {}", path.display()))?;
    writeln!(file, "{}", hex::encode(bytes))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the relay secret {}", path.display()))?;
    tracing::info!(path = %path.display(), "created a relay secret; give relays a copy");
    Ok(RelaySecret::new(bytes))
}

/// Reads the secret. One that other users can read is refused, as ssh refuses such a key:
/// whoever reads it can mint grants for any relay of the server.
pub fn load(path: &Path) -> Result<RelaySecret> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read the relay secret {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the relay secret {} can be read by other users (mode {mode:o}): refusing it; \
             `chmod 600 {}`, and make a new one if others may have read it",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the relay secret {}", path.display()))?;
    let mut bytes = [0u8; 32];
    if hex::decode_to_slice(text.trim(), &mut bytes).is_err() {
        bail!(
            "{} does not hold a relay secret (64 hex digits expected)",
            path.display()
        );
    }
    Ok(RelaySecret::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("lanrage-secret-{}", std::process::id()));
        let path = dir.join("relay.secret");
        let _ = std::fs::remove_dir_all(&dir);
        let made = load_or_create(&path).unwrap();
        let again = load_or_create(&path).unwrap();
        assert_eq!(made.as_bytes(), again.as_bytes());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "not hex").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
        std::fs::write(&path, hex::encode([7; 32])).unwrap();
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = load(&path).unwrap_err().to_string();
            assert!(
                err.contains("can be read by other users"),
                "{mode:o}: {err}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(load(&path).unwrap().as_bytes(), &[7; 32]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
