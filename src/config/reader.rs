//! Walks a parsed TOML document key by key, remembering where every key was written.
//!
//! This is the "raw" stage of configuration: it knows TOML types and positions, not
//! what berth means by them. Each table is read through a [`TableReader`], which
//! records the keys it was asked for; [`TableReader::finish`] reports every other key
//! as unknown. Problems are collected, never returned early, so one run of
//! `berth check` shows all of them.

use std::cell::RefCell;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Item, TableLike, Value};

use super::problem::Problems;

/// One configuration file: its path, text and line index.
pub struct Source {
    pub path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(path: PathBuf, text: String) -> Source {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            path,
            text,
            line_starts,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    pub fn line(&self, span: Option<Range<usize>>) -> Option<usize> {
        span.map(|s| self.line_of(s.start))
    }
}

/// A value together with where it was written.
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub line: usize,
    /// Full dotted key, for messages.
    pub key: String,
}

/// Shared state of one walk: the file and the problems found so far.
pub struct Walk<'a> {
    pub src: &'a Source,
    pub problems: &'a RefCell<Problems>,
}

impl Walk<'_> {
    pub fn problem(&self, line: usize, key: &str, why: impl Into<String>) {
        self.problems
            .borrow_mut()
            .push(&self.src.path, line, key, why);
    }

    pub fn file(&self) -> &Path {
        &self.src.path
    }
}

/// Reads one table, tracking which keys were used.
pub struct TableReader<'a> {
    walk: &'a Walk<'a>,
    table: &'a dyn TableLike,
    key: String,
    line: usize,
    seen: Vec<&'static str>,
}

impl<'a> TableReader<'a> {
    pub fn new(walk: &'a Walk<'a>, table: &'a dyn TableLike, key: String, line: usize) -> Self {
        TableReader {
            walk,
            table,
            key,
            line,
            seen: Vec::new(),
        }
    }

    /// The dotted key of this table.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The line of this table's header (or of its first key).
    pub fn line(&self) -> usize {
        self.line
    }

    pub fn walk(&self) -> &'a Walk<'a> {
        self.walk
    }

