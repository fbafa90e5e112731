//! The files a trace writes at its end (--svg, --pprof), reserved before it
//! starts, so that a path that can't be written fails at once and not after
//! the trace.
//!
//! memtrace runs with privileges and may be told to write where other users
//! can plant files (a world-writable /tmp). So the path itself is never
//! opened: the data goes to a new file in the same directory, created with
//! O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600 (its owner's alone: a trace holds
//! what only a privileged user may see), through a directory descriptor held
//! from the reservation on; at the end that file is renamed over the path. A symlink
//! or another user's file at the path is replaced, never written through,
//! and the directory can't be swapped for another in between. A trace that
//! fails or is interrupted removes the temporary file (Drop).
//!
//! By hand with nix rather than the tempfile crate: tempfile works by path
//! (not a held directory) and puts the temporary path, unescaped, in its
//! error messages.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{BufWriter, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::unistd::{geteuid, unlinkat, UnlinkatFlags};

use crate::present::escape::escape_path;

/// CAP_FOWNER, which lets a process replace other users' files in a sticky directory.
const CAP_FOWNER: u32 = 3;

/// How many names to try before giving up on creating the temporary file
/// (another file already there is the only reason to try again).
const NAME_TRIES: u32 = 100;

/// An output file reserved before a trace: its directory held open and an
/// empty temporary file in it, renamed over the path by `commit` (written
/// whole at the end) or `into_stream` (written as the trace goes).
pub struct OutputFile {
    /// The option that named it, for messages: "--svg".
    option: &'static str,
    /// As given, for messages.
    path: PathBuf,
    dir: OwnedFd,
    /// The path's last component, in `dir`.
    name: OsString,
    /// The temporary file's name in `dir`.
    temp_name: OsString,
    file: File,
    /// Renamed over the path: nothing to remove.
    committed: bool,
}

impl OutputFile {
    /// reserve() for an option that may not be given.
    pub fn reserve_if_given(
        option: &'static str,
        path: Option<&Path>,
    ) -> Result<Option<OutputFile>> {
        path.map(|path| OutputFile::reserve(option, path))
            .transpose()
    }

    /// Reserves `path` (given with `option`): its directory opened, the path
    /// checked to be replaceable, the temporary file created. Every failure
    /// is one line naming the (escaped) path and what to do.
    pub fn reserve(option: &'static str, path: &Path) -> Result<OutputFile> {
        let shown = escape_path(path);
        let Some((dir_path, name)) = split_path(path) else {
            bail!("{option} {shown}: not a file name (give a path that ends in a file name)");
        };
        let dir = nix::fcntl::open(
            &dir_path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| {
            anyhow!(
                "{option} {shown}: cannot open the directory {}: {} (give a path in an existing directory)",
                escape_path(&dir_path),
                errno.desc()
            )
        })?;
        match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => {
                if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
                    bail!("{option} {shown}: is a directory (give a file name)");
                }
                let dir_stat = fstat(&dir).map_err(|errno| {
                    anyhow!("{option} {shown}: reading its directory: {}", errno.desc())
                })?;
                if !may_replace(dir_stat.st_mode, dir_stat.st_uid, stat.st_uid) {
                    bail!(
                        "{option} {shown}: another user's file in a sticky directory, which memtrace can't replace (remove it, or give another path)"
                    );
                }
            }
            Err(Errno::ENOENT) => {}
            Err(errno) => bail!("{option} {shown}: {}", errno.desc()),
        }
        let (temp_name, fd) = create_temp(&dir).map_err(|errno| {
            anyhow!(
                "{option} {shown}: cannot create a file in {}: {} (give a path in a directory you can write)",
                escape_path(&dir_path),
                errno.desc()
            )
        })?;
        Ok(OutputFile {
            option,
            path: path.to_path_buf(),
            dir,
            name,
            temp_name,
            file: File::from(fd),
            committed: false,
        })
    }

    /// Writes the file's content with `write` and renames it over the path.
    pub fn commit(
        mut self,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let mut out = BufWriter::new(&self.file);
        write(&mut out)
            .and_then(|()| out.flush())
            .map_err(|err| anyhow!("{}: writing it: {err}", self.described()))?;
        drop(out);
        // on failure, Drop removes the temporary file
        self.put_in_place()
    }

    /// Renames the (still empty) file over the path now and hands it over to
    /// be written as the trace goes: --output, which `tail -f` follows. The
    /// same rules hold: the path is replaced, never written through.
    pub fn into_stream(mut self) -> Result<File> {
        self.put_in_place()?;
        self.file
            .try_clone()
            .map_err(|err| anyhow!("{}: {err}", self.described()))
    }

    /// The temporary file renamed over the path, through the held directory.
    fn put_in_place(&mut self) -> Result<()> {
        renameat(
            &self.dir,
            self.temp_name.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
        )
        .map_err(|errno| anyhow!("{}: cannot replace it: {}", self.described(), errno.desc()))?;
        self.committed = true;
        Ok(())
    }

    /// `--output out.jsonl` (the path escaped): for messages.
    pub fn described(&self) -> String {
        format!("{} {}", self.option, escape_path(&self.path))
    }
}

