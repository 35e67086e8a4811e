"""Camera grabber figures on a generated video (no camera needed here).

Prints: achieved vs requested fps, capture->consumer latency (time from the measured
capture timestamp until a waiting consumer has the frame), read_latest() cost, and memory
growth under a slow consumer (latest-only: should be ~0 frames).
    .venv/bin/python benchmarks/bench_camera.py
"""
import tempfile
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np

from drivers.camera import FileCamera, FileCameraConfig


def make_video(path: Path, w: int, h: int, n: int) -> None:
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(n):
        wr.write(np.roll(base, i * 3, axis=1))
    wr.release()


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        for (w, h), fps in (((224, 224), 30.0), ((640, 480), 30.0), ((640, 480), 60.0)):
            path = Path(d) / f"v{w}.avi"
            make_video(path, w, h, 60)
            cam = FileCamera(FileCameraConfig("bench", str(path), fps=fps, loop=True))
            cam.connect()
            lat, last, t0 = [], -1, time.monotonic()
            first = cam.wait_for_frame(timeout=2)
            n0 = cam.frame_count
            while time.monotonic() - t0 < 3.0:
                f = cam.wait_for_frame(last, timeout=1)
                now = time.monotonic()
                if f is None:
                    continue
                lat.append(now - f.timestamp)
                last = f.index
            got_fps = (cam.frame_count - n0) / (time.monotonic() - t0)
            k = 20000
            t = time.perf_counter()
            for _ in range(k):
                cam.read_latest()
            rl_us = (time.perf_counter() - t) / k * 1e6
            cam.disconnect()
            lat_ms = np.array(lat) * 1000
            print(f"{w}x{h}@{fps:g}: achieved {got_fps:.1f} fps (ratio {got_fps / fps:.3f}), "
                  f"capture->consumer latency median {np.median(lat_ms):.2f} ms, "
                  f"p95 {np.percentile(lat_ms, 95):.2f} ms; read_latest {rl_us:.2f} us"
                  + ("" if first is not None else " (NO FIRST FRAME)"))

        path = Path(d) / "v640.avi"
        cam = FileCamera(FileCameraConfig("bench", str(path), fps=300, loop=True))
        tracemalloc.start()
        cam.connect()
        cam.wait_for_frame(timeout=2)
        base, _ = tracemalloc.get_traced_memory()
        n0 = cam.frame_count
        time.sleep(2.0)                      # consumer reads nothing
        cur, _ = tracemalloc.get_traced_memory()
        n = cam.frame_count - n0
        cam.disconnect()
        tracemalloc.stop()
        print(f"slow consumer: {n} frames captured unread, memory growth "
              f"{(cur - base) / (640 * 480 * 3):.2f} frames' worth (latest-only: ~0)")


if __name__ == "__main__":
    main()
