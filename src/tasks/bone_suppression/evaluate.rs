//! Running a model over pairs and scoring its 8-bit outputs (PSNR, SSIM, RMSE as scikit-image
//! computes them), `bone_suppression eval`'s outputs, and `score` of any tool's images.
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::args::{EvalArgs, ScoreArgs};
use super::batch_pair;
use super::model::BoneNet;
use crate::Precision;
use crate::data::{Dataset, FileKind, Loader, LoaderConfig, Skipped, TargetKind, file_kind, output_names};
use crate::metrics::image_quality::{ImageScores, SsimWindow, score_images};
use crate::tasks::refuse;
use crate::training::TaskError;

/// Model outputs as saved: 8-bit, 0..255.
pub fn quantise(out01: &Tensor) -> Tensor {
    (out01.to_kind(Kind::Float).clamp(0.0, 1.0) * 255.0).round()
}

/// Per-image scores of a set, in input order.
#[derive(Debug, Clone, Default)]
pub struct PairScores {
    pub rows: Vec<usize>,
    pub scores: Vec<ImageScores>,
    pub skipped: Vec<Skipped>,
}

impl PairScores {
    pub fn means(&self) -> Option<ImageScores> {
        mean_scores(&self.scores)
    }
}

/// How a set of pairs is run through a model.
#[derive(Debug, Clone)]
pub struct PairEval {
    pub image_size: i64,
    pub batch_size: usize,
    pub workers: usize,
    pub precision: Precision,
    pub device: Device,
    pub window: SsimWindow,
}

/// Runs `net` on every pair of `pairs` and scores the 8-bit outputs against the targets (both at
/// the model's size). `visit(index, input, output, target)` sees each image (0..255, `[S, S]`).
pub fn score_pairs(
    net: &BoneNet,
    pairs: &Dataset,
    cfg: &PairEval,
    mut visit: impl FnMut(usize, &Tensor, &Tensor, &Tensor) -> Result<(), TaskError>,
) -> Result<PairScores, TaskError> {
    let config = LoaderConfig::in_order(cfg.image_size, cfg.batch_size, cfg.workers);
    let loader = Loader::new(Arc::new(pairs.clone()), config);
    let mut found: Vec<Option<ImageScores>> = vec![None; pairs.len()];
    let mut iter = loader.epoch(0, 0);
    let size = cfg.image_size as usize;
    for batch in iter.by_ref() {
        let good = batch.samples.len() as i64;
        if good == 0 {
            continue;
        }
        let (grey, target) = batch_pair(&batch, cfg.device)?;
        let out = tch::no_grad(|| {
            crate::device::autocast(cfg.device, cfg.precision, || {
                net.forward(&grey.narrow(0, 0, good), false)
            })
        })?;
        let out = quantise(&out).to_device(Device::Cpu);
        let target = (target.narrow(0, 0, good) * 255.0).to_device(Device::Cpu);
        let grey = grey.narrow(0, 0, good).to_device(Device::Cpu);
        for (j, &idx) in batch.samples.iter().enumerate() {
            if found[idx].is_some() {
                continue;
            }
            let (o, t) = (out.get(j as i64).squeeze(), target.get(j as i64).squeeze());
            let ov = Vec::<f64>::try_from(o.to_kind(Kind::Double).flatten(0, -1))?;
            let tv = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1))?;
            found[idx] = Some(score_images(&ov, &tv, size, size, 255.0, cfg.window)?);
            visit(idx, &grey.get(j as i64).squeeze(), &o, &t)?;
        }
    }
    let (rows, scores, skipped) = crate::data::loader::gather_by_index(found, pairs, iter.skipped().to_vec());
    Ok(PairScores { rows, scores, skipped })
}

/// `name,psnr,ssim,rmse` rows.
pub fn scores_csv(names: &[String], scores: &[ImageScores]) -> String {
    let mut text = String::from("name,psnr,ssim,rmse\n");
    for (n, s) in names.iter().zip(scores) {
        text += &format!("{},{},{},{}\n", crate::data::dataset::csv_field(n), s.psnr, s.ssim, s.rmse);
    }
    text
}

/// What `eval` measured.
#[derive(Debug)]
pub struct Evaluated {
    pub scores: PairScores,
    pub means: ImageScores,
}