impl Drop for OutputFile {
    /// A trace that failed or was interrupted leaves no temporary file.
    fn drop(&mut self) {
        if !self.committed {
            let _ = unlinkat(
                &self.dir,
                self.temp_name.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// A path's directory (`.` for a bare name) and last component, from its
/// bytes (`Path::file_name` would take `out.svg/.` for `out.svg`); None when
/// the last component is not a file name (empty, `.`, `..`).
fn split_path(path: &Path) -> Option<(PathBuf, OsString)> {
    let bytes = path.as_os_str().as_bytes();
    let (dir, name): (&[u8], &[u8]) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(0) => (b"/", &bytes[1..]),
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (b".", bytes),
    };
    if name.is_empty() || name == b"." || name == b".." {
        return None;
    }
    Some((
        PathBuf::from(OsStr::from_bytes(dir)),
        OsStr::from_bytes(name).to_os_string(),
    ))
}

/// Whether rename(2) may replace a file owned by `file_uid` in a directory
/// of `dir_mode` owned by `dir_uid`: in a sticky directory only the file's
/// owner, the directory's owner or a process with CAP_FOWNER may.
fn may_replace(dir_mode: u32, dir_uid: u32, file_uid: u32) -> bool {
    let euid = geteuid().as_raw();
    if dir_mode & libc::S_ISVTX == 0 || euid == file_uid || euid == dir_uid {
        return true;
    }
    // Unknown capabilities: let the rename at the end say.
    let Ok(status) = procfs::process::Process::myself().and_then(|me| me.status()) else {
        return true;
    };
    status.capeff & (1 << CAP_FOWNER) != 0
}

/// A new file in `dir` with a name no one could have prepared: created with
/// O_EXCL (so nothing already there, a symlink included, is opened), mode
/// 0600. Returns its name and descriptor.
fn create_temp(dir: &OwnedFd) -> nix::Result<(OsString, OwnedFd)> {
    let random = RandomState::new();
    let mut last = Errno::EEXIST;
    for attempt in 0..NAME_TRIES {
        let name = OsString::from(format!(
            ".memtrace-{:016x}.tmp",
            random.hash_one((std::process::id(), attempt))
        ));
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(
            dir,
            name.as_os_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((name, fd)),
            Err(Errno::EEXIST) => last = Errno::EEXIST,
            Err(errno) => return Err(errno),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(path: &str) -> Option<(String, String)> {
        split_path(Path::new(path)).map(|(dir, name)| {
            (
                dir.to_string_lossy().into_owned(),
                name.to_string_lossy().into_owned(),
            )
        })
    }

    #[test]
    fn paths_split_into_directory_and_name() {
        let pair = |d: &str, n: &str| Some((d.to_string(), n.to_string()));
        assert_eq!(split("out.svg"), pair(".", "out.svg"));
        assert_eq!(split("/out.svg"), pair("/", "out.svg"));
        assert_eq!(split("/tmp/u/out.svg"), pair("/tmp/u", "out.svg"));
        assert_eq!(split("a//b"), pair("a/", "b"));
        assert_eq!(split("out.svg/"), None);
        assert_eq!(split("out.svg/."), None);
        assert_eq!(split("/tmp/.."), None);
        assert_eq!(split(""), None);
        assert_eq!(split("/"), None);
    }

    #[test]
    fn a_file_is_written_whole_and_its_temporary_removed() {
        use std::os::unix::fs::MetadataExt;

        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "memtrace-output-file-{}-{nanos}",
            std::process::id()
        ));
        // create_dir, not create_dir_all: never a directory someone prepared
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("out.txt");
        let file = OutputFile::reserve("--svg", &path).unwrap();
        assert!(!path.exists(), "the path is replaced only at the end");
        file.commit(|out| out.write_all(b"data")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // dropped uncommitted: nothing left, the old file kept
        drop(OutputFile::reserve("--svg", &path).unwrap());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [OsString::from("out.txt")]);
        assert_eq!(std::fs::read(&path).unwrap(), b"data");

        let error = |path: &Path| match OutputFile::reserve("--svg", path) {
            Ok(_) => panic!("{path:?} reserved"),
            Err(err) => format!("{err:#}"),
        };
        let shown = escape_path(&dir);
        assert_eq!(
            error(&dir),
            format!("--svg {shown}: is a directory (give a file name)")
        );
        assert_eq!(
            error(&dir.join("no\nsuch/out.svg")),
            format!(
                "--svg {shown}/no\\nsuch/out.svg: cannot open the directory {shown}/no\\nsuch: \
                 No such file or directory (give a path in an existing directory)"
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
