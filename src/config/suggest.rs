//! "Did you mean" suggestions: a small Levenshtein distance and a picker.

/// The edit distance (insertions, deletions, substitutions) between `a` and
/// `b`, counted in chars.
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // `row[j]` is the distance between the prefix of `a` seen so far and `b[..j]`.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Folds the differences people make by accident: case and `-` vs `_`.
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// The candidate closest to `word`: one that differs only in case or in
/// `-`/`_`, else the nearest within an edit distance of 2 (and nearer than
/// `word` is long, so `x` does not "mean" `cwd`).
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let folded = fold(word);
    if let Some(same) = candidates.iter().find(|c| fold(c) == folded) {
        return Some(same);
    }
    let limit = 2.min(word.chars().count().saturating_sub(1));
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// `did you mean `x`?`, when a candidate is close to `word`.
pub(crate) fn did_you_mean(word: &str, candidates: &[&str]) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// "`a`, `b`, `c`": a list of valid values for a message.
pub(crate) fn one_of(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| format!("`{o}`")).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("proceses", "processes"), 1);
        assert_eq!(levenshtein("forkk", "fork"), 1);
        assert_eq!(levenshtein("fork", "forkserver"), 6);
        assert_eq!(levenshtein("héllo", "hello"), 1);
    }

    #[test]
    fn closest_prefers_folded_match_then_small_distance() {
        let keys = ["start_method", "stop_signal", "restart"];
        assert_eq!(closest("start-method", &keys), Some("start_method"));
        assert_eq!(closest("Restart", &keys), Some("restart"));
        assert_eq!(closest("restrat", &keys), Some("restart"));
        assert_eq!(closest("banana", &keys), None);
    }

    #[test]
    fn closest_does_not_suggest_for_tiny_words() {
        assert_eq!(closest("x", &["cwd", "env"]), None);
        assert_eq!(closest("ev", &["cwd", "env"]), Some("env"));
    }

    #[test]
    fn renders_lists_and_suggestions() {
        assert_eq!(one_of(&["a", "b"]), "`a`, `b`");
        assert_eq!(
            did_you_mean("forkk", &["spawn", "fork", "forkserver"]).as_deref(),
            Some("did you mean `fork`?")
        );
    }
}
