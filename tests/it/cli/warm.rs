//! `genie warm`: plans (uniform, from a confusion matrix), shard-by-shard runs that resume after
//! SIGKILL and race safely, status, sheets, reports, and the Slurm and Kubernetes files.

use super::*;

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
    let m = write_text(
        home,
        "confusion.csv",
        "truth\\predicted,fox,cat,dog\nfox,1,3,0\ncat,2,40,0\ndog,0,0,30\n",
    );
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
    write_text(home, "confusion.csv", ",fox,wolf\nfox,1,3\n");
    let d = data.display().to_string();
    let out = home.join("bad.jsonl").display().to_string();
    // So is `--sources confusion` without its file.
    for (matrix_args, says) in [(vec![m.as_str()], "\"wolf\""), (vec![], "confusion FILE")] {
        let mut args = argv!["warm plan --data", (&d), "--model tiny --sources confusion"];
        args.extend(matrix_args.iter().map(|a| a.to_string()));
        args.extend(argv!["--out", (&out)]);
        refused(&genie(home, &args), &[says], Path::new(&out));
    }
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
