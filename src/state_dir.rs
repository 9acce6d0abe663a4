//! The state directory, opened once and entered only through that handle.
//!
//! The directory belongs to the daemon's user, and root runs commands
//! against it (`sudo macha-approve`, `macha-check`). Whoever controls that
//! user chooses every name in it: a link at `decisions.jsonl` to a file of
//! root's would have root append to that file. So nothing in here is opened
//! by path: the directory is opened once (`O_NOFOLLOW`), and every file and
//! subdirectory below it relative to that handle, never through a link
//! (`O_NOFOLLOW`), never blocking on a FIFO (`O_NONBLOCK`), and only when
//! it is what it should be (a regular file, a directory), checked on the
//! open handle. Temporary files are created exclusively (`O_EXCL`) after
//! whatever had their name is removed (a link is removed, not what it
//! points to). Reads are bounded. What macha creates here is its owner's
//! alone: files 0600, directories 0700.
//!
//! Every refusal names the file and why, so an administrator who finds one
//! knows where to look.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// The mode of every file macha creates in its state directory.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every directory macha creates there.
pub const DIR_MODE: u32 = 0o700;

/// Why a file of the state directory was not opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path} is a symbolic link: refused (macha never follows a link in its state directory; remove the link)")]
    Link { path: String },
    #[error("{path} is {found}, not {wanted}: refused (macha only uses what it created there; remove it)")]
    WrongType { path: String, found: &'static str, wanted: &'static str },
    #[error("{path} is larger than {limit} bytes, the most macha reads of it: refused")]
    TooLarge { path: String, limit: u64 },
    #[error("{name:?} is not a plain file name in {dir}")]
    BadName { dir: String, name: String },
    // The cause is part of the text and deliberately not a `source`, so a
    // chain of causes does not print it twice.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

impl StateError {
    /// Whether the file (or directory) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound)
    }
}

impl From<StateError> for std::io::Error {
    fn from(e: StateError) -> Self {
        let kind = match &e {
            StateError::Io { error, .. } => error.kind(),
            StateError::BadName { .. } => std::io::ErrorKind::InvalidInput,
            StateError::Link { .. } | StateError::WrongType { .. } | StateError::TooLarge { .. } => {
                std::io::ErrorKind::Other
            }
        };
        std::io::Error::new(kind, e)
    }
}

/// What `lstat` says about a name, without following it.
#[derive(Debug, Clone)]
pub struct Meta {
    stat: FileStat,
}

impl Meta {
    fn kind(&self) -> SFlag {
        SFlag::from_bits_truncate(self.stat.st_mode & SFlag::S_IFMT.bits())
    }
    pub fn is_file(&self) -> bool {
        self.kind() == SFlag::S_IFREG
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == SFlag::S_IFDIR
    }
    pub fn is_link(&self) -> bool {
        self.kind() == SFlag::S_IFLNK
    }
    pub fn len(&self) -> u64 {
        u64::try_from(self.stat.st_size).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The permission bits (`0o7777`).
    pub fn permissions(&self) -> u32 {
        self.stat.st_mode & 0o7777
    }
    pub fn uid(&self) -> u32 {
        self.stat.st_uid
    }
    /// Whether `open` (the metadata of an open file) is this very file: a
    /// file renamed after it was opened is no longer what the name holds.
    pub fn is_same_file(&self, open: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.stat.st_dev == open.dev() && self.stat.st_ino == open.ino()
    }
    pub fn modified(&self) -> SystemTime {
        let secs = u64::try_from(self.stat.st_mtime).unwrap_or(0);
        let nanos = u32::try_from(self.stat.st_mtime_nsec).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999))
    }
    /// "a directory", "a FIFO", ... for messages.
    pub fn described(&self) -> &'static str {
        match self.kind() {
            k if k == SFlag::S_IFREG => "a regular file",
            k if k == SFlag::S_IFDIR => "a directory",
            k if k == SFlag::S_IFLNK => "a symbolic link",
            k if k == SFlag::S_IFIFO => "a FIFO",
            k if k == SFlag::S_IFSOCK => "a socket",
            k if k == SFlag::S_IFCHR => "a character device",
            k if k == SFlag::S_IFBLK => "a block device",
            _ => "of an unknown type",
        }
    }
}

/// What a name is opened as.
#[derive(Clone, Copy)]
enum Want {
    File,
    Dir,
}

impl Want {
    fn fits(self, m: &Meta) -> bool {
        match self {
            Want::File => m.is_file(),
            Want::Dir => m.is_dir(),
        }
    }
    fn described(self) -> &'static str {
        match self {
            Want::File => "a regular file",
            Want::Dir => "a directory",
        }
    }
}

