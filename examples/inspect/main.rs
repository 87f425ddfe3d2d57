//! Prints what a radiograph file holds and, optionally, writes its pixel values and what the
//! model sees.
//!
//!     inspect scan.dcm --npy values.npy --png model_view.png
use std::path::PathBuf;
use std::process::ExitCode;

use chess::data::{self, FileKind, Windowing, dicom};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Inspect a DICOM, PNG or JPEG radiograph")]
struct Args {
    file: PathBuf,
    /// float32 [H, W]: DICOM values after rescale and MONOCHROME1 inversion, before windowing
    /// (PNG/JPEG: grey values).
    #[arg(long)]
    npy: Option<PathBuf>,
    /// 8-bit PNG of the display values the model is fed (after windowing, before resizing).
    #[arg(long)]
    png: Option<PathBuf>,
    /// Ignore the file's window / VOI LUT and use the fallback.
    #[arg(long)]
    ignore_file_window: bool,
    /// Fallback when the file has no window: percentile (0.5-99.5 %) or minmax.
    #[arg(long, default_value = "percentile")]
    fallback: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{}: {msg}", args.file.display());
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let fallback = match args.fallback.as_str() {
        "percentile" => dicom::WindowFallback::Percentile,
        "minmax" | "min-max" => dicom::WindowFallback::MinMax,
        other => return Err(format!("unknown fallback '{other}' (percentile or minmax)")),
    };
    let windowing = Windowing { ignore_file: args.ignore_file_window, fallback };
    let kind = data::file_kind(&args.file).map_err(|e| e.to_string())?;
    let (width, height, raw, display) = if kind == FileKind::Dicom {
        let px = dicom::read(&args.file)?;
        println!("{}", px.info);
        let (display, how) = px.display(windowing);
        println!(
            "display:         {how}{}",
            if px.is_monochrome1() { ", inverted (MONOCHROME1)" } else { "" }
        );
        (px.info.columns, px.info.rows, px.presentation_values(), display)
    } else {
        let img = data::decode_file_with(&args.file, windowing).map_err(|e| e.to_string())?;
        println!(
            "format:          {kind:?}, {} x {} (rows x columns), {}-bit grey",
            img.height, img.width, img.bit_depth
        );
        (img.width, img.height, img.pixels.clone(), img.pixels)
    };
    if let Some(path) = &args.npy {
        tch::Tensor::from_slice(&raw)
            .view([i64::from(height), i64::from(width)])
            .write_npy(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.png {
        let bytes: Vec<u8> = display.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect();
        image::save_buffer(path, &bytes, width, height, image::ExtendedColorType::L8)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