    fn child_key(&self, k: &str) -> String {
        if self.key.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.key)
        }
    }

    /// Reports a problem about key `k` of this table (at its line if present).
    pub fn problem(&self, k: &str, why: impl Into<String>) {
        let line = self.key_line(k).unwrap_or(self.line);
        self.walk.problem(line, &self.child_key(k), why);
    }

    fn key_line(&self, k: &str) -> Option<usize> {
        let (key, item) = self.table.get_key_value(k)?;
        self.walk
            .src
            .line(key.span())
            .or_else(|| self.walk.src.line(item.span()))
    }

    fn item(&mut self, k: &'static str) -> Option<(&'a Item, usize, String)> {
        self.seen.push(k);
        let (_, item) = self.table.get_key_value(k)?;
        let line = self.key_line(k).unwrap_or(self.line);
        Some((item, line, self.child_key(k)))
    }

    fn wrong_type(&self, line: usize, key: &str, want: &str, item: &Item) {
        self.walk.problem(
            line,
            key,
            format!("expected {want}, found {}", item.type_name()),
        );
    }

    pub fn string(&mut self, k: &'static str) -> Option<At<String>> {
        let (item, line, key) = self.item(k)?;
        match item.as_str() {
            Some(s) => Some(At {
                value: s.to_string(),
                line,
                key,
            }),
            None => {
                self.wrong_type(line, &key, "a string", item);
                None
            }
        }
    }

    pub fn integer(&mut self, k: &'static str) -> Option<At<i64>> {
        let (item, line, key) = self.item(k)?;
        match item.as_integer() {
            Some(n) => Some(At {
                value: n,
                line,
                key,
            }),
            None => {
                self.wrong_type(line, &key, "an integer", item);
                None
            }
        }
    }

    /// A number: an integer or a float ("0.5", "2").
    pub fn number(&mut self, k: &'static str) -> Option<At<f64>> {
        let (item, line, key) = self.item(k)?;
        let value = match (item.as_integer(), item.as_float()) {
            (Some(n), _) => n as f64,
            (None, Some(f)) => f,
            (None, None) => {
                self.wrong_type(line, &key, "a number", item);
                return None;
            }
        };
        Some(At { value, line, key })
    }

    /// The line and full key of `k`, when the table has it.
    pub fn place(&self, k: &str) -> Option<(usize, String)> {
        self.table
            .contains_key(k)
            .then(|| (self.key_line(k).unwrap_or(self.line), self.child_key(k)))
    }

    /// The raw string value of `k` without marking it read (for keys that
    /// take either a word such as "unlimited" or a typed value).
    pub fn peek_str(&self, k: &str) -> Option<&'a str> {
        self.table.get(k)?.as_str()
    }

    pub fn boolean(&mut self, k: &'static str) -> Option<At<bool>> {
        let (item, line, key) = self.item(k)?;
        match item.as_bool() {
            Some(b) => Some(At {
                value: b,
                line,
                key,
            }),
            None => {
                self.wrong_type(line, &key, "true or false", item);
                None
            }
        }
    }

    /// A size in bytes: an integer, or a string such as "64KiB", "1GiB",
    /// "512k" (see [`super::parse_size`]).
    pub fn size(&mut self, k: &'static str) -> Option<At<u64>> {
        let (item, line, key) = self.item(k)?;
        let value = match (item.as_integer(), item.as_str()) {
            (Some(n), _) => u64::try_from(n).ok(),
            (None, Some(s)) => super::parse_size(s),
            (None, None) => {
                self.wrong_type(
                    line,
                    &key,
                    "a size such as \"64KiB\" or a number of bytes",
                    item,
                );
                return None;
            }
        };
        match value {
            Some(value) => Some(At { value, line, key }),
            None => {
                self.walk.problem(
                    line,
                    &key,
                    "is not a size such as \"512KiB\", \"64MiB\", \"1GiB\" or a number of bytes",
                );
                None
            }
        }
    }

    /// An array of strings. A single string is accepted as a one-element list.
    pub fn strings(&mut self, k: &'static str) -> Option<At<Vec<String>>> {
        let items = self.string_items(k)?;
        Some(At {
            value: items.value.into_iter().map(|i| i.value).collect(),
            line: items.line,
            key: items.key,
        })
    }

    /// An array of strings, each with its own line and key (`k[i]`), for
    /// lists whose entries are checked one by one. A single string is a
    /// one-element list.
    pub fn string_items(&mut self, k: &'static str) -> Option<At<Vec<At<String>>>> {
        let (item, line, key) = self.item(k)?;
        if let Some(s) = item.as_str() {
            let one = At {
                value: s.to_string(),
                line,
                key: key.clone(),
            };
            return Some(At {
                value: vec![one],
                line,
                key,
            });
        }
        let Some(array) = item.as_array() else {
            self.wrong_type(line, &key, "an array of strings", item);
            return None;
        };
        let mut out = Vec::with_capacity(array.len());
        for (i, v) in array.iter().enumerate() {
            let at = self.walk.src.line(v.span()).unwrap_or(line);
            let k = format!("{key}[{i}]");
            match v.as_str() {
                Some(s) => out.push(At {
                    value: s.to_string(),
                    line: at,
                    key: k,
                }),
                None => self.walk.problem(
                    at,
                    &k,
                    format!("expected a string, found {}", v.type_name()),
                ),
            }
        }
        Some(At {
            value: out,
            line,
            key,
        })
    }

    /// A sub-table, written as `[a.b]` or inline `b = { ... }`.
    pub fn table(&mut self, k: &'static str) -> Option<TableReader<'a>> {
        let (item, line, key) = self.item(k)?;
        match item.as_table_like() {
            Some(t) => Some(TableReader::new(self.walk, t, key, line)),
            None => {
                self.wrong_type(line, &key, "a table", item);
                None
            }
        }
    }

    /// An array of tables (`[[a.b]]`, or an array of inline tables).
    pub fn tables(&mut self, k: &'static str) -> Vec<TableReader<'a>> {
        let Some((item, line, key)) = self.item(k) else {
            return Vec::new();
        };
        let walk = self.walk;
        match item {
            Item::ArrayOfTables(a) => a
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let l = walk.src.line(t.span()).unwrap_or(line);
                    TableReader::new(walk, t, format!("{key}[{i}]"), l)
                })
                .collect(),
            Item::Value(Value::Array(a)) => {
                let mut out = Vec::new();
                for (i, v) in a.iter().enumerate() {
                    let l = walk.src.line(v.span()).unwrap_or(line);
                    match v.as_inline_table() {
                        Some(t) => out.push(TableReader::new(walk, t, format!("{key}[{i}]"), l)),
                        None => walk.problem(
                            l,
                            &format!("{key}[{i}]"),
                            format!("expected a table, found {}", v.type_name()),
                        ),
                    }
                }
                out
            }
            other => {
                self.wrong_type(line, &key, "an array of tables", other);
                Vec::new()
            }
        }
    }

    /// Every entry of a table whose keys are names (like `[tenant.NAME]`), each
    /// as a sub-table. Non-table entries are reported. Consumes the reader: every
    /// key is handled here, so there is nothing left for `finish` to report.
    pub fn into_named_tables(self) -> Vec<(String, TableReader<'a>)> {
        let walk = self.walk;
        let mut out = Vec::new();
        for (name, item) in self.table.iter() {
            let key = self.child_key(name);
            let line = self.key_line(name).unwrap_or(self.line);
            match item.as_table_like() {
                Some(t) => out.push((name.to_string(), TableReader::new(walk, t, key, line))),
                None => walk.problem(
                    line,
                    &key,
                    format!("expected a table, found {}", item.type_name()),
                ),
            }
        }
        out
    }

    /// Every entry of a table of strings (like `env = { A = "1" }`); entries that
    /// are not strings are reported and given as None.
    pub fn into_values(self) -> Vec<(String, Option<At<String>>)> {
        let mut out = Vec::new();
        for (name, item) in self.table.iter() {
            let key = self.child_key(name);
            let line = self.key_line(name).unwrap_or(self.line);
            match item.as_str() {
                Some(v) => out.push((
                    name.to_string(),
                    Some(At {
                        value: v.to_string(),
                        line,
                        key,
                    }),
                )),
                None => {
                    self.walk.problem(
                        line,
                        &key,
                        format!("expected a string, found {}", item.type_name()),
                    );
                    out.push((name.to_string(), None));
                }
            }
        }
        out
    }

    /// The keys this table has, as written.
    pub fn keys(&self) -> Vec<&'a str> {
        self.table.iter().map(|(k, _)| k).collect()
    }

    /// Marks `k` as handled without reading it (a key reported already).
    pub fn skip(&mut self, k: &'static str) {
        self.seen.push(k);
    }

    /// Reports every key of this table that was not read. Call once, after
    /// reading every known key.
    pub fn finish(&mut self) {
        let mut unknown: Vec<&str> = self
            .table
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !self.seen.contains(k))
            .collect();
        unknown.sort_unstable();
        for k in unknown {
            let expected = if self.seen.is_empty() {
                "this table takes no keys".to_string()
            } else {
                format!("unknown key; expected one of: {}", self.seen.join(", "))
            };
            self.problem(k, expected);
        }
    }
}
