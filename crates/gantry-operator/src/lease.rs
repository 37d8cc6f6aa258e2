//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas can run and only one
//! reconciles.
//!
//! # Flow
//! Every `retry` period each replica reads the Lease. Nobody holds it → create it (a `409` means
//! another replica created it first). We hold it → renew `renewTime`. Another holds it and has not
//! renewed within `leaseDurationSeconds` → take it over. Renewals and take-overs are `PUT`s carrying
//! the `resourceVersion` read, so of two replicas racing only one wins (the other gets `409`).
//!
//! # Guarantees
//! At most one replica believes it leads at a time, provided the lease duration is longer than the
//! retry period plus clock skew. A leader that fails to renew stops leading (the operator exits).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, PostParams};

use crate::error::{status_code, Error, Result};
use crate::reconcile::Clock;

/// What to do with the Lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody has it: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Its holder let it expire: take it over.
    TakeOver,
    /// Someone else holds it.
    Follow {
        /// Its holder.
        holder: String,
    },
}

/// The pure decision from the Lease read (`None`: not found).
pub fn decide(lease: Option<&Lease>, identity: &str, now: &Time) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return match lease {
            None => Decision::Create,
            Some(_) => Decision::TakeOver,
        };
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map_or(0, |t| t.0.as_second());
    if renewed + duration < now.0.as_second() {
        Decision::TakeOver
    } else {
        Decision::Follow { holder }
    }
}

/// One replica's side of the election.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    clock: Clock,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLock")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

impl LeaseLock {
    /// A lock on Lease `name` through `api` (namespaced), held as `identity` for `duration`.
    pub fn new(
        api: Api<Lease>,
        name: &str,
        identity: &str,
        duration: Duration,
        clock: Clock,
    ) -> Self {
        Self {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            clock,
        }
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.api.resource_url(), self.name)
    }

    fn spec(&self, now: &Time, previous: Option<&LeaseSpec>, take_over: bool) -> LeaseSpec {
        let now_micro = MicroTime(now.0);
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if take_over {
                Some(now_micro.clone())
            } else {
                previous
                    .and_then(|p| p.acquire_time.clone())
                    .or(Some(now_micro.clone()))
            },
            renew_time: Some(now_micro),
            lease_transitions: Some(if take_over && previous.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// One round: acquire or renew. `Ok(true)` when this replica leads afterwards.
    ///
    /// # Errors
    /// [`Error::Api`] when the API server fails otherwise than with a lost race (`409`).
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = (self.clock)();
        let api_err = |verb| {
            let object = self.lease_ref();
            move |source| Error::Api {
                verb,
                object,
                source,
            }
        };
        let current = self.api.get_opt(&self.name).await.map_err(api_err("get"))?;
        let decision = decide(current.as_ref(), &self.identity, &now);
        let result = match (&decision, current) {
            (Decision::Follow { holder }, _) => {
                tracing::debug!(lease = %self.name, holder = %holder, "following");
                return Ok(false);
            }
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(&now, None, true)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Decision::Renew | Decision::TakeOver, Some(mut lease)) => {
                let take_over = decision == Decision::TakeOver;
                lease.spec = Some(self.spec(&now, lease.spec.as_ref(), take_over));
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            (Decision::Renew | Decision::TakeOver, None) => return Ok(false),
        };
        match result {
            Ok(_) => Ok(true),
            Err(err) if status_code(&err) == Some(409) => Ok(false),
            Err(err) => Err(api_err(if decision == Decision::Create {
                "create"
            } else {
                "replace"
            })(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn lease(holder: &str, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(at(renewed).0)),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", &at(100)), Decision::Create);
        assert_eq!(
            decide(Some(&lease("a", 90)), "a", &at(100)),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&lease("b", 90)), "a", &at(100)),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&lease("b", 90)), "a", &at(105)),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&lease("b", 90)), "a", &at(106)),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease("", 90)), "a", &at(91)),
            Decision::TakeOver
        );
    }
}
