//! The daemon's data directory: its WireGuard key, settings database and party state. The
//! daemon runs as root, so a directory that another user can write to would let that user
//! put links there (`private.key` pointing at `/etc/shadow`) for root to chmod, create or
//! overwrite. Such a directory is refused, and files in it are opened without following
//! links.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Creates `dir` (mode 0700) if it is missing, and checks that only its owner, who must be
/// the user the daemon runs as, can change what is in it.
pub fn prepare(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let meta = fs::metadata(dir)
        .with_context(|| format!("cannot read the data directory {}", dir.display()))?;
    check(dir, &meta, effective_uid())
}

/// The checks of [`prepare`] on what `meta` says of `dir`, for the user `uid`.
fn check(dir: &Path, meta: &fs::Metadata, uid: u32) -> Result<()> {
    if !meta.is_dir() {
        bail!("the data directory {} is not a directory", dir.display());
    }
    if meta.uid() != uid {
        bail!(
            "refusing the data directory {}: it belongs to user {}, not to the user the daemon \
             runs as ({uid}); another user could replace its files (chown {uid} it, or choose \
             another with --data-dir)",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        bail!(
            "refusing the data directory {}: other users can write to it (mode {mode:o}), and \
             could replace the key or the settings with links (chmod 700 it)",
            dir.display()
        );
    }
    Ok(())
}

/// The user this process runs as: the owner of its `/proc/self`.
fn effective_uid() -> u32 {
    fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lanrage-data-dir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_private_directory_is_made_and_taken() {
        let dir = scratch("new").join("sub");
        prepare(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        prepare(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&dir).unwrap();
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_to_or_own_is_refused() {
        let dir = scratch("open");
        prepare(&dir).unwrap();
        for mode in [0o777, 0o770, 0o1777, 0o722] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let err = prepare(&dir).unwrap_err().to_string();
            assert!(
                err.contains("other users can write to it"),
                "{mode:o}: {err}"
            );
        }
        let meta = fs::metadata(&dir).unwrap();
        let err = check(&dir, &meta, meta.uid() + 1).unwrap_err().to_string();
        assert!(
            err.contains(&format!("belongs to user {}", meta.uid())),
            "{err}"
        );
        let file = dir.join("file");
        fs::write(&file, "").unwrap();
        let err = prepare(&file).unwrap_err();
        assert!(format!("{err:#}").contains("cannot create"), "{err:#}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
