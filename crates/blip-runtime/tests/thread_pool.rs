//! A package's sessions share the runtime's one intra-op thread pool (own test binary: the runtime and
//! its pool are per process). Counted as OS threads: opening graphs that share the pool adds none; a
//! session that asks for another thread count gets a pool of its own and adds its workers.
#![cfg(target_os = "linux")]

use blip_runtime::{BlipModel, OrtLibrary, SessionOptions};

fn os_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task lists this process's threads")
        .count()
}

#[test]
fn sessions_share_one_pool_unless_they_ask_for_another_size() {
    let rt = OrtLibrary::init_with_threads(3).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rt.pool_threads, 3);
    // Later calls get the same runtime; the first call sized the pool.
    assert_eq!(OrtLibrary::init().unwrap().pool_threads, 3);

    let c = blip_testkit::convert_fixture(
        &blip_testkit::fixture("models/tiny-caption"),
        &Default::default(),
    );
    let shared = SessionOptions {
        intra_threads: 3,
        ..Default::default()
    };
    let before = os_threads();
    let mut a = BlipModel::open(&c.pkg.dir, &shared).unwrap();
    let b = BlipModel::open(&c.pkg.dir, &shared).unwrap();
    let captions = a
        .caption(
            &[blip_runtime::ImageInput::Path(blip_testkit::fixture(
                "images/grace_hopper.jpg",
            ))],
            &Default::default(),
        )
        .unwrap();
    assert!(captions[0].is_ok());
    assert_eq!(
        os_threads(),
        before,
        "two packages (3 graphs each) opened and run on the shared pool must add no threads"
    );

    let own = rt
        .package_session(
            &c.pkg,
            "vision_encoder",
            &SessionOptions {
                intra_threads: 4,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        os_threads(),
        before + 3,
        "a session asking for 4 threads gets its own pool: 3 workers besides the caller"
    );
    drop((own, b));
}
