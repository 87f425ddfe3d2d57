//! JPEG extended sequential DCT (processes 2 and 4: Huffman coding, 8 or 12 bits per sample),
//! DICOM's transfer syntax 1.2.840.10008.1.2.4.51, which CR and DX archives use for 12-bit
//! images. The pure-Rust decoder dicom-rs uses stops at "sample precision 12", so these files
//! are decoded here: sequential scans (interleaved or not), restart intervals, any sampling
//! factors, IDCT in f32 as in libjpeg's float method. Written from ITU-T T.81.
use std::fmt;

/// A decoded image: `components` samples per pixel, interleaved, row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct JpegImage {
    pub width: usize,
    pub height: usize,
    pub components: usize,
    /// Bits per sample: 8 or 12.
    pub precision: u8,
    pub samples: Vec<u16>,
}

/// Why a stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegError(pub String);

impl fmt::Display for JpegError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JPEG: {}", self.0)
    }
}

impl std::error::Error for JpegError {}

fn bad<T>(msg: impl Into<String>) -> Result<T, JpegError> {
    Err(JpegError(msg.into()))
}

/// Zig-zag position -> natural (row-major) position of a coefficient.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7,
    14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39,
    46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Bits of the lookahead table: codes up to this long decode with one lookup.
const LOOKAHEAD: u32 = 9;

/// A Huffman table as T.81 Annex C/F builds it: for each code length, the largest code and
/// the offset of its first symbol; and, for the next `LOOKAHEAD` bits of the stream, the
/// length and symbol of the code they start with (length 0: a longer code), as libjpeg does.
#[derive(Debug, Clone)]
struct Huffman {
    max_code: [i32; 17],
    val_offset: [i32; 17],
    symbols: Vec<u8>,
    lookahead: Box<[(u8, u8); 1 << LOOKAHEAD]>,
}

impl Huffman {
    fn new(counts: &[u8; 16], symbols: Vec<u8>) -> Result<Self, JpegError> {
        let lookahead = Box::new([(0, 0); 1 << LOOKAHEAD]);
        let mut h = Huffman { max_code: [-1; 17], val_offset: [0; 17], symbols, lookahead };
        let (mut code, mut k) = (0i32, 0i32);
        for len in 1..=16 {
            let n = i32::from(counts[len - 1]);
            h.val_offset[len] = k - code;
            if len as u32 <= LOOKAHEAD {
                // Codes `code..code + n` of this length, symbols `k..k + n`.
                let spread = LOOKAHEAD - len as u32;
                for i in 0..n {
                    let Some(&symbol) = h.symbols.get((k + i) as usize) else { break };
                    let first = ((code + i) as usize) << spread;
                    let Some(slots) = h.lookahead.get_mut(first..first + (1 << spread)) else { break };
                    slots.fill((len as u8, symbol));
                }
            }
            code += n;
            k += n;
            h.max_code[len] = if n > 0 { code - 1 } else { -1 };
            if code > (1 << len) {
                return bad("invalid Huffman table (too many codes)");
            }
            code <<= 1;
        }
        Ok(h)
    }
}

