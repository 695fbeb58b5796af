"""Shared helpers of the CLI tests: the user-error check and small image folders."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

# A fast probe for CLI tests: random-init ResNet-18 at 16 px (4,800 filters), no download.
FAST_PROBE = ["--probe", "resnet18", "--weights", "random", "--image-size", "16"]


def assert_user_error(result, fragment: str) -> str:
    """A user mistake: exit status 2, exactly one line 'Error: ...' containing `fragment`, no traceback.

    Returns the line, for checks on its wording."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.output
    assert "Traceback" not in result.output
    return lines[0]


def make_image_folder(root: Path, classes=("dark", "light"), per_class: int = 6, size: int = 12,
                      seed: int = 0) -> Path:
    """ImageFolder layout root/<class>/<i>.png: random RGB pictures, each class a brightness apart."""
    rng = np.random.default_rng(seed)
    step = 150 // max(1, len(classes) - 1)
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.integers(0, 100, (size, size, 3)) + c * step).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


# Python spellings that a CLI error must not show: keyword arguments (device='cpu', probe=...,
# readonly=True, image_column=) and API names (TaskIndex.open, taskindex.samples.names(), Probe.from_module, upsert).
PYTHON_WORDING = re.compile(r"\b\w+=(?:'|\.\.\.|None\b|True\b|False\b)|\b[a-z]+_\w+=(?=[/\s,]|$)"
                            r"|\bTaskIndex\.|\btaskindex\.\w|\bProbe\.|\bupsert\b|\badd_model\b")


def assert_flag_wording(result, fragment: str) -> str:
    """A user error (see assert_user_error) that says how to fix it in flags and commands, not Python."""
    line = assert_user_error(result, fragment)
    assert not PYTHON_WORDING.search(line), line
    return line


def parse_table(output: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """A CLI text table -> (column names, {first cell: {column: cell}}), cells cut at the dash line's spans."""
    lines = output.splitlines()
    spans = [m.span() for m in re.finditer(r"-+", lines[1])]
    header = [lines[0][a:b].strip() for a, b in spans]
    rows = {}
    for line in lines[2:]:
        if line.strip() and not line.startswith("("):
            cells = [line[a:b].strip() for a, b in spans]
            rows[cells[0]] = dict(zip(header, cells))
    return header, rows
