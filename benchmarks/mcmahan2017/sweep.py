"""The sweep: for each cell, search the paper's learning-rate grid, run to target.

The search of a cell starts at a rate of the paper's grid (10^(k/3)) and its two
neighbours, then extends the grid on the side of the best rate until the best is
inside the rates tried (the paper's check "that the best learning rates were in
the middle of our grids"), or ``MAX_RATES_PER_CELL`` rates were tried. A run stops
at the target, at the cap of its cell, or (pruned) at the rounds of the cell's
best run so far: past them it can no longer be the best.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import torch

from benchmarks.fedavg_vs_fedsgd import machine
from fedloom.aggregators import InvalidUpdateError
from fedloom.experiments import MetricsLog, config_from_dict, run_experiment

from . import cells as grid
from .cells import Cell
from .results import (
    ACCURACY_BY_ROUND,
    accuracy_by_round,
    best,
    cell_fields,
    load_runs,
    record_run,
    run_key,
    runs_of_cell,
    store_curves,
)

REPOSITORY = Path(__file__).resolve().parents[2]
RUNS_DIR = REPOSITORY / "runs" / "mcmahan2017"  # ignored by git
CHECKPOINT_EVERY = 10  # rounds (a GPU round can cost less than its checkpoint)
STALL_ROUNDS = 50  # a run at most STALL_ACCURACY for this many rounds has stalled
STALL_ACCURACY = 0.2


@dataclass(frozen=True)
class Settings:
    """What one sweep runs, and where it keeps its runs and results."""

    dataset: str
    results_path: Path
    runs_dir: Path = RUNS_DIR
    device: str = "cpu"
    runtime: str = "local"
    seed: int = 0
    time_budget: float | None = None  # seconds; no new run starts after it
    targets: Mapping[tuple[str, str, str], float] = field(
        default_factory=lambda: dict(grid.TARGETS)
    )
    max_rounds: Mapping[tuple[str, str, str], int] = field(
        default_factory=lambda: dict(grid.MAX_ROUNDS)
    )
    num_clients: int = grid.NUM_CLIENTS
    # The vectorized runtime's chunk size by (algorithm, B); absent: its default.
    chunk_sizes: Mapping[tuple[str, int | None], int] = field(default_factory=dict)

    def chunk_size(self, cell: Cell) -> int | None:
        if self.runtime != "vectorized":  # only it computes clients in chunks
            return None
        return self.chunk_sizes.get((cell.algorithm, cell.batch_size))

    def target(self, cell: Cell) -> float:
        return self.targets[(self.dataset, cell.model, cell.partition)]

    def cap(self, cell: Cell) -> int:
        return self.max_rounds[(cell.model, cell.partition, cell.algorithm)]


def order_cells(cells: Sequence[Cell]) -> list[Cell]:
    """Cheapest first: the 2NN before the CNN, IID before non-IID, then by cost."""
    return sorted(
        cells,
        key=lambda c: (
            grid.MODELS.index(c.model),
            grid.PARTITIONS.index(c.partition),
            grid.estimated_cost(c),
        ),
    )


def step_of(lr: float) -> int:
    """The grid step k of a rate 10^(k/3) of the paper's grid."""
    for k in range(-30, 31):
        if grid.learning_rate(k) == lr:
            return k
    raise ValueError(f"learning rate {lr} is not on the grid 10^(k/3)")


def next_step(cell: Cell, done: Mapping[int, Mapping[str, Any]]) -> int | None:
    """The grid step of the cell's next run, or None when its search is over.

    Example:
        >>> cell = Cell("2nn", "iid", "fedavg", 5, 10)
        >>> next_step(cell, {})  # the start: 10^(-3/3) = 0.1
        -3
        >>> def run(rounds): return {"rounds_to_target": rounds, "best_accuracy": 0.9}
        >>> next_step(cell, {-4: run(12), -3: run(9), -2: run(15)}) is None
        True
        >>> next_step(cell, {-4: run(12), -3: run(9), -2: run(7)})  # best at the edge
        -1
    """
    start = grid.start_step(cell)
    for step in (start, start - 1, start + 1):
        if step not in done:
            return step
    if len(done) >= grid.MAX_RATES_PER_CELL:
        return None
    steps = sorted(done)
    chosen = best([done[k] for k in steps])
    best_step = next(k for k in steps if done[k] is chosen)
    if best_step == steps[0]:
        return steps[0] - 1
    if best_step == steps[-1]:
        return steps[-1] + 1
    return None


