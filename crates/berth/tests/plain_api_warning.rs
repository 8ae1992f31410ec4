//! The API speaks plain HTTP: `berth up` says so, in its banner and its log, when the API
//! listens beyond loopback, and says nothing when it stays on loopback.

mod common;

use common::*;

#[test]
fn an_api_listening_beyond_loopback_is_warned_about_and_one_on_loopback_is_not() {
    let data = data_dir();
    let ports = Ports::free();
    let everywhere = format!("0.0.0.0:{}", ports.api);
    let up = berth_up_with(data.path(), ports, &["--api-listen", &everywhere]);
    assert!(
        up.stdout.contains("Warning: the API listens beyond loopback over plain HTTP"),
        "no warning in the banner: {}",
        up.stdout
    );
    let log = up.stop();
    assert!(log.contains("API keys cross the network unencrypted"), "no warning in the log: {log}");

    let up = berth_up(data.path(), ports);
    assert!(!up.stdout.contains("beyond loopback"), "warned on loopback: {}", up.stdout);
    let log = up.stop();
    assert!(!log.contains("beyond loopback"), "warned on loopback: {log}");
}
