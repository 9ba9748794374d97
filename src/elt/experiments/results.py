"""Reading eval.py's ``results.json`` files: one evaluation each (its rows and its run's hparams)."""
from __future__ import annotations

import glob
import json
from pathlib import Path


def read_results(path: Path) -> dict:
    try:
        res = json.loads(Path(path).read_text())
        ok = isinstance(res.get("rows"), list) and isinstance(res.get("meta", {}).get("hparams"), dict)
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: not an eval.py results.json ({type(e).__name__}: {e})") from None
    if not ok:
        raise ValueError(f"{path}: not an eval.py results.json (no rows / meta.hparams)")
    res["dir"] = Path(path).parent
    return res


def find_results(specs: list[str]) -> list[Path]:
    """Each spec: an evaluation directory, a directory above some, a results.json, or a glob of those."""
    found = []
    for spec in specs:
        matches = sorted(glob.glob(spec)) or [spec]
        for m in map(Path, matches):
            if m.is_file():
                found.append(m)
            elif (m / "results.json").is_file():
                found.append(m / "results.json")
            elif m.is_dir():
                found += sorted(m.rglob("results.json"))
    if not found:
        raise FileNotFoundError(f"no results.json under {' '.join(specs)} (eval.py writes one per evaluation)")
    return list(dict.fromkeys(p.resolve() for p in found))