def round_limit(
    settings: Settings, cell: Cell, runs: Sequence[Mapping[str, Any]]
) -> int:
    """How many rounds the next run of ``cell`` may take: its cap, or fewer when an
    earlier rate already reached the target (a slower run cannot be the best)."""
    reached = [r["rounds_to_target"] for r in runs if r["rounds_to_target"]]
    return min([settings.cap(cell), *reached])


def is_done(run: Mapping[str, Any], limit: int) -> bool:
    """Whether a stored run answers its question at the current round limit."""
    return run["rounds_to_target"] is not None or run["max_rounds"] >= limit


def commit() -> str | None:
    """The fedloom commit the runs were made with (``+dirty`` with local changes),
    or ``$FEDLOOM_COMMIT`` when set: the device tool's copy of ``.git`` can lag."""
    if given := os.environ.get("FEDLOOM_COMMIT"):
        return given
    try:
        head = subprocess.run(
            ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(REPOSITORY), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if status else "")


def run_one(
    settings: Settings, cell: Cell, lr: float, limit: int, deadline: float | None
) -> dict[str, Any] | None:
    """Run ``cell`` at ``lr`` for at most ``limit`` rounds (resuming its directory
    when an earlier, stopped sweep left one); return its stored outcome, or None
    when ``deadline`` (a ``time.perf_counter()`` value) passed before its end."""
    target = settings.target(cell)
    config = config_from_dict(
        grid.make_config(
            cell,
            lr,
            dataset=settings.dataset,
            target=target,
            max_rounds=limit,
            seed=settings.seed,
            device=settings.device,
            runtime=settings.runtime,
            num_clients=settings.num_clients,
            checkpoint_every=CHECKPOINT_EVERY,
            chunk_size=settings.chunk_size(cell),
        ),
        source=run_key(settings.dataset, cell, lr, target),
    )
    out_dir = run_dir(settings, cell, lr)
    started = time.perf_counter()
    log = MetricsLog(out_dir / "metrics.jsonl")
    resume = (out_dir / "config.json").exists()
    watch = Watch(deadline, log.read() if resume else [])
    diverged = False
    try:
        result = run_experiment(
            config, out_dir=out_dir, resume=resume, quiet=True, stop=watch
        )
        records, reached = result.records, result.target_reached
    except InvalidUpdateError:  # a client's update overflowed: this rate diverges
        records, reached, diverged = log.read(), False, True
    if not (reached or diverged or watch.stalled) and len(records) < limit:
        return None
    wall = time.perf_counter() - started
    accuracies = [r["test_accuracy"] for r in records]
    accuracies = [a for a in accuracies if a is not None]
    return {
        "dataset": settings.dataset,
        **cell_fields(cell),
        "learning_rate": lr,
        "target": target,
        "max_rounds": limit,
        "cap": settings.cap(cell),
        "rounds_run": len(records),
        "rounds_to_target": records[-1]["round"] if reached else None,
        "diverged": diverged,
        "stalled": watch.stalled,
        "best_accuracy": max(accuracies, default=0.0),
        "final_accuracy": accuracies[-1] if accuracies else 0.0,
        "seconds": sum(r["seconds"] for r in records),
        "wall_seconds_last_call": wall,
        "device": device_name(settings.device),
        "runtime": settings.runtime,
        "chunk_size": settings.chunk_size(cell),
        "seed": settings.seed,
        "commit": commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "run_dir": str(out_dir.relative_to(settings.runs_dir)),
        ACCURACY_BY_ROUND: accuracy_by_round(records),
    }


