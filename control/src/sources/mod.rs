//! Where Kubernetes objects come from: YAML files, directories or stdin (what a user would
//! `kubectl apply`), or a live cluster through `kube` watchers ([`kube`]). Both end in the
//! same [`Store`](crate::store::Store) through its `apply`/`delete`, so translation never
//! knows which one it was.

pub mod kube;
mod object;
mod yaml;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use object::{Kind, Object, ObjectKey};

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
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (document {})",
            self.file, self.line, self.document
        )
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

/// Parses a YAML stream; `file` names it in errors.
pub fn parse_str(text: &str, file: &str) -> Result<Vec<Loaded>, SourceError> {
    yaml::parse_str(text, file)
}

fn read_error(file: &Path, error: &std::io::Error) -> SourceError {
    SourceError {
        file: file.display().to_string(),
        document: None,
        line: None,
        object: None,
        message: format!("cannot read: {error}"),
    }
}

/// `*.yaml` and `*.yml` files under `dir`, recursively, in sorted order.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| read_error(dir, &e))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| read_error(dir, &e))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a file, every YAML file of a directory (recursively, sorted), or stdin for `-`.
pub fn load_path(path: &Path) -> Result<Vec<Loaded>, SourceError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| read_error(Path::new("<stdin>"), &e))?;
        return parse_str(&text, "<stdin>");
    }
    let mut files = Vec::new();
    if path.is_dir() {
        yaml_files(path, &mut files)?;
    } else {
        files.push(path.to_path_buf());
    }
    let mut loaded = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| read_error(&file, &e))?;
        loaded.extend(parse_str(&text, &file.display().to_string())?);
    }
    Ok(loaded)
}

/// [`load_path`] for each path, in order.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Loaded>, SourceError> {
    let mut loaded = Vec::new();
    for path in paths {
        loaded.extend(load_path(path)?);
    }
    Ok(loaded)
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
