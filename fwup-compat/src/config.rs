//! fwup's configuration language: libconfuse syntax with fwup's option tables.
//!
//! Spec: libconfuse (<https://github.com/libconfuse/libconfuse>, doc/tutorial) for the syntax;
//! fwup's src/cfgfile.c option tables and src/cfgprint.c for what meta.conf holds
//! (<https://github.com/fwup-home/fwup/blob/main/docs/fwup.md>).
//!
//! Parsing is one pass, as in libconfuse: `${VAR}` is expanded while lexing from the current
//! variables, so `define(...)` affects everything after it. The same parser reads `fwup.conf`
//! at create time (unknown keys are errors) and `meta.conf` at apply time (unknown keys are
//! skipped, and `${FWUP_META_UUID}` now has its value).

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What an option holds, with libconfuse's default.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Str(Option<&'static str>),
    Int(i64),
    Bool(bool),
    StrList,
    IntList,
    /// A sub-section; `true` for multi + titled (`name "title" { }`).
    Sec(&'static [Opt], bool),
    Func(Func),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    Define,
    DefineBang,
    DefineEval,
    DefineEvalBang,
    Include,
    /// An action inside on-init/on-resource/on-finish/on-error: appended to `funlist`.
    Action,
    /// A `require-*` in a task: appended to `reqlist`.
    Require,
}

#[derive(Debug)]
pub struct Opt {
    pub name: &'static str,
    pub kind: Kind,
}

const fn o(name: &'static str, kind: Kind) -> Opt {
    Opt { name, kind }
}

use Kind::*;

pub const FILE_RESOURCE: &[Opt] = &[
    o("include", Func(Func::Include)),
    o("host-path", Str(None)),
    o("skip-holes", Bool(false)),
    o("length", IntList),
    o("contents", Str(None)),
    o("blake2b-256", Str(None)),
    o("sha256", Str(None)),
    o("assert-size-lte", Int(-1)),
    o("assert-size-gte", Int(-1)),
];
const MBR_PARTITION: &[Opt] = &[
    o("block-offset", Str(None)),
    o("block-count", Int(i32::MAX as i64)),
    o("type", Int(-1)),
    o("boot", Bool(false)),
    o("expand", Bool(false)),
];
const MBR_OSII: &[Opt] = &[
    o("os-major", Int(0)),
    o("os-minor", Int(0)),
    o("start-block-offset", Int(0)),
    o("ddr-load-address", Int(0)),
    o("entry-point", Int(0)),
    o("image-size-blocks", Int(0)),
    o("attribute", Int(0xf)),
];
pub const MBR: &[Opt] = &[
    o("bootstrap-code-host-path", Str(None)),
    o("bootstrap-code", Str(None)),
    o("include-osip", Bool(false)),
    o("osip-major", Int(1)),
    o("osip-minor", Int(0)),
    o("osip-num-pointers", Int(1)),
    o("signature", Str(None)),
    o("partition", Sec(MBR_PARTITION, true)),
    o("osii", Sec(MBR_OSII, true)),
];
const GPT_PARTITION: &[Opt] = &[
    o("block-offset", Str(None)),
    o("block-count", Int(i32::MAX as i64)),
    o("type", Str(None)),
    o("guid", Str(None)),
    o("name", Str(Some(""))),
    o("flags", Str(Some("0"))),
    o("expand", Bool(false)),
    o("boot", Bool(false)),
];
pub const GPT: &[Opt] = &[
    o("guid", Str(None)),
    o("partition", Sec(GPT_PARTITION, true)),
];
pub const UBOOT_ENV: &[Opt] = &[
    o("block-offset", Str(None)),
    o("block-count", Int(i32::MAX as i64)),
    o("block-offset-redund", Str(None)),
];

/// Action names accepted inside event sections (fwup's CFG_ON_EVENT_FUNCTIONS).
pub const ACTIONS: &[&str] = &[
    "raw_memset",
    "raw_write",
    "fat_mkfs",
    "fat_attrib",
    "fat_write",
    "fat_cp",
    "fat_mv",
    "fat_mv!",
    "fat_rm",
    "fat_rm!",
    "fat_mkdir",
    "fat_setlabel",
    "fat_touch",
    "gpt_write",
    "mbr_write",
    "trim",
    "uboot_clearenv",
    "uboot_recover",
    "uboot_setenv",
    "uboot_unsetenv",
    "error",
    "info",
    "path_write",
    "pipe_write",
    "ubi_volume_write",
    "execute",
    "reboot_param",
];
pub const REQUIREMENTS: &[&str] = &[
    "require-partition-offset",
    "require-fat-file-exists",
    "require-uboot-variable",
    "require-path-on-device",
    "require-path-at-offset",
    "require-fat-file-match",
    "require-execute",
];

