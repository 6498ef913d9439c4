//! Live runs on the runner: a run started with `live: true` keeps
//! `<work_dir>/<id>/repo` (and its `home`) after its result, and these work
//! in it — a command as its own job (`exec`), one file read or written
//! (`read_file`, `write_file`), the whole checkout listed into the blob cache
//! (`snapshot`) and written back out of it (`restore`).
//!
//! The runner is root; the checkout belongs to the step user, whose
//! processes may still run and may swap any path for a symlink at any time.
//! So nothing here trusts a path it checked before: a directory is opened,
//! its handle is checked to lie inside the checkout, and the next step goes
//! through that handle (`/proc/self/fd/N/<name>`), not through the path
//! again. A restore is written where the step user cannot reach it, then
//! moved into place whole.

use std::ffi::OsStr;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloudbox::common::paths::validate_path;
use cloudbox::runs::tree::{self, EntryKind, Totals, TreeEntry, MODE_MASK};
use cloudbox::wire::receipts::{Chain, ReceiptKind};
use cloudbox::wire::{
    outcome, LiveExec, RunEvent, RunResult, RunnerError, RunnerErrorCode, MAX_LIVE_FILE_BYTES,
};

use crate::blob_cache::BlobCache;
use crate::config::{RunnerConfig, StepUser};
use crate::process;
use crate::run::{step_env, valid_run_id, Exec, RunHandle};

/// Where restores are written before they are moved into place: inside the
/// runner's work dir (same file system, so the move is a rename), 0o700 and
/// not a valid run id, so no step ever reaches it.
const STAGING_DIR: &str = ".restore";
/// A file written without `mode` and not there before.
const DEFAULT_FILE_MODE: u32 = 0o644;
/// Directories the runner creates (parents of a written file, a restore's).
const DIR_MODE: u32 = 0o755;

/// A live run's directories on this runner.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// `<work_dir>/<id>`: the checkout and the steps' home.
    pub run_dir: PathBuf,
    /// `<run_dir>/repo`, canonical.
    pub repo: PathBuf,
}

fn fail(code: RunnerErrorCode, message: impl Into<String>) -> RunnerError {
    RunnerError::new(code, message)
}

fn internal(what: &str, err: io::Error) -> RunnerError {
    fail(RunnerErrorCode::Internal, format!("{what}: {err}"))
}

/// `internal` for a `map_err` that names `what`.
fn io_err(what: &str) -> impl Fn(io::Error) -> RunnerError + '_ {
    move |err| internal(what, err)
}

fn outside(path: &str) -> RunnerError {
    fail(
        RunnerErrorCode::BadPath,
        format!("{path} resolves outside the checkout"),
    )
}

/// The live checkout of run `id`, or 404 `not_live`.
pub fn checkout(cfg: &RunnerConfig, id: &str) -> Result<Checkout, RunnerError> {
    if !valid_run_id(id) {
        return Err(fail(RunnerErrorCode::BadRun, "bad run id"));
    }
    let not_live = || {
        fail(
            RunnerErrorCode::NotLive,
            "this runner holds no live checkout of that run",
        )
    };
    let work = std::fs::canonicalize(&cfg.work_dir).map_err(|_| not_live())?;
    let run_dir = work.join(id);
    let repo = run_dir.join("repo");
    // A `repo` that a step replaced with a symlink is no checkout.
    match std::fs::canonicalize(&repo) {
        Ok(real) if real == repo && real.is_dir() => Ok(Checkout { run_dir, repo }),
        _ => Err(not_live()),
    }
}

/// Runs `live.command` in the checkout as the job of `handle`, like a run's
/// step: live output (step 0: the DO renumbers it), one `exec` receipt
/// (sealed as the first of its own chain: the DO re-seals it into the
/// run's), then the result.
pub async fn exec(cfg: &RunnerConfig, run_dir: &Path, live: LiveExec, handle: &RunHandle) {
    let started = Instant::now();
    let home = run_dir.join("home");
    // A restored run gets its home at its first exec.
    if let Err(err) = make_dir_for(&home, cfg.step_user) {
        eprintln!("cloudbox-runner: cannot create {}: {err}", home.display());
    }
    let mut exec = Exec::new(handle, Chain::after(None), Some(0));
    let finished = exec
        .step(
            ReceiptKind::Exec,
            live.command.clone(),
            process::Spec {
                program: "bash",
                args: vec!["-lc".into(), live.command.clone()],
                cwd: &run_dir.join("repo"),
                env: step_env(cfg, &home, &live.env),
                timeout: Duration::from_millis(live.timeout_ms),
                user: cfg.step_user,
            },
        )
        .await;
    let (ok, status) = outcome(
        true,
        finished.succeeded() && !finished.timed_out,
        finished.timed_out,
        finished.cancelled,
    );
    handle.emit(RunEvent::Result(RunResult {
        ok,
        status,
        artifact: None,
        diff: None,
        container_ms: started.elapsed().as_millis() as u64,
    }));
}

