//! Object storage against a real S3-compatible server (s3s-fs), through the same
//! `Storage::from_url("s3://...")` and standard AWS environment a worker uses: objects
//! round-trip, a large object goes up as a multipart upload and is visible only whole, and
//! a server SIGKILLed in the middle of a multipart upload leaves nothing half-visible; the
//! upload then succeeds once the server is back.

use bytes::Bytes;
use std::time::Duration;
use surgery_e2e::{Deadline, S3Server};
use surgery_worker::storage::{MIN_PART_SIZE, Storage};

/// Deterministic bytes, different for each `seed`.
fn payload(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_multipart_uploads_and_a_server_killed_mid_upload() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = S3Server::start(&dir.path().join("s3")).unwrap();
    for (key, value) in server.env() {
        // SAFETY: this test binary runs this one test; nothing reads the environment concurrently.
        unsafe { std::env::set_var(key, value) };
    }
    let storage = Storage::from_url(&server.url("jobs"))
        .unwrap()
        .with_part_size(MIN_PART_SIZE);

    // Small objects, listing, deleting.
    storage
        .put("a/small.json", Bytes::from_static(b"{\"ok\": true}"))
        .await
        .unwrap();
    assert_eq!(
        storage.get("a/small.json").await.unwrap(),
        Bytes::from_static(b"{\"ok\": true}")
    );
    assert_eq!(storage.list("a").await.unwrap(), ["a/small.json"]);
    assert!(storage.get_opt("a/missing").await.unwrap().is_none());

    // 12 MiB with 5 MiB parts: a multipart upload, read back whole.
    let big = payload(12 << 20, 1);
    storage.put("a/big.bin", big.clone()).await.unwrap();
    assert_eq!(storage.get("a/big.bin").await.unwrap(), big);
    assert_eq!(
        std::fs::metadata(server.object_path("jobs/a/big.bin")).unwrap().len(),
        12 << 20,
        "the server holds one whole object"
    );
    storage.delete("a/big.bin").await.unwrap();
    assert!(storage.get_opt("a/big.bin").await.unwrap().is_none());

    // SIGKILL the server once the first part of a 200 MiB upload has landed.
    let huge = payload(200 << 20, 2);
    let upload = {
        let (storage, huge) = (storage.clone(), huge.clone());
        tokio::spawn(async move { storage.put("b/huge.bin", huge).await })
    };
    let deadline = Deadline::patient("the first part of the multipart upload");
    loop {
        let parts = std::fs::read_dir(&server.root)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".part-"))
            .count();
        if parts > 0 {
            break;
        }
        assert!(!upload.is_finished(), "the upload finished before a part was seen");
        deadline.check(|| "no part yet".into()).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let failed = upload.await.unwrap();
    assert!(failed.is_err(), "an upload to a dead server fails");
    server.restart().unwrap();
    assert!(
        storage.get_opt("b/huge.bin").await.unwrap().is_none(),
        "nothing of the interrupted upload is visible"
    );
    assert!(storage.list("b").await.unwrap().is_empty());
    assert!(!server.object_path("jobs/b/huge.bin").exists());

    // Back up: the same upload goes through whole.
    storage.put("b/huge.bin", huge.clone()).await.unwrap();
    assert_eq!(storage.get("b/huge.bin").await.unwrap(), huge);
}
