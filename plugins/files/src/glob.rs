//! Include/exclude patterns, matched against a path relative to the backed-up directory
//! (`logs/app.log`), as `.gitignore` and `tar --exclude` users expect:
//!
//! * a pattern without `/` matches an entry's name at any depth (`*.log`, `node_modules`);
//! * a pattern with `/` matches the whole relative path (`cache/*`, `data/**/*.tmp`); a
//!   leading `/` or `./` only anchors it;
//! * `*` matches within one name, `?` one character, `[abc]`, `[a-z]`, `[!x]` a class,
//!   and `**` as a whole component any number of directories (none included).

/// One compiled pattern.
#[derive(Debug, Clone)]
pub struct Glob {
    parts: Vec<String>,
    anchored: bool,
}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, String> {
        let trimmed = text.trim_start_matches("./").trim_start_matches('/');
        let trimmed = trimmed.trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(format!(
                "`{text}` matches nothing: give a name or a path pattern"
            ));
        }
        let anchored = text.contains('/');
        let parts: Vec<String> = trimmed.split('/').map(str::to_owned).collect();
        if parts.iter().any(|p| p.is_empty() || p == "." || p == "..") {
            return Err(format!(
                "`{text}`: a pattern's components must be names (no empty, `.` or `..` parts)"
            ));
        }
        for p in &parts {
            check_classes(p).map_err(|e| format!("`{text}`: {e}"))?;
        }
        Ok(Glob { parts, anchored })
    }

    /// Whether `path` (relative, `/`-separated, no `./`) matches.
    pub fn matches(&self, path: &str) -> bool {
        let names: Vec<&str> = path.split('/').collect();
        if self.anchored {
            match_parts(&self.parts, &names)
        } else {
            names
                .last()
                .is_some_and(|name| match_name(self.parts[0].as_bytes(), name.as_bytes()))
        }
    }
}

fn check_classes(p: &str) -> Result<(), String> {
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            match class_end(b, i) {
                Some(end) => i = end,
                None => return Err("an unclosed `[`".into()),
            }
        }
        i += 1;
    }
    Ok(())
}

/// Index of the `]` closing the class that opens at `open`.
fn class_end(b: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if i < b.len() && (b[i] == b'!' || b[i] == b'^') {
        i += 1;
    }
    // A `]` right after the opening is part of the class.
    if i < b.len() && b[i] == b']' {
        i += 1;
    }
    while i < b.len() {
        if b[i] == b']' {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn match_parts(pattern: &[String], names: &[&str]) -> bool {
    match pattern.split_first() {
        None => names.is_empty(),
        Some((p, rest)) if p == "**" => {
            (0..=names.len()).any(|skip| match_parts(rest, &names[skip..]))
        }
        Some((p, rest)) => match names.split_first() {
            Some((n, names)) => match_name(p.as_bytes(), n.as_bytes()) && match_parts(rest, names),
            None => false,
        },
    }
}

/// `*`, `?` and classes within one name.
fn match_name(p: &[u8], n: &[u8]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some(b'*') => (0..=n.len()).any(|skip| match_name(&p[1..], &n[skip..])),
        Some(b'?') => !n.is_empty() && match_name(&p[1..], &n[1..]),
        Some(b'[') => match (class_end(p, 0), n.first()) {
            (Some(end), Some(&c)) => in_class(&p[1..end], c) && match_name(&p[end + 1..], &n[1..]),
            _ => false,
        },
        Some(&c) => n.first() == Some(&c) && match_name(&p[1..], &n[1..]),
    }
}

fn in_class(class: &[u8], c: u8) -> bool {
    let (negated, class) = match class.first() {
        Some(b'!' | b'^') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut found = false;
    let mut i = 0;
    while i < class.len() {
        if i + 2 < class.len() && class[i + 1] == b'-' {
            if class[i] <= c && c <= class[i + 2] {
                found = true;
            }
            i += 3;
        } else {
            if class[i] == c {
                found = true;
            }
            i += 1;
        }
    }
    found != negated
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(pattern: &str, path: &str) -> bool {
        Glob::new(pattern).expect("valid").matches(path)
    }

    #[test]
    fn a_name_pattern_matches_at_any_depth() {
        assert!(m("*.log", "app.log"));
        assert!(m("*.log", "a/b/app.log"));
        assert!(!m("*.log", "app.log/x"));
        assert!(m("node_modules", "web/node_modules"));
        assert!(m("file?.txt", "d/file1.txt"));
        assert!(!m("file?.txt", "d/file10.txt"));
        assert!(m("[a-c]x", "bx") && !m("[!a-c]x", "bx") && m("[!a-c]x", "dx"));
    }

    #[test]
    fn a_path_pattern_is_anchored() {
        assert!(m("cache/*", "cache/x"));
        assert!(!m("cache/*", "a/cache/x"));
        assert!(!m("cache/*", "cache/x/y"));
        assert!(m("/cache", "cache") && m("./cache", "cache"));
        assert!(m("data/**/*.tmp", "data/x.tmp"));
        assert!(m("data/**/*.tmp", "data/a/b/x.tmp"));
        assert!(m("**/keep", "a/b/keep") && m("**/keep", "keep"));
        assert!(!m("data/*.tmp", "data/a/x.tmp"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "/", "a/../b", "a//b", "[ab"] {
            assert!(Glob::new(bad).is_err(), "{bad}");
        }
    }
}