class Watch:
    """The sweep's ``stop`` for a run: past the deadline (the next sweep resumes the
    run from its checkpoint), or :attr:`stalled` at chance accuracy.

    A rate too large for a model can leave it at chance for good (dead units: the
    CNN at E = 20, B = ∞, lr 0.464 sat at 10 % for 1,000 rounds on an H200). A run
    whose last ``STALL_ROUNDS`` test accuracies are all at most ``STALL_ACCURACY``
    (twice chance for ten classes) is ended there; the table marks its rate.
    ``records`` are those the run logged before (resumed): accuracies are kept by
    round, so rounds that rerun after the checkpoint count once.

    Example:
        >>> low = [{"round": r, "test_accuracy": 0.1} for r in range(1, STALL_ROUNDS)]
        >>> watch = Watch(deadline=None, records=low)
        >>> watch({"round": STALL_ROUNDS, "test_accuracy": 0.3}), watch.stalled
        (False, False)
        >>> watch({"round": STALL_ROUNDS, "test_accuracy": 0.1}), watch.stalled
        (True, True)
    """

    def __init__(
        self, deadline: float | None, records: Sequence[Mapping[str, Any]]
    ) -> None:
        self.deadline = deadline
        self.accuracies: dict[int, float] = {}
        self.stalled = False
        for record in records:
            self._note(record)

    def _note(self, record: Mapping[str, Any]) -> None:
        if record.get("test_accuracy") is not None:  # None: a round not evaluated
            self.accuracies[record["round"]] = record["test_accuracy"]

    def __call__(self, record: Mapping[str, Any]) -> bool:
        self._note(record)
        rounds = sorted(self.accuracies)[-STALL_ROUNDS:]
        window = [self.accuracies[r] for r in rounds]
        if len(window) == STALL_ROUNDS and max(window) <= STALL_ACCURACY:
            self.stalled = True
            return True
        return self.deadline is not None and time.perf_counter() > self.deadline


def device_name(device: str) -> str:
    """``device`` with, for a GPU, its model: "cuda (NVIDIA H200)"."""
    if not device.startswith("cuda"):
        return device
    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def run_dir(settings: Settings, cell: Cell, lr: float) -> Path:
    target = settings.target(cell)
    return settings.runs_dir / settings.dataset / cell.name / f"lr{lr:g}_t{target:g}"


def started_elsewhere(settings: Settings, out_dir: Path) -> str | None:
    """How a stopped run in ``out_dir`` was started, when that is not how this
    sweep would resume it (another device, runtime or seed), else None."""
    path = out_dir / "config.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    now = {"device": settings.device, "runtime": settings.runtime}
    now["seed"] = settings.seed
    differ = {k: saved.get(k) for k, v in now.items() if saved.get(k) != v}
    return ", ".join(f"{k} {v!r}" for k, v in differ.items()) or None


class Plan(NamedTuple):
    """The next run of a cell: its rate, its round limit, a word for the report,
    and (a rerun) what the run it replaces measured."""

    lr: float
    limit: int
    note: str = ""
    rerun_of: Mapping[str, Any] | None = None


def sweep(
    settings: Settings,
    cells: Sequence[Cell],
    report: Callable[[str], None] = print,
    after_run: Callable[[], None] = lambda: None,
) -> int:
    """Run every cell's search, skipping runs already in the results file.

    Returns how many runs were made; stops early (resumable) past the time budget.
    """

    def search(cell: Cell, runs: Mapping[str, Mapping[str, Any]]) -> Plan | None:
        stored = runs_of_cell(runs, settings.dataset, cell, settings.target(cell))
        limit = round_limit(settings, cell, stored)
        done = {step_of(r["learning_rate"]): r for r in stored if is_done(r, limit)}
        step = next_step(cell, done)
        return None if step is None else Plan(grid.learning_rate(step), limit)

    return _make_runs(settings, cells, search, report, after_run)


