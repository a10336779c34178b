//! The `genie` binary: `generate` on the tiny model, and one-line errors that write nothing.

use std::path::Path;
use std::process::{Command, Output};

fn genie(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(args)
        .env("GENIE_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn sample() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/sample.png")
        .display()
        .to_string()
}

#[test]
fn generate_writes_one_png_per_level_and_reports_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = genie(
        tmp.path(),
        &[
            "generate",
            "--model",
            "tiny",
            "--source",
            &sample(),
            "--target",
            "cat",
            "--superclass",
            "animal",
            "--steps",
            "10",
            "--scheduler",
            "ddim",
            "--levels",
            "0.5,0.8,1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // r, start timestep, steps: DDIM with N = 10 runs 5, 8 and 10 steps.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert_eq!(&rows[0][..3], ["0.5", "401", "5"]);
    assert_eq!(&rows[1][..3], ["0.8", "701", "8"]);
    assert_eq!(&rows[2][..3], ["1.0", "901", "10"]);
    for name in ["r0500.png", "r0800.png", "r1000.png"] {
        let img = image::open(out.join(name)).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("a photo of a cat, a type of animal."),
        "{stderr}"
    );
    assert!(stderr.contains("meaningless"), "{stderr}");
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3);
}

#[test]
fn injected_noise_file_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let noise_file = tmp.path().join("noise.safetensors");
    let values = genie::noise::gaussian(5, 256);
    let t = candle_core::Tensor::from_vec(values, (1, 4, 8, 8), &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("noise".to_string(), t)]),
        &noise_file,
    )
    .unwrap();
    let src = sample();
    let run = |extra: &[&str], dir: &str| {
        let out = tmp.path().join(dir);
        let mut args = vec![
            "generate",
            "--model",
            "tiny",
            "--source",
            &src,
            "--target",
            "dog",
            "--steps",
            "5",
            "--levels",
            "0.6",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = genie(tmp.path(), &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out.join("r0600.png")).unwrap()
    };
    let from_file = run(&["--noise", noise_file.to_str().unwrap()], "a");
    let from_seed = run(&["--seed", "5"], "b");
    let other_seed = run(&["--seed", "6"], "c");
    assert_eq!(from_file, from_seed);
    assert_ne!(from_file, other_seed);
}

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
        &[
            "generate",
            "--weights",
            "/no/model",
            "--source",
            &s,
            "--target",
            "cat",
            "--out",
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
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        stderr.contains("HF_HUB_OFFLINE") && stderr.contains("stable-diffusion-v1-5"),
        "{stderr}"
    );
    assert!(!out.exists());
}
