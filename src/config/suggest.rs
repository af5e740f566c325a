//! "Did you mean" suggestions: a small Levenshtein distance and a picker.

use std::collections::HashMap;

/// The edit distance (insertions, deletions, substitutions) between `a` and
/// `b`, counted in chars.
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // `row[j]` is the distance between the prefix of `a` seen so far and `b[..j]`.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        // `diagonal` is the old `row[j]`, `left` the new one.
        let (mut diagonal, mut left) = (i, i + 1);
        for (cell, cb) in row.iter_mut().skip(1).zip(&b) {
            let up = *cell;
            *cell = (diagonal + usize::from(ca != *cb))
                .min(left + 1)
                .min(up + 1);
            (diagonal, left) = (up, *cell);
        }
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
    }
    row.last().copied().unwrap_or(0)
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
/// `word` is long, so `x` does not "mean" `cwd`). For short lists (keys,
/// choices); see [`Suggester`] for long ones.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let folded = fold(word);
    if let Some(same) = candidates.iter().find(|c| fold(c) == folded) {
        return Some(same);
    }
    let sized = candidates.iter().map(|c| (*c, c.chars().count()));
    let mut unlimited = usize::MAX;
    nearest(word, sized, &mut unlimited)
}

/// The first candidate nearest to `word` within the distance [`closest`]
/// allows. Candidates come with their length in chars. Each comparison
/// spends its cost (the product of the lengths) from `budget`; when the
/// budget cannot pay for one, the search gives up and suggests nothing
/// rather than something that may not be the nearest.
fn nearest<'a>(
    word: &str,
    candidates: impl Iterator<Item = (&'a str, usize)>,
    budget: &mut usize,
) -> Option<&'a str> {
    let len = word.chars().count();
    let limit = 2.min(len.saturating_sub(1));
    let mut best: Option<(usize, &str)> = None;
    for (candidate, candidate_len) in candidates {
        // The distance is at least the difference in length: a 10 MB word
        // costs one count, not a comparison with every candidate.
        if len.abs_diff(candidate_len) > limit {
            continue;
        }
        let cost = len.saturating_mul(candidate_len).max(1);
        *budget = budget.checked_sub(cost)?;
        let distance = levenshtein(word, candidate);
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
            if distance <= 1 {
                // Distance 0 is a folded match, found before: none is nearer.
                break;
            }
        }
    }
    best.map(|(_, c)| c)
}

/// `did you mean `x`?`, when a candidate is close to `word`.
pub(crate) fn did_you_mean(word: &str, candidates: &[&str]) -> Option<String> {
    closest(word, candidates).map(suggestion)
}

fn suggestion(candidate: &str) -> String {
    format!("did you mean `{candidate}`?")
}

/// Levenshtein work (cells of the distance table) that one [`Suggester`]
/// may spend: some tens of milliseconds. Enough to find a typo among tens of
/// thousands of names many times over; a config with tens of thousands of
/// undefined names gets suggestions for the first of them only, instead of
/// a check that takes minutes.
const SUGGESTER_BUDGET: usize = 20_000_000;

/// "Did you mean" over a long list of candidates (every queue of a config),
/// asked many times: folded matches are looked up in a map, answers are
/// remembered per word, and the edit-distance scans share a budget so that
/// the total work stays linear in the size of the config.
#[derive(Debug)]
pub(crate) struct Suggester<'a> {
    folded: HashMap<String, &'a str>,
    candidates: Vec<(&'a str, usize)>,
    answers: HashMap<String, Option<&'a str>>,
    budget: usize,
}

impl<'a> Suggester<'a> {
    pub fn new(candidates: &[&'a str]) -> Self {
        let mut folded = HashMap::with_capacity(candidates.len());
        for c in candidates {
            folded.entry(fold(c)).or_insert(*c);
        }
        Suggester {
            folded,
            candidates: candidates.iter().map(|c| (*c, c.chars().count())).collect(),
            answers: HashMap::new(),
            budget: SUGGESTER_BUDGET,
        }
    }

    /// Like [`did_you_mean`] over the candidates given to [`Suggester::new`].
    pub fn did_you_mean(&mut self, word: &str) -> Option<String> {
        if let Some(answer) = self.answers.get(word) {
            return answer.map(suggestion);
        }
        let answer = match self.folded.get(&fold(word)) {
            Some(same) => Some(*same),
            None => nearest(word, self.candidates.iter().copied(), &mut self.budget),
        };
        self.answers.insert(word.to_owned(), answer);
        answer.map(suggestion)
    }
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
    fn closest_skips_candidates_whose_length_rules_them_out() {
        let huge = "a".repeat(10 << 20);
        assert_eq!(closest(&huge, &["a", "aa"]), None);
        assert_eq!(closest("abcd", &["abcdefg", "abcdef"]), Some("abcdef"));
    }

    #[test]
    fn closest_prefers_the_first_nearest() {
        assert_eq!(closest("abcd", &["abxy", "abcx", "abcy"]), Some("abcx"));
    }

    #[test]
    fn a_suggester_agrees_with_closest() {
        let names = ["jobs", "results", "jobs_dead", "Mixed-Case"];
        let mut s = Suggester::new(&names);
        for word in ["jbos", "result", "jobs_deda", "mixed_case", "zzz", "jbos"] {
            assert_eq!(s.did_you_mean(word), did_you_mean(word, &names), "{word}");
        }
    }

    /// Regression: suggestions for every undefined name among tens of
    /// thousands made `drover check` quadratic. Past its budget a suggester
    /// still answers folded matches, and gives up on the rest.
    #[test]
    fn a_suggester_stops_scanning_when_its_budget_is_spent() {
        let names: Vec<String> = (0..40_000).map(|i| format!("queue{i:06}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut s = Suggester::new(&refs);
        assert_eq!(
            s.did_you_mean("queue00001x").as_deref(),
            Some("did you mean `queue000010`?")
        );
        // Not enough left to reach `queue039990` (121 cells per candidate).
        s.budget = 39_000 * 121;
        assert_eq!(s.did_you_mean("queue03999x"), None, "budget spent");
        assert_eq!(
            s.did_you_mean("QUEUE000002").as_deref(),
            Some("did you mean `queue000002`?")
        );
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