/// Entropy-coded bits, with 0xFF00 unstuffed; stops at a marker.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    count: u32,
    marker_seen: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Bits { data, pos, acc: 0, count: 0, marker_seen: false }
    }

    fn fill(&mut self) {
        while self.count <= 56 {
            let mut byte = 0u8;
            if !self.marker_seen && self.pos < self.data.len() {
                byte = self.data[self.pos];
                if byte == 0xFF {
                    let next = self.data.get(self.pos + 1).copied().unwrap_or(0);
                    if next == 0x00 {
                        self.pos += 2;
                    } else {
                        // A marker: feed zeros from here (T.81 F.2.2.5), leave pos on it.
                        self.marker_seen = true;
                        byte = 0;
                    }
                } else {
                    self.pos += 1;
                }
            }
            self.acc |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
    }

    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        if self.count < n {
            self.fill();
        }
        let v = (self.acc >> (64 - n)) as u32;
        self.acc <<= n;
        self.count -= n;
        v
    }

    fn decode(&mut self, h: &Huffman) -> Result<u8, JpegError> {
        if self.count < LOOKAHEAD {
            self.fill();
        }
        let (len, symbol) = h.lookahead[(self.acc >> (64 - LOOKAHEAD)) as usize];
        if len > 0 {
            self.acc <<= len;
            self.count -= u32::from(len);
            return Ok(symbol);
        }
        // A code longer than the lookahead (or an invalid one): bit by bit.
        let mut code = 0i32;
        for len in 1..=16 {
            code = (code << 1) | self.bits(1) as i32;
            if code <= h.max_code[len] {
                let idx = (code + h.val_offset[len]) as usize;
                return h.symbols.get(idx).copied().ok_or_else(|| JpegError("bad Huffman code".into()));
            }
        }
        bad("bad Huffman code")
    }

    /// T.81 F.2.2.1 EXTEND of `s` additional bits.
    fn receive_extend(&mut self, s: u8) -> i32 {
        if s == 0 {
            return 0;
        }
        let v = self.bits(u32::from(s)) as i32;
        if v < 1 << (s - 1) { v - (1 << s) + 1 } else { v }
    }

    /// Skips to after the next RSTn marker.
    fn restart(&mut self) -> Result<(), JpegError> {
        self.acc = 0;
        self.count = 0;
        self.marker_seen = false;
        while self.pos + 1 < self.data.len() {
            if self.data[self.pos] == 0xFF && (0xD0..=0xD7).contains(&self.data[self.pos + 1]) {
                self.pos += 2;
                return Ok(());
            }
            self.pos += 1;
        }
        bad("missing restart marker")
    }

    /// Position of the marker that ended the entropy-coded data.
    fn end(&self) -> usize {
        let mut p = self.pos;
        while p + 1 < self.data.len()
            && !(self.data[p] == 0xFF && self.data[p + 1] != 0 && self.data[p + 1] != 0xFF)
        {
            p += 1;
        }
        p
    }
}

#[derive(Debug, Clone)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Blocks across and down, padded to whole MCUs.
    bw: usize,
    bh: usize,
    /// Samples of the component plane (bw * 8 by bh * 8).
    plane: Vec<f32>,
    dc_pred: i32,
}

/// The 8x8 IDCT basis, `table[x][u] = c(u) cos((2x + 1) u pi / 16) / 2`, and its transpose.
struct IdctTable {
    table: [[f32; 8]; 8],
    /// `basis[u][x] = table[x][u]`, so that the row pass runs along x.
    basis: [[f32; 8]; 8],
}

fn idct_table() -> IdctTable {
    let mut t = [[0f32; 8]; 8];
    for (x, row) in t.iter_mut().enumerate() {
        for (u, v) in row.iter_mut().enumerate() {
            let c = if u == 0 { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };
            *v = (c * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos() / 2.0) as f32;
        }
    }
    let mut basis = [[0f32; 8]; 8];
    for (x, row) in t.iter().enumerate() {
        for (u, &v) in row.iter().enumerate() {
            basis[u][x] = v;
        }
    }
    IdctTable { table: t, basis }
}

/// The separable 8x8 IDCT, rows then columns. Zero coefficients add nothing to its sums, so
/// they are skipped: the result is the same as summing them (the rounding of the sums is in
/// the same order), and most blocks of a radiograph have a handful of non-zero ones.
/// `rows`: bit `y` set if row `y` of `coef` has a non-zero coefficient.
fn idct_block(coef: &[f32; 64], rows: u8, idct: &IdctTable, out: &mut [f32], stride: usize) {
    let (table, basis) = (&idct.table, &idct.basis);
    let mut tmp = [[0f32; 8]; 8];
    for y in (0..8).filter(|y| rows >> y & 1 == 1) {
        for u in 0..8 {
            let c = coef[y * 8 + u];
            if c != 0.0 {
                for (t, &b) in tmp[y].iter_mut().zip(&basis[u]) {
                    *t += b * c;
                }
            }
        }
    }
    for y in 0..8 {
        let mut acc = [0f32; 8];
        for v in (0..8).filter(|v| rows >> v & 1 == 1) {
            let t = table[y][v];
            for (a, &x) in acc.iter_mut().zip(&tmp[v]) {
                *a += t * x;
            }
        }
        out[y * stride..][..8].copy_from_slice(&acc);
    }
}

