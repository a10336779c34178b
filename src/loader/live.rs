//! [`LiveModel`]: snapshots of the model being trained, and the background thread that runs
//! GeNIe-Ada with them to choose r* per (source, target) pair.
//!
//! The training loop calls [`LiveModel::observe`] after its optimiser step; every `every` calls a
//! copy of `model.valid()` (cheap: burn shares parameter buffers) becomes the current snapshot
//! with a new version number. The selector embeds, with the user's [`FeatureExtractor`], each
//! pair's source, its generated images and its target's real images, runs
//! [`crate::ada::select`] and records r* for that version. Pairs are re-scored as versions move
//! on; no new diffusion is needed, because every level is already cached.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use burn::module::Module;
use burn::tensor::Tensor;

use super::augmenter::{AdaRecord, AdaWork, Augmenter};
use super::item::GenieItem;
use crate::ada;
use crate::sync::lock;

/// Turns items into embeddings with a model: usually the model's backbone (the layer before the
/// classifier head) on a batch built by your own batcher.
///
/// ```ignore
/// impl FeatureExtractor<Cnn, ImageDatasetItem> for Features {
///     fn embed(&self, model: &Cnn, items: Vec<ImageDatasetItem>) -> Tensor<2> {
///         model.features(self.batcher.batch(items, &self.device).images)
///     }
/// }
/// ```
pub trait FeatureExtractor<M, I>: Send + Sync + 'static {
    /// One row per item, in order.
    fn embed(&self, model: &M, items: Vec<I>) -> Tensor<2>;
}

/// How often the live model is snapshotted and how much the selector does per round.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// Publish a snapshot every this many `observe` calls (the first call always publishes).
    pub every: usize,
    /// Pairs scored per selector round (one embedding call each).
    pub pairs_per_round: usize,
    /// How long the selector sleeps when it has nothing to do.
    pub idle_wait: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            every: 50,
            pairs_per_round: 8,
            idle_wait: Duration::from_millis(200),
        }
    }
}

/// Selector counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectorStats {
    pub snapshots: u64,
    /// Pairs scored (a level chosen).
    pub scored: u64,
    /// Pairs that could not be scored (degenerate embeddings, missing images, extractor panics).
    pub unscorable: u64,
}

struct Shared<M> {
    snapshot: Mutex<Option<(M, u64)>>,
    wake: Condvar,
    stop: AtomicBool,
    version: AtomicU64,
    scored: AtomicU64,
    unscorable: AtomicU64,
}

/// The model being trained, as GeNIe-Ada sees it; see the module docs.
pub struct LiveModel<M> {
    shared: Arc<Shared<M>>,
    every: usize,
    calls: AtomicUsize,
    thread: Option<JoinHandle<()>>,
}

impl<M: Module + 'static> LiveModel<M> {
    /// Starts the selector thread for `augmenter`'s pairs.
    pub fn start<I: GenieItem, F: FeatureExtractor<M, I>>(
        augmenter: Arc<Augmenter<I>>,
        extractor: F,
        config: LiveConfig,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            snapshot: Mutex::new(None),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            version: AtomicU64::new(0),
            scored: AtomicU64::new(0),
            unscorable: AtomicU64::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let round = config.pairs_per_round.max(1);
        let idle = config.idle_wait;
        let thread = std::thread::Builder::new()
            .name("genie-ada".into())
            .spawn(move || select_loop(&thread_shared, &augmenter, &extractor, round, idle))?;
        Ok(LiveModel {
            shared,
            every: config.every.max(1),
            calls: AtomicUsize::new(0),
            thread: Some(thread),
        })
    }

    /// Call after each optimiser step; publishes `model.valid()` every `every` calls.
    pub fn observe(&self, model: &M) {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if n % self.every == 0 {
            self.publish(model.valid());
        }
    }

    /// Makes `model` the current snapshot at once; returns its version (1, 2, …).
    pub fn publish(&self, model: M) -> u64 {
        let version = self.shared.version.fetch_add(1, Ordering::AcqRel) + 1;
        *lock(&self.shared.snapshot) = Some((model, version));
        self.shared.wake.notify_all();
        version
    }

    /// The version of the latest snapshot (0 before the first).
    pub fn version(&self) -> u64 {
        self.shared.version.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> SelectorStats {
        SelectorStats {
            snapshots: self.version(),
            scored: self.shared.scored.load(Ordering::Relaxed),
            unscorable: self.shared.unscorable.load(Ordering::Relaxed),
        }
    }

    /// Stops the selector after its current pair and waits for it.
    pub fn stop(mut self) -> SelectorStats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        halt(&self.shared, &mut self.thread);
    }
}

impl<M> Drop for LiveModel<M> {
    fn drop(&mut self) {
        halt(&self.shared, &mut self.thread);
    }
}

