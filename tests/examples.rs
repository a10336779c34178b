//! The README's main job keeps working: `examples/long_tail.rs` and `examples/few_shot.rs` run
//! end to end on the tiny engine (short settings), and what they print adds up.
//!
//! `cargo test` builds the examples before it runs any test; with `cargo test --test examples`
//! alone they may be missing, and the test says how to build them.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-<hash> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary sits in target/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is not built: run `cargo test` (which builds the examples) or `cargo build --examples`",
        path.display()
    );
    path
}

fn run(name: &str, args: &[&str]) -> String {
    let output = Command::new(example(name))
        .args(args)
        .output()
        .expect("the example starts");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The numbers of the line that starts with `prefix` (after trimming), in order.
fn numbers(stdout: &str, prefix: &str) -> Vec<f64> {
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stdout}"));
    line[prefix.len()..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|s| !s.is_empty() && *s != ".")
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn long_tail_runs_and_its_report_adds_up() {
    let cache = tempfile::tempdir().unwrap();
    let out = run(
        "long_tail",
        &[
            "--epochs",
            "3",
            "--steps",
            "2",
            "--per-class",
            "6",
            "--cache",
            cache.path().to_str().unwrap(),
        ],
    );
    // Accuracy per group, for the baseline and with hard negatives.
    let accuracy = out
        .split("accuracy by group")
        .nth(1)
        .expect("the accuracy section");
    for group in ["Many", "Medium", "Few"] {
        let acc = numbers(accuracy, group);
        assert!(
            acc.len() >= 2 && acc.iter().all(|a| (0.0..=100.0).contains(a)),
            "{group}: {acc:?}"
        );
    }
    // "hard negatives: M mixed into batches, P pairs, G images generated, D requests deferred"
    let totals = numbers(&out, "hard negatives:");
    let (mixed, pairs, generated) = (totals[0], totals[1], totals[2]);
    assert_eq!(pairs, 18.0, "3 Few classes × 6 per class");
    assert!(mixed > 0.0 && generated > 0.0, "{totals:?}");
    // Each group's items "seen (s%) → trained (t%)": hard negatives move items from the
    // over-represented groups to the Few classes, one for one.
    let section = out
        .split("training items by group")
        .nth(1)
        .expect("the training items section");
    let counts = |group: &str| {
        let n = numbers(section, group);
        (n[0], n[2])
    };
    let (few_seen, few_trained) = counts("Few");
    let (many_seen, many_trained) = counts("Many");
    let (medium_seen, medium_trained) = counts("Medium");
    assert_eq!(
        few_trained - few_seen,
        mixed,
        "the Few classes gain every hard negative"
    );
    assert_eq!(
        (many_seen - many_trained) + (medium_seen - medium_trained),
        mixed,
        "and the others give up as many real items"
    );
    // The r* histogram covers every pair once.
    let histogram: f64 = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("r = "))
        .map(|l| numbers(l, "r = ")[1])
        .sum();
    assert_eq!(histogram, pairs);
    assert!(numbers(&out, "peak resident memory:")[0] > 0.0);
}

#[test]
fn few_shot_gives_each_episode_the_papers_quota() {
    let out = run(
        "few_shot",
        &["--episodes", "2", "--steps", "2", "--queries", "5"],
    );
    let episodes: Vec<&str> = out.lines().filter(|l| l.starts_with("episode ")).collect();
    assert_eq!(episodes.len(), 2, "{out}");
    for line in episodes {
        // 5-way 1-shot: 4 hard negatives for each of the 5 classes.
        assert!(line.contains("+ 20 hard negatives"), "{line}");
    }
    let mean = numbers(&out, "mean accuracy:");
    assert_eq!(mean.len(), 2);
    assert!(mean.iter().all(|a| (0.0..=100.0).contains(a)), "{mean:?}");
}
