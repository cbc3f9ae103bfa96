"""Parameter files: checked against the notebooks' own ``parameters`` cells before any notebook runs."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from satlib.errors import ConfigurationError
from satlib.presets import PRESETS, get_preset, with_settings

# ---------------------------------------------------------------------------------------------------------------
# Parameters: read, and checked against what the notebooks accept, before anything runs.


@dataclass(frozen=True)
class Parameter:
    """One name of a notebook's ``parameters`` cell: its type (``None``: any) and default value."""

    name: str
    kind: type | None
    default: object


def notebook_parameters(notebook: Path) -> dict[str, Parameter]:
    """The names a notebook's ``parameters`` cell assigns (``NAME = literal`` or ``NAME: type = value``), with the
    type of the literal (or the annotation) and its value."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigurationError(f"{notebook}: cannot read the notebook ({error}): pass a Jupyter notebook") from None
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ConfigurationError(
            f"{notebook}: no cell tagged 'parameters': tag the cell that assigns PRESET, SEED and SETTINGS"
        )
    source = "\n".join("".join(cell.get("source", "")) for cell in tagged)
    try:
        statements = ast.parse(source).body
    except SyntaxError as error:
        raise ConfigurationError(f"{notebook}: its parameters cell is not valid Python ({error.msg})") from None
    accepted = {}
    for statement in statements:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value, annotation = statement.targets[0], statement.value, None
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value, annotation = statement.target, statement.value, statement.annotation
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        try:
            default = ast.literal_eval(value)
        except ValueError:
            default = None
        kind = _annotated_type(annotation) if annotation is not None else type(default) if default is not None else None
        accepted[target.id] = Parameter(target.id, kind, default)
    return accepted


def _annotated_type(annotation: ast.expr) -> type | None:
    names = {kind.__name__: kind for kind in (str, int, float, bool, dict, list)}
    return names.get(annotation.id) if isinstance(annotation, ast.Name) else None


def _fits(value: object, kind: type | None) -> bool:
    """Whether a parameter value has a notebook's type: ``bool`` is not a number, an ``int`` is a ``float``."""
    if kind is None:
        return True
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def load_parameters(path: Path | None) -> dict:
    """Parameters for every notebook from a YAML mapping file (``None``: no parameters)."""
    if path is None:
        return {}
    if not path.is_file():
        raise ConfigurationError(
            f"parameter file {path} not found: pass an existing YAML file such as params/tiny.yaml"
        )
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        raise ConfigurationError(f"parameter file {path} is not valid YAML: {problem}{where}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"parameter file {path} cannot be read: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigurationError(
            f"parameter file {path} must hold a mapping such as 'PRESET: tiny', got a {type(values).__name__}"
        )
    return values


def check_parameters(values: dict, notebooks: list[Path], source: Path | str) -> None:
    """Refuse, in one line naming ``source`` and the key, any parameter some notebook would not take: a name that
    is not in every notebook's parameters cell, a value of another type, an unknown preset, or settings that
    :func:`satlib.presets.with_settings` refuses for that preset."""
    accepted = {notebook: notebook_parameters(notebook) for notebook in notebooks}
    common = [
        parameter
        for name, parameter in next(iter(accepted.values())).items()
        if all(name in names for names in accepted.values())
    ]
    listing = ", ".join(f"{p.name} ({p.kind.__name__ if p.kind else 'any type'})" for p in common) or "nothing"
    for name, value in values.items():
        lacking = [notebook.name for notebook, names in accepted.items() if name not in names]
        if len(lacking) == len(notebooks):
            raise ConfigurationError(
                f"{source}: unknown parameter {name!r}: the notebooks' parameters cells accept {listing}"
            )
        if lacking:
            raise ConfigurationError(
                f"{source}: parameter {name!r} is not in the parameters cell of {', '.join(lacking)}: "
                f"use names every notebook accepts: {listing}"
            )
        for notebook, names in accepted.items():
            kind = names[name].kind
            if not _fits(value, kind):
                raise ConfigurationError(
                    f"{source}: {name} must be {kind.__name__} (as in {notebook.name}'s parameters cell), "
                    f"got {value!r} ({type(value).__name__})"
                )
    for names in accepted.values():
        preset = values.get("PRESET", names["PRESET"].default if "PRESET" in names else "tiny")
        try:
            get_preset(preset)
        except ValueError:
            raise ConfigurationError(
                f"{source}: PRESET: unknown preset {preset!r}: use one of {sorted(PRESETS)}"
            ) from None
        settings = values.get("SETTINGS", names["SETTINGS"].default if "SETTINGS" in names else None)
        if settings:
            try:
                with_settings(get_preset(preset), settings)
            except ValueError as error:
                raise ConfigurationError(f"{source}: SETTINGS: {error}") from None
