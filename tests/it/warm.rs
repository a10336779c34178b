//! Pre-warm shards: for any shard count, every key of a plan belongs to exactly one shard.

use genie::cache::{CacheKey, KeyInputs};
use genie::warm::Shard;
use genie::{EngineFingerprint, NoiseLevel};
use proptest::prelude::*;

fn key(source: [u8; 32], seed: u64) -> CacheKey {
    CacheKey::new(&KeyInputs {
        source: Some(source),
        prompt: "a photo of a cat.",
        level: NoiseLevel::GENIE_DEFAULT,
        seed,
        fingerprint: &EngineFingerprint {
            model: "m".into(),
            scheduler: "dpm".into(),
            steps: 50,
            guidance: "7.5".into(),
            resolution: 512,
            dtype: "f16".into(),
            algorithm_version: 1,
        },
    })
}

proptest! {
    #[test]
    fn shards_partition_a_plan_exactly(
        count in 1u32..64,
        sources in proptest::collection::vec(any::<[u8; 32]>(), 1..200),
    ) {
        let keys: Vec<CacheKey> = sources.iter().enumerate().map(|(i, s)| key(*s, i as u64)).collect();
        let mut owned = vec![0usize; keys.len()];
        for index in 0..count {
            let shard = Shard::new(index, count).unwrap();
            for (i, k) in keys.iter().enumerate() {
                if shard.owns(k) {
                    owned[i] += 1;
                }
            }
        }
        prop_assert!(owned.iter().all(|&n| n == 1));
    }
}

mod planning {
    use genie::generator::KeySpace;
    use genie::policy::SourceStrategy;
    use genie::warm::{build_plan, ImageFolder, PlanMode, PlanOptions};
    use genie::{EngineFingerprint, NoiseLevel};
    use std::path::Path;

    fn write_class(dir: &Path, class: usize, name: &str, count: usize) {
        let class_dir = dir.join(name);
        std::fs::create_dir_all(&class_dir).unwrap();
        for n in 0..count {
            genie::synthetic::render(class, n as u64, 16)
                .unwrap()
                .save(class_dir.join(format!("{n:03}.png")))
                .unwrap();
        }
    }

    /// 30 circles, 25 squares and `triangles` triangles: one class in the tail.
    fn long_tail_folder(triangles: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (class, name, count) in [
            (0, "circle", 30),
            (1, "square", 25),
            (2, "triangle", triangles),
        ] {
            write_class(dir.path(), class, name, count);
        }
        dir
    }

    fn keys(folder: &ImageFolder) -> KeySpace {
        let fingerprint = EngineFingerprint {
            model: "m".into(),
            scheduler: "dpm".into(),
            steps: 50,
            guidance: "7.5".into(),
            resolution: 16,
            dtype: "f32".into(),
            algorithm_version: 1,
        };
        KeySpace::new(fingerprint, 16, folder.classes.clone())
    }

    fn options(mode: PlanMode, per_class: Option<usize>) -> PlanOptions {
        let mut options = PlanOptions::default();
        options.mode = mode;
        options.levels = vec![NoiseLevel::parse("0.5").unwrap(), NoiseLevel::GENIE_DEFAULT];
        options.per_class = per_class;
        options.sources = SourceStrategy::Uniform;
        options.confusion = None;
        options.variants = 1;
        options.seed = 0;
        options
    }

