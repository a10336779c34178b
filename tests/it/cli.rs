//! The `genie` binary: `generate` on the tiny model, and one-line errors that write nothing.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

/// A command line: each string literal split at spaces into words, each parenthesised
/// expression (or name) one word as it is (paths, values with spaces).
macro_rules! argv {
    ($($part:tt),* $(,)?) => {{
        let mut words: Vec<String> = Vec::new();
        $(argv!(@push words, $part);)*
        words
    }};
    (@push $words:ident, $literal:literal) => {
        $words.extend($literal.split_whitespace().map(String::from))
    };
    (@push $words:ident, $word:tt) => {
        $words.push($word.to_string())
    };
}

fn genie<S: AsRef<OsStr>>(home: &Path, args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(args)
        .env("GENIE_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// Asserts that `genie` failed, saying each of `says`, and wrote nothing at `out`.
fn refused(o: &Output, says: &[&str], out: &Path) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        says.iter().all(|s| stderr.contains(s)),
        "{says:?}: {stderr}"
    );
    assert!(!out.exists(), "wrote {}", out.display());
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
        &argv![
            "generate --model tiny --source",
            (&sample()),
            "--target cat --superclass animal --steps 10 --scheduler ddim --levels 0.5,0.8,1 --out",
            (out.to_str().unwrap()),
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
    // `--seed 5` is the run seed: the pair (sample, dog, variant 0) draws from its own seed.
    let source = genie::image_io::load_source(Path::new(&sample()), 64).unwrap();
    let hash = genie::cache::source_hash(&source);
    let values = genie::noise::gaussian(genie::seed::pair_seed(5, Some(&hash), "dog", 0), 256);
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
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        stderr.contains("HF_HUB_OFFLINE") && stderr.contains("stable-diffusion-v1-5"),
        "{stderr}"
    );
    assert!(!out.exists());
}

