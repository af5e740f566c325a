//! `${NAME}` in a group's `command` arguments: expanded per child from its
//! final environment. `$$` is a literal `$`; a `$` followed by anything
//! else stays as it is.

/// Why an argument cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// `${` without a closing `}`, at this byte offset of the argument.
    Unclosed(usize),
    /// `${NAME}` whose NAME is not a variable name (offset, name).
    BadName(usize, String),
    /// `${NAME}` with NAME not set (offset, name).
    Unknown(usize, String),
}

/// Whether `arg` holds a `${` or `$$` that [`expand`] would rewrite.
pub fn needs_expansion(arg: &[u8]) -> bool {
    arg.windows(2)
        .any(|w| w[0] == b'$' && (w[1] == b'{' || w[1] == b'$'))
}

/// `arg` with every `${NAME}` replaced by `lookup(NAME)` and `$$` by `$`.
pub fn expand<'a>(
    arg: &[u8],
    lookup: impl Fn(&[u8]) -> Option<&'a [u8]>,
) -> Result<Vec<u8>, ExpandError> {
    let mut out = Vec::with_capacity(arg.len());
    let mut i = 0;
    while i < arg.len() {
        let b = arg[i];
        if b != b'$' {
            out.push(b);
            i += 1;
            continue;
        }
        match arg.get(i + 1) {
            Some(b'$') => {
                out.push(b'$');
                i += 2;
            }
            Some(b'{') => {
                let body = &arg[i + 2..];
                let end = body
                    .iter()
                    .position(|c| *c == b'}')
                    .ok_or(ExpandError::Unclosed(i))?;
                let name = &body[..end];
                let shown = || String::from_utf8_lossy(name).into_owned();
                if !is_name(name) {
                    return Err(ExpandError::BadName(i, shown()));
                }
                let value = lookup(name).ok_or_else(|| ExpandError::Unknown(i, shown()))?;
                out.extend_from_slice(value);
                i += 2 + end + 1;
            }
            _ => {
                out.push(b'$');
                i += 1;
            }
        }
    }
    Ok(out)
}

/// An environment variable name as `${NAME}` takes it: letters, digits and
/// `_`, not starting with a digit.
pub fn is_name(name: &[u8]) -> bool {
    name.first().is_some_and(|c| !c.is_ascii_digit())
        && name.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &[u8]) -> Option<&'static [u8]> {
        match name {
            b"PORT" => Some(b"8080"),
            b"EMPTY" => Some(b""),
            _ => None,
        }
    }

    fn ok(arg: &str) -> String {
        String::from_utf8(expand(arg.as_bytes(), env).unwrap()).unwrap()
    }

    #[test]
    fn expands_names_and_keeps_other_dollars() {
        assert_eq!(ok("--port=${PORT}"), "--port=8080");
        assert_eq!(ok("${PORT}${EMPTY}${PORT}"), "80808080");
        assert_eq!(ok("$$PORT costs $5 $"), "$PORT costs $5 $");
        assert_eq!(ok("$${PORT}"), "${PORT}");
        assert_eq!(ok("plain"), "plain");
    }

    #[test]
    fn reports_what_is_wrong_where() {
        let err = |arg: &str| expand(arg.as_bytes(), env).unwrap_err();
        assert_eq!(err("ab${PORT"), ExpandError::Unclosed(2));
        assert_eq!(err("${NOPE}"), ExpandError::Unknown(0, "NOPE".into()));
        assert_eq!(err("x${A-B}"), ExpandError::BadName(1, "A-B".into()));
        assert_eq!(err("${}"), ExpandError::BadName(0, String::new()));
        assert_eq!(err("${1A}"), ExpandError::BadName(0, "1A".into()));
    }

    #[test]
    fn knows_which_arguments_need_it() {
        assert!(needs_expansion(b"${X}"));
        assert!(needs_expansion(b"a$$"));
        assert!(!needs_expansion(b"$HOME and $5"));
        assert!(!needs_expansion(b"$"));
    }
}
