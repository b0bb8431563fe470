//! An index over one port's sorted entries, so a request looks at the entries that can match
//! its path rather than at every entry: exact paths by value, prefixes by their value walked
//! segment by segment along the request path, and the rest (regular expressions, gRPC
//! matches) always. The candidates come back in precedence order.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Rule;
use super::matching::PathMatcher;

#[derive(Debug, Default)]
pub(crate) struct RuleIndex {
    exact: BTreeMap<String, Vec<usize>>,
    prefix: BTreeMap<String, Vec<usize>>,
    always: Vec<usize>,
}

impl RuleIndex {
    pub(crate) fn build(rules: &[Arc<Rule>]) -> Self {
        let mut index = RuleIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            match rule.matcher.as_ref().ok().and_then(|m| m.path()) {
                Some(PathMatcher::Exact(p)) => index.exact.entry(p.clone()).or_default().push(i),
                Some(PathMatcher::Prefix(p)) => index.prefix.entry(p.clone()).or_default().push(i),
                Some(PathMatcher::Regex(_)) | None => index.always.push(i),
            }
        }
        index
    }

    /// Positions of the entries whose path part can match `path`, ascending.
    pub(crate) fn candidates(&self, path: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self.always.clone();
        if let Some(list) = self.exact.get(path) {
            out.extend(list);
        }
        // Every segment boundary of the path is a prefix that matches it: ``, `/a`, `/a/b`…
        if let Some(list) = self.prefix.get("") {
            out.extend(list);
        }
        for (end, _) in path.match_indices('/').skip(1) {
            if let Some(list) = self.prefix.get(&path[..end]) {
                out.extend(list);
            }
        }
        let whole = path.trim_end_matches('/');
        if !whole.is_empty()
            && let Some(list) = self.prefix.get(whole)
        {
            out.extend(list);
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}