const EVENT: &[Opt] = &[o("funlist", StrList), o("include", Func(Func::Include))];
const ON_RESOURCE: &[Opt] = &[
    o("verify-on-the-fly", Bool(false)),
    o("delta-source-raw-offset", Str(None)),
    o("delta-source-raw-count", Int(i32::MAX as i64)),
    o("delta-source-raw-options", Str(None)),
    o("delta-source-fat-offset", Str(None)),
    o("delta-source-fat-path", Str(None)),
    o("funlist", StrList),
    o("include", Func(Func::Include)),
];
pub const TASK: &[Opt] = &[
    o("include", Func(Func::Include)),
    o("reqlist", StrList),
    o("require-partition1-offset", Int(-1)),
    o("require-unmounted-destination", Bool(false)),
    o("verify-on-the-fly", Bool(false)),
    o("on-init", Sec(EVENT, false)),
    o("on-finish", Sec(EVENT, false)),
    o("on-error", Sec(EVENT, false)),
    o("on-resource", Sec(ON_RESOURCE, true)),
];
pub const TOP: &[Opt] = &[
    o("meta-product", Str(None)),
    o("meta-description", Str(None)),
    o("meta-version", Str(None)),
    o("meta-author", Str(None)),
    o("meta-platform", Str(None)),
    o("meta-architecture", Str(None)),
    o("meta-creation-date", Str(None)),
    o("meta-fwup-version", Str(None)),
    o("meta-vcs-identifier", Str(None)),
    o("meta-misc", Str(None)),
    o("meta-uuid", Str(None)),
    o("meta-nickname", Str(None)),
    o("require-fwup-version", Str(Some("0"))),
    o("block-cache-size-mb", Int(8)),
    o("define", Func(Func::Define)),
    o("define!", Func(Func::DefineBang)),
    o("define-eval", Func(Func::DefineEval)),
    o("define-eval!", Func(Func::DefineEvalBang)),
    o("file-resource", Sec(FILE_RESOURCE, true)),
    o("mbr", Sec(MBR, true)),
    o("gpt", Sec(GPT, true)),
    o("task", Sec(TASK, true)),
    o("uboot-environment", Sec(UBOOT_ENV, true)),
    o("include", Func(Func::Include)),
];

/// One parsed section (the top level is a section without a title).
#[derive(Clone, Debug)]
pub struct Section {
    pub schema: &'static [Opt],
    pub title: Option<String>,
    /// Values by option name (lists have several; scalars one).
    pub values: HashMap<&'static str, Vec<String>>,
    /// Sub-sections by option name, in the order they appeared.
    pub sections: HashMap<&'static str, Vec<Section>>,
    /// Line where the section started (for messages).
    pub line: usize,
    /// File the section was read from (host paths in it are relative to its directory).
    pub file: String,
}

impl Section {
    pub fn new(schema: &'static [Opt], title: Option<String>, line: usize) -> Self {
        Section {
            schema,
            title,
            values: HashMap::new(),
            sections: HashMap::new(),
            line,
            file: String::new(),
        }
    }
    fn opt(&self, name: &str) -> Option<&'static Opt> {
        self.schema.iter().find(|o| o.name == name)
    }
    pub fn title(&self) -> &str {
        self.title.as_deref().unwrap_or("")
    }
    /// A string option: the set value or its default.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        if let Some(v) = self.values.get(name).and_then(|v| v.first()) {
            return Some(v);
        }
        match self.opt(name)?.kind {
            Str(d) => d,
            _ => None,
        }
    }
    pub fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
    pub fn get_int(&self, name: &str) -> i64 {
        if let Some(v) = self.values.get(name).and_then(|v| v.first()) {
            return parse_c_int(v).unwrap_or(0);
        }
        match self.opt(name).map(|o| o.kind) {
            Some(Int(d)) => d,
            _ => 0,
        }
    }
    pub fn get_bool(&self, name: &str) -> bool {
        if let Some(v) = self.values.get(name).and_then(|v| v.first()) {
            return parse_bool(v).unwrap_or(false);
        }
        matches!(self.opt(name).map(|o| o.kind), Some(Bool(true)))
    }
    pub fn list(&self, name: &str) -> &[String] {
        self.values.get(name).map(|v| v.as_slice()).unwrap_or(&[])
    }
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let name = self.opt(name).expect("option in schema").name;
        self.values.insert(name, vec![value.into()]);
    }
    pub fn set_list(&mut self, name: &str, values: Vec<String>) {
        let name = self.opt(name).expect("option in schema").name;
        self.values.insert(name, values);
    }
    pub fn unset(&mut self, name: &str) {
        self.values.remove(name);
    }
    pub fn secs(&self, name: &str) -> &[Section] {
        self.sections.get(name).map(|v| v.as_slice()).unwrap_or(&[])
    }
    pub fn secs_mut(&mut self, name: &str) -> &mut Vec<Section> {
        let name = self.opt(name).expect("section in schema").name;
        self.sections.entry(name).or_default()
    }
    /// The titled sub-section `name "title"`.
    pub fn sec(&self, name: &str, title: &str) -> Option<&Section> {
        self.secs(name).iter().find(|s| s.title() == title)
    }
    /// The untitled sub-section `name { }` (on-init etc.).
    pub fn single(&self, name: &str) -> Option<&Section> {
        self.secs(name).first()
    }
}