/// The state directory (or one of its subdirectories), open.
#[derive(Debug, Clone)]
pub struct StateDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);
/// Every file is opened with these: never through a link, never waiting on
/// a FIFO, never becoming a controlling terminal.
const FILE_FLAGS: OFlag = OFlag::O_NOFOLLOW.union(OFlag::O_NONBLOCK).union(OFlag::O_CLOEXEC).union(OFlag::O_NOCTTY);

fn file_mode() -> Mode {
    Mode::from_bits_truncate(FILE_MODE)
}

impl StateDir {
    /// Opens the directory at `path`, which must exist. The last component
    /// must not be a link; the path above it is trusted (root's).
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let shown = path.display().to_string();
        let fd = nix::fcntl::open(path, DIR_FLAGS, Mode::empty()).map_err(|errno| {
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => StateError::Link { path: shown.clone() },
                Ok(m) if !m.is_dir() => {
                    StateError::WrongType { path: shown.clone(), found: "not a directory", wanted: "a directory" }
                }
                _ => StateError::Io { path: shown.clone(), error: errno.into() },
            }
        })?;
        Ok(Self { fd: Arc::new(fd), path: path.to_path_buf() })
    }

    /// Opens the directory at `path`, creating it (and what is missing above
    /// it) owner-only first if it does not exist.
    pub fn create(path: &Path) -> Result<Self, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        if std::fs::symlink_metadata(path).is_err() {
            std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(path).map_err(|error| StateError::Io {
                path: format!("cannot create the state directory {}", path.display()),
                error,
            })?;
        }
        Self::open(path)
    }

    /// The directory as configured, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where `name` is, for messages.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Where `name` is on the file system as the directory is open now:
    /// the directory's own path as the kernel knows it (no links in it),
    /// for libraries that only take a path (SQLite, which is asked not to
    /// follow links in it either).
    pub fn real_path_of(&self, name: &str) -> PathBuf {
        match nix::fcntl::readlink(format!("/proc/self/fd/{}", self.fd.as_raw_fd()).as_str()) {
            Ok(p) if Path::new(&p).is_absolute() => PathBuf::from(p).join(name),
            _ => self.path_of(name),
        }
    }

    fn shown(&self, name: &str) -> String {
        self.path_of(name).display().to_string()
    }

    fn io(&self, name: &str, error: impl Into<std::io::Error>) -> StateError {
        StateError::Io { path: self.shown(name), error: error.into() }
    }

    /// `name` must be one plain component: no `/`, not `.` or `..`.
    fn check_name<'n>(&self, name: &'n str) -> Result<&'n str, StateError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            return Err(StateError::BadName { dir: self.path.display().to_string(), name: name.to_owned() });
        }
        Ok(name)
    }

    /// What is at `name`, not following a link; `None` when nothing is.
    pub fn metadata(&self, name: &str) -> Result<Option<Meta>, StateError> {
        let name = self.check_name(name)?;
        match fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(Meta { stat })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(self.io(name, e)),
        }
    }

    /// The directory itself.
    pub fn own_metadata(&self) -> Result<Meta, StateError> {
        fstat(self.fd.as_fd())
            .map(|stat| Meta { stat })
            .map_err(|e| StateError::Io { path: self.path.display().to_string(), error: e.into() })
    }

    /// Why opening `name` failed with `errno`: a link or something of the
    /// wrong type is named as such.
    fn refusal(&self, name: &str, errno: Errno, wanted: Want) -> StateError {
        match self.metadata(name) {
            Ok(Some(m)) if m.is_link() => StateError::Link { path: self.shown(name) },
            Ok(Some(m)) if !wanted.fits(&m) => {
                StateError::WrongType { path: self.shown(name), found: m.described(), wanted: wanted.described() }
            }
            _ => self.io(name, errno),
        }
    }

    /// Opens the file `name` with `flags` (plus `FILE_FLAGS`) and checks on
    /// the open handle that it is a regular file.
    fn open_file(&self, name: &str, flags: OFlag) -> Result<File, StateError> {
        let name = self.check_name(name)?;
        let fd = openat(self.fd.as_fd(), name, flags | FILE_FLAGS, file_mode())
            .map_err(|e| self.refusal(name, e, Want::File))?;
        let stat = fstat(fd.as_fd()).map_err(|e| self.io(name, e))?;
        let meta = Meta { stat };
        if !meta.is_file() {
            return Err(StateError::WrongType {
                path: self.shown(name),
                found: meta.described(),
                wanted: "a regular file",
            });
        }
        Ok(File::from(fd))
    }

    /// Opens `name` for appending (and reading), creating it owner-only.
    pub fn append(&self, name: &str) -> Result<File, StateError> {
        self.open_file(name, OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT)
    }

    /// Creates `name`, which must not exist yet, owner-only, for writing.
    pub fn create_new(&self, name: &str) -> Result<File, StateError> {
        self.open_file(name, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL)
    }

    /// Opens `name` for reading; `None` when it does not exist.
    pub fn open_read(&self, name: &str) -> Result<Option<File>, StateError> {
        match self.open_file(name, OFlag::O_RDONLY) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The whole of `name`, at most `limit` bytes; `None` when it does not exist.
    pub fn read(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, StateError> {
        let Some(file) = self.open_read(name)? else { return Ok(None) };
        let too_large = || StateError::TooLarge { path: self.shown(name), limit };
        let len = file.metadata().map_err(|e| self.io(name, e))?.len();
        if len > limit {
            return Err(too_large());
        }
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // One byte more than allowed tells a file that grew meanwhile.
        file.take(limit.saturating_add(1)).read_to_end(&mut data).map_err(|e| self.io(name, e))?;
        if data.len() as u64 > limit {
            return Err(too_large());
        }
        Ok(Some(data))
    }

    /// Replaces `name` with `content`, owner-only (`FILE_MODE`), so that a
    /// reader sees the old or the new content, never a mix, and a power cut
    /// leaves one of the two (see `replace_with_mode`). This is the one
    /// atomic replace of macha: every file rewritten whole goes through it.
    pub fn replace(&self, name: &str, content: &[u8]) -> Result<(), StateError> {
        self.replace_with_mode(name, content, FILE_MODE)
    }

    /// Replaces `name` with `content` with permission bits `mode`: written
    /// to a temporary file of this process (`NAME.PID.tmp`, created
    /// exclusively relative to this directory's handle, never through a
    /// link; whatever had its name is removed first), given `mode` on the
    /// open file whatever the umask, synced, renamed over `name`
    /// (`renameat`), and then the directory synced, so the rename itself
    /// survives a power cut. A link at `name`, or anything but a regular
    /// file, is refused (the rename would not follow it, but someone
    /// planted it), checked right before the rename; on any error the
    /// temporary file is removed and `name` is as it was.
    fn replace_with_mode(&self, name: &str, content: &[u8], mode: u32) -> Result<(), StateError> {
        let name = self.check_name(name)?;
        let tmp = format!("{name}.{}.tmp", std::process::id());
        // Left by a crash of an earlier process with this pid, or planted:
        // either way it goes (unlinking a link removes the link only).
        self.remove(&tmp)?;
        let mut file = self.create_new(&tmp)?;
        let written = file
            .write_all(content)
            .and_then(|()| file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode)))
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io(&tmp, e))
            .and_then(|()| self.replaceable(name))
            .and_then(|()| {
                renameat(self.fd.as_fd(), tmp.as_str(), self.fd.as_fd(), name).map_err(|e| self.io(name, e))
            });
        if written.is_err() {
            let _ = self.remove(&tmp);
            return written;
        }
        self.sync()
    }

    /// Whether `name` may be replaced: absent, or a regular file.
    fn replaceable(&self, name: &str) -> Result<(), StateError> {
        match self.metadata(name)? {
            Some(m) if m.is_link() => Err(StateError::Link { path: self.shown(name) }),
            Some(m) if !m.is_file() => {
                Err(StateError::WrongType { path: self.shown(name), found: m.described(), wanted: "a regular file" })
            }
            _ => Ok(()),
        }
    }

    /// Syncs the directory itself: the names created, renamed or removed
    /// in it reach the disk.
    fn sync(&self) -> Result<(), StateError> {
        nix::unistd::fsync(self.fd.as_fd())
            .map_err(|e| StateError::Io { path: self.path.display().to_string(), error: e.into() })
    }

    /// Sets the modification time of `name` to now, without following a
    /// link and without writing its content; `false` when it does not
    /// exist.
    pub fn touch(&self, name: &str) -> Result<bool, StateError> {
        let name = self.check_name(name)?;
        let times = (nix::sys::time::TimeSpec::UTIME_OMIT, nix::sys::time::TimeSpec::UTIME_NOW);
        match nix::sys::stat::utimensat(
            self.fd.as_fd(),
            name,
            &times.0,
            &times.1,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        ) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(self.io(name, e)),
        }
    }

    /// Renames `from` to `to` in this directory (neither is followed).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), StateError> {
        let (from, to) = (self.check_name(from)?, self.check_name(to)?);
        renameat(self.fd.as_fd(), from, self.fd.as_fd(), to).map_err(|e| self.io(from, e))
    }

    /// Removes the file (or link) `name`; false when there was none.
    pub fn remove(&self, name: &str) -> Result<bool, StateError> {
        let name = self.check_name(name)?;
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(Errno::EISDIR) => {
                Err(StateError::WrongType { path: self.shown(name), found: "a directory", wanted: "a file" })
            }
            Err(e) => Err(self.io(name, e)),
        }
    }

    /// The names in this directory (not `.` and `..`), in no order.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let shown = || self.path.display().to_string();
        let mut dir = nix::dir::Dir::openat(self.fd.as_fd(), ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| StateError::Io { path: shown(), error: e.into() })?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| StateError::Io { path: shown(), error: e.into() })?;
            let name = entry.file_name().to_string_lossy();
            if name != "." && name != ".." {
                names.push(name.into_owned());
            }
        }
        Ok(names)
    }

    /// The subdirectory `name`, created owner-only if it does not exist.
    pub fn subdir(&self, name: &str) -> Result<StateDir, StateError> {
        let name = self.check_name(name)?;
        match mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(DIR_MODE)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(self.io(name, e)),
        }
        self.open_subdir(name)
    }

    /// The subdirectory `name` if it exists.
    pub fn existing_subdir(&self, name: &str) -> Result<Option<StateDir>, StateError> {
        match self.open_subdir(self.check_name(name)?) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open_subdir(&self, name: &str) -> Result<StateDir, StateError> {
        let fd =
            openat(self.fd.as_fd(), name, DIR_FLAGS, Mode::empty()).map_err(|e| self.refusal(name, e, Want::Dir))?;
        Ok(StateDir { fd: Arc::new(fd), path: self.path_of(name) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn dir() -> (tempfile::TempDir, StateDir) {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        (t, s)
    }

    /// A file outside the state directory with known content.
    fn outside(content: &str) -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("precious");
        std::fs::write(&p, content).unwrap();
        (t, p)
    }

    #[test]
    fn a_link_is_refused_by_every_way_in_and_its_target_is_untouched() {
        let (t, s) = dir();
        let (_o, target) = outside("precious\n");
        symlink(&target, t.path().join("f")).unwrap();
        let attempts: [(&str, Result<(), StateError>); 4] = [
            ("append", s.append("f").map(drop)),
            ("open_read", s.open_read("f").map(drop)),
            ("read", s.read("f", 100).map(drop)),
            ("replace", s.replace("f", b"new")),
        ];
        for (how, result) in attempts {
            let e = result.expect_err(how).to_string();
            assert!(e.contains(&format!("{}/f is a symbolic link", t.path().display())), "{how}: {e}");
        }
        let e = s.create_new("f").unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        assert!(std::fs::symlink_metadata(t.path().join("f")).unwrap().file_type().is_symlink(), "left in place");
    }

    #[test]
    fn a_linked_directory_is_refused_as_the_state_directory_and_below_it() {
        let (t, s) = dir();
        let (o, _) = outside("x");
        symlink(o.path(), t.path().join("sub")).unwrap();
        for e in [s.subdir("sub").unwrap_err(), s.existing_subdir("sub").unwrap_err()] {
            assert!(e.to_string().contains("/sub is a symbolic link"), "{e}");
        }
        let e = StateDir::open(&t.path().join("sub")).unwrap_err();
        assert!(e.to_string().contains("/sub is a symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(o.path()).unwrap().count(), 1, "nothing was created through the link");
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_without_blocking() {
        let (t, s) = dir();
        nix::unistd::mkfifo(&t.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(t.path().join("dir")).unwrap();
        for name in ["fifo", "dir"] {
            for e in [s.read(name, 10).unwrap_err(), s.append(name).unwrap_err()] {
                assert!(e.to_string().contains("not a regular file"), "{name}: {e}");
            }
        }
        let e = s.read("fifo", 10).unwrap_err().to_string();
        assert!(e.contains("fifo is a FIFO, not a regular file"), "{e}");
    }

    #[test]
    fn a_planted_temporary_name_is_removed_not_followed() {
        let (t, s) = dir();
        let (_o, target) = outside("precious\n");
        symlink(&target, t.path().join(format!("cursor.{}.tmp", std::process::id()))).unwrap();
        s.replace("cursor", b"new").unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("cursor")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        let left: Vec<String> = s.list().unwrap();
        assert_eq!(left, ["cursor"], "no temporary file is left");
    }

    #[test]
    fn touch_sets_the_time_alone_and_never_through_a_link() {
        let (t, s) = dir();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let (_o, target) = outside("precious\n");
        std::fs::File::options().write(true).open(&target).unwrap().set_modified(old).unwrap();
        symlink(&target, t.path().join("link")).unwrap();
        std::fs::write(t.path().join("status.json"), "{}").unwrap();
        std::fs::File::options().write(true).open(t.path().join("status.json")).unwrap().set_modified(old).unwrap();

        assert!(s.touch("status.json").unwrap());
        let meta = s.metadata("status.json").unwrap().unwrap();
        assert!(meta.modified() > old, "the time is set");
        assert_eq!(std::fs::read_to_string(t.path().join("status.json")).unwrap(), "{}", "the content is not");
        // A link's own time may change; what it points to is left alone.
        s.touch("link").unwrap();
        assert_eq!(std::fs::metadata(&target).unwrap().modified().unwrap(), old);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        assert!(!s.touch("absent").unwrap(), "nothing is created");
        assert!(s.metadata("absent").unwrap().is_none());
        assert!(s.touch("../escape").is_err(), "a name that is not plain is refused");
    }

    #[test]
    fn a_replace_gives_the_mode_asked_for_whatever_the_umask_and_the_file_before() {
        let (t, s) = dir();
        let mode = |name: &str| std::fs::metadata(t.path().join(name)).unwrap().mode() & 0o7777;
        std::fs::write(t.path().join("status.json"), "old").unwrap();
        std::fs::set_permissions(t.path().join("status.json"), std::fs::Permissions::from_mode(0o644)).unwrap();
        s.replace("status.json", b"new").unwrap();
        assert_eq!(mode("status.json"), 0o600);
        assert_eq!(std::fs::read_to_string(t.path().join("status.json")).unwrap(), "new");
        // Bits a umask of 022 would clear are kept: the mode is set on the open file.
        s.replace_with_mode("shared", b"x", 0o666).unwrap();
        assert_eq!(mode("shared"), 0o666);
        s.replace_with_mode("shared", b"y", 0o640).unwrap();
        assert_eq!(mode("shared"), 0o640);
    }

    #[test]
    fn a_refused_replace_leaves_no_temporary_file_and_the_target_as_it_was() {
        let (t, s) = dir();
        let (_o, target) = outside("precious\n");
        symlink(&target, t.path().join("cursor")).unwrap();
        std::fs::create_dir(t.path().join("notes")).unwrap();
        let e = s.replace("cursor", b"new").unwrap_err().to_string();
        assert!(e.contains("/cursor is a symbolic link"), "{e}");
        let e = s.replace("notes", b"new").unwrap_err().to_string();
        assert!(e.contains("/notes is a directory, not a regular file"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n", "the link was not followed");
        assert!(std::fs::symlink_metadata(t.path().join("cursor")).unwrap().file_type().is_symlink());
        let mut left = s.list().unwrap();
        left.sort();
        assert_eq!(left, ["cursor", "notes"], "no temporary file is left");
    }

    #[test]
    fn reads_are_bounded_and_name_the_limit() {
        let (t, s) = dir();
        std::fs::write(t.path().join("big"), vec![b'x'; 101]).unwrap();
        let e = s.read("big", 100).unwrap_err().to_string();
        assert!(e.contains("/big is larger than 100 bytes"), "{e}");
        assert_eq!(s.read("big", 101).unwrap().unwrap().len(), 101);
        assert_eq!(s.read("absent", 1).unwrap(), None);
    }

    #[test]
    fn what_macha_creates_is_owner_only() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::create(&t.path().join("state")).unwrap();
        s.append("log").unwrap();
        s.create_new("new").unwrap();
        s.replace("replaced", b"x").unwrap();
        let sub = s.subdir("sub").unwrap();
        sub.append("inner").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        let root = t.path().join("state");
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("sub")), 0o700);
        for f in ["log", "new", "replaced", "sub/inner"] {
            assert_eq!(mode(&root.join(f)), 0o600, "{f}");
        }
    }

    #[test]
    fn names_are_single_components() {
        let (_t, s) = dir();
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(matches!(s.append(bad), Err(StateError::BadName { .. })), "{bad:?}");
        }
    }
}
