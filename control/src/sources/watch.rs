//! A watched `--config-dir`: what upstream's file-based config source does. istiod serving
//! from files re-reads them when they change, so a user edits a policy in the directory (or a
//! harness drives a timeline) and the mesh follows without a restart.
//!
//! A change is noticed by polling the files' sizes and modification times (no inotify crate
//! for what a stat per file does); the whole input is then read again and the store made to
//! hold exactly it ([`sync_loaded`]): objects gone from the files are deleted, new and changed
//! ones applied, as one batch. Input that does not load or that the store refuses changes
//! nothing: istiod keeps serving the last good configuration and says why.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::SystemTime;

use super::{Error, Loaded, apply_loaded, files_of, load_paths};
use crate::object::ObjectKey;
use crate::store::Store;

/// What the watched files looked like: every file with its size and modification time, or
/// the error that listing them gave (a directory that vanished is a change too).
type Fingerprint = Result<Vec<(PathBuf, u64, Option<SystemTime>)>, String>;

/// The configuration paths istiod serves from, and what they looked like when last read.
#[derive(Debug)]
pub struct ConfigWatch {
    paths: Vec<PathBuf>,
    seen: Fingerprint,
}

impl ConfigWatch {
    /// Watches `paths` from how they look now: call before the first load, so a change made
    /// while it runs is read again rather than missed. `None` for stdin (`-`), which cannot be
    /// read twice.
    pub fn new(paths: Vec<PathBuf>) -> Option<ConfigWatch> {
        if paths.iter().any(|p| p.as_os_str() == "-") {
            return None;
        }
        let seen = fingerprint(&paths);
        Some(ConfigWatch { paths, seen })
    }

    /// The files again if they changed since last read: `None` when they did not, else what
    /// they hold now or why that cannot be read. A failed read is not retried until the files
    /// change again (the next edit fixes it; the error is not repeated every poll).
    pub fn changed(&mut self) -> Option<Result<Vec<Loaded>, Error>> {
        let now = fingerprint(&self.paths);
        if now == self.seen {
            return None;
        }
        self.seen = now;
        Some(load_paths(&self.paths).map_err(Error::from))
    }
}

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut files = Vec::new();
    for path in paths {
        for file in files_of(path).map_err(|e| e.to_string())? {
            let metadata = std::fs::metadata(&file).map_err(|e| e.to_string())?;
            files.push((file, metadata.len(), metadata.modified().ok()));
        }
    }
    Ok(files)
}

/// Makes the objects `store` declares exactly `loaded`, all or nothing: what the files no
/// longer hold is deleted, the rest applied (unchanged objects cost nothing). Returns whether
/// anything changed; on an error the store is as it was.
pub fn sync_loaded(store: &mut Store, loaded: Vec<Loaded>) -> Result<bool, Error> {
    let keep: BTreeSet<ObjectKey> = loaded.iter().map(|l| l.object.key()).collect();
    let gone: Vec<ObjectKey> = store
        .declared()
        .map(|o| o.key())
        .filter(|key| !keep.contains(key))
        .collect();
    let mut next = store.clone();
    let mut changed = false;
    for key in gone {
        changed |= next.delete(key.kind, &key.namespace, &key.name);
    }
    changed |= apply_loaded(&mut next, loaded)?;
    if changed {
        *store = next;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::object::Kind;
    use crate::store::StoreConfig;

    const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
    const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
metadata: {name: deny-web, namespace: shop}\nspec:\n  action: DENY\n  rules:\n  - from:\n    \
- source: {principals: [\"cluster.local/ns/shop/sa/web\"]}\n";

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let path =
                std::env::temp_dir().join(format!("istiod-watch-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }

        /// Writes `file` as an editor that saves by rename would.
        fn write(&self, file: &str, text: &str) {
            let staged = self.0.join(format!(".{file}.staged"));
            std::fs::write(&staged, text).expect("write");
            std::fs::rename(&staged, self.0.join(file)).expect("rename");
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn has_policy(store: &Store) -> bool {
        store
            .get(Kind::AuthorizationPolicy, "shop", "deny-web")
            .is_some()
    }

    /// Loads what the watch reports into `store`, as istiod's loop does.
    fn poll(watch: &mut ConfigWatch, store: &mut Store) -> Option<Result<bool, Error>> {
        watch
            .changed()
            .map(|loaded| loaded.and_then(|l| sync_loaded(store, l)))
    }

    /// What istiod does at start: watch, then load what is there.
    fn serve(dir: &Dir) -> (ConfigWatch, Store) {
        let watch = ConfigWatch::new(vec![dir.path().to_path_buf()]).expect("watchable");
        let mut store = Store::new(StoreConfig::default());
        let loaded = load_paths(&[dir.path().to_path_buf()]).expect("load");
        sync_loaded(&mut store, loaded).expect("initial");
        (watch, store)
    }

    #[test]
    fn an_added_and_then_removed_policy_is_followed() {
        let dir = Dir::new("follow");
        dir.write("namespace.yaml", NAMESPACE);
        let (mut watch, mut store) = serve(&dir);
        assert!(
            poll(&mut watch, &mut store).is_none(),
            "nothing changed yet"
        );

        dir.write("policy.yaml", POLICY);
        assert!(matches!(poll(&mut watch, &mut store), Some(Ok(true))));
        assert!(has_policy(&store));
        assert!(poll(&mut watch, &mut store).is_none());

        std::fs::remove_file(dir.path().join("policy.yaml")).expect("remove");
        assert!(matches!(poll(&mut watch, &mut store), Some(Ok(true))));
        assert!(
            !has_policy(&store),
            "an object gone from the files is deleted"
        );
        assert!(
            store.get(Kind::Namespace, "", "shop").is_some(),
            "the rest stays"
        );
    }

    #[test]
    fn bad_input_changes_nothing_and_the_next_good_edit_is_read() {
        let dir = Dir::new("bad");
        dir.write("all.yaml", &format!("{NAMESPACE}---\n{POLICY}"));
        let (mut watch, mut store) = serve(&dir);

        dir.write("all.yaml", &format!("{NAMESPACE}---\nkind: [unclosed\n"));
        let error = match poll(&mut watch, &mut store) {
            Some(Err(e)) => e.to_string(),
            other => panic!("malformed YAML must be an error, got {other:?}"),
        };
        assert!(error.contains("all.yaml"), "names the file: {error}");
        assert!(has_policy(&store), "the last good configuration stays");
        assert!(
            poll(&mut watch, &mut store).is_none(),
            "the same bad files are not read again every poll"
        );

        // The store refuses it (its namespace is missing): all or nothing.
        dir.write("all.yaml", POLICY);
        assert!(matches!(poll(&mut watch, &mut store), Some(Err(_))));
        assert!(store.get(Kind::Namespace, "", "shop").is_some());

        dir.write("all.yaml", NAMESPACE);
        assert!(matches!(poll(&mut watch, &mut store), Some(Ok(true))));
        assert!(!has_policy(&store));
    }

    #[test]
    fn stdin_is_not_watched() {
        assert!(ConfigWatch::new(vec![PathBuf::from("-")]).is_none());
    }
}
