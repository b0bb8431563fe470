//! Where Kubernetes objects come from: YAML files, directories or stdin (what a user would
//! `kubectl apply`), or a live cluster through `kube` watchers ([`kube`]). Both end in the
//! same [`Store`](crate::store::Store) through its `apply`/`delete`, so translation never
//! knows which one it was.

#[cfg(test)]
mod fuzz;
pub mod kube;
mod limits;
pub mod watch;
mod yaml;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use limits::{MAX_DEPTH, MAX_FILE_BYTES};

use crate::object::{Kind, Object};
use crate::store::{Store, StoreConfig, StoreError};

/// Where a loaded object was read from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file's path, or `<stdin>`.
    pub file: String,
    /// 1-based index of the `---` document in the file.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// 0-based index in the document's `items`, for an object from a `List`. (`u32` keeps
    /// [`Error`] small; a document has fewer items than that.)
    pub item: Option<u32>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} (document {}", self.file, self.line, self.document)?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        f.write_str(")")
    }
}

/// One object and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub origin: Origin,
    pub object: Object,
}

/// A file that cannot be read or a document that is not a valid object. The message names
/// the file, the line, the object when known and the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SourceError {
    pub file: String,
    pub document: Option<usize>,
    pub line: Option<usize>,
    /// `Kind namespace/name`, when the document got that far.
    pub object: Option<String>,
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(document) = self.document {
            write!(f, " (document {document})")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Anything that stops a set of manifests from becoming a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A well-formed object the store refused (semantic validation).
    #[error("{origin}: {error}")]
    Rejected { origin: Origin, error: StoreError },
}

/// Parses a YAML stream; `file` names it in errors. The same object twice is not refused
/// here (the store keeps the last, as `kubectl apply` of both would): tests layer a manifest
/// over a base this way. [`load_paths`], what `istiod` reads its configuration with, refuses
/// it.
pub fn parse_str(text: &str, file: &str) -> Result<Vec<Loaded>, SourceError> {
    yaml::parse_str(text, file)
}

fn read_error(file: &Path, error: &std::io::Error) -> SourceError {
    path_error(file, format!("cannot read: {error}"))
}

fn path_error(file: &Path, message: String) -> SourceError {
    SourceError {
        file: file.display().to_string(),
        document: None,
        line: None,
        object: None,
        message,
    }
}

fn too_large(file: &Path, size: u64) -> SourceError {
    path_error(file, limits::too_large(size))
}

/// What a path is when it is neither a regular file nor a directory.
fn file_kind(file_type: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "a device";
        }
    }
    #[cfg(not(unix))]
    let _ = file_type;
    "not a regular file"
}

/// Whether `path` is a symbolic link that never resolves because it leads back to itself:
/// followed by hand, as the error the OS gives for it has no stable `ErrorKind`.
fn is_symlink_loop(path: &Path) -> bool {
    let mut seen = HashSet::new();
    let mut current = path.to_path_buf();
    // The kernel gives up after 40 links; so does this.
    for _ in 0..40 {
        let Ok(target) = std::fs::read_link(&current) else {
            return false;
        };
        let next = match current.parent() {
            Some(parent) => parent.join(target),
            None => target,
        };
        if !seen.insert(current) {
            return true;
        }
        current = next;
    }
    true
}

fn loop_error(path: &Path, message: &str) -> SourceError {
    path_error(path, format!("symlink loop: {message}"))
}

/// `*.yaml` and `*.yml` files under `dir`, recursively, in sorted order. `ancestors` holds
/// the canonical paths of the directories being walked, so a symbolic link back to one of
/// them is refused instead of walked until the path is too long. Only regular files are
/// read: anything else with a YAML name (a FIFO would block istiod forever) is skipped with
/// a warning.
fn yaml_files(
    dir: &Path,
    ancestors: &mut Vec<PathBuf>,
    out: &mut Vec<PathBuf>,
) -> Result<(), SourceError> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| read_error(dir, &e))?;
    if let Some(ancestor) = ancestors.iter().find(|a| **a == canonical) {
        return Err(loop_error(
            dir,
            &format!("it is {}, which contains it", ancestor.display()),
        ));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| read_error(dir, &e))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| read_error(dir, &e))?;
    entries.sort();
    ancestors.push(canonical);
    for path in entries {
        let is_yaml = path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml");
        // `metadata` follows symbolic links without opening anything.
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(_) if is_symlink_loop(&path) => {
                return Err(loop_error(&path, "the link leads back to itself"));
            }
            // As before: a YAML file that cannot be read is an error, anything else is not
            // configuration.
            Err(e) if is_yaml => return Err(read_error(&path, &e)),
            Err(_) => continue,
        };
        if metadata.is_dir() {
            yaml_files(&path, ancestors, out)?;
        } else if !is_yaml {
            continue;
        } else if metadata.is_file() {
            out.push(path);
        } else {
            tracing::warn!(
                path = %path.display(),
                kind = file_kind(metadata.file_type()),
                "skipped: not a regular file"
            );
        }
    }
    ancestors.pop();
    Ok(())
}

