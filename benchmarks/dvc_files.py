"""How DVC's cost grows with the number of files in a tracked folder, against the same bytes in shards.

    python benchmarks/dvc_files.py [--counts 10000 50000] [--kib 40] [--shard-files 10000] [--work /tmp/abcd-dvc-files]

For each count N: a fresh git+DVC repo with a local remote and a folder of N random files
of --kib KiB (a prepared photo is 20-60 KiB), then times ``dvc add`` (hash + cache),
``dvc status`` (nothing changed), ``dvc push``, and ``dvc checkout`` after deleting the
folder; then the same bytes as N / --shard-files uncompressed tar shards. The numbers
behind docs/scaling-out.md: how data/prepared should hold 10^5-10^6 photos.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def measure(repo: Path, target: str) -> dict[str, float]:
    out = {"add_s": timed(["dvc", "add", target], repo)}
    out["status_s"] = timed(["dvc", "status"], repo)
    out["push_s"] = timed(["dvc", "push"], repo)
    shutil.rmtree(repo / target)
    out["checkout_s"] = timed(["dvc", "checkout", target], repo)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[10000, 50000])
    ap.add_argument("--kib", type=int, default=40)
    ap.add_argument("--shard-files", type=int, default=10000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/abcd-dvc-files"))
    args = ap.parse_args()
    print("| files | layout | dvc add s | dvc status s | dvc push s | dvc checkout s |\n|---|---|---|---|---|---|")
    for n in args.counts:
        for layout in ("files", "shards"):
            repo = args.work / f"{layout}-{n}"
            if repo.exists():
                shutil.rmtree(repo)
            repo.mkdir(parents=True)
            subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
            subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
            subprocess.run(
                ["dvc", "remote", "add", "-d", "local", str(args.work / f"remote-{layout}-{n}")], cwd=repo, check=True
            )
            data = repo / "prepared"
            data.mkdir()
            if layout == "files":
                for i in range(n):
                    (data / f"{i:07d}.jpg").write_bytes(os.urandom(args.kib * 1024))
            else:
                for s in range(0, n, args.shard_files):
                    with tarfile.open(data / f"shard-{s // args.shard_files:05d}.tar", "w") as tar:
                        for i in range(s, min(n, s + args.shard_files)):
                            info = tarfile.TarInfo(f"{i:07d}.jpg")
                            info.size = args.kib * 1024
                            tar.addfile(info, io.BytesIO(os.urandom(info.size)))
            m = measure(repo, "prepared")
            print(
                f"| {n} | {layout} | "
                + " | ".join(f"{m[k]:.1f}" for k in ("add_s", "status_s", "push_s", "checkout_s"))
                + " |",
                flush=True,
            )
            shutil.rmtree(repo)
            shutil.rmtree(args.work / f"remote-{layout}-{n}", ignore_errors=True)


if __name__ == "__main__":
    main()
