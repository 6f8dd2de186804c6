"""Rebuild the CIFAR-10 JPEG copy (``cifar10-jpeg.tar.gz``) byte for byte from torchvision's lossless CIFAR-10.

    python docs/tools/cifar10_jpeg_from_lossless.py CIFAR10 OUT_DIR [--folder] [--jobs N]
    python docs/tools/cifar10_jpeg_from_lossless.py --check COPY
    python docs/tools/cifar10_jpeg_from_lossless.py --write-manifest COPY [MANIFEST]

CIFAR10 is what ``torchvision.datasets.CIFAR10(root, download=True)`` leaves in ``root``: the folder
``cifar-10-batches-py/`` (the python pickle batches), the folder holding it, or the archive
``cifar-10-python.tar.gz`` itself.  The first form writes ``OUT_DIR/cifar10-jpeg.tar.gz`` (``--folder``:
the extracted tree ``OUT_DIR/cifar10-jpeg/`` instead), laid out as the project reads it
(``train/<class>/<index>.jpg``, ``test/<class>/<index>.jpg``, ``<index>`` = 5-digit position in the
official order), and checks the result against ``cifar10-jpeg-manifest.sha256`` beside this script.
``--check`` checks an existing copy (a ``.tar.gz`` or an extracted ``cifar10-jpeg/`` folder);
``--write-manifest`` writes that manifest from a copy (how the committed one was made).

How the copy was encoded (found by re-encoding 3,000 lossless images and comparing bytes): IJG libjpeg
versions 7 to 9d with their defaults at quality 75: baseline, 4:2:0, the standard Huffman tables, a
JFIF 1.01 header and no other marker.  Since version 7, libjpeg reduces the chroma to 4:2:0 inside the
DCT (one 16x16 DCT per chroma block, ``do_fancy_downsampling``) instead of averaging pixels first, as
libjpeg-turbo (Pillow, OpenCV) and libjpeg 6b do; libjpeg 9e changed the chroma quantisation
table's DC entry from 17 to 16.
:func:`encode` is a NumPy re-implementation of exactly that path (integer colour conversion, the
``jpeg_fdct_islow`` and ``jpeg_fdct_16x16`` integer DCTs, libjpeg's rounding in quantisation, the
baseline Huffman coder), so no particular libjpeg build is needed.

The check: every file's sha256, one line ``<sha256>  <path>`` per file with paths relative to
``cifar10-jpeg/``, sorted (C locale): the sha256 of that listing names the whole tree, whatever the
archive around it; digests of each ``<split>/<class>/`` folder's lines say where a difference is.
The same listing comes from the shell:
``cd cifar10-jpeg && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum``.
The archive is written as the copy's was (GNU tar format, names sorted, directories included, owner 0
without names, mtime 2020-01-01, modes 755 / 644; gzip level 6 without name or time), so the
uncompressed tar has the manifest's ``cifar10-jpeg.tar`` digest; the ``.tar.gz`` itself matches
(sha256 ``409a740d...``) when GNU gzip is on PATH (used as ``gzip -n -6``), since Python's zlib
compresses the same tar to other bytes.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TOP = "cifar10-jpeg"
MANIFEST = Path(__file__).with_name("cifar10-jpeg-manifest.sha256")
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
#: md5 of the official batch files, as torchvision.datasets.CIFAR10 checks them
BATCH_MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
             "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
             "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"}
TAR_MTIME = 1577836800  # 2020-01-01 00:00:00 UTC, as in the copy

# ----------------------------------------------------------------------------------------------- the encoder
QUALITY = 75
# ITU-T T.81 Annex K tables (natural order), scaled to quality 75 as libjpeg's jpeg_set_quality does
STD_LUMA_Q = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
              14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
              49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
STD_CHROMA_Q = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
                47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32
# zigzag position k -> natural (row-major) position
ZIGZAG = (0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7,
          14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46,
          53, 60, 61, 54, 47, 55, 62, 63)
# Annex K.3 Huffman tables: (code counts by length 1..16, symbols)
HUFF_DC_LUMA = ((0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0), bytes(range(12)))
HUFF_DC_CHROMA = ((0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0), bytes(range(12)))
HUFF_AC_LUMA = ((0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d), bytes.fromhex(
    "01020300041105122131410613516107227114328191a1082342b1c11552d1f0243362728209"
    "0a161718191a25262728292a3435363738393a434445464748494a535455565758595a636465"
    "666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9"
    "aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9ea"
    "f1f2f3f4f5f6f7f8f9fa"))
HUFF_AC_CHROMA = ((0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77), bytes.fromhex(
    "000102031104052131061241510761711322328108144291a1b1c109233352f0156272d10a16"
    "2434e125f11718191a262728292a35363738393a434445464748494a535455565758595a6364"
    "65666768696a737475767778797a82838485868788898a92939495969798999aa2a3a4a5a6a7"
    "a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9"
    "eaf2f3f4f5f6f7f8f9fa"))


def quant_table(basic, quality: int = QUALITY) -> np.ndarray:
    """libjpeg's jpeg_quality_scaling + jpeg_add_quant_table (baseline: 1..255), natural order."""
    scale = 5000 // quality if quality < 50 else 200 - quality * 2
    return np.clip((np.asarray(basic, dtype=np.int64) * scale + 50) // 100, 1, 255)


Q_LUMA, Q_CHROMA = quant_table(STD_LUMA_Q), quant_table(STD_CHROMA_Q)


def huffman_codes(table) -> dict[int, str]:
    """{symbol: code as a string of '0' / '1'} of a canonical Huffman table (Annex C)."""
    counts, symbols = table
    codes, code, k = {}, 0, 0
    for length, n in enumerate(counts, start=1):
        for _ in range(n):
            codes[symbols[k]] = format(code, f"0{length}b")
            code, k = code + 1, k + 1
        code <<= 1
    return codes


CODES = {name: huffman_codes(t) for name, t in
         (("dc0", HUFF_DC_LUMA), ("ac0", HUFF_AC_LUMA), ("dc1", HUFF_DC_CHROMA), ("ac1", HUFF_AC_CHROMA))}


def _fix(x: float, bits: int) -> int:
    return int(x * (1 << bits) + 0.5)


def rgb_to_ycc(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """libjpeg's rgb_ycc_convert (jccolor.c): 16-bit fixed point, Y rounded half up, Cb / Cr by 0.5 - 2**-16."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    half, off = 1 << 15, 128 << 16
    y = (_fix(0.299, 16) * r + _fix(0.587, 16) * g + _fix(0.114, 16) * b + half) >> 16
    cb = (-_fix(0.168735892, 16) * r - _fix(0.331264108, 16) * g + _fix(0.5, 16) * b + off + half - 1) >> 16
    cr = (_fix(0.5, 16) * r - _fix(0.418687589, 16) * g - _fix(0.081312411, 16) * b + off + half - 1) >> 16
    return y, cb, cr


def _islow_1d(s: list, first: bool) -> list:
    """One pass of libjpeg's jpeg_fdct_islow (jfdctint.c) over the last axis: 8 values -> 8 coefficients.
    ``first``: the row pass on samples (level shift, scaled up by 2**PASS1_BITS); else the column pass."""
    c, p = 13, 2  # CONST_BITS, PASS1_BITS
    shift = c - p if first else c + p
    t0, t1, t2, t3 = s[0] + s[7], s[1] + s[6], s[2] + s[5], s[3] + s[4]
    t10, t12, t11, t13 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    d0, d1, d2, d3 = s[0] - s[7], s[1] - s[6], s[2] - s[5], s[3] - s[4]
    out = [None] * 8
    if first:
        out[0] = (t10 + t11 - 8 * 128) << p
        out[4] = (t10 - t11) << p
    else:
        t10 = t10 + (1 << (p - 1))
        out[0] = (t10 + t11) >> p
        out[4] = (t10 - t11) >> p
    z1 = (t12 + t13) * 4433 + (1 << (shift - 1))
    out[2] = (z1 + t12 * 6270) >> shift
    out[6] = (z1 - t13 * 15137) >> shift
    t12, t13 = d0 + d2, d1 + d3
    z1 = (t12 + t13) * 9633 + (1 << (shift - 1))
    t12, t13 = t12 * -3196 + z1, t13 * -16069 + z1
    z1 = (d0 + d3) * -7373
    o0, o3 = d0 * 12299 + z1 + t12, d3 * 2446 + z1 + t13
    z1 = (d1 + d2) * -20995
    o1, o2 = d1 * 25172 + z1 + t13, d2 * 16819 + z1 + t12
    out[1], out[3], out[5], out[7] = o0 >> shift, o1 >> shift, o2 >> shift, o3 >> shift
    return out


def _fdct16_1d(s: list, first: bool) -> list:
    """One pass of libjpeg's jpeg_fdct_16x16 (jfdctint.c, versions 7 to 9d) over the last axis: 16 values ->
    the 8 lowest of 16 coefficients.  The column pass also scales by (8/16)**2."""
    c, p = 13, 2
    shift = c - p if first else c + p + 2
    f = lambda x: _fix(x, c)
    desc = lambda x, n: (x + (1 << (n - 1))) >> n
    t = [s[i] + s[15 - i] for i in range(8)]
    t10, t14, t11, t15 = t[0] + t[7], t[0] - t[7], t[1] + t[6], t[1] - t[6]
    t12, t16, t13, t17 = t[2] + t[5], t[2] - t[5], t[3] + t[4], t[3] - t[4]
    d = [s[i] - s[15 - i] for i in range(8)]
    out = [None] * 8
    if first:
        out[0] = (t10 + t11 + t12 + t13 - 16 * 128) << p
    else:
        out[0] = desc(t10 + t11 + t12 + t13, p + 2)
    out[4] = desc((t10 - t13) * f(1.306562965) + (t11 - t12) * 4433, shift)
    t10 = (t17 - t15) * f(0.275899379) + (t14 - t16) * f(1.387039845)
    out[2] = desc(t10 + t15 * f(1.451774982) + t16 * f(2.172734804), shift)
    out[6] = desc(t10 - t14 * f(0.211164243) - t17 * f(1.061594338), shift)
    d0, d1, d2, d3, d4, d5, d6, d7 = d
    t11 = (d0 + d1) * f(1.353318001) + (d6 - d7) * f(0.410524528)
    t12 = (d0 + d2) * f(1.247225013) + (d5 + d7) * f(0.666655658)
    t13 = (d0 + d3) * f(1.093201867) + (d4 - d7) * f(0.897167586)
    t14 = (d1 + d2) * f(0.138617169) + (d6 - d5) * f(1.407403738)
    t15 = (d1 + d3) * -f(0.666655658) + (d4 + d6) * -f(1.247225013)
    t16 = (d2 + d3) * -f(1.353318001) + (d5 - d4) * f(0.410524528)
    t10 = t11 + t12 + t13 - d0 * f(2.286341144) + d7 * f(0.779653625)
    t11 = t11 + t14 + t15 + d1 * f(0.071888074) - d6 * f(1.663905119)
    t12 = t12 + t14 + t16 - d2 * f(1.125726048) + d5 * f(1.227391138)
    t13 = t13 + t15 + t16 + d3 * f(1.065388962) + d4 * f(2.167985692)
    out[1], out[3], out[5], out[7] = desc(t10, shift), desc(t11, shift), desc(t12, shift), desc(t13, shift)
    return out


def _dct2(blocks: np.ndarray, one_d) -> np.ndarray:
    """(..., n, n) int64 sample blocks -> (..., 8, 8) coefficients [vertical, horizontal frequency]:
    the row pass, then the column pass, as libjpeg runs them."""
    rows = np.stack(one_d([blocks[..., i] for i in range(blocks.shape[-1])], True), -1)  # (..., n rows, 8 u)
    cols = np.stack(one_d([rows[..., i, :] for i in range(rows.shape[-2])], False), -2)  # (..., 8 v, 8 u)
    return cols


def _quantize(coef: np.ndarray, table: np.ndarray) -> np.ndarray:
    """libjpeg's forward_DCT rounding: divide |x| + q/2 by q (q = table * 8), keep the sign."""
    q = (table << 3).reshape(8, 8)
    mag = (np.abs(coef) + (q >> 1)) // q
    return np.where(coef < 0, -mag, mag)


def _tiles(plane: np.ndarray, n: int) -> np.ndarray:
    """(N, H, W) -> (N, H/n, W/n, n, n)."""
    N, H, W = plane.shape
    return plane.reshape(N, H // n, n, W // n, n).transpose(0, 1, 3, 2, 4)


def coefficients(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantised DCT blocks of uint8 RGB images (N, H, W, 3), H and W multiples of 16: luma (N, H/8, W/8, 8, 8)
    from 8x8 blocks, Cb and Cr (N, H/16, W/16, 8, 8) each from a 16x16 block (4:2:0 inside the DCT)."""
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8 or rgb.shape[1] % 16 or rgb.shape[2] % 16:
        raise ValueError(f"images: expected uint8 (N, H, W, 3) with H, W multiples of 16, got {rgb.dtype} "
                         f"{rgb.shape}")
    y, cb, cr = rgb_to_ycc(rgb)
    qy = _quantize(_dct2(_tiles(y, 8), _islow_1d), Q_LUMA)
    return qy, _quantize(_dct2(_tiles(cb, 16), _fdct16_1d), Q_CHROMA), \
        _quantize(_dct2(_tiles(cr, 16), _fdct16_1d), Q_CHROMA)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload


def header(height: int, width: int) -> bytes:
    """SOI, JFIF 1.01 APP0 (no density unit, 1:1), two DQT, SOF0 (4:2:0), four DHT, SOS, as libjpeg writes them."""
    zz = list(ZIGZAG)
    dqt = [_segment(0xDB, bytes([t]) + bytes(int(v) for v in q[zz])) for t, q in ((0, Q_LUMA), (1, Q_CHROMA))]
    sof = _segment(0xC0, bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big")
                   + bytes([3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]))
    dht = [_segment(0xC4, bytes([tc]) + bytes(counts) + symbols) for tc, (counts, symbols) in
           ((0x00, HUFF_DC_LUMA), (0x10, HUFF_AC_LUMA), (0x01, HUFF_DC_CHROMA), (0x11, HUFF_AC_CHROMA))]
    sos = _segment(0xDA, bytes([3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]))
    app0 = _segment(0xE0, b"JFIF\x00" + bytes([1, 1, 0, 0, 1, 0, 1, 0, 0]))
    return b"\xff\xd8" + app0 + b"".join(dqt) + sof + b"".join(dht) + sos


def _bits(v: int) -> int:
    return int(abs(v)).bit_length()


def _encode_block(block: list, last_dc: int, dc: dict, ac: dict, out: list) -> None:
    """Append the Huffman code of one block (zigzag order, 64 ints) to ``out`` (jchuff.c encode_one_block)."""
    diff = block[0] - last_dc
    n = _bits(diff)
    out.append(dc[n])
    if n:
        out.append(format(diff if diff >= 0 else diff - 1 + (1 << n), f"0{n}b"))
    run = 0
    for v in block[1:]:
        if v == 0:
            run += 1
            continue
        while run > 15:
            out.append(ac[0xF0])
            run -= 16
        n = _bits(v)
        out.append(ac[(run << 4) + n])
        out.append(format(v if v >= 0 else v - 1 + (1 << n), f"0{n}b"))
        run = 0
    if run:
        out.append(ac[0x00])


def encode(rgb: np.ndarray) -> list[bytes]:
    """JPEG files of uint8 RGB images (N, H, W, 3), byte for byte as IJG libjpeg 7 to 9d writes them after
    ``jpeg_set_defaults`` and ``jpeg_set_quality(75)`` (checked against libjpeg 9d on the CIFAR-10 images
    and on noise, smooth, flat and black-and-white test images)."""
    qy, qcb, qcr = coefficients(rgb)
    zz = np.asarray(ZIGZAG)
    flat = lambda q: q.reshape(*q.shape[:-2], 64)[..., zz]
    qy, qcb, qcr = flat(qy), flat(qcb), flat(qcr)
    head = header(rgb.shape[1], rgb.shape[2])
    dc0, ac0, dc1, ac1 = CODES["dc0"], CODES["ac0"], CODES["dc1"], CODES["ac1"]
    files = []
    for k in range(len(rgb)):
        y, cb, cr = qy[k].tolist(), qcb[k].tolist(), qcr[k].tolist()
        out, last = [], [0, 0, 0]
        for r in range(len(cb)):  # MCU rows: 16 pixels
            for c in range(len(cb[0])):  # MCUs: Y(2r, 2c), Y(2r, 2c+1), Y(2r+1, 2c), Y(2r+1, 2c+1), Cb, Cr
                for br, bc in ((0, 0), (0, 1), (1, 0), (1, 1)):
                    blk = y[2 * r + br][2 * c + bc]
                    _encode_block(blk, last[0], dc0, ac0, out)
                    last[0] = blk[0]
                for i, plane in ((1, cb), (2, cr)):
                    blk = plane[r][c]
                    _encode_block(blk, last[i], dc1, ac1, out)
                    last[i] = blk[0]
        bits = "".join(out)
        bits += "1" * (-len(bits) % 8)  # pad the last byte with 1 bits
        scan = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
        files.append(head + scan.replace(b"\xff", b"\xff\x00") + b"\xff\xd9")
    return files


def _encode_chunk(args):
    return encode(*args)


def encode_all(rgb: np.ndarray, jobs: int = 1, chunk: int = 2000) -> list[bytes]:
    """:func:`encode` in chunks, on ``jobs`` processes."""
    parts = [(rgb[i:i + chunk],) for i in range(0, len(rgb), chunk)]
    if jobs <= 1 or len(parts) == 1:
        return [f for p in parts for f in _encode_chunk(p)]
    with ProcessPoolExecutor(jobs) as pool:
        return [f for fs in pool.map(_encode_chunk, parts) for f in fs]


# ------------------------------------------------------------------------------------------------- CIFAR-10 in
class _BatchUnpickler(pickle.Unpickler):
    """Rebuilds only what a CIFAR-10 batch holds (dicts, lists, strings, NumPy arrays): no other code runs.
    (``_codecs.encode`` turns text into bytes: how protocol-2 pickles written by Python 3 store bytes.)"""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"a CIFAR-10 batch holds no {module}.{name}: not a CIFAR-10 batch file")
        return super().find_class(module, name)


def _batch_sources(src: Path) -> dict[str, bytes]:
    """{batch name: file bytes} from cifar-10-batches-py/, a folder holding it, or cifar-10-python.tar.gz."""
    names = [n for ns in BATCHES.values() for n in ns]
    if src.is_file():
        out = {}
        with tarfile.open(src) as tf:
            for m in tf:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in names:
                    out[base] = tf.extractfile(m).read()
    else:
        d = src / "cifar-10-batches-py" if (src / "cifar-10-batches-py").is_dir() else src
        out = {n: (d / n).read_bytes() for n in names if (d / n).is_file()}
    missing = [n for n in names if n not in out]
    if missing:
        raise FileNotFoundError(f"{src}: no {', '.join(missing)}; expected torchvision's cifar-10-batches-py/ "
                                "(or the folder holding it, or cifar-10-python.tar.gz)")
    return out


def read_cifar10(src: Path, log=print) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images (50000, 32, 32, 3) uint8, labels), 'test': ...} in the official order."""
    raw = _batch_sources(Path(src))
    odd = [n for n, b in raw.items() if hashlib.md5(b).hexdigest() != BATCH_MD5[n]]
    if odd:
        log(f"note: {', '.join(odd)} differ from the official files (md5): the result will not match the copy")
    out = {}
    for split, names in BATCHES.items():
        xs, ys = [], []
        for n in names:
            d = _BatchUnpickler(io.BytesIO(raw[n]), encoding="latin1").load()
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d["labels"], dtype=np.int64))
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


def build_files(data: dict, jobs: int = 1) -> dict[str, bytes]:
    """{'<split>/<class>/<index>.jpg': JPEG bytes}, paths relative to cifar10-jpeg/, sorted."""
    files = {}
    for split, (x, y) in data.items():
        for i, b in enumerate(encode_all(x, jobs)):
            files[f"{split}/{CLASSES[y[i]]}/{i:05d}.jpg"] = b
    return dict(sorted(files.items()))


# ------------------------------------------------------------------------------------------ archive and manifest
def tar_bytes(files: dict[str, bytes]) -> bytes:
    """The uncompressed tar of ``cifar10-jpeg/`` as the copy's was written (GNU format, sorted names)."""
    entries = {f"{TOP}/": None}
    for rel, data in files.items():
        parts = rel.split("/")
        for k in range(1, len(parts)):
            entries[f"{TOP}/{'/'.join(parts[:k])}/"] = None
        entries[f"{TOP}/{rel}"] = data
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name in sorted(entries):
            data = entries[name]
            ti = tarfile.TarInfo(name.rstrip("/"))
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = TAR_MTIME, 0, 0, "", ""
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def gnu_gzip() -> str | None:
    """The GNU gzip on PATH, or None."""
    exe = shutil.which("gzip")
    if not exe:
        return None
    try:
        ver = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return exe if ver.startswith("gzip ") else None


def gzip_bytes(data: bytes, use_gnu: bool = True) -> tuple[bytes, str]:
    """``data`` gzip-compressed at level 6 without name or time, and which compressor did it."""
    exe = gnu_gzip() if use_gnu else None
    if exe:
        return subprocess.run([exe, "-n", "-6", "-c"], input=data, capture_output=True, check=True).stdout, "GNU gzip"
    return gzip.compress(data, compresslevel=6, mtime=0), "Python zlib"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing(digests: dict[str, str], prefix: str = "") -> bytes:
    """``<sha256>  <path>`` lines of the files under ``prefix``, sorted by path (C locale), as sha256sum writes them."""
    return "".join(f"{digests[p]}  {p}\n" for p in sorted(digests) if p.startswith(prefix)).encode()


def manifest_entries(digests: dict[str, str]) -> dict[str, str]:
    """{name: sha256}: ``listing`` for the whole tree and one ``<split>/<class>/`` per folder."""
    out = {"listing": sha256(listing(digests))}
    for folder in sorted({p.rsplit("/", 1)[0] + "/" for p in digests}):
        out[folder] = sha256(listing(digests, folder))
    return out


def read_manifest(path: Path = MANIFEST) -> dict[str, str]:
    """{name: sha256} of a manifest file (``#`` lines are comments)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(None, 1)
            out[name.split("  (")[0].strip()] = digest
    return out


def write_manifest(entries: dict[str, str], counts: dict[str, int], path: Path = MANIFEST) -> None:
    lines = ["# sha256 manifest of the CIFAR-10 JPEG copy cifar10-jpeg.tar.gz (docs/data-and-weights.md),",
             "# written by docs/tools/cifar10_jpeg_from_lossless.py --write-manifest.  <sha256>  <name>, where name is",
             "#   listing              the sha256sum listing of every file, paths relative to cifar10-jpeg/, sorted:",
             "#                        cd cifar10-jpeg && find . -type f -printf '%P\\n' | LC_ALL=C sort \\",
             "#                          | xargs -d '\\n' sha256sum | sha256sum",
             "#   <split>/<class>/     the lines of that listing for one folder",
             "#   cifar10-jpeg.tar     the uncompressed archive;  cifar10-jpeg.tar.gz  the archive (GNU gzip -n -6)"]
    for name, digest in entries.items():
        n = counts.get(name)
        lines.append(f"{digest}  {name}" + (f"  ({n} files)" if n is not None else ""))
    Path(path).write_text("\n".join(lines) + "\n")


def load_copy(src: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """The files of an existing copy ({path relative to cifar10-jpeg/: bytes}) and, for an archive, the
    sha256 of ``cifar10-jpeg.tar.gz`` and of the uncompressed ``cifar10-jpeg.tar``."""
    src = Path(src)
    files, archive = {}, {}
    if src.is_file():
        raw = src.read_bytes()
        tar = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        archive = {"cifar10-jpeg.tar": sha256(tar)}
        if tar is not raw:
            archive["cifar10-jpeg.tar.gz"] = sha256(raw)
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            for m in tf:
                if m.isfile():
                    files[m.name.split("/", 1)[1] if m.name.startswith(f"{TOP}/") else m.name] = \
                        tf.extractfile(m).read()
    else:
        root = src / TOP if (src / TOP).is_dir() else src
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = Path(dirpath) / n
                files[p.relative_to(root).as_posix()] = p.read_bytes()
    return dict(sorted(files.items())), archive


def check(files: dict[str, bytes], archive: dict[str, str], manifest: dict[str, str], log=print) -> bool:
    """Compare a tree (and its archive digests, where known) with the manifest; log what differs."""
    digests = {p: sha256(b) for p, b in files.items()}
    got = manifest_entries(digests)
    ok = got["listing"] == manifest["listing"]
    log(f"listing of {len(files)} files: {'matches' if ok else 'DIFFERS'} ({got['listing'][:16]}...)")
    if not ok:
        folders = [k for k in manifest if k.endswith("/")]
        bad = [k for k in folders if got.get(k) != manifest[k]]
        extra = sorted(set(k for k in got if k.endswith("/")) - set(folders))
        log(f"  folders that differ: {len(bad)} of {len(folders)}: {', '.join(bad[:20])}"
            + (f"; folders not in the manifest: {', '.join(extra)}" if extra else ""))
    for name in ("cifar10-jpeg.tar", "cifar10-jpeg.tar.gz"):
        if name in archive and name in manifest:
            same = archive[name] == manifest[name]
            log(f"{name}: {'matches' if same else 'differs'} ({archive[name][:16]}...)")
            ok = ok and (same or name.endswith(".gz"))  # the .gz bytes depend on the compressor; the tar must match
    return ok


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("cifar10", nargs="?", type=Path, help="cifar-10-batches-py/, its parent or cifar-10-python.tar.gz")
    ap.add_argument("out", nargs="?", type=Path, help="folder to write cifar10-jpeg.tar.gz (or cifar10-jpeg/) into")
    ap.add_argument("--folder", action="store_true",
                    help="write the extracted tree cifar10-jpeg/ instead of the archive")
    ap.add_argument("--jobs", type=int, default=1,
                    help="encoding processes (default 1: one to two minutes for the 60,000 images)")
    ap.add_argument("--manifest", type=Path, default=MANIFEST, help="manifest to check against (default: the "
                    "committed cifar10-jpeg-manifest.sha256)")
    ap.add_argument("--check", type=Path, metavar="COPY", help="check an existing copy (.tar.gz or folder) and exit")
    ap.add_argument("--write-manifest", type=Path, metavar="COPY", help="write --manifest (or the path after "
                    "COPY) from an existing copy and exit")
    args = ap.parse_args(argv)

    if args.write_manifest or args.check:
        files, archive = load_copy(args.write_manifest or args.check)
        if args.check:
            return 0 if check(files, archive, read_manifest(args.manifest)) else 1
        digests = {p: sha256(b) for p, b in files.items()}
        entries = {**manifest_entries(digests), **archive}
        counts = {"listing": len(digests)}
        for p in digests:
            counts[p.rsplit("/", 1)[0] + "/"] = counts.get(p.rsplit("/", 1)[0] + "/", 0) + 1
        target = args.cifar10 or args.manifest  # `--write-manifest COPY [MANIFEST]`
        write_manifest(entries, counts, target)
        print(f"wrote {target}: {len(digests)} files, listing {entries['listing']}")
        return 0

    if not (args.cifar10 and args.out):
        ap.error("give CIFAR10 and OUT_DIR (or --check / --write-manifest COPY)")
    data = read_cifar10(args.cifar10)
    print(f"encoding {sum(len(y) for _, y in data.values())} images ...", flush=True)
    files = build_files(data, args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    archive = {}
    if args.folder:
        root = args.out / TOP
        for rel, b in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b)
        print(f"wrote {root}/ ({len(files)} files)")
    else:
        tar = tar_bytes(files)
        gz, how = gzip_bytes(tar)
        archive = {"cifar10-jpeg.tar": sha256(tar), "cifar10-jpeg.tar.gz": sha256(gz)}
        dst = args.out / f"{TOP}.tar.gz"
        tmp = dst.with_name(dst.name + ".part")
        tmp.write_bytes(gz)
        tmp.replace(dst)
        print(f"wrote {dst} ({len(gz):,} bytes, compressed by {how})")
    ok = check(files, archive, read_manifest(args.manifest))
    print("the result is the copy the committed runs used" if ok else
          "the result is NOT the copy the committed runs used (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
