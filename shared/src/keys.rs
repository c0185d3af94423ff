//! Every Redis key and channel name, in one place, under one prefix (`REDIS_PREFIX`).
//! Tests give each run its own prefix, so they never see one another's keys or messages.

/// Builds key names under a prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Failed logins for one account (lower-cased username or email) in the current window.
    pub fn login_failures_account(&self, account: &str) -> String {
        format!("{}auth:fail:acct:{}", self.prefix, account.to_lowercase())
    }

    /// Failed logins from one client address in the current window.
    pub fn login_failures_address(&self, address: &str) -> String {
        format!("{}auth:fail:addr:{}", self.prefix, address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let k = Keys::new("t1:");
        assert_eq!(k.login_failures_account("Alice"), "t1:auth:fail:acct:alice");
        assert_eq!(
            k.login_failures_address("127.0.0.1"),
            "t1:auth:fail:addr:127.0.0.1"
        );
    }
}
