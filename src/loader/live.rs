//! [`LiveModel`]: snapshots of the model being trained, and the background thread that runs
//! GeNIe-Ada with them to choose r* per (source, target) pair.
//!
//! The training loop calls [`LiveModel::observe`] after its optimiser step; every `every` calls a
//! copy of `model.valid()` (cheap: burn shares parameter buffers) becomes a snapshot with a new
//! version number, with the round of pairs it will score. The selector embeds, with the user's
//! [`FeatureExtractor`], each pair's source, its generated images and its target's real images,
//! runs [`crate::ada::select`] and records r* for that version. Pairs are re-scored as versions
//! move on; no new diffusion is needed, because every level is already cached.
//!
//! Every pair gets its first choice at the first snapshot after its levels are cached. Re-scoring
//! has a budget ([`LiveConfig::share`], 2 % of the training compute by default): a round takes the
//! least recently scored pairs, as many as the budget affords, so none starves. By default
//! ([`ScoringMode::Reproducible`]) a round is planned at a fixed step and its choices apply at
//! the next snapshot, so the same seed gives the same batches in every run.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Tensor;
use crossbeam::channel::{Receiver, Sender};

use super::augmenter::{AdaRecord, AdaRound, AdaWork, Augmenter};
use super::item::GenieItem;
use crate::ada;
use crate::policy::PairId;
use crate::sync::lock;

/// Turns items into embeddings with a model: usually the model's backbone (the layer before the
/// classifier head) on a batch built by your own batcher.
///
/// ```ignore
/// impl FeatureExtractor<Cnn, ImageItem> for Features {
///     fn embed(&self, model: &Cnn, items: Vec<ImageItem>) -> Tensor<2> {
///         model.features(self.batcher.batch(items, &self.device).images)
///     }
/// }
/// ```
pub trait FeatureExtractor<M, I>: Send + Sync + 'static {
    /// One row per item, in order.
    fn embed(&self, model: &M, items: Vec<I>) -> Tensor<2>;
}

/// When the selector's choices take effect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScoringMode {
    /// Each snapshot's pairs are fixed when it is taken, scored in the background while
    /// training goes on, and their choices applied at the next snapshot (or [`LiveModel::sync`]),
    /// which first waits for them. Batches then see choices at the same steps in every run:
    /// the same seed gives the same choices and the same batches, bit for bit, on one machine.
    #[default]
    Reproducible,
    /// Choices apply the moment they are scored and training never waits, but thread timing
    /// decides which batches see which choice, so two runs differ. For when scoring is slow
    /// next to a snapshot interval.
    Asynchronous,
}

/// How often the live model is snapshotted, how much scoring it may cost, and when choices
/// take effect.
///
/// New settings may be added: start from [`LiveConfig::default`] and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LiveConfig {
    /// Consider a snapshot every this many `observe` calls (optimiser steps). One is taken when
    /// a pair awaits its first choice or the budget affords re-scoring one, so under a small
    /// budget snapshots come less often.
    pub every: usize,
    /// The share of training compute re-scoring may use, counted in items: a trained item costs
    /// [`TRAINED_ITEM_COST`] embedded items (forward and backward), and scoring a pair embeds
    /// its source, one image per level and, once per snapshot, its target's prototype items.
    /// A pair's first choice is outside the budget (it is part of making the hard negative, and
    /// a pair without one is mixed at the fixed level): every pair is scored at the first
    /// snapshot after its levels are cached. `f64::INFINITY` re-scores every pair at every
    /// snapshot.
    pub share: f64,
    /// When rounds are scored: as soon as possible, or at fixed steps (reproducible).
    pub mode: ScoringMode,
}

/// Embedded items one trained item is worth in the budget: a training step is a forward pass and
/// a backward pass (about twice the forward's work), scoring a forward pass only.
pub const TRAINED_ITEM_COST: f64 = 3.0;

/// Items embedded per extractor call when a round scores several pairs.
const EMBED_BATCH: usize = 64;

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            every: 50,
            share: 0.02,
            mode: ScoringMode::Reproducible,
        }
    }
}

/// What the selector did and what it cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelectorStats {
    /// `observe` calls (optimiser steps) seen.
    pub steps: u64,
    /// Snapshots taken (model versions).
    pub snapshots: u64,
    /// Pairs scored (a level chosen).
    pub scored: u64,
    /// Pairs that could not be scored (degenerate embeddings, missing images, extractor panics).
    pub unscorable: u64,
    /// Items embedded for scoring (sources, generated images, prototypes).
    pub embedded: u64,
    /// Of those, the items embedded for pairs' first choices (outside the budget).
    pub embedded_first: u64,
    /// Items trained while there was something to score: what the budget is a share of.
    pub trained: u64,
    /// Seconds the selector spent scoring.
    pub scoring_seconds: f64,
    /// Seconds training waited for a round to finish (reproducible mode only).
    pub waited_seconds: f64,
}

