"""Claim: on a GPU the vectorized runtime trains a whole CNN cohort per round in a
fraction of the time a plain PyTorch loop over its clients takes.

Workload (issue 3): FedAvg with the McMahan et al. 2017 CNN (1,663,370 parameters)
on Fashion-MNIST, clients of 600 IID examples, E = 5, B = 10, client lr 0.05, at
cohort sizes 10, 100 and 1,000. The population is 100 IID clients of 600 examples;
a cohort larger than that takes the clients round-robin (client k trains on the data
of client k mod 100) with a seed of its own, so every client does the same work
as in the paper: 300 steps of 10 examples a round.

Rows for each cohort size, all on the same GPU in the same process:

- ``torch loop``: plain eager PyTorch, client after client (a model copy,
  ``torch.optim.SGD``, E epochs of shuffled minibatches, then the weighted average),
  what per-client frameworks do. For cohorts over ``--loop-clients`` it is timed on
  that many clients and scaled by cohort size (the loop is sequential: its time is
  linear in the clients); the JSON marks such rows ``"scaled_from"``;
- the vectorized runtime, in the variants ``--runners`` names (default: all):
  ``graphs`` (``VectorizedRuntime("cuda")``: each epoch a replayed CUDA graph; the
  first round captures it and is not timed), ``eager`` (``cuda_graphs=False``),
  ``graphs autotune`` (``torch.backends.cudnn.benchmark = True``), ``graphs
  tf32`` (TF32 matrix products as well as convolutions), ``graphs triton-conv``
  and ``graphs triton-conv flat`` (the convolutions through
  ``benchmarks/client_conv_op.py``: one Triton launch a cohort for each
  convolution and each of its gradients, instead of cuDNN's grouped convolution;
  the loop over kernel offsets unrolled or flat; the row says whether Triton ran),
  ``graphs triton-conv2 flat`` (only the second convolution so: the first has one
  input channel), ``graphs fp32-conv`` (cuDNN without TF32, a control for the
  parameter differences below), ``graphs compiled`` (``compile=True``: the graph
  replays the kernels inductor made of the step), ``graphs compiled tf32`` (the
  same with TF32 matrix products), ``compiled`` (no graphs), and ``graphs matmul-conv1``
  and ``graphs compiled matmul-conv1`` (the first convolution, one input channel,
  as ``unfold`` and a batched matrix product: ``benchmarks/matmul_first_conv.py``),
  ``graphs bf16`` and ``graphs compiled bf16`` (the model in bfloat16 mixed
  precision, ``build_model(..., autocast=torch.bfloat16)``), ``graphs compiled
  triton-conv2 flat`` and ``graphs compiled triton-conv flat`` (compiled, with the
  grouped convolutions of the step's graph, the second only or both, routed to
  the Triton kernels by a compiler pass: ``benchmarks/compiled_client_conv.py``;
  the row counts the nodes routed).

A round is timed from the host, device synchronized, and includes everything:
padding the cohort's data and copying it to the GPU, the training, the checked
aggregation and the server update. The FLOPs of a round (forward and backward of
every minibatch, counted by ``torch.utils.flop_counter`` on one client step) over
the round's time give the achieved rate, reported as a fraction of two ceilings
measured in the same run: a float32 and a TF32 8192^3 matrix product. (cuDNN runs
float32 convolutions in TF32 by default; the linear layers run in float32.)

A second floor is memory: every step of every client reads its float32 parameters
for the forward pass and again for the backward pass, and writes them updated:
for a step computed layer by layer, forward then backward, at least 3 x 4 bytes a
parameter (more where the gradient is stored before the update). That traffic over
the device's bandwidth, measured in the same run as a copy of 1 GiB, is the round's
memory floor; the table gives the floor's share of each round's time ("of mem").

All variants start from the same model and train the same cohorts; the script
prints each one's test accuracy and its largest parameter difference to the first
variant (float rounding differences grow over the 300 steps of a round; identical
kernels give identical parameters).

    python benchmarks/gpu_speed.py [--sizes 10 100 1000] [--rounds 3]
        [--runners loop graphs eager ...] [--budget-s 330] [--chunk-size 1000]
        [--json benchmarks/results/gpu_speed.json]

It stops starting new measurements when ``--budget-s`` seconds have passed, and
writes the JSON after every measurement, so a cut-off run keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from simulation_speed import BATCH_SIZE, LEARNING_RATE, torch_loop_round
from torch.utils.flop_counter import FlopCounterMode

from fedloom.core import tree_map
from fedloom.data import ClientData, Dataset, load_dataset
from fedloom.experiments import client_seed, sample_cohort
from fedloom.learning import (
    ClientInput,
    FunctionalModel,
    build_model,
    evaluate,
    fed_avg,
)
from fedloom.runtimes import VectorizedRuntime

EPOCHS = 5
POPULATION = 100


class Variant(NamedTuple):
    """One way of running the vectorized runtime."""

    name: str
    graphs: bool = True
    autotune: bool = False  # torch.backends.cudnn.benchmark
    tf32_matmul: bool = False  # torch.backends.cuda.matmul.allow_tf32
    triton_conv: str = ""  # "unrolled"/"flat": convolutions via client_conv_op.py
    triton_rows: int = 64  # the Triton tile's rows (its Tiling.rows)
    triton_min_in: int = 1  # convolutions with fewer input channels stay cuDNN's
    tf32_conv: bool = True  # torch.backends.cudnn.allow_tf32 (PyTorch's default)
    compile: bool = False  # VectorizedRuntime(compile=True)
    matmul_conv1: bool = False  # one-input-channel convs via matmul_first_conv.py
    bf16: bool = False  # the model under autocast to bfloat16
    # compiled: the step's grouped convolutions routed to client_conv_op.py's
    # cohort functions by a compiler pass (compiled_client_conv.py), not swapped
    route_convs: bool = False


VARIANTS = {
    v.name: v
    for v in [
        Variant("graphs"),
        Variant("eager", graphs=False),
        Variant("graphs autotune", autotune=True),
        Variant("graphs tf32", tf32_matmul=True),
        Variant("graphs triton-conv", triton_conv="unrolled"),
        Variant("graphs triton-conv flat", triton_conv="flat"),
        # The first convolution has one input channel: a Triton tile's reduction
        # step of at least 16 wastes most of its work there. This one leaves it to
        # cuDNN, with the tiling fastest at 10 clients in gpu_grouped_conv.json.
        Variant(
            "graphs triton-conv2 flat",
            triton_conv="flat",
            triton_rows=32,
            triton_min_in=16,
        ),
        # A control for the triton rows' parameter difference: the same cuDNN
        # kernels in float32 instead of TF32, whose difference to "graphs" is the
        # drift rounding alone gives over a round's steps.
        Variant("graphs fp32-conv", tf32_conv=False),
        Variant("graphs compiled", compile=True),
        Variant("graphs compiled tf32", compile=True, tf32_matmul=True),
        Variant("compiled", graphs=False, compile=True),
        Variant("graphs matmul-conv1", matmul_conv1=True),
        Variant("graphs compiled matmul-conv1", compile=True, matmul_conv1=True),
        Variant("graphs bf16", bf16=True),
        Variant("graphs compiled bf16", compile=True, bf16=True),
        # The Triton prototype inside the compiled step (compiled_client_conv.py)
        Variant(
            "graphs compiled triton-conv2 flat",
            compile=True,
            route_convs=True,
            triton_conv="flat",
            triton_rows=32,
            triton_min_in=16,
        ),
        Variant(
            "graphs compiled triton-conv flat",
            compile=True,
            route_convs=True,
            triton_conv="flat",
        ),
    ]
}


def matmul_tflops(device: torch.device, tf32: bool, size: int, repeats: int) -> float:
    """The rate of a float32 matrix product (random data), TF32 on or off."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)
        for _ in range(3):
            a @ b
        _, seconds = _timed(device, lambda: [a @ b for _ in range(repeats)])
        return 2 * size**3 * repeats / seconds / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def copy_bandwidth(device: torch.device, gib: float, repeats: int) -> float:
    """Bytes a second a device-to-device copy of ``gib`` GiB moves (read + write)."""
    source = torch.ones(int(gib * 2**30) // 4, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    _, seconds = _timed(device, lambda: [target.copy_(source) for _ in range(repeats)])
    return 2 * source.numel() * 4 * repeats / seconds


def flops_per_client_step(model: FunctionalModel, dataset: Dataset) -> int:
    """FLOPs of one minibatch step of one client: forward and backward."""
    module = model.module
    x = dataset.train.x[:BATCH_SIZE]
    y = dataset.train.y[:BATCH_SIZE]
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(module(x), y).backward()
    module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def cohort(clients: ClientData, size: int, round: int) -> list[ClientInput]:
    """``size`` clients of 600 examples; beyond the population, round-robin data."""
    if size <= POPULATION:
        ids = [int(i) for i in sample_cohort(POPULATION, size, seed=0, round=round)]
    else:
        ids = list(range(size))
    return [
        ClientInput(clients.client(i % POPULATION), client_seed(0, round, i))
        for i in ids
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    _sync(device)
    started = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - started


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.loop: tuple[int, float, dict[str, Any]] | None = None
        self.per_client: dict[str, float] = {}
        self.started = time.perf_counter()
        self.dataset = load_dataset("fashion_mnist")
        self.clients = ClientData.from_dataset(self.dataset, "iid", POPULATION, seed=0)
        self.model = build_model(
            "cnn", self.dataset.input_shape, self.dataset.num_classes, seed=0
        )
        self.report: dict[str, Any] = {
            "command": " ".join(sys.argv),
            "workload": {
                "dataset": "fashion_mnist",
                "model": "cnn",
                "parameters": sum(v.numel() for v in self.model.init().values()),
                "examples_per_client": 600,
                "epochs": EPOCHS,
                "batch_size": BATCH_SIZE,
                "learning_rate": LEARNING_RATE,
                "rounds_timed": args.rounds,
                "chunk_size": args.chunk_size,
            },
            "rows": [],
            "errors": [],
        }

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def save(self) -> None:
        self.args.json.parent.mkdir(parents=True, exist_ok=True)
        self.args.json.write_text(json.dumps(self.report, indent=2) + "\n")

    def machine(self) -> None:
        machine: dict[str, Any] = {"gpu": "none (CPU dry run)"}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            machine = {
                "gpu": props.name,
                "multiprocessors": props.multi_processor_count,
                "memory_gib": props.total_memory / 2**30,
            }
        self.report["machine"] = {
            **machine,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
        size, repeats = (8192, 10) if self.device.type == "cuda" else (512, 3)
        gib = 1.0 if self.device.type == "cuda" else 0.125
        ceilings = {
            "float32_matmul_tflops": matmul_tflops(self.device, False, size, repeats),
            "tf32_matmul_tflops": matmul_tflops(self.device, True, size, repeats),
            "copy_bandwidth_bytes_per_s": copy_bandwidth(self.device, gib, repeats),
        }
        self.report["ceilings"] = ceilings
        flops = flops_per_client_step(self.model, self.dataset)
        steps = EPOCHS * 600 // BATCH_SIZE
        self.report["flops"] = {
            "per_client_step": flops,
            "steps_per_client_round": steps,
            "per_client_round": flops * steps,
        }
        parameters = self.report["workload"]["parameters"]
        self.report["memory_floor"] = {
            "bytes_per_client_step": 3 * 4 * parameters,
            "bytes_per_client_round": 3 * 4 * parameters * steps,
            "note": "float32 parameters read twice and written once a step",
        }
        print(json.dumps(self.report["machine"]), flush=True)
        print(json.dumps(ceilings), json.dumps(self.report["flops"]), flush=True)
        self.save()

    def row(self, size: int, runner: str, seconds: float, **extra: Any) -> None:
        flops = self.report["flops"]["per_client_round"] * size
        rate = flops / seconds / 1e12
        ceilings = self.report["ceilings"]
        floor = (
            self.report["memory_floor"]["bytes_per_client_round"]
            * size
            / ceilings["copy_bandwidth_bytes_per_s"]
        )
        row = {
            "cohort": size,
            "runner": runner,
            "seconds_per_round": seconds,
            "tflops": rate,
            "fraction_of_float32_ceiling": rate / ceilings["float32_matmul_tflops"],
            "fraction_of_tf32_ceiling": rate / ceilings["tf32_matmul_tflops"],
            "memory_floor_seconds": floor,
            "fraction_of_memory_floor": floor / seconds,
            **extra,
        }
        self.report["rows"].append(row)
        print(
            f"  cohort {size:>5}  {runner:<28} {seconds * 1000:10.1f} ms/round"
            f"  {rate:7.2f} TFLOP/s  {json.dumps(extra)}",
            flush=True,
        )
        self.save()

    def torch_loop(self, size: int) -> None:
        clients = min(size, self.args.loop_clients)
        device = self.device
        if self.loop is not None and self.loop[0] == clients:  # measured already
            seconds, extra = self.loop[1], dict(self.loop[2], scaled_from=clients)
            self.row(size, "torch loop", seconds * size / clients, **extra)
            return
        params = self.model.init()
        torch_loop_round(self.model, params, cohort(self.clients, 1, 99), 1, device)
        _reset_peak(device)
        _, seconds = _timed(
            device,
            lambda: torch_loop_round(
                self.model, params, cohort(self.clients, clients, 0), EPOCHS, device
            ),
        )
        extra: dict[str, Any] = {"peak_memory_gib": _peak(device)}
        self.loop = (clients, seconds, extra)
        if clients < size:
            extra = dict(extra, scaled_from=clients)
        self.row(size, "torch loop", seconds * size / clients, **extra)

    def vectorized(self, size: int, variant: Variant) -> Any:
        """Times FedAvg rounds on the vectorized runtime; returns the final params."""
        torch.backends.cudnn.benchmark = variant.autotune
        torch.backends.cuda.matmul.allow_tf32 = variant.tf32_matmul
        torch.backends.cudnn.allow_tf32 = variant.tf32_conv
        try:
            return self._vectorized(size, variant)
        finally:
            torch.backends.cudnn.benchmark = False
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = True

    def _vectorized(self, size: int, variant: Variant) -> Any:
        runtime = VectorizedRuntime(
            self.device,
            chunk_size=self.args.chunk_size,
            cuda_graphs=variant.graphs,
            compile=variant.compile,
        )
        model, extra = self.model, {}
        if variant.bf16:
            model = FunctionalModel(model.module, autocast=torch.bfloat16)
        if variant.matmul_conv1:
            import matmul_first_conv  # beside this file

            module, swapped = matmul_first_conv.swap_first_convs(model.module)
            model, extra = FunctionalModel(module), {"convs_swapped": swapped}
        routing: Any = contextlib.nullcontext()
        if variant.triton_conv:
            import client_conv_op  # beside this file; imports Triton if it can

            kernels = client_conv_op.kernels
            flat = variant.triton_conv == "flat"
            tiling = (
                kernels.Tiling(rows=variant.triton_rows, flat=flat)
                if kernels is not None
                else None
            )
            probe = torch.zeros(1, device=self.device)
            extra = {"triton": client_conv_op.uses_triton(probe)}
            if variant.route_convs:  # the compiled step's own, by a compiler pass
                import compiled_client_conv  # beside this file

                routing = compiled_client_conv.routing(variant.triton_min_in, tiling)
                compiled_client_conv.RoutingFold.routed = 0
                compiled_client_conv.RoutingFold.skipped = 0
            else:
                module, swapped = client_conv_op.swap_convs(
                    self.model.module, tiling, min_in_channels=variant.triton_min_in
                )
                model = FunctionalModel(module)
                extra["convs_swapped"] = swapped
        with routing:
            return self._rounds(size, variant, model, runtime, extra)

    def _rounds(
        self,
        size: int,
        variant: Variant,
        model: FunctionalModel,
        runtime: VectorizedRuntime,
        extra: dict[str, Any],
    ) -> Any:
        process = fed_avg(
            model,
            client_learning_rate=LEARNING_RATE,
            local_epochs=EPOCHS,
            batch_size=BATCH_SIZE,
        )
        state = process.init()
        _reset_peak(self.device)
        (state, _), first = _timed(
            self.device,
            lambda: process.next(state, cohort(self.clients, size, 0), runtime=runtime),
        )
        times = []
        for r in range(1, self.args.rounds + 1):
            (state, _), seconds = _timed(
                self.device,
                lambda r=r, state=state: process.next(
                    state, cohort(self.clients, size, r), runtime=runtime
                ),
            )
            times.append(seconds)
        times.sort()
        accuracy = evaluate(self.model, state.params, self.dataset.test)["accuracy"]
        self.per_client[variant.name] = times[len(times) // 2] / size
        if variant.route_convs:  # compiled in the first round, counted by now
            import compiled_client_conv  # beside this file

            fold = compiled_client_conv.RoutingFold
            counts = {"convs_routed": fold.routed, "convs_skipped": fold.skipped}
            extra = {**extra, **counts}
        self.row(
            size,
            variant.name,
            times[len(times) // 2],
            first_round_seconds=first,
            all_round_seconds=times,
            peak_memory_gib=_peak(self.device),
            test_accuracy=accuracy,
            captures=process.client_work.graphs.captures,
            **variant._asdict(),
            **extra,
        )
        return state.params

    def estimate(self, size: int, variant: Variant) -> float:
        """Seconds a measurement will take, from the same variant at a smaller size."""
        per_client = self.per_client.get(variant.name)
        if per_client is None:
            return 30.0
        return 10.0 + (self.args.rounds + 1.5) * per_client * size

    def attempt(self, label: str, fn: Callable[[], Any], needs_s: float) -> Any:
        """Run ``fn`` unless the budget is short; a failure is recorded, not raised."""
        if self.left() < needs_s:
            print(f"  skipped {label}: {self.left():.0f} s left", flush=True)
            self.report["errors"].append({"what": label, "error": "skipped: budget"})
            self.save()
            return None
        try:
            return fn()
        except Exception as error:  # keep measuring the rest; the JSON says what failed
            print(f"  FAILED {label}: {error!r}", flush=True)
            self.report["errors"].append({"what": label, "error": repr(error)})
            self.save()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _max_difference(a: Any, b: Any) -> float:
    diffs = tree_map(lambda x, y: float((x - y).abs().max() / y.abs().max()), a, b)
    return max(diffs.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop-clients", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--budget-s", type=float, default=330)
    parser.add_argument(
        "--runners",
        nargs="+",
        default=["loop", *VARIANTS],
        choices=["loop", *VARIANTS],
        metavar="RUNNER",
        help=f"what to time: loop and any of {list(VARIANTS)} (default: all)",
    )
    parser.add_argument(
        "--device", default="cuda", help="'cpu' for a dry run of the script itself"
    )
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/gpu_speed.json")
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_speed.py needs a CUDA device (or --device cpu)")
    bench = Bench(args)
    bench.machine()
    for size in args.sizes:
        if "loop" in args.runners:
            bench.attempt(f"torch loop {size}", lambda s=size: bench.torch_loop(s), 15)
        finals = {}
        for name in args.runners:
            if name == "loop":
                continue
            variant = VARIANTS[name]
            params = bench.attempt(
                f"{name} {size}",
                lambda s=size, v=variant: bench.vectorized(s, v),
                bench.estimate(size, variant),
            )
            if params is not None:
                finals[name] = params
        if len(finals) > 1:
            first, *others = finals
            differences = {
                name: _max_difference(finals[name], finals[first]) for name in others
            }
            bench.report.setdefault("max_relative_difference_to_" + first, {})[
                str(size)
            ] = differences
            print(f"  cohort {size}: params vs {first}: {differences}", flush=True)
            bench.save()
    _print_table(bench.report)


def _print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['machine']['gpu']}, torch {report['machine']['torch']}")
    print(
        f"{'cohort':>7}  {'runner':<28}{'ms/round':>10}{'vs loop':>9}"
        f"{'TFLOP/s':>9}{'of fp32':>9}{'of tf32':>9}{'of mem':>8}"
    )
    loops = {
        r["cohort"]: r["seconds_per_round"]
        for r in report["rows"]
        if r["runner"] == "torch loop"
    }
    for r in report["rows"]:
        loop = loops.get(r["cohort"])
        ratio = f"{loop / r['seconds_per_round']:8.1f}x" if loop else f"{'':>9}"
        print(
            f"{r['cohort']:>7}  {r['runner']:<28}{r['seconds_per_round'] * 1000:>10.1f}"
            f"{ratio}{r['tflops']:>9.2f}{r['fraction_of_float32_ceiling']:>9.3f}"
            f"{r['fraction_of_tf32_ceiling']:>9.3f}"
            f"{r.get('fraction_of_memory_floor', float('nan')):>8.3f}"
        )
    for error in report["errors"]:
        print(f"  not measured: {error['what']}: {error['error']}")


if __name__ == "__main__":
    main()
