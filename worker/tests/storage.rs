//! Storage and checkpoints against real stores (a local folder, memory) and wrapped stores
//! that block, fail or count requests.
//!
//! The tests run on plain threads with their own multi-thread tokio runtime, the way the
//! synchronous training loops use `Checkpointer`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use serde_json::json;
use surgery_core::layout;
use surgery_worker::storage::{
    CheckpointError, Checkpointer, DEFAULT_PART_SIZE, MANIFEST_FILE, Storage, StorageError, from_bytes, to_bytes,
};
use tch::{Device, Kind, Tensor};
use tokio::runtime::Runtime;
use tokio::sync::watch;

const DIR: &str = "jobs/j1/distill/block-03/rate-4";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A deterministic payload that differs per `seed`.
fn payload(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

/// Wraps a store: puts can be held at a gate or made to fail; puts and multipart uploads
/// are counted.
#[derive(Debug)]
struct TestStore {
    inner: Arc<dyn ObjectStore>,
    open: watch::Sender<bool>,
    fail_puts: AtomicBool,
    puts: AtomicUsize,
    multiparts: AtomicUsize,
}

impl TestStore {
    fn new(inner: Arc<dyn ObjectStore>) -> Arc<TestStore> {
        Arc::new(TestStore {
            inner,
            open: watch::channel(true).0,
            fail_puts: AtomicBool::new(false),
            puts: AtomicUsize::new(0),
            multiparts: AtomicUsize::new(0),
        })
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    async fn before_put(&self, location: &Path) -> object_store::Result<()> {
        self.open.subscribe().wait_for(|open| *open).await.unwrap();
        if self.fail_puts.load(Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "TestStore",
                source: format!("injected failure writing {location}").into(),
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for TestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for TestStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.before_put(location).await?;
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.before_put(location).await?;
        self.multiparts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A memory store behind a [`TestStore`], rooted at `root`.
fn wrapped_memory(root: &str) -> (Storage, Arc<TestStore>) {
    let test = TestStore::new(Arc::new(InMemory::new()));
    (Storage::new(test.clone(), "memory://test").join(root), test)
}

// ---------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------

/// put / get / get_opt / list / delete / delete_prefix on one store.
fn basic_operations(storage: &Storage) {
    let rt = runtime();
    rt.block_on(async {
        let job = storage.join("jobs/j1");
        let shard = format!("jobs/j1/{}", layout::cache_shard(3, 0));
        job.put("cache/block-03/shard-0001.safetensors", payload(10, 1))
            .await
            .unwrap();
        storage.put(&shard, payload(100, 2)).await.unwrap();
        storage
            .put("jobs/j1/spec.yaml", Bytes::from_static(b"spec"))
            .await
            .unwrap();
        storage
            .put("jobs/j10/spec.yaml", Bytes::from_static(b"other"))
            .await
            .unwrap();

        assert_eq!(storage.get(&shard).await.unwrap(), payload(100, 2));
        assert_eq!(
            job.get("cache/block-03/shard-0000.safetensors").await.unwrap(),
            payload(100, 2)
        );
        assert_eq!(storage.get_opt("jobs/j1/nothing").await.unwrap(), None);
        let err = storage.get("jobs/j1/nothing").await.unwrap_err();
        assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("jobs/j1/nothing"), "{err}");

        // Relative to the storage's root, sorted; prefixes match whole segments (not j10).
        assert_eq!(
            storage.list("jobs/j1").await.unwrap(),
            vec![
                "jobs/j1/cache/block-03/shard-0000.safetensors",
                "jobs/j1/cache/block-03/shard-0001.safetensors",
                "jobs/j1/spec.yaml",
            ]
        );
        assert_eq!(
            job.list("cache").await.unwrap(),
            vec![
                "cache/block-03/shard-0000.safetensors",
                "cache/block-03/shard-0001.safetensors"
            ]
        );
        assert_eq!(storage.list("").await.unwrap().len(), 4);
        assert!(storage.list("jobs/none").await.unwrap().is_empty());
        // Sizes too; a prefix names a folder, so an object's own path lists nothing.
        assert_eq!(
            storage.list_sizes("jobs/j10").await.unwrap(),
            vec![("jobs/j10/spec.yaml".to_string(), 5)]
        );
        assert!(storage.list("jobs/j1/spec.yaml").await.unwrap().is_empty());
        assert_eq!(storage.size_opt(&shard).await.unwrap(), Some(100));
        assert_eq!(storage.size_opt("jobs/j1/nothing").await.unwrap(), None);

        // Overwrite replaces.
        storage.put(&shard, payload(7, 9)).await.unwrap();
        assert_eq!(storage.get(&shard).await.unwrap(), payload(7, 9));

        storage.delete("jobs/j1/spec.yaml").await.unwrap();
        storage.delete("jobs/j1/spec.yaml").await.unwrap(); // missing: still fine
        assert_eq!(storage.get_opt("jobs/j1/spec.yaml").await.unwrap(), None);
        assert_eq!(job.delete_prefix("cache").await.unwrap(), 2);
        assert!(storage.list("jobs/j1").await.unwrap().is_empty());
        assert_eq!(storage.list("").await.unwrap(), vec!["jobs/j10/spec.yaml"]);
    });
}

#[test]
fn local_store_basic_operations() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}/store", tmp.path().display());
    let storage = Storage::from_url(&url).unwrap();
    basic_operations(&storage);
    // Objects are plain files under the folder.
    let rt = runtime();
    rt.block_on(storage.put("a/b.bin", payload(5, 0))).unwrap();
    assert_eq!(std::fs::read(tmp.path().join("store/a/b.bin")).unwrap(), payload(5, 0));
    // A local store knows its folder, so local models are read in place.
    let folder = tmp.path().canonicalize().unwrap().join("store");
    assert_eq!(storage.local_root(), Some(folder.clone()));
    assert_eq!(storage.join("a").local_root(), Some(folder.join("a")));
    assert_eq!(Storage::from_url("memory://").unwrap().local_root(), None);
}

#[test]
fn memory_store_basic_operations() {
    basic_operations(&Storage::from_url("memory://").unwrap());
    basic_operations(&Storage::from_url("memory://some/root").unwrap());
}

#[test]
fn relative_file_urls_resolve_against_the_current_directory() {
    // Build a relative path to a temporary folder without changing the process's current
    // directory (other tests run in parallel).
    let tmp = tempfile::tempdir().unwrap();
    let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
    let target = tmp.path().canonicalize().unwrap().join("rel/store");
    let mut rel = PathBuf::new();
    for _ in cwd.components().skip(1) {
        rel.push("..");
    }
    rel.push(target.strip_prefix("/").unwrap());
    let storage = Storage::from_url(&format!("file://{}", rel.display())).unwrap();
    assert!(target.is_dir());
    assert_eq!(storage.url(), format!("file://{}", target.display()));
    let plain = Storage::from_url(rel.to_str().unwrap()).unwrap();
    assert_eq!(plain.url(), storage.url());
}

#[test]
fn unusable_urls_are_typed_errors_that_say_what_to_do() {
    let err = Storage::from_url("file:///proc/surgery/cannot-create").unwrap_err();
    assert!(matches!(err, StorageError::CreateRoot { .. }), "{err}");
    assert!(err.to_string().contains("writable"), "{err}");
    let err = Storage::from_url("ftp://host/x").unwrap_err();
    assert!(matches!(err, StorageError::UnsupportedUrl { .. }), "{err}");
    if std::env::vars().all(|(k, _)| !k.starts_with("AZURE_")) {
        // No account configured: the builder fails and the error names the variables.
        let err = Storage::from_url("az://container/prefix").unwrap_err();
        assert!(matches!(err, StorageError::Open { .. }), "{err}");
        assert!(err.to_string().contains("AZURE_STORAGE_ACCOUNT_NAME"), "{err}");
    }
    // S3 and GCS clients build offline; credentials are used by the first request.
    assert_eq!(Storage::from_url("s3://bucket/a/b").unwrap().url(), "s3://bucket/a/b");
    assert_eq!(
        Storage::from_url("gs://bucket/a").unwrap().join("jobs/j1").url(),
        "gs://bucket/a/jobs/j1"
    );
}

#[test]
fn large_payloads_upload_multipart() {
    let big = payload(2 * DEFAULT_PART_SIZE + 12345, 3);
    let small = payload(1000, 4);

    // Counting wrapper over memory: one multipart upload for the big object only.
    let (storage, test) = wrapped_memory("root");
    let rt = runtime();
    rt.block_on(async {
        storage.put("big.bin", big.clone()).await.unwrap();
        storage.put("small.bin", small.clone()).await.unwrap();
        assert_eq!(storage.get("big.bin").await.unwrap(), big);
        assert_eq!(storage.get("small.bin").await.unwrap(), small);
    });
    assert_eq!(test.multiparts.load(Ordering::SeqCst), 1);
    assert_eq!(test.puts.load(Ordering::SeqCst), 1);

    // A real local folder: the parts land in one file.
    let tmp = tempfile::tempdir().unwrap();
    let storage = Storage::from_url(tmp.path().to_str().unwrap()).unwrap();
    rt.block_on(storage.put("x/big.bin", big.clone())).unwrap();
    assert_eq!(std::fs::read(tmp.path().join("x/big.bin")).unwrap(), big);
    assert_eq!(rt.block_on(storage.list("x")).unwrap(), vec!["x/big.bin"]);

    // A failing multipart upload leaves no object behind.
    let (storage, test) = wrapped_memory("");
    test.fail_puts.store(true, Ordering::SeqCst);
    let err = rt.block_on(storage.put("big.bin", big)).unwrap_err();
    assert!(matches!(err, StorageError::Store { .. }), "{err}");
    assert!(err.to_string().contains("memory://test/big.bin"), "{err}");
    assert!(rt.block_on(storage.list("")).unwrap().is_empty());
}

#[test]
fn download_dir_copies_a_prefix_and_skips_files_it_has() {
    let rt = runtime();
    let store_dir = tempfile::tempdir().unwrap();
    for storage in [
        Storage::from_url("memory://r").unwrap(),
        Storage::from_url(store_dir.path().to_str().unwrap()).unwrap(),
    ] {
        let big = payload(DEFAULT_PART_SIZE + 1, 5);
        rt.block_on(async {
            storage
                .put("models/teacher/config.json", Bytes::from_static(b"{}"))
                .await
                .unwrap();
            storage
                .put("models/teacher/transformer/part-1.bin", big.clone())
                .await
                .unwrap();
            storage.put("models/teacherish/other.bin", payload(3, 0)).await.unwrap();
        });
        let local = tempfile::tempdir().unwrap();
        let dest = local.path().join("teacher");
        let summary = rt.block_on(storage.download_dir("models/teacher", &dest)).unwrap();
        assert_eq!((summary.downloaded, summary.skipped), (2, 0));
        assert_eq!(summary.bytes, 2 + big.len() as u64);
        assert_eq!(std::fs::read(dest.join("config.json")).unwrap(), b"{}");
        assert_eq!(std::fs::read(dest.join("transformer/part-1.bin")).unwrap(), big);
        assert!(!dest.join("other.bin").exists() && !dest.join("transformer/part-1.bin.part").exists());

        // Second run: a cache hit for both.
        let summary = rt.block_on(storage.download_dir("models/teacher/", &dest)).unwrap();
        assert_eq!((summary.downloaded, summary.skipped), (0, 2));

        // A local file of the wrong size (an interrupted copy) is fetched again.
        std::fs::write(dest.join("config.json"), b"{ truncated").unwrap();
        let summary = rt.block_on(storage.download_dir("models/teacher", &dest)).unwrap();
        assert_eq!((summary.downloaded, summary.skipped), (1, 1));
        assert_eq!(std::fs::read(dest.join("config.json")).unwrap(), b"{}");

        let err = rt.block_on(storage.download_dir("models/missing", &dest)).unwrap_err();
        assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    }
}

// ---------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------

fn files(step: u64) -> Vec<(String, Bytes)> {
    vec![
        (
            "model.safetensors".to_string(),
            payload(1000 + step as usize, step as u8),
        ),
        ("optim/adamw.safetensors".to_string(), payload(500, step as u8 ^ 0x5a)),
    ]
}

fn step_file(step: u64, name: &str) -> String {
    format!("{}/{name}", layout::checkpoint_dir(DIR, step))
}

fn assert_restored(ck: &Checkpointer, step: u64) -> surgery_worker::storage::Restored {
    let restored = ck.latest().unwrap().expect("a checkpoint");
    assert_eq!(restored.step, step, "skipped: {:?}", restored.skipped);
    assert_eq!(restored.meta, json!({ "step": step, "loss": 0.5 }));
    let expected: Vec<(String, Bytes)> = files(step);
    assert_eq!(restored.files.len(), expected.len());
    for (name, bytes) in expected {
        assert_eq!(restored.files[&name], bytes, "{name}");
    }
    restored
}

fn save(ck: &Checkpointer, step: u64) {
    ck.save(step, files(step), json!({ "step": step, "loss": 0.5 }))
        .unwrap();
}

/// Every checkpoint behaviour that does not need a wrapped store, on one store.
fn checkpoint_lifecycle(storage: Storage) {
    let rt = runtime();
    let ck = Checkpointer::new(storage.clone(), DIR, 3, rt.handle().clone());
    assert!(ck.latest().unwrap().is_none());
    assert_eq!(ck.durable_step(), None);

    for step in [100, 200, 300] {
        save(&ck, step);
    }
    ck.wait().unwrap();
    assert_eq!(ck.durable_step(), Some(300));
    let restored = assert_restored(&ck, 300);
    assert!(restored.skipped.is_empty());

    // The manifests: the step's own, and latest.json naming the step folder.
    let latest: serde_json::Value =
        serde_json::from_slice(&rt.block_on(storage.get(&layout::latest_manifest(DIR))).unwrap()).unwrap();
    assert_eq!(latest["step"], 300);
    assert_eq!(latest["dir"], "step-0000000300");
    assert_eq!(latest["files"][0]["name"], "model.safetensors");
    assert_eq!(latest["files"][0]["size"], 1300);
    assert_eq!(latest["files"][0]["sha256"].as_str().unwrap().len(), 64);
    let manifest: serde_json::Value =
        serde_json::from_slice(&rt.block_on(storage.get(&step_file(300, MANIFEST_FILE))).unwrap()).unwrap();
    assert_eq!(manifest["files"], latest["files"]);
    assert!(manifest.get("dir").is_none());

    // Steps must increase.
    let err = ck.save(300, files(300), json!({})).unwrap_err();
    assert!(matches!(err, CheckpointError::StepNotIncreasing { .. }), "{err}");
    let err = ck
        .save(400, vec![("manifest.json".into(), Bytes::new())], json!({}))
        .unwrap_err();
    assert!(matches!(err, CheckpointError::InvalidFileName { .. }), "{err}");

    // A byte flipped in the newest checkpoint: fall back to the previous, and say why.
    let path = step_file(300, "model.safetensors");
    let mut bytes = rt.block_on(storage.get(&path)).unwrap().to_vec();
    bytes[17] ^= 0x01;
    rt.block_on(storage.put(&path, Bytes::from(bytes))).unwrap();
    let restored = assert_restored(&ck, 200);
    assert_eq!(restored.skipped.len(), 1);
    assert_eq!(restored.skipped[0].step, Some(300));
    assert!(
        restored.skipped[0].reason.contains("corrupted"),
        "{:?}",
        restored.skipped
    );

    // Truncate the previous one too: fall back twice.
    let path = step_file(200, "optim/adamw.safetensors");
    let bytes = rt.block_on(storage.get(&path)).unwrap();
    rt.block_on(storage.put(&path, bytes.slice(..bytes.len() - 1))).unwrap();
    let restored = assert_restored(&ck, 100);
    let reasons: Vec<_> = restored.skipped.iter().map(|s| (s.step, s.reason.as_str())).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[1].0, Some(200));
    assert!(reasons[1].1.contains("truncated"), "{reasons:?}");

    // A missing file is refused as well.
    rt.block_on(storage.delete(&step_file(100, "model.safetensors")))
        .unwrap();
    assert!(ck.latest().unwrap().is_none(), "no intact checkpoint is left");
}

#[test]
fn local_checkpoint_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    checkpoint_lifecycle(Storage::from_url(tmp.path().to_str().unwrap()).unwrap().join("root"));
}

