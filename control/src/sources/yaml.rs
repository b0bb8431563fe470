//! Plain Kubernetes YAML (what a user would `kubectl apply`) into typed [`Object`]s: several
//! documents per file, `List` kinds, and errors that name the file, line, object and field.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::limits::{MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, Oversized, oversized, too_large};
use super::{Loaded, Origin, SourceError};
use crate::object::{Kind, Object};

/// One `---`-separated document: where it starts (1-based line) and its text.
struct Chunk<'a> {
    line: usize,
    text: &'a str,
}

/// Splits a YAML stream at its `---` lines. Each chunk keeps its own marker line, so line
/// numbers inside a chunk are offsets from `line`.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let is_marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_marker && offset > start {
            chunks.push(Chunk {
                line: start_line,
                text: &text[start..offset],
            });
            start = offset;
            start_line = index + 1;
        } else if is_marker {
            start_line = index + 1;
        }
        offset += line.len();
    }
    if start < text.len() {
        chunks.push(Chunk {
            line: start_line,
            text: &text[start..],
        });
    }
    chunks
}

/// serde_yaml's message, without its trailing ` at line L column C` (the caller reports
/// the line), with any other line numbers in it made relative to the file (`offset` is the
/// chunk's first line minus one); and the line, relative to the chunk.
fn describe(error: &serde_yaml::Error, offset: usize) -> (String, Option<usize>) {
    let mut message = error.to_string();
    let line = error.location().map(|location| {
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
        location.line()
    });
    (renumber(&message, offset), line)
}

/// Adds `offset` to every `line N` in `message`.
fn renumber(message: &str, offset: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("line ") {
        let (before, after) = rest.split_at(at + "line ".len());
        out.push_str(before);
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// The first line of `text` (1-based) where the last key of `path` appears as a key: a
/// best-effort pointer for fields serde reports without a position.
fn line_of_key(text: &str, path: &str) -> Option<usize> {
    let key = path.rsplit('.').next()?;
    let key = key.split('[').next()?;
    let needle = format!("{key}:");
    text.lines()
        .position(|line| {
            line.match_indices(&needle).any(|(i, _)| {
                line[..i]
                    .chars()
                    .next_back()
                    .is_none_or(|c| c == ' ' || c == '{' || c == ',' || c == '-')
            })
        })
        .map(|i| i + 1)
}

/// `a.b[0].c` from serde_ignored's path.
fn render_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render_path(parent)),
        Path::Map { parent, key } => {
            let parent = render_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render_path(parent),
    }
}

/// Deserializes one document as `T`, refusing fields `T` would silently drop (the API server
/// rejects them too under strict field validation). `apiVersion` and `kind` are checked by
/// the caller, so types that do not store them may ignore them.
fn typed<T: DeserializeOwned>(text: &str, offset: usize) -> Result<T, (String, Option<usize>)> {
    let mut ignored = Vec::new();
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let value: T = serde_ignored::deserialize(deserializer, |path| {
        ignored.push(render_path(&path));
    })
    .map_err(|e| describe(&e, offset))?;
    match ignored
        .into_iter()
        .find(|p| p != "apiVersion" && p != "kind")
    {
        Some(path) => {
            let line = line_of_key(text, &path);
            Err((format!("{path}: unknown field"), line))
        }
        None => Ok(value),
    }
}

fn object_of(kind: Kind, text: &str, offset: usize) -> Result<Object, (String, Option<usize>)> {
    Ok(match kind {
        Kind::Namespace => Object::Namespace(typed(text, offset)?),
        Kind::Node => Object::Node(typed(text, offset)?),
        Kind::ServiceAccount => Object::ServiceAccount(typed(text, offset)?),
        Kind::Service => Object::Service(typed(text, offset)?),
        Kind::EndpointSlice => Object::EndpointSlice(typed(text, offset)?),
        Kind::Deployment => Object::Deployment(typed(text, offset)?),
        Kind::Pod => Object::Pod(typed(text, offset)?),
        Kind::Gateway => Object::Gateway(typed(text, offset)?),
        Kind::HttpRoute => Object::HttpRoute(typed(text, offset)?),
        Kind::GrpcRoute => Object::GrpcRoute(typed(text, offset)?),
        Kind::AuthorizationPolicy => Object::AuthorizationPolicy(typed(text, offset)?),
        Kind::PeerAuthentication => Object::PeerAuthentication(typed(text, offset)?),
        Kind::FaultInjection => Object::FaultInjection(typed(text, offset)?),
    })
}

fn string_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = value;
    for key in path {
        v = v.get(*key)?;
    }
    v.as_str()
}

/// `Kind ns/name` for messages, from whatever the document says.
fn describe_object(value: &Value) -> Option<String> {
    let kind = string_at(value, &["kind"]).unwrap_or("object");
    let name = string_at(value, &["metadata", "name"])?;
    let namespaced = Kind::from_name(kind).is_some_and(Kind::namespaced);
    Some(match string_at(value, &["metadata", "namespace"]) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None if namespaced => format!("{kind} default/{name}"),
        None => format!("{kind} {name}"),
    })
}

