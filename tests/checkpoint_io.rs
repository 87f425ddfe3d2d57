//! `torch.save` files made by PyTorch read exactly; files written here load in PyTorch with
//! `weights_only=True`; broken and hostile files fail with one clear line.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chess::SgdConfig;
use chess::checkpoint::{self, CheckpointError, EncoderWeights, LoadOptions, Value};
use chess::model::{
    Arch, Encoder, EncoderConfig, HeadSpec, Moco, MocoConfig, MocoTrainer, StateDict, StepOptions,
};
use rstest::rstest;
use serde_json::{Value as Json, json};
use tch::{Device, Kind, Tensor, nn};

/// Fixtures are made once per test run by `tests/python/checkpoint_fixtures.py`.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fixture_dir("checkpoint_io");
        python(&["make", dir.to_str().unwrap()]);
        dir
    })
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(format!("{name}.pth"))
}

fn python(args: &[&str]) -> String {
    common::run_python("checkpoint_fixtures.py", args)
}

fn dtype(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        Kind::Int16 => "int16",
        Kind::Uint8 => "uint8",
        Kind::Int8 => "int8",
        Kind::Bool => "bool",
        _ => "other",
    }
}

/// The same JSON view of a value as the fixture script's `structure()`.
fn structure(v: &Value) -> Json {
    let pairs = |d: &[(Value, Value)]| {
        Json::Array(d.iter().map(|(k, v)| json!([structure(k), structure(v)])).collect())
    };
    match v {
        Value::None => json!({ "none": null }),
        Value::Bool(b) => json!({ "bool": b }),
        Value::Int(i) => json!({ "int": i }),
        Value::Float(f) => json!({ "float": f }),
        Value::Str(s) => json!({ "str": s }),
        Value::Bytes(b) => json!({ "bytes": b }),
        Value::List(items) => json!({ "list": items.iter().map(structure).collect::<Vec<_>>() }),
        Value::Tuple(items) => json!({ "tuple": items.iter().map(structure).collect::<Vec<_>>() }),
        Value::Dict(d) => json!({ "dict": pairs(d) }),
        Value::OrderedDict(d) => json!({ "odict": pairs(d) }),
        Value::Tensor(t) => json!({ "tensor": dtype(t.kind()), "shape": t.size() }),
        Value::Global(g) => json!({ "global": format!("{g:?}") }),
    }
}

const READABLE: [&str; 9] = [
    "torchvision_resnet50",
    "chess_moco",
    "single_fc",
    "dtypes_views",
    "values",
    "legacy",
    "legacy_moco",
    "protocol4",
    "protocol5",
];

#[test]
fn reads_every_value_exactly() {
    for name in READABLE {
        let ckpt = checkpoint::load(fixture(name)).unwrap();
        let expected: Json = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(structure(&ckpt.root), expected, "{name}: structure differs");
        let tensors: HashMap<String, Tensor> =
            Tensor::read_safetensors(fixtures().join(format!("{name}.expected.safetensors")))
                .unwrap()
                .into_iter()
                .collect();
        let ours = ckpt.tensors();
        assert_eq!(ours.len(), tensors.len(), "{name}: tensor count");
        for (path, t) in &ours {
            let r = &tensors[path];
            assert_eq!(t.kind(), r.kind(), "{name}: {path} dtype");
            assert_eq!(t.size(), r.size(), "{name}: {path} shape");
            assert!(t.equal(r), "{name}: {path} values differ");
        }
        eprintln!("{name}: {:?} format, {} tensors equal", ckpt.format, ours.len());
    }
}

#[test]
fn views_share_their_storage() {
    for name in ["dtypes_views", "legacy"] {
        let ckpt = checkpoint::load(fixture(name)).unwrap();
        let get = |k: &str| ckpt.root.get(k).and_then(Value::as_tensor).unwrap().shallow_clone();
        let (base, view, t) = (get("base"), get("view_offset"), get("view_t"));
        assert_eq!(view.data_ptr() as usize, base.data_ptr() as usize + 5 * 4, "{name}: offset view");
        assert_eq!(t.stride(), [1, 6], "{name}: transposed view keeps its strides");
        let _ = base.shallow_clone().fill_(-1.0);
        assert_eq!(view.sum(Kind::Float).double_value(&[]), -6.0, "{name}: views alias the storage");
    }
}

