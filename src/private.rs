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

/// Takes group and other permissions off what is inside `dir` (recursively, symbolic links
/// left alone): for files that a library creates with its own modes (sled's `db`, `conf`,
/// snapshots and blobs), and for those an older gatehouse created. What cannot be changed (not
/// ours) is named in a warning; `dir` itself is not changed.
pub fn tighten(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
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
            tighten(&path);
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
    fn created_directories_and_files_are_private_and_others_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        open_options().write(true).create(true).open(&file).unwrap();
        assert_eq!(mode(&file), 0o600);

        let loose = dir.join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        let inner = loose.join("g");
        std::fs::write(&inner, "x").unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o664)).unwrap();
        tighten(root.path());
        assert_eq!(mode(&loose), 0o700);
        assert_eq!(mode(&inner), 0o600);
    }
}
