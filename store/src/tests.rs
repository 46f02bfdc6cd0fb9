use super::*;
use std::collections::HashMap;

#[test]
fn urls_parse_to_stores_and_roots() {
    let s = Storage::from_url("memory://").unwrap();
    assert_eq!(s.url(), "memory://");
    let s = Storage::from_url("memory://a/b/").unwrap();
    assert_eq!(s.url(), "memory://a/b");
    assert_eq!(s.join("jobs/j1").url(), "memory://a/b/jobs/j1");
    assert_eq!(s.location("x/y").unwrap().as_ref(), "a/b/x/y");

    // Clients are built offline; the bucket and prefix come from the URL.
    let s = Storage::from_url("s3://bucket/some/prefix").unwrap();
    assert_eq!(s.url(), "s3://bucket/some/prefix");
    assert_eq!(s.location("f").unwrap().as_ref(), "some/prefix/f");
    let s = Storage::from_url("gs://bucket").unwrap();
    assert_eq!(s.url(), "gs://bucket");

    for bad in ["", "ftp://x/y", "s3:///prefix", "file://"] {
        let err = Storage::from_url(bad).unwrap_err();
        assert!(matches!(err, StorageError::UnsupportedUrl { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("s3://bucket/prefix"), "{err}");
    }
}

#[test]
fn local_urls_create_their_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let abs = tmp.path().join("a/b");
    let s = Storage::from_url(&format!("file://{}", abs.display())).unwrap();
    assert!(abs.is_dir());
    assert_eq!(
        s.url(),
        format!("file://{}", std::fs::canonicalize(&abs).unwrap().display())
    );
    let plain = tmp.path().join("plain");
    Storage::from_url(plain.to_str().unwrap()).unwrap();
    assert!(plain.is_dir());

    let err = Storage::from_url("file:///proc/surgery-cannot-create-this").unwrap_err();
    assert!(matches!(err, StorageError::CreateRoot { .. }), "{err}");
}

#[test]
fn bad_paths_are_typed_errors() {
    let s = Storage::from_url("memory://root").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for bad in ["a//b", "a/../b", "a/./b"] {
        let err = rt.block_on(s.get(bad)).unwrap_err();
        assert!(matches!(err, StorageError::InvalidPath { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("memory://root"), "{err}");
    }
    let err = rt.block_on(s.get("missing/file")).unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("memory://root/missing/file"), "{err}");
}

#[test]
fn a_folder_uploads_file_by_file_and_downloads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("student");
    std::fs::create_dir_all(folder.join("nested")).unwrap();
    std::fs::write(folder.join("config.json"), b"{}").unwrap();
    std::fs::write(folder.join("model.safetensors"), vec![7u8; 1000]).unwrap();
    std::fs::write(folder.join("nested/skipped.bin"), b"x").unwrap();
    let s = Storage::from_url("memory://root").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut written = rt.block_on(s.upload_dir("jobs/j1/export/", &folder)).unwrap();
    written.sort();
    assert_eq!(
        written,
        ["jobs/j1/export/config.json", "jobs/j1/export/model.safetensors"]
    );
    assert_eq!(
        rt.block_on(s.get("jobs/j1/export/model.safetensors")).unwrap().len(),
        1000
    );

    let back = tmp.path().join("back");
    let summary = rt.block_on(s.join("jobs/j1/export").download_dir("", &back)).unwrap();
    assert_eq!(summary.downloaded, 2);
    assert_eq!(std::fs::read(back.join("config.json")).unwrap(), b"{}");

    let err = rt.block_on(s.upload_dir("x", tmp.path().join("missing"))).unwrap_err();
    assert!(matches!(err, StorageError::LocalRead { .. }), "{err}");
}

/// A job's storage with links reads the linked paths from the other root, in place, and
/// refuses to write or delete them; its own paths stay its own.
#[tokio::test]
async fn linked_paths_are_read_from_their_owner_and_never_written() {
    let store = Storage::from_url("memory://").unwrap();
    let parent = store.join("jobs/parent");
    parent
        .put("cache/a.bin", Bytes::from_static(b"parent's"))
        .await
        .unwrap();
    parent.put("cache/sub/b.bin", Bytes::from_static(b"b")).await.unwrap();
    // Paths under `cache/` belong to the task "capture"; only that one is linked.
    let owner_of = |path: &str| path.starts_with("cache").then(|| "capture".to_string());
    let links = Links::new(owner_of, HashMap::from([("capture".to_string(), parent.clone())]));
    let child = store.join("jobs/child").with_links(links);
    child.put("own.bin", Bytes::from_static(b"own")).await.unwrap();

    assert_eq!(child.get("cache/a.bin").await.unwrap(), Bytes::from_static(b"parent's"));
    assert_eq!(child.size_opt("cache/a.bin").await.unwrap(), Some(8));
    assert_eq!(child.get_opt("cache/missing").await.unwrap(), None);
    assert_eq!(child.list("cache").await.unwrap(), ["cache/a.bin", "cache/sub/b.bin"]);
    assert_eq!(
        child.join("cache/sub").get("b.bin").await.unwrap(),
        Bytes::from_static(b"b")
    );
    let (size, _) = child.get_stream("cache/a.bin").await.unwrap();
    assert_eq!(size, 8);
    assert_eq!(child.get("own.bin").await.unwrap(), Bytes::from_static(b"own"));
    assert_eq!(child.list("").await.unwrap(), ["own.bin"], "nothing was copied");

    for err in [
        child.put("cache/a.bin", Bytes::from_static(b"x")).await.unwrap_err(),
        child.delete("cache/a.bin").await.unwrap_err(),
        child.delete_prefix("cache").await.unwrap_err(),
    ] {
        assert!(matches!(err, StorageError::Linked { .. }), "{err}");
        assert!(err.to_string().contains("memory://jobs/parent"), "{err}");
    }
    assert_eq!(parent.list("").await.unwrap(), ["cache/a.bin", "cache/sub/b.bin"]);
}
