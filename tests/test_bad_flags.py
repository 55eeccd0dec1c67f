"""Every command, one bad value of each flag it takes: refused while parsing (exit 2), one line on
stderr naming the flag and what it accepts, no traceback, nothing written (docs/reliability.md,
"Flags")."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from segdistill.cli import main

# A folder no process may write into, root included (root passes chmod's permission checks).
READ_ONLY = "/proc/1" if sys.platform.startswith("linux") else None

# (command line, the text the one line must hold). Positional paths need not exist: the flag fails
# first. {RO}: a folder nobody may write into; {FILE}: a regular file; {DIR}: an existing folder.
BAD_FLAGS: list[tuple[list[str], str]] = [
    # train (and the config flags distill shares)
    (["train", "--epochs", "0"], "argument --epochs: '0' is out of range (expected a whole number >= 1)"),
    (["train", "--batch-size", "two"], "argument --batch-size: 'two' is not a whole number"),
    (["train", "--lr", "-0.001"], "argument --lr: '-0.001' is out of range (expected a number > 0)"),
    (["train", "--lr", "nan"], "argument --lr: 'nan' is out of range"),
    (["train", "--device", "gpu"], "argument --device: 'gpu' is not a device (expected auto, cpu, cuda or cuda:N)"),
    (["train", "--seed", "-1"], "argument --seed: '-1' is out of range (expected a whole number from 0 to 4294967295)"),
    (["train", "--time", "0"], "argument --time: '0' is out of range (expected minutes in (0, 10080])"),
    (["train", "--time", "inf"], "argument --time: 'inf' is out of range"),
    (["train", "--threads", "0"], "argument --threads: '0' is not a thread count (a whole number from 1 to 1024, or auto)"),
    (["train", "--threads", "100000"], "argument --threads: '100000' is not a thread count"),
    (["train", "--input-size", "8"], "argument --input-size: '8' is out of range (expected pixels from 16 to 16384)"),
    (["train", "--output-dir", "{FILE}"], "argument --output-dir: {FILE}: is a file, expected a folder"),
    (["train", "--output-dir", "{RO}/runs"], "argument --output-dir: {RO}/runs: cannot write here ({RO} is read-only)"),
    # evaluate
    (["evaluate", "m.safetensors", "--data", "d", "--threshold", "1.5"],
     "argument --threshold: '1.5' is out of range (expected a probability in (0, 1))"),
    (["evaluate", "m.safetensors", "--data", "d", "--max-side", "5"], "argument --max-side: '5' is not a max side"),
    (["evaluate", "m.safetensors", "--data", "d", "--tta", "3"], "argument --tta: invalid choice: 3 (choose from 1, 2, 4, 8)"),
    (["evaluate", "m.safetensors", "--data", "d", "--backend", "tensorrt"],
     "argument --backend: 'tensorrt' is not a backend (expected one of auto, torch, onnxruntime, openvino)"),
    (["evaluate", "m.safetensors", "--data", "d", "--backend", "onnxruntime", "--device", "cuda"],
     "--backend onnxruntime runs on the CPU only; with --device cuda use --backend torch or auto"),
    (["evaluate", "m.safetensors", "--data", "d", "--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    (["evaluate", "m.safetensors", "--data", "d", "--out", "{RO}/e.csv"], "argument --out: {RO}/e.csv: cannot write here"),
    (["evaluate", "m.safetensors", "--data", "d", "--threads", "x"], "argument --threads: 'x' is not a thread count"),
    # report
    (["report", "run", "--device", "tpu"], "argument --device: 'tpu' is not a device"),
    (["report", "run", "--threads", "-2"], "argument --threads: '-2' is not a thread count"),
    # predict
    (["predict", "m.safetensors", "x.png", "--out", "{FILE}"], "argument --out: {FILE}: is a file, expected a folder"),
    (["predict", "m.safetensors", "x.png", "--out", "{RO}/p"], "argument --out: {RO}/p: cannot write here ({RO} is read-only)"),
    (["predict", "m.safetensors", "x.png", "--threshold", "0"], "argument --threshold: '0' is out of range"),
    (["predict", "m.safetensors", "x.png", "--batch-size", "0"], "argument --batch-size: '0' is out of range"),
    (["predict", "m.safetensors", "x.png", "--tile", "4"], "argument --tile: '4' is out of range (expected pixels from 16"),
    (["predict", "m.safetensors", "x.png", "--tta", "16"], "argument --tta: invalid choice: 16"),
    (["predict", "m.safetensors", "x.png", "--device", "cuda:x"], "argument --device: 'cuda:x' is not a device"),
    (["predict", "m.safetensors", "x.png", "--backend", "openvino", "--device", "cuda:0"],
     "--backend openvino runs on the CPU only"),
    (["predict", "m.safetensors", "x.png", "--threads", "1.5"], "argument --threads: '1.5' is not a thread count"),
    # export
    (["export", "m.safetensors", "--out", "{RO}/m.onnx"], "argument --out: {RO}/m.onnx: cannot write here ({RO} is read-only)"),
    (["export", "m.safetensors", "--out", "{FILE}/m.onnx"], "argument --out: {FILE}/m.onnx: cannot write here ({FILE} is not a folder)"),
    (["export", "m.safetensors", "--out", "{DIR}"], "argument --out: {DIR}: is a folder, expected a file name"),
    (["export", "m.safetensors", "--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
    (["export", "m.safetensors", "--int8"], "--int8 needs --calibrate DIR"),
    (["export", "m.safetensors", "--calibrate", "imgs"], "--calibrate is only used with --int8"),
    (["export", "m.safetensors", "--int8", "--calibrate", "imgs", "--calibration-images", "0"],
     "argument --calibration-images: '0' is out of range"),
    (["export", "m.safetensors", "--threads", "none"], "argument --threads: 'none' is not a thread count"),
    # benchmark
    (["benchmark", "m.safetensors", "--backend", "cuda"], "argument --backend: 'cuda' is not a backend"),
    (["benchmark", "m.safetensors", "--size", "0"], "argument --size: '0' is out of range"),
    (["benchmark", "m.safetensors", "--size", "64", "64", "64"], "--size takes a height and at most a width (got 3 numbers)"),
    (["benchmark", "m.safetensors", "--batch-sizes", "1", "-4"], "argument --batch-sizes: '-4' is out of range"),
    (["benchmark", "m.safetensors", "--runs", "0"], "argument --runs: '0' is out of range"),
    (["benchmark", "m.safetensors", "--json", "{RO}/s.json"], "argument --json: {RO}/s.json: cannot write here"),
    (["benchmark", "m.safetensors", "--threads", "0"], "argument --threads: '0' is not a thread count"),
    # import-keras
    (["import-keras", "m.h5", "{RO}/m.safetensors"], "argument out: {RO}/m.safetensors: cannot write here"),
    (["import-keras", "m.h5", "--max-side", "-1"], "argument --max-side: '-1' is not a max side (pixels from 16 to 16384, or 0"),
    # distill
    (["distill", "--search", "keep=1.5"], "argument --search: 'keep=1.5' is not a search objective (expected keep=F with 0 < F <= 1"),
    (["distill", "--search", "latency=8"], "argument --search: 'latency=8' is not a search objective"),
    (["distill", "--search-budget", "-5"], "argument --search-budget: '-5' is out of range (expected minutes in (0, 10080])"),
    (["distill", "--alpha", "2"], "argument --alpha: '2' is out of range (expected a fraction in [0, 1])"),
    (["distill", "--temperature", "0"], "argument --temperature: '0' is out of range (expected a number > 0)"),
    (["distill", "--targets", "disk"], "argument --targets: invalid choice: 'disk'"),
    (["distill", "--loss", "mse"], "argument --loss: invalid choice: 'mse'"),
    (["distill", "--lr", "0"], "argument --lr: '0' is out of range"),
    (["distill", "--time", "-1"], "argument --time: '-1' is out of range"),
    # data
    (["data", "synth", "{FILE}"], "argument out: {FILE}: is a file, expected a folder"),
    (["data", "synth", "s", "--count", "0"], "argument --count: '0' is out of range"),
    (["data", "synth", "s", "--size", "100000"], "argument --size: '100000' is out of range (expected pixels from 8 to 4096)"),
    (["data", "synth", "s", "--seed", "x"], "argument --seed: 'x' is not a whole number"),
    (["data", "check", "d", "--max-lines", "-1"], "argument --max-lines: '-1' is out of range"),
    (["data", "download", "kvasir-seg", "{RO}/k"], "argument dir: {RO}/k: cannot write here"),
    # config, demo
    (["config", "init", "{RO}/c.yaml"], "argument path: {RO}/c.yaml: cannot write here"),
    (["demo", "--dir", "{FILE}"], "argument --dir: {FILE}: is a file, expected a folder"),
    (["demo", "--epochs", "0"], "argument --epochs: '0' is out of range"),
    (["demo", "--student-epochs", "many"], "argument --student-epochs: 'many' is not a whole number"),
    (["demo", "--threads", "0"], "argument --threads: '0' is not a thread count"),
]


def _fill(argv: list[str], tmp: Path) -> list[str]:
    names = {"{RO}": READ_ONLY or "", "{FILE}": str(tmp / "file.txt"), "{DIR}": str(tmp)}
    for token, value in names.items():
        argv = [a.replace(token, value) for a in argv]
    return argv


@pytest.mark.parametrize(("argv", "expected"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_at_parse_time(argv: list[str], expected: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    if "{RO}" in " ".join(argv) and READ_ONLY is None:
        pytest.skip("needs a folder nobody may write into (/proc/1 on Linux)")
    (tmp_path / "file.txt").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as e:
        main(_fill(argv, tmp_path))
    out, err = capsys.readouterr()
    command = " ".join(argv[:2] if argv[0] in ("data", "config") else argv[:1])
    assert e.value.code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"segdistill {command}: error: "), err
    assert _fill([expected], tmp_path)[0] in err
    assert err.endswith(f"(see 'segdistill {command} -h')\n")
    assert sorted(os.listdir(tmp_path)) == before


def test_backend_not_installed_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "m.safetensors", "--backend", "openvino"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert 'argument --backend: the OpenVINO backend' in err
    assert 'pip install "segdistill[openvino]"; installed: all, auto, torch' in err


def test_good_values_pass_the_parser() -> None:
    from segdistill.cli import _parse, build_parser

    args = _parse(build_parser(), ["distill", "--search", "latency = 2.5 ms", "--time", "90", "--alpha", "0",
                                   "--threads", "auto", "--seed", "0", "--input-size", "16"])
    assert (args.search, args.time, args.alpha, args.threads, args.seed, args.input_size) == \
        ("latency = 2.5 ms", 90.0, 0.0, "auto", 0, 16)
    args = _parse(build_parser(), ["evaluate", "m", "--data", "d", "--max-side", "0", "--threshold", "0.3"])
    assert (args.max_side, args.threshold) == (0, 0.3)


@pytest.mark.skipif(READ_ONLY is None, reason="needs a folder nobody may write into (/proc/1 on Linux)")
@pytest.mark.parametrize("argv", [
    ["train", "--data", "DATA", "--set", "output_dir=RO/runs"],
    ["distill", "--teacher", "MODEL", "--images", "DATA/images", "--set", "output_dir=RO/runs"],
    ["predict", "MODEL", "DATA/images", "--set", "predict.output_dir=RO/p"],
], ids=["train", "distill", "predict"])
def test_output_folder_from_the_config_is_checked_before_work(argv: list[str], synth_dir: Path, tiny_model: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An output place that comes from the config (not a flag) is checked as the job starts: one
    line, before the data check, the teacher or the model is read."""
    names = {"RO": READ_ONLY or "", "MODEL": str(tiny_model), "DATA": str(synth_dir)}
    args = []
    for a in argv:
        for token, value in names.items():
            a = a.replace(token, value)
        args.append(a)
    capsys.readouterr()
    assert main(["-q", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {READ_ONLY}/"), err
    assert "cannot write the " in err and f"({READ_ONLY} is read-only)" in err
