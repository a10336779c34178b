//! The few-shot probe against scikit-learn: the same problem (`tests/eval/logreg.json`, made by
//! `tests/eval/make_logreg_fixture.py`) gives the same coefficients, intercepts and accuracy.

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
        FewShotError, GeneratedImages, LogisticRegression, Method,
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
            Ok(images
                .iter()
                .map(|img| {
                    let n = img.pixels().len() as f32;
                    let mut f: Vec<f32> = (0..3)
                        .map(|c| img.pixels().map(|p| p.0[c] as f32).sum::<f32>() / n / 255.0)
                        .collect();
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
        fn images(
            &self,
            method: Method,
            episode: &Episode,
            way: usize,
            count: usize,
        ) -> Result<Vec<RgbImage>, String> {
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
        FewShotConfig {
            spec: EpisodeSpec {
                ways: 3,
                shots: 1,
                queries: 5,
            },
            episodes: 6,
            seed: 3,
            extra_per_shot: 4,
            image_size: 8,
            probe: LogisticRegression::default(),
            methods,
        }
    }

    #[test]
    fn every_method_runs_on_the_same_episodes_and_its_table_adds_up() {
        let (members, names) = split();
        let cache = Cache {
            asked: RefCell::new(Vec::new()),
        };
        let config = config(Method::ALL.to_vec());
        let mut done = Vec::new();
        let results = run_few_shot(
            &members,
            &names,
            &image,
            &MeanColour,
            Some(&cache),
            &config,
            &mut |n| done.push(n),
        )
        .unwrap();
        assert_eq!(done, (1..=6).collect::<Vec<_>>());
        assert_eq!(results.len(), 8);
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
        assert_eq!(md.lines().count(), 2 + 8);
        assert!(
            md.contains("| GeNIe (r = 0.8) | 100.00 ± 0.00 | 6 |"),
            "{md}"
        );
        let csv = csv_table(&results, config.spec);
        assert_eq!(csv.lines().count(), 1 + 8);
        assert!(csv.contains("\nnone,3,1,6,100.0000,0.0000\n"), "{csv}");
        // Same seed, same episodes and augmentations: the same numbers.
        let again = run_few_shot(
            &members,
            &names,
            &image,
            &MeanColour,
            Some(&cache),
            &config,
            &mut |_| {},
        )
        .unwrap();
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
            matches!(
                err,
                FewShotError::NoGenerated {
                    method: "GeNIe (r = 0.8)"
                }
            ),
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
