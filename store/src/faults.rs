//! An object store that misbehaves on purpose, for tests of everything above it: every
//! call may be slowed, may fail, and a write may be **torn** (a truncated object is left
//! behind and the call fails, as a crash mid-write leaves it on a store without atomic
//! puts). Decisions are drawn from a seeded generator, so a failing run can be replayed.
//!
//! Turned on for a whole process by `SURGERY_STORE_FAULTS` (read by
//! [`Storage::from_url`](crate::Storage::from_url)), e.g.
//! `seed=7,errors=0.02,torn=0.02,latency=2ms`: each call fails with probability `errors`,
//! each put is torn with probability `torn`, and each call first waits up to `latency`.
//! Never set it in production.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, UploadPart,
};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The environment variable that turns faults on.
pub const FAULTS_ENV: &str = "SURGERY_STORE_FAULTS";

/// What to inject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultPlan {
    pub seed: u64,
    /// Probability that a call fails (before reaching the store).
    pub errors: f64,
    /// Probability that a put is torn: a truncated object is written, then the put fails.
    pub torn: f64,
    /// Each call waits a uniform time up to this first.
    pub latency: Duration,
}

impl FaultPlan {
    /// Parses `seed=7,errors=0.02,torn=0.01,latency=5ms` (every key optional).
    pub fn parse(text: &str) -> Result<FaultPlan, String> {
        let mut plan = FaultPlan {
            seed: 0,
            errors: 0.0,
            torn: 0.0,
            latency: Duration::ZERO,
        };
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{FAULTS_ENV}: `{item}` is not key=value"))?;
            let probability = |v: &str| -> Result<f64, String> {
                v.parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| format!("{FAULTS_ENV}: {key}={v} is not a probability in [0, 1]"))
            };
            match key {
                "seed" => plan.seed = value.parse().map_err(|e| format!("{FAULTS_ENV}: seed={value}: {e}"))?,
                "errors" => plan.errors = probability(value)?,
                "torn" => plan.torn = probability(value)?,
                "latency" => {
                    let ms = value
                        .strip_suffix("ms")
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| format!("{FAULTS_ENV}: latency={value} is not like 5ms"))?;
                    plan.latency = Duration::from_millis(ms);
                }
                other => {
                    return Err(format!(
                        "{FAULTS_ENV}: unknown key `{other}` (seed, errors, torn, latency)"
                    ));
                }
            }
        }
        Ok(plan)
    }
}

/// SplitMix64: small, seedable, good enough to pick faults.
struct Rng(AtomicU64);

impl Rng {
    fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The wrapper. Counts what it injected, for tests to check faults really happened.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: FaultPlan,
    rng: Arc<Rng>,
    pub injected: Arc<Mutex<FaultCounts>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounts {
    pub errors: u64,
    pub torn: u64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, plan: FaultPlan) -> FaultyStore {
        FaultyStore {
            inner,
            rng: Arc::new(Rng(AtomicU64::new(plan.seed))),
            plan,
            injected: Arc::new(Mutex::new(FaultCounts::default())),
        }
    }

    async fn delay(&self) {
        if !self.plan.latency.is_zero() {
            tokio::time::sleep(self.plan.latency.mul_f64(self.rng.unit())).await;
        }
    }

    /// A failure for `op` at `location`, with probability `errors`.
    fn maybe_fail(&self, op: &str, location: &Path) -> object_store::Result<()> {
        if self.rng.unit() < self.plan.errors {
            self.injected.lock().expect("counts").errors += 1;
            return Err(injected(op, location));
        }
        Ok(())
    }
}

fn injected(op: &str, location: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "faults",
        source: format!("injected fault: {op} {location}").into(),
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore").field("plan", &self.plan).finish()
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.delay().await;
        self.maybe_fail("put", location)?;
        if self.rng.unit() < self.plan.torn {
            self.injected.lock().expect("counts").torn += 1;
            let bytes = Bytes::from(payload);
            let cut = bytes.slice(..bytes.len() / 2);
            self.inner.put_opts(location, cut.into(), opts).await?;
            return Err(injected("torn put", location));
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.delay().await;
        self.maybe_fail("put_multipart", location)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            location: location.clone(),
            fail_part: self.rng.unit() < self.plan.errors,
            injected: self.injected.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.delay().await;
        self.maybe_fail("get", location)?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let fail = self.rng.unit() < self.plan.errors;
        if fail {
            self.injected.lock().expect("counts").errors += 1;
            let location = prefix.cloned().unwrap_or_default();
            return futures::stream::once(async move { Err(injected("list", &location)) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.delay().await;
        self.maybe_fail("list", &prefix.cloned().unwrap_or_default())?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.delay().await;
        self.maybe_fail("copy", to)?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// A multipart upload that fails its completion when the store decided so: the parts are
/// uploaded, the object never appears (what S3 does for an upload never completed).
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    fail_part: bool,
    injected: Arc<Mutex<FaultCounts>>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if self.fail_part {
            self.injected.lock().expect("counts").errors += 1;
            let _ = self.inner.abort().await;
            return Err(injected("complete multipart", &self.location));
        }
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[test]
    fn plans_parse_and_bad_ones_are_named() {
        let plan = FaultPlan::parse("seed=7, errors=0.25,torn=0.5,latency=3ms").unwrap();
        assert_eq!(
            plan,
            FaultPlan {
                seed: 7,
                errors: 0.25,
                torn: 0.5,
                latency: Duration::from_millis(3)
            }
        );
        assert!(
            FaultPlan::parse("errors=2")
                .unwrap_err()
                .contains("errors=2 is not a probability")
        );
        assert!(
            FaultPlan::parse("sometimes")
                .unwrap_err()
                .contains("`sometimes` is not key=value")
        );
        assert!(FaultPlan::parse("latency=5s").unwrap_err().contains("is not like 5ms"));
        assert!(FaultPlan::parse("flaky=1").unwrap_err().contains("unknown key `flaky`"));
    }

    #[tokio::test]
    async fn torn_puts_leave_half_an_object_and_fail() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let plan = FaultPlan {
            seed: 1,
            errors: 0.0,
            torn: 1.0,
            latency: Duration::ZERO,
        };
        let faulty = FaultyStore::new(inner.clone(), plan);
        let path = Path::from("a/b");
        let err = faulty
            .put(&path, PutPayload::from_static(b"0123456789"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("injected fault: torn put a/b"), "{err}");
        let left = inner.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&left[..], b"01234", "half the object is there");
        assert_eq!(faulty.injected.lock().unwrap().torn, 1);
    }

    #[tokio::test]
    async fn the_same_seed_fails_the_same_calls() {
        let run = |seed| async move {
            let faulty = FaultyStore::new(
                Arc::new(InMemory::new()),
                FaultPlan {
                    seed,
                    errors: 0.5,
                    torn: 0.0,
                    latency: Duration::ZERO,
                },
            );
            let mut outcomes = Vec::new();
            for i in 0..32 {
                let path = Path::from(format!("k{i}"));
                outcomes.push(faulty.put(&path, PutPayload::from_static(b"x")).await.is_ok());
            }
            outcomes
        };
        assert_eq!(run(3).await, run(3).await);
        assert_ne!(run(3).await, run(4).await);
        assert!(run(3).await.iter().any(|ok| !ok) && run(3).await.iter().any(|ok| *ok));
    }
}
