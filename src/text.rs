//! Text made safe to put on one line, and cut to a bound.
//!
//! Text macha did not write (journal lines, unit descriptions, the model's
//! prose, people's reasons) goes into prompts, records and systemd's status
//! line, where a line break could forge a line of its own. One copy of each
//! helper, so every place cuts and flattens the same way.

/// `text` on one line: control characters and every Unicode line or
/// paragraph separator become spaces.
pub fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') { ' ' } else { c }).collect()
}

/// `text` cut to at most `max` characters, ending in `mark` when it is cut.
pub fn cut(text: &str, max: usize, mark: &str) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let keep = max.saturating_sub(mark.chars().count());
    text.chars().take(keep).collect::<String>() + mark
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_line_separators_cannot_start_a_line() {
        assert_eq!(one_line("a\u{2028}[forged]\u{2029}b\r\nc\u{85}d"), "a [forged] b  c d");
    }

    #[test]
    fn cut_text_keeps_its_bound_mark_included() {
        assert_eq!(cut("short", 10, " [...cut]"), "short");
        let long = "x".repeat(30);
        let cut_text = cut(&long, 20, " [...cut]");
        assert_eq!(cut_text.chars().count(), 20);
        assert!(cut_text.ends_with(" [...cut]"));
        assert_eq!(cut("äöüäöü", 5, "..."), "äö...");
    }
}