impl SelectorStats {
    /// The share of the training compute that re-scoring used (what the budget limits):
    /// items embedded within the budget over [`TRAINED_ITEM_COST`] × trained items.
    pub fn compute_share(&self) -> f64 {
        if self.trained == 0 {
            return 0.0;
        }
        (self.embedded - self.embedded_first) as f64 / (TRAINED_ITEM_COST * self.trained as f64)
    }
}

/// A request to the selector thread; each is answered on `reply` once handled, which is how
/// the training thread orders its effects against its own steps.
enum Message<M> {
    /// Plan a round under the budget and, if it is not empty, take `model` as a new version and
    /// score the round. Answered with the new version, if any, as soon as the round is planned.
    Snapshot {
        model: M,
        unbudgeted: bool,
        reply: Sender<Option<u64>>,
    },
    /// Apply the choices of the round scored last (after it has finished).
    Commit { reply: Sender<()> },
}

#[derive(Default)]
struct Counters {
    version: AtomicU64,
    scored: AtomicU64,
    unscorable: AtomicU64,
    embedded: AtomicU64,
    embedded_first: AtomicU64,
    trained: AtomicU64,
    scoring_nanos: AtomicU64,
    waited_nanos: AtomicU64,
    /// A round is being scored (asynchronous mode skips snapshots meanwhile).
    busy: AtomicBool,
    /// The selector should stop after the batch in hand.
    stopping: AtomicBool,
}

