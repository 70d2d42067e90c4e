//! Splitting a Kubernetes-style list body (`{"metadata":{…},"items":[…],…}`) into its parts as the
//! body arrives, chunk by chunk, so each item can be decoded on its own with serde_json's fast
//! slice parser and compared with the view before the next one is read.
//!
//! Why not serde_json over an `io::Read`: its reader path costs a call per byte, several times
//! the slice parser, and it holds nothing back for us anyway (each item was buffered as a raw
//! value and parsed a second time). This scanner looks only at what delimits values — quotes,
//! escapes, brackets — and jumps through string contents with `memchr`, so it runs at a fraction
//! of a parse; only the bytes of the item being read are ever held.
//!
//! It checks structure, not grammar: each item is then parsed by serde_json, which rejects
//! anything malformed inside it. Anything out of place between items, a top level that is not an
//! object, or a body that ends early is an error, so a broken list is never taken for a whole one.

/// A part of the list, as found.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// The raw JSON of the list's `metadata`.
    Meta(&'a [u8]),
    /// The raw JSON of one element of `items`.
    Item(&'a [u8]),
}

/// Why a body is not a list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A byte where the list's structure does not allow one.
    #[error("unexpected {found} at byte {offset}, expected {expected}")]
    Unexpected {
        /// What was found.
        found: String,
        /// Where, counted from the start of the body.
        offset: u64,
        /// What the structure allows there.
        expected: &'static str,
    },
    /// One value is larger than allowed.
    #[error("one value of the list is over {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body ended before the list did.
    #[error("the body ended inside the list (after {offset} bytes)")]
    Truncated {
        /// Bytes read.
        offset: u64,
    },
}

/// What the top level expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    /// `{` opening the list.
    Open,
    /// A key, or `}` for an empty object.
    KeyOrClose,
    /// A key (after a comma).
    Key,
    /// Inside a key's string.
    InKey { escape: bool },
    /// `:` after a key.
    Colon,
    /// The value of a key other than `items`.
    Value,
    /// The value of `items`: `[` or `null`.
    ItemsValue,
    /// `,` or `}` after a value.
    CommaOrClose,
    /// Inside `items`: an element or `]`.
    ElemOrEnd,
    /// Inside `items`: an element (after a comma).
    Elem,
    /// Inside `items`: `,` or `]` after an element.
    ElemCommaOrEnd,
    /// After the closing `}`: only whitespace.
    Done,
}

/// What the current value is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// An element of `items`.
    Item,
    /// `metadata`.
    Meta,
    /// `items` that is not an array: it must be `null`.
    Null,
    /// Anything else: skipped.
    Skip,
}

/// The scanner of one value: containers by depth, strings by their quotes and escapes, and bare
/// scalars (numbers, `true`, `null`) up to the next delimiter.
#[derive(Debug, Clone, Copy, Default)]
struct ValueScan {
    depth: u32,
    in_string: bool,
    escape: bool,
    scalar: bool,
    started: bool,
}

fn is_delimiter(b: u8) -> bool {
    matches!(b, b',' | b'}' | b']' | b':' | b' ' | b'\t' | b'\n' | b'\r')
}

impl ValueScan {
    /// Advances over `bytes` (not empty; when not started, starting with the value's first
    /// byte, which is not a delimiter); returns how many belong to the value and whether it
    /// ended there.
    fn advance(&mut self, bytes: &[u8]) -> (usize, bool) {
        let mut i = 0;
        if !self.started {
            self.started = true;
            match bytes[0] {
                b'{' | b'[' => self.depth = 1,
                b'"' => self.in_string = true,
                _ => self.scalar = true,
            }
            i = 1;
        }
        if self.scalar {
            // A bare scalar ends at the first delimiter, which is not part of it.
            return match bytes[i..].iter().position(|b| is_delimiter(*b)) {
                Some(p) => (i + p, true),
                None => (bytes.len(), false),
            };
        }
        while i < bytes.len() {
            if self.in_string {
                if self.escape {
                    self.escape = false;
                    i += 1;
                    continue;
                }
                let Some(p) = memchr::memchr2(b'"', b'\\', &bytes[i..]) else {
                    return (bytes.len(), false);
                };
                i += p;
                if bytes[i] == b'\\' {
                    self.escape = true;
                } else {
                    self.in_string = false;
                    if self.depth == 0 {
                        return (i + 1, true);
                    }
                }
                i += 1;
                continue;
            }
            match bytes[i] {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return (i + 1, true);
                    }
                }
                _ => {}
            }
            i += 1;
        }
        (bytes.len(), false)
    }
}

/// Splits a list body fed in chunks; see the module doc.
#[derive(Debug)]
pub struct ListSplitter {
    top: Top,
    key: Vec<u8>,
    keep: Keep,
    value: ValueScan,
    buf: Vec<u8>,
    max_value: usize,
    offset: u64,
}

