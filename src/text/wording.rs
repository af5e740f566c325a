//! Counts in text: `1 file`, `2 files`, never `1 files`.

/// `n` followed by `one` when `n` is 1 and by `many` otherwise:
/// `plural(1, "child", "children")` is `1 child`. Both forms are spelled
/// out, so irregular nouns need no special case.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::plural;

    #[test]
    fn one_is_singular_and_everything_else_plural() {
        assert_eq!(plural(0, "file", "files"), "0 files");
        assert_eq!(plural(1, "file", "files"), "1 file");
        assert_eq!(plural(2, "child", "children"), "2 children");
    }
}
