//! Argon2id password hashing (OWASP parameters: 19 MiB, 2 passes, 1 lane), run on tokio's
//! blocking pool behind a semaphore: at most `ARGON2_MAX_CONCURRENCY` hashes at once, so a login
//! flood can neither starve the async workers nor take more than that many × 19 MiB of memory.
//! Callers that wait longer than the queue timeout get 503 with `Retry-After`.

use std::time::Duration;

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Algorithm, Argon2, Params, Version,
};
use shared::ApiError;
use tokio::sync::Semaphore;

/// OWASP's first recommended Argon2id configuration.
const MEMORY_KIB: u32 = 19 * 1024;
const ITERATIONS: u32 = 2;
const LANES: u32 = 1;

fn argon2() -> Result<Argon2<'static>, argon2::Error> {
    Ok(Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(MEMORY_KIB, ITERATIONS, LANES, None)?,
    ))
}

fn hash_now(password: &[u8]) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .map_err(|e| e.to_string())?
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_now(password: &[u8], hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    // Verification uses the parameters stored in the hash, so older hashes keep working.
    Argon2::default().verify_password(password, &parsed).is_ok()
}

/// Hashes and verifies passwords off the async executor, with bounded concurrency.
pub struct Passwords {
    permits: Semaphore,
    queue_timeout: Duration,
    /// A hash of a random password, verified when the user is unknown so that an unknown user
    /// and a wrong password take the same time.
    dummy_hash: String,
}

impl Passwords {
    pub fn new(max_concurrency: usize, queue_timeout: Duration) -> Result<Self, String> {
        let random: [u8; 16] = rand::random();
        Ok(Self {
            permits: Semaphore::new(max_concurrency.max(1)),
            queue_timeout,
            dummy_hash: hash_now(&random)?,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = tokio::time::timeout(self.queue_timeout, self.permits.acquire())
            .await
            .map_err(|_| {
                metrics::counter!("auth_password_queue_timeouts_total").increment(1);
                ApiError::unavailable("busy", "too many logins at once, retry shortly")
            })?
            .map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(ApiError::internal)
    }

    /// A new Argon2id hash in PHC string form.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || hash_now(password.as_bytes()))
            .await?
            .map_err(ApiError::internal)
    }

    /// Whether `password` matches `hash`. With no hash (unknown user) it verifies against a
    /// dummy hash and answers false, taking the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let matched = self
            .run(move || verify_now(password.as_bytes(), &hash))
            .await?;
        Ok(known && matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_use_owasp_parameters() {
        let p = Passwords::new(2, Duration::from_secs(5)).unwrap();
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(p
            .verify("correct horse".into(), Some(h.clone()))
            .await
            .unwrap());
        assert!(!p.verify("wrong horse".into(), Some(h)).await.unwrap());
        assert!(!p.verify("anything".into(), None).await.unwrap());
        assert!(!p
            .verify("x".into(), Some("not a hash".into()))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_answers_503_instead_of_waiting_for_ever() {
        let p = std::sync::Arc::new(Passwords::new(1, Duration::from_millis(1)).unwrap());
        let busy: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.hash("password123".into()).await })
            })
            .collect();
        let mut refused = 0;
        for b in busy {
            if let Err(e) = b.await.unwrap() {
                assert_eq!(e.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
                refused += 1;
            }
        }
        assert!(
            refused >= 1,
            "with one slot and a 1 ms queue, some hashes must be refused"
        );
    }
}
