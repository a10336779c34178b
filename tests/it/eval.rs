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
