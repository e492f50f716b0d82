"""The library surface: every command is a plain function importable from the top-level package."""

from __future__ import annotations

import inspect

import medfrag_probe

COMMANDS = ("extract", "probe", "vqa", "import_answers", "intervene", "bridge", "run", "report")


def test_every_exported_name_is_usable_and_commands_are_functions():
    for name in medfrag_probe.__all__:
        assert getattr(medfrag_probe, name) is not None, name
    for name in COMMANDS:
        assert inspect.isfunction(getattr(medfrag_probe, name)), name


def test_commands_show_their_real_signatures():
    expected = {"extract": ("model", "data", "points", "poolings", "out"), "probe": ("caches", "points", "folds"),
                "vqa": ("model", "data", "task", "out"),
                "bridge": ("probes", "vqa", "out", "seen_skill", "interventions"),
                "intervene": ("model", "data", "task", "probes", "out"), "run": ("config",), "report": ("folder",)}
    for name, params in expected.items():
        shown = inspect.signature(getattr(medfrag_probe, name)).parameters
        assert set(params) <= set(shown), (name, list(shown))
        assert "args" not in shown and "kwargs" not in shown, name


def test_from_imports_give_the_functions_and_implementation_modules_stay_importable(tmp_path):
    import medfrag_probe.answering.run as answering
    import medfrag_probe.attribution.core as attribution
    from medfrag_probe import bridge, extract, vqa
    from medfrag_probe import extract as again

    assert vqa is answering.vqa and bridge is attribution.bridge and extract is again
    result = extract("tiny:clip", "synth:brain-mri?n=4", points="vision.pooled", out=tmp_path / "c.h5")
    assert result.path.is_file()


def test_the_package_ships_type_information():
    from importlib.resources import files

    assert files("medfrag_probe").joinpath("py.typed").is_file()
