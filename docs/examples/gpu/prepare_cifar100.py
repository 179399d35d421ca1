"""CIFAR-100 (the official python pickles, already on disk) as an `npy` dataset folder per split, or with
--webdataset as WebDataset shards of 10,000 PNGs. Sample IDs: cifar100-train-00000, ... Nothing is downloaded.

    python docs/examples/gpu/prepare_cifar100.py /data/raw/cifar-100-python /data/cifar100 [--webdataset]
"""

import io
import pickle
import sys
from pathlib import Path

import numpy as np

src, out = Path(sys.argv[1]), Path(sys.argv[2])
for split in ("train", "test"):
    with open(src / split, "rb") as fh:  # the official python pickles (trusted files)
        d = pickle.load(fh, encoding="bytes")
    x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # CHW
    y = np.asarray(d[b"fine_labels"], dtype=np.int64)
    ids = [f"cifar100-{split}-{i:05d}" for i in range(len(y))]
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    if "--webdataset" not in sys.argv:
        np.save(folder / "x.npy", x)
        np.save(folder / "y.npy", y)
        np.save(folder / "ids.npy", np.array(ids))
        continue
    import webdataset as wds
    from PIL import Image

    for start in range(0, len(y), 10_000):
        with wds.TarWriter(str(folder / f"shard-{start // 10_000:03d}.tar")) as sink:
            for i in range(start, min(start + 10_000, len(y))):
                png = io.BytesIO()
                Image.fromarray(x[i].transpose(1, 2, 0)).save(png, format="PNG")
                sink.write({"__key__": ids[i], "png": png.getvalue(), "cls": str(y[i])})