/// The model being trained, as GeNIe-Ada sees it; see the module docs.
pub struct LiveModel<M> {
    counters: Arc<Counters>,
    config: LiveConfig,
    calls: AtomicUsize,
    messages: Mutex<Option<Sender<Message<M>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<M: Module + 'static> LiveModel<M> {
    /// Starts the selector thread for `augmenter`'s pairs.
    pub fn start<I: GenieItem, F: FeatureExtractor<M, I>>(
        augmenter: Arc<Augmenter<I>>,
        extractor: F,
        config: LiveConfig,
    ) -> std::io::Result<Self> {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = crossbeam::channel::unbounded();
        let mut selector = Selector {
            augmenter,
            extractor,
            counters: Arc::clone(&counters),
            share: if config.share.is_nan() {
                0.0
            } else {
                config.share.max(0.0)
            },
            mode: config.mode,
            credit: 0.0,
            items_seen: 0,
            pending: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("genie-ada".into())
            .spawn(move || selector.run(&rx))?;
        Ok(LiveModel {
            counters,
            config: LiveConfig {
                every: config.every.max(1),
                ..config
            },
            calls: AtomicUsize::new(0),
            messages: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Call after each optimiser step. Every `every` calls it applies the last round's choices
    /// (reproducible mode: after waiting for the round) and takes `model.valid()` as a new
    /// snapshot when the budget affords scoring at least one pair.
    pub fn observe(&self, model: &M) {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if (n + 1) % self.config.every != 0 {
            return;
        }
        self.snapshot(model.valid(), false);
    }

    /// Takes `model` as a snapshot now and scores every due pair with it, whatever the budget;
    /// returns its version (1, 2, …), or `None` when no pair is due. In reproducible mode its
    /// choices apply at the next snapshot or [`sync`](Self::sync).
    pub fn publish(&self, model: M) -> Option<u64> {
        self.snapshot(model, true)
    }

    fn snapshot(&self, model: M, unbudgeted: bool) -> Option<u64> {
        match self.config.mode {
            ScoringMode::Reproducible => self.sync(),
            // The selector is still on the last round: this snapshot is skipped, not queued.
            ScoringMode::Asynchronous if self.counters.busy.load(Ordering::Acquire) => return None,
            ScoringMode::Asynchronous => {}
        }
        self.ask(|reply| Message::Snapshot {
            model,
            unbudgeted,
            reply,
        })
        .flatten()
    }

    /// Waits for the round being scored and applies its choices. Reproducible mode does this at
    /// every snapshot; call it yourself to see the last snapshot's choices before training ends.
    pub fn sync(&self) {
        let started = Instant::now();
        self.ask(|reply| Message::Commit { reply });
        let waited = started.elapsed().as_nanos() as u64;
        self.counters
            .waited_nanos
            .fetch_add(waited, Ordering::Relaxed);
    }

    /// Sends a message and waits for its answer (`None` once the selector has stopped).
    fn ask<R>(&self, message: impl FnOnce(Sender<R>) -> Message<M>) -> Option<R> {
        let (reply, answer) = crossbeam::channel::bounded(1);
        let sent = lock(&self.messages)
            .as_ref()
            .is_some_and(|tx| tx.send(message(reply)).is_ok());
        if !sent {
            return None;
        }
        answer.recv().ok()
    }

    /// The version of the latest snapshot (0 before the first).
    pub fn version(&self) -> u64 {
        self.counters.version.load(Ordering::Acquire)
    }

    /// Counters of the selector so far.
    pub fn stats(&self) -> SelectorStats {
        let c = &self.counters;
        let seconds = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64 * 1e-9;
        SelectorStats {
            steps: self.calls.load(Ordering::Relaxed) as u64,
            snapshots: self.version(),
            scored: c.scored.load(Ordering::Relaxed),
            unscorable: c.unscorable.load(Ordering::Relaxed),
            embedded: c.embedded.load(Ordering::Relaxed),
            embedded_first: c.embedded_first.load(Ordering::Relaxed),
            trained: c.trained.load(Ordering::Relaxed),
            scoring_seconds: seconds(&c.scoring_nanos),
            waited_seconds: seconds(&c.waited_nanos),
        }
    }

    /// Applies the last round's choices, stops the selector and waits for it.
    pub fn stop(self) -> SelectorStats {
        self.sync();
        self.halt();
        self.stats()
    }

    fn halt(&self) {
        // Closing the channel ends the selector's loop after the message in hand.
        self.counters.stopping.store(true, Ordering::Release);
        lock(&self.messages).take();
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                tracing::error!("the GeNIe-Ada selector thread panicked");
            }
        }
    }
}

impl<M> Drop for LiveModel<M> {
    fn drop(&mut self) {
        self.counters.stopping.store(true, Ordering::Release);
        lock(&self.messages).take();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

/// The selector thread's state: the run it scores for and its budget account.
struct Selector<I, F> {
    augmenter: Arc<Augmenter<I>>,
    extractor: F,
    counters: Arc<Counters>,
    share: f64,
    mode: ScoringMode,
    /// Embedded items the budget still affords.
    credit: f64,
    /// `augmenter.items_batched()` at the last snapshot.
    items_seen: u64,
    /// Verdicts of the last round, not applied yet (reproducible mode).
    pending: Vec<(PairId, AdaRecord)>,
}

impl<I: GenieItem, F> Selector<I, F> {
    fn run<M: Module>(&mut self, messages: &Receiver<Message<M>>)
    where
        F: FeatureExtractor<M, I>,
    {
        let pool = scoring_pool();
        for message in messages {
            match message {
                Message::Snapshot {
                    model,
                    unbudgeted,
                    reply,
                } => {
                    let Some((version, round)) = self.plan(unbudgeted) else {
                        let _ = reply.send(None);
                        continue;
                    };
                    self.counters.busy.store(true, Ordering::Release);
                    let _ = reply.send(Some(version));
                    let started = Instant::now();
                    let this = &*self;
                    let verdicts = match &pool {
                        Some(pool) => pool.install(move || this.score(&model, version, round)),
                        None => this.score(&model, version, round),
                    };
                    self.counters
                        .scoring_nanos
                        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    match self.mode {
                        ScoringMode::Reproducible => self.pending = verdicts,
                        ScoringMode::Asynchronous => self.apply(verdicts),
                    }
                    self.counters.busy.store(false, Ordering::Release);
                }
                Message::Commit { reply } => {
                    let verdicts = std::mem::take(&mut self.pending);
                    self.apply(verdicts);
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Adds the training done since the last snapshot to the budget (only while there is
    /// something to score, so that an idle start does not bank a burst) and plans the round
    /// the budget affords, under the next version.
    fn plan(&mut self, unbudgeted: bool) -> Option<(u64, AdaRound<I>)> {
        let items = self.augmenter.items_batched();
        let trained = items.saturating_sub(self.items_seen);
        self.items_seen = items;
        if !self.augmenter.has_ada_candidates() {
            return None;
        }
        self.counters.trained.fetch_add(trained, Ordering::Relaxed);
        // An unlimited share is no budget at all: it must not enter the credit, where ∞ · 0 (a
        // snapshot with nothing trained since the last) would be NaN and stop re-scoring for good.
        let budget = if unbudgeted || self.share.is_infinite() {
            u64::MAX
        } else {
            self.credit += self.share * TRAINED_ITEM_COST * trained as f64;
            self.credit as u64
        };
        let version = self.counters.version.load(Ordering::Acquire) + 1;
        let round = self.augmenter.ada_round(version, budget);
        if round.pairs.is_empty() {
            return None;
        }
        self.credit -= round.cost as f64;
        let c = &self.counters;
        c.embedded
            .fetch_add(round.cost + round.first, Ordering::Relaxed);
        c.embedded_first.fetch_add(round.first, Ordering::Relaxed);
        c.version.store(version, Ordering::Release);
        Some((version, round))
    }

    fn apply(&self, verdicts: Vec<(PairId, AdaRecord)>) {
        for (pair, record) in verdicts {
            self.augmenter.record_choice(pair, record);
        }
    }

    /// Scores a round's pairs with one model version: each target's prototype once, then the
    /// pairs' sources and generated images in batches of about [`EMBED_BATCH`] items.
    fn score<M>(&self, model: &M, version: u64, round: AdaRound<I>) -> Vec<(PairId, AdaRecord)>
    where
        F: FeatureExtractor<M, I>,
    {
        let mut prototypes: HashMap<usize, Result<Vec<f64>, String>> = HashMap::new();
        for (target, items) in round.prototypes {
            let prototype = guarded(|| embed(&self.extractor, model, items))
                .and_then(|e| ada::prototype(&e).map_err(|e| e.to_string()));
            prototypes.insert(target, prototype);
        }
        let levels = self.augmenter.levels();
        let mut verdicts = Vec::with_capacity(round.pairs.len());
        let per_chunk = (EMBED_BATCH / (levels.len() + 1)).max(1);
        let mut pairs = round.pairs.into_iter().peekable();
        while pairs.peek().is_some() && !self.counters.stopping.load(Ordering::Acquire) {
            let chunk: Vec<AdaWork<I>> = pairs.by_ref().take(per_chunk).collect();
            // Each pair's items (source first), or why it cannot be scored.
            let mut prepared = Vec::with_capacity(chunk.len());
            for work in chunk {
                let items = match prototypes.get(&work.target) {
                    Some(Ok(_)) => self.pair_items(&work),
                    Some(Err(reason)) => Err(reason.clone()),
                    None => Err("no prototype".to_string()),
                };
                prepared.push((work.pair, work.target, items));
            }
            let all: Vec<I> = prepared
                .iter()
                .filter_map(|(_, _, items)| items.as_ref().ok())
                .flatten()
                .cloned()
                .collect();
            let mut embedded = guarded(|| embed(&self.extractor, model, all)).map(Vec::into_iter);
            for (pair, target, items) in prepared {
                let choice = items.and_then(|items| {
                    let rows: Vec<Vec<f32>> = match &mut embedded {
                        Ok(rows) => rows.by_ref().take(items.len()).collect(),
                        Err(reason) => return Err(reason.clone()),
                    };
                    let Some(Ok(prototype)) = prototypes.get(&target) else {
                        return Err("no prototype".to_string());
                    };
                    ada::select(levels, &rows[0], prototype, &rows[1..]).map_err(|e| e.to_string())
                });
                verdicts.push((pair, self.verdict(pair, version, choice)));
            }
        }
        verdicts
    }

    /// A pair's source and its generated images, one per level, as items.
    fn pair_items(&self, work: &AdaWork<I>) -> Result<Vec<I>, String> {
        let mut items = Vec::with_capacity(work.keys.len() + 1);
        items.push(work.source.clone());
        for key in &work.keys {
            let image = self
                .augmenter
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
        Ok(items)
    }

    fn verdict(
        &self,
        pair: PairId,
        version: u64,
        choice: Result<ada::AdaChoice, String>,
    ) -> AdaRecord {
        match choice {
            Ok(choice) => {
                self.counters.scored.fetch_add(1, Ordering::Relaxed);
                AdaRecord {
                    level: Some(choice.level),
                    curve: choice.curve,
                    model_version: version,
                }
            }
            Err(reason) => {
                self.counters.unscorable.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pair, %reason, "GeNIe-Ada cannot score a pair; keeping the fixed level");
                AdaRecord {
                    level: None,
                    curve: Vec::new(),
                    model_version: version,
                }
            }
        }
    }
}

/// The selector's own one-thread rayon pool, at a low OS priority. burn's CPU backend runs its
/// kernels on the current rayon pool; in the global one, training's, a scoring kernel would
/// hold up every training step that waits for a pool thread. On a pool of its own, scoring
/// takes the cycles training leaves idle, and the training threads go first when both want a
/// core. (GPU backends do not use rayon: there this changes nothing.)
fn scoring_pool() -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "genie-ada-pool".into())
        .start_handler(|_| lower_priority())
        .build()
        .map_err(|e| tracing::warn!(error = %e, "no pool of its own for GeNIe-Ada's scoring"))
        .ok()
}

/// Lowers the calling thread's scheduling priority (niceness 10). Not Linux's `SCHED_IDLE`: a
/// scoring thread that never runs while training keeps the cores busy would make training wait
/// at every reproducible-mode barrier.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory effects; on Linux `who = 0` names the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Runs the user's extractor, turning a panic into an error: a bad batch costs its pairs'
/// verdicts, not the selector.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("the feature extractor panicked".to_string()))
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
