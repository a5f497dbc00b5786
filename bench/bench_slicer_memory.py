"""Peak memory of loading one ACAT result into MRML (Slicer's scene; here slicer-core, no Qt).

For a CT of 512 x 512 x 300 voxels, builds an ``AnalysisResult`` like the brain model's (saliency,
four attention masks, three counterfactual scans) and measures, in a fresh process per case, how
much memory ``ACATLib.result_to_nodes`` adds at its peak and keeps afterwards, for:

- ``default``: the outputs loaded by default (saliency and fused attention);
- ``all``: every output (saliency, 4 attention masks, 3 counterfactual scans, 3 differences);
- ``rerun``: the default outputs loaded three times on the same input (replaced, not accumulated).

Memory is the process's resident set size, sampled every 5 ms (psutil). The result's own arrays
(what the worker hands back) exist before the measurement starts and are not counted.

    OMP_NUM_THREADS=1 python bench/bench_slicer_memory.py            # about a minute
    python bench/bench_slicer_memory.py --shape 100 256 256            # smaller, quicker
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def measure(case: str, shape: tuple) -> dict:
    sys.path.insert(0, str(ROOT / "ACATSlicer"))
    import numpy as np
    import psutil
    import slicer

    import ACATLib
    from ACATCore.result import AnalysisResult
    from ACATCore.volume import Volume

    nk, nj, ni = shape
    k, j, i = np.ogrid[:nk, :nj, :ni]
    blob = np.exp(-(((i - ni / 3) / 30.0) ** 2 + ((j - nj / 2) / 30.0) ** 2 + ((k - nk / 2) / 10.0) ** 2))
    ct = np.broadcast_to(np.where(blob > 0.5, 60, 30), shape).astype(np.int16)
    volume = Volume(ct, spacing=(0.45, 0.45, 0.5))
    maps = {name: volume.with_array((blob * (n + 1) / 4).astype(np.float32))
            for n, name in enumerate(("early", "middle", "late", "fused"))}
    cfs = {c: volume.with_array(ct.astype(np.float32) - 20 * blob.astype(np.float32) * n)
           for n, c in enumerate(("left", "right", "both"))}
    result = AnalysisResult(input=volume, class_names=["no lesion", "left", "right", "both"],
                            probabilities=np.array([0.1, 0.6, 0.2, 0.1]), saliency=maps["fused"],
                            attention=maps, counterfactuals=cfs, slice_weights=np.linspace(0, 1, nk),
                            slices_seen=np.arange(nk), peak_index=(ni // 3, nj // 2, nk // 2))
    scene = slicer.vtkMRMLScene()
    scene.AddNode(slicer.vtkMRMLSelectionNode())
    node = ACATLib.node_from_volume(scene, volume, "CT")
    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    outputs = ACATLib.OUTPUT_GROUPS if case == "all" else ACATLib.DEFAULT_OUTPUTS
    for _ in range(3 if case == "rerun" else 1):
        nodes = ACATLib.result_to_nodes(scene, result, node, outputs=outputs)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    after = process.memory_info().rss
    stored = sum(n.GetImageData().GetPointData().GetScalars().GetSize()
                 * n.GetImageData().GetPointData().GetScalars().GetDataTypeSize() for n in nodes.volumes.values())
    return {"case": case, "shape": list(shape), "maps": len(nodes.volumes),
            "volume_nodes_in_scene": scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"),
            "peak_added_mb": round((peak[0] - before) / MB), "kept_mb": round((after - before) / MB),
            "voxel_data_mb": round(stored / MB), "float32_equivalent_mb": round(len(nodes.volumes) * ct.size * 4 / MB),
            "seconds": round(seconds, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("SLICES", "ROWS", "COLS"))
    parser.add_argument("--cases", nargs="+", default=["default", "all", "rerun"], choices=["default", "all", "rerun"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, tuple(args.shape))))
        return 0
    print(f"ACAT result -> MRML nodes, CT of {args.shape[2]} x {args.shape[1]} x {args.shape[0]} voxels")
    print(f"{'case':8} {'maps':>4} {'volumes':>7} {'peak added MB':>13} {'kept MB':>8} {'voxels MB':>9} "
          f"{'float32 MB':>10} {'s':>5}")
    for case in args.cases:
        out = subprocess.run([sys.executable, __file__, "--child", case, "--shape", *map(str, args.shape)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{case}: failed\n{out.stderr[-2000:]}")
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['case']:8} {r['maps']:>4} {r['volume_nodes_in_scene']:>7} {r['peak_added_mb']:>13} "
              f"{r['kept_mb']:>8} {r['voxel_data_mb']:>9} {r['float32_equivalent_mb']:>10} {r['seconds']:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
