//! `genie generate`, `bench` and `parity` on the tiny model: one PNG per level, the cache, fresh
//! noise per pair and variant.

use super::*;

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
    let generate = |extra: &[String], out: &Path| {
        let mut args = argv!["generate --model tiny --steps 3 --out", (out.display())];
        args.extend_from_slice(extra);
        let r = genie(tmp.path(), &args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    };
    // Txt2Img, no source: three variants, three images.
    let t2i = tmp.path().join("t2i");
    generate(&argv!["--target cat --levels 1 --variants 3"], &t2i);
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
    let dir = sources.display().to_string();
    let both_sources = argv!["--source-dir", (&dir), "--targets cat --levels 1,0.8"];
    let two = tmp.path().join("two");
    generate(&both_sources, &two);
    assert_ne!(
        std::fs::read(two.join("a/cat/r1000.png")).unwrap(),
        std::fs::read(two.join("b/cat/r1000.png")).unwrap()
    );
    // The same pair again, in a fresh run without a shared cache: the same pixels.
    let again = tmp.path().join("again");
    generate(&both_sources, &again);
    for f in ["a/cat/r0800.png", "b/cat/r1000.png"] {
        assert_eq!(
            std::fs::read(two.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f}"
        );
    }
}
