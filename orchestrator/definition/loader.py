"""Find and load a study file: ``studies/x.py``, a path, or a bare name ``x``.

A study file defines one module-level ``study = Study(...)``. Loading it never runs its
``if __name__ == "__main__":`` block.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

from ..errors import StudyError, StudyLoadError, did_you_mean
from ..definition.study import Study

__all__ = ["find_study_file", "load_study", "STUDIES_DIR"]

STUDIES_DIR = "studies"


def find_study_file(ref: str | Path) -> Path:
    """The study file for ``ref``: an existing path, or ``studies/<ref>.py``."""
    path = Path(ref)
    if path.suffix == ".py" or path.exists():
        if path.is_file():
            return path
        if path.is_dir():
            raise StudyLoadError(f"{ref} is a folder; expected a study file such as {STUDIES_DIR}/<name>.py")
        where = path.parent if str(path.parent) not in ("", ".") else Path(STUDIES_DIR)
        raise StudyLoadError(f"study file {ref} not found. {_available(where, path.stem)}")
    candidate = Path(STUDIES_DIR) / f"{ref}.py"
    if candidate.is_file():
        return candidate
    raise StudyLoadError(f"no study named {ref!r}: expected a file {candidate} or a path to a study file. {_available(Path(STUDIES_DIR), str(ref))}")


def _available(folder: Path, name: str) -> str:
    names = sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_")) if folder.is_dir() else []
    if not names:
        return f"(no study files in {folder}/)"
    return did_you_mean(name, names).replace("Valid:", f"Studies in {folder}/:")


def load_study(ref: str | Path, variant: str | None = None) -> Study:
    """Load the study in a file and apply ``variant`` (default ``full``).

    Raises:
        StudyLoadError: the file is missing, does not import, or defines no ``study``.
        StudyError: the study is invalid (every problem listed).
    """
    path = find_study_file(ref)
    module_name = f"_orchestrator_study_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for exotic paths
        raise StudyLoadError(f"cannot load {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        source = path.read_text(encoding="utf-8")
        code = compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise StudyLoadError(f"{path}, line {exc.lineno}: invalid Python syntax: {exc.msg}. Fix the study file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyLoadError(f"cannot read {path}: {exc}") from None
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
    except StudyError as exc:
        raise StudyError(exc.problems, study=exc.study, source=str(path)) from None
    except Exception as exc:  # noqa: BLE001 - any error in user code becomes one clear message
        frame = traceback.extract_tb(exc.__traceback__)
        line = next((f.lineno for f in reversed(frame) if f.filename == str(path)), None)
        at = f", line {line}" if line else ""
        raise StudyLoadError(f"{path}{at}: the study file raised {type(exc).__name__}: {exc}") from exc
    finally:
        sys.modules.pop(module_name, None)
    study = module.__dict__.get("study")
    if study is None:
        others = [k for k, v in module.__dict__.items() if isinstance(v, Study)]
        hint = f" It defines a Study named {others[0]!r}: rename it to 'study'." if others else " Add `study = Study(...)` at module level."
        raise StudyLoadError(f"{path} defines no module-level `study`.{hint}")
    if not isinstance(study, Study):
        raise StudyLoadError(f"{path}: `study` is a {type(study).__name__}, expected an orchestrator.Study (study = Study(name=..., ...)).")
    object.__setattr__(study, "source_file", str(path))
    return study.with_variant(variant)
