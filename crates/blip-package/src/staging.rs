//! Crash-safe writes, the one helper every writer uses (convert, quantize, optimize, reports, stamps).
//!
//! An output `DIR/NAME` is written into `DIR/.blip-staging-NAME-PID` and renamed into place when
//! complete, so a failed or killed writer never leaves a partial `NAME`. Writers of the same output
//! hold `DIR/.blip-lock-NAME` (an advisory `flock`, removed on release) so they never interleave,
//! and the holder sweeps staging folders a killed writer left behind: the lock proves their owner is
//! gone. Staging entries of other outputs are swept when the process named in them is dead.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Every temporary entry this crate creates starts with one of these, next to its output.
pub const STAGING_PREFIX: &str = ".blip-staging-";
const OLD_PREFIX: &str = ".blip-old-";
const LOCK_PREFIX: &str = ".blip-lock-";

/// Why a staged write failed.
#[derive(Debug)]
pub enum StagedError<E> {
    /// Locking, creating or sweeping the staging entry (the path says which).
    Create(std::io::Error),
    /// Another process is writing the same output.
    Busy { output: PathBuf, holder: String },
    /// The writer itself.
    Write(E),
    /// The final move into place.
    Commit(std::io::Error),
}

impl<E: std::fmt::Display> std::fmt::Display for StagedError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StagedError::Create(e) => write!(f, "preparing the output: {e}"),
            StagedError::Busy { output, holder } => write!(
                f,
                "{} is being written by another process ({holder}); wait for it or remove {}",
                output.display(),
                lock_path(output).display()
            ),
            StagedError::Write(e) => write!(f, "{e}"),
            StagedError::Commit(e) => write!(f, "moving the finished output into place: {e}"),
        }
    }
}

impl<E> StagedError<E> {
    /// The IO error of the staging step, with the output named (for writers' own error types).
    pub fn into_io(self, output: &Path) -> Result<E, std::io::Error> {
        match self {
            StagedError::Write(e) => Ok(e),
            StagedError::Create(e) | StagedError::Commit(e) => Err(e),
            StagedError::Busy { holder, .. } => Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "being written by another process ({holder}); wait for it or remove {}",
                    lock_path(output).display()
                ),
            )),
        }
    }
}

fn parent_and_name(out: &Path) -> (PathBuf, String) {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    (parent, name)
}

fn lock_path(out: &Path) -> PathBuf {
    let (parent, name) = parent_and_name(out);
    parent.join(format!("{LOCK_PREFIX}{name}"))
}