/// C `strtol(s, &end, 0)` that must consume the whole string.
pub fn parse_c_int(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8).ok()?
    } else {
        t.parse::<u64>().ok()?
    };
    let v = v as i64;
    Some(if neg { v.wrapping_neg() } else { v })
}

/// C `strtoull(s, NULL, 0)`: leading number, 0 when there is none.
pub fn strtoull(s: &str) -> u64 {
    let t = s.trim_start();
    let (radix, digits) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (16, h)
    } else if t.starts_with('0') {
        (8, t)
    } else {
        (10, t)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    u64::from_str_radix(&digits[..end], radix).unwrap_or(0)
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Some(true),
        "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Which file is being parsed and what to do with unknown keys.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// `fwup -c`: unknown keys are errors; callbacks validate sections.
    Create,
    /// meta.conf at apply/list/metadata time: unknown keys are skipped.
    Apply,
}

/// Variables visible to `${...}`: the process environment plus defines.
#[derive(Clone, Debug, Default)]
pub struct Vars(pub HashMap<String, String>);

impl Vars {
    pub fn from_env() -> Self {
        Vars(std::env::vars().collect())
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.as_str())
    }
    pub fn set(&mut self, k: &str, v: &str) {
        self.0.insert(k.to_string(), v.to_string());
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    /// Quoted string (the quotes matter only for titles and error text).
    Quoted(String),
    Eq,
    PlusEq,
    LBrace,
    RBrace,
    LParen,
    RParen,
    Comma,
    Eof,
}

impl Tok {
    fn text(&self) -> Option<&str> {
        match self {
            Tok::Word(s) | Tok::Quoted(s) => Some(s),
            _ => None,
        }
    }
}

/// Limits on what one parse (a fwup.conf with its includes, or a meta.conf) may do.
///
/// libconfuse's: includes nest at most 10 deep. fwup's: a call has at most 10 words, its
/// name included (FUN_MAX_ARGS). Ours, which neither has: the bytes that `${...}` copies
/// in, and the includes read in all, so that defines doubling each other or includes
/// fanning out fail in milliseconds instead of hanging or exhausting memory.
pub const MAX_INCLUDE_DEPTH: usize = 10;
pub const MAX_CALL_WORDS: usize = 10;
pub const MAX_EXPANSION_BYTES: usize = 16 << 20;
pub const MAX_INCLUDES: usize = 1000;

struct Source {
    text: Vec<u8>,
    pos: usize,
    line: usize,
    file: String,
    /// (device, inode) when the text came from a file: finds include cycles through any
    /// spelling of a path (`a.conf`, `./a.conf`, a symlink).
    id: Option<(u64, u64)>,
    /// No `}` at or after this offset: a failed search for the end of a `${` is not
    /// repeated for each later `${` (which made a long line of them quadratic).
    no_close_from: usize,
}

impl Source {
    fn new(text: Vec<u8>, file: String) -> Source {
        Source {
            text,
            pos: 0,
            line: 1,
            file,
            id: None,
            no_close_from: usize::MAX,
        }
    }

    /// The first NUL byte's line. fwup reads a config as a C string, so it silently drops
    /// everything after one; we refuse the text instead.
    fn nul_line(&self) -> Option<usize> {
        let at = self.text.iter().position(|&b| b == 0)?;
        Some(1 + self.text[..at].iter().filter(|&&b| b == b'\n').count())
    }

    /// Offset from `pos` of the next `}`.
    fn close_brace(&mut self) -> Option<usize> {
        if self.pos >= self.no_close_from {
            return None;
        }
        let found = self.text[self.pos..].iter().position(|&x| x == b'}');
        if found.is_none() {
            self.no_close_from = self.pos;
        }
        found
    }
}

/// The one-pass parser: a lexer stack (for include) plus the variables.
pub struct Parser<'v> {
    stack: Vec<Source>,
    pub vars: &'v mut Vars,
    mode: Mode,
    peeked: Option<(Tok, usize)>,
    /// Called when a titled top-level section closes (create-time validation).
    pub on_section: Option<SectionHook<'v>>,
    /// Called for each action and requirement call in Create mode (the planner's checks;
    /// the parser itself knows no action).
    pub on_call: Option<CallHook<'v>>,
    /// Top-level titled sections read so far (kind, title): actions may only refer to these.
    known: std::collections::HashSet<(String, String)>,
    /// Bytes `${...}` has copied in so far (see [`MAX_EXPANSION_BYTES`]).
    expanded: usize,
    /// Includes read so far (see [`MAX_INCLUDES`]).
    includes: usize,
}

pub type SectionHook<'a> =
    Box<dyn FnMut(&str, &mut Section, &mut Vars) -> std::result::Result<(), String> + 'a>;

/// One action or `require-*` call as the parser read it, for [`Parser::on_call`].
pub struct Call<'a> {
    pub func: Func,
    /// Name first, then the arguments; the hook may complete it (fat_write's file name).
    pub argv: &'a mut Vec<String>,
    /// The on-resource title when the call is in one.
    pub resource: Option<&'a str>,
    /// Whether a top-level section (kind, title) was defined above the call.
    pub known: &'a dyn Fn(&str, &str) -> bool,
}

