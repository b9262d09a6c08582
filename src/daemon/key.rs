//! The daemon's WireGuard key: its identity in every party, so it must survive restarts and
//! never be readable by other users.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Loads the private key at `path` (`wg genkey` format), or creates it (mode 0600). A link
/// there is refused, not followed: root would otherwise read or chmod whatever it points at.
pub fn load_or_create(path: &Path) -> Result<[u8; 32]> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    match opened {
        Ok(mut file) => {
            let mode = file.metadata()?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
                    "private key is readable by other users; fixing to 0600");
                file.set_permissions(fs::Permissions::from_mode(0o600))?;
            }
            let mut text = String::new();
            file.read_to_string(&mut text)
                .with_context(|| format!("cannot read {}", path.display()))?;
            parse(&text)
                .with_context(|| format!("{} is not a WireGuard private key", path.display()))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key)
                .map_err(|e| anyhow::anyhow!("no random numbers from the operating system: {e}"))?;
            // Clamping as `wg genkey` does, so the file is interchangeable with wg's.
            key[0] &= 248;
            key[31] = (key[31] & 127) | 64;
            if let Some(dir) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            // create_new: never overwrite a key another process wrote meanwhile.
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            writeln!(file, "{}", STANDARD.encode(key))?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "created a new WireGuard key");
            Ok(key)
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            bail!("{} is a link: refusing to follow it", path.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn parse(text: &str) -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    match STANDARD.decode_slice(text.trim(), &mut key) {
        Ok(32) => Ok(key),
        _ => bail!("expected 44 characters of base64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("lanrage-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("private.key");
        let first = load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), first);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), first);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::write(&path, "garbage").unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a WireGuard private key"),
            "{err:#}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_in_place_of_the_key_is_refused_and_its_target_untouched() {
        let dir = std::env::temp_dir().join(format!("lanrage-key-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("somebody-elses");
        fs::write(&target, "not yours\n").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.join("private.key");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(format!("{err:#}").contains("is a link"), "{err:#}");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(fs::read_to_string(&target).unwrap(), "not yours\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
