//! Secrets (API tokens, keys, passwords) as a type: never printed, compared
//! in constant time.

use std::fmt;

/// A secret value (token, key). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must send it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` equals this secret, in time independent of where
    /// they differ: both are hashed first, so even the length of the secret
    /// does not leak.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let a = ring::digest::digest(&ring::digest::SHA256, presented);
        let b = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        let diff = a
            .as_ref()
            .iter()
            .zip(b.as_ref())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        diff == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_is_exact_and_debug_hides_the_value() {
        let secret = Secret::new("s3cret");
        assert!(secret.matches(b"s3cret"));
        assert!(!secret.matches(b"s3creT"));
        assert!(!secret.matches(b""));
        assert!(!Secret::new("").matches(b"s3cret"));
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }
}
