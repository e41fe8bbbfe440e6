//! Templates in `shell` commands: every value is data, never code.
//!
//! `shell: "echo '{{ input.name }}'"` with a name of `x'; id; echo '` must
//! print that name, not run `id`. So a shell command is rendered in two
//! passes. First minijinja renders it with a formatter that writes each
//! value as a placeholder (a nonce and an index) and keeps the value aside;
//! then [`quote_values`] walks the rendered text the way `/bin/sh` reads
//! it, and puts each value back escaped for where it landed:
//!
//! - unquoted: as one word, in single quotes unless it is plainly safe
//!   (`abc`, `12`, `a/b.txt`);
//! - inside `'…'`: each `'` closed, escaped and reopened (`'\''`);
//! - inside `"…"`: `\`, `$`, `` ` `` and `"` escaped with a backslash;
//! - in a here-document that expands (`<<EOF`): `\`, `$` and `` ` ``
//!   escaped; in one that does not (`<<'EOF'`): as it is. Either way a
//!   value that would end the document early (a line equal to its
//!   delimiter) fails the step;
//! - in a `# comment`: line breaks become spaces.
//!
//! `$( … )` and backquotes open a fresh unquoted context, inside quotes
//! too. Where no escaping can be trusted, only some values may go: whole
//! numbers inside `$(( … ))`, plain values (letters, digits, `._/:@%+,-=`)
//! inside backquotes and `${ … }`, and no value right after a backslash;
//! anything else fails the step. `{{ value | raw }}` opts out: the value is
//! inserted as it is, as code (no other filter does: `| safe`, `| e` and
//! `| tojson` values are data like any other). Quoting cannot stop a value that starts
//! with `-` from being read as an option: put `--` before such values.

/// Marks where a value goes in the first pass: private-use characters
/// around a per-render nonce and the value's index.
const OPEN: char = '\u{F8F0}';
const CLOSE: char = '\u{F8F1}';

/// The placeholder for value `index` of a render with `nonce`.
pub fn placeholder(nonce: u64, index: usize) -> String {
    format!("{OPEN}{nonce:016x}:{index}{CLOSE}")
}

/// The value index of a placeholder at the start of `text`, and its length.
fn read_placeholder(text: &str, nonce: u64) -> Option<(usize, usize)> {
    let rest = text.strip_prefix(OPEN)?;
    let end = rest.find(CLOSE)?;
    let (seen, index) = rest[..end].split_once(':')?;
    if seen != format!("{nonce:016x}") {
        return None;
    }
    Some((index.parse().ok()?, OPEN.len_utf8() + end + CLOSE.len_utf8()))
}

/// Where in the shell's grammar the text so far has left us.
#[derive(Debug, Clone, PartialEq)]
enum Context {
    Unquoted,
    Single,
    Double,
    Comment,
    /// Inside `$( … )`, with the depth of parentheses opened in it.
    Substitution(usize),
    /// Inside `$(( … ))`, with the depth of parentheses opened in it: quotes
    /// mean nothing there and `$(…)` still runs, so only numbers may go in.
    Arithmetic(usize),
    /// Inside `${ … }`, with the depth of braces opened in it: how quotes
    /// nest there differs from shell to shell, so only plain values may go in.
    Parameter(usize),
    Backquote,
    /// Inside `[[ … ]]`, or the arguments of `let` or `(( … ))` as a
    /// command: shells such as bash evaluate their operands as arithmetic
    /// (`a[$(id)]` runs `id`), quoted or not, so only plain values may go in.
    Evaluated(Evaluated),
    HereDoc(HereDoc),
}

/// What ends an [`Context::Evaluated`] part.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Evaluated {
    /// `]]`
    Test,
    /// `))`
    Arithmetic,
    /// The end of the command (`let`).
    Let,
}

/// A here-document being read.
#[derive(Debug, Clone, PartialEq)]
struct HereDoc {
    delimiter: String,
    /// `<<'EOF'`: no expansion inside.
    literal: bool,
    /// `<<-EOF`: leading tabs are stripped from each line.
    strip_tabs: bool,
}

/// Characters a value may have to be written without quotes.
fn plainly_safe(value: &str) -> bool {
    !value.is_empty()
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | ':' | '@' | '%' | '+' | ',' | '-' | '=')
        })
}

