//! The README's main job keeps working: `examples/long_tail.rs` and `examples/few_shot.rs` run
//! end to end on the tiny engine (short settings), and what they print adds up.
//!
//! `cargo test` builds the examples before it runs any test; with `cargo test --test it examples::`
//! alone they may be missing, and the test says how to build them.

use std::path::{Path, PathBuf};
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

fn run(name: &str, args: &[String]) -> String {
    run_in(name, args, None)
}

/// Runs an example; with `home`, as `GENIE_HOME` (where the tiny model is written).
/// Without `--cache`, and without `home`, the example's cache is a temporary one
/// (`--fresh-cache`), never the user's.
fn run_in(name: &str, args: &[String], home: Option<&Path>) -> String {
    let mut command = Command::new(example(name));
    command.args(args).env_remove("BURN_DEVICE");
    if home.is_none() && !args.iter().any(|a| a == "--cache") {
        command.arg("--fresh-cache");
    }
    if let Some(home) = home {
        command.env("GENIE_HOME", home);
    }
    let output = command.output().expect("the example starts");
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
        &argv![
            "--epochs 3 --steps 2 --per-class 6 --cache",
            (cache.path().display())
        ],
    );
    // Accuracy per group, for the baseline and with hard negatives.
    let accuracy = out
        .split("accuracy by group")
        .nth(1)
        .expect("the accuracy section");
    let groups: Vec<Vec<f64>> = ["Many", "Medium", "Few"]
        .iter()
        .map(|group| {
            let acc = numbers(accuracy, group);
            assert!(
                acc.len() >= 2 && acc.iter().all(|a| (0.0..=100.0).contains(a)),
                "{group}: {acc:?}"
            );
            acc
        })
        .collect();
    // Overall accuracy is the groups' accuracies weighted by their test items, so it lies
    // between the lowest and the highest of them, in each run; balanced accuracy is a percentage.
    let overall = numbers(accuracy, "Overall");
    for (run, &all) in overall.iter().enumerate() {
        let of_groups = groups.iter().map(|g| g[run]);
        let (lo, hi) = of_groups.fold((f64::MAX, f64::MIN), |(l, h), a| (l.min(a), h.max(a)));
        assert!(
            lo - 0.05 <= all && all <= hi + 0.05,
            "overall {all} outside [{lo}, {hi}]"
        );
    }
    let balanced = numbers(accuracy, "Balanced");
    assert!(
        balanced.len() == overall.len() && balanced.iter().all(|a| (0.0..=100.0).contains(a)),
        "{balanced:?}"
    );
    // "hard negatives: M mixed into batches, P pairs, G images generated, D requests deferred"
    // The paper's protocol: every planned image exists before the GeNIe run trains (Ada:
    // five levels for each of the 18 pairs).
    // Throughput compares warm runs (epochs 2 and 3), and the ratio is the two rates'.
    let throughput = numbers(
        &out,
        "throughput (after a warm-up epoch, epochs interleaved):",
    );
    let (plain, with, ratio) = (throughput[0], throughput[1], throughput[2]);
    assert!(plain > 0.0 && with > 0.0, "{throughput:?}");
    assert!(
        (ratio - with / plain).abs() < 0.01 + 0.05 * ratio,
        "{throughput:?}"
    );
    // Not a terminal: the progress is plain lines, not `\r`-joined redraws.
    assert!(!out.contains('\r'), "{out:?}");
    assert!(out.contains("training device: cpu (burn flex)"), "{out}");
    assert!(
        out.contains("generating the hard negatives first: 90/90 images"),
        "{out}"
    );
    let ready = numbers(&out, "ready before training:");
    assert_eq!(ready, [90.0, 90.0], "{out}");
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
    // GeNIe-Ada scored pairs with the live model, and the r* histogram counts each scored
    // pair once; the others are mixed at 0.8.
    // "GeNIe-Ada: S snapshots in N steps, K scorings (U unscorable); first choices embedded F
    // images, re-scoring R (P % of the training compute of T trained items, budget B %); …"
    let ada = numbers(&out, "GeNIe-Ada:");
    let (scorings, first, rescoring, share, budget) = (ada[2], ada[4], ada[5], ada[6], ada[8]);
    assert!(first > 0.0, "first choices embed images: {ada:?}");
    // The budget holds: re-scoring used at most its share (rounded to 0.1 %).
    assert!(share <= budget + 0.05, "{ada:?}");
    assert!(
        (share / 100.0 * 3.0 * ada[7] - rescoring).abs() <= 0.001 * 3.0 * ada[7] + 1.0,
        "the share is re-scoring's items over three per trained item: {ada:?}"
    );
    let histogram = r_histogram(&out);
    let scored: f64 = histogram.iter().sum();
    let unscored = numbers(&out, "pairs without a GeNIe-Ada choice")[1];
    assert!(scored > 0.0, "no pair was scored:\n{out}");
    assert!(
        scorings >= scored,
        "{scorings} scorings, {scored} pairs with a choice"
    );
    assert_eq!(scored + unscored, pairs);
    // Each hard negative is mixed about once per epoch, not in every batch.
    let exposure = numbers(&out, "exposure:");
    let (images, max, epochs) = (exposure[0], exposure[3], exposure[4]);
    assert!(images > 0.0 && max <= epochs, "{exposure:?}");
    assert!(numbers(&out, "peak resident memory:")[0] > 0.0);
}

