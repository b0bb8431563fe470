//! The shape of a YAML text — how deeply it nests and how many nodes it holds — found on the
//! raw text before a YAML parser sees it: shared by everything here that reads YAML a person
//! wrote (the ztunnel's local config, istiod's configuration sources).
//!
//! Two costs of parsing grow faster than the text: libyaml (under serde_yaml) takes time
//! quadratic in the nesting of flow collections (100,000 nested `[` took 22–41 s before
//! serde_yaml's recursion limit refused them), and a parsed `serde_yaml::Value` takes some
//! 200 bytes a node whatever the text's size (8 MiB of `[1,1,…]` is 4 million nodes, near
//! 1 GB). So each document is first scanned once, linearly, and refused past [`MAX_DEPTH`]
//! levels or [`MAX_NODES`] nodes. The scan follows libyaml's scanner where it decides
//! nesting (indentation of block collections, `[`/`{` outside scalars and comments, where
//! scalars start and end), so a bracket inside a quoted string or a block scalar is not
//! counted and one that opens a collection is never missed. Where the two could disagree,
//! libyaml stops with a syntax error at that point anyway, so the scan never lets a deeper
//! document through. Nodes are counted from the tokens that make one (a scalar, an alias,
//! a collection's start (block or flow), a block sequence entry or a mapping's key or value
//! indicator, each of which may stand for an empty node): never fewer
//! than the parser makes, but for aliases, which count once (serde_yaml bounds how far they
//! expand itself).

/// The deepest nesting of collections (mappings and sequences, block or flow) accepted in a
/// document: 64. Kubernetes objects nest a dozen levels at most (a Deployment's container
/// ports are at depth 8); serde_yaml itself gives up at 128.
pub const MAX_DEPTH: usize = 64;

/// The most nodes (scalars, aliases, collections, as counted) accepted in one document:
/// 1,000,000, at most some 200 MB once parsed. A Kubernetes object has tens to hundreds; a
/// `List` of 10,000 small pods fits. Larger inputs are split into documents, each parsed and
/// dropped in turn.
pub const MAX_NODES: usize = 1_000_000;

/// Where a document first nests deeper than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    /// 1-based line, within the scanned text.
    pub line: usize,
}

/// Why a document is refused before parsing, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversized {
    /// Nested deeper than the limit, first at this 1-based line.
    Deep { line: usize },
    /// More nodes than the limit, the one past it at this 1-based line.
    Many { line: usize },
}

/// Scans one YAML document (or a stream of them) and returns where it first nests deeper
/// than `max` levels, if it does. Linear in the length of `text`, and stops at that point.
pub fn too_deep(text: &str, max: usize) -> Option<TooDeep> {
    match oversized(text, max, usize::MAX) {
        Some(Oversized::Deep { line }) => Some(TooDeep { line }),
        _ => None,
    }
}

/// Scans one YAML document and returns where it first nests deeper than `max_depth` levels
/// or holds more than `max_nodes` nodes, if it does. Linear in the length of `text`, and
/// stops at that point. Document markers (`---`) do not reset the count: split a stream
/// into documents first.
pub fn oversized(text: &str, max_depth: usize, max_nodes: usize) -> Option<Oversized> {
    let mut scan = Scan {
        b: text.as_bytes(),
        i: 0,
        line: 1,
        col: 0,
        indents: Vec::new(),
        flow: 0,
        key: None,
        key_allowed: true,
        max: max_depth,
        nodes: 0,
        max_nodes,
    };
    scan.run().err()
}

/// libyaml's scanner state, as far as nesting needs it.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    /// 1-based line and 0-based column (in characters) of `i`.
    line: usize,
    col: usize,
    /// Columns of the open block collections (libyaml's indentation stack).
    indents: Vec<usize>,
    /// Open flow collections.
    flow: usize,
    /// Where a possible simple key (`key: value`) starts: line and column.
    key: Option<(usize, usize)>,
    key_allowed: bool,
    max: usize,
    /// Nodes begun so far, and how many are allowed.
    nodes: usize,
    max_nodes: usize,
}

