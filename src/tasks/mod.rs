//! The training programs, each a [`crate::training::Task`] handed to [`crate::training::Run`],
//! with everything its subcommands do around it (data assembly, evaluation, outputs), so that a
//! program's binary in `examples/` is its flags and a call, and tests drive the same code.
pub mod bone_suppression;
pub mod classify;
pub mod nodule_gan;
pub mod pretrain;

/// The flags of a program's `proxy` subcommand (a synthetic training set made from real
/// radiographs, `chess::data::synthetic`).
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Real radiographs (folders, files, lists).
    #[arg(long, required = true)]
    pub source: Vec<std::path::PathBuf>,
    #[arg(long)]
    pub out: std::path::PathBuf,
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// At most this many images (the first, in sorted order).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl ProxyArgs {
    /// The source files, the first `--limit` of them.
    pub fn sources(&self) -> Result<Vec<std::path::PathBuf>, crate::data::DatasetError> {
        let samples = crate::data::Dataset::from_sources(&self.source)?.samples.into_iter();
        Ok(samples.map(|s| s.path).take(self.limit.unwrap_or(usize::MAX)).collect())
    }
}

/// `return Err(format!(...).into())`: a program's one-line refusal of its input or flags.
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err(format!($($arg)*).into())
    };
}
pub(crate) use refuse;

/// (rank, world size) of an optional torchrun group; (0, 1) without one.
pub(crate) fn rank_and_world(
    group: &Option<std::sync::Arc<crate::distributed::ProcessGroup>>,
) -> (usize, usize) {
    group.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()))
}
