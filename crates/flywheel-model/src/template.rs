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
/// Most operators of any kind in one tag (`.`, `|`, `+`, `if`, `,`, …): a
/// flat chain (`1+1+1…`, `a.b.b…`, `x|e|e…`, `1 if a else 1 if a else …`)
/// is a tree as deep as it is long, and compiling or evaluating it recurses
/// that deep.
pub const MAX_OPERATORS: usize = 128;
/// Most `elif` and `else` tags in one template: an `elif` chain nests too.
pub const MAX_BRANCHES: usize = 64;

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
///
/// It reads the template with minijinja's own tokenizer (which does not
/// recurse), so it sees exactly the tags the parser will see: a `{% raw %}`
/// block, a comment or a string literal cannot hide one from it.
pub fn check_bounds(text: &str) -> Result<(), String> {
    use minijinja::machinery::{tokenize, Token, WhitespaceConfig};
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
    let (mut blocks, mut branches) = (0usize, 0usize);
    let mut tag = TagShape::default();
    // After `{%`, the first word says what kind of statement it is.
    let mut statement_start = false;
    let tokens = tokenize(text, false, Default::default(), WhitespaceConfig::default());
    for token in tokens {
        // A syntax error: the parser stops there too, and says so.
        let Ok((token, _)) = token else { break };
        let keyword_position = std::mem::take(&mut statement_start);
        match token {
            Token::VariableStart => tag = TagShape::default(),
            Token::BlockStart => {
                tag = TagShape::default();
                statement_start = true;
            }
            Token::ParenOpen | Token::BracketOpen | Token::BraceOpen => {
                tag.depth += 1;
                tag.deepest = tag.deepest.max(tag.depth);
                tag.operators += 1;
            }
            Token::ParenClose | Token::BracketClose | Token::BraceClose => tag.depth = tag.depth.saturating_sub(1),
            Token::Minus => {
                tag.unary += 1;
                tag.operators += 1;
            }
            Token::Ident(word) => {
                if keyword_position {
                    if word == "elif" || word == "else" {
                        branches += 1;
                    } else if BLOCK_STATEMENTS.contains(&word) {
                        blocks += 1;
                    } else if word.starts_with("end") {
                        blocks = blocks.saturating_sub(1);
                    }
                }
                if KEYWORD_OPERATORS.contains(&word) {
                    tag.operators += 1;
                    if word == "not" {
                        tag.unary += 1;
                    }
                }
            }
            Token::TemplateData(_)
            | Token::VariableEnd
            | Token::BlockEnd
            | Token::Str(_)
            | Token::String(_)
            | Token::Int(_)
            | Token::Int128(_)
            | Token::Float(_) => {}
            _ => tag.operators += 1,
        }
        tag.check()?;
        if blocks > MAX_NESTING {
            return Err(format!(
                "the template nests blocks more than {MAX_NESTING} deep; at most {MAX_NESTING} are allowed"
            ));
        }
        if branches > MAX_BRANCHES {
            return Err(format!(
                "the template has more than {MAX_BRANCHES} elif and else tags; at most {MAX_BRANCHES} are allowed"
            ));
        }
    }
    Ok(())
}

/// What makes a tag deep to parse.
#[derive(Default)]
struct TagShape {
    /// Brackets open now, and the most that were.
    depth: usize,
    deepest: usize,
    /// Unary-capable operators: every `-` and `not` (counting binary ones
    /// too errs on the safe side).
    unary: usize,
    /// Operators and separators of every kind.
    operators: usize,
}

impl TagShape {
    fn check(&self) -> Result<(), String> {
        if self.deepest > MAX_NESTING {
            return Err(format!(
                "the template nests brackets more than {MAX_NESTING} deep; at most {MAX_NESTING} are allowed"
            ));
        }
        if self.unary > MAX_UNARY {
            return Err(format!(
                "a template tag holds more than {MAX_UNARY} '-' or 'not' operators; at most {MAX_UNARY} are allowed"
            ));
        }
        if self.operators > MAX_OPERATORS {
            return Err(format!(
                "a template tag holds more than {MAX_OPERATORS} operators; at most {MAX_OPERATORS} are allowed (split it into steps)"
            ));
        }
        Ok(())
    }
}

/// Keywords that join expressions.
const KEYWORD_OPERATORS: &[&str] = &["if", "else", "and", "or", "not", "is", "in"];

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
        // Flat chains are as deep as they are long.
        for chain in [
            format!("{{{{ 1{} }}}}", "+1".repeat(200)),
            format!("{{{{ a{} }}}}", ".b".repeat(200)),
            format!("{{{{ a{} }}}}", "|e".repeat(200)),
            format!("{{{{ 1{} }}}}", " if a else 1".repeat(100)),
        ] {
            assert!(check_bounds(&chain).unwrap_err().contains("operators"), "{chain}");
        }
        assert!(check_bounds(&format!("{{% if a %}}{}{{% endif %}}", "{% elif a %}".repeat(100))).is_err());
        assert!(
            check_bounds(&format!("{{{{ a{} }}}}", " ~ '.|+'".repeat(60))).is_ok(),
            "operators in strings do not count"
        );
    }

    #[test]
    fn raw_blocks_comments_and_strings_hide_no_tag() {
        let deep = format!("{{{{ {}1{} }}}}", "(".repeat(5_000), ")".repeat(5_000));
        for disguise in [
            "{% raw %}{{{% endraw %}",
            "{% raw %}{%{% endraw %}",
            "{# {{ #}",
            "{# '{{ #}",
            "{{ '}}' }}",
            "{{ \"%}\" }}",
            "{% set x = '%}' %}",
        ] {
            let text = format!("{disguise}{deep}");
            assert!(check_bounds(&text).unwrap_err().contains("deep"), "{disguise}");
        }
        // Statements written without a space still open blocks.
        assert!(check_bounds(&"{% if(1) %}".repeat(40)).is_err());
        assert!(check_bounds(&"{%if(1)%}".repeat(40)).is_err());
        // Raw blocks close, names merely starting like keywords are names,
        // and many raw blocks in a row are fine.
        assert!(check_bounds(&"{% raw %}{{ x }}{% endraw %}".repeat(100)).is_ok());
        assert!(check_bounds(&"{{ end }}{{ endless }}{{ iffy }}".repeat(40)).is_ok());
        assert!(check_bounds(&"{% if a %}x{% endif %}".repeat(100)).is_ok());
    }
}