/// `--seeds a,b`: one run per seed, then each accuracy's mean ± spread over them, from the
/// seeds' own tables; and GeNIe-Ada's reproducible default: the same command twice prints the
/// same tables, bit for bit.
#[test]
fn long_tail_over_seeds_summarises_each_seed_and_repeats_exactly() {
    // No --cache: the default one, in GENIE_HOME, kept across runs.
    let home = tempfile::tempdir().unwrap();
    let args = argv!["--seeds 0,1 --epochs 3 --steps 2 --per-class 4"];
    let first = run_in("long_tail", &args, Some(home.path()));
    let cache_line = format!(
        "cache: {} (kept across runs",
        home.path().join("cache").display()
    );
    assert!(first.contains(&cache_line), "{first}");
    assert!(numbers(&first, "hard negatives:")[2] > 0.0, "{first}");
    // The rows of each seed's table: [baseline, GeNIe] per group.
    let tables: Vec<Vec<(String, [f64; 2])>> = first
        .split("accuracy by group (test set)")
        .skip(1)
        .map(|section| {
            ["Many", "Medium", "Few", "Overall", "Balanced"]
                .iter()
                .map(|&g| {
                    let n = numbers(section, g);
                    (g.to_string(), [n[0], n[1]])
                })
                .collect()
        })
        .collect();
    assert_eq!(tables.len(), 2, "{first}");
    let summary = first
        .split("accuracy over seeds 0, 1")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary over seeds:\n{first}"));
    for (row, (group, _)) in tables[0].iter().enumerate() {
        // "Few  m ± s (a / b)  m ± s (a / b)": baseline, then GeNIe.
        let n = numbers(summary, group);
        for (column, values) in n.chunks(4).enumerate() {
            let seeds = [tables[0][row].1[column], tables[1][row].1[column]];
            let mean = (seeds[0] + seeds[1]) / 2.0;
            assert!(
                (values[0] - mean).abs() < 0.051,
                "{group}: {n:?} vs {seeds:?}"
            );
            assert!((values[2] - seeds[0]).abs() < 0.051, "{group}: {n:?}");
            assert!((values[3] - seeds[1]).abs() < 0.051, "{group}: {n:?}");
            let spread = (seeds[0] - seeds[1]).abs() / 2f64.sqrt();
            assert!(
                (values[1] - spread).abs() < 0.051 + 0.01 * spread,
                "{group}: {n:?}"
            );
        }
    }
    // Again, with every image now cached: nothing generated, the same accuracies, choices and
    // mixing.
    let again = run_in("long_tail", &args, Some(home.path()));
    assert_eq!(numbers(&again, "hard negatives:")[2], 0.0, "{again}");
    let report = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| {
                let l = l.trim();
                [
                    "Many",
                    "Medium",
                    "Few ",
                    "Overall",
                    "Balanced",
                    "r = ",
                    "hard negatives:",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            })
            // Generated counts differ (the first run made the images): compare mixing only.
            .map(|l| l.split(" pairs, ").next().unwrap_or(l).to_string())
            .collect()
    };
    assert_eq!(report(&first), report(&again));
    assert!(report(&first).iter().any(|l| l.trim().starts_with("r = ")));
    // The seeds differ (data, weights, order): the spread is not an artefact of one run.
    assert_ne!(tables[0], tables[1], "{first}");
}