pub type CallHook<'a> = Box<dyn FnMut(Call<'_>) -> std::result::Result<(), String> + 'a>;

impl<'v> Parser<'v> {
    pub fn new(text: &[u8], file: &str, vars: &'v mut Vars, mode: Mode) -> Self {
        Parser {
            stack: vec![Source::new(text.to_vec(), file.to_string())],
            vars,
            mode,
            peeked: None,
            on_section: None,
            on_call: None,
            known: Default::default(),
            expanded: 0,
            includes: 0,
        }
    }

    /// The text given to [`Parser::new`] is the file at `path`: an include of that file,
    /// directly or through others, is then reported as a cycle.
    pub fn top_is_file(&mut self, path: &Path) {
        self.stack[0].id = file_id(path);
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        let (file, line) = self
            .stack
            .last()
            .map(|s| (s.file.clone(), s.line))
            .unwrap_or_default();
        Error::Config {
            file,
            line,
            msg: msg.into(),
        }
    }

    /// Append `${name_and_default}`'s value to `out`, within [`MAX_EXPANSION_BYTES`].
    fn expand_into(&mut self, out: &mut String, name_and_default: &str) -> Result<()> {
        let (name, default) = match name_and_default.find(":-") {
            Some(i) => (&name_and_default[..i], Some(&name_and_default[i + 2..])),
            None => (name_and_default, None),
        };
        let v = match self.vars.get(name) {
            Some(v) if !(v.is_empty() && default.is_some()) => v,
            _ => default.unwrap_or(""),
        };
        // Checked before copying, so the limit is never allocated.
        let total = self.expanded.saturating_add(v.len());
        if total > MAX_EXPANSION_BYTES {
            return Err(self.err(format!(
                "expanding ${{{name}}} ({} bytes) takes variable expansion past {} MiB, the limit for one config: defines built from others (each doubling the last) grow exponentially; define long values directly",
                v.len(),
                MAX_EXPANSION_BYTES >> 20
            )));
        }
        out.push_str(v);
        self.expanded = total;
        Ok(())
    }

    /// Check a source before lexing it.
    fn check_source(&self, src: &Source) -> Result<()> {
        match src.nul_line() {
            Some(line) => Err(Error::Config {
                file: src.file.clone(),
                line,
                msg: "NUL byte (0x00): a config is text, and fwup ignores everything after a NUL; remove it".into(),
            }),
            None => Ok(()),
        }
    }

    fn lex(&mut self) -> Result<(Tok, usize)> {
        if let Some(t) = self.peeked.take() {
            return Ok(t);
        }
        loop {
            let Some(src) = self.stack.last_mut() else {
                return Ok((Tok::Eof, 0));
            };
            let b = &src.text;
            // Skip whitespace and comments.
            while src.pos < b.len() {
                let c = b[src.pos];
                if c == b'\n' {
                    src.line += 1;
                    src.pos += 1;
                } else if c.is_ascii_whitespace() {
                    src.pos += 1;
                } else if c == b'#' || (c == b'/' && b.get(src.pos + 1) == Some(&b'/')) {
                    while src.pos < b.len() && b[src.pos] != b'\n' {
                        src.pos += 1;
                    }
                } else if c == b'/' && b.get(src.pos + 1) == Some(&b'*') {
                    src.pos += 2;
                    while src.pos < b.len()
                        && !(b[src.pos] == b'*' && b.get(src.pos + 1) == Some(&b'/'))
                    {
                        if b[src.pos] == b'\n' {
                            src.line += 1;
                        }
                        src.pos += 1;
                    }
                    src.pos = (src.pos + 2).min(b.len());
                } else {
                    break;
                }
            }
            if src.pos >= b.len() {
                let line = src.line;
                if self.stack.len() > 1 {
                    self.stack.pop();
                    continue;
                }
                return Ok((Tok::Eof, line));
            }
            let line = src.line;
            let c = b[src.pos];
            let single = match c {
                b'=' => Some(Tok::Eq),
                b'{' => Some(Tok::LBrace),
                b'}' => Some(Tok::RBrace),
                b'(' => Some(Tok::LParen),
                b')' => Some(Tok::RParen),
                b',' => Some(Tok::Comma),
                b'+' if b.get(src.pos + 1) == Some(&b'=') => {
                    src.pos += 1;
                    Some(Tok::PlusEq)
                }
                _ => None,
            };
            if let Some(t) = single {
                src.pos += 1;
                return Ok((t, line));
            }
            if c == b'"' || c == b'\'' {
                return self.lex_quoted(c).map(|t| (t, line));
            }
            // Unquoted word; ${VAR} expands in place.
            let mut out = Vec::new();
            let src = self.stack.last_mut().unwrap();
            let mut vars_to_expand = Vec::new();
            while src.pos < src.text.len() {
                let c = src.text[src.pos];
                if c.is_ascii_whitespace()
                    || matches!(
                        c,
                        b'=' | b'{' | b'}' | b'(' | b')' | b',' | b'"' | b'\'' | b'#'
                    )
                    || (c == b'+' && src.text.get(src.pos + 1) == Some(&b'='))
                {
                    break;
                }
                if c == b'$' && src.text.get(src.pos + 1) == Some(&b'{') {
                    if let Some(end) = src.close_brace() {
                        let name = String::from_utf8_lossy(&src.text[src.pos + 2..src.pos + end])
                            .to_string();
                        vars_to_expand.push((out.len(), name));
                        src.pos += end + 1;
                        continue;
                    }
                }
                out.push(c);
                src.pos += 1;
            }
            let mut s = String::new();
            let mut last = 0;
            for (at, name) in vars_to_expand {
                s.push_str(&String::from_utf8_lossy(&out[last..at]));
                self.expand_into(&mut s, &name)?;
                last = at;
            }
            s.push_str(&String::from_utf8_lossy(&out[last..]));
            return Ok((Tok::Word(s), line));
        }
    }

