"""``pf.bench.load_config``: read a benchmark config and refuse its mistakes before anything runs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import fields
from numbers import Real
from pathlib import Path

from .._arguments import is_integer
from ._build import check_fractions, check_max_cells
from ._qc import QCThresholds
from ._tasks import TASK_METHODS, TASKS

logger = logging.getLogger(__name__)

__all__ = ["load_config", "shipped_configs", "validate_config"]

#: Folder of the configs that ship with the package (``panfoma bench run panfomabench``).
SHIPPED_CONFIG_DIR = Path(__file__).parent / "configs"

#: Methods run by each task when neither the dataset nor ``[tasks.<task>]`` lists them.
DEFAULT_METHODS: dict[str, list[str]] = {
    "annotation": ["pca_knn", "pca_logreg", "logreg_genes", "scanvi", "panfoma_knn", "panfoma_finetune"],
    "pan_cancer": ["pca_knn", "pca_logreg", "logreg_genes", "panfoma_knn", "panfoma_logreg"],
    "integration": ["pca", "harmony", "scvi", "panfoma", "panfoma_integrated"],
    "multiomics": [
        "rna_pca",
        "pca_concat",
        "wnn",
        "totalvi",
        "multivi",
        "panfoma",
        "panfoma_integrated",
        "panfoma_joint",
        "panfoma_late_fusion",
    ],
}
#: Tasks that read a paired multi-omics file (``.h5mu``, built by :func:`build_paired`) instead of ``.h5ad`` files.
PAIRED_TASKS = frozenset({"multiomics"})
#: Top-level sections of a config (``_path`` is set by :func:`load_config`).
SECTIONS = frozenset({"run", "methods", "tasks", "datasets"})
RUN_KEYS = frozenset({"seed", "model", "data_dir", "n_boot"})
#: Method settings of ``[methods]`` (see :class:`~panfoma_sc.bench._baselines.MethodContext`).
METHOD_OPTIONS = frozenset(
    {
        "n_neighbors",
        "n_comps",
        "n_top_genes",
        "logreg_c",
        "finetune_max_epochs",
        "integrate_max_epochs",
        "integrate_max_steps",
        "joint_max_epochs",
        "joint_max_steps",
        "multiomics_rna_comps",
        "multiomics_protein_comps",
        "scvi_max_epochs",
        "batch_size",
        "n_genes",
    }
)
TASK_KEYS = frozenset({"methods"})
DATASET_KEYS = frozenset(
    {
        "name",
        "files",
        "tasks",
        "label_key",
        "batch_key",
        "donor_key",
        "keep",
        "layer",
        "qc",
        "join",
        "fractions",
        "test_groups",
        "max_cells",
        "methods",
        "umap",
        "cv",
        "note",
        "gates",
        "gene_table",
    }
)
#: Dataset keys of :func:`build` that :func:`build_paired` has no use for.
PAIRED_IGNORED_KEYS = frozenset({"donor_key", "keep", "join", "fractions", "test_groups"})
#: Dataset keys each built-in task cannot run without (the multi-omics task has defaults for both).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "annotation": ("label_key",),
    "pan_cancer": ("label_key",),
    "integration": ("label_key", "batch_key"),
}
CV_CHOICES = ("split", "leave_one_group_out")


def load_config(path: str | Path) -> dict:
    """Read a benchmark config (``.toml``, ``.json``, ``.yaml``/``.yml``) and check it.

    Layout: ``[run]`` (``seed``, ``model``, ``data_dir``, ``n_boot``), ``[methods]`` (method settings such
    as ``n_comps``, ``finetune_max_epochs``, ``integrate_max_steps``, ``joint_max_epochs``), ``[tasks.<task>]``
    (``methods`` to run) and one ``[[datasets]]`` table per dataset (``name``, ``files``, ``tasks``,
    ``label_key``, ``batch_key``, ``donor_key``, ``keep``, ``layer``, ``qc``, ``join``, ``fractions``, ``test_groups``,
    ``max_cells``, ``methods`` (a table ``{task = [methods]}``), ``umap``, ``cv``, ``note``, ``gates``,
    ``gene_table``: a headerless ``ensembl_id,symbol`` CSV relative to ``data_dir``, default the data folder's
    ``genes/GENCODEv44_gene_id_to_name.csv``, else ``PANFOMA_DATA_DIR``'s).
    A task runs the methods its dataset lists, else those of ``[tasks.<task>]``, else its defaults; an empty
    list is refused (drop the task from the dataset's ``tasks`` instead). ``data_dir`` is relative to the
    config file; without it files are looked up in ``PANFOMA_DATA_DIR``. A dataset of one paired ``.h5mu`` file
    is read by :func:`build_paired` (labels from the protein ``gates``, default ``"pbmc_citeseq"``) and runs the
    ``multiomics`` task only.

    Every key, task and method name is checked here (:func:`validate_config`), so a misspelt one stops the run
    before the first dataset is built.

    Parameters
    ----------
    path
        The config file, or the name of a config that ships with the package (:func:`shipped_configs`:
        ``"panfomabench"``, ``"panfomabench-gpu"``).

    Returns
    -------
    The config, with ``config["_path"]`` set to the file.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file is a folder, has an unknown format or an invalid config.
    """
    path = _config_file(path)
    config = _parse(path)
    if not isinstance(config, Mapping):
        msg = f"Config {path.name!r} does not hold a table of sections: see {shipped_configs()['panfomabench']}."
        raise ValueError(msg)
    config = dict(config)
    validate_config(config, source=path.name)
    config["_path"] = str(path)
    return config


def shipped_configs() -> dict[str, Path]:
    """The benchmark configs that ship with the package, by name.

    ``"panfomabench"`` is the documentation's run (every labelled dataset of the shared data folder, sized for a
    2-core CPU), ``"panfomabench-gpu"`` the GPU-scale run. :func:`load_config`, :func:`run` and ``panfoma bench
    run`` take these names; copy a file to start a config of your own.

    Returns
    -------
    ``{name: path}`` of each shipped ``.toml`` file.
    """
    return {path.stem: path for path in sorted(SHIPPED_CONFIG_DIR.glob("*.toml"))}


def _config_file(path: str | Path) -> Path:
    """The file of a config: ``path`` itself, or the shipped config of that name when no such path exists.

    A shipped config's name may be given with its ``.toml`` suffix; a file or folder of that name in the working
    folder comes first.
    """
    shipped = shipped_configs()
    name = str(path).removesuffix(".toml") if isinstance(path, str) else None
    path = Path(path)
    if not path.exists() and name in shipped:
        return shipped[name]
    if path.is_dir():
        also = (
            f" (it hides the shipped config {name!r}: pass {str(shipped[name])!r} for that one)"
            if name in shipped
            else f", or the name of a shipped config: {sorted(shipped)}"
        )
        msg = f"Config {str(path)!r} is a folder: pass the config file{also}."
        raise ValueError(msg)
    if not path.is_file():
        msg = (
            f"Config file {str(path)!r} does not exist: check the path, or pass the name of a config that ships "
            f"with panfoma-sc: {sorted(shipped)}."
        )
        raise FileNotFoundError(msg)
    return path


def _parse(path: Path) -> object:
    formats = {".toml": "TOML", ".json": "JSON", ".yaml": "YAML", ".yml": "YAML"}
    if path.suffix not in formats:
        msg = f"Config {path.name!r}: use a .toml, .json or .yaml file."
        raise ValueError(msg)
    text = path.read_text()
    parse = json.loads if formats[path.suffix] == "JSON" else _parser(formats[path.suffix], path.name)
    try:
        return parse(text)
    except Exception as err:  # tomllib, json and yaml each raise their own error type
        msg = f"Config {path.name!r} is not valid {formats[path.suffix]}: {err}"
        raise ValueError(msg) from None


def _parser(kind: str, name: str) -> Callable[[str], object]:
    """The TOML or YAML reader; a missing one is an ``ImportError`` that says what to install."""
    try:
        if kind == "YAML":
            import yaml

            return yaml.safe_load
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: tomllib's predecessor
            import tomli as tomllib
        return tomllib.loads
    except ImportError:
        package = "pyyaml" if kind == "YAML" else "tomli"
        msg = f"Config {name!r}: reading {kind} needs {package} (pip install {package}); or write the config as .json."
        raise ImportError(msg) from None


def validate_config(config: Mapping, *, source: str = "config") -> None:
    """Refuse an invalid benchmark config, naming the key and the fix (see :func:`load_config` for the layout).

    Parameters
    ----------
    config
        The config as read from its file, or a dict passed to :func:`~panfoma_sc.bench.run`.
    source
        What to call the config in error messages.

    Raises
    ------
    ValueError
        An unknown section, key, task or method; a missing or ill-typed value.
    """
    _check_keys(config, SECTIONS | {"_path"}, f"Config {source!r}", "top-level sections")
    _check_run(_table(config, "run", source), source)
    _check_method_options(_table(config, "methods", source), source)
    tasks = _table(config, "tasks", source)
    for task, settings in tasks.items():
        _check_task_name(task, f"Config {source!r}: [tasks.{task}]")
        where = f"Config {source!r}: [tasks.{task}]"
        if not isinstance(settings, Mapping):
            msg = f"{where} must be a table, e.g. [tasks.{task}] methods = [...]."
            raise ValueError(msg)
        _check_keys(settings, TASK_KEYS, where, "keys")
        if "methods" in settings:
            _check_methods(task, settings["methods"], where)
    datasets = config.get("datasets")
    if not datasets or not isinstance(datasets, list):
        msg = f"Config {source!r} lists no [[datasets]]: add at least one (name, files, tasks)."
        raise ValueError(msg)
    names = [_check_dataset(dataset, i, source) for i, dataset in enumerate(datasets)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        msg = f"Config {source!r}: dataset names {repeated} are used twice; give every dataset its own name."
        raise ValueError(msg)


def _table(config: Mapping, section: str, source: str) -> Mapping:
    value = config.get(section, {})
    if not isinstance(value, Mapping):
        msg = f"Config {source!r}: [{section}] must be a table of keys, got {type(value).__name__}."
        raise ValueError(msg)
    return value


def _check_keys(table: Mapping, valid: frozenset[str], where: str, what: str) -> None:
    unknown = sorted(str(key) for key in set(table) - valid)
    if unknown:
        shown = sorted(valid - {"_path"})
        msg = f"{where}: unknown {what} {unknown}; valid {what}: {shown}. Check the spelling."
        raise ValueError(msg)


def _check_run(run: Mapping, source: str) -> None:
    where = f"Config {source!r}: [run]"
    _check_keys(run, RUN_KEYS, where, "keys")
    if "seed" in run and not is_integer(run["seed"]):
        msg = f"{where} seed={run['seed']!r}: use an integer, e.g. seed = 0."
        raise ValueError(msg)
    if "n_boot" in run and not (is_integer(run["n_boot"]) and run["n_boot"] >= 1):
        msg = f"{where} n_boot={run['n_boot']!r}: use an integer >= 1 (bootstrap resamples), e.g. n_boot = 1000."
        raise ValueError(msg)
    for key in ("model", "data_dir"):
        if key in run and not isinstance(run[key], str | Path):
            msg = f"{where} {key}={run[key]!r}: use a string (a name or a path)."
            raise ValueError(msg)


def _check_method_options(options: Mapping, source: str) -> None:
    where = f"Config {source!r}: [methods]"
    _check_keys(options, METHOD_OPTIONS, where, "method settings")
    for key, value in options.items():
        if value is not None and not (isinstance(value, Real) and not isinstance(value, bool) and value > 0):
            msg = f"{where} {key}={value!r}: use a number > 0, or leave the key out for the default."
            raise ValueError(msg)


def _check_task_name(task: str, where: str) -> None:
    if task not in TASKS:
        msg = f"{where}: unknown task {task!r}; available tasks: {sorted(TASKS)}. Check the spelling."
        raise ValueError(msg)


def _check_methods(task: str, methods: object, where: str) -> None:
    if isinstance(methods, str) or not isinstance(methods, list | tuple):
        msg = f"{where}: methods must be a list of names, e.g. methods = [{str(methods)!r}]."
        raise ValueError(msg)
    if not methods:
        defaults = DEFAULT_METHODS.get(task, [])
        msg = (
            f"{where}: methods = [] names no method. List the methods to run, leave the key out to run the "
            f"defaults {defaults}, or remove {task!r} from the dataset's tasks."
        )
        raise ValueError(msg)
    known = TASK_METHODS.get(task)
    unknown = [m for m in methods if known is not None and m not in known]
    if unknown:
        msg = f"{where}: unknown {task} methods {unknown}; available: {sorted(known)}. Check the spelling."
        raise ValueError(msg)


def _check_dataset(dataset: object, index: int, source: str) -> str:
    """Check one ``[[datasets]]`` entry; returns its name."""
    if not isinstance(dataset, Mapping):
        msg = f"Config {source!r}: dataset entry {index + 1} is not a table: write it as a [[datasets]] table."
        raise ValueError(msg)
    name = dataset.get("name")
    where = f"Config {source!r}: dataset " + (repr(name) if name is not None else f"entry {index + 1}")
    _check_keys(dataset, DATASET_KEYS, where, "keys")
    needed = [key for key in ("name", "files", "tasks") if key not in dataset]
    if needed:
        msg = f"{where} lacks {needed}: every dataset needs name, files and tasks, e.g. tasks = ['annotation']."
        raise ValueError(msg)
    if not isinstance(name, str) or not name:
        msg = f"{where}: name must be a non-empty string."
        raise ValueError(msg)
    files = dataset["files"]
    if isinstance(files, str) or not isinstance(files, list) or not files:
        msg = f"{where}: files must be a non-empty list of file names, e.g. files = [{str(files)!r}]."
        raise ValueError(msg)
    tasks = _check_tasks(dataset, where)
    _check_paired(files, tasks, where)
    _check_paired_options(dataset, files, where)
    _check_dataset_methods(dataset, tasks, where)
    _check_build_options(dataset, where)
    for task in tasks:
        missing = [key for key in REQUIRED_KEYS.get(task, ()) if not dataset.get(key)]
        if missing:
            examples = {"label_key": "label_key = 'cell_type'", "batch_key": "batch_key = 'batch'"}
            shown = ", ".join(examples.get(key, f"{key} = '...'") for key in missing)
            msg = f"{where}: the {task} task needs {missing}: name the obs column(s), e.g. {shown}."
            raise ValueError(msg)
    return name


def _check_tasks(dataset: Mapping, where: str) -> list[str]:
    tasks = dataset["tasks"]
    if isinstance(tasks, str) or not isinstance(tasks, list) or not tasks:
        msg = f"{where}: tasks must be a non-empty list of task names from {sorted(TASKS)}, e.g. ['annotation']."
        raise ValueError(msg)
    for task in tasks:
        _check_task_name(task, where)
    return tasks


def _check_paired(files: list, tasks: list[str], where: str) -> None:
    paired = [str(f).endswith(".h5mu") for f in files]
    if any(paired) and (len(paired) > 1 or set(tasks) - PAIRED_TASKS):
        msg = (
            f"{where}: a paired .h5mu file is a dataset of its own (one file) for the tasks "
            f"{sorted(PAIRED_TASKS)}; list .h5ad files in another entry."
        )
        raise ValueError(msg)
    paired_tasks = set(tasks) & PAIRED_TASKS
    if paired_tasks and not all(paired):
        msg = f"{where}: the tasks {sorted(paired_tasks)} need one paired .h5mu file."
        raise ValueError(msg)


def _check_paired_options(dataset: Mapping, files: list, where: str) -> None:
    """Refuse options of ``.h5ad`` builds in a paired ``.h5mu`` dataset, which :func:`build_paired` would ignore."""
    ignored = sorted(PAIRED_IGNORED_KEYS & set(dataset))
    if str(files[0]).endswith(".h5mu") and ignored:
        msg = (
            f"{where}: {ignored} apply to .h5ad datasets only; a paired .h5mu dataset is split by batch_key. Remove "
            "them from this dataset."
        )
        raise ValueError(msg)


def _check_dataset_methods(dataset: Mapping, tasks: list[str], where: str) -> None:
    methods = dataset.get("methods", {})
    if not isinstance(methods, Mapping):
        example = f"methods = {{ {tasks[0]} = {methods!r} }}"
        msg = f"{where}: methods must be a table of lists per task, e.g. {example}."
        raise ValueError(msg)
    for task, names in methods.items():
        if task not in tasks:
            msg = f"{where}: methods lists task {task!r}, which is not in its tasks {tasks}; add it or remove it."
            raise ValueError(msg)
        _check_methods(task, names, f"{where}: methods.{task}")


def _check_build_options(dataset: Mapping, where: str) -> None:
    qc = dataset.get("qc", {})
    valid = frozenset(f.name for f in fields(QCThresholds))
    if not isinstance(qc, Mapping):
        msg = f"{where}: qc must be a table, e.g. qc = {{ min_genes = 50 }}."
        raise ValueError(msg)
    _check_keys(qc, valid, f"{where}: qc", "keys")
    try:
        QCThresholds(**qc)
        check_fractions(dataset.get("fractions", (0.6, 0.2, 0.2)))
        check_max_cells(dataset.get("max_cells"))
    except ValueError as err:
        msg = f"{where}: {err}"
        raise ValueError(msg) from None
    if dataset.get("join", "inner") not in {"inner", "outer"}:
        msg = f"{where}: join must be 'inner' or 'outer', got {dataset['join']!r}."
        raise ValueError(msg)
    if dataset.get("cv", "split") not in CV_CHOICES:
        msg = f"{where}: cv must be one of {list(CV_CHOICES)}, got {dataset['cv']!r}."
        raise ValueError(msg)
    keep = dataset.get("keep", {})
    if not isinstance(keep, Mapping) or any(isinstance(v, str) or not isinstance(v, list) for v in keep.values()):
        msg = f"{where}: keep must be a table of value lists, e.g. keep = {{ demuxlet_cls = ['SNG'] }}."
        raise ValueError(msg)
    test_groups = dataset.get("test_groups")
    if test_groups is not None and (isinstance(test_groups, str) or not isinstance(test_groups, list)):
        msg = f"{where}: test_groups must be a list, e.g. test_groups = [{str(test_groups)!r}]."
        raise ValueError(msg)
    named = (
        ("label_key", "cell_type"),
        ("donor_key", "donor"),
        ("batch_key", "batch"),
        ("layer", "counts"),
        ("gene_table", "genes/GENCODEv44_gene_id_to_name.csv"),
    )
    for key, example in named:
        if key in dataset and (not isinstance(dataset[key], str) or not dataset[key]):
            what = {"layer": "layer", "gene_table": "file (relative to data_dir) or 'auto'"}.get(key, "obs column")
            msg = f"{where}: {key} = {dataset[key]!r}: name one {what} as a string, e.g. {key} = {example!r}."
            raise ValueError(msg)
    if "gates" in dataset:
        _check_gates(dataset["gates"], where)


def _check_gates(gates: object, where: str) -> None:
    """Refuse ``gates`` that are neither a known gate set nor a table ``{label: {marker: true/false}}``."""
    from ._paired import GATE_SETS

    rules = isinstance(gates, Mapping) and all(
        isinstance(rule, Mapping) and rule and all(isinstance(v, bool) for v in rule.values())
        for rule in gates.values()
    )
    if isinstance(gates, str) and gates not in GATE_SETS:
        msg = f"{where}: unknown gate set gates = {gates!r}; available: {sorted(GATE_SETS)}, or give rules as a table."
        raise ValueError(msg)
    if not isinstance(gates, str) and not (rules and gates):
        msg = (
            f"{where}: gates = {gates!r}: name a gate set ({sorted(GATE_SETS)}) or give a table of rules "
            "{label = {marker = true/false}}, e.g. gates = { B = { CD19 = true, CD3 = false } }."
        )
        raise ValueError(msg)