/// The files `path` stands for: itself if it is a regular file, its YAML files if it is a
/// directory. Anything else named explicitly is refused (never opened: a FIFO would block).
fn files_of(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(_) if is_symlink_loop(path) => {
            return Err(loop_error(path, "the link leads back to itself"));
        }
        Err(e) => return Err(read_error(path, &e)),
    };
    if metadata.is_dir() {
        let mut files = Vec::new();
        yaml_files(path, &mut Vec::new(), &mut files)?;
        Ok(files)
    } else if metadata.is_file() {
        Ok(vec![path.to_path_buf()])
    } else {
        Err(path_error(
            path,
            format!(
                "{}: only regular files and directories are read",
                file_kind(metadata.file_type())
            ),
        ))
    }
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`]: its size is checked before reading
/// (so an oversized file costs nothing) and the read is bounded (so one that grows
/// meanwhile, or a file whose size the OS does not report, cannot get past the limit).
/// Callers have checked it is a regular file without opening it; one swapped for a FIFO in
/// between would still block `open` (std has no portable `O_NONBLOCK`), which takes
/// someone who can already write the configuration.
fn read_file(file: &Path) -> Result<String, SourceError> {
    let handle = std::fs::File::open(file).map_err(|e| read_error(file, &e))?;
    let metadata = handle.metadata().map_err(|e| read_error(file, &e))?;
    if !metadata.is_file() {
        return Err(path_error(
            file,
            format!(
                "{}: only regular files are read",
                file_kind(metadata.file_type())
            ),
        ));
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(too_large(file, metadata.len()));
    }
    read_bounded(handle, file)
}

fn read_bounded(reader: impl Read, file: &Path) -> Result<String, SourceError> {
    let mut text = String::new();
    reader
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| read_error(file, &e))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(file, text.len() as u64));
    }
    Ok(text)
}

/// Reads a file, every YAML file of a directory (recursively, sorted), or stdin for `-`.
/// The same object twice is an error, as in [`load_paths`].
pub fn load_path(path: &Path) -> Result<Vec<Loaded>, SourceError> {
    load_paths(&[path.to_path_buf()])
}

/// Every path as [`load_path`] reads it, in order, as one input: a file reached twice (two
/// symbolic links to it, or a path given twice) is read once, and the same object (kind,
/// namespace, name) declared twice is an error naming both places, where the store would
/// silently keep the last.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Loaded>, SourceError> {
    let mut loaded = Vec::new();
    let mut read = HashSet::new();
    for path in paths {
        if path == Path::new("-") {
            let text = read_bounded(std::io::stdin().lock(), Path::new("<stdin>"))?;
            append(&mut loaded, parse_str(&text, "<stdin>")?);
            continue;
        }
        for file in files_of(path)? {
            let canonical = std::fs::canonicalize(&file).map_err(|e| read_error(&file, &e))?;
            if !read.insert(canonical) {
                tracing::debug!(path = %file.display(), "already read through another path");
                continue;
            }
            let text = read_file(&file)?;
            append(&mut loaded, parse_str(&text, &file.display().to_string())?);
        }
    }
    refuse_duplicates(&loaded)?;
    Ok(loaded)
}

/// `to.extend(more)`, without copying `more` when `to` is empty: a `Loaded` is ~2.4 KB
/// (objects are stored inline), so one large file would otherwise be held twice for a moment.
fn append(to: &mut Vec<Loaded>, more: Vec<Loaded>) {
    if to.is_empty() {
        *to = more;
    } else {
        to.extend(more);
    }
}

/// The first object declared twice in `loaded`, as an error at its second place naming the
/// first.
fn refuse_duplicates(loaded: &[Loaded]) -> Result<(), SourceError> {
    // Borrowed keys: this runs on every object of the input.
    let mut seen: HashMap<(Kind, &str, &str), &Origin> = HashMap::with_capacity(loaded.len());
    for l in loaded {
        let key = (l.object.kind(), l.object.namespace(), l.object.name());
        if let Some(first) = seen.insert(key, &l.origin) {
            return Err(SourceError {
                file: l.origin.file.clone(),
                document: Some(l.origin.document),
                line: Some(l.origin.line),
                object: Some(l.object.key().to_string()),
                message: match l.origin.item {
                    Some(item) => format!("items[{item}]: declared twice: first at {first}"),
                    None => format!("declared twice: first at {first}"),
                },
            });
        }
    }
    Ok(())
}

/// Applies loaded objects to `store` as one batch: all or nothing, so a bad manifest never
/// leaves half a change behind. Returns whether anything changed.
pub fn apply_loaded(store: &mut Store, loaded: Vec<Loaded>) -> Result<bool, Error> {
    let (origins, objects): (Vec<Origin>, Vec<Object>) =
        loaded.into_iter().map(|l| (l.origin, l.object)).unzip();
    store.apply_all(objects).map_err(|e| Error::Rejected {
        origin: origins.get(e.index).cloned().unwrap_or(Origin {
            file: String::new(),
            document: 0,
            line: 0,
            item: None,
        }),
        error: e.error,
    })
}

/// `istiod --check`: loads `paths` into a fresh store and returns it, or the first error
/// (parse or semantic) with the file, line, object and field it is about.
pub fn validate(paths: &[PathBuf], config: StoreConfig) -> Result<Store, Error> {
    let loaded = load_paths(paths)?;
    let mut store = Store::new(config);
    apply_loaded(&mut store, loaded)?;
    Ok(store)
}