    fn lex_quoted(&mut self, q: u8) -> Result<Tok> {
        let src = self.stack.last_mut().unwrap();
        src.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        let mut pending: Vec<(usize, String)> = Vec::new();
        loop {
            let Some(&c) = src.text.get(src.pos) else {
                let line = src.line;
                let file = src.file.clone();
                return Err(Error::Config {
                    file,
                    line,
                    msg: "unterminated string".into(),
                });
            };
            src.pos += 1;
            if c == q {
                break;
            }
            if c == b'\n' {
                src.line += 1;
            }
            if c == b'\\' {
                let Some(&n) = src.text.get(src.pos) else {
                    continue;
                };
                src.pos += 1;
                if q == b'\'' {
                    if n != b'\'' && n != b'\\' {
                        out.push(b'\\');
                    }
                    out.push(n);
                    continue;
                }
                match n {
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'f' => out.push(0x0c),
                    b'b' => out.push(0x08),
                    b'a' => out.push(0x07),
                    b'e' => out.push(0x1b),
                    _ => out.push(n),
                }
                continue;
            }
            if q == b'"' && c == b'$' && src.text.get(src.pos) == Some(&b'{') {
                if let Some(end) = src.close_brace() {
                    let name =
                        String::from_utf8_lossy(&src.text[src.pos + 1..src.pos + end]).to_string();
                    pending.push((out.len(), name));
                    src.pos += end + 1;
                    continue;
                }
            }
            out.push(c);
        }
        let mut s = String::new();
        let mut last = 0;
        for (at, name) in pending {
            s.push_str(&String::from_utf8_lossy(&out[last..at]));
            self.expand_into(&mut s, &name)?;
            last = at;
        }
        s.push_str(&String::from_utf8_lossy(&out[last..]));
        Ok(Tok::Quoted(s))
    }

    fn peek(&mut self) -> Result<&Tok> {
        if self.peeked.is_none() {
            let t = self.lex()?;
            self.peeked = Some(t);
        }
        Ok(&self.peeked.as_ref().unwrap().0)
    }

    fn next(&mut self) -> Result<Tok> {
        Ok(self.lex()?.0)
    }

    fn value(&mut self, what: &str) -> Result<String> {
        match self.next()? {
            Tok::Word(s) | Tok::Quoted(s) => Ok(s),
            t => Err(self.err(format!("expected a value for '{what}', found {t:?}"))),
        }
    }

    /// Parse a whole file into the top-level section.
    pub fn parse_top(&mut self) -> Result<Section> {
        self.check_source(&self.stack[0])?;
        let mut top = Section::new(TOP, None, 1);
        self.body(&mut top, true)?;
        Ok(top)
    }

