"""Server throughput and overhead, against baselines measured in the same run.

* requests/s of ``GET /api/v1/health`` and of the status page ``GET /`` through
  waitress on a loopback port, against a bare WSGI "hello" app on the same
  server (the transport floor): ratio = route / hello.
* latency of a small synchronous ``POST /api/v1/score`` against calling the
  library directly on the same input: overhead ratio = server / direct.

The scorer is the real pipeline when its modules are installed, else the
light DAB scorer (``--scorer`` chooses). Usage::

    python benchmarks/server.py [--seconds 2] [--repeats 7] [--scorer auto|pipeline|dab]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from her2_qupath.server import create_app  # noqa: E402
from her2_qupath.server.scorers import DabTileScorer, JobSpec, PipelineScorer  # noqa: E402
from her2_qupath.server.wsgi import BackgroundServer  # noqa: E402

MPP = 0.5


def synthetic_ihc(path: Path) -> Path:
    """A 512 x 512 image of brown (DAB) and blue (hematoxylin) tissue at 0.5 µm/px."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = np.full((512, 512, 3), 255, np.uint8)
    img[32:480, 32:480] = (170, 120, 90)
    img[32:256, 32:256] = (120, 80, 60)
    noise = rng.integers(-8, 9, img.shape)
    img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def rate(fn: Any, seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        fn()
        n += 1
    return n / elapsed


def median_time(fn: Any, repeats: int) -> float:
    fn()  # warm-up (imports, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pick_scorer(choice: str) -> Any:
    if choice in ("auto", "pipeline"):
        try:
            import her2_qupath.pipeline  # noqa: F401
            import her2_qupath.qupath.geojson  # noqa: F401
            import her2_qupath.slide  # noqa: F401
            import her2_qupath.tiling  # noqa: F401

            return PipelineScorer()
        except (ImportError, AttributeError):
            if choice == "pipeline":
                raise
    return DabTileScorer()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--seconds", type=float, default=2.0, help="duration of each requests/s measurement"
    )
    ap.add_argument(
        "--repeats", type=int, default=7, help="repetitions of each latency measurement"
    )
    ap.add_argument("--scorer", choices=("auto", "pipeline", "dab"), default="auto")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="her2-bench-"))
    image = synthetic_ihc(tmp / "ihc.png")
    scorer = pick_scorer(args.scorer)
    options = {"tile_size": 256, "mpp": MPP}
    app = create_app(
        {
            "DATA_DIR": str(tmp / "data"),
            "IMAGE_ROOTS": (str(tmp),),
            "SCORER": scorer,
            "WORKERS": 1,
            "MAX_SYNC_TILES": 16,
        }
    )

    def hello(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status":"ok"}']

    results: dict[str, Any] = {"scorer": getattr(scorer, "name", type(scorer).__name__)}
    try:
        with BackgroundServer(hello) as bare, BackgroundServer(app) as srv:  # type: ignore[arg-type]
            s = requests.Session()
            results["hello_rps"] = rate(
                lambda: s.get(bare.url + "/").raise_for_status(), args.seconds
            )
            results["health_rps"] = rate(
                lambda: s.get(srv.url + "/api/v1/health").raise_for_status(), args.seconds
            )
            results["status_page_rps"] = rate(
                lambda: s.get(srv.url + "/").raise_for_status(), args.seconds
            )
            results["health_vs_hello"] = results["health_rps"] / results["hello_rps"]
            results["status_page_vs_hello"] = results["status_page_rps"] / results["hello_rps"]

            body = {"ihc": str(image), "ihc_mpp": MPP, "options": options}

            def via_server() -> None:
                r = s.post(srv.url + "/api/v1/score", json=body, timeout=300)
                r.raise_for_status()

            def direct() -> None:
                out = Path(tempfile.mkdtemp(dir=tmp))
                if isinstance(scorer, PipelineScorer):
                    from her2_qupath.pipeline import ScoreRequest, run_score

                    run_score(
                        ScoreRequest(ihc=image, ihc_mpp=MPP, options=scorer.score_options(options))
                    )
                else:
                    scorer(JobSpec(ihc=image, ihc_mpp=MPP, options=options), out)

            results["direct_score_s"] = median_time(direct, args.repeats)
            results["server_score_s"] = median_time(via_server, args.repeats)
            results["score_overhead_ratio"] = results["server_score_s"] / results["direct_score_s"]
    finally:
        app.extensions["her2_qupath"].close()
    for key, value in results.items():
        print(f"{key:>24}: {value:.4g}" if isinstance(value, float) else f"{key:>24}: {value}")
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
