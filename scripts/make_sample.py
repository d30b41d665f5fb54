#!/usr/bin/env python3
"""Cut the bundled sample (src/cifarlab/data/sample/cifar10-sample.tar.gz) from the shared CIFAR-10 JPEGs.

  python scripts/make_sample.py ../shared/data/cifar10-jpeg/train.tar.gz --per-class 400

Takes every class's first N files (sorted names), keeps the original JPEG bytes (no re-encoding)
and writes them in the same train/<class>/<file> layout, with fixed mtimes so the tarball is
byte-for-byte reproducible.
"""
import argparse
import gzip
import io
import tarfile
from collections import defaultdict
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("source")
p.add_argument("--per-class", type=int, default=400)
p.add_argument("--out", default=str(Path(__file__).parents[1] / "src/cifarlab/data/sample/cifar10-sample.tar.gz"))
a = p.parse_args()

kept = defaultdict(list)
with tarfile.open(a.source) as tf:
    for m in tf:
        parts = Path(m.name).parts
        if m.isfile() and len(parts) == 3 and len(kept[parts[1]]) < a.per_class:
            kept[parts[1]].append((m.name, tf.extractfile(m).read()))

buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
    for cls in sorted(kept):
        for name, data in sorted(kept[cls]):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            out.addfile(info, io.BytesIO(data))
with open(a.out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
    gz.write(buf.getvalue())
print(f"{sum(map(len, kept.values()))} images in {len(kept)} classes -> {a.out} ({Path(a.out).stat().st_size / 1e6:.2f} MB)")
