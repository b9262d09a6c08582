//! Text other players chose that ends up on this player's screen: member and party names,
//! hosted servers' names. A name is a stranger's input reaching a terminal, a web page or a
//! Discord post, so what could steer the display is taken out where it enters: control
//! characters (terminal escapes, newlines), bidirectional overrides and isolates (text that
//! reads other than it is stored), zero-width and other invisible format characters (two
//! names that look the same but are not).

/// Whether `c` could steer or hide what is displayed rather than be seen.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'                      // soft hyphen
            | '\u{034F}'                    // combining grapheme joiner
            | '\u{061C}'                    // Arabic letter mark
            | '\u{115F}' | '\u{1160}'       // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'       // Khmer inherent vowels
            | '\u{180B}'..='\u{180F}'       // Mongolian selectors and vowel separator
            | '\u{200B}'..='\u{200F}'       // zero-width space, joiners, marks
            | '\u{2028}'..='\u{202E}'       // separators, bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}'       // word joiner, invisible operators, isolates
            | '\u{3164}'                    // Hangul filler
            | '\u{FE00}'..='\u{FE0F}'       // variation selectors
            | '\u{FEFF}'                    // zero-width no-break space
            | '\u{FFA0}'                    // halfwidth Hangul filler
            | '\u{FFF9}'..='\u{FFFB}'       // interlinear annotation
            | '\u{E0000}'..='\u{E0FFF}' // tags, variation selectors supplement
        )
}

/// `text` with what [`is_hidden`] finds taken out, runs of white space made one space,
/// trimmed, and cut to `max_chars` characters.
pub fn clean(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut chars = 0;
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if is_hidden(c) {
            continue;
        }
        if space {
            if chars + 1 >= max_chars {
                break;
            }
            out.push(' ');
            chars += 1;
            space = false;
        }
        if chars == max_chars {
            break;
        }
        out.push(c);
        chars += 1;
    }
    out
}

/// What two names that look alike have in common: the visible characters, without white
/// space, in lower case ("Bob", "bob " and "b\u{200B}ob" all give "bob").
pub fn likeness(name: &str) -> String {
    name.chars()
        .filter(|&c| !c.is_whitespace() && !is_hidden(c))
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_look_alike_are_alike() {
        assert_eq!(likeness("Bob"), likeness(" b\u{200B}OB\t"));
        assert_ne!(likeness("Bob"), likeness("Bobby"));
    }

    #[test]
    fn escapes_bidi_overrides_and_invisible_characters_are_taken_out() {
        assert_eq!(
            clean("\u{1b}[2J\u{1b}]0;pwned\u{7}alice", 32),
            "[2J]0;pwnedalice"
        );
        assert_eq!(clean("bob\r\nroot# ", 32), "bob root#");
        // "txt.exe" shown as "exe.txt".
        assert_eq!(clean("evil\u{202E}txt.exe", 32), "eviltxt.exe");
        assert_eq!(
            clean("a\u{2066}b\u{2069}c\u{200B}d\u{FEFF}e\u{200D}", 32),
            "abcde"
        );
        assert_eq!(clean("  two   words\t", 32), "two words");
        assert_eq!(clean("ünïcödé ok 🎮", 32), "ünïcödé ok 🎮");
        assert_eq!(clean(&"x".repeat(100), 32).len(), 32);
        assert_eq!(clean("\u{1b}\u{200B}", 32), "");
    }
}
