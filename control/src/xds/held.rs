//! What one client holds of one type, without a per-stream copy of the configuration.
//!
//! A client that has been sent a complete diff against a publish holds exactly the resources
//! of that publish it subscribed to, so a pointer to the publish (shared by every stream and
//! by the server's watch) says what it holds: a hundred ztunnels in sync with a cluster of
//! 10,000 workloads cost a hundred pointers, not a hundred name → version maps of 10,000
//! entries. A name → version map is kept only where nothing shared says it: what a
//! reconnecting client announces, or what it held when its subscription changed, until its
//! next complete diff.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use super::caller::Caller;
use super::resources::{Published, PublishedResources};

/// What a subscription asks for: everything, or the resources whose name or alias is one of
/// its keys.
#[derive(Debug, Default)]
pub(super) struct Interest {
    /// Who asks: resources with viewers go only to a caller that is one of them.
    pub caller: Caller,
    pub wildcard: bool,
    /// On-demand keys asked for. A key stays subscribed until the client unsubscribes it,
    /// as Delta xDS has it: one that matches nothing now is sent when it appears.
    pub keys: BTreeSet<String>,
}

impl Interest {
    pub fn wants(&self, name: &str, published: &Published) -> bool {
        let may_see = published
            .viewers
            .as_ref()
            .is_none_or(|viewers| self.caller.acts_as(viewers));
        may_see && self.wants_any(name, published)
    }

    /// Whether the subscription asks for `name`, whoever may see it.
    pub fn wants_any(&self, name: &str, published: &Published) -> bool {
        self.wildcard
            || self.keys.contains(name)
            || published
                .resource
                .aliases
                .iter()
                .any(|a| self.keys.contains(a))
    }
}

/// What a client holds of one type (or will, once it has read what was sent to it).
#[derive(Debug)]
pub(super) enum Held {
    /// The resources of this publish the [`Interest`] wants.
    Publish(Arc<PublishedResources>),
    /// Name → version, one by one.
    Names(BTreeMap<String, String>),
    /// A diff to `below` cut short by a newer publish: names up to `upto` as in `below`, the
    /// rest as `above`. Only ever one level deep (see [`super::stream`]).
    Split {
        below: Arc<PublishedResources>,
        upto: String,
        above: Box<Held>,
    },
}

impl Default for Held {
    fn default() -> Self {
        Held::Names(BTreeMap::new())
    }
}

/// The first key of `map` after `cursor` (all of them without one).
pub(super) fn first_after<'a, V>(
    map: &'a BTreeMap<String, V>,
    cursor: Option<&str>,
) -> Option<&'a str> {
    let from = cursor.map_or(Bound::Unbounded, Bound::Excluded);
    map.range::<str, _>((from, Bound::Unbounded))
        .next()
        .map(|(name, _)| name.as_str())
}

/// The version of `name` in `published`, if `interest` wants it.
fn version_in<'a>(
    published: &'a PublishedResources,
    type_url: &str,
    name: &str,
    interest: &Interest,
) -> Option<&'a str> {
    published
        .of(type_url)?
        .get(name)
        .filter(|p| interest.wants(name, p))
        .map(|p| p.resource.version.as_str())
}

/// The smaller of two names, either absent.
pub(super) fn least<'a>(a: Option<&'a str>, b: Option<&'a str>) -> Option<&'a str> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Held {
    /// The version the client holds of `name`, if any.
    pub fn version<'a>(
        &'a self,
        type_url: &str,
        name: &str,
        interest: &Interest,
    ) -> Option<&'a str> {
        match self {
            Held::Publish(published) => version_in(published, type_url, name, interest),
            Held::Names(names) => names.get(name).map(String::as_str),
            Held::Split { below, upto, above } => {
                if name <= upto.as_str() {
                    version_in(below, type_url, name, interest)
                } else {
                    above.version(type_url, name, interest)
                }
            }
        }
    }

    /// The first name after `cursor` the client may hold (a superset: [`Held::version`] says
    /// whether it does).
    pub fn next_name<'a>(&'a self, type_url: &str, cursor: Option<&str>) -> Option<&'a str> {
        match self {
            Held::Publish(published) => published.of(type_url).and_then(|m| first_after(m, cursor)),
            Held::Names(names) => first_after(names, cursor),
            Held::Split { below, above, .. } => least(
                below.of(type_url).and_then(|m| first_after(m, cursor)),
                above.next_name(type_url, cursor),
            ),
        }
    }

    /// Whether this is exactly `published`'s wanted resources.
    pub fn is(&self, published: &Arc<PublishedResources>) -> bool {
        matches!(self, Held::Publish(p) if Arc::ptr_eq(p, published))
    }

    /// Name → version of everything held, as `interest` saw it.
    pub fn names(&self, type_url: &str, interest: &Interest) -> BTreeMap<String, String> {
        let mut names = BTreeMap::new();
        let mut cursor: Option<&str> = None;
        while let Some(name) = self.next_name(type_url, cursor) {
            if let Some(version) = self.version(type_url, name, interest) {
                names.insert(name.to_string(), version.to_string());
            }
            cursor = Some(name);
        }
        names
    }
}