/// Creates the directory `path` for the step user unless it exists (then it
/// is left as it is: never chowned again, whatever a step put there).
fn make_dir_for(path: &Path, user: Option<StepUser>) -> io::Result<()> {
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => match user {
            Some(user) => std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)),
            None => Ok(()),
        },
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// `name` inside the open directory `dir`, resolved from the handle rather
/// than from the directory's path.
fn at(dir: &File, name: impl AsRef<Path>) -> PathBuf {
    handle_path(dir).join(name)
}

fn handle_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Whether the open `file` lies inside `root` now (the kernel's own name
/// for it: whatever was swapped since its path was resolved).
fn inside(file: &File, root: &Path) -> io::Result<bool> {
    Ok(std::fs::read_link(handle_path(file))?.starts_with(root))
}

fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
}

/// Opens a file to read without following a final symlink; `O_NONBLOCK`:
/// a FIFO put there does not hang the runner (no effect on a regular file).
fn open_no_follow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// The entry is gone, or was replaced by another kind, since it was listed.
fn vanished(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || err.raw_os_error() == Some(libc::ELOOP)
}

/// A file of the checkout, its permission bits with it.
pub struct FileRead {
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// Reads `path` of the checkout `root` (canonical): a regular file, after
/// symlinks, inside the checkout, at most `MAX_LIVE_FILE_BYTES`.
pub fn read_file(root: &Path, path: &str) -> Result<FileRead, RunnerError> {
    validate_path(path).map_err(|why| fail(RunnerErrorCode::BadPath, why))?;
    let not_found = || fail(RunnerErrorCode::FileNotFound, format!("no file {path}"));
    let real = match std::fs::canonicalize(root.join(path)) {
        Ok(real) => real,
        Err(err) if vanished(&err) => return Err(not_found()),
        Err(err) => return Err(fail(RunnerErrorCode::BadPath, format!("{path}: {err}"))),
    };
    // Checked before opening, so nothing outside is ever opened…
    if !real.starts_with(root) {
        return Err(outside(path));
    }
    let mut file = match open_no_follow(&real) {
        Ok(file) => file,
        Err(err) if vanished(&err) => return Err(not_found()),
        Err(err) => return Err(internal(path, err)),
    };
    // …and after, for a component swapped for a symlink meanwhile.
    if !inside(&file, root).map_err(|e| internal(path, e))? {
        return Err(outside(path));
    }
    let meta = file.metadata().map_err(|e| internal(path, e))?;
    if meta.is_dir() {
        return Err(fail(
            RunnerErrorCode::BadPath,
            format!("{path} is a directory"),
        ));
    }
    if !meta.is_file() {
        return Err(fail(
            RunnerErrorCode::BadPath,
            format!("{path} is not a regular file"),
        ));
    }
    let too_large = || {
        fail(
            RunnerErrorCode::FileTooLarge,
            format!("{path} is larger than {MAX_LIVE_FILE_BYTES} bytes"),
        )
    };
    if meta.len() > MAX_LIVE_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file growing while it is read is cut one byte past the limit.
    (&mut file)
        .take(MAX_LIVE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| internal(path, e))?;
    if bytes.len() as u64 > MAX_LIVE_FILE_BYTES {
        return Err(too_large());
    }
    Ok(FileRead {
        bytes,
        mode: meta.mode() & MODE_MASK,
    })
}

/// The `mode` of a write: 3 or 4 octal digits, at most `777`.
pub fn parse_mode(text: &str) -> Result<u32, RunnerError> {
    let digits = (3..=4).contains(&text.len()) && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(text, 8) {
        Ok(mode) if digits && mode <= MODE_MASK => Ok(mode),
        _ => Err(fail(
            RunnerErrorCode::BadMode,
            format!("mode {text:?} is not 3 or 4 octal digits of at most 777"),
        )),
    }
}

/// Writes `bytes` as `path` of the checkout `root` (canonical), creating
/// missing parent directories; `mode` defaults to the existing file's, else
/// 644. Returns the bytes written.
pub fn write_file(
    root: &Path,
    path: &str,
    bytes: &[u8],
    mode: Option<u32>,
    user: Option<StepUser>,
) -> Result<u64, RunnerError> {
    validate_path(path).map_err(|why| fail(RunnerErrorCode::BadPath, why))?;
    let (parents, name) = match path.rsplit_once('/') {
        Some((parents, name)) => (parents.split('/').collect(), name),
        None => (Vec::new(), path),
    };
    let mut dir = open_dir(root).map_err(|e| internal("checkout", e))?;
    let mut walked = String::new();
    for part in parents {
        if !walked.is_empty() {
            walked.push('/');
        }
        walked.push_str(part);
        dir = enter_dir(&dir, part, root, user, &walked)?;
    }
    let (dir, name, existing) = write_target(dir, name, root, path)?;
    let mode = mode.or(existing).unwrap_or(DEFAULT_FILE_MODE);
    replace(&dir, &name, bytes, mode, user).map_err(|e| internal(path, e))?;
    Ok(bytes.len() as u64)
}

/// Opens `name` of `dir` as a directory inside the checkout (a symlink to a
/// directory inside is fine), creating it (0o755, the step user's) when
/// missing. `shown` is its path in the checkout, for errors.
fn enter_dir(
    dir: &File,
    name: &str,
    root: &Path,
    user: Option<StepUser>,
    shown: &str,
) -> Result<File, RunnerError> {
    let path = at(dir, name);
    // mkdir never follows a symlink: a dangling one there is "exists".
    let created = match DirBuilder::new().mode(DIR_MODE).create(&path) {
        Ok(()) => true,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => false,
        Err(err) => return Err(internal(shown, err)),
    };
    let sub = match open_dir(&path) {
        Ok(sub) => sub,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(fail(
                RunnerErrorCode::BadPath,
                format!("{shown} is a symlink to nothing"),
            ))
        }
        Err(err) if err.kind() == io::ErrorKind::NotADirectory => {
            return Err(fail(
                RunnerErrorCode::BadPath,
                format!("{shown} is not a directory"),
            ))
        }
        Err(err) => return Err(internal(shown, err)),
    };
    if !inside(&sub, root).map_err(|e| internal(shown, e))? {
        return Err(outside(shown));
    }
    if created {
        // The exact mode whatever the umask, and the tree stays the step user's.
        sub.set_permissions(Permissions::from_mode(DIR_MODE))
            .map_err(|e| internal(shown, e))?;
        if let Some(user) = user {
            std::os::unix::fs::fchown(&sub, Some(user.uid), Some(user.gid))
                .map_err(|e| internal(shown, e))?;
        }
    }
    Ok(sub)
}

