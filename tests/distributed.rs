//! Data-parallel pretraining as users launch it: `torchrun --no-python --nproc-per-node 2` on
//! loopback with Gloo, a tiny configuration (ResNet-18, 64 px, K = 64, global batch 8).
//!
//! "Equal" against one process means bit for bit: the one-process reference runs with
//! `--micro-batches 2`, which trains each batch as two ranks do (each micro-batch of 4 through
//! the kernels at the ranks' batch shape, its own BN statistics from the step's running
//! statistics, shuffle-BN across the two, gradients and statistics summed then halved as the
//! all-reduce does; with two ranks a sum has one order). Any difference is then a bug, not
//! rounding, on any CPU (AVX2 or AVX-512 kernels sum a batch of 4 and one of 8 in different
//! orders, which is why a comparison against `--bn-splits 2` on the whole batch of 8 could
//! only hold to a tolerance).
mod common;

use common::{assert_losses_equal, losses, metrics};

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tch::Tensor;

/// 32 JPEGs of ../shared/data (4 global batches of 8), and with `garbage` a file with a PNG
/// name and garbage inside (replaced by another image where it falls).
fn files(garbage: bool) -> &'static Path {
    static FILES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    let (clean, broken) = FILES.get_or_init(|| {
        // A sibling of the runs' folders, not their parent: emptying it must not race them.
        let dir = common::fixture_dir("distributed/files");
        let data = common::data_dir().join("cxr-pneumonia-224/test");
        let mut files: Vec<PathBuf> = Vec::new();
        for class in ["NORMAL", "PNEUMONIA"] {
            let mut jpgs: Vec<PathBuf> = std::fs::read_dir(data.join(class))
                .unwrap_or_else(|e| panic!("{}: {e} (set CHESS_DATA)", data.display()))
                .map(|e| e.unwrap().path())
                .collect();
            jpgs.sort();
            files.extend(jpgs.into_iter().take(16));
        }
        let list = |files: &[PathBuf], name: &str| {
            let path = dir.join(name);
            std::fs::write(&path, files.iter().map(|p| format!("{}\n", p.display())).collect::<String>())
                .unwrap();
            path
        };
        let clean = list(&files, "clean.txt");
        let garbage = dir.join("not_really.png");
        std::fs::write(&garbage, b"\x89PNG\r\n\x1a\n this is not an image").unwrap();
        files.push(garbage);
        (clean, list(&files, "with_garbage.txt"))
    });
    if garbage { broken } else { clean }
}

fn pretrain_args(out: &Path, epochs: u64, garbage: bool) -> Vec<String> {
    let mut args: Vec<String> = ["--data", files(garbage).to_str().unwrap(), "--out", out.to_str().unwrap()]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend(
        [
            "--arch",
            "resnet18",
            "--image-size",
            "64",
            "--batch-size",
            "8",
            "--moco-k",
            "64",
            "--workers",
            "1",
            "--log-every",
            "1",
            "--device",
            "cpu",
            "--seed",
            "7",
            "--amp",
            "off",
            "--channels-last",
            "off",
            "--epochs",
        ]
        .map(String::from),
    );
    args.push(epochs.to_string());
    args
}

/// `torchrun --no-python --standalone --nproc-per-node 2 pretrain ARGS`; returns its stdout.
fn torchrun(args: &[String]) -> String {
    let mut pretrain = common::example("pretrain");
    pretrain.args(args);
    let out = common::torchrun(&pretrain, 2).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stderr}");
    assert!(out.status.success(), "torchrun failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn single(args: &[String]) {
    let out = common::example("pretrain").args(args).env("OMP_NUM_THREADS", "1").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pretrain failed:\n{stderr}");
}

fn checkpoint_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    chess::checkpoint::load(path).unwrap().tensors().into_iter().collect()
}

