"""Server throughput and overhead, against baselines measured in the same run.

* requests/s of ``GET /api/v1/health`` and of the status page ``GET /`` through
  waitress on a loopback port, against a bare WSGI "hello" app on the same
  server (the transport floor): ratio = route / hello.
* latency of a small synchronous ``POST /api/v1/score`` against calling the
  library directly on the same input: overhead ratio = server / direct.

The scorer is the server's default, the real pipeline (``run_score``), on a
512 x 512 synthetic IHC image at 0.5 µm/px. Usage::

    python benchmarks/server.py [--seconds 2] [--repeats 7]
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

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from her2_qupath.server import create_app  # noqa: E402
from her2_qupath.server.scorers import PipelineScorer  # noqa: E402
from her2_qupath.server.wsgi import BackgroundServer  # noqa: E402

MPP = 0.5


def synthetic_slide(path: Path) -> Path:
    """A 512 x 512 synthetic IHC image (hematoxylin + DAB cells) that carries its 0.5 µm/px."""
    from her2_qupath.slide_writer import write_slide
    from her2_qupath.synthetic import synthetic_ihc

    rgb = synthetic_ihc((512, 512), seed=0, mpp=MPP)[0]
    return write_slide(path, rgb, mpp=MPP, kind="png")


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--seconds", type=float, default=2.0, help="duration of each requests/s measurement"
    )
    ap.add_argument(
        "--repeats", type=int, default=7, help="repetitions of each latency measurement"
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="her2-bench-"))
    image = synthetic_slide(tmp / "ihc.png")
    scorer = PipelineScorer()
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

    results: dict[str, Any] = {"scorer": scorer.name}
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
                from her2_qupath.pipeline import ScoreRequest, run_score

                run_score(
                    ScoreRequest(ihc=image, ihc_mpp=MPP, options=scorer.score_options(options))
                )

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
