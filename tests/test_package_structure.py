"""Package layout and API conventions (after scanpy's ``tests/test_package_structure.py``)."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import subprocess
import sys
from inspect import Parameter
from types import FunctionType, ModuleType

import pytest

API_MODULES = ["pf.tl", "pf.pp", "pf.pl", "pf.models", "pf.datasets"]
ALL_MODULES = [
    "panfoma_sc",
    "panfoma_sc.bench",
    "panfoma_sc.data",
    "panfoma_sc.datasets",
    "panfoma_sc.models",
    "panfoma_sc.nn",
    "panfoma_sc.pl",
    "panfoma_sc.pp",
    "panfoma_sc.tl",
]
#: names the data argument of a ``tl`` / ``pp`` function may have
DATA_NAMES = {"adata", "mdata", "data"}


def _isort_key(name: str) -> tuple[int, list[int | str]]:
    """Ruff's RUF022 order: SCREAMING_SNAKE_CASE, then CamelCase, then the rest, each in natural order."""
    if len(name) > 1 and name.upper() == name and any(c.isalpha() for c in name):
        category = 0
    elif name[:1].isupper():
        category = 1
    else:
        category = 2
    return category, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _module(name: str) -> ModuleType:
    return importlib.import_module(name.replace("pf.", "panfoma_sc.", 1))


def _public_functions() -> list[tuple[str, FunctionType]]:
    functions = []
    for module_name in API_MODULES:
        module = _module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                functions.append((f"{module_name}.{name}", obj))
    return functions


PUBLIC_FUNCTIONS = _public_functions()
FUNCTION_PARAMS = [pytest.param(f, id=qualname) for qualname, f in PUBLIC_FUNCTIONS]


def test_public_functions_found():
    names = {qualname for qualname, _ in PUBLIC_FUNCTIONS}
    assert {"pf.tl.embed", "pf.pp.check_expression", "pf.pp.match_genes", "pf.models.load"} <= names


def test_import_does_not_import_torch_scanpy_or_the_benchmark():
    heavy = "{'torch', 'mamba_ssm', 'triton', 'scanpy', 'scib_metrics', 'jax'}"
    code = (
        "import json, sys; import panfoma_sc as pf; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy} or m == 'panfoma_sc.bench'))); "
        "print(json.dumps([callable(pf.bench.run), 'bench' in dir(pf), 'panfoma_sc.bench' in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    imported, lazy = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert imported == [], f"`import panfoma_sc` imported {imported[:10]}"
    assert lazy == [True, True, True]  # pf.bench is there on first access


@pytest.mark.parametrize("module_name", ALL_MODULES)
def test_all_is_sorted_and_complete(module_name: str):
    module = importlib.import_module(module_name)
    names = list(module.__all__)
    assert names == sorted(names, key=_isort_key), f"{module_name}.__all__ is not sorted (ruff's RUF022 order)"
    assert len(set(names)) == len(names), f"{module_name}.__all__ has duplicates"
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what the module lacks: {missing}"


@pytest.mark.parametrize("f", FUNCTION_PARAMS)
def test_signature_conventions(f: FunctionType):
    params = list(inspect.signature(f).parameters.values())
    if not params:
        return
    first = params[0]
    assert first.kind in {Parameter.POSITIONAL_ONLY, Parameter.POSITIONAL_OR_KEYWORD}, (
        f"first parameter {first.name!r} must be positional: it is the data"
    )
    if f.__module__.startswith(("panfoma_sc.tl", "panfoma_sc.pp")):
        assert first.name in DATA_NAMES, f"first parameter is {first.name!r}, expected one of {sorted(DATA_NAMES)}"
        assert first.default is Parameter.empty, "the data parameter has no default"

    n_positional = sum(p.kind is Parameter.POSITIONAL_OR_KEYWORD for p in params)
    assert n_positional <= 3, f"{n_positional} positional-or-keyword parameters, at most 3"

    copy = inspect.signature(f).parameters.get("copy")
    if copy is not None:
        assert copy.kind is Parameter.KEYWORD_ONLY, "`copy` must be keyword-only"
        assert copy.default is False

    positional_bools = [
        p.name
        for p in params
        if p.kind in {Parameter.POSITIONAL_ONLY, Parameter.POSITIONAL_OR_KEYWORD} and isinstance(p.default, bool)
    ]
    assert not positional_bools, f"positional parameters with a bool default: {positional_bools}"


@pytest.mark.parametrize("f", FUNCTION_PARAMS)
def test_numpydoc_docstring(f: FunctionType):
    doc = inspect.getdoc(f)
    assert doc, "no docstring"
    summary = doc.splitlines()[0]
    assert summary.rstrip().endswith("."), f"summary line {summary!r} is not a sentence"
    params = [
        p.name
        for p in inspect.signature(f).parameters.values()
        if p.kind not in {Parameter.VAR_POSITIONAL, Parameter.VAR_KEYWORD}
    ]
    if not params:
        return
    lines = doc.splitlines()
    assert "Parameters" in lines, "takes parameters but has no numpydoc 'Parameters' section"
    assert lines[lines.index("Parameters") + 1].startswith("----------"), "'Parameters' is not underlined"
    section = lines[lines.index("Parameters") + 2 :]
    documented = set()
    for line in section:
        if line and not line[0].isspace() and line.rstrip().endswith("-") and set(line.strip()) == {"-"}:
            break  # next section's underline
        if line and not line[0].isspace():
            documented.update(name.strip() for name in line.split(":")[0].split(","))
    undocumented = [p for p in params if p not in documented]
    assert not undocumented, f"parameters missing from the docstring: {undocumented}"


def test_pf_train_is_there_on_first_access():
    import panfoma_sc as pf
    import panfoma_sc.train

    assert pf.train is panfoma_sc.train
    assert "train" in pf.__all__
    with pytest.raises(AttributeError, match="has no attribute 'trian'"):
        pf.trian  # noqa: B018