fn be16(data: &[u8], at: usize) -> Result<usize, JpegError> {
    match data.get(at..at + 2) {
        Some(b) => Ok(usize::from(u16::from_be_bytes([b[0], b[1]]))),
        None => bad("truncated stream"),
    }
}

/// Decodes a baseline or extended sequential Huffman JPEG (SOF0 or SOF1) of 8 or 12 bits.
pub fn decode(data: &[u8]) -> Result<JpegImage, JpegError> {
    if data.get(0..2) != Some(&[0xFF, 0xD8]) {
        return bad("no start-of-image marker");
    }
    let mut quant = [[0f32; 64]; 4];
    let (mut dc_tables, mut ac_tables): ([Option<Huffman>; 4], [Option<Huffman>; 4]) = Default::default();
    let mut comps: Vec<Component> = Vec::new();
    let (mut width, mut height, mut precision) = (0usize, 0usize, 8u8);
    let (mut hmax, mut vmax) = (1usize, 1usize);
    let mut restart_interval = 0usize;
    let mut scans = 0;
    let table = idct_table();
    let mut pos = 2;
    loop {
        // Fill bytes before a marker are allowed.
        while data.get(pos) == Some(&0xFF) && data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&[0xFF, marker]) = data.get(pos..pos + 2) else {
            if scans > 0 {
                break; // no end-of-image marker: keep what was decoded
            }
            return bad("truncated stream");
        };
        pos += 2;
        match marker {
            0xD9 => break,
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let len = be16(data, pos)?;
        let seg = data.get(pos + 2..pos + len).ok_or_else(|| JpegError("truncated segment".into()))?;
        match marker {
            0xDB => {
                let mut p = 0;
                while p < seg.len() {
                    let (pq, tq) = (seg[p] >> 4, usize::from(seg[p] & 15) & 3);
                    p += 1;
                    for &natural in &ZIGZAG {
                        let v = if pq == 0 {
                            seg.get(p).map(|&b| u16::from(b))
                        } else {
                            seg.get(p..p + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
                        };
                        quant[tq][natural] = f32::from(v.ok_or_else(|| JpegError("truncated DQT".into()))?);
                        p += if pq == 0 { 1 } else { 2 };
                    }
                }
            }
            0xC4 => {
                let mut p = 0;
                while p + 17 <= seg.len() {
                    let (tc, th) = (seg[p] >> 4, usize::from(seg[p] & 15) & 3);
                    let counts: [u8; 16] = seg[p + 1..p + 17].try_into().unwrap();
                    let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    let symbols =
                        seg.get(p + 17..p + 17 + n).ok_or_else(|| JpegError("truncated DHT".into()))?;
                    let h = Huffman::new(&counts, symbols.to_vec())?;
                    if tc == 0 {
                        dc_tables[th] = Some(h);
                    } else {
                        ac_tables[th] = Some(h);
                    }
                    p += 17 + n;
                }
            }
            0xC0 | 0xC1 => {
                if seg.len() < 6 {
                    return bad("truncated frame header");
                }
                precision = seg[0];
                if precision != 8 && precision != 12 {
                    return bad(format!("{precision}-bit samples in a DCT frame"));
                }
                height = usize::from(u16::from_be_bytes([seg[1], seg[2]]));
                width = usize::from(u16::from_be_bytes([seg[3], seg[4]]));
                let n = usize::from(seg[5]);
                if width == 0 || height == 0 || n == 0 || seg.len() < 6 + 3 * n {
                    return bad("invalid frame header (DNL-defined height is not supported)");
                }
                for c in 0..n {
                    let s = &seg[6 + 3 * c..9 + 3 * c];
                    let (h, v) = (usize::from(s[1] >> 4), usize::from(s[1] & 15));
                    if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
                        return bad("invalid sampling factors");
                    }
                    comps.push(Component {
                        id: s[0],
                        h,
                        v,
                        tq: usize::from(s[2]) & 3,
                        bw: 0,
                        bh: 0,
                        plane: Vec::new(),
                        dc_pred: 0,
                    });
                }
                // A damaged header must not ask for gigabytes: 2^28 samples is 16k x 16k.
                if width * height * n > 1 << 28 {
                    return bad(format!("{width} x {height} x {n} samples is beyond any radiograph"));
                }
                hmax = comps.iter().map(|c| c.h).max().unwrap();
                vmax = comps.iter().map(|c| c.v).max().unwrap();
                let (mcux, mcuy) = (width.div_ceil(8 * hmax), height.div_ceil(8 * vmax));
                for c in &mut comps {
                    c.bw = mcux * c.h;
                    c.bh = mcuy * c.v;
                    c.plane = vec![0f32; c.bw * 8 * c.bh * 8];
                }
            }
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return bad(format!(
                    "frame type SOF{} (progressive, lossless, hierarchical or arithmetic)",
                    marker - 0xC0
                ));
            }
            0xDD => restart_interval = be16(seg, 0)?,
            0xDA => {
                if comps.is_empty() {
                    return bad("scan before frame header");
                }
                let ns = usize::from(*seg.first().unwrap_or(&0));
                if ns == 0 || seg.len() < 1 + 2 * ns {
                    return bad("invalid scan header");
                }
                let mut members = Vec::new();
                for k in 0..ns {
                    let (cs, t) = (seg[1 + 2 * k], seg[2 + 2 * k]);
                    let ci = comps
                        .iter()
                        .position(|c| c.id == cs)
                        .ok_or_else(|| JpegError("scan names an unknown component".into()))?;
                    let (td, ta) = (usize::from(t >> 4) & 3, usize::from(t & 15) & 3);
                    if dc_tables[td].is_none() || ac_tables[ta].is_none() {
                        return bad("scan uses an undefined Huffman table");
                    }
                    members.push((ci, td, ta));
                }
                // Ss/Se/Ah/Al are 0/63/0/0 in sequential mode; some writers put other values
                // there, which change nothing for a sequential frame, so they are ignored.
                pos += len;
                pos = decode_scan(
                    data,
                    pos,
                    &mut comps,
                    &members,
                    &dc_tables,
                    &ac_tables,
                    &quant,
                    &table,
                    restart_interval,
                    (width, height, hmax, vmax),
                )?;
                scans += 1;
                continue;
            }
            _ => {} // APPn, COM, DNL...: skipped
        }
        pos += len;
    }
    if comps.is_empty() || scans == 0 {
        return bad("no image data");
    }
    let shift = f32::from(1u16 << (precision - 1));
    let max = f32::from(((1u32 << precision) - 1) as u16);
    let nc = comps.len();
    let mut samples = vec![0u16; width * height * nc];
    // Rounded half away from zero (`f32::round`, which is a libm call here).
    let sample = |v: f32| {
        let v = (v + shift).clamp(0.0, max);
        let i = v as u16;
        i + u16::from(v - f32::from(i) >= 0.5)
    };
    for (ci, c) in comps.iter().enumerate() {
        let stride = c.bw * 8;
        if nc == 1 {
            // Grey (full resolution): row by row.
            for (out, plane) in samples.chunks_exact_mut(width).zip(c.plane.chunks_exact(stride)) {
                out.iter_mut().zip(plane).for_each(|(o, &v)| *o = sample(v));
            }
            continue;
        }
        for y in 0..height {
            let sy = y * c.v / vmax;
            for x in 0..width {
                let sx = x * c.h / hmax;
                samples[(y * width + x) * nc + ci] = sample(c.plane[sy * stride + sx]);
            }
        }
    }
    Ok(JpegImage { width, height, components: nc, precision, samples })
}