/// Where a write of `name` in `dir` goes: that name, or the file a symlink
/// there leads to (which must be inside the checkout); with the mode of the
/// file already there, if any.
fn write_target(
    dir: File,
    name: &str,
    root: &Path,
    shown: &str,
) -> Result<(File, std::ffi::OsString, Option<u32>), RunnerError> {
    let path = at(&dir, name);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((dir, name.into(), None)),
        Err(err) => return Err(internal(shown, err)),
    };
    if !meta.is_symlink() {
        return Ok((dir, name.into(), file_mode(&meta, shown)?));
    }
    let real = std::fs::canonicalize(&path).map_err(|_| {
        fail(
            RunnerErrorCode::BadPath,
            format!("{shown} is a symlink to nothing"),
        )
    })?;
    if real == root {
        return Err(fail(
            RunnerErrorCode::BadPath,
            format!("{shown} is a directory"),
        ));
    }
    let (Some(parent), Some(real_name)) = (real.parent(), real.file_name()) else {
        return Err(outside(shown));
    };
    if !real.starts_with(root) {
        return Err(outside(shown));
    }
    let real_dir = open_dir(parent).map_err(|e| internal(shown, e))?;
    if !inside(&real_dir, root).map_err(|e| internal(shown, e))? {
        return Err(outside(shown));
    }
    match std::fs::symlink_metadata(at(&real_dir, real_name)) {
        Ok(meta) if meta.is_symlink() => Err(fail(
            RunnerErrorCode::BadPath,
            format!("{shown} changed while it was resolved"),
        )),
        Ok(meta) => {
            let mode = file_mode(&meta, shown)?;
            Ok((real_dir, real_name.to_owned(), mode))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            Ok((real_dir, real_name.to_owned(), None))
        }
        Err(err) => Err(internal(shown, err)),
    }
}

