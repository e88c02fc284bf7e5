"""The orchestration layer: a sampler is one function plus one table row, and the command line
follows the table without any other edit."""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import pytest
import torch
from test_cli_sample import _cli

from samplerkit import samplers
from samplerkit import speed as speed_lib
from samplerkit.cli._options import ARGUMENT_FLAGS, with_argument_flags
from samplerkit.errors import SamplerkitError
from samplerkit.generate import make_sampler
from samplerkit.knobs import Knob
from samplerkit.metrics.bootstrap import bootstrap
from samplerkit.metrics.inception import inception_path
from samplerkit.metrics.kid import check_subset_size
from samplerkit.runs import parse_class_labels
from samplerkit.train import TrainConfig


def toy(net, latents, sigmas, class_labels=None, *, toy_gain: float = 1.0, toy_mode: str = "plain",
        callback=None) -> torch.Tensor:
    """Euler, its result scaled by ``toy_gain`` and mirrored when ``toy_mode`` is 'flip'."""
    x = samplers.euler(net, latents, sigmas, class_labels, callback=callback) * toy_gain
    return x.flip(-1) if toy_mode == "flip" else x


def _resolve_toy(net, options: dict) -> dict:
    if not options["toy_gain"] >= 0:
        raise SamplerkitError(f"toy_gain must be >= 0, got {options['toy_gain']}")
    return options


@pytest.fixture
def with_toy(monkeypatch):
    row = samplers.SamplerInfo(toy, "1", lambda n: n, "sigmas", "a test sampler", _resolve_toy,
                               knob_help={"toy_gain": Knob("Gain of the toy sampler."),
                                          "toy_mode": Knob("Mirror the toy's images or not.", ("plain", "flip"))})
    monkeypatch.setitem(samplers.SAMPLERS, "toy", row)
    return row


def test_a_table_row_is_a_sampler_with_flags_on_sample_and_sweep(with_toy):
    for command in ("sample", "sweep"):
        code, out, err = _cli(command, "--help")
        assert code == 0, err
        assert "--toy-gain FLOAT" in out and "Gain of the toy sampler." in out, command
        assert "--toy-mode [plain|flip]" in out, command
    code, out, _ = _cli("samplers", "--json")
    row = {r["name"]: r for r in json.loads(out)}["toy"]
    assert row["knobs"] == {"--toy-gain": 1.0, "--toy-mode": "plain"}
    assert row["knob_help"]["--toy-mode"] == "Mirror the toy's images or not."
    code, text, _ = _cli("samplers")
    assert "--toy-gain 1.0: Gain of the toy sampler." in text


