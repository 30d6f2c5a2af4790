//! Rate limiting (governor): one keyed GCRA limiter per route class, keyed
//! by the authenticated principal, or by the client address on
//! unauthenticated routes. Refusals answer 429 with `Retry-After`; every
//! answer carries `RateLimit-Policy` and `RateLimit` headers
//! (draft-ietf-httpapi-ratelimit-headers).

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{Limit, RateLimits};
use crate::error::{ApiError, Code};
use crate::metrics::METRICS;

/// The route classes that have their own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// Writes.
    Ingest,
    /// Reads.
    Query,
    /// Registry administration.
    Admin,
    /// Unauthenticated (per client address).
    Public,
}

impl RouteClass {
    /// Lowercase name (policy name and metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Ingest => "ingest",
            RouteClass::Query => "query",
            RouteClass::Admin => "admin",
            RouteClass::Public => "public",
        }
    }
}

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

struct Class {
    limiter: Keyed,
    limit: Limit,
}

/// The limiters of all classes.
#[derive(Clone)]
pub struct Limiters(Arc<[Class; 4]>);

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiters")
    }
}

/// The headers to add to a response that passed.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// `RateLimit-Policy` value.
    pub policy: String,
    /// `RateLimit` value.
    pub state: String,
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limiters {
    /// Builds limiters from the configured limits.
    pub fn new(l: &RateLimits) -> Self {
        let mk = |limit: Limit, class: RouteClass| {
            METRICS
                .rate_limit_per_second
                .with_label_values(&[class.as_str()])
                .inc_by(u64::from(limit.per_second));
            Class {
                limiter: RateLimiter::keyed(Quota::per_second(nz(limit.per_second)).allow_burst(nz(limit.burst)))
                    .with_middleware::<StateInformationMiddleware>(),
                limit,
            }
        };
        Limiters(Arc::new([
            mk(l.ingest, RouteClass::Ingest),
            mk(l.query, RouteClass::Query),
            mk(l.admin, RouteClass::Admin),
            mk(l.public, RouteClass::Public),
        ]))
    }

    fn class(&self, c: RouteClass) -> &Class {
        &self.0[c as usize]
    }

    /// Takes one request from `key`'s allowance in `class`.
    pub fn check(&self, class: RouteClass, key: &str) -> Result<Allowed, ApiError> {
        let c = self.class(class);
        let window = c.limit.burst.div_ceil(c.limit.per_second.max(1)).max(1);
        let policy = format!("\"{}\";q={};w={}", class.as_str(), c.limit.burst, window);
        match c.limiter.check_key(&key.to_string()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(Allowed {
                    state: format!("\"{}\";r={};t=0", class.as_str(), remaining),
                    policy,
                })
            }
            Err(not_until) => {
                METRICS.rate_limited.with_label_values(&[class.as_str()]).inc();
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut e = ApiError::new(
                    Code::RateLimited,
                    format!("rate limit of the {} class exceeded; retry in {secs} s", class.as_str()),
                );
                e.retry_after = Some(secs.max(1));
                Err(e)
            }
        }
    }

    /// Drops state of keys that have been quiet (call periodically).
    pub fn retain_recent(&self) {
        for c in self.0.iter() {
            c.limiter.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let l = Limiters::new(&RateLimits {
            ingest: Limit {
                per_second: 1,
                burst: 3,
            },
            ..RateLimits::default()
        });
        for _ in 0..3 {
            l.check(RouteClass::Ingest, "a").unwrap();
        }
        let e = l.check(RouteClass::Ingest, "a").unwrap_err();
        assert_eq!(e.code, Code::RateLimited);
        assert_eq!(e.retry_after, Some(1));
        // Another principal has its own allowance; another class too.
        l.check(RouteClass::Ingest, "b").unwrap();
        l.check(RouteClass::Query, "a").unwrap();
    }
}