fn describe(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("byte 0x{b:02x}")
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Keys of interest are short; a longer key is kept only as far as needed to tell it apart.
const KEY_KEPT: usize = 16;

impl ListSplitter {
    /// A splitter that refuses any single value (an item, the metadata) over `max_value` bytes.
    pub fn new(max_value: usize) -> Self {
        Self {
            top: Top::Open,
            key: Vec::new(),
            keep: Keep::Skip,
            value: ValueScan::default(),
            buf: Vec::new(),
            max_value,
            offset: 0,
        }
    }

    /// Checks that the list ended; call after the last chunk.
    pub fn finish(&self) -> Result<(), SplitError> {
        if self.top == Top::Done {
            Ok(())
        } else {
            Err(SplitError::Truncated { offset: self.offset })
        }
    }

    /// Reads a chunk, handing each complete part to `on_piece` as soon as it is complete.
    pub fn feed(&mut self, chunk: &[u8], on_piece: &mut dyn FnMut(Piece<'_>)) -> Result<(), SplitError> {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            let in_value = matches!(self.top, Top::Value | Top::Elem | Top::ElemOrEnd | Top::ItemsValue);
            if in_value && (self.value.started || !is_space(b)) {
                if !self.value.started {
                    match (self.top, b) {
                        (Top::ElemOrEnd, b']') => {
                            self.top = Top::CommaOrClose;
                            i += 1;
                            continue;
                        }
                        (Top::ItemsValue, b'[') => {
                            self.top = Top::ElemOrEnd;
                            self.keep = Keep::Item;
                            i += 1;
                            continue;
                        }
                        (Top::ItemsValue, _) => self.keep = Keep::Null,
                        _ => {}
                    }
                    if is_delimiter(b) {
                        return Err(self.unexpected(b, i, "a value"));
                    }
                }
                let start = i;
                let (n, done) = self.value.advance(&chunk[i..]);
                i += n;
                self.take(&chunk[start..i], done, on_piece)?;
                if done {
                    self.value = ValueScan::default();
                    self.top = match self.top {
                        Top::Elem | Top::ElemOrEnd => Top::ElemCommaOrEnd,
                        _ => Top::CommaOrClose,
                    };
                }
                continue;
            }
            if let Top::InKey { escape } = self.top {
                if escape {
                    self.push_key(&chunk[i..=i]);
                    self.top = Top::InKey { escape: false };
                    i += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                    None => {
                        self.push_key(&chunk[i..]);
                        i = chunk.len();
                    }
                    Some(p) => {
                        self.push_key(&chunk[i..i + p]);
                        i += p;
                        if chunk[i] == b'\\' {
                            self.push_key(b"\\");
                            self.top = Top::InKey { escape: true };
                        } else {
                            self.top = Top::Colon;
                        }
                        i += 1;
                    }
                }
                continue;
            }
            if !is_space(b) {
                self.top = match (self.top, b) {
                    (Top::Open, b'{') => Top::KeyOrClose,
                    (Top::Open, _) => return Err(self.unexpected(b, i, "'{' opening the list")),
                    (Top::KeyOrClose | Top::Key, b'"') => {
                        self.key.clear();
                        Top::InKey { escape: false }
                    }
                    (Top::KeyOrClose, b'}') => Top::Done,
                    (Top::KeyOrClose | Top::Key, _) => return Err(self.unexpected(b, i, "a key of the list object")),
                    (Top::Colon, b':') if self.key == b"items" => Top::ItemsValue,
                    (Top::Colon, b':') => {
                        self.keep = if self.key == b"metadata" {
                            Keep::Meta
                        } else {
                            Keep::Skip
                        };
                        Top::Value
                    }
                    (Top::Colon, _) => return Err(self.unexpected(b, i, "':' after a key")),
                    (Top::CommaOrClose, b',') => Top::Key,
                    (Top::CommaOrClose, b'}') => Top::Done,
                    (Top::CommaOrClose, _) => return Err(self.unexpected(b, i, "',' or '}' in the list object")),
                    (Top::ElemCommaOrEnd, b',') => Top::Elem,
                    (Top::ElemCommaOrEnd, b']') => Top::CommaOrClose,
                    (Top::ElemCommaOrEnd, _) => return Err(self.unexpected(b, i, "',' or ']' between items")),
                    (Top::Done, _) => return Err(self.unexpected(b, i, "nothing after the list")),
                    (Top::Value | Top::Elem | Top::ElemOrEnd | Top::ItemsValue | Top::InKey { .. }, _) => {
                        unreachable!("values and keys are read above")
                    }
                };
            }
            i += 1;
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }

    /// Takes the part of the current value found in this chunk.
    fn take(&mut self, part: &[u8], done: bool, on_piece: &mut dyn FnMut(Piece<'_>)) -> Result<(), SplitError> {
        if self.keep == Keep::Skip {
            return Ok(());
        }
        if self.buf.len() + part.len() > self.max_value {
            return Err(SplitError::TooLarge { limit: self.max_value });
        }
        if !done {
            self.buf.extend_from_slice(part);
            return Ok(());
        }
        let whole: &[u8] = if self.buf.is_empty() {
            // The whole value is in this chunk: no copy.
            part
        } else {
            self.buf.extend_from_slice(part);
            &self.buf
        };
        let result = match self.keep {
            Keep::Item => {
                on_piece(Piece::Item(whole));
                Ok(())
            }
            Keep::Meta => {
                on_piece(Piece::Meta(whole));
                Ok(())
            }
            Keep::Null if whole == b"null" => Ok(()),
            Keep::Null => Err(SplitError::Unexpected {
                found: String::from_utf8_lossy(&whole[..whole.len().min(20)]).into_owned(),
                offset: self.offset,
                expected: "an array or null for items",
            }),
            Keep::Skip => Ok(()),
        };
        // The allocation is kept for the next item.
        self.buf.clear();
        result
    }

    fn unexpected(&self, b: u8, at: usize, expected: &'static str) -> SplitError {
        SplitError::Unexpected {
            found: describe(b),
            offset: self.offset + at as u64,
            expected,
        }
    }

    fn push_key(&mut self, bytes: &[u8]) {
        let room = KEY_KEPT.saturating_sub(self.key.len());
        self.key.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `body` fed in pieces of `step` bytes; returns (metadata, items) as text.
    fn split(body: &str, step: usize) -> Result<(Vec<String>, Vec<String>), SplitError> {
        let mut s = ListSplitter::new(1 << 20);
        let (mut meta, mut items) = (vec![], vec![]);
        for chunk in body.as_bytes().chunks(step.max(1)) {
            s.feed(chunk, &mut |p| match p {
                Piece::Meta(m) => meta.push(String::from_utf8_lossy(m).into_owned()),
                Piece::Item(i) => items.push(String::from_utf8_lossy(i).into_owned()),
            })?;
        }
        s.finish()?;
        Ok((meta, items))
    }

    #[test]
    fn splits_items_and_metadata_whatever_the_chunking() {
        let body = r#" {"kind":"ApplicationList", "metadata" : {"resourceVersion":"12"},
            "items":[ {"a":"x\"}]","b":[1,{"c":null}]} , {"d":"\\"}, 7, "s", null ],"extra":[{}]} "#;
        for step in [1, 2, 3, 7, 64, body.len()] {
            let (meta, items) = split(body, step).unwrap();
            assert_eq!(meta, vec![r#"{"resourceVersion":"12"}"#], "step {step}");
            assert_eq!(
                items,
                vec![
                    r#"{"a":"x\"}]","b":[1,{"c":null}]}"#,
                    r#"{"d":"\\"}"#,
                    "7",
                    r#""s""#,
                    "null"
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn empty_and_null_items_are_lists_without_items() {
        for body in [
            r#"{"items":[]}"#,
            r#"{"items":null,"metadata":{}}"#,
            "{}",
            r#"{"metadata":{"x":1}}"#,
        ] {
            let (_, items) = split(body, 3).unwrap();
            assert!(items.is_empty(), "{body}");
        }
    }

    #[test]
    fn a_broken_or_cut_list_is_an_error() {
        for body in [
            r#"{"items":[{"a":1}"#,
            r#"{"items":[{"a":1},"#,
            r#"{"items":[{"a":1}] "#,
            r#"{"items":[{"a":1}]}{"#,
            r#"{"items":{"a":1}}"#,
            r#"{"items":nothing}"#,
            r#"{"items":[{"a":1},,{"b":2}]}"#,
            r#"{"items":[{"a":1},]}"#,
            r#"{"items":[{"a":1} {"b":2}]}"#,
            r#"[{"a":1}]"#,
            r#"{"items" [] }"#,
            "",
        ] {
            assert!(split(body, 4).is_err(), "{body}");
        }
    }

    #[test]
    fn a_value_over_the_limit_is_refused() {
        let big = format!(r#"{{"items":[{{"a":"{}"}}]}}"#, "x".repeat(100));
        let mut s = ListSplitter::new(50);
        let err = s.feed(big.as_bytes(), &mut |_| {}).unwrap_err();
        assert_eq!(err, SplitError::TooLarge { limit: 50 });
        // Skipped values do not count.
        let mut s = ListSplitter::new(50);
        let skipped = format!(r#"{{"other":"{}","items":[]}}"#, "x".repeat(100));
        s.feed(skipped.as_bytes(), &mut |_| {}).unwrap();
        s.finish().unwrap();
    }
}
