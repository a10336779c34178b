//! Helpers shared by the tests: deterministic cache keys, content, metadata and randomness; child
//! test processes; private copies of model and fixture folders.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout};
use std::sync::Arc;

use genie::cache::{CacheKey, EntryMeta, KeyInputs};
pub use genie::testing::{FakeFactory, Gate};
use genie::{EngineFingerprint, NoiseLevel};
use image::Rgb;

/// A command line: each string literal split at spaces into words, each parenthesised
/// expression (or name) one word as it is (paths, values with spaces).
macro_rules! argv {
    ($($part:tt),* $(,)?) => {{
        let mut words: Vec<String> = Vec::new();
        $(argv!(@push words, $part);)*
        words
    }};
    (@push $words:ident, $literal:literal) => {
        $words.extend($literal.split_whitespace().map(String::from))
    };
    (@push $words:ident, $word:tt) => {
        $words.push($word.to_string())
    };
}

/// The fingerprint of a test engine (one step, no guidance) named `model`, making `resolution` px.
pub fn engine_fingerprint(model: &str, resolution: u32) -> EngineFingerprint {
    EngineFingerprint {
        model: model.into(),
        scheduler: "none".into(),
        steps: 1,
        guidance: "1".into(),
        resolution,
        dtype: "f32".into(),
        algorithm_version: 1,
    }
}

/// Noise levels from thousandths (800 is r = 0.8).
pub fn levels(thousandths: &[u16]) -> Vec<NoiseLevel> {
    thousandths
        .iter()
        .map(|&t| NoiseLevel::from_thousandths(t).unwrap())
        .collect()
}

/// The colour of a [`ColourEngine`] image: the crossover from "source" (red) to "target"
/// (green) happens between r = 0.5 and r = 0.6, so GeNIe-Ada must choose 0.6.
pub fn level_colour(level: NoiseLevel) -> Rgb<u8> {
    match level.thousandths() {
        ..=500 => Rgb([250, 5, 0]),
        t => Rgb([(t / 100) as u8, 240 - (t / 100) as u8, (t / 10) as u8]),
    }
}

/// The tests' engine: a flat image of [`level_colour`] per level, after `gate` lets it pass.
pub fn colour_factory(fp: EngineFingerprint, side: u32, gate: Arc<Gate>) -> FakeFactory {
    FakeFactory::new(fp, side, |_, level| level_colour(level)).with_gate(gate)
}

/// Says that a test skipped part of its work: on stderr (libtest shows it with `--nocapture`) and,
/// when `GENIE_SKIP_LOG` names a file, as a line appended to it, so that `.ci/run` can list every
/// skip after the run (libtest hides a passing test's output).
pub fn skipped(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("GENIE_SKIP_LOG") {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            eprintln!("cannot append to GENIE_SKIP_LOG: {e}");
        }
    }
}

pub fn fingerprint() -> EngineFingerprint {
    EngineFingerprint {
        model: "test-model@rev".into(),
        scheduler: "ddim(eta=0)".into(),
        steps: 50,
        guidance: "7.5".into(),
        resolution: 64,
        dtype: "f32".into(),
        algorithm_version: 1,
    }
}

/// The key of test entry `n` (its seed).
pub fn key(n: u64) -> CacheKey {
    CacheKey::new(&KeyInputs {
        source: Some([9; 32]),
        prompt: "a photo of a test.",
        level: NoiseLevel::GENIE_DEFAULT,
        seed: n,
        fingerprint: &fingerprint(),
    })
}

pub fn meta(target: &str, n: u64) -> EntryMeta {
    EntryMeta {
        target: target.into(),
        prompt: "a photo of a test.".into(),
        level: NoiseLevel::GENIE_DEFAULT,
        seed: n,
        source: Some("09".repeat(32)),
        fingerprint: fingerprint(),
        width: 64,
        height: 64,
    }
}

/// `len` pseudo-random bytes determined by `seed`.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// splitmix64: small, seeded, good enough to pick keys, sizes and delays.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// Every file (not folder) below `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Runs this test binary again as a child process running only the ignored test `name` of
/// `module` (the caller's `module_path!()`).
pub fn child_command(module: &str, name: &str) -> std::process::Command {
    child_command_at(
        &std::env::current_exe().expect("path of the test binary"),
        module,
        name,
    )
}

/// [`child_command`] with the test binary at `exe` (e.g. a copy others may run).
pub fn child_command_at(exe: &Path, module: &str, name: &str) -> std::process::Command {
    // libtest names a test by its path inside the test crate: `it::cache_crash` -> `cache_crash::name`.
    let in_crate = module.split_once("::").map_or("", |(_, rest)| rest);
    let test = if in_crate.is_empty() {
        name.to_string()
    } else {
        format!("{in_crate}::{name}")
    };
    let mut command = std::process::Command::new(exe);
    command.args([
        test.as_str(),
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    command
}

/// Reads the child's stdout until a line ending in `ready`; panics (with the child's exit
/// status) if the child ends first.
pub fn wait_for_line(child: &mut Child, ready: &str) -> BufReader<ChildStdout> {
    let stdout = child.stdout.take().expect("child stdout is piped");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).expect("read child stdout");
        if read == 0 {
            let status = child.wait().expect("wait for child");
            panic!("child ended ({status}) before printing {ready:?}");
        }
        // libtest prints "test <name> ... " without a newline before the test runs, so the
        // marker may share its line.
        if line.trim_end().ends_with(ready) {
            return reader;
        }
    }
}

/// Copies a folder tree (regular files and folders only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The plain batcher: hands its items back.
#[derive(Clone)]
pub struct Identity;

impl
    burn::data::dataloader::batcher::Batcher<
        genie::loader::ImageItem,
        Vec<genie::loader::ImageItem>,
    > for Identity
{
    fn batch(
        &self,
        items: Vec<genie::loader::ImageItem>,
        _device: &burn::tensor::Device,
    ) -> Vec<genie::loader::ImageItem> {
        items
    }
}

/// Asserts that a command failed and its standard error says each of `says`.
pub fn failed_saying(output: &std::process::Output, says: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it succeeded: {stderr}");
    assert!(
        says.iter().all(|s| stderr.contains(s)),
        "{says:?} not all in: {stderr}"
    );
}

/// In a child started by [`child_command`]: opens the disk cache its parent named in `dir_env`,
/// reads the number in `number_env`, and prints `ready` once open. `None` when the variable is
/// unset: the ignored test was run by hand, not as a child, and does nothing.
pub fn child_store(
    dir_env: &str,
    number_env: &str,
    ready: &str,
) -> Option<(genie::cache::DiskStore, Option<u64>)> {
    use std::io::Write;
    let dir = std::env::var_os(dir_env)?;
    let number = std::env::var(number_env).ok().and_then(|s| s.parse().ok());
    let store = genie::cache::DiskStore::open(&dir).expect("child opens the cache");
    println!("{ready}");
    std::io::stdout().flush().expect("flush stdout");
    Some((store, number))
}

/// A child process killed (and reaped) when dropped, so a failed assertion leaves none behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
