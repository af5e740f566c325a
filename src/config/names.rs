//! Validated names of groups and queues.
//!
//! Both share one namespace, the syntax `[a-z][a-z0-9_]*` and a length of at
//! most [`MAX_NAME_LEN`] characters. A value of these types is always valid:
//! construct them with [`GroupName::new`] / [`QueueName::new`], which return
//! the reason a candidate is rejected.

use std::fmt;
use std::sync::Arc;

/// The longest group or queue name, in characters. Names end up in
/// environment variable names (`DROVER_IN_<QUEUE>`), log lines, status
/// output and file names under `state_dir`; 64 is ample for a person and
/// keeps all of those small.
pub const MAX_NAME_LEN: usize = 64;

/// Why a string is not a valid group or queue name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("a name must start with a lowercase letter a-z")]
    BadStart,
    #[error("a name may only contain lowercase letters, digits and `_` (found {0:?})")]
    BadChar(char),
    #[error("a name is at most {MAX_NAME_LEN} characters long (this one has {0})")]
    TooLong(usize),
}

fn check(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(NameError::Empty),
        Some('a'..='z') => {}
        Some(_) => return Err(NameError::BadStart),
    }
    if let Some(c) = chars.find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_')) {
        return Err(NameError::BadChar(c));
    }
    // Only ASCII is left, so bytes are characters.
    match name.len() {
        n if n > MAX_NAME_LEN => Err(NameError::TooLong(n)),
        _ => Ok(()),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        ///
        /// Cloning one is a reference count: the supervisor's indexes hold
        /// a copy per child and per deadline.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Validates `name` against `[a-z][a-z0-9_]*`.
            pub fn new(name: &str) -> Result<Self, NameError> {
                check(name).map(|()| Self(Arc::from(name)))
            }

            /// The name as written in the config.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// The name of a worker group (`[group.NAME]`).
    GroupName
);
name_type!(
    /// The name of a queue (`[queue.NAME]`).
    QueueName
);

impl QueueName {
    /// The queue name as it appears in `DROVER_IN_<QUEUE>` variables.
    pub fn env_suffix(&self) -> String {
        self.0.to_ascii_uppercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for ok in ["a", "workers", "jobs_2", "x_"] {
            assert!(GroupName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_invalid_names_with_reason() {
        assert_eq!(GroupName::new(""), Err(NameError::Empty));
        assert_eq!(GroupName::new("1abc"), Err(NameError::BadStart));
        assert_eq!(GroupName::new("_a"), Err(NameError::BadStart));
        assert_eq!(QueueName::new("Jobs"), Err(NameError::BadStart));
        assert_eq!(QueueName::new("jo-bs"), Err(NameError::BadChar('-')));
    }

    #[test]
    fn names_are_at_most_64_characters() {
        let longest = "a".repeat(MAX_NAME_LEN);
        assert!(QueueName::new(&longest).is_ok());
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(GroupName::new(&too_long), Err(NameError::TooLong(65)));
        assert_eq!(
            NameError::TooLong(65).to_string(),
            "a name is at most 64 characters long (this one has 65)"
        );
        // A bad character is the more useful report.
        let bad = format!("{too_long}-");
        assert_eq!(QueueName::new(&bad), Err(NameError::BadChar('-')));
    }
}
