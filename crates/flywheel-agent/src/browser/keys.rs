//! Key names to CDP key events.
//!
//! Accepts Playwright-style names (`Enter`, `ArrowDown`, `Control+A`) and the
//! xdotool names computer-use models send (`Return`, `ctrl+a`, `Page_Down`),
//! case-insensitively for named keys. A combination is keys joined by `+`;
//! all but the last are modifiers.

/// One key, as CDP's `Input.dispatchKeyEvent` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDef {
    pub key: String,
    pub code: String,
    pub key_code: u32,
    /// Text the key types, if any.
    pub text: Option<String>,
}

/// A key with the modifiers held while it is pressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chord {
    /// CDP modifier bits: Alt 1, Ctrl 2, Meta 4, Shift 8.
    pub modifiers: u32,
    pub modifier_keys: Vec<KeyDef>,
    pub key: KeyDef,
}

fn named(name: &str) -> Option<KeyDef> {
    let (key, code, key_code, text): (&str, &str, u32, Option<&str>) = match name.to_ascii_lowercase().as_str() {
        "enter" | "return" | "kp_enter" => ("Enter", "Enter", 13, Some("\r")),
        "tab" => ("Tab", "Tab", 9, None),
        "escape" | "esc" => ("Escape", "Escape", 27, None),
        "backspace" => ("Backspace", "Backspace", 8, None),
        "delete" | "del" => ("Delete", "Delete", 46, None),
        "space" | " " => (" ", "Space", 32, Some(" ")),
        "arrowup" | "up" => ("ArrowUp", "ArrowUp", 38, None),
        "arrowdown" | "down" => ("ArrowDown", "ArrowDown", 40, None),
        "arrowleft" | "left" => ("ArrowLeft", "ArrowLeft", 37, None),
        "arrowright" | "right" => ("ArrowRight", "ArrowRight", 39, None),
        "home" => ("Home", "Home", 36, None),
        "end" => ("End", "End", 35, None),
        "pageup" | "page_up" | "prior" => ("PageUp", "PageUp", 33, None),
        "pagedown" | "page_down" | "next" => ("PageDown", "PageDown", 34, None),
        "insert" => ("Insert", "Insert", 45, None),
        "shift" | "shift_l" | "shift_r" => ("Shift", "ShiftLeft", 16, None),
        "control" | "ctrl" | "control_l" | "control_r" => ("Control", "ControlLeft", 17, None),
        "alt" | "alt_l" | "alt_r" | "option" => ("Alt", "AltLeft", 18, None),
        "meta" | "super" | "super_l" | "cmd" | "command" | "win" => ("Meta", "MetaLeft", 91, None),
        other => {
            if let Some(n) =
                other.strip_prefix('f').and_then(|n| n.parse::<u32>().ok()).filter(|n| (1..=12).contains(n))
            {
                return Some(KeyDef { key: format!("F{n}"), code: format!("F{n}"), key_code: 111 + n, text: None });
            }
            return None;
        }
    };
    Some(KeyDef { key: key.into(), code: code.into(), key_code, text: text.map(str::to_owned) })
}

/// The definition of a single printable character.
fn character(c: char) -> KeyDef {
    let (code, key_code) = if c.is_ascii_alphabetic() {
        (format!("Key{}", c.to_ascii_uppercase()), c.to_ascii_uppercase() as u32)
    } else if c.is_ascii_digit() {
        (format!("Digit{c}"), c as u32)
    } else {
        (String::new(), 0)
    };
    KeyDef { key: c.to_string(), code, key_code, text: Some(c.to_string()) }
}

fn modifier_bit(key: &KeyDef) -> u32 {
    match key.key.as_str() {
        "Alt" => 1,
        "Control" => 2,
        "Meta" => 4,
        "Shift" => 8,
        _ => 0,
    }
}

/// Parses `Enter`, `a`, `Control+A`, `ctrl+shift+t`.
pub fn parse_chord(spec: &str) -> Result<Chord, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("an empty key name".into());
    }
    // A lone "+" is the plus key, not a separator.
    let parts: Vec<&str> = if spec == "+" { vec!["+"] } else { spec.split('+').collect() };
    let mut modifier_keys = Vec::new();
    let mut modifiers = 0;
    for part in &parts[..parts.len() - 1] {
        let key = named(part)
            .filter(|k| modifier_bit(k) != 0)
            .ok_or_else(|| format!("{part:?} is not a modifier (Control, Shift, Alt, Meta)"))?;
        modifiers |= modifier_bit(&key);
        modifier_keys.push(key);
    }
    let last = parts[parts.len() - 1];
    let mut key = match named(last) {
        Some(key) => key,
        None => {
            let mut chars = last.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => character(c),
                _ => return Err(format!("unknown key {last:?}")),
            }
        }
    };
    // With Control, Alt or Meta held, a key is a shortcut and types nothing.
    if modifiers & (1 | 2 | 4) != 0 {
        key.text = None;
        if key.key.chars().count() == 1 {
            key.key = key.key.to_ascii_lowercase();
        }
    }
    Ok(Chord { modifiers, modifier_keys, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_both_worlds() {
        assert_eq!(parse_chord("Enter").unwrap().key.key_code, 13);
        assert_eq!(parse_chord("Return").unwrap().key.key, "Enter");
        assert_eq!(parse_chord("Page_Down").unwrap().key.key, "PageDown");
        assert_eq!(parse_chord("a").unwrap().key.text.as_deref(), Some("a"));
        let chord = parse_chord("ctrl+a").unwrap();
        assert_eq!(chord.modifiers, 2);
        assert_eq!(chord.key.code, "KeyA");
        assert_eq!(chord.key.text, None);
        let chord = parse_chord("Control+Shift+T").unwrap();
        assert_eq!(chord.modifiers, 10);
        assert_eq!(parse_chord("F5").unwrap().key.key_code, 116);
        assert!(parse_chord("Hyper+x").is_err());
        assert!(parse_chord("NotAKey").is_err());
        assert_eq!(parse_chord("+").unwrap().key.key, "+");
    }
}
