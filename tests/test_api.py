"""The library surface: every command is a function importable from the top-level package."""

from __future__ import annotations

import inspect

import medfrag_probe


def test_every_exported_name_is_usable_and_commands_are_callable():
    for name in medfrag_probe.__all__:
        assert getattr(medfrag_probe, name) is not None, name
    for name in ("extract", "probe", "vqa", "import_answers", "bridge", "run", "report"):
        assert callable(getattr(medfrag_probe, name)), name


def test_from_imports_give_callables_and_submodules_stay_importable(tmp_path):
    import medfrag_probe.bridge.core as core
    import medfrag_probe.vqa.run as vqa_run
    from medfrag_probe import bridge, extract, vqa  # twice: the second import must not turn them into plain modules
    from medfrag_probe import extract as again

    assert callable(extract) and callable(again) and callable(vqa) and callable(bridge)
    assert inspect.isfunction(vqa_run.vqa) and inspect.isfunction(core.bridge)
    result = extract("tiny:clip", "synth:brain-mri?n=4", points="vision.pooled", out=tmp_path / "c.h5")
    assert result.path.is_file()
