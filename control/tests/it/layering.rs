//! The control plane's modules depend one way: the object model below everything, sources
//! feeding the store, the store never reaching back into sources. A `use` that turns an
//! arrow around fails here, naming the file.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files under `module` (a directory or a single `.rs` file) that mention any of `forbidden`.
fn offenders(module: &str, forbidden: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let path = src.join(module);
    if path.is_dir() {
        rust_files(&path, &mut files);
    } else {
        files.push(path.with_extension("rs"));
    }
    assert!(!files.is_empty(), "no files for {module}");
    files
        .into_iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            forbidden.iter().any(|needle| text.contains(needle))
        })
        .map(|f| f.display().to_string())
        .collect()
}

#[test]
fn the_store_does_not_reach_back_into_sources() {
    assert_eq!(
        offenders("store", &["crate::sources"]),
        Vec::<String>::new()
    );
}

#[test]
fn the_object_model_depends_on_nothing_above_it() {
    assert_eq!(
        offenders(
            "object",
            &[
                "crate::sources",
                "crate::store",
                "crate::translate",
                "crate::xds"
            ]
        ),
        Vec::<String>::new()
    );
}
