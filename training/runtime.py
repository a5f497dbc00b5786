"""Where a script runs: device, threads, determinism, the DDP process group, and the seeds of every
random choice.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set) each process joins a process group, NCCL on
GPUs and gloo on CPUs; otherwise everything here is a single process.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ACATCore.errors import ACATError, ConfigError


@dataclass
class Runtime:
    """This process's device and place among the DDP processes."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    bf16: bool = False
    progress: bool = True
    channels_last: bool = False

    def place(self, model: torch.nn.Module, trains: bool = False) -> torch.nn.Module:
        """`model` on this process's device; in channels-last memory format when `channels_last`
        (runtime.channels_last on the CPU: faster oneDNN convolutions, forward and backward, the same
        results to float rounding; bench/bench_training_speed.py measures it). A net that `trains` and
        has a strided 1x1 convolution stays contiguous: the channels-last weight gradient of such a
        convolution crashes the process in torch 2.13's CPU build (e.g. 6 -> 12 channels, stride 2, a
        batch of 32 x 80 x 64; the autoencoder and the lung ResNet avoid it: ``models.common.StridedPointwise``)."""
        model = model.to(self.device)
        if not self.channels_last or (trains and has_strided_1x1(model)):
            return model
        return model.to(memory_format=torch.channels_last)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def log(self, *msg):
        """Print on rank 0 only."""
        if self.is_main:
            print(*msg, flush=True)


def has_strided_1x1(model: torch.nn.Module) -> bool:
    """Whether `model` has a strided 1x1 convolution (such a net trains contiguous: Runtime.place)."""
    return any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
               for m in model.modules())


def setup_runtime(cfg: dict) -> Runtime:
    """Device, threads, determinism and (under torchrun) the process group, from cfg["runtime"]."""
    rt_cfg = cfg["runtime"]
    if rt_cfg["threads"]:
        torch.set_num_threads(int(rt_cfg["threads"]))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(rt_cfg["device"], local, world)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if rt_cfg["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return Runtime(device=device, rank=rank, world_size=world, local_rank=local,
                   bf16=bool(rt_cfg["bf16"]) and device.type == "cuda",
                   channels_last=bool(rt_cfg.get("channels_last", True)) and device.type == "cpu",
                   progress=bool(rt_cfg["progress"]) and rank == 0 and sys.stderr.isatty())


def _device(want: str, local_rank: int, world: int) -> torch.device:
    """runtime.device ("auto", "cpu", "cuda[:i]") as a device; under DDP GPU `local_rank`."""
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if not want.startswith("cuda"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("runtime.device asks for CUDA but no GPU is visible; "
                          "use runtime.device=cpu or auto")
    device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    torch.cuda.set_device(device)
    return device


def shutdown(rt: Runtime):
    """Leave the process group (if any)."""
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def started(cfg: dict):
    """`with started(cfg) as rt:` a Runtime for the block, shut down after it (even on errors)."""
    rt = setup_runtime(cfg)
    try:
        yield rt
    finally:
        shutdown(rt)


# glibc hands a freed block above its mmap threshold (at most 32 MiB) back to the kernel at once and trims the
# heap's top beyond 128 KiB, so every training step and counterfactual search page-faults its large activations
# in afresh: half of the maps' time (docs/TRAINING.md, "Saliency generation"). These keep freed memory for reuse.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30),
                     "MALLOC_TOP_PAD_": str(256 << 20)}


def keep_freed_memory():
    """Restart this script once (same process id, arguments and environment) with KEEP_FREED_MEMORY
    set, on Linux, unless they are set already or ACAT_KEEP_FREED_MEMORY=0. glibc reads them only when
    a process starts, so they cannot be set from inside it; under torchrun each worker restarts itself."""
    if not sys.platform.startswith("linux") or os.environ.get("ACAT_KEEP_FREED_MEMORY") == "0":
        return
    if all(k in os.environ for k in KEEP_FREED_MEMORY) or not (sys.executable and sys.orig_argv):
        return                                  # set already, or an embedded interpreter: nothing to restart
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**KEEP_FREED_MEMORY, **os.environ})


def run_main(main):
    """Run a script's main() (in a process that keeps freed memory: keep_freed_memory): user-fixable
    errors print one line and exit with code 2."""
    keep_freed_memory()
    try:
        main()
    except ACATError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's AVX-512 BF16 or AMX kernels); False for a torch
    built without oneDNN."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_here(wanted: bool, rt: Runtime, option: str) -> bool:
    """Whether a ``cpu_bf16`` option (`option` names it) takes effect: on the CPU, and only where the CPU
    computes bf16 natively; elsewhere it would be emulated, several times slower than fp32, so it is off
    with a log line. Never on a GPU (runtime.bf16 is the GPU's)."""
    if not wanted or rt.device.type != "cpu":
        return False
    if native_bf16():
        return True
    rt.log(f"[{option}] this CPU has no native bf16 (AVX-512 BF16 or AMX): fp32 instead, as emulated bf16 "
           "is several times slower")
    return False


def autocast(rt: Runtime, cpu_bf16: bool = False):
    """bf16 autocast on a GPU when runtime.bf16; on the CPU only when `cpu_bf16` (a stage's
    ``cpu_bf16``: its training steps, never its validation)."""
    if rt.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=rt.bf16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(cpu_bf16))


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


# --------------------------------------------------------------------------------------------
# Seeds: every random choice is a function of (run seed, what, epoch, ...), so runs repeat exactly
# --------------------------------------------------------------------------------------------
def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (run seed, epoch, rank, ...): stable across runs and platforms."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int):
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, as plain tensors/lists (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "python_gauss": random.getstate()[2],
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    """Restore what rng_state() returned."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
