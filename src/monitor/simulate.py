"""Production traffic for the drift monitor: send (corrupted) images to a running service.

    python -m monitor.simulate url=http://127.0.0.1:3000 input=data/raw/digits n=200 rate=50 \
        corruption=none|gaussian_noise|blur|brightness|contrast|jpeg|pixelate|rotate severity=1..5 seed=0 \
        [concurrency=8] [timeout=30] [api_key=...]

Picks `n` images under `input` (recursively; seeded; with replacement when n exceeds the images
there), corrupts each one (`monitor.corruptions`, seeded per image), PNG-encodes it and POSTs it
to `<url>/classify` (multipart field `image`) at `rate` requests per second (0: as fast as
`concurrency` allows), with a progress bar. Prints the status counts; exits 1 when no request
succeeded. The API key defaults to $VISIONOPS_API_KEY.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from monitor.corruptions import CORRUPTIONS, corrupt_bytes
from visionops.cli import parse_key_values
from visionops.images import list_images

DEFAULTS: dict[str, str | None] = {"url": "http://127.0.0.1:3000", "input": None, "n": "200", "rate": "50",
                                   "corruption": "none", "severity": "3", "seed": "0", "concurrency": "8",
                                   "timeout": "30", "api_key": None}
USAGE = ("usage: python -m monitor.simulate url=http://127.0.0.1:3000 input=<folder> n=200 rate=50 "
         f"corruption={'|'.join(CORRUPTIONS)} severity=1..5 seed=0 [concurrency=8] [timeout=30] [api_key=...]")


class SimulateError(ValueError):
    """Bad arguments: the message says how to fix them."""


def parse_args(argv: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = parse_key_values(argv, DEFAULTS, USAGE, SimulateError)
    if not opts["input"]:
        raise SimulateError(f"input= is required\n{USAGE}")
    try:
        for k in ("n", "severity", "seed", "concurrency"):
            opts[k] = int(str(opts[k]))
        for k in ("rate", "timeout"):
            opts[k] = float(str(opts[k]))
    except ValueError as exc:
        raise SimulateError(f"n, severity, seed, concurrency, rate and timeout must be numbers ({exc})") from None
    if opts["corruption"] not in CORRUPTIONS:
        raise SimulateError(f"corruption must be one of {', '.join(CORRUPTIONS)}; got {opts['corruption']!r}")
    if not 1 <= opts["severity"] <= 5:
        raise SimulateError(f"severity must be 1..5, got {opts['severity']}")
    if opts["n"] < 1 or opts["concurrency"] < 1 or opts["rate"] < 0:
        raise SimulateError("n and concurrency must be at least 1, rate at least 0")
    opts["input"] = Path(str(opts["input"]))
    opts["url"] = str(opts["url"]).rstrip("/")
    opts["api_key"] = opts["api_key"] or os.environ.get("VISIONOPS_API_KEY") or None
    return opts


def pick_images(folder: Path, n: int, seed: int) -> list[Path]:
    if not folder.exists():
        raise SimulateError(f"input {folder} does not exist")
    files = [folder] if folder.is_file() else list_images(folder)
    if not files:
        raise SimulateError(f"no images (jpg, png, webp, bmp, gif, tif) under {folder}")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(files))[:n] if n <= len(files) else rng.integers(0, len(files), n)
    return [files[int(i)] for i in idx]


def simulate(url: str, images: list[Path], rate: float = 50.0, corruption: str = "none", severity: int = 3,
             seed: int = 0, concurrency: int = 8, timeout: float = 30.0, api_key: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Send every image; returns {"counts": Counter of status codes / error names, "seconds", "sent"}."""
    import httpx
    from tqdm import tqdm

    run = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    local = threading.local()
    bar = tqdm(total=len(images), unit="img", desc=f"{corruption} s{severity}" if corruption != "none" else "clean",
               disable=not progress, file=sys.stderr)

    def client() -> Any:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=timeout, headers=headers)
        return local.client

    def send(i: int, path: Path) -> None:
        try:
            body = corrupt_bytes(path.read_bytes(), corruption, severity, np.random.default_rng([seed, i]))
            r = client().post(f"{url}/classify", files={"image": (f"{path.stem}.png", body, "image/png")},
                              headers={"x-request-id": f"sim-{run}-{i:06d}"})
            key = str(r.status_code)
        except httpx.HTTPError as exc:
            key = exc.__class__.__name__
        except (OSError, ValueError) as exc:  # unreadable / undecodable input file
            key = f"bad input ({exc.__class__.__name__})"
        with lock:
            counts[key] += 1
            bar.update(1)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = []
        for i, path in enumerate(images):
            if rate > 0:
                wait = t0 + i / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            futures.append(pool.submit(send, i, path))
        for f in futures:
            f.result()
    bar.close()
    return {"counts": counts, "seconds": time.perf_counter() - t0, "sent": len(images)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        opts = parse_args(argv)
        images = pick_images(opts["input"], opts["n"], opts["seed"])
    except SimulateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = simulate(opts["url"], images, opts["rate"], opts["corruption"], opts["severity"], opts["seed"],
                   opts["concurrency"], opts["timeout"], opts["api_key"])
    counts, secs = res["counts"], res["seconds"]
    what = "clean" if opts["corruption"] == "none" else f"{opts['corruption']} severity {opts['severity']}"
    print(f"Sent {res['sent']} images ({what}, seed {opts['seed']}) to {opts['url']}/classify in {secs:.1f} s "
          f"({res['sent'] / max(secs, 1e-9):.1f}/s)")
    print("Status: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    if counts.get("200", 0) == 0:
        print(f"error: no request succeeded: is the service running at {opts['url']}? (`make serve`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