    fn body(&mut self, sec: &mut Section, top: bool) -> Result<()> {
        loop {
            let (tok, line) = self.lex()?;
            let name = match tok {
                Tok::Eof if top => return Ok(()),
                Tok::RBrace if !top => return Ok(()),
                Tok::Word(s) => s,
                // libconfuse closes sections still open at the end of the file.
                Tok::Eof => {
                    self.peeked = Some((Tok::Eof, line));
                    return Ok(());
                }
                t => return Err(self.err(format!("unexpected {t:?}"))),
            };
            let Some(opt) = sec.find(&name) else {
                if self.mode == Mode::Apply {
                    self.skip_item()?;
                    continue;
                }
                return Err(self.err(format!("no such option '{name}'")));
            };
            match opt.kind {
                Sec(schema, titled) => {
                    let title = if titled {
                        Some(
                            self.next()?
                                .text()
                                .ok_or_else(|| self.err(format!("section '{name}' needs a title")))?
                                .to_string(),
                        )
                    } else {
                        None
                    };
                    if self.next()? != Tok::LBrace {
                        return Err(self.err(format!("expected '{{' after '{name}'")));
                    }
                    if let Some(t) = &title {
                        if sec.secs(opt.name).iter().any(|s| s.title() == t) {
                            return Err(self.err(format!("found duplicate title '{t}'")));
                        }
                    }
                    let mut child = Section::new(schema, title, line);
                    child.file = self
                        .stack
                        .last()
                        .map(|s| s.file.clone())
                        .unwrap_or_default();
                    self.body(&mut child, false)?;
                    if top {
                        self.known
                            .insert((opt.name.to_string(), child.title().to_string()));
                        if let Some(hook) = self.on_section.as_mut() {
                            if let Err(msg) = hook(opt.name, &mut child, self.vars) {
                                return Err(Error::Config {
                                    file: self
                                        .stack
                                        .last()
                                        .map(|s| s.file.clone())
                                        .unwrap_or_default(),
                                    line,
                                    msg,
                                });
                            }
                        }
                    }
                    if titled {
                        sec.secs_mut(opt.name).push(child);
                    } else {
                        *sec.secs_mut(opt.name) = vec![child];
                    }
                }
                Func(f) => {
                    if self.next()? != Tok::LParen {
                        return Err(self.err(format!("expected '(' after '{name}'")));
                    }
                    let mut args = Vec::new();
                    if *self.peek()? == Tok::RParen {
                        self.next()?;
                    } else {
                        loop {
                            // fwup refuses more; stopping here also bounds what a
                            // hostile call of 100,000 arguments makes us hold.
                            if args.len() + 1 >= MAX_CALL_WORDS {
                                return Err(self.err(format!(
                                    "Too many arguments passed to '{name}': at most {} are allowed",
                                    MAX_CALL_WORDS - 1
                                )));
                            }
                            args.push(self.value(&name)?);
                            match self.next()? {
                                Tok::Comma => continue,
                                Tok::RParen => break,
                                t => {
                                    return Err(self.err(format!(
                                        "expected ',' or ')' in '{name}', found {t:?}"
                                    )))
                                }
                            }
                        }
                    }
                    self.call(sec, opt.name, f, args)?;
                }
                _ => {
                    let append = match self.next()? {
                        Tok::Eq => false,
                        Tok::PlusEq => true,
                        t => {
                            return Err(
                                self.err(format!("expected '=' after '{name}', found {t:?}"))
                            )
                        }
                    };
                    let mut vals = Vec::new();
                    if matches!(opt.kind, StrList | IntList) && *self.peek()? == Tok::LBrace {
                        self.next()?;
                        if *self.peek()? == Tok::RBrace {
                            self.next()?;
                        } else {
                            loop {
                                vals.push(self.value(&name)?);
                                match self.next()? {
                                    Tok::Comma => continue,
                                    Tok::RBrace => break,
                                    t => {
                                        return Err(self.err(format!(
                                            "expected ',' or '}}' in '{name}', found {t:?}"
                                        )))
                                    }
                                }
                            }
                        }
                    } else {
                        vals.push(self.value(&name)?);
                    }
                    for v in &vals {
                        self.check_type(opt, v)?;
                    }
                    let slot = sec.values.entry(opt.name).or_default();
                    if !append {
                        slot.clear();
                    }
                    slot.extend(vals);
                }
            }
        }
    }

    fn check_type(&self, opt: &Opt, v: &str) -> Result<()> {
        let ok = match opt.kind {
            Int(_) | IntList => parse_c_int(v).is_some(),
            Bool(_) => parse_bool(v).is_some(),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(self.err(format!("invalid value '{v}' for option '{}'", opt.name)))
        }
    }

    fn skip_item(&mut self) -> Result<()> {
        // name [title] { ... } | name = value | name = {..} | name(...)
        let mut depth = 0i32;
        loop {
            let t = self.next()?;
            match t {
                Tok::LBrace | Tok::LParen => depth += 1,
                Tok::RBrace | Tok::RParen => {
                    depth -= 1;
                    if depth <= 0 {
                        return Ok(());
                    }
                }
                Tok::Eof => return Ok(()),
                Tok::Word(_) | Tok::Quoted(_)
                    if depth == 0 && !matches!(self.peek()?, Tok::LBrace | Tok::LParen) =>
                {
                    return Ok(());
                }
                _ => {}
            }
        }
    }

