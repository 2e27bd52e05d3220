"""Config files: YAML composed from base files, overridden from the command line, merged into a
structured schema whose sections check themselves. It knows no section: each component owns its
own (a dataclass with `problems(cfg)`), and experiment.py composes them into an experiment.

    cfg, where = compose(ExperimentConfig, path, ["trainer.max_steps=50", "extends=_base/cpu_smoke.yaml"])
    problems = section_problems(cfg)      # every section's own sentences

An experiment YAML may start with `extends: [_base/tiny.yaml, ...]` (paths relative to
experiments/); later files and the command line win. The command line may add files of its own,
`extends=_base/cpu_smoke.yaml` (repeatable), merged in order after the experiment and before the
key=value overrides.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from gdsd_lightning.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"


def experiment_path(name: str) -> Path:
    """experiments/<name>.yaml, or `name` itself when it is a path to a YAML file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = EXPERIMENTS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_experiments())
        raise UserError(f"unknown experiment {name!r}; known experiments: {known}")
    return path


def overlay_path(name: str) -> Path:
    """A command-line `extends=` file: relative to experiments/ (or as given)."""
    for path in (EXPERIMENTS_DIR / name, Path(name)):
        if path.is_file():
            return path.resolve()
    raise UserError(f"extends={name}: no such file in {EXPERIMENTS_DIR} or the working directory")


def list_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def describe_experiments() -> str:
    """One line per experiment: its name and description."""
    names = list_experiments()
    width = max(map(len, names))
    return "\n".join(f"{name:<{width}}  {read_yaml(experiment_path(name)).get('description', '')}" for name in names)


def read_yaml(path: Path) -> DictConfig:
    """A YAML file with its `extends` chain merged in (parents first)."""
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends: report file and reason
        raise UserError(f"{path} is not valid YAML: {err}") from None
    parents = raw.pop("extends", []) if isinstance(raw, DictConfig) else []
    merged = OmegaConf.create()
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = OmegaConf.merge(merged, read_yaml((path.parent / parent).resolve()))
    return OmegaConf.merge(merged, raw)


def _valid_keys(schema: DictConfig, full_key: str) -> str:
    """Comma-separated keys valid at the parent of `full_key` in `schema`."""
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    node = OmegaConf.select(schema, parent) if parent else schema
    keys = sorted(node.keys()) if isinstance(node, DictConfig) else []
    return ", ".join(keys)


def merge_checked(schema: DictConfig, *sources: DictConfig, where: str, prefix: str = "") -> DictConfig:
    """Merge `sources` into the structured `schema`; an unknown key or wrong type becomes a
    `UserError` naming the key and the valid ones."""
    try:
        return OmegaConf.merge(schema, *sources)
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = err.full_key or str(err)
        raise UserError(f"unknown config key {prefix + key!r} in {where}; "
                        f"valid keys here: {_valid_keys(schema, key)}") from None
    except ValidationError as err:
        raise UserError(f"config key {prefix + err.full_key!r} in {where}: {err.msg}") from None


def compose(schema: type, path: Path, overrides: list[str] | None = None) -> tuple[DictConfig, str]:
    """The structured `schema` with the YAML file `path` (its `extends` chain first), the command
    line's `extends=` files and its key=value `overrides` merged in; and where those came from (for
    error messages)."""
    overrides = list(overrides or [])
    try:                                     # extends=<file> (repeatable): merged in order after the experiment
        entries = [OmegaConf.from_dotlist([o]).extends for o in overrides if o.startswith("extends=")]
        cli = OmegaConf.from_dotlist([o for o in overrides if not o.startswith("extends=")])
    except Exception as err:
        raise UserError(f"cannot parse command-line overrides {overrides}: {err}") from None
    where = f"{path} or the command-line overrides"
    files = [f for entry in entries for f in ([entry] if isinstance(entry, str) else entry)]   # a=x or a=[x,y]
    overlays = [read_yaml(overlay_path(f)) for f in files]
    return merge_checked(OmegaConf.structured(schema), read_yaml(path), *overlays, cli, where=where), where


def section_problems(cfg: DictConfig) -> list[str]:
    """Every section's own sentences: each top-level section whose dataclass has `problems(cfg)` is
    asked about itself (with the whole config, for the settings it depends on), in schema order."""
    problems = []
    for key in cfg:
        node = cfg[key]
        if isinstance(node, DictConfig) and hasattr(OmegaConf.get_type(node), "problems"):
            problems += OmegaConf.to_object(node).problems(cfg)
    return problems


def check(problems: list[str]) -> None:
    """Refuse a config with problems, in one sentence each."""
    if problems:
        raise UserError("; ".join(problems))


def save_config(cfg: DictConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