def rerun_best(
    settings: Settings,
    cells: Sequence[Cell],
    report: Callable[[str], None] = print,
    after_run: Callable[[], None] = lambda: None,
) -> int:
    """Run again, from round 0, the best run of each cell that has no accuracy by
    round in the results file nor a run directory here to take it from (recorded
    before the file kept curves, on a machine since gone), so its curve can be
    drawn; until the cell's best run has one (a rerun slower than its first run
    can leave another run the best).

    A rerun has the rate and settings of the run it replaces (a run made on
    another device type or runtime is left, with a line in the report), and its
    cell's cap of rounds. It replaces the old run in the file, which keeps what
    the old one measured under ``rerun_of``; both are reported, so a rerun that
    does not repeat the old rounds shows (as does the table). Afterwards, ``sweep``
    takes the cell's other rates to a changed round limit. Returns how many runs
    were made; stops early past the time budget (the next call resumes the run it
    stopped)."""
    store_curves(settings.results_path, settings.runs_dir)  # those whose logs are here

    def again(cell: Cell, runs: Mapping[str, Mapping[str, Any]]) -> Plan | None:
        chosen = best(runs_of_cell(runs, settings.dataset, cell, settings.target(cell)))
        if chosen is None or ACCURACY_BY_ROUND in chosen:
            return None
        made_on = (chosen["device"].split(" ")[0], chosen.get("runtime"))
        if made_on != (settings.device, settings.runtime):
            report(
                f"skipping {cell.name}: its best run was made on {chosen['device']}, "
                f"runtime {chosen.get('runtime')}; rerun it there"
            )
            return None
        kept = {k: chosen.get(k) for k in RERUN_KEPT}
        return Plan(
            chosen["learning_rate"],
            settings.cap(cell),
            f"again (was {ending(chosen)}) ",
            kept,
        )

    return _make_runs(settings, cells, again, report, after_run)


def _make_runs(
    settings: Settings,
    cells: Sequence[Cell],
    plan: Callable[[Cell, Mapping[str, Mapping[str, Any]]], Plan | None],
    report: Callable[[str], None],
    after_run: Callable[[], None],
) -> int:
    """Make, cell by cell, the runs ``plan`` asks for from the results file as it
    stands, recording each, until it asks for none; stop (resumable) past the time
    budget. Returns how many runs were made."""
    started = time.perf_counter()
    budget = settings.time_budget
    deadline = None if budget is None else started + budget
    made = 0
    for cell in order_cells(cells):
        while True:
            runs = load_runs(settings.results_path)
            chosen = plan(cell, runs)
            if chosen is None:
                break
            elapsed = time.perf_counter() - started
            if deadline is not None and time.perf_counter() > deadline:
                report(f"time budget spent after {made} runs; rerun to go on")
                return made
            lr, limit = chosen.lr, chosen.limit
            directory = run_dir(settings, cell, lr)
            if elsewhere := started_elsewhere(settings, directory):
                report(
                    f"skipping {cell.name}: {directory} was started with {elsewhere}; "
                    "resume it with those settings, or delete it"
                )
                break
            report(
                f"[{elapsed:7.0f} s] {cell.name} lr={lr:g} {chosen.note}"
                f"(<= {limit} rounds)"
            )
            outcome = run_one(settings, cell, lr, limit, deadline)
            if outcome is None:
                report(f"time budget spent in {cell.name} lr={lr:g}; rerun to go on")
                return made
            key = run_key(settings.dataset, cell, lr, settings.target(cell))
            # a rerun, or a run that extends one, keeps what the first run measured
            if first := chosen.rerun_of or runs.get(key, {}).get("rerun_of"):
                outcome["rerun_of"] = dict(first)
            record_run(settings.results_path, key, outcome)
            made += 1
            report(f"          -> {ending(outcome)}")
            after_run()
    return made


def ending(outcome: Mapping[str, Any]) -> str:
    """How a run ended, its best accuracy and its seconds, in words."""
    ended = f"{outcome['rounds_to_target']} rounds"
    if outcome.get("diverged"):  # runs recorded before a field was kept lack it
        ended = f"diverged after {outcome['rounds_run']} rounds"
    elif outcome.get("stalled"):
        ended = f"stalled at chance after {outcome['rounds_run']} rounds"
    elif outcome["rounds_to_target"] is None:
        ended = f"not reached in {outcome['max_rounds']} rounds"
    return f"{ended}, best {outcome['best_accuracy']:.4f}, {outcome['seconds']:.1f} s"


# What a rerun keeps of the run it replaces.
RERUN_KEPT = (
    "rounds_to_target",
    "rounds_run",
    "max_rounds",
    "diverged",
    "stalled",
    "best_accuracy",
    "seconds",
    "device",
    "chunk_size",
    "runtime",
    "commit",
    "date",
    "machine",
)