    #[test]
    fn long_tail_plans_the_few_classes_and_skips_unreadable_sources() {
        let dir = long_tail_folder(3);
        std::fs::write(dir.path().join("circle/broken.png"), b"not a png").unwrap();
        std::fs::create_dir_all(dir.path().join("nothing")).unwrap();
        let folder = ImageFolder::scan(dir.path()).unwrap();
        assert_eq!(folder.warnings.len(), 1, "{:?}", folder.warnings);
        let keys = keys(&folder);
        let (entries, summary) =
            build_plan(&folder, &options(PlanMode::LongTail, Some(100)), &keys).unwrap();
        // Targets: triangle (3 images) and the empty class; sources: every readable other image.
        assert_eq!(summary.skipped.len(), 1, "{:?}", summary.skipped);
        assert!(summary.skipped[0].contains("broken.png"));
        let triangle: Vec<_> = entries.iter().filter(|e| e.target == "triangle").collect();
        assert_eq!(triangle.len(), 2 * (30 + 25));
        assert_eq!(entries.len() - triangle.len(), 2 * (30 + 25 + 3));
        assert!(triangle.iter().all(|e| e.source_class != "triangle"));
        assert!(entries.windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(summary.entries, entries.len());
        // The same inputs give the same plan.
        let (again, _) =
            build_plan(&folder, &options(PlanMode::LongTail, Some(100)), &keys).unwrap();
        assert_eq!(again, entries);
        // A key is the online key of the same source, target, level and derived seed.
        let e = &triangle[0];
        let img = genie::image_io::load_source(&e.source, 16).unwrap();
        let source = keys.source(&img).unwrap();
        let t = folder.class_index("triangle").unwrap();
        assert_eq!(source.hash, e.source_hash);
        assert_eq!(e.seed, keys.pair_seed(0, source.hash, t, 0));
        assert_eq!(keys.key(source.hash, t, e.r, e.seed), e.key);
        // Fresh noise per (source, target): every source of a target has its own seed, and
        // the levels of one pair share theirs.
        let mut seeds = std::collections::HashMap::new();
        for e in &triangle {
            let first = *seeds.entry(e.source.clone()).or_insert(e.seed);
            assert_eq!(first, e.seed, "the levels of one pair share one seed");
        }
        let distinct: std::collections::HashSet<u64> = seeds.values().copied().collect();
        assert_eq!(
            distinct.len(),
            seeds.len(),
            "two sources of one target share a seed"
        );
    }

    /// The same dataset, policy and seed give the same pairs and keys whether planned for a
    /// pre-warm or by `OfflinePlan` on the training side.
    #[test]
    fn a_pre_warm_plan_and_the_offline_plan_choose_the_same_pairs() {
        use burn::data::dataset::InMemDataset;
        use genie::loader::{image_item, OfflinePlan};
        use genie::policy::{ClassStats, Policy, PolicyConfig};
        let dir = long_tail_folder(6);
        let folder = ImageFolder::scan(dir.path()).unwrap();
        let keys = keys(&folder);
        let levels = vec![NoiseLevel::GENIE_DEFAULT];
        let mut plan_options = options(PlanMode::LongTail, Some(7));
        plan_options.levels = levels.clone();
        plan_options.seed = 9;
        plan_options.variants = 2;
        let (entries, _) = build_plan(&folder, &plan_options, &keys).unwrap();
        let items: Vec<_> = folder
            .images
            .iter()
            .map(|(path, label)| {
                let img = genie::image_io::open_rgb(path).unwrap();
                image_item(&img, *label, path.display().to_string())
            })
            .collect();
        let dataset = InMemDataset::new(items);
        let stats = ClassStats::from_labels(folder.labels(), folder.classes.len()).unwrap();
        let policy = Policy::long_tail(stats, {
            let mut options = PolicyConfig::long_tail();
            options.per_target = 7;
            options.sources = SourceStrategy::Uniform;
            options.variants = 2;
            options.seed = 9;
            options
        })
        .unwrap();
        let offline = OfflinePlan::new(&dataset, &policy, &keys, &levels, None).unwrap();
        let mut planned: Vec<_> = entries.iter().map(|e| e.key).collect();
        let mut trained: Vec<_> = offline.negatives.iter().map(|n| n.key).collect();
        planned.sort();
        trained.sort();
        assert_eq!(planned.len(), 7);
        assert_eq!(planned, trained);
    }

    #[test]
    fn few_shot_and_pairs_modes() {
        let dir = tempfile::tempdir().unwrap();
        for (c, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            write_class(dir.path(), c, name, 1);
        }
        let folder = ImageFolder::scan(dir.path()).unwrap();
        let keys = keys(&folder);
        let (entries, summary) = build_plan(
            &folder,
            &options(PlanMode::FewShot { shots: 1 }, None),
            &keys,
        )
        .unwrap();
        assert_eq!(entries.len(), 5 * 4 * 2);
        assert_eq!(summary.per_target.len(), 5);
        let pairs = PlanMode::Pairs(vec![("a".into(), "b".into())]);
        let (entries, _) = build_plan(&folder, &options(pairs, None), &keys).unwrap();
        assert_eq!(entries.len(), 2);
        let bad = PlanMode::Pairs(vec![("a".into(), "../x".into())]);
        let err = build_plan(&folder, &options(bad, None), &keys).unwrap_err();
        assert!(err.to_string().contains("\"../x\""), "{err}");
    }
}
