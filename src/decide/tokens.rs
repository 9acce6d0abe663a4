//! How many tokens a text will take in the model's context, estimated before
//! anything is sent.
//!
//! There is no Llama tokenizer in Rust that macha could use without shipping
//! the model's vocabulary, so the count is an estimate, and a conservative
//! one: a prompt the estimate says fits must fit. It follows how Llama 3's
//! tokenizer (a byte-level BPE with a 128k vocabulary) cuts text before
//! merging: letters, digits and symbols are split into pieces first, and no
//! token ever spans two pieces, so each piece costs at least one token.
//! Journal text is far denser than prose under that rule: digits are split
//! into groups of at most three, so `2026-01-01T00:00:00Z` is 13 pieces for
//! 20 characters, where the usual "four characters a token" would say 5.
//!
//! The estimate is the larger of the piece count and one token per four
//! bytes (what the test double of Ollama counts, and the usual average for
//! English prose with this vocabulary), so prose with long words is not
//! undercounted either.

/// Estimated tokens of `text` in a Llama 3 context; never less than
/// `text.len() / 4` rounded up. See the module documentation for the rule.
pub fn estimate_tokens(text: &str) -> usize {
    pieces(text).max(text.len().div_ceil(4))
}

/// Characters of an ASCII word per extra token: common words are one token,
/// long or rare ones (`journald`, `configuration`) are split into a few.
const LETTERS_PER_EXTRA_TOKEN: usize = 8;

/// The pieces Llama 3's pre-tokenizer cuts `text` into, with long letter
/// runs and symbol runs counted as the several tokens they usually become.
fn pieces(text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let run = run_len(&chars[i..], c);
        let next = chars.get(i + run).copied();
        tokens += match class(c) {
            Class::Letter => 1 + run / LETTERS_PER_EXTRA_TOKEN,
            // Numbers are cut into groups of at most three digits.
            Class::Digit => run.div_ceil(3),
            Class::LineBreak => 1,
            // One space is part of the word or symbol run after it; more
            // spaces, or a space before a digit or at a line's end, are a
            // token of their own.
            Class::Space => {
                usize::from(run > 1 || !next.is_some_and(|n| matches!(class(n), Class::Letter | Class::Symbol)))
            }
            // A symbol right before a word is part of it (`.service`,
            // `=web`); the rest of a symbol run merges in pairs at best.
            Class::Symbol => {
                let joined = usize::from(next.is_some_and(|n| class(n) == Class::Letter));
                (run - joined).div_ceil(2)
            }
            // Outside ASCII, a character is a token per two bytes of UTF-8
            // at most: accented letters one, CJK and emoji two.
            Class::Other => chars[i..i + run].iter().map(|c| c.len_utf8().div_ceil(2)).sum(),
        };
        i += run;
    }
    tokens
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Digit,
    Space,
    LineBreak,
    Symbol,
    Other,
}

fn class(c: char) -> Class {
    match c {
        'a'..='z' | 'A'..='Z' => Class::Letter,
        '0'..='9' => Class::Digit,
        '\n' | '\r' => Class::LineBreak,
        c if c.is_ascii_whitespace() => Class::Space,
        c if c.is_ascii() => Class::Symbol,
        _ => Class::Other,
    }
}

/// How many characters from the start of `chars` are of the class of `first`.
fn run_len(chars: &[char], first: char) -> usize {
    let want = class(first);
    chars.iter().take_while(|c| class(**c) == want).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_costs_a_token_per_piece() {
        // 202|6|-|01|-|01|T|00|:|00|:|00|Z
        assert_eq!(pieces("2026-01-01T00:00:00Z"), 13);
        assert_eq!(estimate_tokens("2026-01-01T00:00:00Z"), 13);
    }

    #[test]
    fn words_take_their_leading_space_or_symbol() {
        // unit|=web|.service| comm|=cat
        assert_eq!(pieces("unit=web.service comm=cat"), 5);
        // the| disk| is| full
        assert_eq!(pieces("the disk is full"), 4);
    }

    #[test]
    fn numbers_are_cut_into_groups_of_three_digits() {
        assert_eq!(pieces("1234567"), 3);
        // sector| |100000 -> sector, space, 100, 000
        assert_eq!(pieces("sector 100000"), 4);
    }

    #[test]
    fn the_estimate_is_never_below_four_bytes_a_token() {
        let prose = "configuration management documentation";
        assert!(pieces(prose) < prose.len().div_ceil(4));
        assert_eq!(estimate_tokens(prose), prose.len().div_ceil(4));
        for text in ["", "a", "\n\n\n", "ünïcödé", "日本語のテキスト", "🙂🙂", "[x] ::: <<>>"] {
            assert!(estimate_tokens(text) >= text.len().div_ceil(4), "{text}");
        }
    }

    #[test]
    fn non_ascii_text_is_counted_per_character() {
        assert_eq!(pieces("日本"), 4);
        assert_eq!(pieces("é"), 1);
    }
}