#[test]
fn memory_checkpoint_lifecycle() {
    checkpoint_lifecycle(Storage::from_url("memory://").unwrap());
}

#[test]
fn corruption_on_disk_is_caught() {
    // Damage the files the way a disk or a killed copy would, behind the store's back.
    let tmp = tempfile::tempdir().unwrap();
    let storage = Storage::from_url(tmp.path().to_str().unwrap()).unwrap();
    let rt = runtime();
    let ck = Checkpointer::new(storage, DIR, 5, rt.handle().clone());
    for step in [1, 2, 3] {
        save(&ck, step);
    }
    ck.wait().unwrap();
    let on_disk = |step: u64, name: &str| tmp.path().join(step_file(step, name));

    let path = on_disk(3, "optim/adamw.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0x80;
    std::fs::write(&path, bytes).unwrap();
    let restored = assert_restored(&ck, 2);
    assert!(
        restored.skipped[0].reason.contains("corrupted"),
        "{:?}",
        restored.skipped
    );

    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(on_disk(2, "model.safetensors"))
        .unwrap();
    file.set_len(10).unwrap();
    drop(file);
    let restored = assert_restored(&ck, 1);
    assert!(
        restored.skipped[1].reason.contains("truncated"),
        "{:?}",
        restored.skipped
    );
}

#[test]
fn a_step_without_its_manifest_is_invisible() {
    let rt = runtime();
    let storage = Storage::from_url("memory://").unwrap();
    let ck = Checkpointer::new(storage.clone(), DIR, 5, rt.handle().clone());
    save(&ck, 10);
    save(&ck, 20);
    ck.wait().unwrap();
    assert_eq!(ck.complete_steps().unwrap(), vec![20, 10]);

    // A crash after the files but before the manifest: the files are all there, yet the
    // step is not a checkpoint.
    rt.block_on(storage.delete(&step_file(20, MANIFEST_FILE))).unwrap();
    assert_eq!(ck.complete_steps().unwrap(), vec![10]);
    let restored = assert_restored(&ck, 10);
    assert!(
        restored.skipped[0].reason.contains("manifest.json"),
        "{:?}",
        restored.skipped
    );

    // The same crash where latest.json still names the previous step: no warning needed.
    rt.block_on(storage.put(
        &layout::latest_manifest(DIR),
        rt.block_on(storage.get(&step_file(10, MANIFEST_FILE))).unwrap(),
    ))
    .unwrap();
    let restored = assert_restored(&ck, 10);
    assert!(restored.skipped.is_empty(), "{:?}", restored.skipped);
}

#[test]
fn latest_json_missing_corrupt_or_dangling_falls_back_to_scanning() {
    let rt = runtime();
    let storage = Storage::from_url("memory://").unwrap();
    let ck = Checkpointer::new(storage.clone(), DIR, 5, rt.handle().clone());
    for step in [1, 2, 3] {
        save(&ck, step);
    }
    ck.wait().unwrap();
    let latest = layout::latest_manifest(DIR);

    // Missing: the newest complete step folder.
    rt.block_on(storage.delete(&latest)).unwrap();
    let restored = assert_restored(&ck, 3);
    assert!(restored.skipped.is_empty());

    // Corrupt: same, and the reason is reported.
    rt.block_on(storage.put(&latest, Bytes::from_static(b"{\"step\": 3, \"fi")))
        .unwrap();
    let restored = assert_restored(&ck, 3);
    assert_eq!(restored.skipped[0].step, None);
    assert!(
        restored.skipped[0].reason.contains("latest.json"),
        "{:?}",
        restored.skipped
    );

    // Pointing at a step folder that does not exist: scan older steps.
    let mut dangling: serde_json::Value =
        serde_json::from_slice(&rt.block_on(storage.get(&step_file(3, MANIFEST_FILE))).unwrap()).unwrap();
    dangling["step"] = json!(999);
    dangling["dir"] = json!("step-0000000999");
    rt.block_on(storage.put(&latest, Bytes::from(serde_json::to_vec(&dangling).unwrap())))
        .unwrap();
    let restored = assert_restored(&ck, 3);
    assert_eq!(restored.skipped[0].step, Some(999));

    // A step whose own manifest is damaged is refused too.
    rt.block_on(storage.put(
        &step_file(3, MANIFEST_FILE),
        Bytes::from_static(b"{\"format\": 1, \"st"),
    ))
    .unwrap();
    let restored = assert_restored(&ck, 2);
    assert_eq!(restored.skipped.last().unwrap().step, Some(3));
    assert!(
        restored.skipped.last().unwrap().reason.contains("unreadable"),
        "{:?}",
        restored.skipped
    );
}

#[test]
fn retention_keeps_the_newest_complete_checkpoints() {
    let rt = runtime();
    let storage = Storage::from_url("memory://").unwrap();
    let ck = Checkpointer::new(storage.clone(), DIR, 2, rt.handle().clone());
    let steps_present = || -> Vec<String> {
        let mut dirs: Vec<String> = rt
            .block_on(storage.list(DIR))
            .unwrap()
            .into_iter()
            .filter_map(|p| {
                p.strip_prefix(&format!("{DIR}/"))
                    .map(|r| r.split('/').next().unwrap().to_string())
            })
            .collect();
        dirs.dedup();
        dirs
    };
    // Leftovers of crashed saves: one older than what we will save, one far newer.
    rt.block_on(storage.put(&step_file(15, "model.safetensors"), payload(10, 0)))
        .unwrap();
    rt.block_on(storage.put(&step_file(999, "model.safetensors"), payload(10, 0)))
        .unwrap();

    save(&ck, 10);
    save(&ck, 20);
    ck.wait().unwrap();
    // Incomplete folders do not count toward keep_last: both complete ones stay; the
    // crashed 15 (older than the newest complete) is gone; 999 may be a save in progress.
    assert_eq!(ck.complete_steps().unwrap(), vec![20, 10]);
    assert_eq!(
        steps_present(),
        vec!["latest.json", "step-0000000010", "step-0000000020", "step-0000000999"]
    );

    save(&ck, 30);
    save(&ck, 40);
    ck.wait().unwrap();
    assert_eq!(ck.complete_steps().unwrap(), vec![40, 30]);
    assert_eq!(
        steps_present(),
        vec!["latest.json", "step-0000000030", "step-0000000040", "step-0000000999"]
    );
    assert_restored(&ck, 40);

    // A local folder: deleted checkpoints leave no empty step folders behind.
    let tmp = tempfile::tempdir().unwrap();
    let local = Storage::from_url(tmp.path().to_str().unwrap()).unwrap();
    let ck = Checkpointer::new(local, DIR, 1, rt.handle().clone());
    save(&ck, 1);
    save(&ck, 2);
    ck.wait().unwrap();
    let mut entries: Vec<String> = std::fs::read_dir(tmp.path().join(DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(entries, vec!["latest.json", "step-0000000002"]);
}

#[test]
fn save_returns_before_the_upload_and_applies_backpressure() {
    let rt = runtime();
    let (storage, test) = wrapped_memory("");
    let ck = Arc::new(Checkpointer::new(storage.clone(), DIR, 5, rt.handle().clone()));
    let manifest_exists = |step: u64| {
        rt.block_on(storage.get_opt(&step_file(step, MANIFEST_FILE)))
            .unwrap()
            .is_some()
    };

    test.set_open(false);
    save(&ck, 1);
    // save returned while every put is held: nothing is stored yet, nothing is visible.
    assert!(!manifest_exists(1));
    assert!(ck.latest().unwrap().is_none());
    assert_eq!(ck.durable_step(), None);

    // A second save while the first is still uploading waits for it (backpressure).
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let saver = {
        let ck = Arc::clone(&ck);
        std::thread::spawn(move || {
            save(&ck, 2);
            done_tx.send(()).unwrap();
        })
    };
    assert!(
        done_rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the second save must wait for the first upload"
    );

    test.set_open(true);
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the second save proceeds");
    saver.join().unwrap();
    assert!(
        manifest_exists(1),
        "saves are ordered: step 1 is durable before step 2 starts"
    );
    ck.wait().unwrap();
    assert!(manifest_exists(2));
    assert_eq!(ck.durable_step(), Some(2));
    assert_restored(&ck, 2);
}

#[test]
fn a_failed_background_upload_surfaces_from_wait_and_stays_invisible() {
    let rt = runtime();
    let (storage, test) = wrapped_memory("bucket");
    let ck = Checkpointer::new(storage.clone(), DIR, 5, rt.handle().clone());
    save(&ck, 1);
    ck.wait().unwrap();

    test.fail_puts.store(true, Ordering::SeqCst);
    save(&ck, 2); // returns at once: the failure happens in the background
    let err = ck.wait().unwrap_err();
    match &err {
        CheckpointError::SaveFailed { step, url, .. } => {
            assert_eq!(*step, 2);
            assert_eq!(url, &format!("memory://test/bucket/{DIR}"));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(ck.durable_step(), Some(1));
    assert_restored(&ck, 1);
    assert!(
        rt.block_on(storage.get_opt(&step_file(2, MANIFEST_FILE)))
            .unwrap()
            .is_none()
    );

    // Sticky: the next wait and save report it, even once the store works again.
    test.fail_puts.store(false, Ordering::SeqCst);
    assert!(matches!(ck.wait(), Err(CheckpointError::SaveFailed { step: 2, .. })));
    assert!(matches!(
        ck.save(3, files(3), json!({})),
        Err(CheckpointError::SaveFailed { step: 2, .. })
    ));

    // A fresh checkpointer (the resumed task) carries on from step 1.
    let ck = Checkpointer::new(storage, DIR, 5, rt.handle().clone());
    assert_restored(&ck, 1);
    save(&ck, 2);
    ck.wait().unwrap();
    assert_restored(&ck, 2);
}

#[test]
fn a_failing_multipart_file_fails_the_save() {
    let rt = runtime();
    let (storage, test) = wrapped_memory("");
    let ck = Checkpointer::new(storage, DIR, 5, rt.handle().clone());
    test.fail_puts.store(true, Ordering::SeqCst);
    ck.save(
        7,
        vec![("big.bin".into(), payload(DEFAULT_PART_SIZE + 1, 1))],
        json!({}),
    )
    .unwrap();
    assert!(matches!(ck.wait(), Err(CheckpointError::SaveFailed { step: 7, .. })));
    assert!(ck.latest().unwrap().is_none());
}

#[test]
fn tensor_checkpoints_round_trip_through_a_local_store() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = Storage::from_url(&format!("file://{}", tmp.path().display())).unwrap();
    let rt = runtime();
    let ck = Checkpointer::new(storage, layout::FINETUNE_DIR, 2, rt.handle().clone());

    // Large enough that the weights go up multipart.
    let mut weight = Tensor::randn([5 * 1024, 1024], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let moments = Tensor::randn([64, 32], (Kind::Float, Device::Cpu)).tr();
    let step_count = Tensor::from_slice(&[1234i64]);
    let model = to_bytes(&[("blocks.0.weight", &weight)]);
    assert!(model.len() > DEFAULT_PART_SIZE);
    let optim = to_bytes(&[("m", &moments), ("t", &step_count)]);
    ck.save(
        50,
        vec![("model.safetensors".into(), model), ("optim.safetensors".into(), optim)],
        json!({"data_position": 800}),
    )
    .unwrap();
    // Training moves on and changes its tensors while the upload runs.
    let original = weight.copy();
    let _ = weight.fill_(0.0);
    ck.wait().unwrap();

    let restored = ck.latest().unwrap().unwrap();
    assert_eq!(restored.step, 50);
    assert_eq!(restored.meta["data_position"], 800);
    let model = from_bytes(&restored.files["model.safetensors"]).unwrap();
    let optim = from_bytes(&restored.files["optim.safetensors"]).unwrap();
    assert_eq!(model["blocks.0.weight"].kind(), Kind::BFloat16);
    assert!(model["blocks.0.weight"].equal(&original));
    assert!(optim["m"].equal(&moments));
    assert_eq!(optim["t"].int64_value(&[0]), 1234);
}

#[test]
fn checkpointer_works_from_many_threads() {
    // The blocking API from several plain threads: saves are serialised, steps ordered.
    let rt = runtime();
    let ck = Arc::new(Checkpointer::new(
        Storage::from_url("memory://").unwrap(),
        DIR,
        3,
        rt.handle().clone(),
    ));
    let next = Arc::new(std::sync::Mutex::new(0u64));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (ck, next) = (Arc::clone(&ck), Arc::clone(&next));
            std::thread::spawn(move || {
                for _ in 0..5 {
                    // Take the step and save under one lock so steps reach save in order.
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    save(&ck, *n);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    ck.wait().unwrap();
    assert_eq!(ck.complete_steps().unwrap(), vec![20, 19, 18]);
    assert_restored(&ck, 20);
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Checkpointer>();
    is::<Storage>();
}