#[test]
fn rust_written_files_load_in_pytorch() {
    let out = tempfile::tempdir().unwrap();
    for name in READABLE {
        let ckpt = checkpoint::load(fixture(name)).unwrap();
        let written = out.path().join(format!("{name}.pth"));
        checkpoint::save(&written, &ckpt.root).unwrap();
        python(&["compare", fixture(name).to_str().unwrap(), written.to_str().unwrap()]);
        // And back: what we wrote reads as what we read.
        let again = checkpoint::load(&written).unwrap();
        assert_eq!(structure(&again.root), structure(&ckpt.root), "{name}: round trip");
    }
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

#[rstest]
#[case::truncated("bad_truncated", "")]
#[case::flipped_bytes("bad_flipped", "")]
#[case::os_system("bad_os_system", "refused to load the global 'os.system'")]
#[case::huge_tensor("bad_huge_tensor", "needs")]
#[case::view_out_of_bounds("bad_view", "reaches element")]
#[case::not_a_checkpoint("bad_not_torch", "not a PyTorch checkpoint")]
fn broken_files_fail_with_one_line(#[case] name: &str, #[case] expect: &str) {
    let path = fixture(name);
    let err = checkpoint::load(&path).expect_err("must fail");
    let msg = err.to_string();
    eprintln!("{name}: {msg}");
    assert!(msg.starts_with(&path.display().to_string()), "names the file: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(msg.contains(expect), "{msg} lacks {expect:?}");
    assert!(matches!(err, CheckpointError::File { .. }));
}

#[test]
fn random_corruptions_never_panic() {
    let good = std::fs::read(fixture("dtypes_views")).unwrap();
    let legacy = std::fs::read(fixture("legacy")).unwrap();
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut failures = 0;
    for i in 0..600 {
        let src = if i % 2 == 0 { &good } else { &legacy };
        let mut bytes = src.clone();
        match i % 3 {
            0 => bytes.truncate((next() as usize) % bytes.len()),
            _ => {
                for _ in 0..1 + next() % 8 {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
            }
        }
        failures += usize::from(checkpoint::load_bytes(&bytes).is_err());
    }
    assert!(failures > 100, "corruptions were detected ({failures} of 600 failed to load)");
}

fn encoder(arch: Arch, in_channels: i64, head: HeadSpec) -> (nn::VarStore, Encoder) {
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = Encoder::new(&vs.root(), EncoderConfig { arch, in_channels, head, bn_splits: 1 });
    (vs, enc)
}

fn tensor_of(enc: &Encoder, name: &str) -> Tensor {
    enc.named_tensors("").into_iter().find(|t| t.name == name).unwrap().tensor
}

#[test]
fn torchvision_imagenet_weights_load_into_one_and_three_channels() {
    let ckpt = checkpoint::load(fixture("torchvision_resnet50")).unwrap();
    let w = EncoderWeights::from_checkpoint(&ckpt).unwrap();
    assert_eq!(
        (w.prefix.as_str(), w.head, w.in_channels, w.arch),
        ("", HeadSpec::Linear { out: 1000 }, 3, Some(Arch::ResNet50))
    );
    let src = w.tensors()["conv1.weight"].shallow_clone();

    let (_vs, grey) = encoder(Arch::ResNet50, 1, HeadSpec::None);
    let report = w.load_into(&grey, LoadOptions::default()).unwrap();
    eprintln!("{report}");
    assert_eq!((report.loaded, report.ignored, report.missing.len()), (318, 2, 0));
    assert_eq!(report.conv1_adapted, Some((3, 1)));
    assert!(tensor_of(&grey, "conv1.weight").equal(&src.sum_dim_intlist(1, true, Kind::Float)));
    assert!(tensor_of(&grey, "layer4.2.bn3.running_var").equal(&w.tensors()["layer4.2.bn3.running_var"]));

    let (_vs, rgb) = encoder(Arch::ResNet50, 3, HeadSpec::Linear { out: 1000 });
    let report = w.load_into(&rgb, LoadOptions::default()).unwrap();
    assert_eq!((report.loaded, report.ignored, report.conv1_adapted), (320, 0, None));
    assert!(tensor_of(&rgb, "fc.weight").equal(&w.tensors()["fc.weight"]));
}

#[test]
fn chess_checkpoint_loads_the_query_encoder() {
    for name in ["chess_moco", "legacy_moco"] {
        let ckpt = checkpoint::load(fixture(name)).unwrap();
        let w = EncoderWeights::from_checkpoint(&ckpt).unwrap();
        assert_eq!(w.prefix, "module.encoder_q.");
        assert_eq!(w.head, HeadSpec::Mlp { hidden: 2048, out: 128 });
        assert_eq!(w.in_channels, 1);
        let (_vs, enc) = encoder(Arch::ResNet50, 1, HeadSpec::None);
        let report = w.load_into(&enc, LoadOptions::default()).unwrap();
        eprintln!("{name}: {report}");
        // 318 backbone tensors; ignored: the MLP head (4), the key encoder (322), queue, pointer.
        assert_eq!((report.loaded, report.ignored), (318, 4 + 322 + 2));
        let line = report.to_string();
        assert!(line.contains("MLP fc.0/fc.2") && line.contains("module.encoder_q."), "{line}");
    }
    let single = checkpoint::load(fixture("single_fc")).unwrap();
    let w = EncoderWeights::from_checkpoint(&single).unwrap();
    assert_eq!((w.prefix.as_str(), w.head), ("", HeadSpec::Linear { out: 128 }));
    let (_vs, enc) = encoder(Arch::ResNet50, 1, HeadSpec::Linear { out: 128 });
    let report = w.load_into(&enc, LoadOptions::default()).unwrap();
    assert_eq!((report.loaded, report.ignored), (320, 0));
}

#[test]
fn missing_backbone_weights_are_an_error_unless_partial() {
    let ckpt = checkpoint::load(fixture("torchvision_resnet50")).unwrap();
    let w = EncoderWeights::from_checkpoint(&ckpt).unwrap();
    // ResNet-50 weights into a ResNet-18: shapes differ, always an error.
    let (_vs, r18) = encoder(Arch::ResNet18, 3, HeadSpec::None);
    let err = w.load_into(&r18, LoadOptions { partial: true }).unwrap_err().to_string();
    assert!(err.contains("layer1.0.conv1.weight") && err.contains("expects"), "{err}");
    // A file lacking layer4: an error, or a partial load on request.
    let mut root: Vec<(Value, Value)> = ckpt.root.as_dict().unwrap().to_vec();
    root.retain(|(k, _)| !k.as_str().unwrap().starts_with("layer4"));
    let cut = checkpoint::Checkpoint { root: Value::OrderedDict(root), format: ckpt.format };
    let w = EncoderWeights::from_checkpoint(&cut).unwrap();
    let (_vs, enc) = encoder(Arch::ResNet50, 3, HeadSpec::None);
    let err = w.load_into(&enc, LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("missing (first: layer4.0.conv1.weight)"), "{err}");
    let report = w.load_into(&enc, LoadOptions { partial: true }).unwrap();
    assert_eq!(report.missing.len(), 60, "layer4: 3 blocks x 18 tensors + downsample 6");
}

#[test]
fn moco_checkpoints_move_between_pytorch_and_rust() {
    let ckpt = checkpoint::load(fixture("chess_moco")).unwrap();
    let config = MocoConfig { queue_size: 256, ..MocoConfig::default() };
    let moco = Moco::new(config, Device::Cpu).unwrap();
    let mut trainer = MocoTrainer::new(moco, SgdConfig::default(), StepOptions::default()).unwrap();
    let epoch = checkpoint::moco::restore(&mut trainer, &ckpt).unwrap();
    assert_eq!(epoch, 2);
    // Every tensor equals PyTorch's, momentum buffers included.
    let flat: HashMap<String, Tensor> = ckpt.tensors().into_iter().collect();
    for (name, t) in chess::model::state_dict(&trainer.model, "module") {
        assert!(t.equal(&flat[&format!("state_dict.{name}")]), "{name}");
    }
    for (i, b) in trainer.optimizer.momentum_buffers().iter().enumerate() {
        assert!(
            b.as_ref().unwrap().equal(&flat[&format!("optimizer.state.{i}.momentum_buffer")]),
            "buffer {i}"
        );
    }
    // Written back in the original layout, it loads into a PyTorch MoCo and its SGD optimiser.
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("checkpoint_0002.pth.tar");
    checkpoint::save(&path, &checkpoint::moco::to_value(&trainer, epoch, 0.03, vec![])).unwrap();
    let said = python(&["moco-load", path.to_str().unwrap(), fixture("chess_moco").to_str().unwrap()]);
    assert!(
        said.contains("epoch 2, 646 state entries, 163 momentum buffers, equal to the original"),
        "{said}"
    );
}
