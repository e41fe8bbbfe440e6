//! What can be known of a step template (`"Hello {{ input.name }}"`) from
//! its text alone, before any template engine sees it.
//!
//! [`check_bounds`] refuses templates a parser would recurse too deeply on
//! (ten thousand `-` signs in a row overflow the stack of a recursive
//! descent parser, and a crash there takes the whole server down), and
//! templates too large to be anything but an attack. The server checks
//! every template of a specification with it before parsing one, and the
//! agent before rendering one.
//!
//! [`tags`] yields the insides of the template's `{{ … }}` and `{% … %}`
//! tags, so that names such as `secrets.TOKEN` are looked for only where
//! they are code, not in plain text (`https://example.com/secrets.html`).

/// Longest template string, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// Deepest nesting of brackets inside one tag, and of blocks
/// (`{% if %}`, `{% for %}`, …) in one template.
pub const MAX_NESTING: usize = 32;
/// Most unary operators (`-`, `not`) in one tag: each is a level of
/// recursion in the parser.
pub const MAX_UNARY: usize = 64;

/// Statements that open a block closed by an `end…` tag.
const BLOCK_STATEMENTS: &[&str] = &["if", "for", "macro", "call", "filter", "with", "block", "autoescape", "raw"];

/// Whether `text` holds template syntax at all.
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// The inside of each `{{ … }}` and `{% … %}` tag, in order. An unclosed
/// tag runs to the end of the text.
pub fn tags(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || loop {
        let start = rest.find('{')?;
        let after = &rest[start..];
        let close = if after.starts_with("{{") {
            "}}"
        } else if after.starts_with("{%") {
            "%}"
        } else if after.starts_with("{#") {
            // A comment: skipped.
            rest = after.find("#}").map_or("", |end| &after[end + 2..]);
            continue;
        } else {
            rest = &after[1..];
            continue;
        };
        let inner = &after[2..];
        let end = tag_end(inner, close);
        let tag = &inner[..end];
        rest = inner.get(end + 2..).unwrap_or("");
        return Some(tag);
    })
}

/// Where `close` ends a tag, skipping string literals; the end of the text
/// when it never does.
fn tag_end(inner: &str, close: &str) -> usize {
    let bytes = inner.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if inner[i..].starts_with(close) => return i,
            None => {}
        }
        i += 1;
    }
    inner.len()
}

/// Refuses a template that is too large or nested too deeply to parse
/// safely. The error is a sentence for the user.
pub fn check_bounds(text: &str) -> Result<(), String> {
    if !is_template(text) {
        return Ok(());
    }
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(format!(
            "the template is {} KiB; templates may have at most {} KiB",
            text.len() / 1024,
            MAX_TEMPLATE_BYTES / 1024
        ));
    }
    let mut blocks = 0usize;
    for tag in tags(text) {
        let (depth, unary) = tag_nesting(tag);
        if depth > MAX_NESTING {
            return Err(format!("the template nests brackets {depth} deep; at most {MAX_NESTING} are allowed"));
        }
        if unary > MAX_UNARY {
            return Err(format!(
                "a template tag holds {unary} '-' or 'not' operators; at most {MAX_UNARY} are allowed"
            ));
        }
        let keyword = tag.trim_start_matches(['-', '+', '~']).split_whitespace().next().unwrap_or("");
        if BLOCK_STATEMENTS.contains(&keyword) {
            blocks += 1;
            if blocks > MAX_NESTING {
                return Err(format!(
                    "the template nests blocks more than {MAX_NESTING} deep; at most {MAX_NESTING} are allowed"
                ));
            }
        } else if keyword.starts_with("end") {
            blocks = blocks.saturating_sub(1);
        }
    }
    Ok(())
}

/// The deepest bracket nesting in a tag and its number of unary-capable
/// operators (every `-` and `not`: counting binary ones too errs on the
/// safe side), outside string literals.
fn tag_nesting(tag: &str) -> (usize, usize) {
    let bytes = tag.as_bytes();
    let (mut depth, mut deepest, mut unary) = (0usize, 0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                b'-' => unary += 1,
                b'n' if tag[i..].starts_with("not")
                    && (i == 0 || !is_ident(bytes[i - 1]))
                    && !bytes.get(i + 3).copied().is_some_and(is_ident) =>
                {
                    unary += 1
                }
                _ => {}
            },
        }
        i += 1;
    }
    (deepest, unary)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_the_code_parts() {
        let found: Vec<&str> =
            tags("a {{ input.x }} b {% if y %}c{% endif %} {# secrets.NO #} {{ '}}' ~ z }} secrets.html {{ w")
                .collect();
        assert_eq!(found, [" input.x ", " if y ", " endif ", " '}}' ~ z ", " w"]);
        assert_eq!(tags("plain { text }").count(), 0);
    }

    #[test]
    fn deep_and_huge_templates_are_refused_before_parsing() {
        assert!(check_bounds(&format!("{{{{ {}1 }}}}", "-".repeat(10_000))).is_err());
        assert!(check_bounds(&format!("{{{{ {}1{} }}}}", "(".repeat(100), ")".repeat(100))).is_err());
        assert!(check_bounds(&format!("{{{{ {} x }}}}", "not ".repeat(100))).is_err());
        assert!(check_bounds(&"{% if x %}".repeat(40)).is_err());
        assert!(check_bounds(&format!("{{{{ x }}}}{}", "a".repeat(MAX_TEMPLATE_BYTES))).is_err());
        // Ordinary templates, and large text without template syntax, pass.
        assert!(check_bounds("Hello {{ input.name | default('-') }} {% for i in x %}{{ i - 1 }}{% endfor %}").is_ok());
        assert!(check_bounds(&"-".repeat(1_000_000)).is_ok());
        assert!(check_bounds(&format!("{{{{ '{}' }}}}", "-".repeat(1000))).is_ok(), "inside a string literal");
        assert!(check_bounds("{{ nothing_here and notable }}").is_ok());
    }
}
