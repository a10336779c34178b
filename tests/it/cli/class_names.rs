//! Class-name files and WordNet ids: the prompts say the names, the ids stay the labels.

use super::*;

/// A class-name file: ids stay the labels (folders, keys), prompts say the names; two ids
/// sharing a name stay two classes; unknown ids and colliding output names are errors before
/// anything is generated.
#[test]
fn class_name_files_name_the_prompts_and_keep_ids_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let n = write_text(
        tmp.path(),
        "names.txt",
        "n02012849 crane\nn03126707 crane\nn01440764 tench, Tinca tinca\n",
    );
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
    let n = write_text(
        tmp.path(),
        "names.csv",
        "folder,name,superclass\ndog,puppy,animal\ncat,kitten,animal\nfox,red fox,animal\n",
    );
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
    write_text(tmp.path(), "names.csv", "dog,puppy\ncat,kitten\n");
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
