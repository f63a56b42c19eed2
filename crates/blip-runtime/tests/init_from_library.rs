//! `OrtLibrary::init_from_library`: one library per process, found by the host (the Python wheel).
//! Its own test binary, so this process loads ONNX Runtime only through these calls.

use blip_runtime::{OrtLibrary, RuntimeError, find_library};

#[test]
fn a_process_keeps_the_first_library_and_refuses_another() {
    let lib =
        find_library().expect("ONNX Runtime (run `eval \"$(scripts/fetch-onnxruntime.sh)\"`)");
    let first = OrtLibrary::init_from_library(&lib, 1).expect("loads");
    assert_eq!(first.library, lib);
    assert_eq!(first.pool_threads, 1);

    // The same library again, or through a link to it: the same runtime (thread count of the first).
    let again = OrtLibrary::init_from_library(&lib, 3).expect("same library");
    assert_eq!(
        (again.library.clone(), again.pool_threads),
        (lib.clone(), 1)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("libonnxruntime-link.so");
    std::os::unix::fs::symlink(&lib, &link).expect("symlink");
    assert_eq!(
        OrtLibrary::init_from_library(&link, 1)
            .expect("link")
            .library,
        lib
    );

    // Another file: refused, naming both.
    let other = dir.path().join("libonnxruntime.so.9.9.9");
    std::fs::write(&other, b"not loaded").expect("write");
    match OrtLibrary::init_from_library(&other, 1) {
        Err(RuntimeError::LibraryLoad { path, message }) => {
            assert_eq!(path, other);
            assert!(message.contains(&lib.display().to_string()), "{message}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second library was accepted"),
    }

    // What BlipModel::open calls: the runtime already loaded, whatever the search would find.
    assert_eq!(
        OrtLibrary::init_with_threads(0).expect("loaded").library,
        lib
    );
}