/// The counts of the `r = …: n` lines of a report.
fn r_histogram(out: &str) -> Vec<f64> {
    out.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("r = "))
        .map(|l| numbers(l, "r = ")[1])
        .collect()
}

/// The few-shot protocol: every method of Table 1 on the same episodes, its table in Markdown
/// and CSV; a rerun over the same cache does no diffusion and prints the same table.
#[test]
fn few_shot_compares_every_method_and_reruns_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    let args = argv![
        "--model tiny --steps 4 --episodes 2 --queries 4 --cache",
        (cache.display()),
        "--out",
        (out.display()),
        "--sweep"
    ];
    let first = run("few_shot", &args);
    let generated = numbers(&first, "generated ")[0];
    // 5-way 1-shot, 2 episodes: up to 4 images per class and method, GeNIe-Ada's at 5 levels.
    assert!(generated > 0.0, "{first}");
    let csv = std::fs::read_to_string(out.join("few_shot.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let slugs: Vec<&str> = rows.iter().map(|r| r.split(',').next().unwrap()).collect();
    assert_eq!(
        slugs,
        [
            "none",
            "weak",
            "strong",
            "cutmix",
            "mixup",
            "img2img-l",
            "img2img-h",
            "txt2img",
            "genie",
            "genie-ada",
            "genie@0.5",
            "genie@0.6",
            "genie@0.7",
            "genie@0.8",
            "genie@0.9"
        ]
    );
    // The sweep's r = 0.8 is GeNIe's own images (same pairs, seeds and keys): the same numbers.
    let fields = |slug: &str| {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("{slug},")))
            .unwrap();
        row.split(',')
            .skip(4)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(fields("genie"), fields("genie@0.8"));
    assert_eq!(
        r_histogram(&first).len(),
        5,
        "Table 4's five levels: {first}"
    );
    let png = image::open(out.join("few_shot_sweep.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);
    for row in &rows {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(&fields[1..4], ["5", "1", "2"], "{row}");
        let mean: f64 = fields[4].parse().unwrap();
        assert!((0.0..=100.0).contains(&mean), "{row}");
    }
    let md = std::fs::read_to_string(out.join("few_shot.md")).unwrap();
    assert_eq!(md.lines().count(), 2 + 15, "{md}");
    assert!(first.contains(&md), "the printed table is the written one");

    let again = run("few_shot", &args);
    assert_eq!(numbers(&again, "generated ")[0], 0.0, "{again}");
    assert_eq!(
        std::fs::read_to_string(out.join("few_shot.csv")).unwrap(),
        csv
    );
}

/// A training device that is not built is named with the feature that builds it; `BURN_DEVICE`
/// is read as burn reads it.
#[test]
fn examples_name_a_training_device_they_cannot_open() {
    let args = ["--model", "tiny", "--train-device", "cuda"];
    example_fails_saying("few_shot", &args, None, &["genie serve"]);
    if genie::loader::built_gpu_backends().is_empty() {
        let args = ["--model", "tiny"];
        example_fails_saying(
            "long_tail",
            &args,
            Some("vulkan"),
            &["--features burn-vulkan"],
        );
    }
}

#[test]
fn few_shot_names_an_unknown_method() {
    let args = ["--model", "tiny", "--methods", "none,magic"];
    let says = ["unknown method \"magic\"", "genie-ada"];
    example_fails_saying("few_shot", &args, None, &says);
}

/// Runs example `name` with `args` and `BURN_DEVICE` set to `burn_device` (or unset), and
/// asserts that it fails saying each of `says`.
fn example_fails_saying(name: &str, args: &[&str], burn_device: Option<&str>, says: &[&str]) {
    let mut command = Command::new(example(name));
    command.args(args).env_remove("BURN_DEVICE");
    if let Some(device) = burn_device {
        command.env("BURN_DEVICE", device);
    }
    crate::support::failed_saying(&command.output().unwrap(), says);
}

/// Pre-warm, then train: `genie warm plan` and `genie warm run` on an image folder, then the
/// long-tail example on the same folder with that plan and no generator. Every hard negative
/// mixed is a cache hit and every planned pair is used.
#[test]
fn long_tail_online_generates_while_it_trains() {
    let out = run(
        "long_tail",
        &argv!["--online --model tiny --epochs 3 --steps 2 --per-class 6 --skip-baseline"],
    );
    assert!(
        !out.contains("generating the hard negatives first"),
        "nothing is generated before training:\n{out}"
    );
    // Pairs start as their sources pass through the batcher, and ready ones are mixed.
    let totals = numbers(&out, "hard negatives:");
    let (mixed, pairs, generated) = (totals[0], totals[1], totals[2]);
    assert!(pairs > 0.0 && pairs <= 18.0, "{totals:?}");
    assert!(generated > 0.0 && mixed > 0.0, "{totals:?}");
}

#[test]
fn long_tail_trains_on_a_pre_warmed_plan_with_the_generator_off() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let counts = [60usize, 40, 25, 6, 4];
    for split in ["train", "test"] {
        for (class, &count) in counts.iter().enumerate() {
            let dir = data.join(split).join(genie::synthetic::CLASS_NAMES[class]);
            std::fs::create_dir_all(&dir).unwrap();
            let n = if split == "train" { count } else { 5 };
            for i in 0..n {
                let seed = (i + 1000 * usize::from(split == "test")) as u64;
                genie::synthetic::render(class, seed, 48)
                    .unwrap()
                    .save(dir.join(format!("{i:03}.png")))
                    .unwrap();
            }
        }
    }
    let genie_cli = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_genie"))
            .args(args)
            .env("GENIE_HOME", home.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let plan = home.path().join("plan.jsonl");
    let cache = home.path().join("cache");
    let (p, c) = (plan.display().to_string(), cache.display().to_string());
    let train = data.join("train").display().to_string();
    let engine = ["--model", "tiny", "--steps", "2"];
    let mut args = vec![
        "warm",
        "plan",
        "--data",
        &train,
        "--per-class",
        "5",
        "--out",
        &p,
    ];
    args.extend(engine);
    genie_cli(&args);
    let mut args = vec!["warm", "run", "--plan", &p, "--cache", &c];
    args.extend(engine);
    genie_cli(&args);

    let d = data.display().to_string();
    let out = run_in(
        "long_tail",
        &argv![
            "--data",
            (d),
            "--plan",
            (p),
            "--cache",
            (c),
            "--no-generator --model tiny --steps 2 --epochs 3 --skip-baseline --image-size 16"
        ],
        Some(home.path()),
    );
    // Two Few classes, five planned pairs each.
    let started = numbers(&out, "plan:");
    assert_eq!(started, vec![10.0, 10.0], "{out}");
    let totals = numbers(&out, "hard negatives:");
    let (mixed, generated, misses) = (totals[0], totals[2], totals[4]);
    assert!(mixed > 0.0, "{out}");
    assert_eq!(generated, 0.0, "the generator is off");
    assert_eq!(misses, 0.0, "every hard negative mixed was a cache hit");
    let exposure = numbers(&out, "exposure:");
    assert_eq!(exposure[0], 10.0, "every planned pair became ready: {out}");
    assert!(exposure[1] >= 1.0, "every planned pair was used: {out}");
}

/// The fine-tuning example end to end with the tiny engine: a backbone pre-trained on the Many
/// classes is written as a PyTorch-named checkpoint, loaded back and fine-tuned in burn's
/// `SupervisedTraining` with GenieBatcher, ConfusionMetric and the observed model.
#[test]
fn finetune_loads_its_checkpoint_and_trains_with_hard_negatives() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stdout = run_in(
        "finetune",
        &argv![
            "--model tiny --steps 2 --pretrain-epochs 1 --epochs 2 --out",
            (out.display())
        ],
        Some(dir.path()),
    );
    let checkpoint = out.join("pretrained-resnet18.safetensors");
    assert!(checkpoint.is_file(), "{stdout}");
    assert!(
        stdout.contains(&format!("wrote {}", checkpoint.display())),
        "{stdout}"
    );
    for group in ["Many", "Few"] {
        let accuracy = numbers(&stdout, group)[0];
        assert!((0.0..=100.0).contains(&accuracy), "{stdout}");
    }
    // Pairs were started from the batches and the confusion snapshots were read.
    let counts = numbers(&stdout, "hard negatives:");
    assert!(counts[1] > 0.0, "pairs: {stdout}");
    assert!(counts[4] > 0.0, "confusion snapshots: {stdout}");
}
