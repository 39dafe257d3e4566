//! Files and directories gatehouse creates are its own user's alone (SPEC §10): files 0600,
//! directories 0700, set when they are created rather than changed afterwards, so there is no
//! moment at which another user could open them.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the files gatehouse creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories gatehouse creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates `path` and any missing parents as 0700 directories; an existing directory is left as
/// it is (the operator chose it).
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Open options whose file, if created, is 0600.
pub fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// What gatehouse and sled keep in a store directory (`store.path`): sled's `db`, `conf`,
/// `snap.*` snapshots and `blobs/`, and gatehouse's `master.key` and `sms-outbox.log`. Nothing
/// else there is touched, so a `store.path` shared with other files leaves them as they are.
fn is_store_file(name: &str) -> bool {
    matches!(
        name,
        "db" | "conf" | "blobs" | "master.key" | "sms-outbox.log"
    ) || name.starts_with("snap.")
}

/// Takes group and other permissions off the store's files in `dir` (see [`is_store_file`]; the
/// contents of `blobs/` too; symbolic links left alone): for the files sled creates with modes of
/// its own choosing, and for those an older gatehouse created. What cannot be changed (not ours)
/// is named in a warning; `dir` itself is not changed.
pub fn tighten_store(dir: &Path) {
    tighten(dir, &is_store_file);
}

fn tighten(dir: &Path, wanted: &dyn Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(wanted) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() && !meta.is_file() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            // The owner's bits stay; group's and others' go.
            if let Err(e) =
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700))
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot make the file private to gatehouse's user");
            }
        }
        if meta.is_dir() {
            tighten(&path, &|_| true);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_directories_and_files_are_private_and_the_stores_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        open_options().write(true).create(true).open(&file).unwrap();
        assert_eq!(mode(&file), 0o600);

        // A store directory with sled's files and someone else's.
        let store = root.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let loose = |path: &Path, m: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap();
        };
        let blobs = store.join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        loose(&blobs, 0o755);
        for name in [
            "db",
            "conf",
            "snap.0000000000001234",
            "blobs/7",
            "other.txt",
        ] {
            std::fs::write(store.join(name), "x").unwrap();
            loose(&store.join(name), 0o644);
        }
        tighten_store(&store);
        assert_eq!(mode(&blobs), 0o700);
        for name in ["db", "conf", "snap.0000000000001234", "blobs/7"] {
            assert_eq!(mode(&store.join(name)), 0o600, "{name}");
        }
        assert_eq!(mode(&store.join("other.txt")), 0o644, "not the store's");
    }
}