/// Parses one object already known to be a mapping. `text` is its own YAML (a document, or a
/// re-serialised `List` item); `line` is the chunk's first line.
fn parse_object(value: &Value, text: &str, origin: &Origin) -> Result<Object, SourceError> {
    let error = |message: String, line: Option<usize>| SourceError {
        file: origin.file.clone(),
        document: Some(origin.document),
        line: line.map(|l| origin.line + l - 1).or(Some(origin.line)),
        object: describe_object(value),
        message,
    };
    let Some(kind_name) = string_at(value, &["kind"]) else {
        return Err(error("missing `kind`".into(), None));
    };
    let api_version = string_at(value, &["apiVersion"]).unwrap_or("");
    let Some(kind) = Kind::from_name(kind_name) else {
        return Err(error(
            format!("unknown kind `{kind_name}` (apiVersion `{api_version}`)"),
            None,
        ));
    };
    if !kind.api_versions().contains(&api_version) {
        return Err(error(
            format!(
                "apiVersion `{api_version}` is not supported for {kind} (expected {})",
                kind.api_versions().join(" or ")
            ),
            None,
        ));
    }
    let mut object =
        object_of(kind, text, origin.line - 1).map_err(|(message, line)| error(message, line))?;
    if object.name().is_empty() {
        return Err(error("metadata.name: missing".into(), None));
    }
    let metadata = object.metadata_mut();
    if kind.namespaced() {
        // As kubectl does: no namespace means `default`.
        if metadata.namespace.as_deref().is_none_or(str::is_empty) {
            metadata.namespace = Some("default".into());
        }
    } else if metadata.namespace.is_some() {
        return Err(error(
            format!("metadata.namespace: {kind} is cluster-scoped"),
            None,
        ));
    }
    Ok(object)
}

/// Parses a YAML stream named `file` (a path, or `<stdin>`). The stream's size and each
/// document's nesting are checked on the text first, so the parser never sees input that
/// would cost it more than linear time.
pub(super) fn parse_str(text: &str, file: &str) -> Result<Vec<Loaded>, SourceError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(SourceError {
            file: file.to_string(),
            document: None,
            line: None,
            object: None,
            message: too_large(text.len() as u64),
        });
    }
    let mut loaded = Vec::new();
    for (index, chunk) in split_documents(text).into_iter().enumerate() {
        let origin = Origin {
            file: file.to_string(),
            document: index + 1,
            line: chunk.line,
            item: None,
        };
        if let Some(refused) = oversized(chunk.text, MAX_DEPTH, MAX_NODES) {
            let (line, message) = match refused {
                Oversized::Deep { line } => (
                    line,
                    format!(
                        "nested more than {MAX_DEPTH} levels deep (collections in \
                         collections); refused before parsing"
                    ),
                ),
                Oversized::Many { line } => (
                    line,
                    format!(
                        "more than {MAX_NODES} YAML nodes in one document; refused before \
                         parsing (split a List into documents)"
                    ),
                ),
            };
            return Err(SourceError {
                file: file.to_string(),
                document: Some(origin.document),
                line: Some(chunk.line + line - 1),
                object: None,
                message,
            });
        }
        let value: Value = serde_yaml::from_str(chunk.text).map_err(|e| {
            let (message, line) = describe(&e, chunk.line - 1);
            SourceError {
                file: file.to_string(),
                document: Some(origin.document),
                line: Some(line.map_or(chunk.line, |l| chunk.line + l - 1)),
                object: None,
                message,
            }
        })?;
        match &value {
            Value::Null => continue,
            Value::Mapping(_) => {}
            _ => {
                return Err(SourceError {
                    file: file.to_string(),
                    document: Some(origin.document),
                    line: Some(chunk.line),
                    object: None,
                    message: "a document must be a mapping (a Kubernetes object)".into(),
                });
            }
        }
        let is_list = string_at(&value, &["kind"]).is_some_and(|k| k.ends_with("List"))
            && value.get("items").is_some();
        if !is_list {
            loaded.push(Loaded {
                object: parse_object(&value, chunk.text, &origin)?,
                origin,
            });
            continue;
        }
        let items = value
            .get("items")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        for (item_index, item) in items.iter().enumerate() {
            let item_error = |message: String| SourceError {
                file: file.to_string(),
                document: Some(origin.document),
                line: Some(chunk.line),
                object: describe_object(item).or(Some(format!("items[{item_index}]"))),
                message,
            };
            if !item.is_mapping() {
                return Err(item_error("a list item must be a mapping".into()));
            }
            let text = serde_yaml::to_string(item).map_err(|e| item_error(e.to_string()))?;
            let object = parse_object(item, &text, &origin).map_err(|mut e| {
                // Lines inside a re-serialised item mean nothing to the reader.
                e.line = Some(chunk.line);
                e.message = format!("items[{item_index}]: {}", e.message);
                e
            })?;
            loaded.push(Loaded {
                object,
                origin: Origin {
                    item: u32::try_from(item_index).ok(),
                    ..origin.clone()
                },
            });
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_line_numbers() {
        let chunks = split_documents("a: 1\n---\nb: 2\n--- \nc: 3\n");
        let lines: Vec<usize> = chunks.iter().map(|c| c.line).collect();
        assert_eq!(lines, [1, 2, 4]);
        assert_eq!(chunks[1].text, "---\nb: 2\n");
    }

    #[test]
    fn leading_marker_is_not_an_empty_document() {
        let chunks = split_documents("---\na: 1\n");
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].line, 1);
    }

    #[test]
    fn marker_needs_whitespace_after_it() {
        assert_eq!(split_documents("a: |\n  x\n---x: 1\n").len(), 1);
    }
}