    fn call(
        &mut self,
        sec: &mut Section,
        name: &'static str,
        f: Func,
        args: Vec<String>,
    ) -> Result<()> {
        let two = |p: &Self| {
            if args.len() != 2 {
                Err(p.err(format!("'{name}' requires 2 parameters")))
            } else {
                Ok(())
            }
        };
        match f {
            Func::Define | Func::DefineBang => {
                two(self)?;
                if f == Func::DefineBang || self.vars.get(&args[0]).is_none() {
                    self.vars.set(&args[0], &args[1]);
                }
            }
            Func::DefineEval | Func::DefineEvalBang => {
                two(self)?;
                let v = crate::eval::eval(&args[1])
                    .ok_or_else(|| self.err(format!("error evaluating '{}'", args[1])))?;
                if f == Func::DefineEvalBang || self.vars.get(&args[0]).is_none() {
                    self.vars.set(&args[0], &v.to_string());
                }
            }
            Func::Include => {
                if args.len() != 1 {
                    return Err(self.err("'include' requires 1 parameter"));
                }
                if args[0].is_empty() {
                    return Err(self.err("Cannot include the contents of an undefined variable"));
                }
                let cur = self
                    .stack
                    .last()
                    .map(|s| s.file.clone())
                    .unwrap_or_default();
                let path = relative_to(&cur, &args[0]);
                if !path.exists() {
                    return Err(self.err(format!("Cannot include '{}': File not found", args[0])));
                }
                if !path.is_file() {
                    return Err(
                        self.err(format!("Cannot include '{}': Not a regular file", args[0]))
                    );
                }
                let id = file_id(&path);
                let shown = path.to_string_lossy().into_owned();
                let chain = |p: &Self| {
                    let mut names: Vec<&str> = p.stack.iter().map(|s| s.file.as_str()).collect();
                    names.push(&shown);
                    names.join(" → ")
                };
                if id.is_some() && self.stack.iter().any(|s| s.id == id) {
                    return Err(self.err(format!(
                        "include cycle: {}; a file may not include itself, directly or through others: remove one of these includes",
                        chain(self)
                    )));
                }
                if self.stack.len() > MAX_INCLUDE_DEPTH {
                    return Err(self.err(format!(
                        "includes nested too deeply (at most {MAX_INCLUDE_DEPTH} levels): {}",
                        chain(self)
                    )));
                }
                if self.includes >= MAX_INCLUDES {
                    return Err(self.err(format!(
                        "more than {MAX_INCLUDES} includes in one config: includes that each include a file several times repeat it exponentially"
                    )));
                }
                self.includes += 1;
                let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                let mut src = Source::new(text, shown);
                src.id = id;
                self.check_source(&src)?;
                self.stack.push(src);
            }
            Func::Action | Func::Require => {
                let list = if f == Func::Action {
                    "funlist"
                } else {
                    "reqlist"
                };
                let mut argv = vec![name.to_string()];
                argv.extend(args.iter().cloned());
                if self.mode == Mode::Create {
                    if let Some(hook) = self.on_call.as_mut() {
                        let known = &self.known;
                        let check = hook(Call {
                            func: f,
                            argv: &mut argv,
                            resource: std::ptr::eq(sec.schema, ON_RESOURCE).then(|| sec.title()),
                            known: &|k, t| known.contains(&(k.to_string(), t.to_string())),
                        });
                        check.map_err(|m| self.err(m))?;
                    }
                }
                let slot = sec.values.entry(list).or_default();
                slot.push(argv.len().to_string());
                slot.extend(argv);
            }
        }
        Ok(())
    }
}

/// A file's (device, inode), when it can be read.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// `path` relative to the directory of `file` (absolute paths stay).
pub fn relative_to(file: &str, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match Path::new(file).parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(p),
        _ => p.to_path_buf(),
    }
}

/// Look up the schema entry for event sections so actions register as functions.
pub fn lookup_func(schema: &'static [Opt], name: &str) -> Option<Func> {
    if (std::ptr::eq(schema, EVENT) || std::ptr::eq(schema, ON_RESOURCE)) && ACTIONS.contains(&name)
    {
        return Some(Func::Action);
    }
    if std::ptr::eq(schema, TASK) && REQUIREMENTS.contains(&name) {
        return Some(Func::Require);
    }
    None
}

impl Section {
    /// Resolve an option name, including the action/requirement functions that are not in
    /// the static tables (they all append to one list).
    fn find(&self, name: &str) -> Option<&'static Opt> {
        if let Some(o) = self.schema.iter().find(|o| o.name == name) {
            return Some(o);
        }
        lookup_func(self.schema, name).map(|f| {
            let name: &'static str = ACTIONS
                .iter()
                .chain(REQUIREMENTS.iter())
                .find(|n| **n == name)
                .copied()
                .unwrap();
            // One Opt per (function, kind), made once: the set is finite, so parsing any
            // number of configs allocates nothing more.
            static OPTS: std::sync::OnceLock<
                std::sync::Mutex<HashMap<(&'static str, u8), &'static Opt>>,
            > = std::sync::OnceLock::new();
            let mut m = OPTS.get_or_init(Default::default).lock().unwrap();
            *m.entry((name, f as u8)).or_insert_with(|| {
                Box::leak(Box::new(Opt {
                    name,
                    kind: Func(f),
                }))
            })
        })
    }
}

// ---- printing (meta.conf and -m) -----------------------------------------------------------

fn ok_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

/// A string as fwup writes it: bare when it is only `[A-Za-z0-9_.]`, else quoted.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(ok_char) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn fmt_value(kind: Kind, v: &str) -> String {
    match kind {
        Int(_) | IntList => parse_c_int(v).unwrap_or(0).to_string(),
        Bool(_) => if parse_bool(v).unwrap_or(false) {
            "true"
        } else {
            "false"
        }
        .to_string(),
        _ => quote(v),
    }
}

