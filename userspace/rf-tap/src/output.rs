//! How rf-tap creates the files it writes (captures, archives, JSONL/HAR, replay results):
//! private to their owner (0600, or `--file-mode`), never through a symbolic link. A symlink
//! at an output path is refused; anything else there is replaced by a new file (created
//! beside under a temporary name and renamed over it, which replaces a link planted in the
//! meantime rather than following it).

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

static MODE: AtomicU32 = AtomicU32::new(0o600);

/// The permission bits of every file rf-tap creates from now on.
pub fn set_mode(mode: u32) {
    MODE.store(mode & 0o7777, Ordering::Relaxed);
}

pub fn mode() -> u32 {
    MODE.load(Ordering::Relaxed)
}

/// Directories rf-tap creates for its files: the file mode with search bits where it has
/// read bits (0600 → 0700).
pub fn dir_mode() -> u32 {
    let m = mode();
    m | ((m & 0o444) >> 2)
}

/// `--file-mode 0640`: octal permission bits.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim().trim_start_matches("0o");
    u32::from_str_radix(t, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("`{s}` is not an octal file mode (e.g. 0600, 0640)"))
}

fn symlink_error(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} is a symbolic link; rf-tap does not write through links (remove it, or name the file it points to)",
            path.display()
        ),
    )
}

/// Refuses a symbolic link at `path`.
pub fn refuse_symlink(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(symlink_error(path)),
        _ => Ok(()),
    }
}

/// A temporary name beside `dest` (`.NAME.rf-tap-PID.tmp`).
pub fn temp_beside(dest: &Path) -> io::Result<PathBuf> {
    let name = dest.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file name", dest.display()),
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".rf-tap-{}.tmp", std::process::id()));
    Ok(dest.with_file_name(tmp))
}

/// A new file, created exclusively (never following a link) with rf-tap's mode.
pub fn create_new(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode())
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // The umask may have taken bits `--file-mode` asked for.
    f.set_permissions(std::fs::Permissions::from_mode(mode()))?;
    Ok(f)
}

/// Creates the output file `path`, replacing a regular file there and refusing a symlink.
pub fn create(path: &Path) -> io::Result<File> {
    refuse_symlink(path)?;
    if std::fs::symlink_metadata(path).is_err() {
        // Nothing there: create it where it is asked for (O_EXCL | O_NOFOLLOW: a link
        // planted since is refused by the kernel, not followed).
        return create_new(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EEXIST) || e.raw_os_error() == Some(libc::ELOOP) {
                symlink_error(path)
            } else {
                e
            }
        });
    }
    let tmp = temp_beside(path)?;
    let _ = std::fs::remove_file(&tmp);
    let f = create_new(&tmp)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(f)
}

/// Renames a finished temporary file over `dest`, refusing a symlink at `dest`.
pub fn commit(tmp: &Path, dest: &Path) -> io::Result<()> {
    refuse_symlink(dest)?;
    std::fs::rename(tmp, dest)
}

/// Creates a directory for rf-tap's files (and its parents) with [`dir_mode`].
pub fn create_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(dir_mode())
        .create(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rf-tap-output-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn files_are_private_and_links_are_refused() {
        let d = scratch("a");
        let out = d.join("out.pcap");
        create(&out).unwrap().write_all(b"one").unwrap();
        let m = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
        // An existing file is replaced by a new one (a new inode, never truncated through).
        let before = std::fs::metadata(&out).unwrap();
        let hard = d.join("hard");
        std::fs::hard_link(&out, &hard).unwrap();
        create(&out).unwrap().write_all(b"two").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"two");
        assert_eq!(
            std::fs::read(&hard).unwrap(),
            b"one",
            "the old file is untouched"
        );
        use std::os::unix::fs::MetadataExt;
        assert_ne!(std::fs::metadata(&out).unwrap().ino(), before.ino());
        // A symlink: refused, its target untouched.
        let target = d.join("precious");
        std::fs::write(&target, b"keep").unwrap();
        let link = d.join("link.pcap");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = create(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(commit(&out, &link).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // A dangling link too.
        let dangling = d.join("dangling");
        std::os::unix::fs::symlink(d.join("nothing"), &dangling).unwrap();
        assert!(create(&dangling).is_err());
        assert!(!d.join("nothing").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn modes_parse_and_directories_get_search_bits() {
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("0999").is_err() && parse_mode("rw").is_err());
        assert_eq!(mode(), 0o600);
        assert_eq!(dir_mode(), 0o700);
    }
}