/// The staging path of `out` for this process.
pub fn staging_path(out: &Path) -> PathBuf {
    let (parent, name) = parent_and_name(out);
    parent.join(format!("{STAGING_PREFIX}{name}-{}", std::process::id()))
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Rewrites staging paths in a message (`DIR/.blip-staging-NAME-PID/FILE`) to the output they
/// become (`DIR/NAME/FILE`), so an error names the output file being written.
pub fn output_paths_in(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(STAGING_PREFIX) {
        out.push_str(&rest[..at]);
        let after = &rest[at + STAGING_PREFIX.len()..];
        let end = after
            .find(|c: char| c == '/' || c.is_whitespace() || c == ':' || c == '"')
            .unwrap_or(after.len());
        match after[..end].rsplit_once('-') {
            Some((name, pid)) if !name.is_empty() && pid.parse::<u32>().is_ok() => {
                out.push_str(name)
            }
            _ => out.push_str(&rest[at..at + STAGING_PREFIX.len() + end]),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The exclusive right to write one output; the lock file is removed when it is dropped.
pub struct OutputLock {
    file: File,
    path: PathBuf,
}

impl OutputLock {
    /// Takes the lock of `out` without waiting: a second writer gets `Busy`, never a hang.
    pub fn acquire<E>(out: &Path) -> Result<OutputLock, StagedError<E>> {
        let path = lock_path(out);
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StagedError::Create(io_at(&path)(e)))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let holder = std::fs::read_to_string(&path)
                        .ok()
                        .filter(|s| !s.trim().is_empty())
                        .unwrap_or_else(|| "unknown pid".into());
                    return Err(StagedError::Busy {
                        output: out.to_path_buf(),
                        holder: holder.trim().to_string(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(StagedError::Create(io_at(&path)(e))),
            }
            // The previous holder removes the file before unlocking: if the path now names
            // another file (or none), we locked a removed one; try again on the current one.
            if same_file(&file, &path) {
                let mut lock = OutputLock { file, path };
                lock.write_holder()
                    .map_err(|e| StagedError::Create(io_at(&lock.path)(e)))?;
                return Ok(lock);
            }
        }
    }

    fn write_holder(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        write!(self.file, "pid {}", std::process::id())?;
        self.file.flush()
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// Whether process `pid` is alive. Where that cannot be told (no /proc), it is assumed alive.
fn pid_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Removes leftovers of killed writers in `out`'s folder: every staging / old entry of `out`
/// itself (the caller holds its lock, so their owners are gone) and those of other outputs whose
/// owner pid is dead. Returns what was removed.
pub fn sweep_leftovers(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (parent, name) = parent_and_name(out);
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(&parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(io_at(&parent)(e)),
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name
            .strip_prefix(STAGING_PREFIX)
            .or_else(|| file_name.strip_prefix(OLD_PREFIX))
        else {
            continue;
        };
        let Some((owner_name, pid)) = rest
            .rsplit_once('-')
            .and_then(|(n, p)| p.parse::<u32>().ok().map(|p| (n, p)))
        else {
            continue;
        };
        // Ours: the caller holds the lock, so no live writer owns it (even if its pid was reused).
        if owner_name == name || !pid_alive(pid) {
            let path = entry.path();
            let result = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match result {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&path)(e)),
            }
        }
    }
    Ok(removed)
}

/// Moves a finished staging entry to `out`, replacing what is there: the old one is renamed
/// aside first and put back if the move fails.
fn commit(tmp: &Path, out: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(out).is_err() {
        return std::fs::rename(tmp, out).map_err(io_at(out));
    }
    let (parent, name) = parent_and_name(out);
    let old = parent.join(format!("{OLD_PREFIX}{name}-{}", std::process::id()));
    std::fs::rename(out, &old).map_err(io_at(out))?;
    if let Err(e) = std::fs::rename(tmp, out) {
        let _ = std::fs::rename(&old, out);
        return Err(io_at(out)(e));
    }
    if old.is_dir() && !old.is_symlink() {
        std::fs::remove_dir_all(&old).map_err(io_at(&old))
    } else {
        std::fs::remove_file(&old).map_err(io_at(&old))
    }
}

/// Runs `write` into a fresh staging folder for `out` and moves the result into place, holding
/// `out`'s lock throughout; on any failure the staging folder is removed, so nothing partial is
/// ever left at `out` or next to it.
pub fn write_staged<T, E>(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, StagedError<E>> {
    // A folder output's parents are made, as writers always did (`-o new/dir/pkg` works).
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| StagedError::Create(io_at(parent)(e)))?;
    }
    let _lock = OutputLock::acquire(out)?;
    sweep_leftovers(out).map_err(StagedError::Create)?;
    let tmp = staging_path(out);
    std::fs::create_dir_all(&tmp).map_err(|e| StagedError::Create(io_at(&tmp)(e)))?;
    let result = write(&tmp)
        .map_err(StagedError::Write)
        .and_then(|v| commit(&tmp, out).map(|_| v).map_err(StagedError::Commit));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes one file atomically (staged next to it, synced, renamed); errors name `path`.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let err = io_at(path);
    let run = || -> std::io::Result<()> {
        let _lock =
            OutputLock::acquire::<std::io::Error>(path).map_err(|e| match e.into_io(path) {
                Ok(e) | Err(e) => e,
            })?;
        sweep_leftovers(path)?;
        let tmp = staging_path(path);
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    };
    run().map_err(|e| {
        // Errors that already name a path (the lock file) are kept as they are.
        if e.to_string().contains(&path.display().to_string()) {
            e
        } else {
            err(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_staged_leaves_nothing_on_failure_and_replaces_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pkg");
        let err = write_staged(&out, |tmp| {
            std::fs::write(tmp.join("half.onnx"), b"x").unwrap();
            Err::<(), _>("writer failed")
        })
        .unwrap_err();
        assert!(matches!(err, StagedError::Write("writer failed")));
        assert!(names(dir.path()).is_empty(), "nothing partial left");
        for content in ["first", "second"] {
            write_staged(&out, |tmp| std::fs::write(tmp.join("f"), content)).unwrap();
            assert_eq!(std::fs::read_to_string(out.join("f")).unwrap(), content);
        }
        assert_eq!(names(dir.path()), ["pkg"], "old folder and lock removed");
    }

    #[test]
    fn leftovers_of_a_killed_writer_are_swept_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pkg");
        // pid 0 is never a user process: a dead owner. Same output: swept whatever the pid.
        for left in [
            ".blip-staging-pkg-4000000",
            ".blip-old-pkg-4000001",
            ".blip-staging-other-0",
        ] {
            std::fs::create_dir(dir.path().join(left)).unwrap();
            std::fs::write(dir.path().join(left).join("graph.onnx"), b"half").unwrap();
        }
        // A live process's staging of another output is left alone.
        let live = format!(".blip-staging-other-{}", std::process::id());
        std::fs::create_dir(dir.path().join(&live)).unwrap();
        // Files that merely look similar are not ours.
        std::fs::write(dir.path().join(".blip-staging-notapid"), b"keep").unwrap();
        write_staged(&out, |tmp| std::fs::write(tmp.join("f"), "new")).unwrap();
        assert_eq!(names(dir.path()), [".blip-staging-notapid", &live, "pkg"]);
    }

    #[test]
    fn a_second_writer_of_the_same_output_is_refused_not_interleaved() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pkg");
        let held = OutputLock::acquire::<()>(&out).unwrap();
        let err = write_staged(&out, |tmp| std::fs::write(tmp.join("f"), "x")).unwrap_err();
        let StagedError::Busy { holder, .. } = &err else {
            panic!("expected Busy, got {err}");
        };
        assert_eq!(holder, &format!("pid {}", std::process::id()));
        assert!(err.to_string().contains("being written by another process"));
        assert!(!out.exists());
        drop(held);
        write_staged(&out, |tmp| std::fs::write(tmp.join("f"), "x")).unwrap();
        assert_eq!(names(dir.path()), ["pkg"]);
    }

    #[test]
    fn staging_paths_in_messages_become_output_paths() {
        assert_eq!(
            output_paths_in("/d/.blip-staging-my-pkg-123/tokenizer.json: File too large"),
            "/d/my-pkg/tokenizer.json: File too large"
        );
        assert_eq!(
            output_paths_in("x .blip-staging-r.json-9 and .blip-staging-odd"),
            "x r.json and .blip-staging-odd"
        );
    }

    #[test]
    fn atomic_file_write_names_the_output_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        write_file_atomic(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        assert_eq!(names(dir.path()), ["report.json"]);
        let missing = dir.path().join("no-such-dir").join("r.json");
        let err = write_file_atomic(&missing, b"{}").unwrap_err();
        assert!(
            err.to_string().contains("no-such-dir"),
            "names the output: {err}"
        );
    }
}
