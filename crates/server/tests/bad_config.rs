//! Bad input, surface 5 of 5: the `--config` file (issue 14). Every case is a file the
//! binary must refuse: it exits with an error that names the file and what is wrong, and
//! never starts serving. (The other surfaces' matrices are `tests/tests/e2e_bad_input_*`.)

mod support;

use std::time::Duration;

use support::{bin, run_to_exit, temp_dir};

/// How long a refused start may take.
const WITHIN: Duration = Duration::from_secs(15);

#[test]
fn bad_config_files_are_refused_with_what_is_wrong() {
    let dir = temp_dir("bad-config");
    let cases: [(&str, &str, &[&str]); 9] = [
        (
            "a key written twice",
            "listen = \"127.0.0.1:0\"\nmax-connections = 10\nmax-connections = 20\n",
            &["duplicate key", "max-connections"],
        ),
        (
            "a table written twice",
            "[a]\nx = 1\n[a]\ny = 2\n",
            &["duplicate"],
        ),
        (
            "one setting under both spellings",
            "max_connections = 10\nmax-connections = 20\n",
            &["max_connections", "max-connections", "same setting"],
        ),
        (
            "an unknown setting",
            "listen = \"127.0.0.1:0\"\nmax_conections = 10\n",
            &["unknown setting `max_conections`"],
        ),
        (
            "a value of the wrong kind",
            "max-connections = \"many\"\n",
            &["max-connections", "many"],
        ),
        (
            "an array of numbers",
            "api-keys = [1, 2]\n",
            &["api-keys", "strings"],
        ),
        (
            "a table",
            "[listen]\nport = 1\n",
            &["listen", "unsupported"],
        ),
        (
            "another config file named inside",
            "config = \"/etc/other.toml\"\n",
            &["cannot name another file"],
        ),
        ("not TOML", "listen = \n", &["agentwire.toml"]),
    ];
    for (name, text, says) in cases {
        let path = dir.join("agentwire.toml");
        std::fs::write(&path, text).expect("write");
        let mut cmd = bin();
        cmd.arg("--config").arg(&path);
        let (status, out, err) = run_to_exit(cmd, WITHIN);
        let status = status.unwrap_or_else(|| panic!("{name}: the server started: {out}"));
        assert!(!status.success(), "{name}: exited with success");
        assert!(!out.contains("listening on"), "{name}: it served: {out}");
        for needle in says {
            assert!(err.contains(needle), "{name}: {needle:?} not in: {err}");
        }
    }
    // A file that cannot be read.
    let mut cmd = bin();
    cmd.arg("--config").arg(dir.join("missing.toml"));
    let (status, _, err) = run_to_exit(cmd, WITHIN);
    assert!(status.is_some_and(|s| !s.success()));
    assert!(err.contains("cannot read config file"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_receipt_webhook_settings_are_refused_at_start() {
    let dir = temp_dir("bad-webhook");
    let key_file = dir.join("webhook.key");
    std::fs::write(&key_file, "too short\n").expect("write");
    let key = "a webhook key of at least thirty-two bytes";
    let missing = dir.join("missing.key");
    let cases: [(&str, Vec<&str>, &[&str]); 6] = [
        (
            "a URL without a key",
            vec!["--receipt-webhook-url", "https://hooks.example/a"],
            &["--receipt-webhook-url needs --receipt-webhook-secret"],
        ),
        (
            "a key shorter than 32 bytes",
            vec![
                "--receipt-webhook-url",
                "https://hooks.example/a",
                "--receipt-webhook-secret",
                "short",
            ],
            &["5 bytes", "at least 32"],
        ),
        (
            "a key file shorter than 32 bytes",
            vec![
                "--receipt-webhook-url",
                "https://hooks.example/a",
                "--receipt-webhook-secret-file",
                key_file.to_str().expect("utf-8"),
            ],
            &["9 bytes", "at least 32"],
        ),
        (
            "a key file that cannot be read",
            vec![
                "--receipt-webhook-url",
                "https://hooks.example/a",
                "--receipt-webhook-secret-file",
                missing.to_str().expect("utf-8"),
            ],
            &["--receipt-webhook-secret-file", "missing.key"],
        ),
        (
            "http to a host that is not loopback",
            vec![
                "--receipt-webhook-url",
                "http://hooks.example/a",
                "--receipt-webhook-secret",
                key,
            ],
            &["--receipt-webhook-url", "loopback"],
        ),
        (
            "a key without a URL",
            vec!["--receipt-webhook-secret", key],
            &["without --receipt-webhook-url"],
        ),
    ];
    for (name, args, says) in cases {
        let mut cmd = bin();
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            "a jwt secret of at least thirty-two bytes",
            "--api-keys",
            "an api key of thirty-two characters",
        ])
        .args(&args);
        let (status, out, err) = run_to_exit(cmd, WITHIN);
        let status = status.unwrap_or_else(|| panic!("{name}: the server started: {out}"));
        assert!(!status.success(), "{name}: exited with success");
        assert!(!out.contains("listening on"), "{name}: it served: {out}");
        for needle in says {
            assert!(err.contains(needle), "{name}: {needle:?} not in: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A config file that users other than its owner can write — group- or world-writable,
/// or in a directory they can write — is refused before it is read, naming the file, the
/// mode and the `chmod` that fixes it; once fixed, the same file is read.
#[cfg(unix)]
#[test]
fn config_files_others_can_write_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let dir = temp_dir("shared-config");
    chmod(&dir, 0o700);
    let path = dir.join("agentwire.toml");
    // Readable settings, but one the server refuses: reaching it shows the file was read.
    std::fs::write(&path, "max_conections = 10\n").expect("write");
    let run = || {
        let mut cmd = bin();
        cmd.arg("--config").arg(&path);
        let (status, out, err) = run_to_exit(cmd, WITHIN);
        let status = status.unwrap_or_else(|| panic!("the server started: {out}"));
        assert!(!status.success(), "exited with success: {err}");
        assert!(!out.contains("listening on"), "it served: {out}");
        err
    };
    for mode in [0o620, 0o602, 0o666] {
        chmod(&path, mode);
        let err = run();
        let says = [
            path.display().to_string(),
            format!("mode {mode:03o}"),
            format!("chmod go-w {}", path.display()),
        ];
        for needle in says {
            assert!(
                err.contains(&needle),
                "mode {mode:o}: {needle:?} not in: {err}"
            );
        }
        assert!(
            !err.contains("max_conections"),
            "mode {mode:o}: read: {err}"
        );
    }
    chmod(&path, 0o600);
    chmod(&dir, 0o777);
    let err = run();
    assert!(
        err.contains(&format!("chmod go-w {}", dir.display())),
        "a shared directory: {err}"
    );
    chmod(&dir, 0o700);
    let err = run();
    assert!(err.contains("unknown setting `max_conections`"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A kernel send buffer outside 4096 to 64 MiB (other than 0, the kernel's autotuning) is
/// refused at start, from the config file as from the flag, naming the setting and range.
#[test]
fn a_socket_send_buffer_out_of_range_is_refused_at_start() {
    let dir = temp_dir("bad-sndbuf");
    for bytes in ["1000", "100000000"] {
        let path = dir.join("agentwire.toml");
        std::fs::write(
            &path,
            format!("listen = \"127.0.0.1:0\"\nsocket-send-buffer = {bytes}\n"),
        )
        .expect("write");
        let mut cmd = bin();
        cmd.arg("--config").arg(&path).args([
            "--jwt-secret",
            "a jwt secret of at least thirty-two bytes",
            "--api-keys",
            "an api key of thirty-two characters",
        ]);
        let (status, out, err) = run_to_exit(cmd, WITHIN);
        let status = status.unwrap_or_else(|| panic!("{bytes}: the server started: {out}"));
        assert!(!status.success(), "{bytes}: exited with success");
        assert!(!out.contains("listening on"), "{bytes}: it served: {out}");
        for needle in ["--socket-send-buffer", bytes, "4096", "67108864"] {
            assert!(err.contains(needle), "{bytes}: {needle:?} not in: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
