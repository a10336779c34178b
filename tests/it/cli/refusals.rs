//! Bad input to every command: one-line errors that write nothing, hostile sizes and FIFOs,
//! truncated weights, over-long names, and the fuzz script's own failures.

use super::*;

#[test]
fn bad_arguments_fail_with_one_line_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_image = tmp.path().join("bad.png");
    std::fs::write(&bad_image, b"not an image").unwrap();
    let a_file = tmp.path().join("file");
    std::fs::write(&a_file, b"x").unwrap();
    let wrong_noise = tmp.path().join("noise.safetensors");
    let t = candle_core::Tensor::zeros(
        (1, 4, 4, 4),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("noise".to_string(), t)]),
        &wrong_noise,
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let s = sample();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--levels", "1.5"], "invalid noise level"),
        (vec!["--levels", "0"], "invalid noise level"),
        (vec!["--levels", "abc"], "invalid noise level"),
        (vec!["--levels", "0.01"], "runs no denoising step"),
        (vec!["--steps", "0"], "at least 1"),
        (vec!["--scheduler", "euler"], "unknown scheduler"),
        (vec!["--device", "tpu"], "unknown device"),
        (vec!["--dtype", "int8"], "unknown dtype"),
        (
            vec!["--noise", wrong_noise.to_str().unwrap()],
            "expected [1, 4, 8, 8]",
        ),
        (vec!["--size", "60"], "multiple of 16"),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "generate", "--model", "tiny", "--source", &s, "--target", "cat", "--out", o,
        ];
        args.extend_from_slice(&extra);
        let r = genie(tmp.path(), &args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{extra:?} should fail");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }
    for (source, out_dir, expected) in [
        (bad_image.to_str().unwrap(), o, "cannot decode image"),
        ("/no/such/image.png", o, "cannot read image"),
        (s.as_str(), a_file.to_str().unwrap(), "not a folder"),
    ] {
        let r = genie(
            tmp.path(),
            &[
                "generate", "--model", "tiny", "--source", source, "--target", "cat", "--out",
                out_dir,
            ],
        );
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(expected), "{stderr}");
        assert!(!out.exists());
    }
    // A model folder that does not exist, and the Hub while offline with nothing cached.
    let r = genie(
        tmp.path(),
        &argv![
            "generate --weights /no/model --source",
            (&s),
            "--target cat --out",
            o,
        ],
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("/no/model"));
    let r = Command::new(env!("CARGO_BIN_EXE_genie"))
        .args([
            "generate", "--model", "sd15", "--source", &s, "--target", "cat", "--out", o,
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", tmp.path().join("hf"))
        .output()
        .unwrap();
    refused(&r, &["HF_HUB_OFFLINE", "stable-diffusion-v1-5"], &out);
}

#[test]
fn cache_commands_refuse_bad_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    for args in [
        vec!["cache", "stats", file.to_str().unwrap()],
        vec!["cache", "verify", "/no/such/cache"],
        vec!["cache", "gc", file.to_str().unwrap(), "--max-age", "1d"],
    ] {
        let o = genie(tmp.path(), &args);
        assert!(!o.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.starts_with("error:") && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
    }
    let o = genie(tmp.path(), &["cache", "gc", tmp.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-size"));
    let o = genie(
        tmp.path(),
        &[
            "cache",
            "gc",
            tmp.path().to_str().unwrap(),
            "--max-size",
            "lots",
        ],
    );
    assert!(!o.status.success());
}

#[test]
fn a_model_with_truncated_weights_is_an_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    genie::diffusion::tiny::write_tiny_model(&model, 1).unwrap();
    let unet = model.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &bytes[..bytes.len() / 3]).unwrap();
    let out = tmp.path().join("out");
    let o = genie(
        tmp.path(),
        &argv![
            "generate --weights",
            (model.to_str().unwrap()),
            "--source",
            (&sample()),
            "--target cat --steps 4 --levels 0.5 --out",
            (out.to_str().unwrap()),
        ],
    );
    refused(&o, &["diffusion_pytorch_model.safetensors"], &out);
    assert_eq!(o.status.code(), Some(1), "an error, not a usage error");
}

/// Numbers that size memory are bounded (they aborted the process on a failed allocation) and
/// user-named files that are FIFOs are refused at once (opening one blocked forever): each is a
/// one-line error, exit 1 or a usage error, and nothing is written.
#[test]
fn hostile_sizes_and_fifos_are_refused_without_abort_or_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("z.png");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let plan = tmp.path().join("plan.jsonl");
    std::fs::write(&plan, "").unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let (fifo, plan, cache, o) = (
        fifo.to_str().unwrap(),
        plan.to_str().unwrap(),
        cache.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let sample = sample();
    let g = [
        "generate", "--model", "tiny", "--steps", "2", "--levels", "0.5", "--out", o,
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&g[..], &["--source", fifo, "--target", "cat"]].concat(),
            "FIFO",
        ),
        (
            [
                &g[..],
                &["--source", &sample, "--target", "cat", "--size", "100000"],
            ]
            .concat(),
            "at most 1024",
        ),
        (
            [
                &g[..],
                &[
                    "--source",
                    &sample,
                    "--target",
                    "cat",
                    "--variants",
                    "4294967295",
                ],
            ]
            .concat(),
            "1..=1000",
        ),
        (vec!["bench", "--model", "tiny", "--source", fifo], "FIFO"),
        (
            vec!["bench", "--model", "tiny", "--batch", "100000"],
            "1..=256",
        ),
        (
            vec![
                "warm",
                "status",
                "--plan",
                plan,
                "--cache",
                cache,
                "--shards",
                "4294967295",
            ],
            "between 1 and 65536",
        ),
        (
            vec![
                "warm", "status", "--plan", plan, "--cache", cache, "--shards", "0",
            ],
            "between 1 and 65536",
        ),
        (
            vec![
                "warm",
                "run",
                "--model",
                "tiny",
                "--plan",
                plan,
                "--cache",
                cache,
                "--shard",
                "0/4294967295",
            ],
            "0/4294967295",
        ),
        (
            vec!["warm", "status", "--plan", fifo, "--cache", cache],
            "FIFO",
        ),
        (
            vec![
                "sheet", "--model", "tiny", "--cache", cache, "--source", &sample, "--target",
                "cat", "--tile", "100000", "--out", o,
            ],
            "16..=1024",
        ),
        (
            vec![
                "cache",
                "report",
                cache,
                "--out",
                o,
                "--thumbnail",
                "100000",
            ],
            "16..=512",
        ),
    ];
    for (args, expected) in cases {
        let r = genie_within_a_minute(tmp.path(), &args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(
            matches!(r.status.code(), Some(1 | 2)),
            "{args:?}: {:?}\n{stderr}",
            r.status
        );
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

/// A 10 000-character target is written under a short, unique folder name (it failed with "File
/// name too long" after generating), and an output folder that cannot take files fails before
/// any image is made.
#[test]
fn long_names_fit_the_file_system_and_bad_output_folders_fail_first() {
    let tmp = tempfile::tempdir().unwrap();
    let sources = tmp.path().join("sources");
    std::fs::create_dir(&sources).unwrap();
    std::fs::copy(sample(), sources.join("a.png")).unwrap();
    let long = "x".repeat(10_000);
    let targets = format!("{long},{long}y");
    let out = tmp.path().join("out");
    let (dir, o) = (sources.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "generate", "--model", "tiny", "--steps", "2", "--levels", "0.5",
    ];
    let r = genie(
        tmp.path(),
        &[
            &args[..],
            &["--source-dir", dir, "--targets", &targets, "--out", o],
        ]
        .concat(),
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let written: Vec<_> = std::fs::read_dir(out.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(
        written
            .iter()
            .all(|n| n.len() <= 96 && n.starts_with("xxxx")),
        "{written:?}"
    );

    let cache = tmp.path().join("cache").display().to_string();
    let r = genie(
        tmp.path(),
        &[
            &args[..],
            &[
                "--source",
                &sample(),
                "--target",
                "cat",
                "--cache",
                &cache,
                "--out",
                "/proc/genie-out",
            ],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/proc/genie-out"), "{stderr}");
    // Refused before any work: the cache the images would have gone to holds none.
    let stored = crate::support::files_under(&Path::new(&cache).join("objects"));
    assert!(stored.is_empty(), "{stored:?}");
}

/// `scripts/fuzz.sh` fails for a target that does not build, crashes or runs no input, and passes
/// only when every target ran to its time limit (a stand-in `cargo` plays cargo-fuzz's parts).
#[test]
fn the_fuzz_script_fails_on_a_broken_crashing_or_idle_target() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fuzz.sh"),
        root.join("scripts/fuzz.sh"),
    )
    .unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let cargo = bin.join("cargo");
    std::fs::write(
        &cargo,
        r#"#!/usr/bin/env bash
case "$3" in
  list) printf 'good\nbroken\ncrash\nidle\n';;
  build) exit 0;;
  run) case "$5" in
     good) echo "stat::number_of_executed_units: 1234";;
     broken) echo "error: could not compile"; exit 101;;
     crash) echo "==1==ERROR: libFuzzer: deadly signal"; exit 77;;
     idle) ;;
  esac;;
esac
"#,
    )
    .unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let fuzz = |targets: &[&str]| {
        std::process::Command::new("bash")
            .arg(root.join("scripts/fuzz.sh"))
            .args(targets)
            .env("PATH", &path)
            .env("FUZZ_SECONDS", "1")
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap()
    };
    let all = fuzz(&[]);
    let out = String::from_utf8_lossy(&all.stdout);
    assert!(!all.status.success(), "{out}");
    for failed in [
        "broken (exit 101)",
        "crash (exit 77)",
        "idle (ran no input)",
    ] {
        assert!(out.contains(failed), "{failed}: {out}");
    }
    let verdict = out.lines().find(|l| l.starts_with("FAILED:")).unwrap();
    assert!(!verdict.contains("good"), "{verdict}");
    let good = fuzz(&["good"]);
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{out}");
    assert!(out.contains("no crashes in 1 targets"), "{out}");
}
