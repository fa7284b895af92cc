"""DVC's views that work offline and fit a terminal: `python -m train.views page|exp`.

`page`: the HTML page `dvc plots show` fills. DVC's default loads Vega, Vega-Lite and Vega-Embed
from a CDN, so offline every chart is blank; .dvc/config points `plots.html_template` at
.dvc/plots/offline.html, which this writes with the three libraries inlined (vl-convert-python's
bundle, ~0.9 MB, so make generates it rather than git holding it).

`exp` (`make exp`): the experiments side by side, from `dvc exp show --json`: the headline metrics
and the params people vary, with short headers, only the params that differ, and never wider than
the terminal. DVC's own table shrinks every column to `…` once there are more columns than fit,
and it tracks ~150 params.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

PAGE = Path(".dvc") / "plots" / "offline.html"
VEGA_LITE = "5.21"  # DVC's plot templates are Vega-Lite 5 specs

_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>visionops: pipeline plots</title>
<script>
{bundle}
</script>
<style>
  body {{ font-family: sans-serif; margin: 1.5em; }}
  body > div {{ display: inline-block; vertical-align: top; margin: 0 2em 2em 0; }}
</style>
</head>
<body>
<h2>visionops: pipeline plots</h2>
{{plot_divs}}
</body>
</html>
"""


def write_page(path: Path = PAGE) -> Path:
    """Write the offline page template (DVC replaces `{plot_divs}` with the charts)."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    # The bundle is inlined in a <script> element: a literal "</script" inside would end it early.
    bundle = bundle.replace("</script", "<\\/script")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(_HTML.format(bundle=bundle), encoding="utf-8")
    tmp.replace(path)
    return path


# (metrics file ending, key, header): the headline metrics, in this order.
METRICS = [("evaluate/metrics.json", "test/acc", "acc"), ("evaluate/metrics.json", "test/f1_macro", "f1"),
           ("evaluate/metrics.json", "test/ece", "ece"), ("export/parity.json", "parity", "parity"),
           ("register/gate.json", "champion", "champion"), ("prepare/stats.json", "images", "images"),
           ("prepare/stats.json", "classes", "classes")]
# (param, header): shown when they differ between the rows.
PARAMS = [("data.name", "data"), ("model.arch", "model"), ("augment.name", "augment"),
          ("trainer.max_epochs", "epochs"), ("model.optimizer.lr", "lr"), ("data.batch_size", "batch"),
          ("data.image_size", "size"), ("model.net.width", "width"), ("seed", "seed")]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _cell(v: Any) -> str:
    if v is None or isinstance(v, dict):  # a dict: an older, nested metrics file
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "x".join(map(str, v)) if all(isinstance(i, int) for i in v) else json.dumps(v)
    return str(v)


def _row(name: str, data: dict[str, Any]) -> dict[str, str]:
    row = {"experiment": name, "created": (data.get("timestamp") or "")[5:16].replace("T", " ") or "-"}
    metrics = data.get("metrics") or {}
    for suffix, key, header in METRICS:
        found = [m.get("data", {}).get(key) for f, m in metrics.items() if f.endswith(suffix)]
        row[header] = _cell(found[0] if found else None)
    params = _flat((data.get("params") or {}).get("params.yaml", {}).get("data", {}))
    for key, header in PARAMS:
        row[header] = _cell(params.get(key))
    row["_params"] = params  # type: ignore[assignment]
    return row


def experiment_rows(show: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`dvc exp show --json` -> one row per workspace, baseline and experiment."""
    rows = []
    for base in show:
        rev = str(base.get("rev", ""))
        label = base.get("name") or (rev[:7] if len(rev) == 40 else rev)
        if base.get("data"):
            rows.append(_row(label, base["data"]))
        for exp in base.get("experiments") or []:
            rev = (exp.get("revs") or [{}])[0]
            if rev.get("data"):
                rows.append(_row(f"  {exp.get('name') or str(rev.get('rev', ''))[:7]}", rev["data"]))
    return rows


def experiment_table(rows: list[dict[str, Any]], width: int) -> str:
    """The rows as a table no wider than `width`: metrics always, params only where they differ."""
    if not rows:
        return "no experiments yet: dvc exp run -S key=value (see the README)"
    metrics = [h for _, _, h in METRICS if any(r[h] != "-" for r in rows)]
    varying = [h for _, h in PARAMS if len({r[h] for r in rows}) > 1]
    all_params = set().union(*(r["_params"] for r in rows))
    others = sorted(k for k in all_params if k not in dict(PARAMS) and len({_cell(r["_params"].get(k)) for r in rows}) > 1)
    # Left to right by importance; what does not fit is dropped from the right and named below.
    cols = ["experiment", "created", *metrics[:3], *varying, *metrics[3:]]
    sizes = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    left_out = []
    while sum(sizes[c] + 2 for c in cols) > width and len(cols) > 3:
        left_out.insert(0, cols.pop())
    lines = ["  ".join(c.ljust(sizes[c]) for c in cols).rstrip()]
    lines += ["  ".join(r[c].ljust(sizes[c]) for c in cols).rstrip() for r in rows]
    lines = [line[:width] for line in lines]
    if left_out or others:
        note = "also differ: " + ", ".join([*left_out, *others])
        lines.append((note[: width - 1] + "…") if len(note) > width else note)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["page"], ["exp"]):
        sys.exit("usage: python -m train.views page   (writes .dvc/plots/offline.html for `dvc plots show`)\n"
                 "       python -m train.views exp    (the experiments side by side, fitting the terminal)")
    if not Path(".dvc").is_dir():
        sys.exit("error: run from the repository root (the folder with .dvc/)")
    if args == ["page"]:
        print(f"Wrote {write_page()}: `dvc plots show` now renders offline")
        return
    r = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"error: dvc exp show failed: {r.stderr.strip()[-500:]}")
    print(experiment_table(experiment_rows(json.loads(r.stdout)), shutil.get_terminal_size((100, 24)).columns))


if __name__ == "__main__":
    main()