/// One option as fwup's cfgprint writes it; `scrub` drops create-only and computed keys.
pub fn print_opt(sec: &Section, opt: &Opt, out: &mut String, scrub: bool) {
    match opt.kind {
        Sec(_, titled) => {
            for child in sec.secs(opt.name) {
                let start = out.len();
                if titled {
                    out.push_str(&format!("{} \"{}\" {{\n", opt.name, child.title()));
                } else {
                    out.push_str(&format!("{} {{\n", opt.name));
                }
                let before = out.len();
                print_section(child, out);
                if out.len() == before && opt.name != "task" {
                    out.truncate(start);
                } else {
                    out.push_str("}\n");
                }
            }
        }
        Func(_) => {}
        kind => {
            let vals = sec.list(opt.name);
            if matches!(kind, StrList | IntList) && vals.len() > 1 {
                let items: Vec<String> = vals.iter().map(|v| fmt_value(kind, v)).collect();
                out.push_str(&format!("{}={{{}}}\n", opt.name, items.join(",")));
                return;
            }
            let Some(v) = vals.first() else { return };
            let is_default = match kind {
                Str(d) => v.is_empty() || d == Some(v.as_str()),
                Int(d) => parse_c_int(v) == Some(d),
                IntList => parse_c_int(v) == Some(0),
                Bool(d) => parse_bool(v) == Some(d),
                StrList => v.is_empty(),
                _ => false,
            };
            if is_default {
                return;
            }
            if scrub
                && (opt.name.starts_with("assert-")
                    || matches!(
                        opt.name,
                        "host-path"
                            | "bootstrap-code-host-path"
                            | "contents"
                            | "skip-holes"
                            | "meta-uuid"
                            | "meta-nickname"
                            | "meta-creation-date"
                    ))
            {
                return;
            }
            out.push_str(&format!("{}={}\n", opt.name, fmt_value(kind, v)));
        }
    }
}

/// All options of a section in table order (meta.conf body).
pub fn print_section(sec: &Section, out: &mut String) {
    for opt in sec.schema {
        print_opt(sec, opt, out, true);
    }
}

pub fn to_meta_conf(top: &Section) -> String {
    let mut s = String::new();
    print_section(top, &mut s);
    s
}

/// Parse text with the given mode and variables.
pub fn parse(text: &[u8], file: &str, vars: &mut Vars, mode: Mode) -> Result<Section> {
    Parser::new(text, file, vars, mode).parse_top()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str, vars: &mut Vars) -> Result<Section> {
        parse(text.as_bytes(), "test.conf", vars, Mode::Create)
    }

    #[test]
    fn defines_and_expansion() {
        let mut v = Vars::default();
        v.set("ENVV", "from-env");
        let top = p(
            r#"define(A, "one") define(A, "two") define!(B, "x") define!(B, "y")
            define(ENVV, "conf") define-eval(C, "${A:-0} + 1")
            meta-product = "${A} ${B} ${ENVV} ${NOPE:-dflt}"
            meta-misc = "\${LATER}""#,
            &mut v,
        )
        .unwrap_err();
        // "one" + 1 is not a number: define-eval must fail with the file and line.
        assert!(matches!(top, Error::Config { line: 2, .. }), "{top}");
        let mut v = Vars::default();
        v.set("ENVV", "from-env");
        let top = p(
            r#"define(A, "one") define(A, "two") define!(B, "x") define!(B, "y")
            define(ENVV, "conf") define-eval(C, "(1 + 3) * 4")
            meta-product = "${A} ${B} ${ENVV} ${NOPE:-dflt} ${C}"
            meta-misc = "\${LATER}""#,
            &mut v,
        )
        .unwrap();
        assert_eq!(top.get_str("meta-product"), Some("one y from-env dflt 16"));
        assert_eq!(top.get_str("meta-misc"), Some("${LATER}"));
    }

    #[test]
    fn unknown_keys() {
        let mut v = Vars::default();
        assert!(p("bogus = 1", &mut v).is_err());
        let top = parse(
            b"bogus = 1\nfoo bar { x = 2 }\nmeta-version = 1.0\n",
            "m",
            &mut v,
            Mode::Apply,
        )
        .unwrap();
        assert_eq!(top.get_str("meta-version"), Some("1.0"));
    }

    #[test]
    fn a_long_line_of_unclosed_variables_is_one_scan() {
        // Each "${" looks for its "}"; with none left in the file, once is enough (this took
        // minutes when every "${" scanned to the end).
        let mut vars = Vars::default();
        let mut text = b"define(A, 1)\nmeta-product = \"${A}\"\nmeta-description = \"".to_vec();
        text.extend(b"${".repeat(1 << 19));
        let e = parse(&text, "long.conf", &mut vars, Mode::Create).unwrap_err();
        assert!(
            e.to_string().contains("long.conf:3: unterminated string"),
            "{e}"
        );
        let mut word = b"meta-product = ".to_vec();
        word.extend(b"${".repeat(1 << 19));
        let e = parse(&word, "word.conf", &mut vars, Mode::Create).unwrap_err();
        assert!(e.to_string().contains("word.conf"), "{e}");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("0.1.0"), "0.1.0");
        assert_eq!(quote("uboot-env"), "\"uboot-env\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a\"b\\"), "\"a\\\"b\\\\\"");
    }

    #[test]
    fn ints() {
        assert_eq!(parse_c_int("0x83"), Some(131));
        assert_eq!(parse_c_int("010"), Some(8));
        assert_eq!(parse_c_int("12a"), None);
        assert_eq!(strtoull("8400000"), 8400000);
    }
}
