//! The `genie` binary, run as a user runs it: the helpers its tests share, and one file per
//! group of commands.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

mod class_names;
mod generate;
mod refusals;
mod warm;

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

/// Writes `text` to `dir/name`; the path, as the command line takes it.
fn write_text(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn sample() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/sample.png")
        .display()
        .to_string()
}

fn rows(stdout: &[u8]) -> Vec<Vec<String>> {
    String::from_utf8_lossy(stdout)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
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