fn single_quoted(value: &str) -> String {
    if plainly_safe(value) {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn escape_with_backslash(value: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The value, escaped for the innermost context of `stack`; an error when
/// no escaping can make it data there.
fn escape_in(value: &str, stack: &[Context]) -> Result<String, String> {
    let context = stack.last().cloned().unwrap_or(Context::Unquoted);
    if let Context::Arithmetic(_) = context {
        let digits = value.strip_prefix('-').unwrap_or(value);
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("a value inside $(( … )) must be a whole number, not {value:?}"));
        }
        return Ok(value.to_owned());
    }
    // Backquotes take backslashes away before their command is read, so no
    // quoting survives them: only plain values may go inside.
    if stack.contains(&Context::Backquote) && !value.is_empty() && !plainly_safe(value) {
        return Err(format!(
            "a value inside backquotes must be plain (letters, digits and ._/:@%+,-=), not {value:?}; use $( … ) instead"
        ));
    }
    if stack.iter().any(|c| matches!(c, Context::Evaluated(_))) && !value.is_empty() && !plainly_safe(value) {
        return Err(format!(
            "a value inside [[ … ]], (( … )) or let must be plain (letters, digits and ._/:@%+,-=), not {value:?}: \
             some shells evaluate it as code there"
        ));
    }
    if stack.iter().any(|c| matches!(c, Context::Parameter(_))) && !value.is_empty() && !plainly_safe(value) {
        return Err(format!(
            "a value inside ${{ … }} must be plain (letters, digits and ._/:@%+,-=), not {value:?}; \
             put it in a variable first (env: or a step of its own)"
        ));
    }
    Ok(escape(value, &context))
}

/// The value, escaped for `context`.
fn escape(value: &str, context: &Context) -> String {
    match context {
        Context::Unquoted
        | Context::Substitution(_)
        | Context::Backquote
        | Context::Arithmetic(_)
        | Context::Evaluated(_)
        | Context::Parameter(_) => single_quoted(value),
        Context::Single => value.replace('\'', r"'\''"),
        Context::Double => escape_with_backslash(value, &['\\', '$', '`', '"']),
        Context::Comment => value.replace(['\n', '\r'], " "),
        Context::HereDoc(doc) if doc.literal => value.to_owned(),
        Context::HereDoc(_) => escape_with_backslash(value, &['\\', '$', '`']),
    }
}

/// Puts the values back into `rendered`, each escaped for its context.
/// The error says which value could not be placed safely.
pub fn quote_values(rendered: &str, nonce: u64, values: &[String]) -> Result<String, String> {
    let mut out = String::with_capacity(rendered.len());
    let mut stack = vec![Context::Unquoted];
    // Here-documents announced on the current line start at its end.
    let mut pending: Vec<HereDoc> = Vec::new();
    // The current line of a here-document's body, and whether a value is in it.
    let mut doc_line = String::new();
    let mut doc_line_has_value = false;
    let mut at_word_start = true;
    // After `$'…'` (ANSI-C quoting, read differently by dash and bash) no
    // quoting that follows can be trusted.
    let mut ansi_c_quotes = false;
    // After `case` inside `$( … )`, whose patterns' `)` can be read two
    // ways, neither.
    let mut case_in_substitution = false;
    let mut i = 0;
    while i < rendered.len() {
        let rest = &rendered[i..];
        let context = stack.last().cloned().unwrap_or(Context::Unquoted);
        if let Some((index, len)) = read_placeholder(rest, nonce) {
            let value = values.get(index).ok_or("a template value went missing")?;
            if ansi_c_quotes {
                return Err("a value cannot follow $'…' quoting in a command (shells read it differently); \
                     put the value in a variable first (env:)"
                    .into());
            }
            if case_in_substitution {
                return Err("a value cannot follow `case` inside $( … ) (its patterns' `)` can be read two ways); \
                     put the value in a variable first (env:)"
                    .into());
            }
            let escaped = escape_in(value, &stack)?;
            if let Context::HereDoc(doc) = &context {
                for c in escaped.chars() {
                    doc_line_has_value = true;
                    if c == '\n' {
                        end_doc_line(doc, &mut doc_line, &mut doc_line_has_value)?;
                    } else {
                        doc_line.push(c);
                    }
                }
            }
            out.push_str(&escaped);
            i += len;
            at_word_start = false;
            continue;
        }
        let Some(c) = rest.chars().next() else { break };
        let after = &rest[c.len_utf8()..];
        let value_next = read_placeholder(after, nonce).is_some();
        // A backslash would escape the first character of the value's own
        // escaping: refused wherever backslashes escape.
        let backslash_escapes = match &context {
            Context::Single | Context::Comment => false,
            Context::HereDoc(doc) => !doc.literal,
            _ => true,
        };
        if c == '\\' && value_next && backslash_escapes {
            return Err("a value cannot follow a backslash: put a space or a quote between them".into());
        }
        // `$` then a value: `${…}`, `$'…'` or `$VAR@P` would be the value's to pick.
        if c == '$' && value_next && backslash_escapes {
            return Err("a value cannot follow a $: put a space or a quote between them".into());
        }
        // Whether this character closes a substitution: what follows it
        // continues the same word.
        let mut closes_word_part = false;
        // `let`'s arguments end with its command; what ends it is then read
        // in the context around it.
        if context == Context::Evaluated(Evaluated::Let) && matches!(c, ';' | '&' | '|' | '\n' | ')') {
            stack.pop();
            continue;
        }
        let next = if value_next { None } else { after.chars().next() };
        let mut advance = c.len_utf8();
        // `$((`, `$(` and `${` open the same contexts wherever `$` expands.
        let expands = match &context {
            Context::Single | Context::Comment | Context::Arithmetic(_) => false,
            Context::HereDoc(doc) => !doc.literal,
            _ => true,
        };
        if let Some((opened, len)) = expands.then(|| expansion_at(rest)).flatten() {
            if matches!(context, Context::HereDoc(_)) {
                doc_line.push_str(&rest[..len]);
            }
            stack.push(opened);
            advance = len;
        } else {
            match &context {
                Context::Single => {
                    if c == '\'' {
                        stack.pop();
                    }
                }
                Context::Comment => {
                    if c == '\n' {
                        stack.pop();
                        if stack.last() == Some(&Context::Evaluated(Evaluated::Let)) {
                            stack.pop();
                        }
                        if let Some(doc) = start_pending(&mut pending) {
                            stack.push(Context::HereDoc(doc));
                        }
                    }
                }
                Context::HereDoc(doc) => {
                    if !doc.literal && c == '\\' {
                        if let Some(n) = next {
                            advance += n.len_utf8();
                            doc_line.push(c);
                            doc_line.push(n);
                        }
                    } else if !doc.literal && c == '`' {
                        doc_line.push(c);
                        stack.push(Context::Backquote);
                    } else if c == '\n' {
                        let doc = doc.clone();
                        if end_doc_line(&doc, &mut doc_line, &mut doc_line_has_value)? {
                            stack.pop();
                            if let Some(next_doc) = start_pending(&mut pending) {
                                stack.push(Context::HereDoc(next_doc));
                            }
                        }
                    } else {
                        doc_line.push(c);
                    }
                }
                Context::Arithmetic(depth) => match c {
                    '(' => stack.push(Context::Arithmetic(depth + 1)),
                    ')' if *depth > 0 => {
                        stack.pop();
                    }
                    ')' if rest.starts_with("))") => {
                        advance += 1;
                        stack.pop();
                        closes_word_part = true;
                    }
                    _ => {}
                },
                Context::Parameter(depth) => match c {
                    '\\' => advance += next.map_or(0, char::len_utf8),
                    '{' => stack.push(Context::Parameter(depth + 1)),
                    '}' => {
                        stack.pop();
                    }
                    '"' => stack.push(Context::Double),
                    // Inside double quotes, a single quote in ${ … } is literal.
                    '\'' if !stack.contains(&Context::Double) => stack.push(Context::Single),
                    '`' => stack.push(Context::Backquote),
                    _ => {}
                },
                Context::Double => match c {
                    '\\' => advance += next.map_or(0, char::len_utf8),
                    '"' => {
                        stack.pop();
                    }
                    '`' => stack.push(Context::Backquote),
                    _ => {}
                },
                Context::Unquoted | Context::Substitution(_) | Context::Backquote | Context::Evaluated(_) => match c {
                    ']' if context == Context::Evaluated(Evaluated::Test) && rest.starts_with("]]") => {
                        advance += 1;
                        stack.pop();
                    }
                    ')' if context == Context::Evaluated(Evaluated::Arithmetic) && rest.starts_with("))") => {
                        advance += 1;
                        stack.pop();
                    }
                    '\\' => advance += next.map_or(0, char::len_utf8),
                    '$' if next == Some('\'') => {
                        ansi_c_quotes = true;
                        advance += 1;
                        stack.push(Context::Single);
                    }
                    '\'' => stack.push(Context::Single),
                    '"' => stack.push(Context::Double),
                    '#' if at_word_start => stack.push(Context::Comment),
                    'c' if at_word_start
                        && stack.iter().any(|c| matches!(c, Context::Substitution(_)))
                        && starts_word(rest, "case") =>
                    {
                        case_in_substitution = true;
                    }
                    '[' if at_word_start && starts_word(rest, "[[") => {
                        advance += 1;
                        stack.push(Context::Evaluated(Evaluated::Test));
                    }
                    '(' if at_word_start && rest.starts_with("((") => {
                        advance += 1;
                        stack.push(Context::Evaluated(Evaluated::Arithmetic));
                    }
                    'l' if at_word_start && starts_word(rest, "let") => {
                        advance += 2;
                        stack.push(Context::Evaluated(Evaluated::Let));
                    }
                    '`' if context == Context::Backquote => {
                        stack.pop();
                        closes_word_part = true;
                    }
                    '`' => stack.push(Context::Backquote),
                    '(' => {
                        if let Some(Context::Substitution(depth)) = stack.last_mut() {
                            *depth += 1;
                        }
                    }
                    ')' => match stack.last_mut() {
                        Some(Context::Substitution(0)) => {
                            stack.pop();
                            closes_word_part = true;
                        }
                        Some(Context::Substitution(depth)) => *depth -= 1,
                        _ => {}
                    },
                    '<' if next == Some('<') && !rest.starts_with("<<<") => {
                        let (doc, len) = read_heredoc_operator(&rendered[i..], nonce)?;
                        out.push_str(&rendered[i..i + len]);
                        i += len;
                        pending.push(doc);
                        at_word_start = false;
                        continue;
                    }
                    '\n' => {
                        if let Some(doc) = start_pending(&mut pending) {
                            stack.push(Context::HereDoc(doc));
                        }
                    }
                    _ => {}
                },
            }
        }
        let consumed = &rendered[i..i + advance];
        out.push_str(consumed);
        // A backslash-newline joins two lines as if they were one: what
        // follows continues whatever came before it.
        if consumed != "\\\n" {
            let last = consumed.chars().last().unwrap_or(c);
            // An escaped character, and the end of `$( … )`, `$(( … ))` or
            // backquotes, are part of a word: a `#` after them is no comment.
            let escaped = c == '\\' && consumed.len() > 1;
            at_word_start = !escaped
                && !closes_word_part
                && (last.is_whitespace() || matches!(last, ';' | '&' | '|' | '(' | ')' | '<' | '>' | '`'));
        }
        i += advance;
    }
    Ok(out)
}

/// The expansion (`$((`, `$(` or `${`) that starts `rest`: the context it
/// opens and its length.
fn expansion_at(rest: &str) -> Option<(Context, usize)> {
    if rest.starts_with("$((") {
        Some((Context::Arithmetic(0), 3))
    } else if rest.starts_with("$(") {
        Some((Context::Substitution(0), 2))
    } else if rest.starts_with("${") {
        Some((Context::Parameter(0), 2))
    } else {
        None
    }
}

/// Whether `text` starts with the word `word` (followed by a blank, an
/// operator or the end).
fn starts_word(text: &str, word: &str) -> bool {
    text.strip_prefix(word).is_some_and(|after| {
        after.chars().next().is_none_or(|c| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '<' | '>'))
    })
}