fn halt<M>(shared: &Shared<M>, thread: &mut Option<JoinHandle<()>>) {
    shared.stop.store(true, Ordering::Release);
    shared.wake.notify_all();
    if let Some(thread) = thread.take() {
        if thread.join().is_err() {
            tracing::error!("the GeNIe-Ada selector thread panicked");
        }
    }
}

fn select_loop<M: Module, I: GenieItem, F: FeatureExtractor<M, I>>(
    shared: &Shared<M>,
    augmenter: &Augmenter<I>,
    extractor: &F,
    round: usize,
    idle: Duration,
) {
    // Prototypes per target for the snapshot they were computed with.
    let mut prototypes: HashMap<usize, (u64, Vec<f64>)> = HashMap::new();
    while !shared.stop.load(Ordering::Acquire) {
        // Only the version is read while idle; the model is cloned once there is work for it.
        let version = lock(&shared.snapshot).as_ref().map(|(_, v)| *v);
        let work = version.map_or_else(Vec::new, |v| augmenter.ada_work(v, round));
        let snapshot = if work.is_empty() {
            None
        } else {
            lock(&shared.snapshot).clone()
        };
        let Some((model, version)) = snapshot else {
            let guard = lock(&shared.snapshot);
            let _ = shared
                .wake
                .wait_timeout(guard, idle)
                .unwrap_or_else(|e| e.into_inner());
            continue;
        };
        for w in work {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            let pair = w.pair;
            let scored = std::panic::catch_unwind(AssertUnwindSafe(|| {
                score(augmenter, extractor, &model, version, w, &mut prototypes)
            }));
            let record = match scored {
                Ok(Ok(choice)) => {
                    shared.scored.fetch_add(1, Ordering::Relaxed);
                    AdaRecord {
                        level: Some(choice.level),
                        curve: choice.curve,
                        model_version: version,
                    }
                }
                Ok(Err(reason)) => {
                    shared.unscorable.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(pair, %reason, "GeNIe-Ada cannot score a pair; keeping the fixed level");
                    AdaRecord {
                        level: None,
                        curve: Vec::new(),
                        model_version: version,
                    }
                }
                Err(_) => {
                    shared.unscorable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        pair,
                        "the feature extractor panicked; keeping the fixed level"
                    );
                    AdaRecord {
                        level: None,
                        curve: Vec::new(),
                        model_version: version,
                    }
                }
            };
            augmenter.record_choice(pair, record);
        }
    }
}

/// One embedding per item, as rows of `f32`; a wrong row count or unreadable tensor is an error.
pub(crate) fn embed<M, I, F: FeatureExtractor<M, I>>(
    extractor: &F,
    model: &M,
    items: Vec<I>,
) -> Result<Vec<Vec<f32>>, String> {
    let n = items.len();
    let tensor = extractor.embed(model, items);
    let [rows, dim] = tensor.dims();
    if rows != n {
        return Err(format!(
            "the extractor gave {rows} embeddings for {n} items"
        ));
    }
    let values = tensor
        .try_into_data()
        .map_err(|e| format!("{e:?}"))?
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    Ok(values.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
}

fn score<M, I: GenieItem, F: FeatureExtractor<M, I>>(
    augmenter: &Augmenter<I>,
    extractor: &F,
    model: &M,
    version: u64,
    work: AdaWork<I>,
    prototypes: &mut HashMap<usize, (u64, Vec<f64>)>,
) -> Result<ada::AdaChoice, String> {
    let prototype = match prototypes.get(&work.target) {
        Some((v, p)) if *v == version => p.clone(),
        _ => {
            let items = augmenter.prototype_items(work.target);
            let embedded = embed(extractor, model, items)?;
            let p = ada::prototype(&embedded).map_err(|e| e.to_string())?;
            prototypes.insert(work.target, (version, p.clone()));
            p
        }
    };
    let mut items = Vec::with_capacity(work.keys.len() + 1);
    items.push(work.source.clone());
    for key in &work.keys {
        let image = augmenter
            .cache()
            .get_image(key)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{key} is no longer cached"))?;
        let item = work
            .source
            .with_generated(&image, work.target, &key.to_string())
            .map_err(|e| e.to_string())?;
        items.push(item);
    }
    let source = items.remove(0);
    choose(
        extractor,
        model,
        augmenter.levels(),
        source,
        items,
        &prototype,
    )
}

/// Algorithm 1 for one pair: embeds the source and its generated images (one per level, in
/// order) in one call, and picks the level after the largest jump towards `prototype`.
pub(crate) fn choose<M, I, F: FeatureExtractor<M, I>>(
    extractor: &F,
    model: &M,
    levels: &[crate::engine::NoiseLevel],
    source: I,
    generated: Vec<I>,
    prototype: &[f64],
) -> Result<ada::AdaChoice, String> {
    let mut items = Vec::with_capacity(generated.len() + 1);
    items.push(source);
    items.extend(generated);
    let embedded = embed(extractor, model, items)?;
    ada::select(levels, &embedded[0], prototype, &embedded[1..]).map_err(|e| e.to_string())
}
