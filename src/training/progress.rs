//! What a run shows while it works: a progress bar per epoch, throughput without the warm-up
//! steps, and skipped files.
use indicatif::{ProgressBar, ProgressStyle};

use super::run::WARMUP_STEPS;
use crate::data::Skipped;

/// The bar of one epoch: on rank 0 when stderr is a terminal; hidden otherwise (in a log file
/// a bar's redraws are noise).
pub struct EpochProgress {
    bar: ProgressBar,
}

impl EpochProgress {
    pub fn new(epoch: u64, batches: u64, start: u64, visible: bool) -> Self {
        let style = ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} (ETA {eta})",
        )
        .expect("a valid template");
        let bar = if visible { ProgressBar::new(batches) } else { ProgressBar::hidden() };
        let bar = bar.with_style(style).with_prefix(format!("epoch {epoch}"));
        bar.set_position(start);
        Self { bar }
    }

    pub fn inc(&self) {
        self.bar.inc(1);
    }

    /// The bar's message: the logged values and the images per second of the last window.
    pub fn message(&self, values: &[(&str, f64)], images_per_second: Option<f64>) {
        let mut msg: Vec<String> = values.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        if let Some(ips) = images_per_second {
            msg.push(format!("{ips:.1} img/s"));
        }
        self.bar.set_message(msg.join(" "));
    }

    /// A line above the bar on a terminal; a plain line in a log file, where the bar is
    /// hidden and its println would drop it.
    pub fn println(&self, line: String) {
        if self.bar.is_hidden() { eprintln!("{line}") } else { self.bar.println(line) }
    }

    pub fn abandon(&self) {
        self.bar.abandon();
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Images per second between logged steps, and over the run without the first
/// [`WARMUP_STEPS`] steps of the process (kernels, caches and cudnn's autotuner warm up).
#[derive(Debug)]
pub struct Throughput {
    steps: u64,
    window_start: std::time::Instant,
    window_first_step: u64,
    window_images: u64,
    timed_images: u64,
    timed_seconds: f64,
}

impl Default for Throughput {
    fn default() -> Self {
        Self {
            steps: 0,
            window_start: std::time::Instant::now(),
            window_first_step: 0,
            window_images: 0,
            timed_images: 0,
            timed_seconds: 0.0,
        }
    }
}

impl Throughput {
    pub fn add_step(&mut self, images: u64) {
        self.steps += 1;
        self.window_images += images;
    }

    /// The rate since the last call (or the start); the window counts towards the run's rate
    /// when it began after the warm-up.
    pub fn close_window(&mut self) -> Option<f64> {
        let secs = self.window_start.elapsed().as_secs_f64();
        let rate = (secs > 0.0).then(|| self.window_images as f64 / secs);
        if self.window_first_step >= WARMUP_STEPS {
            self.timed_images += self.window_images;
            self.timed_seconds += secs;
        }
        self.window_start = std::time::Instant::now();
        self.window_first_step = self.steps;
        self.window_images = 0;
        rate
    }

    /// Images per second after the warm-up; `None` when every step was a warm-up step.
    pub fn images_per_second(&self) -> Option<f64> {
        (self.timed_seconds > 0.0).then(|| self.timed_images as f64 / self.timed_seconds)
    }
}

/// Console lines for skipped files: an archive export can hold thousands of non-image
/// objects, so the console names the first 20 of an epoch and metrics.jsonl all of them.
#[derive(Debug)]
pub struct SkipReport {
    shown: usize,
    who: String,
}

impl SkipReport {
    pub const SHOWN: usize = 20;

    pub fn new(rank: usize, world: usize) -> Self {
        Self { shown: 0, who: if world > 1 { format!("rank {rank}: ") } else { String::new() } }
    }

    pub fn show(&mut self, progress: &EpochProgress, skipped: &[Skipped]) {
        let who = &self.who;
        for s in skipped {
            self.shown += 1;
            if self.shown <= Self::SHOWN {
                progress.println(format!("{who}skipped {s}"));
            } else if self.shown == Self::SHOWN + 1 {
                progress.println(format!(
                    "{who}more files skipped this epoch: counted in its summary line, all listed in metrics.jsonl"
                ));
            }
        }
    }
}