/// The mode of an existing write target, which must be a regular file.
fn file_mode(meta: &std::fs::Metadata, shown: &str) -> Result<Option<u32>, RunnerError> {
    if meta.is_dir() {
        return Err(fail(
            RunnerErrorCode::BadPath,
            format!("{shown} is a directory"),
        ));
    }
    if !meta.is_file() {
        return Err(fail(
            RunnerErrorCode::BadPath,
            format!("{shown} is not a regular file"),
        ));
    }
    Ok(Some(meta.mode() & MODE_MASK))
}

/// Writes `bytes` as `name` in `dir`: a new temp file beside it gets the
/// bytes, the mode and the owner, then is renamed over the name — a reader
/// sees the old file or the new one, never half of one.
fn replace(
    dir: &File,
    name: &OsStr,
    bytes: &[u8],
    mode: u32,
    user: Option<StepUser>,
) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = at(dir, format!(".cloudbox-write.{}.{n}", std::process::id()));
    let written = (|| {
        // create_new (O_EXCL) never opens through a symlink.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(Permissions::from_mode(mode))?;
        if let Some(user) = user {
            std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid))?;
        }
        std::fs::rename(&tmp, at(dir, name))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Lists the checkout `root` (canonical) as a tree, adding every file's
/// bytes to `cache`; sorted, and checked by `tree::validate`.
pub fn snapshot(root: &Path, cache: &BlobCache) -> Result<Vec<TreeEntry>, RunnerError> {
    let dir = open_dir(root).map_err(|e| internal("checkout", e))?;
    let mut entries = Vec::new();
    list(&dir, "", cache, &mut entries).map_err(|e| internal("snapshot", e))?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    tree::validate(&entries).map_err(|why| {
        fail(
            RunnerErrorCode::Internal,
            format!("the checkout cannot be snapshot: {why}"),
        )
    })?;
    Ok(entries)
}

/// Adds the entries under `dir` (at `rel`) to `out`. Never follows a
/// symlink: each child is opened through its directory's handle with
/// `O_NOFOLLOW`. Entries that vanish meanwhile are left out; so are those
/// the API cannot name (non-UTF-8, too long) and special files.
fn list(dir: &File, rel: &str, cache: &BlobCache, out: &mut Vec<TreeEntry>) -> io::Result<()> {
    for entry in std::fs::read_dir(handle_path(dir))? {
        let name = entry?.file_name();
        let Some(text) = name.to_str() else {
            continue;
        };
        let path = if rel.is_empty() {
            text.to_string()
        } else {
            format!("{rel}/{text}")
        };
        if validate_path(&path).is_err() {
            continue;
        }
        match list_one(dir, &name, &path, cache, out) {
            Err(err) if vanished(&err) => continue,
            other => other?,
        }
    }
    Ok(())
}

fn list_one(
    dir: &File,
    name: &OsStr,
    path: &str,
    cache: &BlobCache,
    out: &mut Vec<TreeEntry>,
) -> io::Result<()> {
    let child = at(dir, name);
    let kind = std::fs::symlink_metadata(&child)?.file_type();
    if kind.is_symlink() {
        // A target that is not UTF-8 cannot be told over the API.
        if let Some(target) = std::fs::read_link(&child)?.to_str() {
            out.push(TreeEntry::symlink(path, target));
        }
    } else if kind.is_dir() {
        let sub = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&child)?;
        out.push(TreeEntry::dir(path, sub.metadata()?.mode()));
        list(&sub, path, cache, out)?;
    } else if kind.is_file() {
        let file = open_no_follow(&child)?;
        let meta = file.metadata()?;
        if meta.is_file() {
            let (sha256, size) = cache.insert_reader(&file)?;
            out.push(TreeEntry::file(path, &sha256, size, meta.mode()));
        }
    }
    Ok(())
}