/// `bone_suppression eval`: the model on the pairs, `OUT/scores.csv` (per image), `metrics.json`
/// (means) and side-by-side PNGs of the first `--side-by-side` pairs.
pub fn evaluate_model(args: &EvalArgs) -> Result<Evaluated, TaskError> {
    let device = args.runtime.device()?;
    let (net, card) = BoneNet::load(&args.model, device)?;
    let pairs = Dataset::from_paired_folders(&args.input, &args.target, TargetKind::Image)?;
    let cfg = PairEval {
        image_size: card.image_size,
        batch_size: args.runtime.batch_size,
        workers: args.runtime.workers(),
        precision: args.runtime.precision(device)?,
        device,
        window: args.ssim.window(),
    };
    let sbs = args.out.join("side_by_side");
    std::fs::create_dir_all(&sbs).map_err(|e| format!("{}: {e}", sbs.display()))?;
    let names = output_names(&pairs);
    let mut shown = 0;
    let scores = score_pairs(&net, &pairs, &cfg, |idx, input, output, target| {
        if shown < args.side_by_side {
            shown += 1;
            let img = side_by_side(input, output, target)?;
            crate::plot::write_png(&sbs.join(format!("{}.png", names[idx])), &img)?;
        }
        Ok(())
    })?;
    for s in &scores.skipped {
        eprintln!("skipped {s}");
    }
    let rows: Vec<String> = scores.rows.iter().map(|&i| names[i].clone()).collect();
    crate::atomic::write(&args.out.join("scores.csv"), scores_csv(&rows, &scores.scores).as_bytes())?;
    let Some(means) = scores.means() else { refuse!("no pair of {} could be read", args.input.display()) };
    let metrics = json!({
        "n": scores.rows.len(), "psnr": means.psnr, "ssim": means.ssim, "rmse": means.rmse,
        "data_range": 255, "ssim_window": format!("{:?}", args.ssim), "image_size": card.image_size,
        "model": args.model, "skipped": scores.skipped.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    });
    crate::atomic::write(&args.out.join("metrics.json"), serde_json::to_string_pretty(&metrics)?.as_bytes())?;
    Ok(Evaluated { scores, means })
}

/// `input | output | target | |difference|` (difference x4 for visibility), 0..255.
pub fn side_by_side(input: &Tensor, output: &Tensor, target: &Tensor) -> Result<image::GrayImage, TaskError> {
    let size = input.size();
    let (h, w) = (size[0] as u32, size[1] as u32);
    let diff = ((output - target).abs() * 4.0).clamp(0.0, 255.0);
    let mut tiles = Vec::new();
    for t in [input, output, target, &diff] {
        tiles.push((Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1))?, w, h));
    }
    Ok(crate::plot::image_grid(&tiles, 4, 4))
}

/// Raw values of an image file as saved (8-bit: 0..255; 16-bit: 0..65535), its width, height
/// and natural range; DICOM through the display windowing (0..255).
fn raw_values(path: &Path) -> Result<(Vec<f64>, usize, usize, f64), TaskError> {
    if file_kind(path).ok() == Some(FileKind::Dicom) {
        let img = crate::data::decode_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let values = img.pixels.iter().map(|&v| f64::from(v)).collect();
        return Ok((values, img.width as usize, img.height as usize, 255.0));
    }
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("{}: {e}", path.display()))?
        .decode()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok(if is_16_bit(img.color()) {
        (img.to_luma16().into_raw().into_iter().map(f64::from).collect(), w, h, 65535.0)
    } else {
        (img.to_luma8().into_raw().into_iter().map(f64::from).collect(), w, h, 255.0)
    })
}

pub(super) fn is_16_bit(color: image::ColorType) -> bool {
    use image::ColorType::{L16, La16, Rgb16, Rgba16};
    matches!(color, L16 | La16 | Rgb16 | Rgba16)
}

/// `bone_suppression score`: any tool's predictions against targets matched by file name, at
/// the files' own size and range; unreadable or mis-sized pairs are skipped and named.
pub fn score_folders(args: &ScoreArgs) -> Result<(Vec<String>, Vec<ImageScores>), TaskError> {
    let pairing = crate::data::pair_folders(&args.pred, &args.target)?;
    if pairing.pairs.is_empty() {
        refuse!("no file of {} matches one of {} by name", args.pred.display(), args.target.display());
    }
    if !pairing.unmatched_inputs.is_empty() || !pairing.unmatched_targets.is_empty() {
        eprintln!("warning: {}", pairing.report());
    }
    let (mut names, mut scores) = (Vec::new(), Vec::new());
    for (pred, target) in &pairing.pairs {
        let read = raw_values(pred).and_then(|p| Ok((p, raw_values(target)?)));
        let ((p, pw, ph, pr), (t, tw, th, _)) = match read {
            Ok(v) => v,
            Err(e) => {
                eprintln!("skipped {} (scoring against {}): {e}", pred.display(), target.display());
                continue;
            }
        };
        if (pw, ph) != (tw, th) {
            eprintln!("skipped {}: {pw} x {ph}, its target {tw} x {th}", pred.display());
            continue;
        }
        let range = args.data_range.unwrap_or(pr);
        scores.push(score_images(&p, &t, pw, ph, range, args.ssim.window())?);
        // pair_folders matched the files by stem, so stems are unique here.
        names.push(pred.file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned()));
    }
    crate::atomic::write(&args.out, scores_csv(&names, &scores).as_bytes())
        .map_err(|e| format!("{}: {e}", args.out.display()))?;
    Ok((names, scores))
}

/// Mean scores, None for no images.
pub fn mean_scores(scores: &[ImageScores]) -> Option<ImageScores> {
    let n = scores.len() as f64;
    (n > 0.0).then(|| ImageScores {
        psnr: scores.iter().map(|s| s.psnr).sum::<f64>() / n,
        ssim: scores.iter().map(|s| s.ssim).sum::<f64>() / n,
        rmse: scores.iter().map(|s| s.rmse).sum::<f64>() / n,
    })
}
