//! A running istiod follows the root rotation `istiod rotate-root` writes into its state
//! directory: the next root trusted, then signing, then alone — each within a poll or two.

use std::time::{Duration, SystemTime};

use control::istiod::{STATE_DIR_POLL, root_rotation, state_dir};

use crate::common::*;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_istiod_follows_each_step_in_its_state_directory() {
    let dir = std::env::temp_dir().join(format!("istiod-follow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = state_dir::load_or_create(&dir, "cluster.local", SystemTime::now()).unwrap();
    let istiod = start_istiod(subnet(), &state.root).await;
    istiod.follow_state_dir(dir.clone());
    let base = state.root.root_pem();
    assert_eq!(istiod.trust_bundle(), base);
    let wait = 3 * STATE_DIR_POLL;

    root_rotation::begin(&dir, "cluster.local", SystemTime::now(), HOUR, HOUR).unwrap();
    let next = root_rotation::load(&dir).unwrap().unwrap().next.root_pem();
    assert!(
        eventually(wait, || istiod.trust_bundle() == format!("{base}{next}")).await,
        "begin: the next root was not trusted beside the base"
    );

    root_rotation::advance(&dir, SystemTime::now()).unwrap();
    assert!(
        eventually(wait, || istiod.trust_bundle() == format!("{next}{base}")).await,
        "advance: the next root does not sign (it leads the bundle when it does)"
    );

    root_rotation::advance(&dir, SystemTime::now()).unwrap();
    assert!(
        eventually(wait, || istiod.trust_bundle() == next).await,
        "advance again: the old root is still trusted"
    );

    // Finished: the next root is the base now, and a damaged directory changes nothing.
    root_rotation::finish(&dir, SystemTime::now()).unwrap();
    std::fs::write(dir.join("rotation.json"), "not json").unwrap();
    tokio::time::sleep(STATE_DIR_POLL + Duration::from_millis(500)).await;
    assert_eq!(istiod.trust_bundle(), next);
    std::fs::remove_dir_all(&dir).unwrap();
}