#[test]
fn two_ranks_hold_identical_state_skip_bad_files_and_only_rank_0_writes() {
    let out = common::fixture_dir("distributed/augmented");
    let stdout = torchrun(&pretrain_args(&out, 2, true));
    let sums = common::checksums(&stdout);
    eprintln!("{sums:#?}");
    assert_eq!(sums.len(), 2, "one checksum line per rank:\n{stdout}");
    let first = sums.values().next().unwrap();
    assert!(sums.values().all(|s| s == first), "ranks differ: {sums:#?}");

    let m = metrics(&out);
    let epochs: Vec<&Value> = m.iter().filter(|m| m["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 2);
    // The broken file falls to one rank per epoch; rank 0 reports its own skips.
    assert!(stdout.is_empty() || !stdout.contains("panicked"));
    assert_eq!(losses(&out).len(), 8, "4 global steps per epoch");
    let names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let mut ckpts: Vec<&String> = names.iter().filter(|n| n.ends_with(".pth.tar")).collect();
    ckpts.sort();
    assert_eq!(ckpts, ["checkpoint_0001.pth.tar", "checkpoint_0002.pth.tar"], "{names:?}");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["world_size"], 2);
}

#[test]
fn two_ranks_equal_one_process_with_the_same_global_batch() {
    let two = common::fixture_dir("distributed/two_ranks");
    let one = common::fixture_dir("distributed/one_process");
    let with = |out: &Path, extra: &[&str]| {
        let mut a = pretrain_args(out, 1, false);
        a.extend(["--augment", "false"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let stdout = torchrun(&with(&two, &[]));
    single(&with(&one, &["--micro-batches", "2"]));
    let sums = common::checksums(&stdout);
    assert_eq!(sums.len(), 2);
    assert!(sums.values().all(|s| s == sums.values().next().unwrap()), "{sums:#?}");

    let (a, b) = (losses(&two), losses(&one));
    assert_eq!(a.len(), 4);
    assert_losses_equal(("two ranks", &a), ("one process", &b));
    // The whole state after 4 steps: weights, BN statistics (averaged over ranks as over
    // micro-batches), batch counters, queue, pointer, optimiser momentum.
    let (ta, tb) = (
        checkpoint_tensors(&two.join("checkpoint_0001.pth.tar")),
        checkpoint_tensors(&one.join("checkpoint_0001.pth.tar")),
    );
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    let differ: Vec<(&String, f64)> = ta
        .iter()
        .filter(|(name, x)| !x.equal(&tb[*name]))
        .map(|(n, x)| (n, common::rel_diff(x, &tb[n])))
        .collect();
    assert!(differ.is_empty(), "{} of {} tensors differ: {differ:?}", differ.len(), ta.len());
}

/// Stopped after an epoch of two ranks, resumed in one process: the run goes on as if it had
/// been one process all along, at the recipe's learning rate.
#[test]
fn a_run_of_two_ranks_resumes_in_one_process() {
    let out = common::fixture_dir("distributed/resumed");
    let reference = common::fixture_dir("distributed/reference");
    let with = |out: &Path, epochs: u64, extra: &[&str]| {
        let mut a = pretrain_args(out, epochs, false);
        a.extend(["--augment", "false"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    torchrun(&with(&out, 1, &[]));
    single(&with(&out, 2, &["--micro-batches", "2", "--resume", "auto"]));
    single(&with(&reference, 2, &["--micro-batches", "2"]));
    let (a, b) = (losses(&out), losses(&reference));
    assert_eq!(a.len(), 8);
    assert_losses_equal(("resumed", &a), ("reference", &b));
}

/// Without torchrun's agent, rank 0 serves the store; when rank 1 is killed mid-run, rank 0
/// stops with one error line instead of hanging.
#[test]
fn a_dead_rank_stops_the_others_with_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = common::fixture_dir("distributed/dead_rank");
    let spawn = |rank: usize| {
        let mut args = pretrain_args(&out, 1000, false);
        args.extend(["--dist-timeout", "60"].map(String::from));
        common::example("pretrain")
            .args(&args)
            .env("WORLD_SIZE", "2")
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut rank0 = spawn(0);
    let mut rank1 = spawn(1);
    // Wait until training runs (rank 0 logs its steps), then kill rank 1 outright.
    let start = Instant::now();
    while !losses_exist(&out) {
        assert!(start.elapsed() < Duration::from_secs(120), "no step logged");
        assert!(rank0.try_wait().unwrap().is_none(), "rank 0 ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    rank1.kill().unwrap();
    let _ = rank1.wait();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = rank0.try_wait().unwrap() {
            break s;
        }
        if killed.elapsed() > Duration::from_secs(90) {
            let _ = rank0.kill();
            panic!("rank 0 still running 90 s after rank 1 died");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    rank0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    eprintln!("rank 0 ended after {:.1} s: {status}\n{stderr}", killed.elapsed().as_secs_f64());
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: rank 0: ") && last.contains("failed"), "{last}");
}

fn losses_exist(out: &Path) -> bool {
    std::fs::read_to_string(out.join("metrics.jsonl")).is_ok_and(|s| s.contains("\"kind\":\"step\""))
}

#[test]
fn torchrun_environment_is_read_and_checked() {
    use chess::distributed::Launch;
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| v.to_string())
    };
    assert_eq!(Launch::from_vars(env(&[])).unwrap(), None, "no WORLD_SIZE: a plain run");
    let launch = Launch::from_vars(env(&[
        ("WORLD_SIZE", "8"),
        ("RANK", "5"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        launch,
        Launch {
            rank: 5,
            world_size: 8,
            local_rank: 1,
            master_addr: "node0".into(),
            master_port: 29500,
            agent_store: true,
            restart_count: 2
        }
    );
    for (bad, says) in [
        (&[("WORLD_SIZE", "2"), ("MASTER_PORT", "1")][..], "RANK is not"),
        (&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")][..], "not below WORLD_SIZE"),
        (&[("WORLD_SIZE", "0"), ("RANK", "0"), ("MASTER_PORT", "1")][..], "not a positive number"),
        (&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")][..], "not a port"),
    ] {
        let err = Launch::from_vars(env(bad)).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
}

/// The library's collectives in a group of one (rank 0 serves its own store): results are the
/// inputs, and the gradient reducer starts every bucket from its hooks while backward runs.
#[test]
fn a_group_of_one_reduces_during_backward() {
    use chess::distributed::{Backend, GradReducer, Launch, ProcessGroup, all_reduce_mean_packed};
    use std::sync::Arc;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let launch = Launch {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: false,
        restart_count: 0,
    };
    let group = Arc::new(ProcessGroup::join(&launch, Backend::Gloo, Duration::from_secs(30), 0).unwrap());
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let net = tch::nn::seq()
        .add(tch::nn::linear(vs.root() / "a", 64, 256, Default::default()))
        .add_fn(|x| x.relu())
        .add(tch::nn::linear(vs.root() / "b", 256, 8, Default::default()));
    let params = vs.trainable_variables();
    // 1 KiB buckets: each weight and the first bias (1 KiB) alone, the last bias (32 B) too.
    let reducer = GradReducer::new(group.clone(), &params, 1024).unwrap();
    assert_eq!(reducer.buckets(), 4);
    let x = Tensor::randn([16, 64], (tch::Kind::Float, tch::Device::Cpu));
    let loss = tch::nn::Module::forward(&net, &x).square().mean(None);
    reducer.arm().unwrap();
    loss.backward();
    let before: Vec<Tensor> = params.iter().map(|p| p.grad().copy()).collect();
    reducer.finish().unwrap();
    assert_eq!(reducer.launched_during_backward(), reducer.buckets());
    for (p, g) in params.iter().zip(&before) {
        assert!(p.grad().equal(g), "a world of one leaves gradients as they are");
    }
    let t = Tensor::arange(10, (tch::Kind::Float, tch::Device::Cpu));
    all_reduce_mean_packed(&group, std::slice::from_ref(&t), 16).unwrap();
    assert!(t.equal(&Tensor::arange(10, (tch::Kind::Float, tch::Device::Cpu))));
    assert!(group.all_gather(&t).unwrap().equal(&t));
    assert!(!group.any(false, tch::Device::Cpu).unwrap());
    assert!(group.any(true, tch::Device::Cpu).unwrap());
    group.barrier().unwrap();
}

/// `DataParallel` for a model that is not MoCo (conv, BN, linear): two Gloo ranks in two
/// threads of this process, each with its own initialisation (rank 0's must win) and its half of
/// a batch of 8, end with the gradients and BN statistics of one process that sums the two
/// halves' gradients and halves them, and averages the halves' statistics: bit for bit.
#[test]
fn data_parallel_averages_any_models_gradients_and_statistics() {
    use chess::distributed::{Backend, DataParallel, Launch, ProcessGroup};
    use chess::model::{BatchNorm2d, Conv2d, Linear};
    use std::sync::Arc;
    use tch::{Device, Kind, Reduction, nn};

    struct Net {
        _vs: nn::VarStore,
        conv: Conv2d,
        bn: BatchNorm2d,
        fc: Linear,
    }
    impl Net {
        fn new(seed: i64) -> Self {
            tch::manual_seed(seed);
            let vs = nn::VarStore::new(Device::Cpu);
            let conv = Conv2d::new(vs.root() / "conv", 1, 4, 3, 1, 1);
            let bn = BatchNorm2d::new(vs.root() / "bn", 4, 1);
            let fc = Linear::new(vs.root() / "fc", 4, 2);
            Self { _vs: vs, conv, bn, fc }
        }
        fn params(&self) -> Vec<Tensor> {
            [&self.conv.weight, &self.bn.weight, &self.bn.bias, &self.fc.weight, &self.fc.bias]
                .map(Tensor::shallow_clone)
                .into()
        }
        fn buffers(&self) -> Vec<Tensor> {
            [&self.bn.running_mean, &self.bn.running_var].map(Tensor::shallow_clone).into()
        }
        fn loss(&self, x: &Tensor, y: &Tensor) -> Tensor {
            let h =
                self.bn.forward_t(&self.conv.forward(x), true).relu().mean_dim(&[2i64, 3][..], false, None);
            self.fc.forward(&h).cross_entropy_loss::<Tensor>(y, None, Reduction::Mean, -100, 0.0)
        }
        /// Gradients, then BN statistics, as plain copies.
        fn result(&self) -> Vec<Tensor> {
            self.params()
                .iter()
                .map(|p| p.grad().copy())
                .chain(self.buffers().iter().map(Tensor::copy))
                .collect()
        }
    }
    let batch = || {
        tch::manual_seed(99);
        let x = Tensor::randn([8, 1, 6, 6], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 1, 0, 1, 0, 0, 1]);
        (x, y)
    };

    // Built here, not in the rank threads: libtorch's generator is one for the process.
    let nets = [Net::new(10), Net::new(11)];
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ranks: Vec<_> = nets
        .into_iter()
        .enumerate()
        .map(|(rank, net)| {
            let (x, y) = batch();
            std::thread::spawn(move || {
                let launch = Launch {
                    rank,
                    world_size: 2,
                    local_rank: rank,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                    agent_store: false,
                    restart_count: 0,
                };
                let group =
                    Arc::new(ProcessGroup::join(&launch, Backend::Gloo, Duration::from_secs(60), 0).unwrap());
                let mut state = net.params();
                state.extend(net.buffers());
                let ddp = DataParallel::new(group, &net.params(), &state).unwrap();
                let (x, y) = (x.narrow(0, 4 * rank as i64, 4), y.narrow(0, 4 * rank as i64, 4));
                ddp.backward(&net.loss(&x, &y)).unwrap();
                ddp.average_buffers(&net.buffers()).unwrap();
                net.result()
            })
        })
        .collect();
    let results: Vec<Vec<Tensor>> = ranks.into_iter().map(|h| h.join().unwrap()).collect();

    let net = Net::new(10);
    let (x, y) = batch();
    let start: Vec<Tensor> = net.buffers().iter().map(Tensor::copy).collect();
    let mut ends = Vec::new();
    for half in 0..2 {
        tch::no_grad(|| net.buffers().iter().zip(&start).for_each(|(b, s)| b.shallow_clone().copy_(s)));
        net.loss(&x.narrow(0, 4 * half, 4), &y.narrow(0, 4 * half, 4)).backward();
        ends.push(net.buffers().iter().map(Tensor::copy).collect::<Vec<_>>());
    }
    tch::no_grad(|| {
        for p in net.params() {
            let _ = p.grad().g_div_scalar_(2);
        }
        for (i, b) in net.buffers().iter().enumerate() {
            b.shallow_clone().copy_(&((&ends[0][i] + &ends[1][i]) / 2));
        }
    });
    let reference = net.result();
    for (rank, result) in results.iter().enumerate() {
        for (i, (a, b)) in result.iter().zip(&reference).enumerate() {
            assert!(a.equal(b), "rank {rank}, tensor {i}: {}", common::rel_diff(a, b));
        }
    }
}