fn rows(stdout: &[u8]) -> Vec<Vec<String>> {
    String::from_utf8_lossy(stdout)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn generate_with_a_cache_hits_the_second_time() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let s = sample();
    let run = |out: &str| {
        let out = tmp.path().join(out);
        let o = genie(
            tmp.path(),
            &argv![
                "generate --model tiny --source",
                (&s),
                "--target cat --steps 6 --levels 0.5,0.9 --cache",
                (cache.to_str().unwrap()),
                "--out",
                (out.to_str().unwrap()),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            rows(&o.stdout),
            std::fs::read(out.join("r0900.png")).unwrap(),
        )
    };
    let (first, img1) = run("a");
    assert_eq!(
        first.iter().map(|r| r[3].as_str()).collect::<Vec<_>>(),
        ["miss", "miss"]
    );
    let (second, img2) = run("b");
    assert_eq!(
        second.iter().map(|r| r[3].as_str()).collect::<Vec<_>>(),
        ["hit", "hit"]
    );
    assert_eq!(img1, img2);
    // Another seed is another key.
    let o = genie(
        tmp.path(),
        &argv![
            "generate --model tiny --source",
            (&s),
            "--target cat --steps 6 --levels 0.5 --seed 9 --cache",
            (cache.to_str().unwrap()),
            "--out",
            (tmp.path().join("c").to_str().unwrap()),
        ],
    );
    assert_eq!(rows(&o.stdout)[0][3], "miss");
}

#[test]
fn several_sources_and_targets_go_through_the_service_and_the_cache_commands_see_them() {
    let tmp = tempfile::tempdir().unwrap();
    let sources = tmp.path().join("sources");
    std::fs::create_dir(&sources).unwrap();
    for (i, name) in ["one.png", "two.jpg"].iter().enumerate() {
        image::RgbImage::from_fn(80, 64, |x, y| {
            image::Rgb([(x * 3) as u8, (y * 4) as u8, i as u8 * 90])
        })
        .save(sources.join(name))
        .unwrap();
    }
    std::fs::write(sources.join("notes.txt"), "not an image").unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let o = genie(
        tmp.path(),
        &argv![
            "generate --model tiny --source-dir",
            (sources.to_str().unwrap()),
            "--targets",
            ("cat,golden retriever"),
            "--steps 4 --levels 0.5,0.75 --cache",
            (cache.to_str().unwrap()),
            "--out",
            (out.to_str().unwrap()),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&o.stdout).len(), 8);
    for dir in [
        "one/cat",
        "one/golden_retriever",
        "two/cat",
        "two/golden_retriever",
    ] {
        assert!(out.join(dir).join("r0750.png").is_file(), "{dir}");
    }
    let c = cache.to_str().unwrap();
    let stats = genie(tmp.path(), &["cache", "stats", c, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(json["entries"], 8);
    assert_eq!(json["by_target"]["golden retriever"]["entries"], 4);
    assert_eq!(json["by_level"]["750"], 4);
    let table =
        String::from_utf8_lossy(&genie(tmp.path(), &["cache", "stats", c]).stdout).to_string();
    assert!(
        table.contains("8 entries") && table.contains("r = 0.75"),
        "{table}"
    );

    let verify = genie(tmp.path(), &["cache", "verify", c]);
    assert!(verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("8 ok, 0 bad"));
    // Corrupt one content file: verify fails and names it; --repair quarantines it; then all is well.
    let png = walk(&cache.join("objects"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .unwrap();
    let mut bytes = std::fs::read(&png).unwrap();
    bytes[100] ^= 0xFF;
    std::fs::write(&png, bytes).unwrap();
    let verify = genie(tmp.path(), &["cache", "verify", c]);
    assert!(!verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("7 ok, 1 bad"));
    let repair = genie(tmp.path(), &["cache", "verify", c, "--repair"]);
    assert!(
        repair.status.success(),
        "{}",
        String::from_utf8_lossy(&repair.stderr)
    );
    assert!(
        String::from_utf8_lossy(&genie(tmp.path(), &["cache", "verify", c]).stdout)
            .contains("7 ok, 0 bad")
    );

    let gc = genie(tmp.path(), &["cache", "gc", c, "--max-size", "0"]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(String::from_utf8_lossy(&gc.stdout).contains("removed 7 entries"));
    let json: serde_json::Value =
        serde_json::from_slice(&genie(tmp.path(), &["cache", "stats", c, "--json"]).stdout)
            .unwrap();
    assert_eq!(json["entries"], 0);
}

/// Every file below `dir` (none when `dir` does not exist yet).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
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
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("diffusion_pytorch_model.safetensors"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// An image-folder dataset: dog (22 images) and cat (21) are Medium, fox (2) is Few.
fn write_dataset(dir: &Path) -> std::path::PathBuf {
    write_dataset_named(dir, ["dog", "cat", "fox"])
}

/// [`write_dataset`] with other folder names for its three classes.
fn write_dataset_named(dir: &Path, names: [&str; 3]) -> std::path::PathBuf {
    let data = dir.join("data");
    for (class, (name, count)) in names.into_iter().zip([22, 21, 2]).enumerate() {
        std::fs::create_dir_all(data.join(name)).unwrap();
        for n in 0..count {
            genie::synthetic::render(class, n, 16)
                .unwrap()
                .save(data.join(name).join(format!("{n}.png")))
                .unwrap();
        }
    }
    data
}

#[test]
fn warm_plan_writes_a_deterministic_plan_and_names_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_dataset(tmp.path());
    let plan = tmp.path().join("plan.jsonl");
    let args = |out: &Path| {
        vec![
            "warm".to_string(),
            "plan".into(),
            "--data".into(),
            data.display().to_string(),
            "--model".into(),
            "tiny".into(),
            "--levels".into(),
            "0.5,0.8".into(),
            "--per-class".into(),
            "10".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let run = |a: Vec<String>| {
        genie(
            tmp.path(),
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let o = run(args(&plan));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("20 hard negatives"), "{stdout}");
    assert!(stdout.contains("fox"), "{stdout}");
    let text = std::fs::read_to_string(&plan).unwrap();
    assert_eq!(text.lines().count(), 20);
    assert!(text.lines().all(|l| l.contains("\"target\":\"fox\"")));
    let again = tmp.path().join("again.jsonl");
    assert!(run(args(&again)).status.success());
    assert_eq!(std::fs::read(&again).unwrap(), text.as_bytes());

    // A pairs file naming a class that does not exist: one error line, no plan written.
    let pairs = tmp.path().join("pairs.txt");
    std::fs::write(&pairs, "dog,../x\n").unwrap();
    let bad = tmp.path().join("bad.jsonl");
    let mut a = args(&bad);
    a.extend([
        "--mode".into(),
        "pairs".into(),
        "--pairs".into(),
        pairs.display().to_string(),
    ]);
    refused(&run(a), &["error:", "../x"], &bad);
}

#[test]
fn warm_run_fills_the_cache_shard_by_shard_and_skips_what_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_dataset(tmp.path());
    let plan = tmp.path().join("plan.jsonl");
    let cache = tmp.path().join("cache");
    let engine = ["--model", "tiny", "--steps", "2"];
    let p = plan.display().to_string();
    let c = cache.display().to_string();
    let d = data.display().to_string();
    let mut args = vec![
        "warm",
        "plan",
        "--data",
        &d,
        "--levels",
        "0.5,0.8",
        "--per-class",
        "3",
    ];
    args.extend(engine);
    args.extend(["--out", &p]);
    assert!(genie(tmp.path(), &args).status.success());
    let planned = std::fs::read_to_string(&plan).unwrap().lines().count();
    assert_eq!(planned, 6);

    let run = |shard: &str| {
        let mut a = vec!["warm", "run", "--plan", &p, "--cache", &c, "--shard", shard];
        a.extend(engine);
        genie(tmp.path(), &a)
    };
    let mut generated = 0;
    for shard in ["0/2", "1/2"] {
        let o = run(shard);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stderr = String::from_utf8_lossy(&o.stderr);
        let to_generate: usize = stderr
            .lines()
            .find_map(|l| l.strip_suffix(" to generate"))
            .and_then(|l| l.rsplit(", ").next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{stderr}"));
        generated += to_generate;
        assert!(tmp
            .path()
            .join(format!("plan.jsonl.done/{}", shard.replace('/', "-of-")))
            .exists());
    }
    assert_eq!(generated, planned, "the two shards split the plan exactly");
    let o = genie(tmp.path(), &["cache", "stats", &c, "--json"]);
    assert!(o.status.success());
    // A rerun generates nothing.
    let o = run("0/2");
    assert!(String::from_utf8_lossy(&o.stderr).contains(" 0 to generate"));
    // A plan made with other engine options is refused, naming the mismatch.
    let mut a = vec!["warm", "run", "--plan", &p, "--cache", &c, "--shard", "0/1"];
    a.extend(["--model", "tiny", "--steps", "3"]);
    std::fs::remove_dir_all(&cache).unwrap();
    let o = genie(tmp.path(), &a);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not match this engine"));
}

/// Runs `genie warm plan` on `data` with the tiny engine and extra arguments into
/// `home/plan.jsonl`; returns the plan's path and line count.
fn warm_plan(home: &Path, data: &Path, extra: &[&str]) -> (std::path::PathBuf, usize) {
    let plan = home.join("plan.jsonl");
    let d = data.display().to_string();
    let p = plan.display().to_string();
    let mut args = vec![
        "warm", "plan", "--data", &d, "--model", "tiny", "--steps", "2",
    ];
    args.extend(extra);
    args.extend(["--out", &p]);
    let o = genie(home, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let planned = std::fs::read_to_string(&plan).unwrap().lines().count();
    (plan, planned)
}

/// The first entry of the plan at `plan`.
fn first_plan_entry(plan: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(plan).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

/// `genie warm run` on one shard with the tiny engine (2 steps, as planned above).
fn warm_run(home: &Path, plan: &Path, cache: &str, shard: &str) -> Output {
    let p = plan.display().to_string();
    genie(
        home,
        &[
            "warm", "run", "--plan", &p, "--cache", cache, "--shard", shard, "--model", "tiny",
            "--steps", "2",
        ],
    )
}

/// The number before `label` in `text` (`… 12 to generate`).
fn number_before(text: &str, label: &str) -> usize {
    let head = text
        .split(label)
        .next()
        .filter(|_| text.contains(label))
        .unwrap_or_else(|| panic!("no {label:?} in {text}"));
    head.rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {label:?} in {text}"))
}

fn orange_pixels(path: &Path) -> usize {
    let img = image::open(path).unwrap().to_rgb8();
    img.pixels().filter(|p| p.0 == [230, 110, 0]).count()
}

#[test]
fn warm_end_to_end_plan_three_shards_status_sheet_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let data = write_dataset(home);
    std::fs::write(data.join("dog/broken.png"), b"not an image").unwrap();
    std::fs::create_dir_all(data.join("wolf")).unwrap();
    let plan = home.join("plan.jsonl");
    let d = data.display().to_string();
    let p = plan.display().to_string();
    let o = genie(
        home,
        &argv![
            "warm plan --data",
            (&d),
            "--model tiny --steps 2 --levels 0.5,0.8 --per-class 2 --out",
            (&p),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("\"wolf\""),
        "the empty class is named: {stderr}"
    );
    let planned = std::fs::read_to_string(&plan).unwrap().lines().count();
    assert!(planned >= 4, "fox and wolf each get sources: {planned}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("plan.jsonl.summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["entries"], planned);

    let cache = home.join("cache").display().to_string();
    let status = |shards: &str| {
        genie(
            home,
            &[
                "warm", "status", "--plan", &p, "--cache", &cache, "--shards", shards,
            ],
        )
    };
    // Before any run (no cache folder yet, then an empty one): everything is missing.
    for _ in 0..2 {
        let o = status("3");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(3),
            "{stdout}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            stdout.contains(&format!("0 cached, {planned} missing")),
            "{stdout}"
        );
        std::fs::create_dir_all(home.join("cache")).unwrap();
    }
    assert!(warm_run(home, &plan, &cache, "0/3").status.success());
    let o = status("3");
    assert_eq!(
        o.status.code(),
        Some(3),
        "incomplete: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("sbatch --array=1-2 "), "{stderr}");
    assert!(
        stderr.contains("--shard 2/3") && stderr.contains("--model tiny"),
        "{stderr}"
    );

    for shard in ["1/3", "2/3"] {
        let o = warm_run(home, &plan, &cache, shard);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The shard count comes from the done markers when not given.
    let o = genie(home, &["warm", "status", "--plan", &p, "--cache", &cache]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    assert!(
        stdout.contains("in 3 shards") && stdout.contains("complete"),
        "{stdout}"
    );
    assert_eq!(number_before(&stdout, " cached,"), planned, "{stdout}");

    // A sheet of the first planned pair, first without and then with a recorded Ada choice.
    let first = first_plan_entry(&plan);
    let source = first["source"].as_str().unwrap().to_string();
    let target = first["target"].as_str().unwrap().to_string();
    let sheet = home.join("sheet.png");
    let s = sheet.display().to_string();
    let draw = || {
        genie(
            home,
            &[
                "sheet", "--cache", &cache, "--source", &source, "--target", &target, "--model",
                "tiny", "--steps", "2", "--levels", "0.5,0.8", "--tile", "64", "--out", &s,
            ],
        )
    };
    let o = draw();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("2 of 2 levels cached; no GeNIe-Ada choice")
    );
    assert_eq!(orange_pixels(&sheet), 0);
    let plain = image::image_dimensions(&sheet).unwrap();
    assert_eq!(plain.0, 8 + 3 * (64 + 8), "source and two levels");

    let store = genie::cache::DiskStore::open_existing(home.join("cache")).unwrap();
    let key: genie::cache::CacheKey = serde_json::from_value(first["key"].clone()).unwrap();
    let meta = genie::cache::Store::get(&store, &key)
        .unwrap()
        .into_entry()
        .unwrap()
        .manifest
        .meta;
    let hash = genie::cache::CacheKey::from_hex(meta.source.as_deref().unwrap()).unwrap();
    let pair = genie::cache::CacheKey::pair(&genie::cache::KeyInputs {
        source: Some(*hash.as_bytes()),
        prompt: &meta.prompt,
        level: meta.level,
        seed: meta.seed,
        fingerprint: &meta.fingerprint,
    });
    let levels = [
        genie::NoiseLevel::parse("0.5").unwrap(),
        genie::NoiseLevel::GENIE_DEFAULT,
    ];
    let cache_handle = genie::cache::Cache::open_dir(home.join("cache"), 0).unwrap();
    let record =
        genie::cache::AdaChoiceRecord::new(&target, &levels, &[0.2, 0.9], Some(levels[1]), 7);
    cache_handle.put_ada_choice(&pair, &record).unwrap();
    let o = draw();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("r* = 0.8 (model version 7)"));
    assert!(
        orange_pixels(&sheet) > 4 * 64,
        "r* is framed and its point marked"
    );
    assert!(
        image::image_dimensions(&sheet).unwrap().1 > plain.1,
        "the d_m curve is drawn"
    );

    // The report: every entry's thumbnail, a section per target class, counts by r.
    let report = home.join("report.html");
    let r = report.display().to_string();
    let o = genie(
        home,
        &["cache", "report", &cache, "--out", &r, "--per-level", "100"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&report).unwrap();
    assert_eq!(html.matches("data:image/png;base64,").count(), planned);
    assert!(
        html.contains(">fox<") && html.contains("<th>r = 0.5</th>"),
        "{html:.2000}"
    );
}

#[test]
fn a_warm_run_killed_with_sigkill_resumes_with_only_the_missing_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let data = write_dataset(home);
    let (plan, planned) = warm_plan(
        home,
        &data,
        &["--levels", "0.5,0.6,0.7,0.8,0.9", "--per-class", "12"],
    );
    let cache_dir = home.join("cache");
    let cache = cache_dir.display().to_string();
    let p = plan.display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_genie"))
        .args([
            "warm", "run", "--plan", &p, "--cache", &cache, "--shard", "0/1",
        ])
        .args(["--model", "tiny", "--steps", "2"])
        .env("GENIE_HOME", home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let committed = || {
        walk(&cache_dir.join("manifests"))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while committed() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was committed"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let survived = committed();
    eprintln!("{survived} of {planned} entries survived the kill");
    assert!(
        survived < planned,
        "killed too late to test anything ({survived} of {planned})"
    );

    // Nothing the kill interrupted is visible as an entry, and nothing is corrupt.
    let o = genie(home, &["cache", "verify", &cache]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stdout)
        .contains(&format!("checked {survived} entries: {survived} ok")));

    let o = warm_run(home, &plan, &cache, "0/1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        number_before(&stderr, " already cached"),
        survived,
        "{stderr}"
    );
    assert_eq!(
        number_before(&stderr, " to generate"),
        planned - survived,
        "{stderr}"
    );
    assert_eq!(
        number_before(&stdout, " images in"),
        planned - survived,
        "{stdout}"
    );
    assert!(number_before(&stdout, " engine calls") >= 1);
    assert_eq!(committed(), planned);
}

#[test]
fn two_warm_runs_on_the_same_shard_leave_no_corrupt_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let data = write_dataset(home);
    let (plan, planned) = warm_plan(home, &data, &["--levels", "0.5,0.8", "--per-class", "6"]);
    let cache_dir = home.join("cache");
    let cache = cache_dir.display().to_string();
    let runs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| warm_run(home, &plan, &cache, "0/1")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &runs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = genie(home, &["cache", "verify", &cache]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("checked {planned} entries: {planned} ok, 0 bad")),
        "{stdout}"
    );
    // Losers of a race delete their content: one content file per entry, no temporary files.
    let objects = walk(&cache_dir.join("objects")).len();
    assert_eq!(objects, planned);
    assert!(walk(&cache_dir.join("tmp")).is_empty());
}

#[test]
fn warm_plan_takes_sources_from_a_confusion_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let data = write_dataset(home);
    let matrix = home.join("confusion.csv");
    std::fs::write(
        &matrix,
        "truth\\predicted,fox,cat,dog\nfox,1,3,0\ncat,2,40,0\ndog,0,0,30\n",
    )
    .unwrap();
    let m = matrix.display().to_string();
    let (plan, planned) = warm_plan(
        home,
        &data,
        &[
            "--levels",
            "0.8",
            "--per-class",
            "50",
            "--sources",
            "confusion",
            &m,
        ],
    );
    let text = std::fs::read_to_string(&plan).unwrap();
    assert_eq!(planned, 21, "all of cat's images, none of dog's");
    assert!(text.lines().all(|l| l.contains("\"source_class\":\"cat\"")));

    // A matrix naming a class the dataset lacks is refused, naming it.
    std::fs::write(&matrix, ",fox,wolf\nfox,1,3\n").unwrap();
    let d = data.display().to_string();
    let out = home.join("bad.jsonl").display().to_string();
    let o = genie(
        home,
        &argv![
            "warm plan --data",
            (&d),
            "--model tiny --sources confusion",
            (&m),
            "--out",
            (&out),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"wolf\""));
    let o = genie(
        home,
        &argv![
            "warm plan --data",
            (&d),
            "--model tiny --sources confusion --out",
            (&out),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("confusion FILE"));
}

#[test]
fn the_slurm_script_and_kubernetes_job_run_the_command_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let data = write_dataset(home);
    let (plan, planned) = warm_plan(home, &data, &["--levels", "0.8", "--per-class", "4"]);
    let cache = home.join("cache");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_genie")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/slurm/genie-warm.sbatch");
    for task in 0..2 {
        let o = Command::new("bash")
            .arg(&script)
            .env("PATH", &path)
            .env("GENIE_HOME", home)
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .env("GENIE_PLAN", &plan)
            .env("GENIE_CACHE", &cache)
            .env("GENIE_SHARDS", "2")
            .env("GENIE_ENGINE_ARGS", "--model tiny --steps 2")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let p = plan.display().to_string();
    let c = cache.display().to_string();
    let o = genie(home, &["warm", "status", "--plan", &p, "--cache", &c]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{planned} planned in 2 shards")));

    // Every flag the Kubernetes Job passes is one `genie warm run` takes.
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/kubernetes/genie-warm-job.yaml"),
    )
    .unwrap();
    let help = String::from_utf8_lossy(&genie(home, &["warm", "run", "--help"]).stdout).to_string();
    let flags: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|l| l.split(['=', ' ']).next().unwrap())
        .collect();
    assert!(flags.len() >= 8, "{flags:?}");
    for flag in flags {
        assert!(
            help.contains(&format!("--{flag}")),
            "--{flag} is not a warm run flag"
        );
    }
    assert!(manifest.contains("completionMode: Indexed"));
}

#[test]
fn bench_times_the_engine_per_batch_size_and_refuses_empty_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let o = genie(
        tmp.path(),
        &argv!["bench --model tiny --steps 2 --levels 0.5,0.8 --batch 1,2 --repeats 1 --json",],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for (row, batch) in rows.iter().zip([1, 2]) {
        assert_eq!(row["batch"], batch);
        assert_eq!(row["images_per_call"], batch * 2);
        assert_eq!(row["levels"], serde_json::json!(["0.5", "0.8"]));
        let per_image = row["seconds_per_image"].as_f64().unwrap();
        let per_call = row["seconds_per_call"].as_f64().unwrap();
        assert!(per_image > 0.0 && (per_call / per_image - f64::from(batch * 2)).abs() < 1e-9);
    }
    let o = genie(tmp.path(), &["bench", "--model", "tiny", "--batch", "0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("1..=256"));
}

/// `genie args` in a fresh process that must end within a minute (a blocking open would hang).
fn genie_within_a_minute(home: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(args)
        .env("GENIE_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("genie {args:?} still runs after a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
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

#[test]
fn parity_passes_in_f16_fails_past_its_tolerance_and_names_missing_fixtures() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/fixtures");
    let fixtures = fixtures.to_str().unwrap();
    let o = genie(
        tmp.path(),
        &["parity", "--fixtures", fixtures, "--dtype", "f16", "--json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["dtype"], "f16");
    assert_eq!(report["metric"], "l2_relative");
    assert_eq!(report["checks"].as_array().unwrap().len(), 17);

    let o = genie(
        tmp.path(),
        &["parity", "--fixtures", fixtures, "--tolerance", "1e-9"],
    );
    assert_eq!(o.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("FAIL") && stdout.contains("FAILED"),
        "{stdout}"
    );

    let o = genie(
        tmp.path(),
        &["parity", "--fixtures", tmp.path().to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no parity fixtures"));
}

/// Fresh noise per (source, target, variant): text-to-image variants of one target are
/// different images, two sources of one target draw different noise (their r = 1 images, which
/// never see the source, differ), and the same pair on two runs gives the same pixels.
#[test]
fn every_pair_and_variant_draws_its_own_noise_and_reruns_repeat_it() {
    let tmp = tempfile::tempdir().unwrap();
    let generate = |extra: &[&str], out: &Path| {
        let o = out.display().to_string();
        let mut args = vec!["generate", "--model", "tiny", "--steps", "3", "--out", &o];
        args.extend_from_slice(extra);
        let r = genie(tmp.path(), &args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    };
    // Txt2Img, no source: three variants, three images.
    let t2i = tmp.path().join("t2i");
    generate(
        &["--target", "cat", "--levels", "1", "--variants", "3"],
        &t2i,
    );
    let variants: Vec<Vec<u8>> = (0..3)
        .map(|v| std::fs::read(t2i.join(format!("r1000-v{v}.png"))).unwrap())
        .collect();
    assert_ne!(variants[0], variants[1]);
    assert_ne!(variants[1], variants[2]);
    assert_ne!(variants[0], variants[2]);
    // Two sources of one target: their r = 1 images differ, so their noise does.
    let sources = tmp.path().join("sources");
    std::fs::create_dir(&sources).unwrap();
    for (i, name) in ["a.png", "b.png"].iter().enumerate() {
        image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([x as u8 * 3, y as u8 * 2, 90 * i as u8])
        })
        .save(sources.join(name))
        .unwrap();
    }
    let two = tmp.path().join("two");
    let dir = sources.display().to_string();
    generate(
        &[
            "--source-dir",
            &dir,
            "--targets",
            "cat",
            "--levels",
            "1,0.8",
        ],
        &two,
    );
    assert_ne!(
        std::fs::read(two.join("a/cat/r1000.png")).unwrap(),
        std::fs::read(two.join("b/cat/r1000.png")).unwrap()
    );
    // The same pair again, in a fresh run without a shared cache: the same pixels.
    let again = tmp.path().join("again");
    generate(
        &[
            "--source-dir",
            &dir,
            "--targets",
            "cat",
            "--levels",
            "1,0.8",
        ],
        &again,
    );
    for f in ["a/cat/r0800.png", "b/cat/r1000.png"] {
        assert_eq!(
            std::fs::read(two.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f}"
        );
    }
}

/// A class-name file: ids stay the labels (folders, keys), prompts say the names; two ids
/// sharing a name stay two classes; unknown ids and colliding output names are errors before
/// anything is generated.
#[test]
fn class_name_files_name_the_prompts_and_keep_ids_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let names = tmp.path().join("names.txt");
    std::fs::write(
        &names,
        "n02012849 crane\nn03126707 crane\nn01440764 tench, Tinca tinca\n",
    )
    .unwrap();
    let n = names.display().to_string();
    let s = sample();
    let out = tmp.path().join("out");
    let o = out.display().to_string();
    let cache = tmp.path().join("cache");
    let c = cache.display().to_string();
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate", "--model", "tiny", "--steps", "2", "--levels", "0.8", "--source", &s,
        ];
        args.extend_from_slice(extra);
        genie(tmp.path(), &args)
    };
    let run = |targets: &str, out: &str| {
        generate(&[
            "--class-names",
            &n,
            "--targets",
            targets,
            "--cache",
            &c,
            "--out",
            out,
        ])
    };
    let r = run("n02012849,n03126707", &o);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let a = std::fs::read(out.join("sample/n02012849/r0800.png")).unwrap();
    let b = std::fs::read(out.join("sample/n03126707/r0800.png")).unwrap();
    assert_ne!(a, b, "two cranes are two trajectories");
    let stats = genie(tmp.path(), &["cache", "stats", &c, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        json["by_target"]["crane (n02012849)"]["entries"], 1,
        "{json}"
    );
    assert_eq!(
        json["by_target"]["crane (n03126707)"]["entries"], 1,
        "{json}"
    );
    let single = tmp.path().join("single");
    let r = generate(&[
        "--class-names",
        &n,
        "--target",
        "n01440764",
        "--out",
        single.to_str().unwrap(),
    ]);
    assert!(r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("\"a photo of a tench.\""),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    for (targets, expected) in [
        ("n02012849,n99999999", "\"n99999999\""),
        ("n02012849,n02012849", "given twice"),
    ] {
        let bad = tmp.path().join("bad");
        let r = run(targets, bad.to_str().unwrap());
        refused(&r, &[expected], &bad);
    }
    // Without a file: two names with one folder name would overwrite each other.
    let bad = tmp.path().join("collide");
    let r = generate(&[
        "--targets",
        "golden retriever,golden_retriever",
        "--out",
        bad.to_str().unwrap(),
    ]);
    refused(&r, &["golden_retriever/"], &bad);
}

#[test]
fn warm_plan_takes_prompts_from_a_class_name_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_dataset(tmp.path());
    let names = tmp.path().join("names.csv");
    std::fs::write(
        &names,
        "folder,name,superclass\ndog,puppy,animal\ncat,kitten,animal\nfox,red fox,animal\n",
    )
    .unwrap();
    let n = names.display().to_string();
    let (plan, _) = warm_plan(
        tmp.path(),
        &data,
        &["--class-names", &n, "--variants", "2", "--levels", "0.8"],
    );
    let entries = genie::warm::read_plan(&plan).unwrap();
    assert_eq!(
        entries.len(),
        50,
        "the Few class's quota, two variants per source"
    );
    assert!(entries
        .iter()
        .all(|e| e.target == "fox" && e.prompt == "a photo of a red fox, a type of animal."));
    assert_eq!(entries.iter().filter(|e| e.variant == 1).count(), 25);
    let seeds: std::collections::HashSet<u64> = entries.iter().map(|e| e.seed).collect();
    assert_eq!(
        seeds.len(),
        50,
        "each variant of each source draws its own noise"
    );
    // A folder the file does not name is an error that names it.
    std::fs::write(&names, "dog,puppy\ncat,kitten\n").unwrap();
    let bad = tmp.path().join("bad.jsonl");
    let r = genie(
        tmp.path(),
        &argv![
            "warm plan --data",
            (data.to_str().unwrap()),
            "--model tiny --class-names",
            (&n),
            "--out",
            (bad.to_str().unwrap()),
        ],
    );
    refused(&r, &["\"fox\""], &bad);
}

/// Folders named by WordNet id prompt with ImageNet's names from genie's built-in table (the plan,
/// and the manifests of the images `warm run` makes from it, say "tench", never its id), the run
/// says which names it used, and a WordNet id outside ImageNet-1k without `--class-names` is an
/// error that names the flag and writes nothing.
#[test]
fn wordnet_folders_prompt_with_imagenet_names() {
    let tmp = tempfile::tempdir().unwrap();
    // tench (n01440764) is the Few class.
    let data = write_dataset_named(tmp.path(), ["n01443537", "n01484850", "n01440764"]);
    let plan = tmp.path().join("plan.jsonl");
    let p = plan.display().to_string();
    let d = data.display().to_string();
    let o = genie(
        tmp.path(),
        &[
            "warm", "plan", "--data", &d, "--model", "tiny", "--steps", "2", "--levels", "0.8",
            "--out", &p,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("built-in ImageNet-1k table"), "{stderr}");
    let entries = genie::warm::read_plan(&plan).unwrap();
    // Every image of the other two classes is a source (22 + 21, under the quota of 50).
    assert_eq!(entries.len(), 43);
    assert!(entries
        .iter()
        .all(|e| e.target == "n01440764" && e.prompt == "a photo of a tench."));

    let cache = tmp.path().join("cache");
    let o = warm_run(tmp.path(), &plan, cache.to_str().unwrap(), "0/1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifests: Vec<String> = walk(&cache)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .filter(|m| m.contains("\"prompt\""))
        .collect();
    assert_eq!(manifests.len(), 43);
    assert!(manifests
        .iter()
        .all(|m| m.contains("a photo of a tench.") && !m.contains("a photo of a n0")));

    std::fs::rename(data.join("n01484850"), data.join("n00000042")).unwrap();
    let bad = tmp.path().join("bad.jsonl");
    let o = genie(
        tmp.path(),
        &[
            "warm",
            "plan",
            "--data",
            &d,
            "--model",
            "tiny",
            "--out",
            bad.to_str().unwrap(),
        ],
    );
    refused(&o, &["n00000042", "--class-names"], &bad);
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

/// A planned source that cannot be read holds back its own entries only: the rest of the shard is
/// made, the run fails naming it, `warm status` says why entries are missing, and once the source
/// is back a rerun completes the shard.
#[test]
fn an_unreadable_plan_source_is_skipped_counted_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let data = write_dataset(home);
    let (plan, planned) = warm_plan(home, &data, &["--levels", "0.5,0.8", "--per-class", "3"]);
    let first = first_plan_entry(&plan);
    let source = std::path::PathBuf::from(first["source"].as_str().unwrap());
    let held_back = std::fs::read_to_string(&plan)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("{:?}", source.display().to_string())))
        .count();
    assert!(
        held_back >= 1 && held_back < planned,
        "{held_back} of {planned}"
    );
    let aside = home.join("aside.png");
    std::fs::rename(&source, &aside).unwrap();
    let cache = home.join("cache").display().to_string();

    let o = warm_run(home, &plan, &cache, "0/1");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("1 sources cannot be read"), "{stderr}");
    assert!(stderr.contains(&source.display().to_string()), "{stderr}");
    assert!(!home.join("plan.jsonl.done/0-of-1").exists());
    let p = plan.display().to_string();
    let o = genie(home, &["warm", "status", "--plan", &p, "--cache", &cache]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{} cached, {held_back} missing",
            planned - held_back
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{held_back} missing entries wait on sources that could not be read"
        )),
        "{stdout}"
    );

    std::fs::rename(&aside, &source).unwrap();
    let o = warm_run(home, &plan, &cache, "0/1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(home.join("plan.jsonl.done/0-of-1").exists());
    assert!(!home.join("plan.jsonl.done/skipped-0-of-1").exists());
}

/// Files with identical pixels are one source: the plan holds their entries once, and its summary
/// (printed and written beside it) counts what the plan holds, not what was drawn.
#[test]
fn warm_plan_counts_identical_sources_once() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let data = write_dataset(home);
    // Every source image becomes the same picture under its own name.
    for class in ["dog", "cat"] {
        for entry in std::fs::read_dir(data.join(class)).unwrap() {
            std::fs::copy(data.join("dog/0.png"), entry.unwrap().path()).unwrap();
        }
    }
    let (_, planned) = warm_plan(home, &data, &["--levels", "0.5", "--per-class", "6"]);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("plan.jsonl.summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["entries"], planned);
    assert!(planned < 6, "identical sources collapse: {planned}");
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
