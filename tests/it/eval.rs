//! The few-shot probe against scikit-learn: the same problem (`tests/eval/logreg.json`, made by
//! `tests/eval/make_logreg_fixture.py`) gives the same coefficients, intercepts and accuracy.

use std::path::PathBuf;
use std::process::Output;

use genie::eval::LogisticRegression;

fn matrix(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// Each image's mean colour, channels in 0..=255: the toy backbone of the few-shot tests.
fn mean_colours(images: &[image::RgbImage]) -> Vec<Vec<f32>> {
    images
        .iter()
        .map(|img| {
            let n = img.pixels().len() as f32;
            (0..3)
                .map(|c| img.pixels().map(|p| p.0[c] as f32).sum::<f32>() / n)
                .collect()
        })
        .collect()
}

fn labels(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|y| y.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn the_probe_matches_scikit_learn_logistic_regression() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/eval/logreg.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let classes = fixture["classes"].as_u64().unwrap() as usize;
    let probe = LogisticRegression {
        c: fixture["c"].as_f64().unwrap(),
        ..LogisticRegression::default()
    };
    let fitted = probe
        .fit(&matrix(&fixture["x"]), &labels(&fixture["y"]), classes)
        .unwrap();
    let coef = matrix(&fixture["coef"]);
    let dim = coef[0].len();
    let mut worst = 0f64;
    for (c, row) in coef.iter().enumerate() {
        for (j, &expected) in row.iter().enumerate() {
            worst = worst.max((fitted.weights[c * dim + j] - f64::from(expected)).abs());
        }
    }
    assert!(worst < 1e-4, "coefficients differ by up to {worst:e}");
    for (c, expected) in fixture["intercept"].as_array().unwrap().iter().enumerate() {
        let expected = expected.as_f64().unwrap();
        assert!(
            (fitted.intercepts[c] - expected).abs() < 1e-4,
            "intercept {c}: {} vs {expected}",
            fitted.intercepts[c]
        );
    }
    let accuracy = fitted.accuracy(&matrix(&fixture["x_test"]), &labels(&fixture["y_test"]));
    assert_eq!(accuracy, fixture["test_accuracy"].as_f64().unwrap());
    let train = fitted.accuracy(&matrix(&fixture["x"]), &labels(&fixture["y"]));
    assert_eq!(train, fixture["train_accuracy"].as_f64().unwrap());
}

mod few_shot {
    use std::cell::RefCell;

    use genie::eval::{
        csv_table, markdown_table, run_few_shot, Backbone, Episode, EpisodeSpec, FewShotConfig,
        FewShotError, Generated, GeneratedImages, LogisticRegression, Method,
    };
    use image::{Rgb, RgbImage};

    /// Six classes of 25 flat images; class c is a hue of its own, image i a shade of it.
    fn colour(class: usize, i: usize) -> Rgb<u8> {
        let base = [
            [200, 40, 40],
            [40, 200, 40],
            [40, 40, 200],
            [200, 200, 40],
            [200, 40, 200],
            [40, 200, 200],
        ];
        let shade = (i % 5) as i32 * 8 - 16;
        Rgb(base[class].map(|v: i32| (v + shade).clamp(0, 255) as u8))
    }

    fn split() -> (Vec<Vec<usize>>, Vec<String>) {
        let members = (0..6).map(|c| (c * 25..(c + 1) * 25).collect()).collect();
        let names = (0..6).map(|c| format!("class{c}")).collect();
        (members, names)
    }

    fn image(index: usize) -> Result<RgbImage, String> {
        Ok(RgbImage::from_pixel(8, 8, colour(index / 25, index % 25)))
    }

    /// The mean colour, and a constant so that shades of one hue point the same way.
    struct MeanColour;

    impl Backbone for MeanColour {
        fn features(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, String> {
            Ok(super::mean_colours(images)
                .into_iter()
                .map(|f| {
                    let mut f: Vec<f32> = f.iter().map(|v| v / 255.0).collect();
                    f.push(0.2);
                    f
                })
                .collect())
        }
    }

    /// Generated images as the harness asks for them: the class's own colour for every method
    /// but Txt2Img, which gets the colour of the *next* class of the episode (wrong labels).
    struct Cache {
        asked: RefCell<Vec<(Method, usize, usize)>>,
    }

    impl GeneratedImages for Cache {
        fn images(&self, method: Method, episode: &Episode, way: usize, count: usize) -> Generated {
            self.asked.borrow_mut().push((method, way, count));
            let class = if method == Method::Txt2Img {
                episode.classes[(way + 1) % episode.classes.len()]
            } else {
                episode.classes[way]
            };
            Ok((0..count)
                .map(|i| RgbImage::from_pixel(8, 8, colour(class, i)))
                .collect())
        }
    }

    fn config(methods: Vec<Method>) -> FewShotConfig {
        let mut options = FewShotConfig::default();
        options.spec = EpisodeSpec {
            ways: 3,
            shots: 1,
            queries: 5,
        };
        options.episodes = 6;
        options.seed = 3;
        options.extra_per_shot = 4;
        options.image_size = 8;
        options.probe = LogisticRegression::default();
        options.methods = methods;
        options
    }

    #[test]
    fn every_method_runs_on_the_same_episodes_and_its_table_adds_up() {
        let (members, names) = split();
        let cache = Cache {
            asked: RefCell::new(Vec::new()),
        };
        let config = config(Method::ALL.to_vec());
        let run = |progress: &mut dyn FnMut(usize)| {
            run_few_shot(
                &members,
                &names,
                &image,
                &MeanColour,
                Some(&cache),
                &config,
                progress,
            )
            .unwrap()
        };
        let mut done = Vec::new();
        let results = run(&mut |n| done.push(n));
        assert_eq!(done, (1..=6).collect::<Vec<_>>());
        assert_eq!(results.len(), 10);
        for r in &results {
            assert_eq!(r.per_episode.len(), 6, "{:?}", r.method);
            assert!(r.per_episode.iter().all(|a| (0.0..=100.0).contains(a)));
            assert_eq!(r.accuracy, genie::eval::MeanCi::of(&r.per_episode));
        }
        let by = |m: Method| results.iter().find(|r| r.method == m).unwrap();
        // Flat colours are easy: the support alone classifies every query.
        assert_eq!(by(Method::Plain).accuracy.mean, 100.0);
        // Hard negatives labelled with the wrong class (this cache's Txt2Img) hurt: the generated
        // images do train the probe, under the label they were asked for.
        assert!(
            by(Method::Txt2Img).accuracy.mean < 80.0,
            "{:?}",
            by(Method::Txt2Img)
        );
        assert_eq!(by(Method::Genie).accuracy.mean, 100.0);
        // Each generative method asked once per class of each episode, for 4·K images.
        {
            let asked = cache.asked.borrow();
            assert_eq!(asked.len(), 5 * 6 * 3);
            assert!(asked
                .iter()
                .all(|&(m, _, count)| m.is_generative() && count == 4));
        }

        let md = markdown_table(&results, config.spec);
        assert!(md.starts_with("| method | 3-way 1-shot accuracy (%) | episodes |"));
        assert_eq!(md.lines().count(), 2 + 10);
        assert!(
            md.contains("| GeNIe (r = 0.8) | 100.00 ± 0.00 | 6 |"),
            "{md}"
        );
        let csv = csv_table(&results, config.spec);
        assert_eq!(csv.lines().count(), 1 + 10);
        assert!(csv.contains("\nnone,3,1,6,100.0000,0.0000\n"), "{csv}");
        // Same seed, same episodes and augmentations: the same numbers.
        let again = run(&mut |_| {});
        assert_eq!(results, again);
    }

    #[test]
    fn missing_generated_images_and_unreadable_images_are_named() {
        let (members, names) = split();
        let err = run_few_shot(
            &members,
            &names,
            &image,
            &MeanColour,
            None,
            &config(vec![Method::Plain, Method::Genie]),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(&err, FewShotError::NoGenerated { method } if method == "GeNIe (r = 0.8)"),
            "{err}"
        );
        let broken = |i: usize| {
            if i == 30 {
                Err("truncated PNG".to_string())
            } else {
                image(i)
            }
        };
        let mut config = config(vec![Method::Weak]);
        config.episodes = 40;
        let err = run_few_shot(
            &members,
            &names,
            &broken,
            &MeanColour,
            None,
            &config,
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "image 30: truncated PNG");
    }
}

mod cached {
    use std::sync::Arc;

    use genie::cache::{Cache, EntryMeta, MemoryStore};
    use genie::eval::{
        run_few_shot, sample_episodes, Backbone, CachedEpisodes, EpisodeSpec, FewShotConfig,
        GeneratedImages, LogisticRegression, Method,
    };
    use genie::generator::KeySpace;
    use genie::NoiseLevel;
    use image::{Rgb, RgbImage};

    const BASE: [[u8; 3]; 4] = [[220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 30]];

    fn split() -> (Vec<Vec<usize>>, Vec<String>) {
        let members = (0..4).map(|c| (c * 10..(c + 1) * 10).collect()).collect();
        (members, ["a", "b", "c", "d"].map(String::from).to_vec())
    }

    fn original(index: usize) -> Result<RgbImage, String> {
        let shade = (index % 10) as u8 * 3;
        Ok(RgbImage::from_pixel(
            16,
            16,
            Rgb(BASE[index / 10].map(|v| v.saturating_sub(shade))),
        ))
    }

    struct MeanColour;

    impl Backbone for MeanColour {
        fn features(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, String> {
            Ok(super::mean_colours(images))
        }
    }

    /// A broken backbone: one feature vector short.
    struct Short;

    impl Backbone for Short {
        fn features(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, String> {
            let mut f = super::mean_colours(images);
            f.pop();
            Ok(f)
        }
    }

    /// A generated image: the source's colour below r = 0.7, the target's from 0.7 on, with the
    /// level written into pixel (0, 0)'s blue so that tests can tell levels apart.
    fn generated(source: usize, target: usize, level: NoiseLevel) -> RgbImage {
        let colour = if level.thousandths() >= 700 {
            BASE[target]
        } else {
            original(source).unwrap().get_pixel(0, 0).0
        };
        let mut img = RgbImage::from_pixel(16, 16, Rgb(colour));
        img.put_pixel(
            0,
            0,
            Rgb([colour[0], colour[1], (level.thousandths() / 4) as u8]),
        );
        img
    }

    fn keys() -> KeySpace {
        let fingerprint = crate::support::engine_fingerprint("eval-cached", 16);
        KeySpace::new(fingerprint, 16, split().1)
    }

    fn spec() -> EpisodeSpec {
        EpisodeSpec {
            ways: 3,
            shots: 1,
            queries: 4,
        }
    }

    #[test]
    fn generated_images_come_from_the_cache_and_ada_picks_the_level_after_the_jump() {
        let keys = keys();
        let cache = Cache::new(Arc::new(MemoryStore::new()), 1 << 20);
        let source = CachedEpisodes::new(&keys, &cache, &original, 9).with_backbone(&MeanColour);
        let (members, names) = split();
        let episodes = sample_episodes(&members, &names, spec(), 5, 2).unwrap();
        let methods = [
            Method::Genie,
            Method::GenieAda,
            Method::Img2ImgHigh,
            Method::Txt2Img,
        ];
        // Nothing cached yet: the error names the missing image and what to do.
        let err = source
            .images(Method::Genie, &episodes[0], 0, 4)
            .unwrap_err();
        assert!(
            err.contains("is not in the cache") && err.contains("genie warm run"),
            "{err}"
        );
        // Pre-warm every pair the run needs, as a generator or `genie warm run` would.
        let mut filled = 0;
        for episode in &episodes {
            for way in 0..3 {
                for method in methods {
                    for pair in source.pairs(method, episode, way, 4).unwrap() {
                        assert_eq!(pair.target, episode.classes[way]);
                        if matches!(method, Method::Genie | Method::GenieAda) {
                            assert!(!episode.support[way].contains(&pair.source));
                        } else {
                            assert_eq!(pair.source, episode.support[way][0]);
                        }
                        for (&level, key) in pair.levels.iter().zip(&pair.keys) {
                            let meta = EntryMeta {
                                target: names[pair.target].clone(),
                                prompt: keys.prompt(pair.target),
                                level,
                                seed: pair.seed,
                                source: None,
                                fingerprint: keys.fingerprint().clone(),
                                width: 0,
                                height: 0,
                            };
                            let image = generated(pair.source, pair.target, level);
                            cache.put_image(key, &image, meta).unwrap();
                            filled += 1;
                        }
                    }
                }
            }
        }
        // GeNIe: the other two classes' support images, two variants each, at r = 0.8.
        let pairs = source.pairs(Method::Genie, &episodes[0], 0, 4).unwrap();
        assert_eq!(
            pairs.iter().map(|p| p.variant).collect::<Vec<_>>(),
            [0, 0, 1, 1]
        );
        assert!(pairs
            .iter()
            .all(|p| p.levels == [NoiseLevel::GENIE_DEFAULT]));
        let images = source.images(Method::Genie, &episodes[0], 0, 4).unwrap();
        for (pair, image) in pairs.iter().zip(&images) {
            assert_eq!(
                image,
                &generated(pair.source, pair.target, NoiseLevel::GENIE_DEFAULT)
            );
        }
        // GeNIe-Ada: the largest jump towards the target is between 0.6 and 0.7, so r* = 0.7.
        let ada = source.images(Method::GenieAda, &episodes[0], 1, 4).unwrap();
        let pairs = source.pairs(Method::GenieAda, &episodes[0], 1, 4).unwrap();
        let r07 = NoiseLevel::parse("0.7").unwrap();
        for (pair, image) in pairs.iter().zip(&ada) {
            assert_eq!(image, &generated(pair.source, pair.target, r07));
        }
        // The whole protocol over the complete cache, no generator.
        let mut config = FewShotConfig::default();
        config.spec = spec();
        config.episodes = 5;
        config.seed = 2;
        config.extra_per_shot = 4;
        config.image_size = 16;
        config.probe = LogisticRegression::default();
        config.methods = methods.to_vec();
        let results = run_few_shot(
            &members,
            &names,
            &original,
            &MeanColour,
            Some(&source),
            &config,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(results.len(), 4);
        assert!(filled > 0 && results.iter().all(|r| r.per_episode.len() == 5));
        // A backbone that drops a vector is an error naming it, not a panic.
        let short = CachedEpisodes::new(&keys, &cache, &original, 9).with_backbone(&Short);
        let err = short
            .images(Method::GenieAda, &episodes[0], 1, 4)
            .unwrap_err();
        assert!(err.contains("feature vectors for"), "{err}");
    }
}

/// `genie eval few-shot` end to end on drawn shapes with the tiny engine and the width-4
/// ResNet-18 fixture: an incomplete cache without a generator is an error; `--plan-out` and
/// `genie warm run` fill it; the run then does no diffusion and tables every method; `--generate`
/// on an empty cache gives the same table; bad splits and backbones are named errors.
#[test]
fn eval_few_shot_cli_plans_warms_and_tables_every_method() {
    use std::path::Path;
    let (tmp, home, data) = cli_dirs();
    let classes = genie::synthetic::CLASS_NAMES.len();
    let items = genie::synthetic::balanced_dataset(4, classes, 64, 3).unwrap();
    genie::synthetic::write_image_folder(&items, &data).unwrap();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/eval/resnet18_w4.pth");
    // `set`: (flag, value) replacing the default's value; `extra`: more arguments.
    let run_with = |set: &[(&str, &str)], extra: &[&str]| -> Output {
        let mut args: Vec<String> = "eval few-shot --backbone resnet18 --backbone-width 4 --input-size 32 --ways 3 --shots 1 --queries 2 --episodes 2 --extra-per-shot 1 --model tiny --steps 4"
            .split(' ')
            .map(String::from)
            .collect();
        for (flag, value) in set {
            let at = args.iter().position(|a| a == flag).unwrap() + 1;
            args[at] = value.to_string();
        }
        args.extend(["--data".into(), data.display().to_string()]);
        args.extend(["--backbone-weights".into(), weights.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        genie_cli(&home, &args)
    };
    let run = |extra: &[&str]| run_with(&[], extra);
    let cache = tmp.path().join("cache").display().to_string();

    let o = run(&["--cache", &cache]);
    fails_saying(&o, "not in the cache");
    assert!(
        output_text(&o).contains("--plan-out"),
        "{}",
        output_text(&o)
    );

    let plan = tmp.path().join("plan.jsonl");
    let p = plan.display().to_string();
    let o = run(&["--cache", &cache, "--plan-out", &p]);
    assert!(o.status.success(), "{}", output_text(&o));
    let planned = std::fs::read_to_string(&plan).unwrap().lines().count();
    // Img2Img-L, Img2Img-H, Txt2Img and GeNIe need one image per class and episode, GeNIe-Ada
    // five levels (one of them GeNIe's own): at most 2 · 3 · 8, fewer where episodes share.
    assert!(planned > 0 && planned <= 48, "{planned}");

    let warm = [
        "warm", "run", "--plan", &p, "--cache", &cache, "--model", "tiny", "--steps", "4",
    ];
    let o = genie_cli(&home, &warm.map(String::from));
    assert!(o.status.success(), "{}", output_text(&o));

    let o = run(&["--cache", &cache]);
    assert!(o.status.success(), "{}", output_text(&o));
    let out = output_text(&o);
    assert!(out.contains("0 hard negatives needed"), "{out}");
    assert!(!out.contains("generating"), "{out}");
    for method in genie::eval::Method::ALL {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", method.name())))
            .unwrap_or_else(|| panic!("no row for {}: {out}", method.name()));
        // `| name | mean ± ci | 2 |`: two episodes each.
        assert!(row.ends_with("| 2 |"), "{row}");
    }
    let csv_rows: Vec<&str> = out.lines().filter(|l| l.contains(",3,1,2,")).collect();
    assert_eq!(csv_rows.len(), 10, "{out}");
    for row in &csv_rows {
        let mean: f64 = row.split(',').nth(4).unwrap().parse().unwrap();
        assert!((0.0..=100.0).contains(&mean), "{row}");
    }

    // The same run generating into an empty cache: the same images, the same table.
    let fresh = tmp.path().join("fresh").display().to_string();
    let report = tmp.path().join("report");
    let r = report.display().to_string();
    let o = run(&[
        "--cache",
        &fresh,
        "--generate",
        "--out",
        &r,
        "--methods",
        "genie,genie-ada",
        "--sweep",
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
    let csv = std::fs::read_to_string(report.join("few_shot.csv")).unwrap();
    for slug in ["genie,", "genie-ada,"] {
        let ours = csv.lines().find(|l| l.starts_with(slug)).unwrap();
        assert!(csv_rows.contains(&ours), "{ours} not in {csv_rows:?}");
    }
    assert!(report.join("few_shot_sweep.png").is_file());

    // Bad input, each named.
    let o = run_with(&[("--ways", "20")], &["--cache", &cache]);
    fails_saying(&o, "20-way episodes need 20 classes");
    let o = run_with(&[("--queries", "10")], &["--cache", &cache]);
    fails_saying(&o, "has 4 images");
    let o = run_with(&[("--backbone-width", "8")], &["--cache", &cache]);
    fails_saying(&o, "wrong shape");
    let o = run_with(&[("--backbone", "resnet34")], &["--cache", &cache]);
    fails_saying(&o, "layer1.2.bn1.weight");
    // The backbone's device: cpu (the default) was used above; an unknown one or a GPU backend
    // this build lacks is a named error.
    assert!(out.contains("backbone device: cpu"), "{out}");
    let o = run(&["--cache", &cache, "--train-device", "tpu"]);
    fails_saying(&o, "unknown training device \"tpu\"");
    if genie::loader::built_gpu_backends().is_empty() {
        let o = run(&["--cache", &cache, "--train-device", "vulkan"]);
        fails_saying(&o, "needs genie built with the `burn-vulkan` feature");
    }
}

/// `genie eval long-tail` end to end on drawn long-tailed shapes with the tiny engine and the
/// width-4 ResNet-18: an incomplete cache is an error, `--generate` fills it and the table has
/// a row per method with the groups the split has; a rerun over the complete cache does no
/// diffusion and prints the same table; fine-tuning from PyTorch weights runs; a test folder
/// with other classes is a named error.
#[test]
fn eval_long_tail_cli_trains_every_method_and_repeats_exactly() {
    let (tmp, home, data) = cli_dirs();
    let classes = genie::synthetic::CLASS_NAMES.len();
    let counts = genie::synthetic::long_tail_counts(classes, 24, 3);
    let train = genie::synthetic::long_tail_dataset(&counts, 64, 5).unwrap();
    genie::synthetic::write_image_folder(&train, &data.join("train")).unwrap();
    let test = genie::synthetic::balanced_dataset(3, classes, 64, 5).unwrap();
    genie::synthetic::write_image_folder(&test, &data.join("test")).unwrap();
    let cache = tmp.path().join("cache").display().to_string();
    let run_in = |cache: &str, extra: &[&str]| -> Output {
        let mut args: Vec<String> = "eval long-tail --backbone resnet18 --backbone-width 4 --input-size 32 --epochs 1 --batch-size 32 --per-class 3 --model tiny --steps 4 --cache"
            .split(' ')
            .map(String::from)
            .collect();
        args.push(cache.to_string());
        args.extend(["--data".into(), data.display().to_string()]);
        let mut extra = extra.iter();
        while let Some(&arg) = extra.next() {
            // A flag given above takes the new value in its place (clap refuses repeats).
            match args.iter().position(|a| a == arg) {
                Some(at) if arg.starts_with("--") => {
                    args[at + 1] = extra.next().expect("a value").to_string()
                }
                _ => args.push(arg.to_string()),
            }
        }
        genie_cli(&home, &args)
    };
    let run = |extra: &[&str]| run_in(&cache, extra);
    let table = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| {
                l.starts_with("| ") && !l.starts_with("| method") && !l.starts_with("| ---")
            })
            .map(String::from)
            .collect()
    };

    let o = run(&[]);
    fails_saying(&o, "not in the cache");
    let o = run(&["--train-device", "tpu"]);
    fails_saying(&o, "unknown training device \"tpu\"");

    // Sources from the baseline's confusions (the default): every GeNIe source of a Few class is
    // one of the k classes its model confuses with it most on the training data, written to
    // confusion.csv; the same-class baselines take the class's own images, as many.
    let planned = tmp.path().join("planned");
    let plan = tmp.path().join("plan.jsonl");
    // (The cache is still empty: the plans list every image.)
    let o = run(&[
        "--confused-k",
        "2",
        "--out",
        planned.to_str().unwrap(),
        "--plan-out",
        plan.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(output_text(&o).contains("training the baseline first"));
    let class_ids: Vec<String> = genie::synthetic::CLASS_NAMES
        .iter()
        .map(|c| c.to_string())
        .collect();
    let confusion =
        genie::warm::read_confusion(&planned.join("confusion.csv"), &class_ids).unwrap();
    let entries = genie::warm::read_plan(&plan).unwrap();
    let index = |name: &str| class_ids.iter().position(|c| c == name).unwrap();
    let (mut cross, mut own) = (0, std::collections::HashMap::new());
    for e in &entries {
        if e.source_class == e.target {
            *own.entry(e.r.to_string()).or_insert(0) += 1;
        } else {
            let top = confusion.most_confused_with(index(&e.target), 2);
            assert!(
                top.contains(&index(&e.source_class)),
                "{} is not among the classes most confused with {}: {top:?}",
                e.source_class,
                e.target
            );
            cross += 1;
        }
    }
    // GeNIe-Ada's five levels per pair, and each same-class baseline (Img2Img-L at 0.3,
    // Img2Img-H at 0.7, Txt2Img at 1) as many images as there are pairs.
    assert!(cross > 0 && cross % 5 == 0, "{cross}");
    for r in ["0.3", "0.7", "1.0"] {
        assert_eq!(own.get(r), Some(&(cross / 5)), "{r}: {own:?}");
    }
    assert_eq!(own.len(), 3, "{own:?}");
    // Uniform sources: more source classes than two for some target.
    let uniform = tmp.path().join("uniform.jsonl");
    let o = run(&[
        "--sources",
        "uniform",
        "--methods",
        "genie",
        "--plan-out",
        uniform.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(!output_text(&o).contains("training the baseline first"));
    let mut sources_of: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for e in genie::warm::read_plan(&uniform).unwrap() {
        sources_of
            .entry(e.target)
            .or_default()
            .insert(e.source_class);
    }
    assert!(sources_of.values().any(|s| s.len() > 2), "{sources_of:?}");

    let report = tmp.path().join("report");
    let r = report.display().to_string();
    let o = run(&["--generate", "--out", &r]);
    assert!(o.status.success(), "{}", output_text(&o));
    let first = table(&output_text(&o));
    assert_eq!(first.len(), 6, "{}", output_text(&o));
    assert!(
        output_text(&o).contains("training device: cpu (burn flex)"),
        "{}",
        output_text(&o)
    );
    for (row, name) in first.iter().zip([
        "baseline",
        "Img2Img-L (r = 0.3)",
        "Img2Img-H (r = 0.7)",
        "Txt2Img",
        "GeNIe (r = 0.8)",
        "GeNIe-Ada",
    ]) {
        // No class has more than 100 images: Many is empty; Medium and Few are measured.
        assert!(row.starts_with(&format!("| {name} | - | ")), "{row}");
    }
    assert!(
        output_text(&o).contains("hard negatives added"),
        "{}",
        output_text(&o)
    );
    let csv = std::fs::read_to_string(report.join("long_tail.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert!(report.join("confusion.csv").is_file());

    let o = run(&[]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        !output_text(&o).contains("generating"),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        table(&output_text(&o)),
        first,
        "the same seed gives the same table"
    );

    let weights =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/eval/resnet18_w4.pth");
    let w = weights.display().to_string();
    let o = run(&["--methods", "baseline", "--backbone-weights", &w]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(table(&output_text(&o)).len(), 1);

    // --online: GeNIe-Ada (live) trains while the generator makes its images into an empty
    // cache, the model being trained choosing r*.
    let live_cache = tmp.path().join("live-cache").display().to_string();
    let o = run_in(
        &live_cache,
        &["--methods", "genie-ada-live", "--epochs", "20"],
    );
    assert!(o.status.success(), "{}", output_text(&o));
    let rows = table(&output_text(&o));
    assert_eq!(rows.len(), 2, "{}", output_text(&o));
    assert!(rows[0].starts_with("| baseline | - | "), "{rows:?}");
    assert!(rows[1].starts_with("| GeNIe-Ada (live) | - | "), "{rows:?}");
    let live = output_text(&o);
    let line = live
        .lines()
        .find(|l| l.contains("images generated while training"))
        .unwrap_or_else(|| panic!("{live}"));
    // The pairs asked the generator for their five levels while training (the cache was empty).
    assert!(!line.contains(" 0 levels requested"), "{line}");

    std::fs::create_dir_all(data.join("test/zebra")).unwrap();
    let o = run(&[]);
    fails_saying(&o, "other class folders");
}

/// Runs the `genie` binary offline with its home (the tiny model's folder) in `home`.
/// A temporary folder with the paths of `GENIE_HOME` and the dataset inside it.
fn cli_dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (home, data) = (tmp.path().join("home"), tmp.path().join("data"));
    (tmp, home, data)
}

fn genie_cli(home: &std::path::Path, args: &[String]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(args)
        .env("GENIE_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("BURN_DEVICE")
        .output()
        .unwrap()
}

/// A run's stdout and stderr, together.
fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts that a run failed and said `text`.
fn fails_saying(o: &std::process::Output, text: &str) {
    assert!(!o.status.success(), "{}", output_text(o));
    assert!(output_text(o).contains(text), "{}", output_text(o));
}