#[allow(clippy::too_many_arguments)]
fn decode_scan(
    data: &[u8],
    start: usize,
    comps: &mut [Component],
    members: &[(usize, usize, usize)],
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    quant: &[[f32; 64]; 4],
    table: &IdctTable,
    restart_interval: usize,
    (width, height, hmax, vmax): (usize, usize, usize, usize),
) -> Result<usize, JpegError> {
    let mut bits = Bits::new(data, start);
    for &(ci, _, _) in members {
        comps[ci].dc_pred = 0;
    }
    // A scan of one component visits its blocks in raster order, without MCU padding beyond
    // the image (T.81 A.2.2); interleaved scans visit MCUs.
    let (units_x, units_y) = if members.len() == 1 {
        let c = &comps[members[0].0];
        ((width * c.h).div_ceil(8 * hmax), (height * c.v).div_ceil(8 * vmax))
    } else {
        (width.div_ceil(8 * hmax), height.div_ceil(8 * vmax))
    };
    let total = units_x * units_y;
    let mut coef = [0f32; 64];
    for unit in 0..total {
        if restart_interval > 0 && unit > 0 && unit % restart_interval == 0 {
            bits.restart()?;
            for &(ci, _, _) in members {
                comps[ci].dc_pred = 0;
            }
        }
        let (ux, uy) = (unit % units_x, unit / units_x);
        for &(ci, td, ta) in members {
            let (bx_n, by_n) = if members.len() == 1 { (1, 1) } else { (comps[ci].h, comps[ci].v) };
            for by in 0..by_n {
                for bx in 0..bx_n {
                    let c = &mut comps[ci];
                    coef.fill(0.0);
                    // Rows of `coef` with a non-zero coefficient (row 0: the DC).
                    let mut rows = 1u8;
                    let s = bits.decode(dc_tables[td].as_ref().unwrap())?;
                    if s > 16 {
                        return bad("bad DC coefficient size");
                    }
                    c.dc_pred += bits.receive_extend(s);
                    let q = &quant[c.tq];
                    coef[0] = c.dc_pred as f32 * q[0];
                    let mut k = 1;
                    while k < 64 {
                        let rs = bits.decode(ac_tables[ta].as_ref().unwrap())?;
                        let (r, s) = (usize::from(rs >> 4), rs & 15);
                        if s == 0 {
                            if r == 15 {
                                k += 16;
                                continue;
                            }
                            break;
                        }
                        k += r;
                        if k > 63 {
                            return bad("AC coefficient index beyond 63");
                        }
                        coef[ZIGZAG[k]] = bits.receive_extend(s) as f32 * q[ZIGZAG[k]];
                        rows |= 1 << (ZIGZAG[k] / 8);
                        k += 1;
                    }
                    let (col, row) =
                        if members.len() == 1 { (ux, uy) } else { (ux * c.h + bx, uy * c.v + by) };
                    if col < c.bw && row < c.bh {
                        let stride = c.bw * 8;
                        idct_block(&coef, rows, table, &mut c.plane[row * 8 * stride + col * 8..], stride);
                    }
                }
            }
        }
    }
    Ok(bits.end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idct_of_a_dc_block_is_flat() {
        let mut coef = [0f32; 64];
        coef[0] = 80.0;
        let mut out = [0f32; 64];
        idct_block(&coef, 1, &idct_table(), &mut out, 8);
        assert!(out.iter().all(|v| (v - 10.0).abs() < 1e-5), "{out:?}");
    }

    #[test]
    fn refuses_what_it_does_not_decode() {
        assert!(decode(b"not a jpeg").is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xC2, 0, 2]).unwrap_err().0.contains("SOF2"));
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xDB]).is_err());
    }
}