/// The first here-document announced, if any, now that its line ended.
fn start_pending(pending: &mut Vec<HereDoc>) -> Option<HereDoc> {
    (!pending.is_empty()).then(|| pending.remove(0))
}

/// Ends a line of a here-document's body; true when it was the delimiter.
/// A line that a value turned into the delimiter is refused.
fn end_doc_line(doc: &HereDoc, line: &mut String, has_value: &mut bool) -> Result<bool, String> {
    let text = if doc.strip_tabs { line.trim_start_matches('\t') } else { line.as_str() };
    let is_delimiter = text == doc.delimiter;
    let forged = is_delimiter && *has_value;
    line.clear();
    *has_value = false;
    if forged {
        return Err(format!(
            "a template value would end the here-document early (it makes a line that reads {:?})",
            doc.delimiter
        ));
    }
    Ok(is_delimiter)
}

/// Reads `<<WORD`, `<<-WORD`, `<< 'WORD'` or `<<"WORD"` at the start of
/// `text`; returns the here-document and how many bytes the operator and
/// its word take.
fn read_heredoc_operator(text: &str, nonce: u64) -> Result<(HereDoc, usize), String> {
    let mut i = 2;
    let strip_tabs = text[i..].starts_with('-');
    if strip_tabs {
        i += 1;
    }
    while text[i..].starts_with([' ', '\t']) {
        i += 1;
    }
    let mut delimiter = String::new();
    let mut literal = false;
    while let Some(c) = text[i..].chars().next() {
        if read_placeholder(&text[i..], nonce).is_some() {
            return Err("a template value cannot be a here-document's delimiter".into());
        }
        match c {
            '\'' | '"' => {
                literal = true;
                let end = text[i + 1..].find(c).map_or(text.len(), |e| i + 1 + e);
                delimiter.push_str(&text[i + 1..end]);
                i = (end + 1).min(text.len());
            }
            '\\' => {
                literal = true;
                i += 1;
            }
            c if c.is_whitespace() || matches!(c, ';' | '&' | '|' | '<' | '>' | '(' | ')') => break,
            c => {
                delimiter.push(c);
                i += c.len_utf8();
            }
        }
    }
    Ok((HereDoc { delimiter, literal, strip_tabs }, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: u64 = 0xfeed;

    /// `template` with `@0`, `@1`… standing for the values.
    fn quote(template: &str, values: &[&str]) -> Result<String, String> {
        let mut rendered = template.to_owned();
        for i in (0..values.len()).rev() {
            rendered = rendered.replace(&format!("@{i}"), &placeholder(NONCE, i));
        }
        let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        quote_values(&rendered, NONCE, &values)
    }

    /// What `/bin/sh` prints for `script`.
    fn sh(script: &str) -> String {
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(script).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `script` with every shell of the machine that a host's `/bin/sh`
    /// may be (dash, bash, busybox).
    fn every_shell(script: &str) {
        for shell in ["/bin/sh", "/bin/dash", "/bin/bash", "/bin/busybox"] {
            if std::path::Path::new(shell).exists() {
                let mut command = std::process::Command::new(shell);
                if shell.ends_with("busybox") {
                    command.arg("sh");
                }
                let _ = command.arg("-c").arg(script).output().unwrap();
            }
        }
    }

    /// Values that run `touch M` if they are taken for code.
    const HOSTILE: &[&str] = &[
        "x'; touch M; echo '",
        "x\"; touch M; echo \"",
        "$(touch M)",
        "`touch M`",
        "a\nEOF\ntouch M",
        "\\\"; touch M #",
        "' \"$(touch M)\" '",
        "; touch M",
        "x\ntouch M",
        "x\ntouch M #",
        "$(touch M) '",
        "1; touch M",
        "\\'; touch M; #",
        "{PATH@P}",
        "a[$(touch M)]",
        "",
    ];

    #[test]
    fn values_are_data_in_every_quoting_context() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        for value in HOSTILE {
            let value = value.replace('M', &marker.display().to_string());
            for template in [
                "printf '%s' @0",
                "printf '%s' '@0'",
                "printf '%s' \"@0\"",
                "printf '%s' \"pre $(printf '%s' @0) post\"",
                "printf '%s' `printf '%s' @0`",
                "printf '%s' pre@0post",
                "printf '%s' \"a\"@0'b'",
                "X=@0; printf '%s' \"$X\"",
                "# a comment @0\nprintf '%s' ok",
                "cat <<EOF\n@0\nEOF",
                "cat <<'EOF'\n@0 $(x)\nEOF",
                "cat <<-EOF\n\t@0\n\tEOF",
                "echo total: $(( @0 + 1 ))",
                "echo \"total: $(( (@0) * 2 ))\"",
                "echo `echo \"@0\"`",
                "echo \"`echo '@0'`\"",
                "X=\"${Y:-@0}\"; printf '%s' \"$X\"",
                "X=${Y:-@0}; printf '%s' \"$X\"",
                "case @0 in *) printf '%s' ok;; esac",
                "echo \"${V:-\"@0\"}\"",
                "echo \"${V:+\"@0\"}\"",
                "echo ${V:-\"@0\"}",
                "echo \"${V#@0}\"",
                "echo \"C:\\@0\"",
                "echo C:\\@0",
                "cat <<EOF\nC:\\@0\nEOF",
                "echo start \\\n# @0\necho end",
                "X=$(# @0\necho hi); printf '%s' \"$X\"",
                "echo `# @0\necho hi`",
                "echo build-$(echo 1)#@0",
                "echo Ticket\\ #@0",
                "echo $((1))#@0",
                "echo `echo 1`#@0",
                "R=\"$(case \"$X\" in *) echo @0;; esac)\"; printf '%s' \"$R\"",
                "echo $@0",
                "echo \"$@0\"",
                "echo $'it\\'s' @0",
                "[[ @0 -gt 5 ]] && echo big",
                "let x=@0; echo $x",
                "(( x << 2 )); echo @0",
                "let x=1 # it's\necho @0",
                "echo $(let x=1) @0",
            ] {
                match quote(template, &[&value]) {
                    Ok(script) => {
                        every_shell(&script);
                        assert!(!marker.exists(), "{template} with {value:?} ran code: {script:?}");
                    }
                    // Refusing is fine too (a value that would end a here-document,
                    // a value that cannot be data in arithmetic or backquotes).
                    Err(err) => assert!(
                        ["here-document", "whole number", "backquotes", "${", "backslash", "a $", "case", "let", "$'"]
                            .iter()
                            .any(|w| err.contains(w)),
                        "{err}"
                    ),
                }
            }
        }
    }

    #[test]
    fn values_keep_their_exact_text() {
        let value = "it's a \"quote\" $HOME `x` \\ back";
        for template in ["printf '%s' @0", "printf '%s' '@0'", "printf '%s' \"@0\"", "cat <<EOF\n@0\nEOF"] {
            let script = quote(template, &[value]).unwrap();
            assert_eq!(sh(&script).trim_end_matches('\n'), value, "{template}: {script}");
        }
        assert_eq!(quote("echo @0 @1", &["plain-1.txt", "two words"]).unwrap(), "echo plain-1.txt 'two words'");
    }

    #[test]
    fn numbers_go_into_arithmetic_and_plain_values_into_backquotes() {
        assert_eq!(sh(&quote("echo $(( @0 + 1 ))", &["41"]).unwrap()), "42\n");
        assert_eq!(sh(&quote("echo $(( (@0) * $(( 2 )) ))", &["-3"]).unwrap()), "-6\n");
        assert!(quote("echo $(( @0 + 1 ))", &["$(id)1"]).unwrap_err().contains("whole number"));
        assert_eq!(sh(&quote("echo `echo @0`", &["plain-word"]).unwrap()), "plain-word\n");
        assert!(quote("echo `echo \"@0\"`", &["$(id)"]).unwrap_err().contains("backquotes"));
        // After the arithmetic, quoting goes on as before.
        assert_eq!(sh(&quote("echo $(( 1 )) @0", &["a b"]).unwrap()), "1 a b\n");
    }

    #[test]
    fn a_value_cannot_end_a_here_document() {
        assert!(quote("cat <<EOF\n@0\nEOF\n", &["x\nEOF\nid"]).is_err());
        assert!(quote("cat <<EOF\nE@0\nEOF\n", &["OF"]).is_err());
        assert!(quote("cat <<@0\nx\n", &["EOF"]).is_err());
        assert!(quote("cat <<EOF\n@0\nEOF\necho @1", &["fine", "x y"]).unwrap().ends_with("echo 'x y'"));
    }
}
