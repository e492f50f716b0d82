"""The command line: help, version, one-line errors with exit 2, and the extract/inspect/cache/synth flow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medfrag_probe.cli import main


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_version_and_help(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("medfrag-probe 0.")
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "extract" in out and "inspect" in out and "cache" in out


@pytest.mark.parametrize("args, message", [
    (["extract", "--model", "no-such-model", "--data", "synth:brain-mri"], "unknown model 'no-such-model'"),
    (["extract", "--model", "tiny:clip", "--data", "synth:liver"], "unknown synth task 'liver'"),
    (["extract", "--model", "tiny:clip", "--data", "synth:brain-mri", "--batch-size", "x"], "batch-size"),
    (["extract", "--model", "tiny:clip", "--data", "synth:brain-mri", "--bogus"], "No such option"),
    (["cache", "info", "/no/such.h5"], "not found"),
    (["inspect", "tiny:nope"], "unknown tiny model 'nope'"),
])
def test_user_mistakes_exit_2_with_one_line(args, message, capsys):
    code, _, err = run(args, capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_extract_info_verify_flow(tmp_path, capsys):
    out = tmp_path / "c.h5"
    code, stdout, _ = run(["--quiet", "extract", "-m", "tiny:paligemma", "-d", "synth:chest-xray?n=10&size=40",
                           "--points", "vision.post,projector", "--out", str(out), "--workers", "0"], capsys)
    assert code == 0 and "10 extracted now" in stdout and "0 failed" in stdout
    code, stdout, _ = run(["cache", "info", str(out), "--json"], capsys)
    info = json.loads(stdout)
    assert code == 0 and info["done"] == 10 and "projector/mean" in info["datasets"]
    code, stdout, _ = run(["cache", "verify", str(out)], capsys)
    assert code == 0 and stdout.strip().endswith("ok")


def test_inspect_lists_points_reads_point_and_fingerprint(capsys):
    code, stdout, _ = run(["inspect", "tiny:llava", "--json"], capsys)
    report = json.loads(stdout)
    rows = {row["point"]: row for row in report["points"]}
    assert code == 0 and report["reads_point"] == "vision.block.02"
    assert rows["vision.post"]["tokens"] == 17 and rows["vision.post"]["prefix"] == 1  # 16 patches + CLS
    assert rows["projector"]["tokens"] == 16 and rows["projector"]["width"] == 64
    assert "lm.block.01" in rows and len(report["fingerprints"]["model"]) == 16


def test_models_lists_presets_with_real_hub_ids(capsys):
    code, stdout, _ = run(["models"], capsys)
    assert code == 0
    for text in ("llava-hf/llava-1.5-7b-hf", "microsoft/llava-med-v1.5-mistral-7b", "google/medgemma-4b-it",
                 "google/gemma-3-4b-it", "BiomedCLIP", "google/medsiglip-448", "tiny:qwen2-vl"):
        assert text in stdout


def test_strict_exits_nonzero_when_an_image_failed(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "ok.png")
    (tmp_path / "b" / "broken.png").write_bytes(b"nope")
    args = ["--quiet", "extract", "-m", "tiny:siglip", "-d", f"imagefolder:{tmp_path}", "--out",
            str(tmp_path / "c.h5"), "--workers", "0"]
    code, stdout, _ = run(args, capsys)
    assert code == 0 and "failed b/broken.png" in stdout
    code, _, _ = run(args + ["--strict", "--overwrite"], capsys)
    assert code == 1


def test_synth_command_and_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medfrag_probe", "synth", "histology", "--out", str(tmp_path),
                           "--n", "4", "--size", "32"], capture_output=True, text=True)
    assert proc.returncode == 0 and (tmp_path / "manifest.csv").is_file()
    assert len(list(tmp_path.glob("*/*.png"))) == 4
    bad = subprocess.run([sys.executable, "-m", "medfrag_probe", "synth", "liver", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown synth task")


def test_ctrl_c_says_interrupted_and_exits_130(tmp_path, monkeypatch, capsys):
    import medfrag_probe.probes as probes_module
    from medfrag_probe.cli import main

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(probes_module, "probe", interrupt)
    (tmp_path / "c.h5").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", str(tmp_path / "c.h5"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 130
    assert "interrupted; finished batches are kept" in capsys.readouterr().err


def test_probe_on_a_missing_cache_creates_no_output_folder(tmp_path, capsys):
    from medfrag_probe.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["probe", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()


def _command_paths():
    import typer

    from medfrag_probe.cli import app

    def walk(command, path):  # typer may vendor its own click: walk by duck type
        yield path
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "(root)")
def test_every_help_renders_and_a_bare_command_never_crashes(path, capsys):
    """Help text holds brackets (`open_clip:ARCH[/PRETRAINED]`) that rich would read as markup: it must print as
    written, for every command and sub-command; a bare command prints usage or a one-line error."""
    code, out, err = run([*path, "--help"], capsys)
    assert code == 0 and "Usage:" in out and "Traceback" not in out + err
    if path:
        code, out, err = run(path, capsys) if path[-1] not in ("demo", "models") else (0, "", "")
        assert code in (0, 2) and "Traceback" not in out + err
    if path == ["extract"]:
        assert "open_clip:ARCH[/PRETRAINED]" in run(["extract", "--help"], capsys)[1].replace("\n", " ")