def test_a_table_row_runs_from_the_command_line_with_its_knobs(with_toy, tmp_path):
    code, _, err = _cli("sample", "--model", "shapes32-ideal", "--seeds", "0-1", "--steps", "3", "--quiet",
                        "--sampler", "toy", "--toy-gain", "0.5", "--toy-mode", "flip", "--out", str(tmp_path / "o"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["sampler"] == "toy" and manifest["toy_gain"] == 0.5 and manifest["toy_mode"] == "flip"
    assert manifest["nfe_per_image"] == 3


@pytest.mark.parametrize("args,needle", [
    (["--toy-mode", "sideways"], "--toy-mode"),  # a choice outside the row's list: click
    (["--toy-gain", "-1"], "--toy-gain"),  # the row's resolve, in Python words, shown with the flag
    (["--toy-gain", "x"], "--toy-gain"),
])
def test_a_table_rows_knobs_are_validated_with_one_line_errors(with_toy, tmp_path, args, needle):
    code, _, err = _cli("sample", "--model", "shapes32-ideal", "--seeds", "0", "--steps", "2", "--quiet",
                        "--sampler", "toy", "--out", str(tmp_path / "o"), *args)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert " toy_gain" not in err


def test_a_table_rows_knob_on_another_sampler_is_a_one_line_error(with_toy, tmp_path):
    code, _, err = _cli("sweep", "--sampler", "heun", "--steps", "2", "--num-images", "2", "--ref", "builtin:shapes32",
                        "--csv", str(tmp_path / "s.csv"), "--toy-gain", "2")
    assert code == 2 and err.count("\n") == 1 and "--toy-gain" in err, err


def test_choices_of_a_table_row_are_checked_by_the_library_too(with_toy):
    from samplerkit.builtin import shapes32_ideal

    net = shapes32_ideal(64)
    with pytest.raises(SamplerkitError, match="unknown toy_mode 'sideways'"):
        make_sampler(net, "toy", 2, toy_mode="sideways")


def test_every_knob_of_every_sampler_has_a_flag_and_help():
    from samplerkit.cli._options import flag_of

    for name, row in samplers.SAMPLERS.items():
        for knob in row.knobs:
            assert flag_of(knob) and row.knob(knob).help, (name, knob)
    assert flag_of("epsilon_s") == "--epsilon-s"


# ---------------------------------------------------------------------------------------------
# the shape of the code: imports, function length, where click and flags live

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"samplerkit": ROOT / "samplerkit", "samplerkit.adapters": ROOT / "adapters"}


def _modules() -> dict[str, Path]:
    """Every samplerkit module by its import name (the adapters install as samplerkit.adapters)."""
    out = {}
    for prefix, base in PACKAGES.items():
        for path in sorted(base.rglob("*.py")):
            parts = [p for p in path.relative_to(base).with_suffix("").parts if p != "__init__"]
            out[".".join([prefix, *parts])] = path
    return out


def _imported(name: str, path: Path, node: ast.AST, modules: dict) -> set[str]:
    """The samplerkit modules an import statement of module ``name`` loads (a parent package is left
    out when the statement names its submodules: Python loads every parent package anyway)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
    target = ".".join(base + ([node.module] if node.module else []))
    subs = {f"{target}.{a.name}" for a in node.names} & set(modules)
    return subs or ({target} & set(modules))


def _import_graph() -> dict[str, set[str]]:
    """Every samplerkit module -> the samplerkit modules it imports anywhere in its text (at the top, in
    a function, under an ``if``)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        nodes = ast.walk(ast.parse(path.read_text()))
        graph[name] = set().union(*[_imported(name, path, n, modules) for n in nodes
                                    if isinstance(n, ast.Import | ast.ImportFrom)]) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles a depth-first walk of ``graph`` meets, each as a path back to its start."""
    state, cycles = {}, []

    def visit(module, stack):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_the_imports_of_samplerkit_have_no_cycle():
    graph = _import_graph()
    assert _cycles(graph) == []
    assert "samplerkit.guidance" not in graph["samplerkit.samplers.discrete"]  # samplers take cond_fn instead
    # the loaders sit above the zoo and the shipped models above both; images is the leaf of data and output
    assert "samplerkit.zoo" in graph["samplerkit.loading"] and "samplerkit.loading" in graph["samplerkit.builtin"]
    assert "samplerkit.images" in graph["samplerkit.data"] and "samplerkit.images" in graph["samplerkit.output"]


def test_the_import_graph_counts_an_import_inside_a_function():
    modules = _modules()
    inner = ast.parse("def f():\n    from . import zoo\n    from .. import errors\n").body[0].body
    path = ROOT / "samplerkit" / "metrics" / "stats.py"
    assert _imported("samplerkit.metrics.stats", path, inner[0], modules) == {"samplerkit.metrics"}
    assert _imported("samplerkit.metrics.stats", path, inner[1], modules) == {"samplerkit.errors"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


# function bodies allowed to import a samplerkit module, with the reason (none: a module imports what it
# uses at its top; lazy imports are for heavy optional third-party packages only)
FUNCTION_LEVEL_IMPORTS: dict[tuple[str, str], str] = {}


def _function_level_imports() -> dict[tuple[str, str], list[str]]:
    modules, found = _modules(), {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom) and (
                        _imported(name, path, node, modules) or getattr(node, "level", 0)):
                    found.setdefault((name, func.name), []).append(ast.unparse(node))
    return found


def test_no_function_imports_a_samplerkit_module():
    found = _function_level_imports()
    assert {k: v for k, v in found.items() if k not in FUNCTION_LEVEL_IMPORTS} == {}
    assert set(FUNCTION_LEVEL_IMPORTS) <= set(found)  # a listed exception that is gone leaves the list


def test_click_is_imported_only_under_samplerkit_cli():
    users = sorted(name for name, path in _modules().items()
                   if re.search(r"^\s*(import click|from click)", path.read_text(), re.M))
    assert users and all(name.startswith("samplerkit.cli") for name in users), users


# functions over 60 lines that are still to be split (issue 27); none may be added, none may grow
LONG_FUNCTIONS = {
}


def test_no_function_is_over_60_lines_but_the_listed_ones_still_to_split():
    found = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                key = (name, node.name)
                found[key] = max(found.get(key, 0), node.end_lineno - node.lineno + 1)
    over = {k: n for k, n in found.items() if n > LONG_FUNCTIONS.get(k, 60)}
    assert over == {}


def _module_strings(tree: ast.Module, text: str) -> dict[str, str]:
    """The source of each module-level name assigned once, as raise messages use them (``_HOW_TO_PROVIDE``)."""
    return {node.targets[0].id: ast.get_source_segment(text, node.value) or "" for node in tree.body
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)}


def test_library_errors_name_no_flag():
    counts = {}
    for name, path in _modules().items():
        if name.startswith("samplerkit.cli"):
            continue
        text = path.read_text()
        tree = ast.parse(text)
        constants = _module_strings(tree, text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                used = [constants.get(n.id, "") for n in ast.walk(node.exc) if isinstance(n, ast.Name)]
                if re.search(r"--[A-Za-z]", " ".join([ast.get_source_segment(text, node.exc) or "", *used])):
                    counts[name] = counts.get(name, 0) + 1
    assert counts == {}


def _raised(call) -> str:
    with pytest.raises(SamplerkitError) as err:
        call()
    return str(err.value)


@pytest.mark.parametrize("call,python,flag", [
    (lambda: TrainConfig(data="d", out="o", lr=0).check(), "got lr=0", "got --lr 0"),
    (lambda: TrainConfig(data="d", out="o", microbatch=-1).check(), "microbatch=-1", "--microbatch -1"),
    (lambda: TrainConfig(data="d", out="o", precond="edm", loss="hybrid").check(), "loss=hybrid is ADM-only",
     "--loss hybrid is ADM-only (learned variance, L_vlb); --precond edm trains"),
    (lambda: TrainConfig(data="d", out="o", weight_decay=-1).check(), "weight_decay, lambda_wd and grad_clip",
     "--weight-decay, --lambda-wd and --grad-clip"),
    (lambda: TrainConfig(data="d", out="o", regularizer="wd", weight_decay=0.1).check(), "drop weight_decay",
     "with --regularizer wd, AdamW's weight decay is already --lambda-wd; drop --weight-decay (or use --wd-form loss)"),
    (lambda: TrainConfig(data="d", out="o", ema_halflife_kimg=0).check(), "ema_halflife_kimg", "--ema-halflife-kimg"),
    (lambda: speed_lib.parse("sideways"), "bad speed 'sideways'", "bad --speed 'sideways'"),
    (lambda: speed_lib.parse("compile=maybe"), "bad speed compile=", "bad --speed compile="),
    (lambda: parse_class_labels("x"), "bad class_labels 'x'", "bad --class-labels 'x'"),
    (lambda: bootstrap(lambda idx: 0.0, 10, rounds=1), "rounds >= 2", "--bootstrap needs at least 2 rounds"),
    (lambda: check_subset_size(4, 5, 9), "use kid_subset_size 4", "use --kid-subset-size 4"),
    (lambda: inception_path("/nonexistent/inception.pt"), "network file as path=FILE", "as --inception FILE"),
])
def test_library_errors_use_python_names_and_the_cli_shows_the_flags(call, python, flag):
    message = _raised(call)
    assert python in message and "--" not in message
    assert flag in with_argument_flags(message)


def test_argument_flags_keys_are_in_library_messages_and_not_in_each_others_flags():
    sources = "".join(path.read_text() for name, path in _modules().items() if not name.startswith("samplerkit.cli"))
    assert [key for key in ARGUMENT_FLAGS if key not in sources] == []
    assert [(key, flag) for key in ARGUMENT_FLAGS for flag in ARGUMENT_FLAGS.values() if key in flag] == []


def test_exposure_bias_old_flag_spellings_are_hidden_aliases(tmp_path):
    args = ["exposure-bias", "--model", "shapes32-ideal", "--num-images", "2", "--t", "3", "--quiet", "--device", "cpu"]
    code, _, err = _cli(*args, "--no-clip", "--ddpm-schedule", "cosine:100", "--csv", str(tmp_path / "new.csv"))
    assert code == 0, err
    code, _, err = _cli(*args, "--no-clip-denoised", "--ref", "cosine:100", "--csv", str(tmp_path / "old.csv"))
    assert code == 0, err
    rows = [list(csv.DictReader((tmp_path / f"{name}.csv").open())) for name in ("new", "old")]
    for row in rows[0] + rows[1]:
        row.pop("seconds")
    assert rows[0] == rows[1] and rows[0][0]["settings"].endswith("clip=0")
    assert "cosine:100" in rows[0][0]["settings"]
    code, out, _ = _cli("exposure-bias", "--help")
    assert "--ddpm-schedule" in out and "--clip-denoised" not in out and "--ref " not in out