impl Scan<'_> {
    fn at(&self, offset: usize) -> u8 {
        self.b.get(self.i + offset).copied().unwrap_or(0)
    }

    fn eof(&self) -> bool {
        self.i >= self.b.len()
    }

    /// The length of the line break at `i + offset`, 0 if none: `\r\n`, `\r`, `\n`, and the
    /// Unicode breaks libyaml also honours (NEL, LS, PS).
    fn break_len(&self, offset: usize) -> usize {
        match (self.at(offset), self.at(offset + 1), self.at(offset + 2)) {
            (b'\r', b'\n', _) => 2,
            (b'\r' | b'\n', _, _) => 1,
            (0xC2, 0x85, _) => 2,
            (0xE2, 0x80, 0xA8 | 0xA9) => 3,
            _ => 0,
        }
    }

    fn is_break(&self) -> bool {
        self.break_len(0) > 0
    }

    fn is_blank_at(&self, offset: usize) -> bool {
        matches!(self.at(offset), b' ' | b'\t')
    }

    /// Blank, break or end of input at `i + offset`.
    fn is_blankz_at(&self, offset: usize) -> bool {
        self.i + offset >= self.b.len() || self.is_blank_at(offset) || self.break_len(offset) > 0
    }

    fn is_flow_indicator(c: u8) -> bool {
        matches!(c, b',' | b'[' | b']' | b'{' | b'}')
    }

    /// Moves past one character or line break.
    fn advance(&mut self) {
        if self.eof() {
            return;
        }
        let n = self.break_len(0);
        if n > 0 {
            self.i += n;
            self.line += 1;
            self.col = 0;
            return;
        }
        self.i += 1;
        // Continuation bytes of a UTF-8 character do not start a column.
        while self.i < self.b.len() && self.b[self.i] & 0xC0 == 0x80 {
            self.i += 1;
        }
        self.col += 1;
    }

    fn skip_line(&mut self) {
        while !self.eof() && !self.is_break() {
            self.advance();
        }
    }

    /// `---` or `...` at column 0 followed by a blank: a document marker.
    fn at_document_marker(&self) -> bool {
        let rest = self.b.get(self.i..).unwrap_or_default();
        self.col == 0
            && (rest.starts_with(b"---") || rest.starts_with(b"..."))
            && self.is_blankz_at(3)
    }

    fn check(&self) -> Result<(), Oversized> {
        if self.indents.len() + self.flow > self.max {
            return Err(Oversized::Deep { line: self.line });
        }
        Ok(())
    }

    /// One more node begins here.
    fn node(&mut self) -> Result<(), Oversized> {
        self.nodes += 1;
        if self.nodes > self.max_nodes {
            return Err(Oversized::Many { line: self.line });
        }
        Ok(())
    }

    /// A block collection starting at `column`, unless one is open there already.
    fn roll(&mut self, column: usize) -> Result<(), Oversized> {
        if self.flow == 0 && self.indents.last().is_none_or(|&top| column > top) {
            self.indents.push(column);
            self.node()?;
            self.check()?;
        }
        Ok(())
    }

    fn unroll(&mut self, column: usize) {
        if self.flow == 0 {
            while self.indents.last().is_some_and(|&top| top > column) {
                self.indents.pop();
            }
        }
    }

    fn save_key(&mut self) {
        if self.key_allowed {
            self.key = Some((self.line, self.col));
        }
    }

    /// Whitespace, comments and line breaks up to the next token.
    fn skip_to_token(&mut self) {
        loop {
            // A byte order mark is skipped at the start of a line only; elsewhere libyaml
            // reads it as text.
            let bom = self.col == 0
                && self
                    .b
                    .get(self.i..)
                    .is_some_and(|rest| rest.starts_with("\u{feff}".as_bytes()));
            if self.is_blank_at(0) || bom {
                self.advance();
            } else if self.at(0) == b'#' {
                self.skip_line();
            } else if !self.eof() && self.is_break() {
                self.advance();
                if self.flow == 0 {
                    self.key_allowed = true;
                }
            } else {
                return;
            }
        }
    }

    fn run(&mut self) -> Result<(), Oversized> {
        loop {
            self.skip_to_token();
            if self.eof() {
                return Ok(());
            }
            // A simple key ends with its line.
            if self.key.is_some_and(|(line, _)| line != self.line) {
                self.key = None;
            }
            self.unroll(self.col);
            let c = self.at(0);
            if self.col == 0 && c == b'%' {
                self.skip_line();
                continue;
            }
            if self.at_document_marker() {
                self.indents.clear();
                self.key = None;
                self.key_allowed = false;
                for _ in 0..3 {
                    self.advance();
                }
                continue;
            }
            match c {
                b'[' | b'{' => {
                    self.node()?;
                    self.save_key();
                    self.flow += 1;
                    self.check()?;
                    self.key_allowed = true;
                    self.advance();
                }
                b']' | b'}' => {
                    self.flow = self.flow.saturating_sub(1);
                    self.key = None;
                    self.key_allowed = false;
                    self.advance();
                }
                b',' => {
                    self.key = None;
                    self.key_allowed = true;
                    self.advance();
                }
                b'-' if self.is_blankz_at(1) => {
                    self.node()?;
                    self.roll(self.col)?;
                    self.key = None;
                    self.key_allowed = true;
                    self.advance();
                }
                b'?' if self.flow > 0 || self.is_blankz_at(1) => {
                    self.node()?;
                    self.roll(self.col)?;
                    self.key = None;
                    self.key_allowed = self.flow == 0;
                    self.advance();
                }
                b':' if self.flow > 0 || self.is_blankz_at(1) => {
                    // The value, which may be empty (a null).
                    self.node()?;
                    let column = self.key.map_or(self.col, |(_, column)| column);
                    self.roll(column)?;
                    self.key = None;
                    self.key_allowed = self.flow == 0;
                    self.advance();
                }
                b'*' | b'&' => {
                    if c == b'*' {
                        self.node()?;
                    }
                    self.save_key();
                    self.key_allowed = false;
                    self.advance();
                    while self.at(0).is_ascii_alphanumeric() || matches!(self.at(0), b'-' | b'_') {
                        self.advance();
                    }
                }
                b'!' => {
                    self.save_key();
                    self.key_allowed = false;
                    self.tag();
                }
                b'|' | b'>' if self.flow == 0 => {
                    self.node()?;
                    self.key = None;
                    self.key_allowed = true;
                    self.block_scalar();
                }
                b'\'' | b'"' => {
                    self.node()?;
                    self.save_key();
                    self.key_allowed = false;
                    self.quoted(c);
                }
                _ => {
                    self.node()?;
                    self.save_key();
                    self.key_allowed = false;
                    self.plain();
                }
            }
        }
    }

    /// `!tag`, `!!tag`, `!<verbatim>`: up to a blank (libyaml refuses anything else after
    /// a tag, so stopping there is enough).
    fn tag(&mut self) {
        self.advance();
        if self.at(0) == b'<' {
            while !self.eof() && self.at(0) != b'>' && !self.is_blankz_at(0) {
                self.advance();
            }
            if self.at(0) == b'>' {
                self.advance();
            }
            return;
        }
        while !(self.is_blankz_at(0) || (self.flow > 0 && self.at(0) == b',')) {
            self.advance();
        }
    }

    /// A single- (`''` escapes a quote) or double-quoted (`\` escapes) scalar; it may span
    /// lines but not a document marker (libyaml refuses that).
    fn quoted(&mut self, quote: u8) {
        self.advance();
        while !self.eof() && !self.at_document_marker() {
            let c = self.at(0);
            if quote == b'\'' && c == b'\'' {
                if self.at(1) == b'\'' {
                    self.advance();
                    self.advance();
                    continue;
                }
                self.advance();
                return;
            }
            if quote == b'"' && c == b'\\' {
                self.advance();
                if !self.eof() {
                    self.advance();
                }
                continue;
            }
            if quote == b'"' && c == b'"' {
                self.advance();
                return;
            }
            self.advance();
        }
    }

    /// A plain scalar, with libyaml's rules for where it ends: `: ` or ` #`, a flow indicator
    /// in a flow collection, a document marker, or a line less indented than the collection
    /// it is in.
    fn plain(&mut self) {
        let indent = self.indents.last().map_or(0, |&top| top + 1);
        let mut leading_blanks = false;
        loop {
            if self.at_document_marker() || self.at(0) == b'#' {
                break;
            }
            while !self.is_blankz_at(0) {
                let c = self.at(0);
                // In a flow collection `a:b` is one scalar (a URL, say): `:` ends it only
                // before a blank (or, an error in libyaml, an indicator).
                let next = self.at(1);
                if (c == b':'
                    && (self.is_blankz_at(1)
                        || (self.flow > 0 && (Self::is_flow_indicator(next) || next == b'?'))))
                    || (self.flow > 0 && Self::is_flow_indicator(c))
                {
                    break;
                }
                self.advance();
            }
            if !(self.is_blank_at(0) || (!self.eof() && self.is_break())) {
                break;
            }
            while self.is_blank_at(0) || (!self.eof() && self.is_break()) {
                if self.is_break() {
                    leading_blanks = true;
                }
                self.advance();
            }
            if self.flow == 0 && self.col < indent {
                break;
            }
        }
        if leading_blanks {
            self.key_allowed = true;
        }
    }

    /// Spaces up to `indent` (all of them while it is 0) and the empty lines after a block
    /// scalar's header or one of its lines; the greatest column reached, for auto-detection.
    /// `false` when libyaml would stop at a tab in the indentation.
    fn block_breaks(&mut self, indent: usize) -> (usize, bool) {
        let mut max_indent = 0;
        loop {
            while (indent == 0 || self.col < indent) && self.at(0) == b' ' {
                self.advance();
            }
            max_indent = max_indent.max(self.col);
            if (indent == 0 || self.col < indent) && self.at(0) == b'\t' {
                return (max_indent, false);
            }
            if self.eof() || !self.is_break() {
                return (max_indent, true);
            }
            self.advance();
        }
    }

    /// A literal (`|`) or folded (`>`) scalar: its lines are text, whatever they contain, as
    /// long as they are indented past the collection it belongs to.
    fn block_scalar(&mut self) {
        self.advance();
        let mut increment = 0;
        for _ in 0..2 {
            match self.at(0) {
                b'+' | b'-' => self.advance(),
                c @ b'1'..=b'9' => {
                    increment = usize::from(c - b'0');
                    self.advance();
                }
                _ => {}
            }
        }
        while self.is_blank_at(0) {
            self.advance();
        }
        if self.at(0) == b'#' {
            self.skip_line();
        }
        if self.eof() || !self.is_break() {
            // libyaml stops here with an error.
            return;
        }
        self.advance();
        let parent = self.indents.last().copied();
        let mut indent = match (increment, parent) {
            (0, _) => 0,
            (n, Some(top)) => top + n,
            (n, None) => n,
        };
        let (max_indent, ok) = self.block_breaks(indent);
        if !ok {
            return;
        }
        if indent == 0 {
            indent = max_indent.max(parent.map_or(0, |top| top + 1)).max(1);
        }
        while self.col == indent && !self.eof() {
            self.skip_line();
            if self.eof() {
                return;
            }
            self.advance();
            if !self.block_breaks(indent).1 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(text: &str) -> usize {
        (0..=200)
            .find(|&max| too_deep(text, max).is_none())
            .unwrap_or(usize::MAX)
    }

    #[test]
    fn block_and_flow_nesting_count() {
        assert_eq!(depth("a: 1\n"), 1);
        assert_eq!(depth("a:\n  b:\n    c: 1\n"), 3);
        assert_eq!(depth("a: [1, {b: [2]}]\n"), 4);
        assert_eq!(depth("- - - x\n"), 3);
        assert_eq!(depth("- a: 1\n  b:\n  - c\n"), 2);
        assert_eq!(
            depth(&format!("a: {}{}\n", "[".repeat(70), "]".repeat(70))),
            71
        );
    }

    #[test]
    fn brackets_in_scalars_and_comments_do_not_count() {
        let text = "a: \"[[[[\"\nb: '[[[''['\nc: x[[[[\nd: |\n  [[[[\n  {{{{\ne: 1 # [[[[\n# [[[[\nf: >-\n    [[[[\n";
        assert_eq!(depth(text), 1);
        // A flow collection's brackets count, and a plain scalar ends at one inside it.
        assert_eq!(depth("a: [x, [y]]\n"), 3);
        assert_eq!(depth("a: {x: [y]}\n"), 3);
    }

    #[test]
    fn a_block_scalar_ends_where_its_indentation_does() {
        let text = "a: |\n  text\nb: [[[x]]]\n";
        assert_eq!(depth(text), 4);
        let text = "- a: |\n    text\n  b: [[x]]\n";
        assert_eq!(depth(text), 4);
    }

    #[test]
    fn a_multi_line_quoted_scalar_hides_its_brackets_only() {
        assert_eq!(depth("a: \"one\n  [[[[ two\"\nb: [[x]]\n"), 3);
        assert_eq!(depth("a: 'it''s'\nb: [[x]]\n"), 3);
    }

    #[test]
    fn a_quote_inside_a_plain_scalar_opens_nothing() {
        // Were `'` taken as a quote, the brackets on the next line would be missed.
        assert_eq!(depth("a: it's\nb: [[[[x]]]]\nc: '\n"), 5);
        // In a flow collection too: `a:'b` is one plain scalar.
        assert_eq!(depth("a: [a:'b, [[[x]]], c']\n"), 5);
    }

    /// Whatever comes before it, nesting the parser reaches is nesting the scan counts: random
    /// prefixes of YAML's indicators, then 200 levels; whenever serde_yaml gets deep enough to
    /// give up, the scan must have refused.
    #[test]
    fn no_prefix_hides_nesting_from_the_scan() {
        const ALPHABET: &[&str] = &[
            "[", "]", "{", "}", "'", "\"", "#", ":", "-", "?", "|", ">", "!", "&", "*", ",", "%",
            " ", "\n", "\t", "a", "b", "é", "\r", "\u{85}", "\u{2028}", "\u{feff}",
        ];
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut reached = 0;
        for case in 0..6_000 {
            let mut prefix = String::new();
            for _ in 0..(case % 40) {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                prefix.push_str(ALPHABET[(seed >> 33) as usize % ALPHABET.len()]);
            }
            for join in [" ", "\n", "\nk: ", "\n  - "] {
                let text = format!("{prefix}{join}{deep}\n");
                let parsed = serde_yaml::from_str::<serde_yaml::Value>(&text);
                if parsed.is_err_and(|e| e.to_string().contains("recursion limit")) {
                    reached += 1;
                    assert!(too_deep(&text, MAX_DEPTH).is_some(), "missed: {text:?}");
                }
            }
        }
        assert!(reached > 1_000, "only {reached} cases reached the nesting");
    }

    #[test]
    fn deep_input_stops_at_the_limit_in_linear_time() {
        let text = format!("a: {}{}\n", "[".repeat(1_000_000), "]".repeat(1_000_000));
        let start = std::time::Instant::now();
        assert_eq!(too_deep(&text, 64), Some(TooDeep { line: 1 }));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        let lines: String = (0..200).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        assert_eq!(too_deep(&lines, 64), Some(TooDeep { line: 65 }));
    }

    /// Nodes of a parsed value: itself and everything in it, keys included.
    fn parsed_nodes(value: &serde_yaml::Value) -> usize {
        use serde_yaml::Value;
        1 + match value {
            Value::Sequence(items) => items.iter().map(parsed_nodes).sum(),
            Value::Mapping(map) => map
                .iter()
                .map(|(k, v)| parsed_nodes(k) + parsed_nodes(v))
                .sum(),
            Value::Tagged(tagged) => parsed_nodes(&tagged.value) - 1,
            _ => 0,
        }
    }

    #[test]
    fn nodes_are_never_undercounted() {
        let samples = [
            "a: 1\nb: [1, 2, {c: d}]\n",
            "- 1\n-\n- - x\n  - 'y'\n- \"z\"\n",
            "? complex\n: value\nlist:\n- {a: [], b: {}}\n",
            "text: |\n  a block\n  scalar\nfolded: >\n  x\nempty:\n",
            "[1, [2, [3, [4]]], {a: 1, b: [x, y]}, '', \"\"]\n",
            "!!map {a: !!str 1}\n",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  labels: {app: web}\n\
             spec:\n  containers:\n  - name: app\n    ports:\n    - containerPort: 8080\n",
        ];
        for text in samples {
            let value: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
            let nodes = parsed_nodes(&value);
            assert!(
                oversized(text, MAX_DEPTH, nodes - 1).is_some(),
                "{text:?}: the scan counted fewer than the parser's {nodes} nodes"
            );
            assert_eq!(oversized(text, MAX_DEPTH, 2 * nodes + 2), None, "{text:?}");
        }
    }

    #[test]
    fn many_nodes_are_refused_in_linear_time_before_parsing() {
        // 8 MiB of a flat list: four million nodes, near 1 GB once parsed.
        let text = format!("a: [{}1]\n", "1,".repeat(4 << 20));
        let start = std::time::Instant::now();
        assert_eq!(
            oversized(&text, MAX_DEPTH, MAX_NODES),
            Some(Oversized::Many { line: 1 })
        );
        let lines = "- x\n".repeat(MAX_NODES);
        assert!(matches!(
            oversized(&lines, MAX_DEPTH, MAX_NODES),
            Some(Oversized::Many { line }) if line <= MAX_NODES / 2 + 1
        ));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        // A pod is tens of nodes.
        let pod = "kind: Pod\nmetadata: {name: a, labels: {app: a}}\nspec: {nodeName: n}\n";
        assert_eq!(oversized(pod, MAX_DEPTH, 40), None);
    }
}
