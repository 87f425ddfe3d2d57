//! The training programs, each a [`crate::training::Task`] handed to [`crate::training::Run`],
//! with everything its subcommands do around it (data assembly, evaluation, outputs), so that a
//! program's binary in `examples/` is its flags and a call, and tests drive the same code.
pub mod bone_suppression;
pub mod classify;
pub mod nodule_gan;
pub mod pretrain;

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