/// Writes `entries` as the checkout of run `id` (replacing any), every
/// blob out of `cache`, and gives the tree to the step user.
pub fn restore(
    cfg: &RunnerConfig,
    cache: &BlobCache,
    id: &str,
    entries: &[TreeEntry],
) -> Result<Totals, RunnerError> {
    if !valid_run_id(id) {
        return Err(fail(RunnerErrorCode::BadRun, "bad run id"));
    }
    tree::validate(entries).map_err(|why| fail(RunnerErrorCode::BadTree, why))?;
    let missing = cache.missing(&tree::unique_blobs(entries));
    if !missing.is_empty() {
        return Err(RunnerError {
            missing,
            ..fail(RunnerErrorCode::MissingBlobs, "push these blobs first")
        });
    }
    let staging_root = cfg.work_dir.join(STAGING_DIR);
    std::fs::create_dir_all(&staging_root)
        .and_then(|()| std::fs::set_permissions(&staging_root, Permissions::from_mode(0o700)))
        .map_err(|e| internal("staging directory", e))?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let staging = staging_root.join(format!("{id}.{n}"));
    let placed =
        write_tree(cache, entries, &staging, cfg.step_user).and_then(|()| place(cfg, id, &staging));
    if placed.is_err() {
        if let Err(err) = std::fs::remove_dir_all(&staging) {
            if err.kind() != io::ErrorKind::NotFound {
                eprintln!(
                    "cloudbox-runner: cannot remove {}: {err}",
                    staging.display()
                );
            }
        }
    }
    placed.map(|()| tree::totals(entries))
}

/// Writes `entries` under `dir` (new): directories (0o755 while writing),
/// files copied out of the cache (never linked: a step may edit them in
/// place), then symlinks, so nothing is written through a link; then file
/// modes, then directory modes deepest first (a 0o555 directory does not
/// block writing inside it); then it all becomes the step user's.
fn write_tree(
    cache: &BlobCache,
    entries: &[TreeEntry],
    dir: &Path,
    user: Option<StepUser>,
) -> Result<(), RunnerError> {
    DirBuilder::new()
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err("checkout"))?;
    for e in entries {
        let dest = dir.join(&e.path);
        match e.kind {
            EntryKind::Dir => DirBuilder::new()
                .mode(DIR_MODE)
                .create(&dest)
                .map_err(io_err(&e.path))?,
            EntryKind::File => {
                let sha = e.sha256.as_deref().unwrap_or_default();
                let Some(src) = cache.path(sha) else {
                    return Err(fail(
                        RunnerErrorCode::BadTree,
                        format!("{}: not a sha256", e.path),
                    ));
                };
                let copied = std::fs::copy(&src, &dest).map_err(io_err(&e.path))?;
                if copied != e.size {
                    return Err(fail(
                        RunnerErrorCode::BadTree,
                        format!(
                            "{}: size {} but its blob has {copied} bytes",
                            e.path, e.size
                        ),
                    ));
                }
            }
            EntryKind::Symlink => {}
        }
    }
    for e in entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
        let target = e.target.as_deref().unwrap_or_default();
        std::os::unix::fs::symlink(target, dir.join(&e.path)).map_err(io_err(&e.path))?;
    }
    for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
        std::fs::set_permissions(dir.join(&e.path), Permissions::from_mode(e.mode))
            .map_err(io_err(&e.path))?;
    }
    // Sorted paths reversed: every directory after everything inside it.
    for e in entries.iter().rev().filter(|e| e.kind == EntryKind::Dir) {
        std::fs::set_permissions(dir.join(&e.path), Permissions::from_mode(e.mode))
            .map_err(io_err(&e.path))?;
    }
    if let Some(user) = user {
        crate::tree::give_to(dir, user).map_err(io_err("checkout"))?;
    }
    Ok(())
}

/// Moves the written tree `staging` into place as run `id`'s checkout,
/// removing what was there, and makes sure the run has a home.
fn place(cfg: &RunnerConfig, id: &str, staging: &Path) -> Result<(), RunnerError> {
    let run_dir = cfg.work_dir.join(id);
    make_dir_for(&run_dir, cfg.step_user).map_err(|e| internal("run directory", e))?;
    let repo = run_dir.join("repo");
    // remove_dir_all never follows a symlink; a link or file there is unlinked.
    let removed = match std::fs::symlink_metadata(&repo) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&repo),
        Ok(_) => std::fs::remove_file(&repo),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    };
    removed.map_err(|e| internal("old checkout", e))?;
    // A rename replaces nothing it could follow: the tree lands whole.
    std::fs::rename(staging, &repo).map_err(|e| internal("checkout", e))?;
    make_dir_for(&run_dir.join("home"), cfg.step_user).map_err(|e| internal("home", e))
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
